"""RESULTS.md's LLaVA-CMoE tables from finished mini-CoIN run folders (``<root>/<name>_s<seed>``).

    python benchmarks/cmoe_minicoin_table.py ROOT cmoe-matched cmoe incmoelora dymoe [--json OUT.json]

Per method and seed: Immediate (oracle variant's diagonal where the run has one, else the main diagonal), Immediate
(PTL) (main diagonal), Last (final row), CMoE's BWT (mean over all N of Last − Immediate), CoIN's MFN / MFT / BWT
(``metrics.json``), the locator's accuracy per task after the last task, layers grown per task (the planning log),
trainable parameters per task, and time per task: training seconds + the planning phase's seconds (wall, as the
runs measured them). Mean ± sample std over the seeds found.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    stored = json.loads((run / "matrix.json").read_text())
    main, tasks = stored["accuracy"], stored["tasks"]
    oracle = run / "variants" / "oracle" / "matrix.json"
    om = json.loads(oracle.read_text())["accuracy"] if oracle.is_file() else None
    n = len(tasks)
    imm = [om[i][i] for i in range(n)] if om else [main[i][i] for i in range(n)]
    last = main[-1]
    train = m["train"]
    loc = ((m.get("locator") or {}).get("main") or {}).get(f"after_task_{n}") or {}
    return {
        "tasks": tasks,
        "immediate": imm, "immediate_ptl": [main[i][i] for i in range(n)], "last": last,
        "cmoe_bwt": sum(a - b for a, b in zip(last, imm)) / n,
        "MFN": m["MFN"], "MFT": m["MFT"], "BWT": m["BWT"],
        "locator": [loc.get("accuracy", {}).get(t) for t in tasks] if loc else None,
        "locator_mean": loc.get("mean"),
        "grown": [((train[t].get("plan") or {}).get("log") or {}).get("pgke", {}).get("layers_grown") for t in tasks],
        "trainable": [train[t]["trainable_params"] for t in tasks],
        "train_s": [train[t]["seconds"] for t in tasks],
        "plan_s": [(train[t].get("plan") or {}).get("seconds") or 0.0 for t in tasks],
        "probe_samples": [sum(x["samples"] for x in (train[t].get("plan") or {}).get("train", [])) for t in tasks],
        "train_samples": [train[t]["samples"] for t in tasks],
    }


def cell(vals: list[float | None], digits: int = 2) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("names", nargs="+")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = {}
    for name in args.names:
        runs = sorted(p for p in args.root.glob(f"{name}_s*") if (p / "metrics.json").is_file()
                      and json.loads((p / "metrics.json").read_text()).get("complete"))  # finished runs only
        data[name] = {p.name.rsplit("_s", 1)[1]: load(p) for p in runs}
    tasks = next(r for d in data.values() for r in d.values())["tasks"]
    print("| method | seeds | row | " + " | ".join(tasks) + " | mean |")
    print("|---|---|---|" + "---:|" * (len(tasks) + 1))
    for name, runs in data.items():
        seeds = ",".join(sorted(runs))
        rs = list(runs.values())
        for key, label in (("immediate", "Immediate (oracle)"), ("immediate_ptl", "Immediate (PTL)"),
                           ("last", "Last")):
            if key == "immediate_ptl" and rs and rs[0]["locator"] is None:
                continue
            vals = [cell([r[key][i] for r in rs]) for i in range(len(tasks))]
            mean = cell([statistics.fmean(r[key]) for r in rs])
            print(f"| {name} | {seeds} | {label} | " + " | ".join(vals) + f" | {mean} |")
        if rs and rs[0]["locator"] is not None:
            vals = [cell([r["locator"][i] for r in rs], 1) for i in range(len(tasks))]
            print(f"| {name} | {seeds} | PTL accuracy (%) | " + " | ".join(vals)
                  + f" | {cell([r['locator_mean'] for r in rs], 1)} |")
            vals = [cell([r["grown"][i] for r in rs], 1) for i in range(len(tasks))]
            print(f"| {name} | {seeds} | layers grown / 4 | " + " | ".join(vals)
                  + f" | {cell([statistics.fmean([g for g in r['grown'] if g is not None]) / 4 for r in rs])} |")
        vals = [cell([r["trainable"][i] for r in rs], 0) for i in range(len(tasks))]
        print(f"| {name} | {seeds} | trainable params | " + " | ".join(vals)
              + f" | {cell([statistics.fmean(r['trainable'][1:]) for r in rs], 0)} (tasks 2-8) |")
        vals = [cell([r["train_s"][i] + r["plan_s"][i] for r in rs], 1) for i in range(len(tasks))]
        print(f"| {name} | {seeds} | s per task (train + plan) | " + " | ".join(vals)
              + f" | {cell([statistics.fmean([a + b for a, b in zip(r['train_s'], r['plan_s'])]) for r in rs], 1)} |")
    print()
    print("| method | seeds | Immediate (oracle) | Immediate (PTL) | Last | CMoE BWT | CoIN MFN | CoIN MFT | CoIN BWT "
          "| PTL acc. | plan s / task | train s / task |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in data.items():
        rs = list(runs.values())
        has_loc = rs and rs[0]["locator"] is not None
        print(f"| {name} | {','.join(sorted(runs))} | {cell([statistics.fmean(r['immediate']) for r in rs])} | "
              f"{cell([statistics.fmean(r['immediate_ptl']) for r in rs]) if has_loc else '-'} | "
              f"{cell([statistics.fmean(r['last']) for r in rs])} | {cell([r['cmoe_bwt'] for r in rs])} | "
              f"{cell([r['MFN'] for r in rs])} | {cell([r['MFT'] for r in rs])} | {cell([r['BWT'] for r in rs])} | "
              f"{cell([r['locator_mean'] for r in rs], 1) if has_loc else '-'} | "
              f"{cell([statistics.fmean(r['plan_s']) for r in rs], 1)} | "
              f"{cell([statistics.fmean(r['train_s']) for r in rs], 1)} |")
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
