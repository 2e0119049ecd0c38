"""Two gloo processes train what one process trains: every method (and replay), per-step learning rates, DeepSpeed.

The runs are ``multiproc_worker.py``: once as a single process, once through ``torchrun --nproc_per_node 2`` (both
with global batch 8 of micro-batches of 2, so one process accumulates 4 micro-batches per step and each of two
processes accumulates 2; the last global batch of every task is partial and one of its two-process micro-steps is
a zero-weight one). The one-process run is the reference: after task 1 every adapter and method state of the
two-process run equals it to fp32 summation-order noise (``atol=1e-5``); after task 2 to ``1e-4``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "multiproc_worker.py"


def _worker():
    spec = importlib.util.spec_from_file_location("dymoe_multiproc_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_W = _worker()
CASES, max_abs_diff, _steps, _tensors = list(_W.CASES), _W.max_abs_diff, _W.step_rows, _W.checkpoint_tensors


def _env(cache: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ, DYMOE_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def _launch(out: Path, cache: Path, nproc: int, extra_env: dict | None = None, timeout: int = 900) -> None:
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=_env(cache, extra_env), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory, dymoe_cache):
    """Every case run on one process (the reference)."""
    out = tmp_path_factory.mktemp("multiproc") / "single"
    _launch(out, dymoe_cache, 1)
    return out


@pytest.fixture(scope="module")
def runs(single, tmp_path_factory, dymoe_cache):
    """{"single": dir, "double": dir}: every case run on one and on two processes."""
    out = tmp_path_factory.mktemp("multiproc") / "double"
    _launch(out, dymoe_cache, 2)
    return {"single": single, "double": out}


@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_the_one_process_adapter(runs, case):
    one, two = runs["single"] / case.replace("+", "_"), runs["double"] / case.replace("+", "_")
    env1, env2 = (json.loads((d / "env.json").read_text()) for d in (one, two))
    assert env1["batching"] == {"global_batch_size": 8, "per_device_batch_size": 2, "grad_accum": 4, "num_processes": 1}
    assert env2["batching"] == {"global_batch_size": 8, "per_device_batch_size": 2, "grad_accum": 2, "num_processes": 2}
    # the adapters (and method states: EWC's Fisher, LwF's teacher, the projector module) after each task
    # after task 1 at most ~1e-7 was measured (summation order); after task 2 up to 1.6e-5 (IncMoELoRA): Adam
    # divides near-zero gradients by their own root mean square, which magnifies that noise on a few entries
    for k, task, atol in ((1, "ScienceQA", 1e-5), (2, "ImageNet", 1e-4)):
        diff = max_abs_diff(one, two, k, task)
        assert diff <= atol, f"{case}: after task {k} the two-process run differs by {diff:.3g}"
    # and the training moved the weights: the one-process adapter is not the untrained one (LoRA's B and the FFN
    # experts' w_down start at zero)
    b = [t for n, t in _tensors(one, 1, "ScienceQA").items() if n.endswith(("_B", "w_down")) and t.numel()]
    assert b and any(float(t.abs().max()) > 0 for t in b)


def test_two_processes_plan_what_one_process_plans(runs):
    """The planning phase (probe training on a subset, feature pass sharded over the processes and gathered in
    sample order) decides the same on two processes as on one; so do the task locator's routed tasks."""
    from safetensors.torch import load_file

    for k, task in ((1, "ScienceQA"), (2, "ImageNet")):
        one, two = (load_file(str(runs[r] / "test-planner" / "checkpoints" / f"task_{k}_{task}.plan" /
                                  "plan_state.safetensors")) for r in ("single", "double"))
        assert one.keys() == two.keys() and one["prototypes"].shape[0] == k
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-5)
    for task in ("ScienceQA", "ImageNet"):
        rows = [[r["routed_task"] for r in _rows(runs[d] / "test-planner" / "predictions" / task / "after_2.jsonl")]
                for d in ("single", "double")]
        assert rows[0] == rows[1] and rows[0]


def test_smoe_dsal_identification_counts_are_those_of_one_process(runs):
    """SMoE-DSAL's identification report (each process scores its own shard of the evaluation, the counts are
    summed over processes) equals the one-process report: instances, per-(instance, layer) / per-instance /
    per-layer accuracy, mean activated experts per prompt token; so do the routed tasks written beside the
    predictions (gathered)."""
    got = {}
    for r in ("single", "double"):
        metrics = json.loads((runs[r] / "smoe_dsal" / "metrics.json").read_text())
        got[r] = (metrics["method_eval"], metrics["locator"]["main"])
    (one, loc1), (two, loc2) = got["single"], got["double"]
    assert [one[f"after_task_{k}"]["dsal"]["instances"] for k in (1, 2)] == [2, 4]  # 2 test questions per task
    for k in (1, 2):
        a, b = one[f"after_task_{k}"]["dsal"], two[f"after_task_{k}"]["dsal"]
        assert a["rule"] == b["rule"] == "router"
        for key in ("instances", "accuracy_instance_layer", "accuracy_instance", "accuracy_per_layer"):
            assert b[key] == a[key], (k, key)
        # equal on this machine; a gate within fp32 noise of its threshold (the two runs' weights differ by ~1e-6)
        # could flip a token's count elsewhere: one flip moves the mean by 1/298 (149 prompt tokens × 2 layers)
        assert b["mean_active_experts"] == pytest.approx(a["mean_active_experts"], abs=0.01)
    assert loc2 == loc1


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("case", ["lora", "incmoelora+replay"])
def test_per_step_learning_rates_and_losses_are_those_of_one_process(runs, case):
    one, two = (_steps(runs[r] / case.replace("+", "_")) for r in ("single", "double"))
    assert [(r["task"], r["step"], r["samples"], r["tokens"]) for r in one] == [
        (r["task"], r["step"], r["samples"], r["tokens"]) for r in two]
    # 14 samples per task at global batch 8 -> 2 steps (16 with replay on task 2 -> 2 full steps); cosine, no warmup
    assert [r["lr"] for r in one if r["task"] == "ScienceQA"] == pytest.approx([1e-3, 5e-4])
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
def test_deepspeed_zero2_trains_the_one_process_adapter(single, tmp_path, dymoe_cache):
    cases = ["lora", "dymoe", "test-projector", "lora+projector"]
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
           "ACCELERATE_MIXED_PRECISION": "no"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(tmp_path / "ds"), ",".join(cases)]
    proc = subprocess.run(cmd, env=_env(dymoe_cache, env), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for case in cases:
        ds = tmp_path / "ds" / case.replace("+", "_")
        assert json.loads((ds / "env.json").read_text())["distributed_type"] == "DEEPSPEED"
        for k, task, atol in ((1, "ScienceQA", 1e-5), (2, "ImageNet", 1e-4)):
            diff = max_abs_diff(single / case.replace("+", "_"), ds, k, task)
            assert diff <= atol, f"{case}: after task {k} ZeRO-2 differs from one process by {diff:.3g}"
        assert [r["lr"] for r in _steps(ds)] == [r["lr"] for r in _steps(single / case.replace("+", "_"))]
