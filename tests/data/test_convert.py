"""The SMoE converters on miniatures of the public releases (original layouts), end to end into smoe3.yaml."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from dymoe.cli.main import main
from dymoe.data.coin import load_train
from dymoe.data.convert.smoe import is_math_test
from dymoe.data.formats import load_eval_set, load_test
from dymoe.data.tasks import load_benchmark
from dymoe.data.verify import verify_benchmark
from dymoe.eval.scorers import SCORERS

REPO = Path(__file__).resolve().parents[2]
SMOE = REPO / "configs" / "benchmarks" / "smoe3.yaml"


def _png(path: Path, color=(200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), color).save(path)


def _png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), color).save(buf, format="PNG")
    return buf.getvalue()


def make_sources(root: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    slake = root / "Slake1.0"
    for split, rows in {"train": [("a.jpg", "Is this a CT?", "Yes", "CLOSED")],
                        "validate": [("a.jpg", "Which organ?", "Liver", "OPEN")],
                        "test": [("b.jpg", "Is it normal?", "No", "CLOSED"), ("b.jpg", "Where?", "Left Lung", "OPEN")]}.items():
        (slake / f"{split}.json").parent.mkdir(parents=True, exist_ok=True)
        (slake / f"{split}.json").write_text(json.dumps([
            {"qid": f"{split}{i}", "img_name": f"xmlab{i}/{img}", "question": q, "answer": a, "answer_type": t,
             "q_lang": "en"} for i, (img, q, a, t) in enumerate(rows)]))
        for i, (img, *_rest) in enumerate(rows):
            _png(slake / "imgs" / f"xmlab{i}" / img)
    for name in ("vqa-rad", "path-vqa"):
        for split, n in (("train", 3), ("validation", 1), ("test", 2)):
            (root / name / "data").mkdir(parents=True, exist_ok=True)
            table = pa.table({"image": [{"bytes": _png_bytes((i, 0, 0)), "path": None} for i in range(n)],
                              "question": [f"q{i}?" for i in range(n)], "answer": ["yes"] * n})
            pq.write_table(table, root / name / "data" / f"{split}-00000-of-00001.parquet")
    chart = root / "ChartQA Dataset"
    for split in ("train", "val", "test"):
        for kind in ("human", "augmented"):
            (chart / split).mkdir(parents=True, exist_ok=True)
            (chart / split / f"{split}_{kind}.json").write_text(json.dumps(
                [{"imgname": "c1.png", "query": "What is the value for USA?", "label": "10"}]))
        _png(chart / split / "png" / "c1.png")
        (chart / split / "tables").mkdir(parents=True, exist_ok=True)
        (chart / split / "tables" / "c1.csv").write_text("Country,Value\nUSA,10\nUK,20\n")
    c2t = root / "Chart-to-text"
    splits = {"pew": {"train": ["two_col-1.txt", "multi_col-1.txt"], "val": ["two_col-2.txt"],
                      "test": ["multi_col-2.txt", "two_col-3.txt"]},
              "statista": {"train": ["two_col-7.txt"], "val": ["two_col-8.txt"], "test": ["two_col-9.txt"]}}
    for name, parts in splits.items():
        ds = c2t / f"{name}_dataset" / "dataset"
        for part, files in parts.items():
            (ds / "dataset_split").mkdir(parents=True, exist_ok=True)
            (ds / "dataset_split" / f"{part}_index_mapping.csv").write_text("File_No\n" + "\n".join(files) + "\n")
            for f in files:
                kind, n = f.removesuffix(".txt").split("-")
                base = ds if kind == "two_col" else ds / "multiColumn"
                _png(base / "imgs" / f"{n}.png")
                (base / "captions").mkdir(parents=True, exist_ok=True)
                (base / "captions" / f"{n}.txt").write_text(f"The {name} {kind} chart {n} shows\n a rise in 2019. ")
    math = root / "MathV360K"
    rows = []
    for i in range(40):
        src = ["TabMWP", "GeoQA+", "IconQA", "ScienceQA"][i % 4]
        rows.append({"id": f"id{i}", "image": f"{src}/images/{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is {i} + 1?"}, {"from": "gpt", "value": f"The answer is {i + 1}."}]})
        _png(math / "data_images" / src / "images" / f"{i}.png")
    math.mkdir(parents=True, exist_ok=True)
    (math / "train_samples_all_tuning.json").write_text(json.dumps(rows))
    med = root / "LLaVA-Med"
    med.mkdir(parents=True, exist_ok=True)
    (med / "llava_med_instruct_60k.json").write_text(json.dumps([
        {"id": "p1", "image": "PMC1_f1.jpg", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                               {"from": "gpt", "value": "A CT scan."}]},
        {"id": "p2", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>\nX"},
                                                               {"from": "gpt", "value": "Y"}]}]))
    _png(med / "images" / "PMC1_f1.jpg")
    return {"slake": slake, "vqa-rad": root / "vqa-rad", "pathvqa": root / "path-vqa", "chartqa": chart,
            "chart-to-text": c2t, "math-llava": math, "llava-med": med}


def test_converters_build_smoe3(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    sources = make_sources(tmp_path / "src")
    out = tmp_path / "data"
    for name, src in sources.items():
        assert main(["convert", name, "--src", str(src), "--out", str(out)]) == 0
    counts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {c["converter"]: c.get("train", c.get("qa_train")) for c in counts} == {
        "slake": 2, "vqa-rad": 4, "pathvqa": 4, "chartqa": 2, "chart-to-text": 4, "math-llava": sum(not is_math_test(f"id{i}")
                                                                                for i in range(40) if i % 4 != 3),
        "llava-med": 1}
    assert counts[-1]["skipped_missing_image"] == 1
    bench = load_benchmark(SMOE, data_root=out)
    assert verify_benchmark(bench) == []
    med, chart, math = bench.tasks
    assert [s.source for s in load_train(med)] == ["VQA-RAD"] * 4 + ["PathVQA"] * 4 + ["SLAKE"] * 2 + ["LLaVA-Med"]
    slake = load_eval_set(med, med.eval_set("SLAKE"))
    assert [s.reference["answer_type"] for s in slake] == ["CLOSED", "OPEN"]
    res = SCORERS.get("medvqa")([{"question_id": s.question_id, "text": t} for s, t in zip(slake, ["No", "left lung"])],
                                [s.reference for s in slake])
    assert res.metrics == {"closed_accuracy": 100.0, "open_recall": 100.0}
    table = load_eval_set(chart, chart.eval_set("Chart-to-Table"))
    assert table[0].reference["table"] == "Country | Value\nUSA | 10\nUK | 20"
    # QA (human + augmented) + tables of train and val + summaries of Pew train, Pew val and Statista train
    assert [s.source for s in load_train(chart)] == ["ChartQA"] * 2 + ["Chart-to-Table"] * 2 + ["Chart-to-Text"] * 4
    c2t = load_eval_set(chart, chart.eval_set("Chart-to-Text"))  # Pew's test split only (BLEU-4 on Pew)
    assert [s.question_id for s in c2t] == ["chart2text-pew-test-multi_col-2", "chart2text-pew-test-two_col-3"]
    assert c2t[0].reference["answer"] == "The pew multi_col chart 2 shows a rise in 2019."
    assert c2t[0].image.name == "2.png" and c2t[0].image.parent.name == "multi_col"
    res = SCORERS.get("bleu4")([{"question_id": s.question_id, "text": s.reference["answer"].upper()} for s in c2t],
                               [s.reference for s in c2t])
    assert res.accuracy == pytest.approx(100.0)  # lower-cased corpus BLEU
    mt = load_test(math)
    assert {s.reference["dataset"] for s in mt} <= {"TabMWP", "GeoQA+", "IconQA"}  # ScienceQA is not a source
    preds = [{"question_id": s.question_id, "text": s.reference["answer"]} for s in mt]
    assert SCORERS.get("math")(preds, [s.reference for s in mt]).accuracy == 100.0


def test_chart_to_text_without_statista_and_with_a_missing_caption(tmp_path, capsys):
    src = make_sources(tmp_path / "src")["chart-to-text"]
    import shutil

    shutil.rmtree(src / "statista_dataset")
    assert main(["convert", "chart-to-text", "--src", str(src), "--out", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out) == {"converter": "chart-to-text", "out": str(tmp_path / "o"),
                                                   "train": 3, "statista": "absent", "test": 2}
    (src / "pew_dataset" / "dataset" / "captions" / "3.txt").unlink()
    assert main(["convert", "chart-to-text", "--src", str(src), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "test_index_mapping.csv (two_col-3.txt): caption" in err and "3.txt not found" in err


def test_convert_reports_a_wrong_source_folder(tmp_path, capsys):
    assert main(["convert", "slake", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "train.json: file not found" in capsys.readouterr().err
