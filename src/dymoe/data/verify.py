"""``verify-data``: open every file a benchmark references and decode every image, collecting every problem.

Everything a run will need is checked, and every problem is listed (a bad file does not stop the check of the
others): the train and test files (readable, UTF-8, JSON lists of objects, not empty), every training row, every
test row with the fields its scorer needs (the scorer itself is run on empty answers, so a reference it cannot
read is found here and not after a task has trained), repeated question ids, the side files, and every image
(inside its root, present, decodable). Paths of the benchmark YAML that lie outside the data root are listed
separately by :func:`outside_data_root`: the YAML is trusted configuration, so they are allowed, but shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dymoe.data.coin import (
    TestSample,
    check_scorable,
    duplicate_question_ids,
    load_side_index,
    parse_test_row,
    parse_train_row,
    read_json_rows,
)
from dymoe.data.images import load_image, resolve_image
from dymoe.data.tasks import Benchmark, EvalSet, TaskSpec, TrainFile
from dymoe.errors import DataError, DymoeError
from dymoe.eval.scorers import base_name, load_annotations


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


def _rows(path: Path, what: str, problems: list[Problem]) -> list[dict]:
    try:
        rows = read_json_rows(path)
    except DataError as err:
        problems.append(Problem(path, None, _strip_where(str(err), str(path))))
        return []
    if not rows:
        problems.append(Problem(path, None, f"no {what} (an empty {what.split()[0]} set: "
                                            f"{'0 training steps' if what.startswith('training') else 'a score of 0'})"))
    return rows


def verify_task(task: TaskSpec, *, decode: bool = True) -> list[Problem]:
    """Problems of one task: train/test JSON (readable, not empty), required fields, what the scorer needs,
    repeated question ids, image paths (escape, existence, decoding) and side files (a missing side file is
    reported: scoring would fall back to inline answers)."""
    problems: list[Problem] = []
    seen: dict[Path, str | None] = {}
    rows = _rows(task.train, "training rows", problems)
    for i, row in enumerate(tqdm(rows, desc=f"{task.name} train", disable=None, leave=False)):
        try:
            parse_train_row(row, i, task, check_images=False)
        except DataError as err:
            problems.append(Problem(task.train, i, _strip_where(str(err), f"{task.train} row {i}")))
            continue
        if row.get("image") is not None:
            p = _check_image(task.image_root, row["image"], task.train, i, decode, seen)
            problems += [p] if p else []

    side_ok = True
    for key, path in task.annotations.items():
        if not path.exists():
            problems.append(Problem(path, None, f"side file {key!r} not found (scoring falls back to inline answers)"))
    try:
        side = load_side_index(task)
    except DymoeError as err:
        problems.append(Problem(task.test, None, str(err)))
        side, side_ok = None, False
    rows = _rows(task.test, "test questions", problems)
    samples: list[TestSample] = []
    for i, row in enumerate(tqdm(rows, desc=f"{task.name} test", disable=None, leave=False)):
        try:
            ref, _ = parse_test_row(row, i, task, side, check_images=False)
            samples.append(TestSample(row["question_id"], None, row["text"], ref))
        except DataError as err:
            if side_ok or "side file" not in str(err):
                problems.append(Problem(task.test, i, _strip_where(str(err), f"{task.test} row {i}")))
        if row.get("image") is not None:
            p = _check_image(task.image_root, row["image"], task.test, i, decode, seen)
            problems += [p] if p else []
    problems += _repeated_ids(task.test, rows, task.scorer)
    if samples and len(samples) == len(rows) and side_ok:
        problems += _scorer_problems(task.test, samples, task.scorer, task.annotations)
    return problems


def _scorer_problems(path: Path, samples: list[TestSample], scorer: str, files: dict[str, Path]) -> list[Problem]:
    """Run ``scorer`` on empty answers to the questions of test file ``path``; on failure, once per question to
    name every one it cannot read. ``files``: the scorer's side files."""
    try:
        annotations = load_annotations(scorer, {k: p for k, p in files.items() if p.is_file()})
    except DymoeError as err:
        return [Problem(path, None, str(err))]
    unique = list({str(s.question_id): s for s in samples}.values())  # repeats are reported on their own
    try:
        check_scorable(path, unique, scorer, annotations)
        return []
    except DataError:
        pass
    out = []
    for i, s in enumerate(samples):
        try:
            check_scorable(path, [s], scorer, annotations)
        except DataError as err:
            out.append(Problem(path, i, _strip_where(str(err), str(path))))
    return out or [Problem(path, None, f"scorer {scorer!r} cannot score this test set")]


def _repeated_ids(path: Path, rows: list[dict], scorer: str) -> list[Problem]:
    if base_name(scorer) == "imagenet" and not scorer.endswith("-strict"):
        return []  # CoIN's ImageNet scorer aligns by position: repeats do no harm
    return [Problem(path, i, f"question_id {qid!r} repeats row {first} (the scorer matches answers by question_id)")
            for i, first, qid in duplicate_question_ids(rows)]


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
    problems: list[Problem] = []
    rows = _rows(file.path, "training rows", problems)
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
        return [Problem(eval_set.path, None, "no test questions (an empty test set: a score of 0)")]
    problems += _repeated_ids(eval_set.path, [s.reference for s in samples], eval_set.scorer)
    problems += _scorer_problems(eval_set.path, samples, eval_set.scorer, eval_set.scorer_annotations)
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


def outside_data_root(bench: Benchmark) -> list[Problem]:
    """Files and folders named by the benchmark YAML that lie outside its data root (compared lexically, so a
    symlink inside the root, e.g. ``cl_dataset/COCO2014 -> /data/coco``, counts as inside)."""
    root = Path(os.path.normpath(os.path.abspath(bench.data_root)))
    out = []
    for task in bench.tasks:
        named = {"image_root": task.image_root}
        for k, f in enumerate(task.train_files):
            key = "train" if len(task.train_files) == 1 else f"train[{k}]"
            named |= {key: f.path, f"{key}.image_root": f.image_root}
        for es in task.eval_sets:
            key = "test" if task.is_coin else f"eval {es.name!r}"
            named |= {key: es.path, f"{key} image_root": es.image_root,
                      **{f"{key} annotations.{k}": p for k, p in es.annotations.items()}}
        for key, path in named.items():
            full = Path(os.path.normpath(os.path.abspath(path)))
            if full != root and root not in full.parents:
                out.append(Problem(full, None, f"task {task.name!r} {key} is outside the data root {root}"))
    return out
