"""Which reading of DyMoE's load-balancing loss L_aux changes training (issue 14, dymoe.md §6)?

On a run config (default: the demo's mini-CoIN, ``configs/demo/minicoin.yaml``) this trains task 1 once as
IncMoELoRA, then starts task 2 from that state with every ``method.aux_type`` (TAG and RSR off: the ablation's
"+ L_aux" row) and measures:

1. **Gradient at the start of task 2** (same new group, same batches for every reading): the norm of the gradient
   of L_aux (module mean, unweighted) on the new router rows, beside that of the LM loss on the same rows, and the
   ratio at the paper's weight λ = 1e-3. L_aux depends only on routing scores, so the experts' A/B get nothing.
2. **Effect of a short run**: task 2 trained for its full schedule with each reading from the same state and seed;
   the new router rows' distance to IncMoELoRA's (relative to how far IncMoELoRA's moved from their init), and the
   routing the trained model gives held-out task-2 batches (training routing: the new group's share of the
   top-K slots; the coefficient of variation of the new experts' dispatch fractions, 0 = perfectly balanced).

    python benchmarks/aux_loss_probe.py --output benchmarks/results/aux_loss_probe.json [--seed 0]

Prints a Markdown table and writes the JSON. One torch thread (set OMP_NUM_THREADS=1 on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dymoe.config import load_config
from dymoe.injection.state import load_adapter_into
from dymoe.methods.base import TaskInfo
from dymoe.methods.dymoe import DyMoE, DyMoEOptions
from dymoe.methods.dymoe.functional import load_balance_loss
from dymoe.methods.dymoe.method import task_groups
from dymoe.runner.continual import ContinualRun

ROOT = Path(__file__).resolve().parents[1]
READINGS = ("none", "switch_local", "switch_all", "switch_new", "group", "cv2")


def aux_only(kind: str) -> DyMoE:
    """The ablation's "+ L_aux" method with one reading (``none`` = IncMoELoRA, bit for bit)."""
    return DyMoE(DyMoEOptions(tag=False, rsr_exc=0.0, rsr_spe=0.0, aux_type=kind, aux_weight=1e-3))


def install(run: ContinualRun, method: DyMoE, ckpt: Path, info: TaskInfo, seed: int) -> None:
    """Reset the adapter to the task-1 checkpoint and start task 2 with ``method`` (same init for every method)."""
    from accelerate.utils import set_seed

    load_adapter_into(run.adapter, ckpt)
    run.adapter.context.observers.clear()
    method.setup(run.model, run.adapter)
    run.method = run.trainer.method = method
    set_seed(seed)
    method.before_task(info)


def new_router_rows(run: ContinualRun) -> dict[str, torch.Tensor]:
    return {n: m.router.detach().clone() for n, m in run.adapter.modules.items()}


def forward_events(run: ContinualRun, batch: dict) -> tuple[list, torch.Tensor]:
    """One training-mode forward with routing recorded: the events and the LM loss."""
    ctx, events = run.adapter.context, []
    ctx.observers.append(events.append)
    ctx.policy, ctx.group_mask, ctx.recording = None, None, True
    try:
        out = run.model(**batch)
    finally:
        ctx.recording = False
        ctx.observers.remove(events.append)
    return events, out.loss


def gradient_probe(run: ContinualRun, batches: list[dict]) -> dict[str, dict[str, float]]:
    """Per reading: the mean over batches of ‖∂L_aux/∂U_new‖ and ‖∂L_LM/∂U_new‖ (module-mean losses)."""
    rows = [m.router for m in run.adapter.modules.values()]
    n_mod = len(rows)
    out: dict[str, dict[str, list[float]]] = {k: {"aux": [], "value": []} for k in READINGS if k != "none"}
    lm_norms = []
    run.model.train()
    for batch in batches:
        events, lm = forward_events(run, batch)
        g = torch.autograd.grad(lm, rows, retain_graph=True)
        lm_norms.append(float(torch.sqrt(sum((x.float() ** 2).sum() for x in g))))
        for kind in out:
            total = sum(
                load_balance_loss(ev.scores, ev.layer.num_frozen, ev.token_mask, ev.layer.top_k, ev.layer.temperature,
                                  kind, task_groups(ev.layer) if kind == "group" else None)
                for ev in events
            ) / n_mod
            g = torch.autograd.grad(total, rows, retain_graph=True, allow_unused=True)
            norm = torch.sqrt(sum((x.float() ** 2).sum() for x in g if x is not None)) if any(
                x is not None for x in g) else torch.zeros(())
            out[kind]["aux"].append(float(norm))
            out[kind]["value"].append(float(total.detach()))
    run.model.eval()
    lm_mean = statistics.fmean(lm_norms)
    return {
        kind: {
            "aux_value": statistics.fmean(v["value"]),
            "aux_grad_norm": statistics.fmean(v["aux"]),
            "lm_grad_norm": lm_mean,
            "weighted_ratio": 1e-3 * statistics.fmean(v["aux"]) / lm_mean,
        }
        for kind, v in out.items()
    }


