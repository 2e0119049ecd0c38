"""``dymoe`` entry point.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds a parser and sets
``func=run`` on it. Add one line to :data:`COMMANDS` per module.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dymoe.errors import DymoeError

# module path of each subcommand, in the order `dymoe --help` lists them
COMMANDS: list[str] = [
    "dymoe.cli.run",
    "dymoe.cli.eval",
    "dymoe.cli.reproduce",
    "dymoe.cli.ls",
    "dymoe.cli.score",
    "dymoe.cli.metrics",
    "dymoe.cli.verify_data",
    "dymoe.cli.convert",
    "dymoe.cli.make_minicoin",
    "dymoe.cli.make_minidomains",
    "dymoe.cli.report",
    "dymoe.cli.compare",
    "dymoe.cli.prepare_demo",
    "dymoe.cli.demo",
    "dymoe.cli.analyze",
    "dymoe.cli.build_base",
    "dymoe.cli.chat",
    "dymoe.cli.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dymoe",
        description="Continual instruction tuning of vision-language models with mixtures of LoRA experts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 2 user error)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline by default; a user who wants hub ids sets it to 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # a subcommand's optional positional given after its options (`dymoe chat RUN --image X "question"`): argparse
    # consumes positionals in one go, so it is taken here (the subcommand names it with set_defaults(trailing=...))
    trailing = getattr(args, "trailing", None)
    if extra and trailing and getattr(args, trailing) is None and len(extra) == 1 and not extra[0].startswith("-"):
        setattr(args, trailing, extra.pop())
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status = args.func(args)
    except DymoeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment, not a bug: a full disk, a read-only or missing path, permissions
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
