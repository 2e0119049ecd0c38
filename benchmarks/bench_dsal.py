"""Time and peak memory of SMoE-DSAL's DSAL loss: the efficient form against the naive ``T × V`` form (one layer,
forward + backward), and the DSAL terms inside the runner's training step on the demo base.

    python benchmarks/bench_dsal.py                 # CPU: --T 700 --d 1024 --V 32000 (7B's T and V, a reduced d)
    python benchmarks/bench_dsal.py --d 4096        # 7B's d as well (needs ~4 GB for the naive form)

Each variant runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its own. Prints one
JSON object; ``benchmarks/RESULTS.md`` has the numbers of this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def kernel(form: str, T: int, d: int, V: int, dp: int, width: int, reps: int, layers: int) -> dict:
    """DSAL of one module in each of ``layers`` layers (one sample of ``T`` prompt tokens), forward + backward:
    the efficient form computes the soft labels' expected embeddings once and a chunked logsumexp per layer; the
    naive form the full ``T × V`` soft labels and predictions per layer, all held until backward."""
    from dymoe.methods.smoe_dsal.functional import dsal_loss, dsal_loss_naive, expected_embeddings

    torch.manual_seed(0)
    w_em = torch.randn(V, d) * 0.02
    h0 = torch.randn(1, T, d)
    hs = [torch.randn(1, T, d, requires_grad=True) for _ in range(layers)]
    m = {"w_gate": (torch.randn(4 * width, d) * 0.02).requires_grad_(),
         "w_up": (torch.randn(4 * width, d) * 0.02).requires_grad_(),
         "w_down": (torch.randn(d, 4 * width) * 0.02).requires_grad_()}
    pw, pb = torch.randn(dp, d, requires_grad=True), torch.zeros(dp, requires_grad=True)
    mask = torch.ones(1, T, dtype=torch.bool)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        if form == "efficient":
            e, _ = expected_embeddings(h0[0], w_em)  # once per sample (shared by every layer and module)
            loss = sum(dsal_loss(h, e[None], mask, w_em, m, 4, pw, pb) for h in hs)
        else:
            loss = sum(dsal_loss_naive(h, h0, mask, w_em, m, 4, pw, pb) for h in hs)
        loss.sum().backward()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": round(1000 * statistics.median(times), 1), "peak_rss_mb": round(peak / 1024, 1),
            "rss_growth_mb": round((peak - base) / 1024, 1), "loss": float(loss.sum())}


def step(beta: float, reps: int) -> dict:
    """The runner's training step on the demo base (d = 128, 4 layers, V = 1024) with a mini-domains Chart batch."""
    import tempfile
    from pathlib import Path

    from dymoe.config import load_config
    from dymoe.methods.base import BatchInfo, StepInfo
    from dymoe.runner.continual import ContinualRun
    from dymoe.runner.trainer import forward_loss

    cfg = load_config("configs/smoe/minidomains-smoe-dsal.yaml", [f"method.beta={beta}", "method.eta=0.1"])
    run = ContinualRun(cfg, Path(tempfile.mkdtemp()) / "r")
    run.setup()
    from dymoe.methods.base import TaskInfo

    task = run.tasks[1]
    run.method.before_task(TaskInfo(index=0, name=task.name, num_tasks=3))
    samples = run.train_set(task)[:16]
    batch = {k: v for k, v in run.trainer.collator(samples).items()
             if isinstance(v, torch.Tensor) and k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    params = run.adapter.trainable_parameters() + run.method.extra_parameters()
    opt = torch.optim.AdamW(params, lr=1e-3)
    info = BatchInfo(phase="train", task_index=0, task=task.name)
    times = []
    for i in range(reps + 1):
        t = time.perf_counter()
        loss, terms, _ = forward_loss(run.model, run.adapter, run.method, batch, StepInfo(i, reps), info=info)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return {"ms": round(1000 * statistics.median(times), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "tokens": int(batch["attention_mask"].sum()), "terms": sorted(terms)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=700)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--dp", type=int, default=32)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8, help="layers scored (kernel)")
    ap.add_argument("--parts", default="kernel,step", help="kernel (efficient vs naive), step (the training step)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.one:
        kind, arg = args.one.split(":")
        out = kernel(arg, args.T, args.d, args.V, args.dp, args.width, args.reps, args.layers) if kind == "kernel" else \
            step(float(arg), args.reps)
        print(json.dumps(out))
        return
    res = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
           "torch": torch.__version__, "threads": 1,
           "shape": {"T": args.T, "d": args.d, "V": args.V, "d_p": args.dp, "N_e": 4, "d'": args.width,
                     "layers": args.layers}}
    for name, one in (("efficient", "kernel:efficient"), ("naive", "kernel:naive"),
                      ("step_beta0", "step:0"), ("step_beta0.1", "step:0.1")):
        if one.split(":")[0] not in args.parts.split(","):
            continue
        cmd = [sys.executable, __file__, "--one", one] + [f"--{k}={getattr(args, k)}" for k in
                                                         ("T", "d", "V", "dp", "width", "reps", "layers")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            res[name] = {"error": proc.stderr[-500:]}
        else:
            res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
