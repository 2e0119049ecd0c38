"""The peers' benchmark files: dmole9.yaml on a miniature of D-MoLE's official data layout (every format, prompt,
repeat and epoch setting), the general task schema, and verify-data on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dymoe.data.coin import load_train
from dymoe.data.formats import load_eval_set, load_test
from dymoe.data.tasks import TaskSpec, load_benchmark
from dymoe.data.verify import verify_benchmark
from dymoe.errors import ConfigError
from dymoe.eval.scorers import SCORERS

REPO = Path(__file__).resolve().parents[2]
DMOLE = REPO / "configs" / "benchmarks" / "dmole9.yaml"


def _img(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path)
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _conv(img: str, q: str, a: str) -> dict:
    return {"id": q, "image": img, "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                      {"from": "gpt", "value": a}]}


def make_dmole_layout(root: Path) -> None:
    """One or two rows per file, in the paths of gcd19/D-MoLE's shell/dmole/*.json and eval scripts."""
    def rel(p):
        return str(p.relative_to(root))

    for task, train in [("vizwiz-caption", "train.jsonl"), ("sk-vg", "train.jsonl"), ("textcaps", "train.jsonl"),
                        ("iconqa", "multi_text_choice_train.jsonl"), ("ocrvqa", "train.jsonl"),
                        ("flickr30k", "train.jsonl"), ("vizwiz", "train.jsonl"), ("kvqa", "train.jsonl"),
                        ("pmcvqa", "train.jsonl")]:
        img = rel(Path(_img(root / "data" / task / "train_img" / "1.jpg")))
        _jsonl(root / "data" / task / train, [_conv(img, f"{task} q1", "a1"), _conv(img, f"{task} q2", "a2")])
    # captions (COCO files; images relative to the set's own root)
    for task, name, img_dir in [("vizwiz-caption", "val.json", "images/val"), ("textcaps", "val.json", "images"),
                                ("flickr30k", "flickr30k_test_karpathy.json", "")]:
        _img(root / "data" / task / img_dir / "c1.jpg")
        key = "image" if task == "flickr30k" else "file_name"
        (root / "data" / task / name).write_text(json.dumps({
            "images": [{"id": 7, key: "c1.jpg"}],
            "annotations": [{"image_id": 7, "caption": "A red car."}, {"image_id": 7, "caption": "A car parked."}]}))
    img = rel(Path(_img(root / "data" / "eval_img" / "e.jpg")))
    _jsonl(root / "data/sk-vg/test.jsonl", [{"image": img, "sent": "the dog", "knowledge": "Dogs bark",
                                             "bbox": [1, 1, 4, 4], "width": 8, "height": 6}])
    for f in ("data/iconqa/multi_text_choice_test.jsonl", "data/pmcvqa/test_clean.jsonl"):
        _jsonl(root / f, [{"image": img, "question": "Which?", "choices": ["cat", "dog"], "answer": 1}])
    _jsonl(root / "data/ocrvqa/ocrvqa_val.jsonl", [{"question_id": 3, "image": img, "question": "Title?",
                                                    "answer": "Dune"}])
    _jsonl(root / "data/kvqa/test.jsonl", [{"question_id": 4, "image": img, "question": "Who?", "answer": ["Ada"]}])
    _jsonl(root / "data/vizwiz/vizwiz_val.jsonl", [{"question_id": 5, "image": img, "question": "What?"}])
    (root / "data/vizwiz/vizwiz_val_annotations.json").write_text(json.dumps(
        {"annotations": [{"question_id": 5, "answers": [{"answer": "milk"}] * 7 + [{"answer": "tea"}] * 3}]}))


def test_dmole9_reads_the_official_layout(tmp_path):
    make_dmole_layout(tmp_path)
    bench = load_benchmark(DMOLE, data_root=tmp_path)
    assert [t.name for t in bench.tasks] == ["VizWiz-Cap", "SK-VG", "TextCaps", "IconQA", "OCR-VQA", "Flickr30k",
                                             "VizWiz-VQA", "KVQA", "PMC-VQA"]
    assert [t.epochs for t in bench.tasks] == [None, 5, None, None, None, None, 5, None, None]
    assert verify_benchmark(bench) == []
    # IconQA: repeat_time 5 -> 10 samples from 2 rows
    assert len(load_train(bench.task("IconQA"))) == 10 and len(load_train(bench.task("KVQA"))) == 2
    by = {t.name: load_test(t) for t in bench.tasks}
    assert by["VizWiz-Cap"][0].prompt == "Provide a one-sentence caption for the provided image."
    assert by["VizWiz-Cap"][0].reference["captions"] == ["A red car.", "A car parked."]
    assert by["SK-VG"][0].prompt == ("Based on the knowledge Dogs bark.\nPlease provide the bounding box coordinate "
                                     "of the region this sentence describes: <ref>the dog</ref>")
    assert by["IconQA"][0].prompt == ("Which?\nA. cat\nB. dog\nAnswer with the option's letter from the given "
                                      "choices directly.")
    assert by["OCR-VQA"][0].prompt == "Title? Answer the question using a single word or phrase."
    assert by["VizWiz-VQA"][0].prompt.startswith("What? When the provided information is insufficient")
    assert by["VizWiz-VQA"][0].reference["answers"] == ["milk"] * 7 + ["tea"] * 3
    # each set's references feed its scorer
    t = bench.task("VizWiz-VQA")
    res = SCORERS.get(t.scorer)([{"question_id": 5, "text": "Milk"}], [s.reference for s in by["VizWiz-VQA"]])
    assert res.accuracy == pytest.approx(100.0)
    res = SCORERS.get("choice-letter")([{"question_id": 0, "text": "B"}], [s.reference for s in by["PMC-VQA"]])
    assert res.accuracy == 100.0
    res = SCORERS.get("grounding-1000")([{"question_id": 0, "text": "[125, 167, 500, 667]"}],
                                        [s.reference for s in by["SK-VG"]])
    assert res.accuracy == 100.0  # (1, 1, 4, 4) on an 8 x 6 image


