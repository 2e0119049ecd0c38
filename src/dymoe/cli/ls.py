"""``dymoe ls``: list what is registered (scorers, methods, ...)."""

from __future__ import annotations

import importlib

# (label, module, registry attribute); modules that are not there yet are skipped
REGISTRIES = [
    ("scorers", "dymoe.eval.scorers", "SCORERS"),
    ("methods", "dymoe.methods", "METHODS"),
    ("metric definitions", "dymoe.eval.metrics", "METRICS"),
    ("converters", "dymoe.data.convert", "CONVERTERS"),
    ("eval-set formats", "dymoe.data.formats", "FORMATS"),
]


def register(sub) -> None:
    p = sub.add_parser("ls", help="list registered scorers, methods and other plug-ins")
    p.set_defaults(func=run)


def run(args) -> int:
    for label, module, attr in REGISTRIES:
        try:
            reg = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        print(f"{label}: {', '.join(reg.names())}")
    return 0
