"""``dymoe convert NAME --src DIR --out DIR``: build a peer benchmark's files from a public dataset on disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dymoe.data.convert import CONVERTERS
from dymoe.errors import DataError


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("convert", help="convert a public dataset (release layout, on disk) into benchmark files")
    p.add_argument("name", help=f"one of: {', '.join(CONVERTERS.names())}")
    p.add_argument("--src", required=True, help="the dataset's release folder")
    p.add_argument("--out", required=True, help="the benchmark's data_root (e.g. for configs/benchmarks/smoe3.yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the converter and print its row counts."""
    src = Path(args.src)
    if not src.is_dir():
        raise DataError(f"--src {src}: not a directory")
    counts = CONVERTERS.get(args.name)(src, Path(args.out))
    print(json.dumps({"converter": args.name, "out": str(args.out), **counts}))
    return 0
