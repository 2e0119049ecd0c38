"""Converters for SMoE's Medicine → Chart → Math domains (smoe-dsal.md §6) from the public releases on disk.

Each ``convert_*(src, out) -> dict`` writes into ``out/<domain>/`` and returns the row counts. Prompts follow the
LLaVA-1.5 evaluation hints (smoe-dsal.md §6 [P]): short-answer VQA "Answer the question using a single word or
phrase."; chart-to-table "Convert the chart to a data table."; math keeps the source instruction.

* ``slake``: SLAKE 1.0 (``train.json``, ``validate.json``, ``test.json``, ``imgs/``), English and Chinese questions;
  train = train + validate, test = test; ``answer_type`` CLOSED/OPEN kept.
* ``vqa-rad`` / ``pathvqa``: the Hugging Face releases (flaviagiammarino/vqa-rad, /path-vqa: ``data/*.parquet``
  with ``image`` {bytes}, ``question``, ``answer``; needs ``pyarrow``); train = train (+ validation), test = test;
  images written once per distinct content.
* ``llava-med``: LLaVA-Med's instruct conversations (``llava_med_instruct_*.json`` + ``images/``), training only;
  rows whose image is missing are skipped and counted.
* ``chartqa``: ChartQA (``{train,val,test}/{split}_{human,augmented}.json``, ``png/``, ``tables/*.csv``): QA train =
  train, test = test; chart-to-table train = train + val charts, test = test charts, the gold table linearised as
  DePlot does (cells joined by " | ", rows by newlines).
* ``chart-to-text``: the Chart-to-Text release (vis-nlp/Chart-to-text: ``pew_dataset/dataset`` and, if present,
  ``statista_dataset/dataset``, each with ``dataset_split/{train,val,test}_index_mapping.csv``, ``imgs/``,
  ``captions/`` and the same folders under ``multiColumn/``): train = Pew train + val (7,892) + Statista train
  (24,368), test = Pew test (1,393), smoe-dsal.md §6 ("BLEU4 on Pew only"); the reference is the chart's caption.
* ``math-llava``: MathV360K (``train_samples_all_tuning.json`` + ``data_images/``) restricted to SMoE's seven sources
  (the first path component of ``image``), re-split deterministically ~92 / 8 by a hash of the row id (smoe-dsal.md
  §6 [I]); the test answer is the final answer of the reference response.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

from dymoe.errors import DataError

SHORT = "Answer the question using a single word or phrase."
TABLE = "Convert the chart to a data table."
# [P] the paper's instruction for Chart-to-Text is not given (its Fig. 3 is missing): a plain summary request
SUMMARY = "Write a short summary of the chart."
MATH_SOURCES = ("IconQA", "CLEVR-Math", "TabMWP", "Geometry3K", "GeoQA+", "UniGeo", "GEOS")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (is --src the dataset's release folder?)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=0), encoding="utf-8")
    os.replace(tmp, path)


def _place(src: Path, dst: Path) -> None:
    """Hard-link (else copy) one image into the output tree."""
    if dst.exists():
        return
    if not src.is_file():
        raise DataError(f"{src}: image not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _train_row(rid: str, image: str, question: str, answer: str) -> dict:
    return {"id": rid, "image": image, "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


def _test_row(qid: str, image: str, prompt: str, answer, **extra) -> dict:
    return {"question_id": qid, "image": image, "text": prompt, "answer": answer, **extra}


# ------------------------------------------------------------------------------------------------------ medicine
def convert_slake(src: Path, out: Path) -> dict:
    src, dom = Path(src), Path(out) / "medicine"
    splits = {"train": ["train.json", "validate.json"], "test": ["test.json"]}
    counts = {}
    for split, files in splits.items():
        rows = []
        for name in files:
            for k, r in enumerate(_read_json(src / name)):
                where = f"{src / name} row {k}"
                for key in ("img_name", "question", "answer", "qid"):
                    if key not in r:
                        raise DataError(f"{where}: missing field {key!r}")
                image = f"images/slake/{r['img_name']}"
                _place(src / "imgs" / r["img_name"], dom / image)
                q, a = str(r["question"]).strip(), str(r["answer"]).strip()
                if split == "train":
                    rows.append(_train_row(f"slake-{r['qid']}", image, f"{q}\n{SHORT}", a))
                else:
                    rows.append(_test_row(f"slake-{r['qid']}", image, f"{q}\n{SHORT}", a,
                                          answer_type=str(r.get("answer_type", "OPEN")).upper(),
                                          lang=r.get("q_lang")))
        _write(dom / f"slake_{split}.json", rows)
        counts[split] = len(rows)
    return counts


def convert_hf_medvqa(src: Path, out: Path, name: str) -> dict:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading the Hugging Face parquet files needs pyarrow: pip install 'dymoe[convert]'") from None
    from PIL import Image

    src, dom = Path(src), Path(out) / "medicine"
    files = sorted((src / "data").glob("*.parquet")) or sorted(src.glob("*.parquet"))
    if not files:
        raise DataError(f"{src}: no parquet files in data/ (expected the Hugging Face release layout)")
    counts = {}
    for split in ("train", "test"):
        prefixes = ("train", "validation") if split == "train" else ("test",)
        rows = []
        for f in [f for f in files if f.name.split("-")[0] in prefixes]:
            table = pq.read_table(f).to_pylist()
            for k, r in enumerate(table):
                where = f"{f} row {k}"
                img = r.get("image") or {}
                data = img.get("bytes") if isinstance(img, dict) else None
                if not data or "question" not in r or "answer" not in r:
                    raise DataError(f"{where}: expected columns image (with bytes), question, answer")
                digest = hashlib.sha1(data).hexdigest()[:16]
                with Image.open(io.BytesIO(data)) as im:
                    ext = {"JPEG": "jpg", "PNG": "png"}.get(im.format or "", "img")
                image = f"images/{name}/{digest}.{ext}"
                if not (dom / image).exists():
                    (dom / image).parent.mkdir(parents=True, exist_ok=True)
                    (dom / image).write_bytes(data)
                q, a = str(r["question"]).strip(), str(r["answer"]).strip()
                rid = f"{name}-{f.name.split('-')[0]}-{k}"
                rows.append(_train_row(rid, image, f"{q}\n{SHORT}", a) if split == "train"
                            else _test_row(rid, image, f"{q}\n{SHORT}", a))
        _write(dom / f"{name}_{split}.json", rows)
        counts[split] = len(rows)
    return counts


def convert_llava_med(src: Path, out: Path) -> dict:
    src, dom = Path(src), Path(out) / "medicine"
    files = sorted(src.glob("llava_med_instruct*.json"))
    if not files:
        raise DataError(f"{src}: no llava_med_instruct*.json")
    rows, missing = [], 0
    for f in files:
        for k, r in enumerate(_read_json(f)):
            if "image" not in r or "conversations" not in r:
                raise DataError(f"{f} row {k}: expected 'image' and 'conversations'")
            if not (src / "images" / r["image"]).is_file():
                missing += 1
                continue
            image = f"images/llava_med/{r['image']}"
            _place(src / "images" / r["image"], dom / image)
            rows.append({"id": f"llava-med-{r.get('id', k)}", "image": image, "conversations": r["conversations"]})
    _write(dom / "llava_med_train.json", rows)
    return {"train": len(rows), "skipped_missing_image": missing}


# --------------------------------------------------------------------------------------------------------- chart
def linearise_table(csv_path: Path) -> str:
    """A chart's CSV as DePlot's table text: cells joined by " | ", rows by newlines."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        return "\n".join(" | ".join(cell.strip() for cell in row) for row in csv.reader(f) if row)


