"""``verify-data`` for the peers' tasks: every training file and every evaluation set (any format), kept apart from
:mod:`dymoe.data.verify` (which checks CoIN tasks) so the two evolve independently."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from dymoe.data.coin import parse_train_row, read_json_rows
from dymoe.data.tasks import EvalSet, TaskSpec, TrainFile
from dymoe.data.verify import Problem, _check_image, _strip_where
from dymoe.errors import DataError


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
