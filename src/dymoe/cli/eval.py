"""``dymoe eval RUN_DIR [--after-task K] [--set evaluation.KEY=VALUE ...] [--name NAME]``: regenerate and rescore
evaluations from a run's checkpoints.

With the run's own evaluation settings the predictions and the matrix of the run directory are regenerated in
place. With other settings (``--set evaluation.*``) nothing of the run is overwritten: the re-evaluation goes to
``RUN/evals/<NAME>/`` with its own ``config.yaml``, ``matrix.json``, ``metrics.json``, ``report.md`` and
``predictions/`` (NAME defaults to the overrides, e.g. ``max_new_tokens_64``).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a run from its checkpoints (other settings go to RUN/evals/NAME)")
    p.add_argument("run_dir")
    p.add_argument("--after-task", type=int, default=None, help="only the row after task K (1-based)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override evaluation settings, e.g. --set evaluation.max_new_tokens=64 (the results then "
                        "go to RUN/evals/NAME)")
    p.add_argument("--name", default=None,
                   help="folder under RUN/evals/ for a re-evaluation with other settings (default: from --set)")
    p.set_defaults(func=run)


def default_name(overrides: list[str]) -> str:
    """``["evaluation.max_new_tokens=64", "evaluation.scorer_variant=strict"]`` → ``max_new_tokens_64_scorer_...``."""
    from dymoe.io import safe_filename

    return safe_filename("_".join(o.removeprefix("evaluation.") for o in overrides)).strip("._") or "eval"


def run(args) -> int:
    from dymoe.config import dump_config, load_config
    from dymoe.errors import ConfigError, DymoeError
    from dymoe.io import safe_filename
    from dymoe.runner.continual import ContinualRun
    from dymoe.runner.rundir import RunDir

    rd = RunDir(args.run_dir)
    if not rd.config.is_file():
        raise DymoeError(f"{args.run_dir}: not a run directory (config.yaml is missing)")
    bad = [o for o in args.overrides if not o.startswith("evaluation.")]
    if bad:
        raise DymoeError(f"dymoe eval only overrides evaluation.* settings, got {bad[0]!r}")
    stored = load_config(rd.config)
    cfg = load_config(rd.config, args.overrides)
    results_dir = None
    if dump_config(cfg) != dump_config(stored):
        name = args.name or default_name(args.overrides)
        if safe_filename(name) != name or name.startswith("."):
            raise ConfigError(f"--name {name!r}: use letters, digits, '_', '.' and '-' only (a folder name)")
        results_dir = rd.evals(name)
        print(f"other evaluation settings: results go to {results_dir}", flush=True)
    elif args.name:
        raise ConfigError("--name is for re-evaluations with other settings (--set evaluation.*); these are the "
                          "run's own settings, whose results live in the run directory")
    runner = ContinualRun(cfg, args.run_dir, evaluation_only=True, results_dir=results_dir)
    rows = runner.reevaluate(args.after_task)
    for k, row in enumerate(rows, start=1):
        print(f"after task {k}: " + "  ".join(f"{a:.2f}" for a in row))
    return 0
