"""What the run directory guarantees (issue 13): one process at a time, the training log kept across resumes,
clear errors (never a traceback) for a full disk, a read-only output and damaged files, temporaries cleaned,
umask permissions, re-evaluations with other settings beside the originals.

Most tests start from copies of one finished two-task run (``done_run``, the same tiny config everywhere) and
compare what a resumed run writes with it byte for byte.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dymoe import io as dio
from dymoe.cli.main import main
from dymoe.config import load_config
from dymoe.runner.continual import ContinualRun, run
from dymoe.runner.rundir import RunDir, RunLock
from dymoe.runner.trainer import TaskTrainer

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
# two tasks, 8 training samples in 2 steps each, 4 test questions: the smallest run that has a resume to test
TINY = [
    "benchmark.order=[ScienceQA, ImageNet]",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=4",
    "evaluation.max_new_tokens=2",
    "trackers=[]",
    "method.name=lora",
]
UMASK = 0o027  # not the usual 022, so that "follows the umask" is not a coincidence


def sets(*extra: str) -> list[str]:
    return [a for o in [*TINY, *extra] for a in ("--set", o)]


def tiny_cfg(*extra: str):
    return load_config(SMOKE, [*TINY, *extra])


class Interrupt(BaseException):
    """Stands in for SIGKILL inside one process: nothing after the raise point runs (no cleanup is needed by the
    runner for correctness: the next start finds what a killed process leaves)."""


def _set_umask(mask: int) -> int:
    old = os.umask(mask)
    dio._UMASK = None  # the cached value
    return old


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, dymoe_cache):
    """A finished TINY run (lora), made under umask 027."""
    out = tmp_path_factory.mktemp("done") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYMOE_CACHE", str(dymoe_cache))
        old = _set_umask(UMASK)
        try:
            run(tiny_cfg(), out)
        finally:
            _set_umask(old)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def same_file(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def assert_same_results(a: Path, b: Path) -> None:
    assert same_file(a / "matrix.json", b / "matrix.json")
    for rel in ("checkpoints/task_1_ScienceQA/adapter.safetensors", "checkpoints/task_2_ImageNet/adapter.safetensors",
                "predictions/ScienceQA/after_2.jsonl", "predictions/ImageNet/after_2.jsonl"):
        assert same_file(a / rel, b / rel), rel


# what a task's training log measures rather than computes (issue 22's cost record: wall time, throughput, peak
# memory, inference timing); its counts (steps, samples, tokens, parameters) must survive a kill like the rest
MEASURED = {"train_seconds", "samples_per_s", "tokens_per_s", "peak_memory_bytes", "peak_memory_kind"}


def train_log_without_time(metrics: dict) -> dict:
    return {t: {k: _counts(v) if k == "cost" else v for k, v in e.items() if k != "seconds"}
            for t, e in metrics["train"].items()}


def _counts(cost: dict) -> dict:
    return {k: v for k, v in cost.items() if k not in MEASURED and not k.startswith(("gen_", "inference", "flops"))}


# ------------------------------------------------------------------------------------------- 1: the lock
def test_second_process_on_a_run_directory_fails_at_once_naming_the_holder(tmp_path, cache_env, capsys):
    out = tmp_path / "R"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dymoe.runner.rundir import RunLock; "
         "lock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", str(SMOKE), "--output", str(out), *sets("training.lr=5e-3")]) == 2
        err = capsys.readouterr().err
        assert f"is in use by process {holder.pid} on host {socket.gethostname()}" in err, err
        assert "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of the second run was written
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and taken over, with a note
    lock = RunLock(out)
    lock.acquire()
    assert f"took over the lock of process {holder.pid}" in capsys.readouterr().err
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    # a second lock on the same directory, even in the same process, is refused while this one is held
    with pytest.raises(Exception, match="is in use by process"):
        RunLock(out).acquire()
    lock.release()
    assert (out / ".lock").read_text() == ""  # released: an empty lock file
    RunLock(out).acquire()


def test_eval_also_takes_the_lock(done_run, tmp_path, cache_env, capsys):
    out = copy_run(done_run, tmp_path / "r")
    with RunLock(out):
        assert main(["eval", str(out), "--after-task", "1"]) == 2
    assert f"is in use by process {os.getpid()}" in capsys.readouterr().err


# --------------------------------------------------------------------------------- 2: the training log
def test_kill_during_the_evaluation_after_a_task_keeps_its_training_log(done_run, tmp_path, cache_env, monkeypatch):
    out = tmp_path / "r"
    real = ContinualRun.evaluate_seen

    def killed_in_eval(self, k):
        if k == 0 and not self.dir.predictions("ScienceQA", 1).exists():
            raise Interrupt  # task 1's checkpoint is saved, metrics.json not written yet
        return real(self, k)

    monkeypatch.setattr(ContinualRun, "evaluate_seen", killed_in_eval)
    with pytest.raises(Interrupt):
        run(tiny_cfg(), out)
    assert (out / "checkpoints" / "task_1_ScienceQA" / "adapter.json").is_file() and not (out / "metrics.json").exists()
    monkeypatch.setattr(ContinualRun, "evaluate_seen", real)
    metrics = run(tiny_cfg(), out)
    reference = json.loads((done_run / "metrics.json").read_text())
    assert set(metrics["train"]) == {"ScienceQA", "ImageNet"}
    assert train_log_without_time(metrics) == train_log_without_time(reference)
    assert metrics["trainable_params"] == reference["trainable_params"] > 0
    assert f"- trainable params: {reference['trainable_params']:,}\n" in (out / "report.md").read_text()
    assert_same_results(out, done_run)


def test_resume_from_a_step_checkpoint_counts_every_sample_and_survives_a_damaged_one(done_run, tmp_path,
                                                                                       cache_env, monkeypatch,
                                                                                       capsys):
    out = tmp_path / "r"
    real = TaskTrainer._save_step
    calls = []

    def save_then_die(self, step_dir, micro_done, task, optimizer, scheduler):
        real(self, step_dir, micro_done, task, optimizer, scheduler)
        calls.append(task.index)
        if task.index == 1:
            raise Interrupt  # after step 1 of task 2 is saved

    monkeypatch.setattr(TaskTrainer, "_save_step", save_then_die)
    with pytest.raises(Interrupt):
        run(tiny_cfg("training.save_every_steps=1"), out)
    monkeypatch.setattr(TaskTrainer, "_save_step", real)
    partial = out / "checkpoints" / "task_2_ImageNet.partial"
    assert (partial / "trainer_state.json").is_file()
    metrics = run(tiny_cfg("training.save_every_steps=1"), out)  # resumes at step 2 of task 2
    assert metrics["train"]["ImageNet"]["samples"] == 8  # 4 before the kill + 4 after, not 4
    assert metrics["train"]["ImageNet"]["steps"] == 2
    assert same_file(out / "matrix.json", done_run / "matrix.json")
    # the same kill, then the step checkpoint is damaged: the task restarts and ends the same
    out2 = tmp_path / "r2"
    monkeypatch.setattr(TaskTrainer, "_save_step", save_then_die)
    with pytest.raises(Interrupt):
        run(tiny_cfg("training.save_every_steps=1"), out2)
    monkeypatch.setattr(TaskTrainer, "_save_step", real)
    opt = out2 / "checkpoints" / "task_2_ImageNet.partial" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    capsys.readouterr()
    metrics = run(tiny_cfg("training.save_every_steps=1"), out2)
    assert "step checkpoint of task 2 is damaged and was removed" in capsys.readouterr().err
    assert metrics["train"]["ImageNet"]["samples"] == 8
    assert same_file(out2 / "matrix.json", done_run / "matrix.json")


# ---------------------------------------------------- 6: fault injection: the output becomes unwritable mid-run
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_output_unwritable_mid_run_says_so_and_the_rerun_resumes(code, done_run, tmp_path, cache_env, monkeypatch,
                                                                  capsys):
    out = tmp_path / "r"
    trigger = out / "checkpoints" / "task_1_ScienceQA" / "adapter.json"

    def failing(fn):
        def wrapped(path, *a, **kw):
            mode = a[0] if a and isinstance(a[0], str) else kw.get("mode", "")
            writes = fn is not real_open or any(c in str(mode) for c in "wax+")
            if writes and trigger.exists() and str(path).startswith(str(out)):
                raise OSError(code, os.strerror(code), str(path))
            return fn(path, *a, **kw)
        return wrapped

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    monkeypatch.setattr(builtins, "open", failing(real_open))
    monkeypatch.setattr(io, "open", failing(real_open))
    monkeypatch.setattr(os, "open", failing(real_os_open))
    monkeypatch.setattr(os, "mkdir", failing(real_mkdir))
    assert main(["run", str(SMOKE), "--output", str(out), *sets()]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: cannot write {out}" in err and os.strerror(code) in err, err
    assert "run the same command again to resume" in err
    monkeypatch.undo()
    assert not (out / "matrix.json").exists()  # nothing half-written: the first row was not complete
    assert not [p for p in out.rglob("*") if dio.is_temp_name(p.name)]
    assert main(["run", str(SMOKE), "--output", str(out), *sets()]) == 0
    assert_same_results(out, done_run)


def test_read_only_output_at_start_is_a_clear_error(tmp_path, cache_env, monkeypatch, capsys):
    def read_only(path, *a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    assert main(["run", str(SMOKE), "--output", str(tmp_path / "ro" / "run"), *sets()]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run directory" in err and "Read-only file system" in err and "Traceback" not in err


# ---------------------------------------------------------------------- 8: damaged run-directory files
def _damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_damaged_run_directory_files_on_resume_are_clear_errors(done_run, tmp_path, cache_env, capsys):
    cases = {
        # a truncated adapter, as before, and the method state beside it
        "checkpoints/task_2_ImageNet/adapter.safetensors": "adapter.safetensors: cannot read",
        "checkpoints/task_2_ImageNet/method_state.safetensors": "method_state.safetensors: cannot read",
        "config.yaml": "config.yaml",
        "matrix.json": "matrix.json: malformed JSON",
        "checkpoints/task_1_ScienceQA/adapter.json": "adapter.json: invalid JSON",
    }
    for i, (rel, message) in enumerate(cases.items()):
        out = copy_run(done_run, tmp_path / f"c{i}")
        target = out / rel
        if rel.endswith("method_state.safetensors"):
            shutil.copy(out / "checkpoints/task_2_ImageNet/adapter.safetensors", target)  # lora keeps no state
        if rel == "config.yaml":
            target.write_text("training: [unclosed\n")
        else:
            _damage(target)
        assert main(["run", str(SMOKE), "--output", str(out), *sets()]) == 2, rel
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (rel, err)
    # a damaged predictions file that a resume would reuse (row 2 not in the matrix yet)
    out = copy_run(done_run, tmp_path / "pred")
    matrix = json.loads((out / "matrix.json").read_text())
    (out / "matrix.json").write_text(json.dumps({"tasks": matrix["tasks"], "accuracy": matrix["accuracy"][:1]}))
    pred = out / "predictions" / "ImageNet" / "after_2.jsonl"
    pred.write_text(pred.read_text()[:-20])
    assert main(["run", str(SMOKE), "--output", str(out), *sets()]) == 2
    err = capsys.readouterr().err
    assert f"{pred} line 4: malformed JSON" in err and "delete it and rerun" in err
    pred.unlink()  # as the message says: it is generated again, identically
    assert main(["run", str(SMOKE), "--output", str(out), *sets()]) == 0
    assert_same_results(out, done_run)


# ------------------------------------------------------------------ 12, 13: temporaries and permissions
def test_what_a_killed_run_leaves_is_cleaned_and_outputs_follow_the_umask(done_run, tmp_path, cache_env):
    # every output of done_run (made under umask 027): files 0640, folders 0750 (mkstemp alone gives 0600)
    for p in [done_run, *done_run.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o750 if p.is_dir() else 0o640), (p, oct(mode))
    out = copy_run(done_run, tmp_path / "r")
    planted = [
        out / ".matrix.json.x1y2.tmp",
        out / "predictions" / "ScienceQA" / ".after_1.jsonl.abc.tmp",
        out / "checkpoints" / ".task_2_ImageNet.tmp-k3j4" / "adapter.safetensors",
        out / "checkpoints" / ".task_1_ScienceQA.old-4242" / "adapter.json",
        out / "checkpoints" / "task_2_ImageNet.partial" / "optimizer.safetensors.tmp",  # a finished task's
    ]
    for p in planted:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half")
    # and killed between matrix.json and metrics.json of the last row: metrics.json is one row behind, no report
    stale = json.loads((out / "metrics.json").read_text())
    stale["train"].pop("ImageNet")
    (out / "metrics.json").write_text(json.dumps({**stale, "complete": False}))
    (out / "report.md").unlink()
    assert run(tiny_cfg(), out)["complete"]
    left = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    assert not any(".tmp" in p or ".old-" in p or ".partial" in p for p in left), left
    assert_same_results(out, done_run)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((done_run / "metrics.json").read_text())
    assert (out / "report.md").read_text() == (done_run / "report.md").read_text()


# ------------------------------------------------------------ 11: re-evaluations with other settings
def test_eval_with_other_settings_writes_beside_the_originals(done_run, tmp_path, cache_env, capsys):
    out = copy_run(done_run, tmp_path / "r")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["eval", str(out), "--after-task", "2", "--set", "evaluation.max_new_tokens=3"]) == 0
    assert "results go to" in capsys.readouterr().out
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and p.name != ".lock" and "evals" not in p.parts}
    assert after == before  # the run's predictions, matrix and config are untouched
    ev = out / "evals" / "max_new_tokens_3"
    cfg = load_config(ev / "config.yaml")
    assert cfg.evaluation.max_new_tokens == 3 and load_config(out / "config.yaml").evaluation.max_new_tokens == 2
    matrix = json.loads((ev / "matrix.json").read_text())
    assert [len(r) for r in matrix["accuracy"]] == [1, 2]  # rows 1..2: a matrix has no gaps
    for k, tasks in ((1, ["ScienceQA"]), (2, ["ScienceQA", "ImageNet"])):
        for t in tasks:
            assert len(dio.read_jsonl(ev / "predictions" / t / f"after_{k}.jsonl")) == 4
    assert (ev / "report.md").is_file() and json.loads((ev / "metrics.json").read_text())["train"]
    # the same settings again: the same folder, the same results; other settings under the same name: refused
    assert main(["eval", str(out), "--after-task", "2", "--set", "evaluation.max_new_tokens=3"]) == 0
    assert json.loads((ev / "matrix.json").read_text()) == matrix
    assert main(["eval", str(out), "--set", "evaluation.max_new_tokens=4", "--name", "max_new_tokens_3"]) == 2
    assert "different config" in capsys.readouterr().err
    # the run's own settings: regenerated in place, identical
    (out / "predictions" / "ScienceQA" / "after_1.jsonl").unlink()
    assert main(["eval", str(out), "--after-task", "1"]) == 0
    assert same_file(out / "predictions" / "ScienceQA" / "after_1.jsonl",
                     done_run / "predictions" / "ScienceQA" / "after_1.jsonl")
    assert same_file(out / "matrix.json", done_run / "matrix.json")


# --------------------------------------------------------------------- 5: a failed start, corrected
def test_a_failed_start_leaves_nothing_and_the_corrected_rerun_is_accepted(tmp_path, cache_env, capsys):
    out = tmp_path / "r"
    assert main(["run", str(SMOKE), "--output", str(out), *sets("trackers=[tensorbord]")]) == 2
    assert "trackers[0]: unknown tracker 'tensorbord'" in capsys.readouterr().err
    assert not out.exists()
    # a directory whose config.yaml has no results yet takes the corrected config
    out.mkdir()
    (out / "config.yaml").write_text("# from a start that failed later\ntraining: {lr: 0.5}\n")
    rd = RunDir(out)
    rd.check_config("training: {lr: 0.001}\n")
    assert "nothing was computed with the stored config" in capsys.readouterr().err
    (out / "checkpoints" / "task_1_X.partial").mkdir(parents=True)  # some work: now it is refused
    with pytest.raises(Exception, match="different config"):
        rd.check_config("training: {lr: 0.001}\n")


def test_an_output_that_is_some_other_folder_is_refused_and_left_alone(tmp_path, cache_env, capsys):
    other = tmp_path / "project"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (other / ".draft.json.x.tmp").write_text("mine too")  # looks like a temporary: must not be cleaned
    assert main(["run", str(SMOKE), "--output", str(other), *sets()]) == 2
    err = capsys.readouterr().err
    assert f"--output {other} is not empty (.draft.json.x.tmp, notes.txt) and is not a run directory" in err
    assert sorted(os.listdir(other)) == [".draft.json.x.tmp", "notes.txt"]
    assert main(["run", str(SMOKE), "--output", str(other / "notes.txt"), *sets()]) == 2
    assert "is a file; expected a run directory" in capsys.readouterr().err
