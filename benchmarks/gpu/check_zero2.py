"""GPU check of the DeepSpeed ZeRO-2 path against the plain one (one GPU, a few minutes): writes a JSON verdict.

    python benchmarks/gpu/check_zero2.py [--out benchmarks/results/gpu_zero2_check.json] [--nproc 1]

Runs ``tests/runner/multiproc_worker.py`` (two tasks of ``configs/smoke.yaml`` on the tiny backbone: global batch 8
of micro-batches of 2, a partial last step per task) twice through ``torchrun``: once plain (DDP for nproc > 1),
once with DeepSpeed ZeRO-2 (``ACCELERATE_USE_DEEPSPEED=true``), both under the run config's mixed precision
(``auto`` = bf16 autocast on CUDA; ZeRO-2 runs it as DeepSpeed's ``torch_autocast``). It compares every adapter and
method-state tensor after each task, the per-step learning rates, and the GPU memory still allocated after each
run (a leaked engine or optimizer state would show there). Needs ``pip install -e ".[deepspeed]"``. The CPU
version of this comparison (fp32, two gloo processes) is ``tests/runner/test_multiprocess.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "runner" / "multiproc_worker.py"
CASES = ["lora", "dymoe", "test-projector"]
# bf16 autocast on both sides: the same ops, so differences stay at bf16 rounding of the summation order
ATOL = {1: 2e-3, 2: 5e-3}


def launch(out: Path, nproc: int, deepspeed: bool, cache: str) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DYMOE_CACHE=cache,
               DYMOE_WORKER_MEMORY="1", TOKENIZERS_PARALLELISM="false")
    if deepspeed:
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), str(out), ",".join(CASES)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=540)
    if proc.returncode != 0:
        raise SystemExit(f"{'zero2' if deepspeed else 'plain'} run failed:\n{proc.stderr[-4000:]}")
    return time.time() - t0


def main(argv=None) -> int:
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "runner"))
    from multiproc_worker import max_abs_diff
    from multiproc_worker import step_rows as _steps

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_zero2_check.json"))
    ap.add_argument("--work", default="/tmp/dymoe-gpu-zero2")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--cache", default=os.environ.get("DYMOE_CACHE", "/tmp/dymoe-gpu-cache"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine (the CPU version is in tests/)")
    work = Path(args.work)
    times = {"plain": launch(work / "plain", args.nproc, False, args.cache),
             "zero2": launch(work / "zero2", args.nproc, True, args.cache)}
    cases, ok = {}, True
    for case in CASES:
        a, b = work / "plain" / case, work / "zero2" / case
        diffs = {k: max_abs_diff(a, b, k, t) for k, t in ((1, "ScienceQA"), (2, "ImageNet"))}
        lrs_equal = [r["lr"] for r in _steps(a)] == [r["lr"] for r in _steps(b)]
        env = json.loads((b / "env.json").read_text())
        memory = {side: json.loads((work / side / case / "memory.json").read_text()) for side in ("plain", "zero2")}
        passed = lrs_equal and env["distributed_type"] == "DEEPSPEED" and all(diffs[k] <= ATOL[k] for k in diffs)
        ok &= passed
        cases[case] = {"max_abs_diff_after_task": diffs, "lrs_equal": lrs_equal, "memory": memory, "passed": passed}
    import accelerate
    import deepspeed
    import transformers

    report = {
        "passed": ok, "atol": ATOL, "cases": cases, "seconds": times, "nproc": args.nproc,
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "deepspeed": deepspeed.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({c: (v["passed"], v["max_abs_diff_after_task"]) for c, v in cases.items()}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
