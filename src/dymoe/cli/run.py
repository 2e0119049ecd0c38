"""``dymoe run CONFIG.yaml --output DIR [--set key=value ...]``: train a method over a task sequence.

Running the same command on an existing run directory resumes it.
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("run", help="train one method over a task sequence (resumes an existing run directory)")
    p.add_argument("config", help="run config YAML (see configs/)")
    p.add_argument("--output", "-o", required=True, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.seed=7 (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from dymoe.config import load_config
    from dymoe.runner.continual import run as run_continual

    cfg = load_config(args.config, args.overrides)
    metrics = run_continual(cfg, args.output)
    keys = ("MFT", "MFN", "MAA", "BWT")
    print(json.dumps({k: metrics.get(k) for k in keys} | {"run_dir": str(args.output)}))
    return 0