def convert_chartqa(src: Path, out: Path) -> dict:
    src, dom = Path(src), Path(out) / "chart"
    counts = {}
    for split in ("train", "test"):
        rows = []
        for kind in ("human", "augmented"):
            path = src / split / f"{split}_{kind}.json"
            for k, r in enumerate(_read_json(path)):
                for key in ("imgname", "query", "label"):
                    if key not in r:
                        raise DataError(f"{path} row {k}: missing field {key!r}")
                image = f"images/chartqa/{split}/{r['imgname']}"
                _place(src / split / "png" / r["imgname"], dom / image)
                rid, q, a = f"chartqa-{split}-{kind}-{k}", str(r["query"]).strip(), str(r["label"]).strip()
                rows.append(_train_row(rid, image, f"{q}\n{SHORT}", a) if split == "train"
                            else _test_row(rid, image, f"{q}\n{SHORT}", a))
        _write(dom / f"chartqa_{split}.json", rows)
        counts[f"qa_{split}"] = len(rows)
    for split, parts in (("train", ("train", "val")), ("test", ("test",))):
        rows = []
        for part in parts:
            for csv_path in sorted((src / part / "tables").glob("*.csv")):
                png = csv_path.with_suffix(".png").name
                image = f"images/chartqa/{part}/{png}"
                _place(src / part / "png" / png, dom / image)
                table = linearise_table(csv_path)
                rid = f"chart2table-{part}-{csv_path.stem}"
                rows.append(_train_row(rid, image, TABLE, table) if split == "train"
                            else {"question_id": rid, "image": image, "text": TABLE, "table": table})
        _write(dom / f"chart2table_{split}.json", rows)
        counts[f"table_{split}"] = len(rows)
    return counts


