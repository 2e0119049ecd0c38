"""CoIN instruction files: training conversations and test questions (+ evaluation side files).

Train rows (LLaVA format)::

    {"id": "...", "image": "rel/path.jpg",                       # "image" absent → text-only sample
     "conversations": [{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt", "value": "A1"}, ...]}

Test rows::

    {"question_id": ..., "image": "rel/path.jpg", "text": "prompt",
     "answer": "..." | "answers": [...] | "answer_bbox": "[x1, y1, x2, y2]" + "size": [w, h]}

Side files (``TaskSpec.annotations``) are merged into each test reference under ``"annotation"``: ScienceQA
``problems`` (entry ``problems[qid]``), TextVQA ``annotations`` (the ``data`` entry with the same ``question_id``),
GQA ``questions`` (``questions[qid]``). **Fallback**: when a side file is not listed, or listed but not on disk
(a warning is logged), nothing is merged and the scorer reads the inline ``answer`` / ``answers`` fields of the
test row; a row with neither is an error.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dymoe.data.images import load_image, resolve_image
from dymoe.data.tasks import EvalSet, TaskSpec, TrainFile, normalize_instruction_type
from dymoe.data.templates import rewrite_prompt
from dymoe.errors import DataError
from dymoe.eval.scorers import SCORERS, base_name
from dymoe.io import parse_json, read_json, read_text

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


@dataclass
class TrainSample:
    """One training conversation: ``turns`` are (user, assistant) pairs without the ``<image>`` placeholder;
    ``image`` is the resolved path or ``None`` for a text-only sample."""

    id: str
    image: Path | None
    turns: list[tuple[str, str]]
    source: str | None = None  # the training file's ``source`` label (peers' multi-file tasks)


@dataclass
class TestSample:
    """One test question: ``prompt`` is the user text (no ``<image>``); ``reference`` the raw row plus the merged
    side-file entry under ``"annotation"`` (what the scorer needs)."""

    question_id: Any
    image: Path | None
    prompt: str
    reference: dict


@dataclass
class SkippedRow:
    """A training row dropped by ``skip_invalid=True``."""

    index: int
    id: str | None
    reason: str


class TrainSet(list):
    """``list[TrainSample]`` that also carries the rows skipped with ``skip_invalid=True`` (``.skipped``)."""

    skipped: list[SkippedRow]

    def __init__(self, samples: list[TrainSample], skipped: list[SkippedRow]):
        super().__init__(samples)
        self.skipped = skipped


def read_json_rows(path: Path) -> list[dict]:
    """Parse a JSON list of objects (or, for a ``.jsonl`` file, one object per line); a missing, unreadable or
    non-UTF-8 file, a directory, malformed JSON, a non-list or a non-object row raises :class:`DataError` naming
    the file (and row)."""
    path = Path(path)
    text = read_text(path)
    if path.suffix == ".jsonl":
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {n}: malformed JSON: {err.msg}") from None
    else:
        data = parse_json(text, path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {i}: expected an object, got {type(row).__name__}")
    return data


def strip_image_token(text: str) -> str:
    """Remove ``<image>`` and the newline LLaVA puts next to it (``"<image>\\nQ"`` / ``"Q\\n<image>"`` → ``"Q"``)."""
    return text.replace(IMAGE_TOKEN + "\n", "").replace("\n" + IMAGE_TOKEN, "").replace(IMAGE_TOKEN, "").strip()


def _image(row: dict, task, where: str, check_images: bool, decode: bool = False) -> Path | None:
    """The resolved ``image`` of ``row`` under ``task.image_root`` (a TaskSpec, TrainFile or EvalSet)."""
    if "image" not in row or row["image"] is None:
        return None
    path = resolve_image(task.image_root, row["image"], where=where)
    if decode:
        load_image(path, where=where)
    elif check_images and not path.is_file():
        raise DataError(f"{where}: image {path} does not exist")
    return path


def parse_train_row(
    row: dict,
    index: int,
    task: TaskSpec,
    *,
    check_images: bool = True,
    decode_images: bool = False,
    file: TrainFile | None = None,
) -> tuple[str, Path | None, list[tuple[str, str]]]:
    """Validate one LLaVA conversation row; returns ``(id, image, turns)`` or raises :class:`DataError`.

    ``check_images`` checks that the image exists; ``decode_images`` decodes it (slower, implies the check).
    ``file`` is the training file the row comes from (default: the task's first).
    """
    file = file if file is not None else task.train_files[0]
    where = f"{file.path} row {index}"
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: missing or empty 'conversations' list")
    if len(conv) % 2:
        raise DataError(f"{where}: 'conversations' has {len(conv)} messages; expected human/gpt pairs")
    turns = []
    for k, msg in enumerate(conv):
        want = "human" if k % 2 == 0 else "gpt"
        if not isinstance(msg, dict) or msg.get("from") != want or not isinstance(msg.get("value"), str):
            raise DataError(f"{where}: conversations[{k}] must be {{'from': '{want}', 'value': <string>}}")
    image = _image(row, file, where, check_images, decode_images)
    has_token = any(IMAGE_TOKEN in m["value"] for m in conv)
    if has_token and image is None:
        raise DataError(f"{where}: the text contains '<image>' but the row has no 'image' field")
    for k in range(0, len(conv), 2):
        turns.append((strip_image_token(conv[k]["value"]), conv[k + 1]["value"]))
    return str(row.get("id", index)), image, turns


def load_train(
    task: TaskSpec,
    *,
    instruction_type: str = "origin",
    seed: int = 0,
    skip_invalid: bool = False,
    check_images: bool = True,
    decode_images: bool = False,
) -> TrainSet:
    """Load a task's training conversations: every training file in order, each repeated as its ``repeat`` says.

    Args:
        instruction_type: ``origin`` | ``diverse`` | ``10type``: rewrites the Origin instruction at the end of each
            user turn (:func:`dymoe.data.templates.rewrite_prompt`; ``10type`` draws with ``random.Random(seed)``).
        skip_invalid: drop invalid rows (missing fields, escaping/missing image paths) instead of raising; they
            are listed in the returned ``TrainSet.skipped`` and counted in a logged warning.
        check_images: check that every image file exists.
        decode_images: also decode every image (slow on the full benchmark; ``verify-data`` does it once), so that
            undecodable images are reported here, or skipped with ``skip_invalid``.

    Raises:
        DataError: malformed JSON, or (without ``skip_invalid``) the first invalid row, naming file, row and reason.
    """
    itype = normalize_instruction_type(instruction_type, "load_train")
    rng = random.Random(seed)
    samples: list[TrainSample] = []
    skipped: list[SkippedRow] = []
    for file in task.train_files:
        n_skipped = len(skipped)
        rows = read_json_rows(file.path)
        file_samples: list[TrainSample] = []
        for i, row in enumerate(tqdm(rows, desc=f"{task.name} train", disable=None, leave=False)):
            try:
                sid, image, turns = parse_train_row(
                    row, i, task, check_images=check_images, decode_images=decode_images, file=file
                )
            except DataError as err:
                if not skip_invalid:
                    raise
                skipped.append(SkippedRow(i, str(row["id"]) if "id" in row else None, str(err)))
                continue
            turns = [(rewrite_prompt(u, task.name, itype, rng), a) for u, a in turns]
            file_samples.append(TrainSample(sid, image, turns, file.source))
        samples += apply_repeat(file_samples, file.repeat, seed)
        mine = skipped[n_skipped:]
        if mine:
            shown = ", ".join(str(s.index) for s in mine[:20]) + (" ..." if len(mine) > 20 else "")
            log.warning("%s: skipped %d invalid rows (rows %s)", file.path, len(mine), shown)
    return TrainSet(samples, skipped)


def apply_repeat(samples: list, repeat: float, seed: int) -> list:
    """InternVL's ``repeat_time``: ``k >= 1`` (an integer) repeats the list ``k`` times; a fraction in (0, 1) keeps
    ``int(len * repeat)`` samples drawn with ``random.Random(seed)`` (in their original order)."""
    if repeat >= 1:
        return list(samples) * int(repeat)
    keep = sorted(random.Random(seed).sample(range(len(samples)), int(len(samples) * repeat)))
    return [samples[i] for i in keep]


# ---------------------------------------------------------------------------------------------------------- test
SIDE_KEYS = {"sqa": "problems", "textvqa": "annotations", "gqa": "questions"}


def load_side_index(task: TaskSpec | EvalSet) -> dict[str, dict] | None:
    """``{question_id (str): side-file entry}`` for the scorer of a task (its first evaluation set) or of a
    ``coin``-format evaluation set, or ``None`` (fallback to inline answers)."""
    base = task.scorer.removesuffix("-strict")
    key = SIDE_KEYS.get(base)
    if key is None or key not in task.annotations:
        return None
    path = task.annotations[key]
    if not path.exists():  # a directory or an unreadable file is an error (read_json says which), not a fallback
        log.warning("%s: side file %s not found; scoring falls back to the test file's inline answers", task.name, path)
        return None
    data = read_json(path)
    if base == "textvqa":
        data = data.get("data") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise DataError(f"{path}: expected {{'data': [...]}} (TextVQA annotation format)")
        return {str(a.get("question_id")): a for a in data if isinstance(a, dict)}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object keyed by question id")
    return {str(k): v for k, v in data.items()}


# ground-truth fields of the peers' scorers when their sets are written in the coin format
_TRUTH_FIELDS = {"chart-table-rms": ("table",), "cider": ("captions",), "grounding-1000": ("bbox", "width", "height")}


def _check_truth(row: dict, scorer: str, where: str) -> None:
    base = scorer.removesuffix("-strict")
    if base in _TRUTH_FIELDS:
        missing = [k for k in _TRUTH_FIELDS[base] if k not in row]
    elif base == "grounding":
        missing = [k for k in ("answer_bbox", "size") if k not in row]
    elif base == "textvqa":
        missing = [] if ("answers" in row or "answer" in row) else ["answers"]
    else:
        missing = [] if "answer" in row else ["answer"]
    if missing:
        raise DataError(f"{where}: missing field {missing[0]!r} (needed by scorer {scorer!r})")


def parse_test_row(row: dict, index: int, eval_set: EvalSet | TaskSpec, side: dict[str, dict] | None, *,
                   check_images: bool = True) -> tuple[dict, Path | None]:
    """Validate one CoIN test row of ``eval_set`` (or of a task's first set); returns ``(reference, image)`` or
    raises :class:`DataError` naming file and row.

    Checks ``question_id`` (a string or an integer), ``text`` (a string), the side-file entry when a side file is
    loaded (else the inline ground truth the scorer needs) and the image path (``check_images``: it exists).
    """
    path = eval_set.path if isinstance(eval_set, EvalSet) else eval_set.test
    where = f"{path} row {index}"
    for key in ("question_id", "text"):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}")
    qid = row["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise DataError(f"{where}: 'question_id' must be a string or an integer, got {qid!r}")
    if not isinstance(row["text"], str):
        raise DataError(f"{where}: 'text' must be a string")
    ref = dict(row)
    if side is not None:
        entry = side.get(str(qid))
        if entry is None:
            raise DataError(f"{where}: question_id {qid!r} is not in the side file")
        ref["annotation"] = entry
    else:
        _check_truth(row, eval_set.scorer, where)
    return ref, _image(row, eval_set, where, check_images=check_images)


# scorers that align predictions with references by list position (CoIN's ImageNet script), for which a repeated
# question_id does no harm; every other scorer matches by question_id
_ALIGNED_BY_POSITION = {"imagenet"}


def duplicate_question_ids(rows: list[dict]) -> list[tuple[int, int, Any]]:
    """``(row, first row, question_id)`` for every row whose ``question_id`` repeats an earlier one (as strings:
    the scorers compare ``17`` and ``"17"`` as equal)."""
    first: dict[str, int] = {}
    out = []
    for i, row in enumerate(rows):
        if "question_id" not in row:
            continue
        key = str(row["question_id"])
        if key in first:
            out.append((i, first[key], row["question_id"]))
        else:
            first.setdefault(key, i)
    return out


def check_scorable(path: Path, samples: list[TestSample], scorer: str, annotations: dict | None) -> None:
    """Run ``scorer`` on empty answers to ``samples`` (of the test file ``path``): a reference the scorer cannot
    read (a missing or malformed field, an entry absent from a side file) raises :class:`DataError` naming the
    test file and question now, not after a task has trained. Repeated question ids are refused unless the
    scorer aligns by position. A scorer that fails on empty answers in another way is left to the real scoring."""
    if base_name(scorer) not in _ALIGNED_BY_POSITION or scorer.endswith("-strict"):
        dups = duplicate_question_ids([s.reference for s in samples])
        if dups:
            _, _, qid = dups[0]
            raise DataError(f"{path}: question_id {qid!r} appears more than once ({len(dups)} repeated ids); "
                            f"scorer {scorer!r} matches answers by question_id")
    fn = SCORERS.get(scorer)

    def score(subset: list[TestSample]) -> None:
        fn([{"question_id": s.question_id, "text": ""} for s in subset], [s.reference for s in subset], annotations)

    try:
        score(samples)
    except DataError as whole:
        for s in samples:  # name the first question the scorer cannot read
            try:
                score([s])
            except DataError as err:
                raise DataError(f"{path}: question_id {s.question_id!r}: scorer {scorer!r} cannot score it "
                                f"({err})") from None
            except Exception:  # noqa: BLE001 - see the docstring
                continue
        raise DataError(f"{path}: scorer {scorer!r} cannot score this test set ({whole})") from None
    except Exception:  # noqa: BLE001 - see the docstring
        return


def load_coin_test(
    task: TaskSpec, eval_set: EvalSet, *, instruction_type: str = "origin", seed: int = 0
) -> list[TestSample]:
    """CoIN test rows (format ``coin``).

    Raises :class:`DataError` naming the file and row for malformed JSON, a missing ``question_id``/``text``, a
    missing ground-truth field (when no side file provides it), an escaping or missing image path, or a question
    absent from a side file.
    """
    itype = normalize_instruction_type(instruction_type, "load_test")
    rng = random.Random(seed)
    side = load_side_index(eval_set)
    out = []
    for i, row in enumerate(read_json_rows(eval_set.path)):
        ref, image = parse_test_row(row, i, eval_set, side)
        prompt = rewrite_prompt(strip_image_token(row["text"]), task.name, itype, rng)
        out.append(TestSample(row["question_id"], image, prompt, ref))
    return out