@torch.no_grad()
def routing_balance(run: ContinualRun, batches: list[dict]) -> dict[str, float]:
    """Training routing on ``batches`` (new group still trainable): the new group's share of the top-K slots and
    the mean over modules of the CV of the new experts' dispatch fractions."""
    share, cv = [], []
    run.model.eval()
    for batch in batches:
        events, _ = forward_events(run, batch)
        for ev in events:
            w = ev.weights[ev.token_mask] if ev.token_mask is not None else ev.weights  # [N, E]
            hits = (w > 0).float().sum(0)  # [E]
            new = hits[ev.layer.num_frozen:]
            share.append(float(new.sum() / hits.sum().clamp_min(1)))
            f = new / new.sum().clamp_min(1)
            cv.append(float(f.std() / f.mean().clamp_min(1e-12)))
    return {"new_group_share": statistics.fmean(share), "new_experts_cv": statistics.fmean(cv)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo" / "minicoin.yaml"))
    ap.add_argument("--tasks", default="ScienceQA,TextVQA", help="task 1 and task 2 (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-batches", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--output", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    t1, t2 = args.tasks.split(",")
    work = Path(tempfile.mkdtemp(prefix="dymoe-aux-probe-"))
    cfg = load_config(args.config, [
        "method.name=dymoe", "method.tag=false", "method.rsr_exc=0.0", "method.rsr_spe=0.0", "method.aux_type=none",
        f"benchmark.order=[{t1},{t2}]", f"training.seed={args.seed}", "trackers=[]", *args.set,
    ])
    run = ContinualRun(cfg, work / "run")
    run.setup()
    task1, task2 = run.tasks
    print(f"training task 1 ({task1.name}) as IncMoELoRA ...", file=sys.stderr)
    run.train_task(0, task1, TaskInfo(0, task1.name, 2))
    ckpt = run.dir.checkpoint(1, task1.name)
    samples2 = list(run.train_set(task2))
    run.trainer.samples = samples2
    probe = list(run.trainer.iter_batches(args.probe_batches, seed=10_000 + args.seed))
    held = list(run.trainer.iter_batches(args.probe_batches, seed=20_000 + args.seed))
    info = TaskInfo(1, task2.name, 2, train_samples=samples2)
    task_seed = args.seed * 1000 + 1

    install(run, aux_only("none"), ckpt, info, task_seed)
    init_rows = new_router_rows(run)
    grads = gradient_probe(run, probe)

    results: dict[str, dict] = {}
    ref_rows = None
    for kind in READINGS:
        print(f"task 2 ({task2.name}) with aux_type={kind} ...", file=sys.stderr)
        install(run, aux_only(kind), ckpt, info, task_seed)
        assert all(torch.equal(init_rows[n], r) for n, r in new_router_rows(run).items()), "init differs"
        res = run.trainer.train(info, samples2, seed=task_seed)
        rows = new_router_rows(run)
        entry = {"final_loss": res.final_loss, "aux_last": res.loss_terms.get("aux"), **routing_balance(run, held)}
        if kind == "none":
            ref_rows = rows
            entry["router_moved"] = 0.0
        else:
            moved = sum(float((rows[n] - ref_rows[n]).norm() ** 2) for n in rows) ** 0.5
            ref_moved = sum(float((ref_rows[n] - init_rows[n]).norm() ** 2) for n in rows) ** 0.5
            entry["router_moved"] = moved / max(ref_moved, 1e-12)
            entry.update(grads[kind])
        results[kind] = entry

    header = ("| aux_type | L_aux at start | ‖∇U L_aux‖ | ‖∇U L_LM‖ | λ·ratio | ‖U − U_IncMoELoRA‖ / ‖ΔU_IncMoELoRA‖ "
              "| new-group share | CV new experts | final loss |")
    lines = [header, "|" + "---|" * 9]
    for kind, e in results.items():
        g = grads.get(kind, {})
        lines.append(
            f"| {kind} | {g.get('aux_value', float('nan')):.4f} | {g.get('aux_grad_norm', 0.0):.3e} | "
            f"{g.get('lm_grad_norm', float('nan')):.3e} | {g.get('weighted_ratio', 0.0):.2e} | "
            f"{e['router_moved']:.2e} | {e['new_group_share']:.3f} | {e['new_experts_cv']:.3f} | {e['final_loss']:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    summary = {
        "config": args.config, "tasks": [t1, t2], "seed": args.seed, "overrides": args.set,
        "results": results, "table": table, "seconds": round(time.perf_counter() - t0, 1),
        "machine": platform.platform(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
