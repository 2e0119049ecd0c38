"""``dymoe eval RUN_DIR [--after-task K]``: regenerate and rescore evaluations from a run's checkpoints."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a run from its checkpoints")
    p.add_argument("run_dir")
    p.add_argument("--after-task", type=int, default=None, help="only the row after task K (1-based)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override evaluation settings, e.g. --set evaluation.batch_size=32")
    p.set_defaults(func=run)


def run(args) -> int:
    from dymoe.config import load_config
    from dymoe.errors import DymoeError
    from dymoe.runner.continual import ContinualRun

    cfg_path = Path(args.run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise DymoeError(f"{args.run_dir}: not a run directory (config.yaml is missing)")
    bad = [o for o in args.overrides if not o.startswith("evaluation.")]
    if bad:
        raise DymoeError(f"dymoe eval only overrides evaluation.* settings, got {bad[0]!r}")
    cfg = load_config(cfg_path, args.overrides)
    runner = ContinualRun(cfg, args.run_dir, evaluation_only=True)
    rows = runner.reevaluate(args.after_task)
    for k, row in enumerate(rows, start=1):
        print(f"after task {k}: " + "  ".join(f"{a:.2f}" for a in row))
    return 0
