"""Assembly of the ``dymoe demo`` runs: which methods, which config each one gets, and the comparison table.

The configs are YAML files in ``configs/demo/`` (:data:`CONFIG_DIR`): ``minicoin.yaml`` is the shared run config
(the pretrained demo base on mini-CoIN's eight tasks), ``<method>.yaml`` holds each method's own settings and
label, and ``quick.yaml`` the ``--quick`` reductions. They are layered in that order (later files win, mappings
merge key by key, everything else is replaced), turned into ``--set``-style overrides of ``minicoin.yaml`` and
validated by :func:`dymoe.config.load_config`, so a demo run is exactly reproducible with ``dymoe run``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dymoe.config import RunConfig, load_config
from dymoe.errors import ConfigError
from dymoe.io import read_yaml_mapping

__all__ = [
    "CONFIG_DIR",
    "DEMO_METHODS",
    "comparison_table",
    "demo_config",
    "demo_overrides",
    "select_methods",
]

#: the demo's methods, in table order: the baselines first, then LLaVA-DyMoE
DEMO_METHODS: tuple[str, ...] = ("lora", "incmoelora", "dymoe")
#: demo methods run only when asked for (``--methods``): the default demo keeps its time budget
EXTRA_DEMO_METHODS: tuple[str, ...] = ("cmoe", "dmole", "smoe_dsal")


def _default_config_dir() -> Path:
    """``configs/demo`` of the source checkout (``$DYMOE_DEMO_CONFIGS`` overrides it)."""
    env = os.environ.get("DYMOE_DEMO_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "configs" / "demo"


CONFIG_DIR: Path = _default_config_dir()


def select_methods(requested: Sequence[str] | None, registered: Sequence[str]) -> tuple[list[str], list[str]]:
    """The demo methods to run and those skipped because no such method is registered yet.

    Args:
        requested: method names asked for (``--methods``), or ``None`` for every one of :data:`DEMO_METHODS`.
        registered: the names in :data:`dymoe.methods.METHODS`.

    Returns:
        ``(run, skipped)``, both in the order of :data:`DEMO_METHODS` then :data:`EXTRA_DEMO_METHODS` (run only
        when requested).

    Raises:
        ConfigError: a requested name is not a demo method, is repeated, or is not registered (asking for a method
            explicitly makes its absence an error; the default list skips it with a note).
    """
    every = DEMO_METHODS + EXTRA_DEMO_METHODS
    names = list(DEMO_METHODS) if requested is None else list(requested)
    unknown = [m for m in names if m not in every]
    if unknown:
        raise ConfigError(f"--methods: unknown demo method {unknown[0]!r}; the demo runs {list(every)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods: a method is listed twice in {names}")
    if not names:
        raise ConfigError("--methods: give at least one method")
    missing = [m for m in names if m not in registered]
    if requested is not None and missing:
        raise ConfigError(f"--methods: {missing[0]!r} is not a registered method; registered: {sorted(registered)}")
    ordered = [m for m in every if m in names]
    return [m for m in ordered if m in registered], [m for m in ordered if m not in registered]


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "demo config")


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge recursively, any other value replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` → ``["a.b=1"]``; values are JSON (valid YAML flow), an empty mapping stays ``{}``."""
    items: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items += _flatten(value, dotted + ".")
        else:
            items.append(f"{dotted}={json.dumps(value)}")
    return items


def layer_overrides(paths: Sequence[str | os.PathLike]) -> list[str]:
    """``key=value`` overrides equal to layering the YAML files ``paths`` in order (later files win, mappings merge
    key by key, as the demo layers ``<method>.yaml`` over ``minicoin.yaml``)."""
    data: dict[str, Any] = {}
    for path in paths:
        data = _merge(data, _read_yaml(Path(path)))
    return _flatten(data)


def demo_overrides(method: str, *, quick: bool = False, seed: int = 0,
                   config_dir: str | os.PathLike | None = None) -> list[str]:
    """The ``key=value`` overrides of ``minicoin.yaml`` for one demo run.

    Layers ``<method>.yaml``, then ``quick.yaml`` if ``quick``, then ``training.seed``. The method file must set
    ``method.name`` to ``method``.
    """
    root = Path(config_dir) if config_dir is not None else CONFIG_DIR
    layer = _read_yaml(root / f"{method}.yaml")
    name = (layer.get("method") or {}).get("name")
    if name != method:
        raise ConfigError(f"{root / f'{method}.yaml'}: method.name is {name!r}, expected {method!r}")
    if quick:
        layer = _merge(layer, _read_yaml(root / "quick.yaml"))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")
    layer = _merge(layer, {"training": {"seed": seed}})
    return _flatten(layer)


def demo_config(method: str, *, quick: bool = False, seed: int = 0,
                config_dir: str | os.PathLike | None = None) -> RunConfig:
    """The validated run config of one demo run (``minicoin.yaml`` + :func:`demo_overrides`)."""
    root = Path(config_dir) if config_dir is not None else CONFIG_DIR
    return load_config(root / "minicoin.yaml", demo_overrides(method, quick=quick, seed=seed, config_dir=root))


def comparison_table(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike) -> str:
    """Compare finished demo runs side by side; writes ``output/comparison.md`` and ``.csv``, returns the Markdown.

    One row per method label (per-task final accuracy, MFN, MAA, BWT), via
    :func:`dymoe.runner.report.compare_runs`.
    """
    from dymoe.runner.report import compare_runs, write_text_atomic

    # the methods' adapter layouts differ by design (LoRA's rank vs the experts' bank): shown side by side, with the
    # differing protocol fields printed under the table
    md, csv_text = compare_runs(list(run_dirs), allow_mixed=True)
    out = Path(output)
    write_text_atomic(out / "comparison.md", md)
    write_text_atomic(out / "comparison.csv", csv_text)
    return md
