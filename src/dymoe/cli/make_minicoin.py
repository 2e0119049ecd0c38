"""``dymoe make-minicoin``: generate the mini-CoIN benchmark (eight CoIN-like tasks, CoIN on-disk layout)."""

from __future__ import annotations

import argparse

from dymoe.data.minicoin import SCALES, TASK_NAMES, generate, verify
from dymoe.errors import DymoeError

_SIZES = ", ".join(f"{name} = {tr} train / {te} test per task" for name, (tr, te) in SCALES.items())


def register(sub) -> None:
    """Add the ``make-minicoin`` parser to ``sub``."""
    p = sub.add_parser(
        "make-minicoin",
        help="generate mini-CoIN, a CPU-sized miniature of the CoIN benchmark",
        description=(
            f"Generate mini-CoIN: {len(TASK_NAMES)} procedurally generated tasks ({', '.join(TASK_NAMES)}) in "
            f"CoIN's layout, with benchmark.yaml and MANIFEST.json. Sizes: {_SIZES}. "
            "The same seed gives byte-identical files."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory (must be empty or absent unless --force)")
    p.add_argument("--scale", choices=list(SCALES), default="default", help=f"dataset size ({_SIZES})")
    p.add_argument("--seed", type=int, default=0, help="random seed (non-negative)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate, verify, and print where the benchmark is."""
    yaml_path = generate(args.out, scale=args.scale, seed=args.seed, force=args.force)
    problems = verify(yaml_path.parent)
    if problems:  # cannot happen unless the disk changed under us
        raise DymoeError(f"{yaml_path.parent}: written files fail verification: {problems[0]}")
    n_train, n_test = SCALES[args.scale]
    print(f"wrote {yaml_path} ({len(TASK_NAMES)} tasks × {n_train} train / {n_test} test, seed {args.seed})")
    return 0
