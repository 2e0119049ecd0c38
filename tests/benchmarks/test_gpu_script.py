"""The prepared GPU job of issue 23 (``benchmarks/gpu/issue23_all.py``): the parts a CPU can check.

The whole job runs on a GPU; ``--preset cpu --dry-run`` runs every phase at toy size (minutes, not part of CI). Here:
its correctness phase at toy size on the CPU, the anchor parser on the anchor script's own line format, the goal
evaluation on hand-made numbers, and the clear refusal without CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "issue23_all.py"


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("issue23_all", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_correctness_phase_passes_on_cpu_at_toy_size(job):
    res = job.correctness(argparse.Namespace(device="cpu", dry_run=True))
    assert len(res["checks"]) == 4  # task 1 and task 8 banks, fp32 and bf16 autocast
    assert res["all_ok"], res
    fp32 = [r for r in res["checks"] if r["dtype"] == "float32"]
    assert all(r["rel_err_sparse_eval"] < 1e-5 and r["rel_err_grad_x"] < 1e-5 for r in fp32)


def test_anchor_lines_are_parsed_with_ratios_to_the_floor(job):
    # the exact format anchor_moelora.py prints (its f-string, filled in by hand)
    out = "\n".join([
        "2.13.0 NVIDIA H200",
        f"{'frozen':7s} ckpt=1 E={0:4d} layers=32 B=8 T=640: {500.0:8.1f} ms/step  {10240:9.0f} tok/s  "
        f"trainable={0.0:8.1f}M  peakmem={20.5:5.1f}GiB",
        f"{'fused':7s} ckpt=1 E={128:4d} layers=32 B=8 T=640: {1040.0:8.1f} ms/step  {4923:9.0f} tok/s  "
        f"trainable={900.1:8.1f}M  peakmem={33.0:5.1f}GiB",
        "loop 128 FAILED RuntimeError('out of memory')",
    ])
    rows = job.parse_anchor(out)["rows"]
    assert rows[0]["kind"] == "frozen" and rows[0]["over_frozen"] == 1.0
    assert rows[1] == {"kind": "fused", "experts": 128, "ckpt": 1, "layers": 32, "batch": 8, "seq": 640,
                       "ms_per_step": 1040.0, "tokens_per_s": 4923, "trainable_M": 900.1, "peak_mem_gib": 33.0,
                       "over_frozen": 2.08}
    assert "FAILED" in rows[2]["failed"]


def test_goals_are_evaluated_against_the_issue_thresholds(job):
    results = {
        "train_step": {"results": {
            "frozen": {"ms_per_step": 100.0, "peak_mem_gib": 20.0, "tokens_per_s": 20000},
            "dymoe_t8": {"step_over_frozen": 1.2, "peak_mem_gib": 21.0, "tokens_per_s": 11000},
            "dymoe_over_incmoelora_t8": 1.01,
        }},
        "generate_batch16": {"results": {"dense_over_base": 0.7, "sparse_over_base": 0.9}},
    }
    g = job.goals(results)
    assert g["dymoe_t8_step_over_frozen"] == {"value": 1.2, "goal": "<= 1.15", "met": False}
    assert g["dymoe_t8_peak_mem_over_frozen"]["value"] == 1.05 and g["dymoe_t8_peak_mem_over_frozen"]["met"]
    assert g["dymoe_t8_tokens_per_s"]["met"] and g["dymoe_over_incmoelora_t8"]["met"]
    assert not g["generate_batch16_dense_over_base"]["met"] and g["generate_batch16_sparse_over_base"]["met"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_it_stops_with_a_clear_message(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "none is visible here" in proc.stderr and "--preset cpu --dry-run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()
