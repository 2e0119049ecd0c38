"""Benchmark definitions: a YAML file listing the tasks (files, image root, scorer, side files) and their order.

Schema (see ``configs/benchmarks/coin.yaml``)::

    name: coin
    instruction_type: origin        # origin | diverse | 10type
    data_root: null                 # null → give it (--data-root); relative → relative to this YAML's directory
    order: origin                   # a key of `orders` or an explicit list of task names
    orders: {origin: [...], reverse: [...], alphabet: [...]}   # optional
    tasks:
      - {name, train, test, image_root, scorer, annotations: {key: path}}   # paths relative to data_root

Without ``orders``, ``origin`` is the listed order, ``reverse`` its reverse and ``alphabet`` the case-insensitive
sort of the names (which gives CoIN's alphabet order GQA, Grounding, ImageNet, OCRVQA, ScienceQA, TextVQA,
VizWiz, VQAv2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dymoe.errors import ConfigError
from dymoe.eval.scorers import SCORERS  # the registry is the source of truth for scorer names
from dymoe.io import read_yaml_mapping

INSTRUCTION_TYPES = ("origin", "diverse", "10type")
_TOP_KEYS = {"name", "instruction_type", "data_root", "order", "orders", "tasks"}
_TASK_KEYS = {"name", "train", "test", "image_root", "scorer", "annotations"}


@dataclass
class TaskSpec:
    """One CoIN task with absolute paths (resolved against the benchmark's ``data_root``)."""

    name: str
    train: Path
    test: Path
    image_root: Path
    scorer: str
    annotations: dict[str, Path] = field(default_factory=dict)


@dataclass
class Benchmark:
    """A benchmark: its tasks already in the chosen training order."""

    name: str
    instruction_type: str
    data_root: Path
    tasks: list[TaskSpec]

    def task(self, name: str) -> TaskSpec:
        """The task called ``name`` (ConfigError with the known names otherwise)."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise ConfigError(f"benchmark {self.name!r} has no task {name!r}; tasks: {[t.name for t in self.tasks]}")


def normalize_instruction_type(value: Any, where: str) -> str:
    """``"Origin"``/``"10Type"`` → ``"origin"``/``"10type"``; anything else is a ConfigError."""
    key = str(value).strip().lower()
    if key not in INSTRUCTION_TYPES:
        raise ConfigError(f"{where}: instruction_type {value!r} is not one of {list(INSTRUCTION_TYPES)}")
    return key


def default_orders(names: list[str]) -> dict[str, list[str]]:
    """``origin`` (as listed), ``reverse`` and ``alphabet`` (case-insensitive) orders of ``names``."""
    return {"origin": list(names), "reverse": list(reversed(names)), "alphabet": sorted(names, key=str.lower)}


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _task(raw: Any, idx: int, root: Path, path: Path) -> TaskSpec:
    where = f"{path}: tasks[{idx}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - _TASK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(_TASK_KEYS)}")
    for key in ("name", "train", "test", "image_root", "scorer"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key {key!r}")
    scorer = _str(raw["scorer"], f"{where}.scorer")
    if scorer not in SCORERS:
        raise ConfigError(f"{where}.scorer: unknown scorer {scorer!r}; known: {', '.join(SCORERS.names())}")
    ann = raw.get("annotations") or {}
    if not isinstance(ann, dict):
        raise ConfigError(f"{where}.annotations: expected a mapping of name → path")
    return TaskSpec(
        name=_str(raw["name"], f"{where}.name"),
        train=root / _str(raw["train"], f"{where}.train"),
        test=root / _str(raw["test"], f"{where}.test"),
        image_root=root / _str(raw["image_root"], f"{where}.image_root"),
        scorer=scorer,
        annotations={str(k): root / _str(v, f"{where}.annotations.{k}") for k, v in ann.items()},
    )


def _order(order: Any, orders: dict[str, list[str]], names: list[str], where: str) -> list[str]:
    if isinstance(order, str):
        if order not in orders:
            raise ConfigError(f"{where}: unknown order {order!r}; named orders: {sorted(orders)}")
        order = orders[order]
    if not isinstance(order, (list, tuple)) or not order:
        raise ConfigError(f"{where}: expected an order name or a non-empty list of task names")
    for name in order:
        if name not in names:
            raise ConfigError(f"{where}: unknown task {name!r} in the order; tasks: {names}")
    if len(set(order)) != len(order):
        raise ConfigError(f"{where}: the order repeats a task: {list(order)}")
    return list(order)


def load_benchmark(
    path: str | Path,
    *,
    data_root: str | Path | None = None,
    order: str | list[str] | None = None,
    instruction_type: str | None = None,
) -> Benchmark:
    """Read a benchmark YAML; keyword arguments override the file's ``data_root``, ``order``, ``instruction_type``.

    ``data_root`` given here is taken as is (relative to the working directory); the YAML's own relative
    ``data_root`` is relative to the YAML's directory. ``order`` is a named order or a list of task names (a
    subset is allowed). Raises :class:`ConfigError` naming the file and key for anything invalid.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "benchmark file")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(_TOP_KEYS)}")
    if data_root is not None:
        root = Path(data_root)
    elif raw.get("data_root") is not None:
        root = Path(str(raw["data_root"]))
        root = root if root.is_absolute() else path.parent / root
    else:
        raise ConfigError(f"{path}: data_root is null; pass --data-root DIR (or data_root=...)")
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise ConfigError(f"{path}: 'tasks' must be a non-empty list")
    tasks = [_task(t, i, root, path) for i, t in enumerate(tasks_raw)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: task names repeat: {names}")
    orders = default_orders(names)
    given = raw.get("orders") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: 'orders' must map names to lists of task names")
    for key, value in given.items():
        orders[str(key)] = _order(value, {}, names, f"{path}: orders.{key}")
    chosen = _order(order if order is not None else raw.get("order", "origin"), orders, names, f"{path}: order")
    by_name = {t.name: t for t in tasks}
    itype = instruction_type if instruction_type is not None else raw.get("instruction_type", "origin")
    return Benchmark(
        name=str(raw.get("name") or path.stem),
        instruction_type=normalize_instruction_type(itype, f"{path}: instruction_type"),
        data_root=root,
        tasks=[by_name[n] for n in chosen],
    )
