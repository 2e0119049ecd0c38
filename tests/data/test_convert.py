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
            "math-llava": math, "llava-med": med}


def test_converters_build_smoe3(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    sources = make_sources(tmp_path / "src")
    out = tmp_path / "data"
    for name, src in sources.items():
        assert main(["convert", name, "--src", str(src), "--out", str(out)]) == 0
    counts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {c["converter"]: c.get("train", c.get("qa_train")) for c in counts} == {
        "slake": 2, "vqa-rad": 4, "pathvqa": 4, "chartqa": 2, "math-llava": sum(not is_math_test(f"id{i}")
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
    assert len(load_train(chart)) == 2 + 2  # QA (human + augmented) + tables of train and val
    mt = load_test(math)
    assert {s.reference["dataset"] for s in mt} <= {"TabMWP", "GeoQA+", "IconQA"}  # ScienceQA is not a source
    preds = [{"question_id": s.question_id, "text": s.reference["answer"]} for s in mt]
    assert SCORERS.get("math")(preds, [s.reference for s in mt]).accuracy == 100.0


def test_convert_reports_a_wrong_source_folder(tmp_path, capsys):
    assert main(["convert", "slake", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "train.json: file not found" in capsys.readouterr().err
