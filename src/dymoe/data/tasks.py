"""Benchmark definitions: a YAML file listing the tasks (files, image root, scorer, side files) and their order.

Schema (see ``configs/benchmarks/coin.yaml``)::

    name: coin
    instruction_type: origin        # origin | diverse | 10type
    data_root: null                 # null → give it (--data-root); relative → relative to this YAML's directory
    order: origin                   # a key of `orders` or an explicit list of task names ("A+B": one joint task)
    orders: {origin: [...], reverse: [...], alphabet: [...]}   # optional
    tasks:
      - {name, train, test, image_root, scorer, annotations: {key: path}}   # paths relative to data_root

The peers' benchmarks (``configs/benchmarks/dmole9.yaml``, ``smoe3.yaml``) use the general form of a task: several
training files, several evaluation sets (each with its own format, scorer, image root, side files and generation
length) and per-task epochs::

      - name: Medicine
        image_root: medicine          # default image root of the task's files and sets
        epochs: 2                     # optional: overrides training.epochs for this task
        train:                        # a path, or a list of paths / mappings
          - {path: medicine/vqa_rad_train.json, source: VQA-RAD, repeat: 1, image_root: ...}
        eval:                         # instead of test/scorer/annotations
          - {name: VQA-RAD, path: medicine/vqa_rad_test.json, scorer: medvqa, format: coin,
             max_new_tokens: 64, min_new_tokens: 1, prompt: null, annotations: {key: path}, image_root: ...}

A CoIN task (one ``train`` file, ``test`` + ``scorer`` + ``annotations``) is the degenerate case: one
:class:`TrainFile` and one :class:`EvalSet` of format ``coin``.

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
from dymoe.io import read_yaml_mapping, safe_filename

# Evaluation-set format names (their readers are registered in :data:`dymoe.data.formats.FORMATS`, which checks at
# import that it implements exactly these). Declared here so a benchmark file is validated on load without the task
# model depending on the readers, which depend on it.
EVAL_FORMATS = ("coin", "dmole-vqa", "dmole-choice", "dmole-grounding", "coco-caption")

INSTRUCTION_TYPES = ("origin", "diverse", "10type")
_TOP_KEYS = {"name", "instruction_type", "data_root", "order", "orders", "tasks"}
_TASK_KEYS = {"name", "train", "test", "image_root", "scorer", "annotations", "eval", "epochs"}
_TRAIN_KEYS = {"path", "image_root", "repeat", "source"}
_EVAL_KEYS = {"name", "path", "image_root", "scorer", "format", "annotations", "max_new_tokens", "min_new_tokens",
              "prompt"}


@dataclass
class TrainFile:
    """One training file of a task (LLaVA conversation rows, a JSON list or JSONL).

    Attributes:
        path: the file.
        image_root: the directory its rows' ``image`` paths are relative to.
        repeat: InternVL's ``repeat_time``: an integer ``k >= 1`` repeats the rows ``k`` times; a fraction in
            (0, 1) keeps that share of them (seeded random subset).
        source: a dataset label (e.g. ``"VQA-RAD"``) carried by each sample, for per-source accounting.
    """

    path: Path
    image_root: Path
    repeat: float = 1
    source: str | None = None


@dataclass
class EvalSet:
    """One evaluation set of a task.

    Attributes:
        name: its label (the task name for a CoIN task).
        path: the test file.
        image_root: the directory its ``image`` paths are relative to.
        scorer: a key of :data:`dymoe.eval.scorers.SCORERS`.
        format: how the file is read, a key of :data:`dymoe.data.formats.FORMATS` (``coin`` = CoIN's test rows).
        annotations: side files: for ``coin`` the scorer's (``ANNOTATION_KEYS``), for other formats read by the
            format and merged into the references.
        max_new_tokens / min_new_tokens: generation length for this set (``None`` = the run's setting).
        prompt: a format-specific prompt (instruction suffix or template); ``None`` = the format's default.
    """

    name: str
    path: Path
    image_root: Path
    scorer: str
    format: str = "coin"
    annotations: dict[str, Path] = field(default_factory=dict)
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    prompt: str | None = None

    @property
    def scorer_annotations(self) -> dict[str, Path]:
        """The side files the *scorer* reads (``coin`` format only; other formats merge theirs into the rows)."""
        return dict(self.annotations) if self.format == "coin" else {}


@dataclass
class TaskSpec:
    """One task with absolute paths (resolved against the benchmark's ``data_root``).

    ``train_files`` and ``eval_sets`` are the full description; ``train``, ``test``, ``image_root``, ``scorer`` and
    ``annotations`` describe the *first* training file and the *first* evaluation set (for a CoIN task, the only
    ones). Built from the legacy fields alone, the lists hold one entry each.

    The runner (:mod:`dymoe.runner.evaluation`) trains on every training file (with its ``repeat``) for the task's
    ``epochs`` (else ``training.epochs``), evaluates every evaluation set with its own scorer and generation length,
    and fills the task's matrix cell with the mean of the sets' headline numbers.
    """

    name: str
    train: Path
    test: Path
    image_root: Path
    scorer: str
    annotations: dict[str, Path] = field(default_factory=dict)
    train_files: list[TrainFile] = field(default_factory=list)
    eval_sets: list[EvalSet] = field(default_factory=list)
    epochs: float | None = None

    def __post_init__(self) -> None:
        if not self.train_files:
            self.train_files = [TrainFile(self.train, self.image_root)]
        if not self.eval_sets:
            self.eval_sets = [EvalSet(self.name, self.test, self.image_root, self.scorer, "coin",
                                      dict(self.annotations))]

    @property
    def is_coin(self) -> bool:
        """One training file and one ``coin``-format evaluation set (what CoIN and mini-CoIN tasks are)."""
        return len(self.train_files) == 1 and len(self.eval_sets) == 1 and self.eval_sets[0].format == "coin"

    def eval_set(self, name: str) -> EvalSet:
        """The evaluation set called ``name`` (ConfigError with the known names otherwise)."""
        for es in self.eval_sets:
            if es.name == name:
                return es
        raise ConfigError(f"task {self.name!r} has no evaluation set {name!r}; sets: {[e.name for e in self.eval_sets]}")


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


def _keys(raw: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(allowed)}")
    return raw


def _scorer(value: Any, where: str) -> str:
    scorer = _str(value, where)
    if scorer not in SCORERS:
        raise ConfigError(f"{where}: unknown scorer {scorer!r}; known: {', '.join(SCORERS.names())}")
    return scorer


def _paths(raw: Any, root: Path, where: str) -> dict[str, Path]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of name → path")
    return {str(k): root / _str(v, f"{where}.{k}") for k, v in raw.items()}


def _positive(value: Any, where: str, *, integer: bool = False, allow_none: bool = True):
    if value is None and allow_none:
        return None
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value <= 0:
        raise ConfigError(f"{where}: expected a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def _train_files(raw: Any, default_root: Path | None, root: Path, where: str) -> list[TrainFile]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ConfigError(f"{where}: expected a path or a non-empty list of training files")
    out = []
    for k, item in enumerate(items):
        w = f"{where}[{k}]" if isinstance(raw, list) else where
        item = {"path": item} if isinstance(item, str) else _keys(item, _TRAIN_KEYS, w)
        if "path" not in item:
            raise ConfigError(f"{w}: missing key 'path'")
        image_root = root / _str(item["image_root"], f"{w}.image_root") if "image_root" in item else default_root
        if image_root is None:
            raise ConfigError(f"{w}: no image_root (give one here or on the task)")
        repeat = _positive(item.get("repeat", 1), f"{w}.repeat")
        if repeat > 1 and repeat != int(repeat):
            raise ConfigError(f"{w}.repeat: above 1 it must be an integer (InternVL's repeat_time), got {repeat}")
        source = item.get("source")
        out.append(TrainFile(root / _str(item["path"], f"{w}.path"), image_root, repeat,
                             None if source is None else _str(source, f"{w}.source")))
    return out


def _eval_sets(raw: Any, default_root: Path | None, root: Path, where: str) -> list[EvalSet]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a non-empty list of evaluation sets")
    out = []
    for k, item in enumerate(raw):
        w = f"{where}[{k}]"
        item = _keys(item, _EVAL_KEYS, w)
        for key in ("name", "path", "scorer"):
            if key not in item:
                raise ConfigError(f"{w}: missing key {key!r}")
        image_root = root / _str(item["image_root"], f"{w}.image_root") if "image_root" in item else default_root
        if image_root is None:
            raise ConfigError(f"{w}: no image_root (give one here or on the task)")
        fmt = _str(item.get("format", "coin"), f"{w}.format")
        if fmt not in EVAL_FORMATS:
            raise ConfigError(f"{w}.format: unknown format {fmt!r}; known: {', '.join(EVAL_FORMATS)}")
        prompt = item.get("prompt")
        out.append(EvalSet(
            name=_str(item["name"], f"{w}.name"),
            path=root / _str(item["path"], f"{w}.path"),
            image_root=image_root,
            scorer=_scorer(item["scorer"], f"{w}.scorer"),
            format=fmt,
            annotations=_paths(item.get("annotations"), root, f"{w}.annotations"),
            max_new_tokens=_positive(item.get("max_new_tokens"), f"{w}.max_new_tokens", integer=True),
            min_new_tokens=_positive(item.get("min_new_tokens"), f"{w}.min_new_tokens", integer=True),
            prompt=None if prompt is None else _str(prompt, f"{w}.prompt"),
        ))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: evaluation set names repeat: {names}")
    return out


def _task(raw: Any, idx: int, root: Path, path: Path, eval_only: bool = False) -> TaskSpec:
    where = f"{path}: tasks[{idx}]"
    raw = _keys(raw, _TASK_KEYS, where)
    required = ("name", "train") if "eval" in raw else ("name", "train", "test", "image_root", "scorer")
    for key in required:
        if key not in raw and not (eval_only and key == "train"):
            raise ConfigError(f"{where}: missing key {key!r}")
    name = _str(raw["name"], f"{where}.name")
    default_root = root / _str(raw["image_root"], f"{where}.image_root") if "image_root" in raw else None
    train_files = _train_files(raw["train"], default_root, root, f"{where}.train") if "train" in raw else []
    if "eval" in raw:
        clash = sorted({"test", "scorer", "annotations"} & set(raw))
        if clash:
            raise ConfigError(f"{where}: give either 'eval' or {clash}, not both")
        eval_sets = _eval_sets(raw["eval"], default_root, root, f"{where}.eval")
    else:
        eval_sets = [EvalSet(name, root / _str(raw["test"], f"{where}.test"), default_root,
                             _scorer(raw["scorer"], f"{where}.scorer"), "coin",
                             _paths(raw.get("annotations"), root, f"{where}.annotations"))]
    es = eval_sets[0]
    # an evaluation-only benchmark (the general-ability check) trains nothing: its train entry is the first test set
    first = train_files[0] if train_files else TrainFile(es.path, es.image_root)
    train_files = train_files or [first]
    return TaskSpec(
        name=name, train=first.path, test=es.path, image_root=default_root or first.image_root, scorer=es.scorer,
        annotations=es.scorer_annotations, train_files=train_files, eval_sets=eval_sets,
        epochs=_positive(raw.get("epochs"), f"{where}.epochs"),
    )


def initial_task(raw: Any, root: Path, where: str) -> TaskSpec:
    """A training-only task ``"initial"`` from ``{"train": ..., "image_root": ...}`` (a benchmark task's keys;
    relative paths against ``root``): a method's initial data set (CMoE's initial experts). It has no test set of
    its own (its evaluation fields point at its first training file and are never used)."""
    if not isinstance(raw, dict) or "train" not in raw:
        raise ConfigError(f"{where}: expected a mapping with 'train' (and 'image_root'), got {raw!r}")
    raw = _keys(raw, {"train", "image_root"}, where)
    default_root = root / _str(raw["image_root"], f"{where}.image_root") if "image_root" in raw else None
    files = _train_files(raw["train"], default_root, root, f"{where}.train")
    first = files[0]
    return TaskSpec(name="initial", train=first.path, test=first.path, image_root=default_root or first.image_root,
                    scorer="exact-match", train_files=files)


def _check_folder_names(names: list[str], path: Path) -> None:
    """Each task gets folders named after it (``predictions/<name>/``, ``checkpoints/task_<k>_<name>``): two names
    that map to one folder name ("Viz Wiz" / "Viz_Wiz", or "VizWiz" / "vizwiz" on a case-insensitive file system)
    would share predictions, and a name that is only dots or starts with one would be a hidden or parent folder."""
    seen: dict[str, str] = {}
    for name in names:
        folder = safe_filename(name)
        if folder.startswith("."):
            raise ConfigError(f"{path}: task name {name!r} cannot be a folder name (it would be {folder!r}); "
                              "rename the task")
        other = seen.setdefault(folder.lower(), name)
        if other != name:
            raise ConfigError(f"{path}: task names {other!r} and {name!r} map to the same folder name "
                              f"({safe_filename(other)!r} / {folder!r}, compared ignoring case); rename one of them")


#: joins task names into one **joint task** in an order (``[Medicine+Chart+Math]``: all their data at once)
JOINT = "+"


def joint_task(tasks: list[TaskSpec], where: str) -> TaskSpec:
    """One task trained on every training file of ``tasks`` at once and evaluated on all their evaluation sets
    (the multi-domain setting of SMoE-DSAL's Table 2; its cell is the mean of the sets' headlines, as any task's).
    Each file and set keeps its own image root and scorer."""
    sets = [es for t in tasks for es in t.eval_sets]
    names = [es.name for es in sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: the joint task {JOINT.join(t.name for t in tasks)!r} would hold two evaluation "
                          f"sets of one name: {names}")
    epochs = {t.epochs for t in tasks}
    if len(epochs) > 1:
        raise ConfigError(f"{where}: the tasks of {JOINT.join(t.name for t in tasks)!r} have different epochs "
                          f"{sorted(epochs, key=str)}; a joint task trains them together")
    first = tasks[0]
    return TaskSpec(name=JOINT.join(t.name for t in tasks), train=first.train, test=first.test,
                    image_root=first.image_root, scorer=first.scorer, annotations=dict(first.annotations),
                    train_files=[f for t in tasks for f in t.train_files], eval_sets=sets, epochs=epochs.pop())


def _order(order: Any, orders: dict[str, list[str]], names: list[str], where: str) -> list[str]:
    if isinstance(order, str):
        if order not in orders:
            raise ConfigError(f"{where}: unknown order {order!r}; named orders: {sorted(orders)}")
        order = orders[order]
    if not isinstance(order, (list, tuple)) or not order:
        raise ConfigError(f"{where}: expected an order name or a non-empty list of task names")
    for name in order:
        parts = [name] if name in names else str(name).split(JOINT)
        for part in parts:
            if part not in names:
                raise ConfigError(f"{where}: unknown task {part!r} in the order; tasks: {names}")
    if len(set(order)) != len(order):
        raise ConfigError(f"{where}: the order repeats a task: {list(order)}")
    return list(order)


def load_benchmark(
    path: str | Path,
    *,
    data_root: str | Path | None = None,
    order: str | list[str] | None = None,
    instruction_type: str | None = None,
    eval_only: bool = False,
) -> Benchmark:
    """Read a benchmark YAML; keyword arguments override the file's ``data_root``, ``order``, ``instruction_type``.

    ``eval_only``: a benchmark that is only evaluated (``evaluation.general``): a task's ``train`` may be left out.

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
    tasks = [_task(t, i, root, path, eval_only) for i, t in enumerate(tasks_raw)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: task names repeat: {names}")
    _check_folder_names(names, path)
    orders = default_orders(names)
    given = raw.get("orders") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: 'orders' must map names to lists of task names")
    for key, value in given.items():
        orders[str(key)] = _order(value, {}, names, f"{path}: orders.{key}")
    chosen = _order(order if order is not None else raw.get("order", "origin"), orders, names, f"{path}: order")
    by_name = {t.name: t for t in tasks}
    for n in chosen:
        if n not in by_name:
            by_name[n] = joint_task([by_name[p] for p in n.split(JOINT)], f"{path}: order")
    itype = instruction_type if instruction_type is not None else raw.get("instruction_type", "origin")
    return Benchmark(
        name=str(raw.get("name") or path.stem),
        instruction_type=normalize_instruction_type(itype, f"{path}: instruction_type"),
        data_root=root,
        tasks=[by_name[n] for n in chosen],
    )
