"""``verify-data``: open every file a benchmark references and decode every image, collecting problems."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dymoe.data.coin import load_side_index, parse_train_row, read_json_rows
from dymoe.data.images import load_image, resolve_image
from dymoe.data.tasks import Benchmark, TaskSpec
from dymoe.errors import DataError


@dataclass
class Problem:
    """One problem: the file, the row index (``None`` for file-level problems) and the reason."""

    file: Path
    row: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}" + (f" row {self.row}" if self.row is not None else "") + f": {self.reason}"


def _strip_where(msg: str, prefix: str) -> str:
    return msg[len(prefix) + 2 :] if msg.startswith(prefix + ": ") else msg


def _check_image(root: Path, rel: object, file: Path, i: int, decode: bool, seen: dict[Path, str | None]):
    where = f"{file} row {i}"
    try:
        path = resolve_image(root, rel, where=where)  # type: ignore[arg-type]
    except DataError as err:
        return Problem(file, i, _strip_where(str(err), where))
    if path not in seen:
        try:
            if decode:
                load_image(path)
            elif not path.is_file():
                raise DataError(f"image {path} does not exist")
            seen[path] = None
        except DataError as err:
            seen[path] = str(err)
    return Problem(file, i, seen[path]) if seen[path] else None


def verify_task(task: TaskSpec, *, decode: bool = True) -> list[Problem]:
    """Problems of one task: train/test JSON, required fields, image paths (escape, existence, decoding) and
    side files (a missing side file is reported: scoring would fall back to inline answers)."""
    problems: list[Problem] = []
    seen: dict[Path, str | None] = {}
    try:
        rows = read_json_rows(task.train)
    except DataError as err:
        problems.append(Problem(task.train, None, _strip_where(str(err), str(task.train))))
        rows = []
    for i, row in enumerate(tqdm(rows, desc=f"{task.name} train", disable=None, leave=False)):
        try:
            parse_train_row(row, i, task, check_images=False)
        except DataError as err:
            problems.append(Problem(task.train, i, _strip_where(str(err), f"{task.train} row {i}")))
            continue
        if row.get("image") is not None:
            p = _check_image(task.image_root, row["image"], task.train, i, decode, seen)
            problems += [p] if p else []
    try:
        rows = read_json_rows(task.test)
    except DataError as err:
        problems.append(Problem(task.test, None, _strip_where(str(err), str(task.test))))
        rows = []
    for i, row in enumerate(tqdm(rows, desc=f"{task.name} test", disable=None, leave=False)):
        missing = [k for k in ("question_id", "text") if k not in row]
        if missing:
            problems.append(Problem(task.test, i, f"missing field {missing[0]!r}"))
        if row.get("image") is not None:
            p = _check_image(task.image_root, row["image"], task.test, i, decode, seen)
            problems += [p] if p else []
    for key, path in task.annotations.items():
        if not path.is_file():
            problems.append(Problem(path, None, f"side file {key!r} not found (scoring falls back to inline answers)"))
    if all(path.is_file() for path in task.annotations.values()):
        try:
            load_side_index(task)
        except DataError as err:
            problems.append(Problem(task.test, None, str(err)))
    return problems


def verify_benchmark(bench: Benchmark, *, decode: bool = True) -> list[Problem]:
    """Problems of every task of a benchmark (empty list = all good); the peers' multi-file / multi-set tasks are
    checked by :func:`dymoe.data.verify_sets.verify_task_sets`."""
    out: list[Problem] = []
    for task in bench.tasks:
        if task.is_coin:
            out += verify_task(task, decode=decode)
        else:
            from dymoe.data.verify_sets import verify_task_sets

            out += verify_task_sets(task, decode=decode)
    return out
