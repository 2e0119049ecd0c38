"""``dymoe demo [--quick] [--output DIR] [--methods lora,incmoelora,dymoe] [--seed N]``: the end-to-end demo.

Builds or reuses mini-CoIN and the caption-pretrained demo base, runs sequential LoRA, IncMoELoRA and LLaVA-DyMoE
(those registered) over the eight mini-CoIN tasks, and prints the side-by-side table (per-task final accuracy,
MFN, MAA, BWT). Each method's run directory is ``DIR/<method>`` (``metrics.json``, ``matrix.json``,
``report.md``); the table goes to ``DIR/comparison.md`` and ``.csv``. Running the command again resumes
unfinished runs and reuses finished ones. Uses CUDA when present.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("demo", help="LoRA vs IncMoELoRA vs LLaVA-DyMoE on mini-CoIN from a pretrained tiny base")
    p.add_argument("--quick", action="store_true", help="a few-minute version (4 small tasks, fewer samples)")
    p.add_argument("--output", "-o", default=None,
                   help="output folder (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--methods", type=_methods, default=None, metavar="M1,M2",
                   help="comma-separated subset of lora,incmoelora,dymoe (default: all registered) or cmoe, dmole, smoe_dsal (on request)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run every selected method (resuming), then print and write the comparison table."""
    from dymoe.demo.plan import comparison_table, demo_config, select_methods
    from dymoe.methods import METHODS
    from dymoe.runner.continual import run as run_continual
    from dymoe.runner.resources import resolve_backbone_path

    methods, skipped = select_methods(args.methods, METHODS.names())
    configs = {m: demo_config(m, quick=args.quick, seed=args.seed) for m in methods}  # validate all first
    output = Path(args.output or ("runs/demo-quick" if args.quick else "runs/demo"))
    for m in skipped:
        print(f"demo: skipping {m} (not a registered method yet)", file=sys.stderr)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    resolve_backbone_path(configs[methods[0]].backbone.path)  # build or verify the base once, up front
    timings["base"] = time.perf_counter() - start
    for m in methods:
        t = time.perf_counter()
        print(f"demo: {configs[m].display_label} -> {output / m}", file=sys.stderr)
        run_continual(configs[m], output / m)
        timings[m] = time.perf_counter() - t
    md = comparison_table([output / m for m in methods], output)
    print(md, end="")
    spent = ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
    print(f"\n{output / 'comparison.md'} ({spent}; total {(time.perf_counter() - start) / 60:.1f} min)")
    return 0
