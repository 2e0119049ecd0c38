"""``dymoe prepare-demo [--force] [--export DIR]``: build (or verify and reuse) the caption-pretrained demo base.

The base is cached under ``$DYMOE_CACHE/demo-base/`` (default ``~/.cache/dymoe``), keyed by its build config; the
demo and any config with ``backbone.path: demo:base`` set it up on first use anyway, this command does it up front.
dymoe ships the base of the default config (``src/dymoe/demo/assets/demo-base``), which is copied into the cache
instead of pretraining; ``--force`` pretrains it locally from scratch (deterministic for a given thread count), and
``--export DIR`` copies the result to DIR (maintainers refresh the shipped base with
``--force --export src/dymoe/demo/assets/demo-base``).
"""

from __future__ import annotations

import argparse
import json
import time


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("prepare-demo", help="build the caption-pretrained demo base into the cache (once)")
    p.add_argument("--force", action="store_true",
                   help="pretrain locally even if a verified base is cached or shipped")
    p.add_argument("--export", metavar="DIR", default=None, help="copy the verified base to DIR (replaced)")
    p.add_argument("--minicoin", action="store_true",
                   help="also generate the demo's mini-CoIN (scales default and small) into the cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build or reuse the base; print its folder and training summary."""
    from dymoe.demo.base import build_demo_base

    start = time.perf_counter()
    path = build_demo_base(force=args.force)
    if args.export:
        from dymoe.demo.base import export_demo_base

        export_demo_base(path, args.export)
    manifest = json.loads((path / "MANIFEST.json").read_text(encoding="utf-8"))
    if args.minicoin:
        from dymoe.runner.resources import resolve_minicoin

        for scale in ("default", "small"):
            resolve_minicoin(scale)
    print(json.dumps({"path": str(path), "key": manifest["key"], "training": manifest["training"],
                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    return 0
