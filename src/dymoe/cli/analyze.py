"""``dymoe analyze {drift,experts}``: the routing analyses of the paper.

- ``dymoe analyze drift CONFIG.yaml [--output DIR] [--modes ...] [--tasks A,B] [--evals N] [--set k=v]``: the
  two-task routing-drift experiment (Fig. 1, :mod:`dymoe.analysis.drift`); writes ``DIR/drift.json`` and
  ``DIR/drift.png``.
- ``dymoe analyze experts RUN_DIR [--after-task K] [--output PNG]``: the expert-activation view (Fig. 4,
  :mod:`dymoe.analysis.experts`); writes the PNG and a JSON of the matrix beside it.
"""

from __future__ import annotations

import argparse
import json
import os

from dymoe.errors import ConfigError


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def register(sub) -> None:
    """Add ``analyze`` and its subcommands to ``sub`` (the ``dymoe`` subparsers)."""
    from dymoe.analysis.drift import DEFAULT_MODES, DEFAULT_TASKS

    p = sub.add_parser("analyze", help="routing analyses: drift (Fig. 1), experts (Fig. 4)")
    inner = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    inner.required = True

    d = inner.add_parser("drift", help="two-task routing-drift experiment over token-masking conditions (Fig. 1)")
    d.add_argument("config", help="run config YAML (backbone, adapter, benchmark caps, training, evaluation)")
    d.add_argument("--output", "-o", default="runs/drift", help="analysis directory (default: runs/drift)")
    d.add_argument("--modes", type=_csv, default=list(DEFAULT_MODES),
                   help=f"masking conditions, comma-separated (default: {','.join(DEFAULT_MODES)})")
    d.add_argument("--tasks", type=_csv, default=list(DEFAULT_TASKS),
                   help=f"task 1 and task 2 (default: {','.join(DEFAULT_TASKS)})")
    d.add_argument("--evals", type=int, default=4, help="evaluations during task 2, evenly spaced (default: 4)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set benchmark.max_train_samples=64 (repeatable)")
    d.set_defaults(func=run_drift_cmd)

    e = inner.add_parser("experts", help="routing mass per layer and expert group of a run's checkpoint (Fig. 4)")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a `dymoe run` output directory")
    e.add_argument("--after-task", type=int, default=None, help="checkpoint after task K (default: the last)")
    e.add_argument("--output", "-o", default=None,
                   help="PNG path (default: RUN_DIR/plots/experts_after_K.png); the JSON goes beside it")
    e.add_argument("--max-samples", type=int, default=None,
                   help="evaluation prompts per task (default: the run's benchmark.max_eval_samples)")
    e.set_defaults(func=run_experts_cmd)


def run_drift_cmd(args: argparse.Namespace) -> int:
    """Run the drift analysis; prints a JSON summary (final forgetting/gain per mode)."""
    from dymoe.analysis.drift import run_drift
    from dymoe.config import load_config

    if args.evals < 1:
        raise ConfigError(f"--evals must be >= 1, got {args.evals}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = load_config(args.config, args.overrides)
    drift = run_drift(cfg, args.output, modes=args.modes, tasks=args.tasks, evals=args.evals)
    summary = {m: {"forgetting": r["forgetting"][-1] if r["forgetting"] else None,
                   "gain": r["gain"][-1] if r["gain"] else None} for m, r in drift["results"].items()}
    print(json.dumps({"output": str(args.output), "final": summary}))
    return 0


def run_experts_cmd(args: argparse.Namespace) -> int:
    """Compute the expert-activation view; prints the PNG and JSON paths."""
    from dymoe.analysis.experts import expert_activation_view

    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")
    result = expert_activation_view(args.run_dir, after_task=args.after_task, output=args.output,
                                    max_samples=args.max_samples)
    print(json.dumps({"png": result["png"], "json": result["json"]}))
    return 0
