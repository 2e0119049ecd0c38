"""Measure the properties mini-CoIN + the demo base must have (issue 17), and write them as JSON and Markdown.

    python benchmarks/minicoin_properties.py --runs runs/bench --out benchmarks/results/minicoin_properties.json

1. **learnable**: each task trained alone (the demo's LoRA config, ``benchmark.order=[task]``) from the demo base
   reaches >= 50 % (``alone``; seeds from ``--alone-seeds``).
2. **incremental experts learn as well as one LoRA**: IncMoELoRA's MFT (accuracy right after training each task)
   within 10 % of sequential LoRA's (``seeds``).
3. **IncMoELoRA forgets through routing drift**: BWT <= -6, the routing mass that later expert groups take on old
   tasks' evaluation prompts grows task by task, and masking the later groups at evaluation restores most of the
   lost accuracy (``drift``: :func:`later_group_share`, :func:`masked_evaluation`).
4. **sequential LoRA forgets**: BWT <= -15 (CoIN's 7B LoRA: -23.12).
5. **stable**: the standard deviations of MFN and BWT over the seeds are below half the LoRA-IncMoELoRA gap.

(6, the demo's wall time from a fresh clone, is measured with ``make demo``, not here.)

Runs go through the continual runner with the demo configs (``configs/demo``), one run directory each under
``--runs``; an interrupted benchmark resumes (finished runs are reused). The JSON is rewritten after every run,
so a partial file is usable. ``--only`` picks parts; ``--set`` overrides the demo config in every run (e.g. another
base); ``--order`` runs the sequences in another task order; ``--render A.json [B.json ...]`` merges result files
and prints the Markdown tables of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("alone", "seeds", "drift")
METRICS = ("MFT", "MFN", "MAA", "BWT")


# ---------------------------------------------------------------------------------------------------- runs
def run_one(method: str, seed: int, order: list[str] | str | None, out: str, overrides: tuple[str, ...] = ()) -> dict:
    """One demo run (resumed if it exists); returns its metrics, matrix and wall time."""
    from dymoe.config import load_config
    from dymoe.demo.plan import CONFIG_DIR, demo_overrides
    from dymoe.runner.continual import run

    items = demo_overrides(method, seed=seed) + list(overrides)
    if order is not None:
        items.append(f"benchmark.order={json.dumps(order)}")
    cfg = load_config(CONFIG_DIR / "minicoin.yaml", items)
    start = time.perf_counter()
    metrics = run(cfg, out)
    matrix = json.loads((Path(out) / "matrix.json").read_text())
    return {"run_dir": out, "seconds": round(time.perf_counter() - start, 1),
            "metrics": {k: metrics.get(k) for k in (*METRICS, "forgetting")}, "matrix": matrix}


# ---------------------------------------------------------------------------------------------------- drift
def later_group_share(run_dir: str, max_samples: int | None = None) -> dict:
    """Share of each old task's routing mass that the expert groups of later tasks take, checkpoint by checkpoint.

    For every checkpoint K of the run and every task i <= K: the routing mass of task i's evaluation prompts
    (gate weights summed over all wrapped modules and non-pad tokens, :func:`dymoe.analysis.experts.
    expert_activation_view`, the expert view of ``dymoe analyze experts``) that goes to the groups of tasks
    i+1..K, divided by all of it. Returns ``{"tasks": [...], "share": {task i: [share after task K, K = i..T]},
    "task_blind": {task i: [...]}}``; ``task_blind`` is the share a router blind to the task would give the later
    groups, their share of the experts present, ``(K - i) / K`` (equal group sizes): a share at that level means
    old-task tokens are spread over all groups alike, above it that the new groups attract them.
    """
    import numpy as np

    from dymoe.analysis.experts import expert_activation_view
    from dymoe.config import load_config
    from dymoe.runner.continual import resolve_benchmark
    from dymoe.runner.rundir import RunDir

    rd = RunDir(run_dir)
    names = [t.name for t in resolve_benchmark(load_config(rd.config)).tasks]
    done = rd.completed_tasks(names)
    share: dict[str, list[float]] = {}
    blind: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(1, done + 1):
            view = expert_activation_view(run_dir, after_task=k, output=Path(tmp) / f"after_{k}.png",
                                          max_samples=max_samples)
            groups = np.asarray(view["groups"])
            for i, t in enumerate(view["tasks"]):
                per_group = np.asarray(view["mass"][t]).sum(0)  # [G], summed over layers
                share.setdefault(t, []).append(round(float(per_group[groups > i].sum() / per_group.sum()), 4))
                blind.setdefault(t, []).append(round(float(np.mean(groups > i)), 4))
    return {"tasks": names[:done], "share": share, "task_blind": blind}


def masked_evaluation(run_dir: str) -> dict:
    """Accuracy on every task after the last one, with every expert group (the run's own evaluation, regenerated)
    and with the groups of later tasks masked (task i may route only to the groups of tasks 1..i).

    The older groups of IncMoELoRA are frozen, so with the later groups masked a task is evaluated by exactly the
    experts and router rows it had right after its own training: whatever masking restores was lost through routing
    (old-task tokens sent to new experts), not through changed weights.
    """
    import torch

    from dymoe.config import load_config
    from dymoe.eval.generate import generate_predictions
    from dymoe.eval.scorers import SCORERS
    from dymoe.runner.continual import ContinualRun

    cfg = load_config(Path(run_dir) / "config.yaml")
    cfg.trackers = []
    run = ContinualRun(cfg, run_dir, evaluation_only=True)
    run.setup()  # takes the run directory's lock: released below
    try:
        done = run.dir.completed_tasks(run.names)
        run._load_checkpoint(done)
        ctx = run.adapter.context
        n_groups = max(run.adapter.groups()) + 1
        ev = cfg.evaluation
        out: dict[str, dict] = {}
        for i, task in enumerate(run.tasks[:done]):
            samples = run.test_set(task)
            scorer = run.scorer_name(task)
            acc = {}
            for mode in ("all", "masked"):
                def hook(batch: dict, i=i, mode=mode) -> None:
                    rows = batch["input_ids"].shape[0]
                    allowed = torch.arange(n_groups) <= i  # [G]: the groups of tasks 1..i
                    ctx.group_mask = allowed.expand(rows, n_groups).clone() if mode == "masked" else None  # [B, G]

                ctx.policy = run.method.routing_policy("eval")
                try:
                    with torch.no_grad():
                        preds = generate_predictions(run.model, run.processor, samples, batch_size=ev.batch_size,
                                                     max_new_tokens=ev.max_new_tokens, max_length=ev.max_length,
                                                     desc=f"{mode} groups: {task.name}", batch_hook=hook)
                finally:
                    ctx.group_mask, ctx.policy = None, None
                res = SCORERS.get(scorer)(preds, [s.reference for s in samples], run.annotations(task, scorer))
                acc[mode] = round(float(res.accuracy), 2)
            out[task.name] = acc
    finally:
        run.close()
    return {"after_task": done, "accuracy": out}


def drift_evidence(run_dir: str) -> dict:
    """:func:`later_group_share` + :func:`masked_evaluation` + the run's matrix: per old task, the accuracy right
    after training, at the end, at the end with later groups masked, and how much of the loss masking restores."""
    matrix = json.loads((Path(run_dir) / "matrix.json").read_text())
    acc, tasks = matrix["accuracy"], matrix["tasks"]
    masked = masked_evaluation(run_dir)
    rows = {}
    for j, t in enumerate(tasks[:-1]):
        m = masked["accuracy"][t]
        rows[t] = {"after_training": acc[j][j], "final": acc[-1][j], "final_regenerated": m["all"],
                   "final_masked": m["masked"], "lost": round(acc[j][j] - acc[-1][j], 2),
                   "restored": round(m["masked"] - m["all"], 2)}
    lost = sum(r["lost"] for r in rows.values() if r["lost"] > 0)
    restored = sum(r["restored"] for r in rows.values() if r["lost"] > 0)
    return {"run_dir": run_dir, "later_group_share": later_group_share(run_dir), "per_task": rows,
            "lost_total": round(lost, 2), "restored_total": round(restored, 2),
            "restored_fraction": round(restored / lost, 3) if lost > 0 else None}


# ---------------------------------------------------------------------------------------------------- summary
def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else None, "values": values}


def _environment() -> dict:
    import torch
    import transformers

    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def summarise(result: dict) -> dict:
    """Add ``seeds`` (mean ± std per method), ``alone_summary`` and ``verdict`` (the five properties) to
    ``result`` from the runs present; returns it."""
    by_method: dict[str, list[tuple[int, dict]]] = {}
    for name, r in sorted(result.get("runs", {}).items()):
        method, seed = name.rsplit("-seed", 1)
        by_method.setdefault(method, []).append((int(seed), r["metrics"]))
    result["seeds"] = {
        m: {"seeds": [s for s, _ in rows], **{k: _mean_std([r[k] for _, r in rows]) for k in METRICS}}
        for m, rows in by_method.items()
    }
    alone = result.get("alone", {})
    if alone:
        result["alone_summary"] = {t: _mean_std([v["accuracy"] for v in per.values()]) for t, per in alone.items()}
    result["verdict"] = verdict(result)
    return result


def verdict(result: dict) -> dict:
    """Each property: the measured value, the aim and whether it holds (None when not measured)."""
    out: dict[str, dict] = {}
    alone = result.get("alone_summary")
    if alone:
        worst = min(alone, key=lambda t: alone[t]["mean"])
        out["1_learnable"] = {"worst_task": worst, "worst_mean": alone[worst]["mean"], "aim": ">= 50",
                              "holds": alone[worst]["mean"] >= 50}
    seeds = result.get("seeds", {})
    lora, inc = seeds.get("lora"), seeds.get("incmoelora")
    if lora and inc:
        ratio = inc["MFT"]["mean"] / lora["MFT"]["mean"] if lora["MFT"]["mean"] else None
        out["2_incremental_learns"] = {"MFT_incmoelora": inc["MFT"]["mean"], "MFT_lora": lora["MFT"]["mean"],
                                       "ratio": round(ratio, 3) if ratio is not None else None, "aim": ">= 0.90",
                                       "holds": ratio is not None and ratio >= 0.9}
        gaps = {k: round(abs(inc[k]["mean"] - lora[k]["mean"]), 2) for k in ("MFN", "BWT")}
        stds = {f"{m}_{k}": seeds[m][k]["std"] for m in ("lora", "incmoelora") for k in ("MFN", "BWT")}
        out["5_stable"] = {"gap": gaps, "std": stds, "aim": "every std < gap / 2",
                           "holds": all(v is not None and v < gaps[k.split("_")[1]] / 2 for k, v in stds.items())}
    if inc:
        drift = result.get("drift", {})
        fractions = [d["restored_fraction"] for d in drift.values() if d.get("restored_fraction") is not None]
        growing = [_grows(d["later_group_share"]["share"]) for d in drift.values()]
        out["3_drift"] = {"BWT_incmoelora": inc["BWT"]["mean"], "aim": "BWT <= -6, later-group share grows, "
                          "masking restores most of the loss",
                          "restored_fraction": fractions, "share_grows": growing,
                          "holds": inc["BWT"]["mean"] <= -6 and bool(fractions) and min(fractions) > 0.5
                          and all(growing)}
    if lora:
        out["4_lora_forgets"] = {"BWT_lora": lora["BWT"]["mean"], "aim": "<= -15", "holds": lora["BWT"]["mean"] <= -15}
    return out


def _grows(share: dict[str, list[float]]) -> bool:
    """Whether, averaged over the old tasks, the later groups' share rises from one checkpoint to the next."""
    import numpy as np

    width = max(len(v) for v in share.values())
    per_step = [np.mean([v[k] for v in share.values() if len(v) > k]) for k in range(1, width)]
    return all(b > a for a, b in zip(per_step, per_step[1:])) if len(per_step) > 1 else bool(per_step)


def merge(results: list[dict]) -> dict:
    """Several partial result files (e.g. one per process) as one: runs, tasks-alone and drift entries united."""
    out: dict = {k: results[0].get(k) for k in ("environment", "config", "overrides")}
    for r in results:
        for part in ("alone", "runs", "drift"):
            for key, value in r.get(part, {}).items():
                if part == "alone":
                    out.setdefault(part, {}).setdefault(key, {}).update(value)
                else:
                    out.setdefault(part, {})[key] = value
    return summarise(out)


def _cell(d: dict) -> str:
    return f"{d['mean']:.2f}" + (f" ± {d['std']:.2f}" if d["std"] is not None else "")


def render_markdown(result: dict) -> str:
    """The "mini-CoIN properties" tables of ``benchmarks/RESULTS.md`` from a (merged) result."""
    lines: list[str] = []
    alone = result.get("alone_summary", {})
    if alone:
        seeds = sorted({s for per in result["alone"].values() for s in per})
        lines += [f"Each task trained alone (the demo's LoRA config; seeds {', '.join(seeds)}; mean ± std):", "",
                  "| " + " | ".join(alone) + " |", "|" + "---:|" * len(alone),
                  "| " + " | ".join(_cell(v) for v in alone.values()) + " |", ""]
    seeds = result.get("seeds", {})
    if seeds:
        lines += ["Sequences (mean ± sample std over seeds):", "",
                  "| method | seeds | MFT | MFN | MAA | BWT |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {m} | {','.join(map(str, d['seeds']))} | " + " | ".join(_cell(d[k]) for k in METRICS) + " |"
                  for m, d in seeds.items()]
        lines.append("")
    for name, d in result.get("drift", {}).items():
        share = d["later_group_share"]["share"]
        tasks = d["later_group_share"]["tasks"]
        blind = d["later_group_share"].get("task_blind", {})
        lines += [f"Routing drift, `{name}`: share of each old task's routing mass taken by the groups of later tasks, "
                  "after each task (rows: evaluated task; columns: after task K; in brackets the share of a router "
                  "blind to the task, (K - i) / K):", "",
                  "| task | " + " | ".join(str(k + 1) for k in range(len(tasks))) + " |",
                  "|---|" + "---:|" * len(tasks)]
        for i, t in enumerate(tasks[:-1]):
            cells = [""] * (i + 1) + [f"{v:.2f}" + (f" ({b:.2f})" if t in blind else "")
                                      for v, b in zip(share[t][1:], blind.get(t, share[t])[1:])]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines += ["", "| task | after training | final | final, later groups masked | restored |",
                  "|---|---:|---:|---:|---:|"]
        for t, r in d["per_task"].items():
            lines.append(f"| {t} | {r['after_training']:.1f} | {r['final']:.1f} | {r['final_masked']:.1f} | "
                         f"{r['restored']:+.1f} |")
        frac = d["restored_fraction"]
        lines += ["", f"Lost {d['lost_total']:.1f} points over the tasks that lost accuracy; masking restores "
                  f"{d['restored_total']:.1f}" + (f" ({100 * frac:.0f} %)." if frac is not None else "."), ""]
    v = result.get("verdict", {})
    if v:
        lines += ["| property | measured | aim | holds |", "|---|---|---|---|"]
        for k, d in v.items():
            measured = {kk: vv for kk, vv in d.items() if kk not in ("aim", "holds")}
            lines.append(f"| {k} | {json.dumps(measured)} | {d['aim']} | {'yes' if d['holds'] else 'no'} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/bench", help="folder of the run directories")
    ap.add_argument("--out", default="benchmarks/results/minicoin_properties.json")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the sequence runs")
    ap.add_argument("--alone-seeds", default="0", help="seeds of the tasks-alone runs")
    ap.add_argument("--methods", default="lora,incmoelora,dymoe")
    ap.add_argument("--drift-methods", default="incmoelora", help="methods whose runs get the drift analysis")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks for the 'alone' part (default: all)")
    ap.add_argument("--order", default=None, help="task order of the sequence runs: a named order or A,B,C")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a demo config value in every run (e.g. backbone.path=DIR; repeatable)")
    ap.add_argument("--render", nargs="+", metavar="RESULT.json",
                    help="no runs: merge these result files into --out and print the Markdown tables")
    args = ap.parse_args(argv)

    from dymoe.io import atomic_write_json

    if args.render:
        merged = merge([json.loads(Path(p).read_text()) for p in args.render])
        atomic_write_json(Path(args.out), merged)
        print(render_markdown(merged), end="")
        return 0

    from dymoe.config import load_config
    from dymoe.data.minicoin.tasks import TASK_NAMES
    from dymoe.demo.plan import CONFIG_DIR, demo_overrides
    from dymoe.runner.resources import resolve_backbone_path, resolve_minicoin

    parts = [p for p in args.only.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--only: unknown parts {unknown}; known: {list(PARTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    overrides = tuple(args.overrides)
    order = None if not args.order else (args.order.split(",") if "," in args.order else args.order)
    runs, out = Path(args.runs), Path(args.out)
    result: dict = json.loads(out.read_text()) if out.is_file() else {}
    result["environment"] = _environment()
    result["config"] = "configs/demo/minicoin.yaml + configs/demo/<method>.yaml"
    result["overrides"] = list(overrides) + ([f"benchmark.order={order}"] if order else [])
    cfg = load_config(CONFIG_DIR / "minicoin.yaml", demo_overrides("lora") + list(overrides))
    resolve_backbone_path(cfg.backbone.path)  # build or install the base and mini-CoIN once, up front
    resolve_minicoin(cfg.benchmark.minicoin_scale)
    started = time.perf_counter()

    def save(name: str, info) -> None:
        summarise(result)
        atomic_write_json(out, result)
        print(f"[{time.perf_counter() - started:7.0f}s] {name}: {info}", flush=True)

    if "alone" in parts:
        for seed in [int(s) for s in args.alone_seeds.split(",")]:
            for t in (args.tasks.split(",") if args.tasks else TASK_NAMES):
                res = run_one("lora", seed, [t], str(runs / "alone" / f"{t}-seed{seed}"), overrides)
                result.setdefault("alone", {}).setdefault(t, {})[str(seed)] = {
                    "accuracy": res["matrix"]["accuracy"][0][0], "seconds": res["seconds"]}
                save(f"alone/{t}/seed{seed}", res["metrics"]["MFT"])
    if "seeds" in parts:
        for seed in seeds:
            for m in methods:
                res = run_one(m, seed, order, str(runs / "seeds" / f"{m}-seed{seed}"), overrides)
                result.setdefault("runs", {})[f"{m}-seed{seed}"] = res
                save(f"seeds/{m}/seed{seed}", res["metrics"])
    if "drift" in parts:
        for seed in seeds:
            for m in [m for m in args.drift_methods.split(",") if m]:
                run_dir = runs / "seeds" / f"{m}-seed{seed}"
                if not (run_dir / "matrix.json").is_file():
                    print(f"drift: {run_dir} has no finished run; skipped", file=sys.stderr)
                    continue
                d = drift_evidence(str(run_dir))
                result.setdefault("drift", {})[f"{m}-seed{seed}"] = d
                save(f"drift/{m}/seed{seed}", {"restored_fraction": d["restored_fraction"]})
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    summarise(result)
    atomic_write_json(out, result)
    print(render_markdown(result), end="")
    return 0


if __name__ == "__main__":
    torch_threads = os.environ.get("DYMOE_BENCH_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    sys.exit(main())
