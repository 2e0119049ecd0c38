"""End-to-end continual runs on the tiny backbone: files, resume after SIGKILL, faults (two processes:
``test_multiprocess.py``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dymoe.cli.main import main
from dymoe.config import load_config
from dymoe.eval.metrics import summarize
from dymoe.io import read_jsonl
from dymoe.runner.continual import run

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
# a faster variant of the smoke config for tests: two tasks, few samples
FAST = [
    "benchmark.order=[ScienceQA, ImageNet]",
    "benchmark.max_train_samples=32",
    "benchmark.max_eval_samples=8",
    "training.batch_size=8",
    "trackers=[]",
]


def cfg_with(*overrides):
    return load_config(SMOKE, [*FAST, *overrides])


@pytest.mark.parametrize("method", ["lora", "incmoelora"])
def test_smoke_run_writes_every_file(method, tmp_path, cache_env):
    out = tmp_path / method
    metrics = run(cfg_with(f"method.name={method}"), out)
    for f in ("config.yaml", "env.json", "matrix.json", "metrics.json", "report.md"):
        assert (out / f).is_file(), f
    tasks = ["ScienceQA", "ImageNet"]
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["tasks"] == tasks and [len(r) for r in matrix["accuracy"]] == [1, 2]
    # metrics are the pure functions of the stored matrix
    expect = summarize(matrix["accuracy"])
    for key in ("MFT", "MFN", "MAA", "BWT"):
        assert metrics[key] == pytest.approx(expect[key])
    assert metrics["method"] == method and metrics["complete"] is True
    # one prediction per test sample for every (task, after k) pair
    for k in (1, 2):
        for t in tasks[:k]:
            rows = read_jsonl(out / "predictions" / t / f"after_{k}.jsonl")
            assert len(rows) == 8 and all({"question_id", "prompt", "text"} <= set(r) for r in rows)
    assert (out / "checkpoints" / "task_2_ImageNet" / "adapter.safetensors").is_file()
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["tasks"] == tasks
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"]["name"] == method and resolved["training"]["batch_size"] == 8
    assert metrics["trainable_params"] > 0


def test_incmoelora_keeps_earlier_groups_bit_identical(tmp_path, cache_env):
    out = tmp_path / "inc"
    run(cfg_with("method.name=incmoelora"), out)
    t1 = load_file(str(out / "checkpoints" / "task_1_ScienceQA" / "adapter.safetensors"))
    t2 = load_file(str(out / "checkpoints" / "task_2_ImageNet" / "adapter.safetensors"))
    meta2 = json.loads((out / "checkpoints" / "task_2_ImageNet" / "adapter.json").read_text())
    checked = 0
    for key, old in t1.items():
        if key.endswith(("frozen_A", "frozen_router")):
            assert torch.equal(t2[key][: old.shape[0]], old), key  # task-1 experts are a prefix, unchanged
            assert t2[key].shape[0] == 2 * old.shape[0]
            checked += 1
        elif key.endswith("frozen_B"):
            assert torch.equal(t2[key][:, : old.shape[1]], old), key
    assert checked > 0
    first = next(iter(meta2["modules"].values()))
    assert first["expert_group"] == [0] * 4 + [1] * 4 and not any(first["expert_trainable"])


def _cli_env(cache):
    env = dict(os.environ, DYMOE_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _run_cli(args, cache, **kw):
    return subprocess.Popen([sys.executable, "-m", "dymoe.cli.main", *args], env=_cli_env(cache), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_during_task_2_then_resume_gives_the_same_result(tmp_path, dymoe_cache):
    sets = [a for o in [*FAST, "method.name=incmoelora", "training.save_every_steps=1"] for a in ("--set", o)]
    ref, broken = tmp_path / "ref", tmp_path / "broken"
    p = _run_cli(["run", str(SMOKE), "--output", str(ref), *sets], dymoe_cache)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    p = _run_cli(["run", str(SMOKE), "--output", str(broken), *sets], dymoe_cache)
    marker = broken / "checkpoints" / "task_2_ImageNet.partial" / "trainer_state.json"
    deadline = time.time() + 600
    while not marker.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed inside task 2"
    assert not (broken / "checkpoints" / "task_2_ImageNet" / "adapter.json").exists()
    env_first = json.loads((broken / "env.json").read_text())
    p = _run_cli(["run", str(SMOKE), "--output", str(broken), *sets], dymoe_cache)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    # env.json keeps the first start's record (its commit and time) and lists the resume under it
    env = json.loads((broken / "env.json").read_text())
    assert {k: v for k, v in env.items() if k != "resumes"} == env_first and "resumes" not in env_first
    assert len(env["resumes"]) == 1 and env["resumes"][0]["torch"] == torch.__version__
    assert env["resumes"][0]["started"] >= env_first["started"]
    assert (broken / "matrix.json").read_text() == (ref / "matrix.json").read_text()
    a = load_file(str(ref / "checkpoints" / "task_2_ImageNet" / "adapter.safetensors"))
    b = load_file(str(broken / "checkpoints" / "task_2_ImageNet" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (broken / "checkpoints" / "task_2_ImageNet.partial").exists()


def test_bad_config_and_unknown_method_are_clear_errors(tmp_path, cache_env, capsys):
    assert main(["run", str(SMOKE), "--output", str(tmp_path / "x"), "--set", "training.lrr=1"]) == 2
    assert "unknown key 'training.lrr'" in capsys.readouterr().err
    assert main(["run", str(SMOKE), "--output", str(tmp_path / "x"), "--set", "method.name=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "incmoelora" in err and "lora" in err
    assert main(["run", str(SMOKE), "--output", str(tmp_path / "x"), "--set", "training.schedule=steps"]) == 2
    assert "allowed values: ['cosine', 'linear', 'constant']" in capsys.readouterr().err
    assert main(["run", str(SMOKE), "--output", str(tmp_path / "x"), "--set", "backbone.path=/no/such/model"]) == 2
    assert "/no/such/model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "a failed start leaves no run directory"


def test_nan_loss_stops_with_task_and_step_and_keeps_last_checkpoint(tmp_path, cache_env, capsys):
    from dymoe.methods import METHODS
    from dymoe.methods.incmoelora import IncMoELoRA

    class Exploding(IncMoELoRA):
        name = "exploding"

        def loss_terms(self, batch, outputs, step):
            if self._task == 1 and step.step == 1:
                return {"boom": torch.tensor(float("nan"))}
            return {}

        def before_task(self, task):
            self._task = task.index
            super().before_task(task)

    METHODS.add("exploding", Exploding)
    try:
        out = tmp_path / "nan"
        code = main(["run", str(SMOKE), "--output", str(out), *[a for o in [*FAST, "method.name=exploding"]
                                                                for a in ("--set", o)]])
    finally:
        METHODS._items.pop("exploding")
    assert code == 2
    err = capsys.readouterr().err
    assert "loss became nan on task 2 ('ImageNet') at step 2" in err
    assert (out / "checkpoints" / "task_1_ScienceQA" / "adapter.json").is_file()
    assert not (out / "checkpoints" / "task_2_ImageNet").exists()
    assert len(json.loads((out / "matrix.json").read_text())["accuracy"]) == 1


def test_resume_with_a_different_config_is_refused(tmp_path, cache_env, capsys):
    out = tmp_path / "r"
    run(cfg_with("method.name=lora", "benchmark.order=[ScienceQA]"), out)
    assert main(["run", str(SMOKE), "--output", str(out), *[a for o in [*FAST, "benchmark.order=[ScienceQA]",
                                                                       "training.lr=0.5"] for a in ("--set", o)]]) == 2
    assert "first difference at 'training.lr'" in capsys.readouterr().err


def test_eval_command_regenerates_from_checkpoints_without_touching_the_config(tmp_path, cache_env, capsys):
    out = tmp_path / "ev"
    run(cfg_with("method.name=incmoelora"), out)
    config_before = (out / "config.yaml").read_text()
    matrix_before = json.loads((out / "matrix.json").read_text())
    pred = out / "predictions" / "ScienceQA" / "after_1.jsonl"
    pred.write_text("")  # must be regenerated, not re-read
    assert main(["eval", str(out), "--after-task", "1"]) == 0  # the run's own settings: in place
    assert len(read_jsonl(pred)) == 8
    assert (out / "config.yaml").read_text() == config_before
    # same weights, same greedy decoding: the same row
    assert json.loads((out / "matrix.json").read_text()) == matrix_before
    assert "after task 1:" in capsys.readouterr().out
    assert main(["eval", str(out), "--after-task", "5"]) == 2
    assert main(["eval", str(out), "--set", "training.lr=1"]) == 2
