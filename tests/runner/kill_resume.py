"""SIGKILL a tiny run at many moments, resume it, and compare every result file with an uninterrupted run.

Not collected by pytest (several minutes); run by hand after changing the runner, the trainer or the writers::

    python tests/runner/kill_resume.py [--workdir DIR] [--only NAME,...]

Each case starts ``dymoe run`` (two tasks, step checkpoints every step), waits for a marker (a file that appears
at that moment, or a share of the reference run's time), kills the process with SIGKILL, then runs the same
command again and checks: exit 0, the same bytes as the reference for the matrix, every adapter, method state and
predictions file and ``train_steps.jsonl``, the training log (without wall time), and no temporary left. Prints
one line per case and exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
SETS = ["benchmark.order=[ScienceQA, ImageNet]", "benchmark.max_train_samples=16", "benchmark.max_eval_samples=4",
        "training.batch_size=4", "evaluation.max_new_tokens=2", "trackers=[]", "method.name=incmoelora",
        "training.save_every_steps=1"]
C1, C2 = "checkpoints/task_1_ScienceQA", "checkpoints/task_2_ImageNet"

# name -> marker: a relative path that appears at that moment (``path@n``: a step checkpoint n steps in;
# ``path#n``: a matrix with n rows), or a fraction of the reference run's wall time
CASES: dict[str, str | float] = {
    "after config.yaml": "config.yaml",
    "task 1, step checkpoint 1": f"{C1}.partial/trainer_state.json",
    "task 1, step checkpoint 3": f"{C1}.partial/trainer_state.json@3",
    "after checkpoint 1": f"{C1}/adapter.json",
    "eval after 1 (predictions written)": "predictions/ScienceQA/after_1.jsonl",
    "after matrix row 1": "matrix.json",
    "after report 1": "report.md",
    "task 2, step checkpoint 1": f"{C2}.partial/trainer_state.json",
    "after checkpoint 2": f"{C2}/adapter.json",
    "eval after 2, first task": "predictions/ScienceQA/after_2.jsonl",
    "eval after 2, second task": "predictions/ImageNet/after_2.jsonl",
    "after matrix row 2": "matrix.json#2",
    "mid-write of any temporary": "*.tmp",
    "at 30 % of the time": 0.3,
    "at 45 % of the time": 0.45,
    "at 60 % of the time": 0.6,
    "at 75 % of the time": 0.75,
    "at 90 % of the time": 0.9,
}


def _cmd(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "dymoe.cli.main", "run", str(SMOKE), "--output", str(out)]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT / "src")}


def _reached(out: Path, marker: str | float, t0: float, ref_seconds: float) -> bool:
    if isinstance(marker, float):
        return time.time() - t0 >= marker * ref_seconds
    if marker == "*.tmp":
        return any(p.name.endswith(".tmp") or ".tmp-" in p.name for p in out.rglob("*"))
    if "#" in marker:  # a matrix with at least n rows
        path, _, rows = marker.partition("#")
        try:
            return len(json.loads((out / path).read_text())["accuracy"]) >= int(rows)
        except (OSError, ValueError, KeyError):
            return False
    path, _, nth = marker.partition("@")
    p = out / path
    if not nth:
        return p.exists()
    # a step checkpoint at least n steps in
    try:
        return json.loads(p.read_text())["steps_done"] >= int(nth)
    except (OSError, ValueError, KeyError):
        return False


def _results(out: Path) -> dict[str, bytes]:
    keep = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and (p.suffix == ".safetensors" or p.name in ("matrix.json", "train_steps.jsonl")
                          or rel.startswith("predictions/")):
            keep[rel] = p.read_bytes()
    return keep


def _train_log(out: Path) -> dict:
    log = json.loads((out / "metrics.json").read_text())["train"]
    return {t: {k: _counts(v) if k == "cost" else v for k, v in e.items() if k != "seconds"} for t, e in log.items()}


# issue 22's cost record: what it measures (time, throughput, memory, inference timing) differs between runs; its
# counts (steps, samples, tokens, parameters) must not
MEASURED = {"train_seconds", "samples_per_s", "tokens_per_s", "peak_memory_bytes", "peak_memory_kind"}


def _counts(cost: dict) -> dict:
    return {k: v for k, v in cost.items() if k not in MEASURED and not k.startswith(("gen_", "inference", "flops"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", default=None, help="comma-separated case names")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-resume-"))
    ref = work / "reference"
    if not (ref / "metrics.json").exists():
        t0 = time.time()
        subprocess.run(_cmd(ref), env=_env(), check=True, capture_output=True)
        (work / "reference_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    ref_file = work / "reference_seconds.txt"
    ref_seconds = float(ref_file.read_text()) if ref_file.exists() else 30.0
    expected, expected_log = _results(ref), _train_log(ref)
    names = args.only.split(",") if args.only else list(CASES)
    failures = 0
    for i, name in enumerate(names):
        out = work / f"case{i}"
        marker = CASES[name]
        t0 = time.time()
        p = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and not _reached(out, marker, t0, ref_seconds):
            time.sleep(0.005)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait()
        at = time.time() - t0
        r = subprocess.run(_cmd(out), env=_env(), capture_output=True, text=True)
        problems = []
        if r.returncode != 0:
            problems.append(f"resume exit {r.returncode}: {r.stderr[-500:]}")
        else:
            got = _results(out)
            if got.keys() != expected.keys():
                problems.append(f"files differ: {sorted(set(got) ^ set(expected))}")
            problems += [f"{k} differs" for k in expected if k in got and got[k] != expected[k]]
            if _train_log(out) != expected_log:
                problems.append("training log differs")
            left = [p.name for p in out.rglob("*") if ".tmp" in p.name or ".old-" in p.name or p.suffix == ".partial"]
            if left:
                problems.append(f"left: {left}")
        failures += bool(problems)
        state = "killed" if killed else "finished before the marker"
        print(f"{'FAIL' if problems else 'ok  '} {name}: {state} at {at:.1f}s; {'; '.join(problems) or 'identical'}",
              flush=True)
    print(f"{len(names) - failures}/{len(names)} cases identical after resume ({work})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
