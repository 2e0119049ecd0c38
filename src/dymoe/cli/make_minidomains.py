"""``dymoe make-minidomains``: generate mini-domains (SMoE's Medicine → Chart → Math benchmark in miniature)."""

from __future__ import annotations

import argparse

from dymoe.data.minidomains import DOMAINS, SCALES, generate, verify
from dymoe.errors import DymoeError

_SIZES = ", ".join(f"{name} = {tr} train / {te} test pictures per domain" for name, (tr, te) in SCALES.items())


def register(sub) -> None:
    """Add the ``make-minidomains`` parser to ``sub``."""
    p = sub.add_parser(
        "make-minidomains",
        help="generate mini-domains, a CPU-sized miniature of SMoE's Medicine -> Chart -> Math benchmark",
        description=(
            f"Generate mini-domains: {len(DOMAINS)} synthetic domains ({', '.join(DOMAINS)}) in the layout of "
            f"configs/benchmarks/smoe3.yaml, with benchmark.yaml and MANIFEST.json. Sizes: {_SIZES}. "
            "The same seed gives byte-identical files."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory (must be empty or absent unless --force)")
    p.add_argument("--scale", choices=list(SCALES), default="small", help=f"dataset size ({_SIZES})")
    p.add_argument("--seed", type=int, default=0, help="random seed (non-negative)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate, verify, and print where the benchmark is."""
    yaml_path = generate(args.out, scale=args.scale, seed=args.seed, force=args.force)
    problems = verify(yaml_path.parent)
    if problems:
        raise DymoeError(f"{yaml_path.parent}: written files fail verification: {problems[0]}")
    n_train, n_test = SCALES[args.scale]
    print(f"wrote {yaml_path} ({len(DOMAINS)} domains × {n_train} train / {n_test} test pictures, seed {args.seed})")
    return 0