def _split_files(root: Path, split: str) -> list[str]:
    """The chart files listed by ``dataset_split/<split>_index_mapping.csv`` (``two_col-12.txt``, ``multi_col-3.txt``):
    the first column of every row naming a chart, as TinyChart's preprocessing reads it (a header row is skipped)."""
    path = root / "dataset_split" / f"{split}_index_mapping.csv"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r[0].strip() for r in csv.reader(f) if r and r[0].strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (is --src the Chart-to-text release folder?)") from None
    files = [r for r in rows if r.startswith(("two_col-", "multi_col-"))]
    if rows and not files:
        raise DataError(f"{path}: no row names a chart (expected a first column like two_col-12.txt)")
    return files


def _chart_paths(root: Path, file_no: str, where: str) -> tuple[Path, Path, str]:
    """(image, caption, relative name) of one chart: ``two_col-N`` lives in the root's ``imgs/``, ``captions/``;
    ``multi_col-N`` in ``multiColumn/imgs/``, ``multiColumn/captions/``."""
    stem = file_no.removesuffix(".txt")
    kind, _, number = stem.partition("-")
    if kind not in ("two_col", "multi_col") or not number:
        raise DataError(f"{where}: unexpected chart file {file_no!r} (expected two_col-N.txt or multi_col-N.txt)")
    base = root if kind == "two_col" else root / "multiColumn"
    return base / "imgs" / f"{number}.png", base / "captions" / f"{number}.txt", f"{kind}/{number}.png"


def convert_chart_to_text(src: Path, out: Path) -> dict:
    src, dom = Path(src), Path(out) / "chart"
    datasets = {"pew": src / "pew_dataset" / "dataset", "statista": src / "statista_dataset" / "dataset"}
    if not datasets["pew"].is_dir():
        raise DataError(f"{datasets['pew']}: not found (--src must be the Chart-to-text release folder)")
    parts = {"train": [("pew", "train"), ("pew", "val"), ("statista", "train")], "test": [("pew", "test")]}
    counts = {}
    for split, wanted in parts.items():
        rows = []
        for name, part in wanted:
            root = datasets[name]
            if name == "statista" and not root.is_dir():
                counts["statista"] = "absent"
                continue
            for file_no in _split_files(root, part):
                where = f"{root / 'dataset_split' / f'{part}_index_mapping.csv'} ({file_no})"
                img, cap, rel = _chart_paths(root, file_no, where)
                if not cap.is_file():
                    raise DataError(f"{where}: caption {cap} not found")
                caption = " ".join(cap.read_text(encoding="utf-8").split())
                image = f"images/chart2text/{name}/{rel}"
                _place(img, dom / image)
                rid = f"chart2text-{name}-{part}-{file_no.removesuffix('.txt')}"
                rows.append(_train_row(rid, image, SUMMARY, caption) if split == "train"
                            else _test_row(rid, image, SUMMARY, caption))
        _write(dom / f"chart2text_{split}.json", rows)
        counts[split] = len(rows)
    return counts


# ---------------------------------------------------------------------------------------------------------- math
def is_math_test(row_id: str) -> bool:
    """The deterministic ~8 % test split: sha1 of the id, first byte < 20 (20 / 256 = 7.8 %)."""
    return hashlib.sha1(row_id.encode("utf-8")).digest()[0] < 20


def convert_math_llava(src: Path, out: Path) -> dict:
    from dymoe.eval.scorers.mathqa import extract_answer

    src, dom = Path(src), Path(out) / "math"
    path = src / "train_samples_all_tuning.json"
    train, test, per = [], [], {}
    for k, r in enumerate(_read_json(path)):
        image = r.get("image")
        conv = r.get("conversations")
        if not isinstance(image, str) or not isinstance(conv, list) or len(conv) < 2:
            raise DataError(f"{path} row {k}: expected 'image' and a 'conversations' list")
        source = image.split("/")[0]
        if source not in MATH_SOURCES:
            continue
        rid = str(r.get("id", k))
        rel = f"images/{image}"
        _place(src / "data_images" / image, dom / rel)
        row = {"id": f"math-{rid}", "image": rel, "conversations": conv, "source": source}
        if is_math_test(rid):
            prompt = str(conv[0]["value"]).replace("<image>\n", "").replace("<image>", "").strip()
            test.append(_test_row(f"math-{rid}", rel, prompt, extract_answer(str(conv[-1]["value"])),
                                  dataset=source))
        else:
            train.append(row)
        per[source] = per.get(source, 0) + 1
    _write(dom / "math_train.json", train)
    _write(dom / "math_test.json", test)
    return {"train": len(train), "test": len(test), **{f"rows/{k}": v for k, v in sorted(per.items())}}
