"""``verify-data``: open every file a benchmark references and decode every image, collecting problems."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dymoe.data.coin import load_side_index, parse_train_row, read_json_rows
from dymoe.data.images import load_image, resolve_image
from dymoe.data.tasks import Benchmark, EvalSet, TaskSpec, TrainFile
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
    checked by :func:`verify_task_sets`."""
    out: list[Problem] = []
    for task in bench.tasks:
        if task.is_coin:
            out += verify_task(task, decode=decode)
        else:
            out += verify_task_sets(task, decode=decode)
    return out


# ---------------------------------------------------------------------------- the peers' tasks
# every training file and every evaluation set (any format) of a multi-file / multi-set task
def verify_train_file(task: TaskSpec, file: TrainFile, *, decode: bool = True,
                      seen: dict[Path, str | None] | None = None) -> list[Problem]:
    """Problems of one training file: JSON/JSONL, conversation fields, image paths (escape, existence, decoding)."""
    seen = {} if seen is None else seen
    try:
        rows = read_json_rows(file.path)
    except DataError as err:
        return [Problem(file.path, None, _strip_where(str(err), str(file.path)))]
    if not rows:
        return [Problem(file.path, None, "no training rows")]
    problems: list[Problem] = []
    for i, row in enumerate(tqdm(rows, desc=f"{task.name} {file.path.name}", disable=None, leave=False)):
        try:
            parse_train_row(row, i, task, check_images=False, file=file)
        except DataError as err:
            problems.append(Problem(file.path, i, _strip_where(str(err), f"{file.path} row {i}")))
            continue
        if row.get("image") is not None:
            p = _check_image(file.image_root, row["image"], file.path, i, decode, seen)
            problems += [p] if p else []
    return problems


def verify_eval_set(task: TaskSpec, eval_set: EvalSet, *, decode: bool = True) -> list[Problem]:
    """Problems of one evaluation set: missing side files, every row its format rejects (fields, image paths),
    an empty set, and (with ``decode``) images that do not decode."""
    from dymoe.data.formats import FORMATS

    problems = [Problem(path, None, f"side file {key!r} not found")
                for key, path in eval_set.annotations.items() if not path.is_file()]
    if problems:
        return problems
    fmt = FORMATS.get(eval_set.format)
    for row, reason in fmt.check(task, eval_set):
        prefix = f"{eval_set.path} row {row}" if row is not None else str(eval_set.path)
        problems.append(Problem(eval_set.path, row, _strip_where(reason, prefix)))
    if problems:
        return problems
    samples = fmt.load(task, eval_set)
    if not samples:
        return [Problem(eval_set.path, None, "no evaluation rows")]
    if decode:
        from dymoe.data.images import load_image

        for i, s in enumerate(samples):
            if s.image is not None:
                try:
                    load_image(s.image)
                except DataError as err:
                    problems.append(Problem(eval_set.path, i, str(err)))
    return problems


def verify_task_sets(task: TaskSpec, *, decode: bool = True) -> list[Problem]:
    """Problems of every training file and every evaluation set of ``task``."""
    seen: dict[Path, str | None] = {}
    out: list[Problem] = []
    for file in task.train_files:
        out += verify_train_file(task, file, decode=decode, seen=seen)
    for es in task.eval_sets:
        out += verify_eval_set(task, es, decode=decode)
    return out
