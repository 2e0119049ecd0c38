"""Measure the three properties mini-CoIN + the demo base should have, and write them as JSON.

    python benchmarks/minicoin_properties.py --runs runs/bench --out benchmarks/results/minicoin_properties.json

1. **learnable**: each task trained alone (the demo's LoRA config, ``benchmark.order=[task]``) from the pretrained
   demo base; its accuracy after training (aim: >= 60 % on each).
2. **forgetting**: sequential LoRA over the eight tasks (seed 0): BWT (aim: <= -15; CoIN reports -23.12 for LoRA
   on LLaVA-7B) and, per task, its accuracy right after training vs at the end.
3. **stable across seeds**: every demo method with seeds 0, 1, 2: mean ± sample std of MFN, MAA, BWT.

Runs go through the continual runner with the demo configs (``configs/demo``), one run directory each under
``--runs``; an interrupted benchmark resumes (finished runs are reused). The JSON is rewritten after every run,
so a partial file is usable. ``--only`` picks parts; ``--jobs 2`` runs two runs at a time; ``--render A.json B.json``
merges the results of separate processes and prints the Markdown tables of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PARTS = ("alone", "sequential", "seeds")


def _run_one(method: str, seed: int, order: list[str] | None, out: str, threads: int) -> dict:
    """One demo run (resumed if it exists); returns its metrics and matrix."""
    import torch

    torch.set_num_threads(threads)
    from dymoe.config import load_config
    from dymoe.demo.plan import CONFIG_DIR, demo_overrides
    from dymoe.runner.continual import run

    overrides = demo_overrides(method, seed=seed)
    if order is not None:
        overrides.append(f"benchmark.order={json.dumps(order)}")
    cfg = load_config(CONFIG_DIR / "minicoin.yaml", overrides)
    start = time.perf_counter()
    metrics = run(cfg, out)
    matrix = json.loads((Path(out) / "matrix.json").read_text())
    return {"run_dir": out, "seconds": round(time.perf_counter() - start, 1), "metrics": {
        k: metrics.get(k) for k in ("MFT", "MFN", "MAA", "BWT", "forgetting")}, "matrix": matrix}


def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else None, "values": values}


def _environment() -> dict:
    import torch
    import transformers

    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def summarise(result: dict) -> dict:
    """Add ``sequential_lora`` (from the ``lora-seed0`` run) and ``seeds`` (mean ± std per method over the runs
    present) to ``result``; returns it."""
    done = result.get("runs", {})
    if "lora-seed0" in done:
        r = done["lora-seed0"]
        acc, tasks = r["matrix"]["accuracy"], r["matrix"]["tasks"]
        result["sequential_lora"] = {
            "BWT": r["metrics"]["BWT"], "MFN": r["metrics"]["MFN"],
            "per_task": {t: {"after_training": acc[j][j], "final": acc[-1][j]} for j, t in enumerate(tasks)},
        }
    by_method: dict[str, list[tuple[int, dict]]] = {}
    for name, r in sorted(done.items()):
        method, seed = name.rsplit("-seed", 1)
        by_method.setdefault(method, []).append((int(seed), r["metrics"]))
    result["seeds"] = {
        m: {"seeds": [s for s, _ in rows], **{k: _mean_std([r[k] for _, r in rows]) for k in ("MFN", "MAA", "BWT")}}
        for m, rows in by_method.items()
    }
    return result


def merge(results: list[dict]) -> dict:
    """Several partial result files (e.g. one per process) as one: runs and tasks-alone entries are united."""
    out: dict = {"environment": results[0].get("environment"), "config": results[0].get("config")}
    for r in results:
        out.setdefault("alone", {}).update(r.get("alone", {}))
        out.setdefault("runs", {}).update(r.get("runs", {}))
    return summarise(out)


def render_markdown(result: dict) -> str:
    """The "mini-CoIN properties" tables of ``benchmarks/RESULTS.md`` from a (merged) result."""
    lines = []
    alone = result.get("alone", {})
    if alone:
        lines += ["Each task trained alone (sequential-LoRA config, seed 0), accuracy after training:", "",
                  "| " + " | ".join(alone) + " |", "|" + "---:|" * len(alone),
                  "| " + " | ".join(f"{v['accuracy']:.1f}" for v in alone.values()) + " |", ""]
    seq = result.get("sequential_lora")
    if seq:
        tasks = list(seq["per_task"])
        lines += [f"Sequential LoRA, seed 0: BWT = {seq['BWT']:.2f}, MFN = {seq['MFN']:.2f}. Accuracy right after "
                  "training each task vs after the last task:", "",
                  "| | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks),
                  "| after training | " + " | ".join(f"{seq['per_task'][t]['after_training']:.1f}" for t in tasks) + " |",
                  "| final | " + " | ".join(f"{seq['per_task'][t]['final']:.1f}" for t in tasks) + " |", ""]
    seeds = result.get("seeds", {})
    if seeds:
        def cell(d: dict) -> str:
            return f"{d['mean']:.2f}" + (f" ± {d['std']:.2f}" if d["std"] is not None else "")

        lines += ["Seeds (mean ± sample std):", "", "| method | seeds | MFN | MAA | BWT |", "|---|---|---:|---:|---:|"]
        lines += [f"| {m} | {','.join(map(str, d['seeds']))} | {cell(d['MFN'])} | {cell(d['MAA'])} | {cell(d['BWT'])} |"
                  for m, d in seeds.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from dymoe.data.minicoin.tasks import TASK_NAMES
    from dymoe.demo.plan import DEMO_METHODS
    from dymoe.io import atomic_write_json
    from dymoe.methods import METHODS
    from dymoe.runner.resources import resolve_backbone_path, resolve_minicoin

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/bench", help="folder of the run directories")
    ap.add_argument("--out", default="benchmarks/results/minicoin_properties.json")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(m for m in DEMO_METHODS if m in METHODS.names()))
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: torch's own, i.e. $OMP_NUM_THREADS or the core count, "
                         "divided by --jobs)")
    ap.add_argument("--render", nargs="+", metavar="RESULT.json",
                    help="no runs: merge these result files into --out and print the Markdown tables")
    args = ap.parse_args(argv)
    if args.render:
        merged = merge([json.loads(Path(p).read_text()) for p in args.render])
        atomic_write_json(Path(args.out), merged)
        print(render_markdown(merged), end="")
        return 0
    parts = [p for p in args.only.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    runs = Path(args.runs)
    out = Path(args.out)
    result: dict = json.loads(out.read_text()) if out.is_file() else {}
    result["environment"] = _environment()
    result["config"] = "configs/demo/minicoin.yaml + configs/demo/<method>.yaml"
    resolve_backbone_path("demo:base")  # build the base and mini-CoIN once, before any worker starts
    from dymoe.demo.plan import demo_config

    resolve_minicoin(demo_config("lora").benchmark.minicoin_scale)

    jobs: list[tuple[str, tuple]] = []
    if "alone" in parts:
        jobs += [(f"alone/{t}", ("lora", 0, [t], str(runs / "alone" / t))) for t in TASK_NAMES]
    if "sequential" in parts or "seeds" in parts:
        jobs += [(f"seeds/{m}/{s}", (m, s, None, str(runs / "seeds" / f"{m}-seed{s}")))
                 for s in seeds for m in methods if "seeds" in parts or (m == "lora" and s == 0)]
    import torch

    threads = args.threads or max(1, torch.get_num_threads() // max(1, args.jobs))
    started = time.perf_counter()

    def record(name: str, res: dict) -> None:
        kind, *rest = name.split("/")
        if kind == "alone":
            result.setdefault("alone", {})[rest[0]] = {"accuracy": res["matrix"]["accuracy"][0][0],
                                                       "seconds": res["seconds"]}
        else:
            result.setdefault("runs", {})[f"{rest[0]}-seed{rest[1]}"] = res
        summarise(result)
        atomic_write_json(out, result)
        print(f"[{time.perf_counter() - started:7.0f}s] {name}: {res['metrics']}", flush=True)

    if args.jobs <= 1:
        for name, job in jobs:
            record(name, _run_one(*job, threads))
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(_run_one, *job, threads): name for name, job in jobs}
            for fut, name in futures.items():
                record(name, fut.result())
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
