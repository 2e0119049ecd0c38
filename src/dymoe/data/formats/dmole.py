"""The evaluation files of D-MoLE's official data layout (gcd19/D-MoLE, ``data/`` + ``eval/``), read as its
evaluation scripts read them, with the prompts they build.

* ``dmole-vqa`` (``eval/vqa/evaluate_vqa.py``; VizWiz-VQA, OCR-VQA, KVQA): JSONL rows ``{question_id, image,
  question, answer}``; prompt ``question + " " + prompt`` with the default prompt "Answer the question using a single
  word or phrase." (VizWiz-VQA's YAML entry prepends "When the provided information is insufficient, respond with
  'Unanswerable'. "). Side file ``annotations`` (VQA-style ``{"annotations": [{"question_id", "answers":
  [{"answer"}]}]}``): its answers are merged into the reference as ``answers`` (what ``vqa-soft`` reads).
* ``dmole-choice`` (``eval/vqa/evaluate_multi_choice.py``; IconQA, PMC-VQA): JSONL rows ``{image, question,
  choices, answer (index)}``; prompt ``question + "\\n" + "A. c1\\nB. c2..." + "\\n" + prompt`` with the default
  "Answer with the option's letter from the given choices directly."; the reference holds the gold letter and
  ``options``. The rows have no id: ``question_id`` is the row index.
* ``dmole-grounding`` (``eval/refcoco/evaluate_grounding.py``; SK-VG): JSONL rows ``{image, sent, knowledge?, bbox,
  width, height}``; prompt "Please provide the bounding box coordinate of the region this sentence describes:
  <ref>{sent}</ref>", preceded by "Based on the knowledge {knowledge}.\\n" when the row has knowledge (a custom
  ``prompt`` is a template with ``{sent}`` and ``{knowledge}``). ``question_id`` is the row index.
* ``coco-caption`` (``eval/caption/evaluate_caption.py``; VizWiz-Cap, TextCaps, Flickr30k): a COCO caption file
  ``{"images": [{id, file_name | image}], "annotations": [{image_id, caption}]}``; one sample per image, prompt
  "Provide a one-sentence caption for the provided image.", reference ``captions`` = all of the image's captions.

Image paths are resolved under the set's ``image_root`` and must stay inside it.
"""

from __future__ import annotations

from typing import Any

from dymoe.data.formats.base import EvalFormat
from dymoe.errors import DataError

VQA_PROMPT = "Answer the question using a single word or phrase."
CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{sent}</ref>"
KNOWLEDGE_PREFIX = "Based on the knowledge {knowledge}.\n"
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
LETTERS = ("A", "B", "C", "D", "E")


def _need(row: dict, key: str, where: str) -> Any:
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    return row[key]