def test_verify_data_lists_problems_of_peer_sets(tmp_path):
    make_dmole_layout(tmp_path)
    (tmp_path / "data/vizwiz/vizwiz_val_annotations.json").unlink()
    _jsonl(tmp_path / "data/kvqa/test.jsonl", [{"question_id": 4, "image": "../outside.jpg", "question": "Who?",
                                                "answer": "Ada"}, {"question_id": 5, "image": "data/eval_img/e.jpg"}])
    (tmp_path / "data/textcaps/images/c1.jpg").write_bytes(b"not an image")
    problems = [str(p) for p in verify_benchmark(load_benchmark(DMOLE, data_root=tmp_path))]
    assert any("vizwiz_val_annotations.json" in p and "not found" in p for p in problems)
    assert any("kvqa/test.jsonl row 0" in p and "escapes" in p for p in problems), problems
    assert any("kvqa/test.jsonl row 1" in p and "'question'" in p for p in problems)
    assert any("textcaps/val.json row 0" in p and "does not decode" in p for p in problems)


def test_general_task_schema_and_degenerate_coin_case(tmp_path):
    img = _img(tmp_path / "i.jpg")
    _jsonl(tmp_path / "a.jsonl", [_conv("i.jpg", "q1", "a"), _conv("i.jpg", "q2", "b")])
    (tmp_path / "b.json").write_text(json.dumps([_conv("i.jpg", f"r{i}", "c") for i in range(4)]))
    (tmp_path / "t.json").write_text(json.dumps([{"question_id": 1, "image": "i.jpg", "text": "Q?", "answer": "a"}]))
    yaml = tmp_path / "b.yaml"
    yaml.write_text(f"""
name: mixed
data_root: {tmp_path}
tasks:
  - name: Med
    image_root: .
    epochs: 2
    train: [{{path: a.jsonl, source: A}}, {{path: b.json, source: B, repeat: 0.5}}]
    eval:
      - {{name: one, path: t.json, scorer: medvqa, max_new_tokens: 64}}
      - {{name: two, path: t.json, scorer: exact-match}}
  - name: Plain
    train: b.json
    test: t.json
    image_root: .
    scorer: vqav2
""")
    bench = load_benchmark(yaml)
    med, plain = bench.tasks
    assert not med.is_coin and plain.is_coin and med.epochs == 2
    assert (med.train, med.test, med.scorer, med.annotations) == (tmp_path / "a.jsonl", tmp_path / "t.json",
                                                                   "medvqa", {})
    samples = load_train(med, seed=3)
    assert [s.source for s in samples] == ["A", "A", "B", "B"]  # half of b.json's four rows
    assert [e.name for e in med.eval_sets] == ["one", "two"] and med.eval_set("one").max_new_tokens == 64
    assert load_eval_set(med, med.eval_set("two"))[0].reference["answer"] == "a"
    assert verify_benchmark(bench) == []
    assert plain.train_files[0].path == tmp_path / "b.json" and plain.eval_sets[0].format == "coin"
    # the positional constructor (tests, analysis) still builds the degenerate case
    t = TaskSpec("X", tmp_path / "b.json", tmp_path / "t.json", tmp_path, scorer="vqav2")
    assert t.is_coin and t.eval_sets[0].scorer == "vqav2" and t.train_files[0].image_root == tmp_path
    assert Path(img).is_file()


@pytest.mark.parametrize(
    "task, match",
    [
        ("{name: T, train: a.json, image_root: ., eval: [{name: e, path: t.json, scorer: nope}]}", "unknown scorer 'nope'"),
        ("{name: T, train: a.json, image_root: ., eval: [{name: e, path: t.json, scorer: cider, format: x}]}",
         "unknown format 'x'"),
        ("{name: T, train: a.json, image_root: ., test: t.json, scorer: cider, eval: []}", "either 'eval'"),
        ("{name: T, train: [{path: a.json, repeat: 2.5}], image_root: ., eval: [{name: e, path: t, scorer: cider}]}",
         "must be an integer"),
        ("{name: T, train: a.json, eval: [{name: e, path: t.json, scorer: cider}]}", "no image_root"),
        ("{name: T, train: a.json, image_root: ., epochs: 0, eval: [{name: e, path: t, scorer: cider}]}",
         "positive number"),
    ],
)
def test_bad_general_tasks(tmp_path, task, match):
    yaml = tmp_path / "b.yaml"
    yaml.write_text(f"name: x\ndata_root: {tmp_path}\ntasks:\n  - {task}\n")
    with pytest.raises(ConfigError, match=match):
        load_benchmark(yaml)