def _text(row: dict, key: str, where: str) -> str:
    value = _need(row, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _sample(qid, image_rel, eval_set, where: str, prompt: str, reference: dict):
    from dymoe.data.coin import TestSample, _image

    image = _image({"image": image_rel}, eval_set, where, check_images=True)
    return TestSample(qid, image, prompt, {"question_id": qid, **reference})


def _rows(eval_set) -> list[dict]:
    from dymoe.data.coin import read_json_rows

    return read_json_rows(eval_set.path)


class DmoleVqaFormat(EvalFormat):
    """Open VQA rows; see the module docstring."""

    def rows(self, task, eval_set) -> list[dict]:
        rows = _rows(eval_set)
        if "annotations" not in eval_set.annotations:
            return rows
        from dymoe.eval.scorers import read_json

        path = eval_set.annotations["annotations"]
        data = read_json(path)
        items = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise DataError(f"{path}: expected {{'annotations': [{{'question_id', 'answers'}}, ...]}}")
        answers = {}
        for k, item in enumerate(items):
            if not isinstance(item, dict) or "question_id" not in item or not isinstance(item.get("answers"), list):
                raise DataError(f"{path} annotation {k}: expected {{'question_id', 'answers': [...]}}")
            answers[str(item["question_id"])] = [a["answer"] if isinstance(a, dict) else a for a in item["answers"]]
        out = []
        for i, row in enumerate(rows):
            qid = str(row.get("question_id"))
            if qid not in answers:
                raise DataError(f"{eval_set.path} row {i}: question_id {row.get('question_id')!r} is not in {path}")
            out.append({**row, "answers": answers[qid]})
        return out

    def sample(self, row, index, task, eval_set, ctx):
        where = f"{eval_set.path} row {index}"
        qid = _need(row, "question_id", where)
        question = _text(row, "question", where)
        if "answer" not in row and "answers" not in row:
            raise DataError(f"{where}: missing field 'answer' (needed by scorer {eval_set.scorer!r})")
        prompt = question + " " + (eval_set.prompt if eval_set.prompt is not None else VQA_PROMPT)
        ref = {k: row[k] for k in ("answer", "answers") if k in row}
        return _sample(qid, _need(row, "image", where), eval_set, where, prompt, ref)


class DmoleChoiceFormat(EvalFormat):
    """Multiple-choice rows; see the module docstring."""

    def rows(self, task, eval_set) -> list[dict]:
        return _rows(eval_set)

    def sample(self, row, index, task, eval_set, ctx):
        where = f"{eval_set.path} row {index}"
        question = _text(row, "question", where)
        choices = _need(row, "choices", where)
        if not isinstance(choices, list) or not 1 <= len(choices) <= len(LETTERS):
            raise DataError(f"{where}: 'choices' must be a list of 1 to {len(LETTERS)} options")
        answer = _need(row, "answer", where)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(f"{where}: 'answer' must be the index of a choice, got {answer!r}")
        options = {LETTERS[i]: str(c) for i, c in enumerate(choices)}
        body = "\n".join(f"{k}. {v}" for k, v in options.items())
        prompt = question + "\n" + body + "\n" + (eval_set.prompt if eval_set.prompt is not None else CHOICE_PROMPT)
        ref = {"answer": LETTERS[answer], "options": options}
        return _sample(row.get("question_id", index), _need(row, "image", where), eval_set, where, prompt, ref)


class DmoleGroundingFormat(EvalFormat):
    """Grounding rows; see the module docstring."""

    def rows(self, task, eval_set) -> list[dict]:
        return _rows(eval_set)

    def sample(self, row, index, task, eval_set, ctx):
        where = f"{eval_set.path} row {index}"
        sent = _text(row, "sent", where)
        box = _need(row, "bbox", where)
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise DataError(f"{where}: 'bbox' must be [x1, y1, x2, y2] in pixels, got {box!r}")
        width, height = _need(row, "width", where), _need(row, "height", where)
        knowledge = row.get("knowledge")
        if eval_set.prompt is not None:
            prompt = eval_set.prompt.format(sent=sent, knowledge=knowledge or "")
        else:
            prompt = (KNOWLEDGE_PREFIX.format(knowledge=knowledge) if knowledge else "") + GROUNDING_PROMPT.format(
                sent=sent)
        ref = {"bbox": box, "width": width, "height": height}
        return _sample(row.get("question_id", index), _need(row, "image", where), eval_set, where, prompt, ref)


class CocoCaptionFormat(EvalFormat):
    """COCO caption files; see the module docstring."""

    def rows(self, task, eval_set) -> list[dict]:
        from dymoe.eval.scorers import read_json

        data = read_json(eval_set.path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise DataError(f"{eval_set.path}: expected a COCO caption file {{'images': [...], 'annotations': [...]}}")
        captions: dict[str, list[str]] = {}
        for k, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
                raise DataError(f"{eval_set.path} annotation {k}: expected {{'image_id', 'caption': str}}")
            captions.setdefault(str(ann["image_id"]), []).append(ann["caption"])
        out = []
        for img in data["images"]:
            row = dict(img) if isinstance(img, dict) else {"_bad": img}
            row["captions"] = captions.get(str(row.get("id")), [])
            out.append(row)
        return out

    def sample(self, row, index, task, eval_set, ctx):
        where = f"{eval_set.path} image {index}"
        qid = _need(row, "id", where)
        rel = row.get("file_name", row.get("image"))
        if rel is None:
            raise DataError(f"{where}: missing field 'file_name' (or 'image')")
        if not row["captions"]:
            raise DataError(f"{where}: image id {qid!r} has no caption in 'annotations'")
        prompt = eval_set.prompt if eval_set.prompt is not None else CAPTION_PROMPT
        return _sample(qid, rel, eval_set, where, prompt, {"captions": row["captions"]})
