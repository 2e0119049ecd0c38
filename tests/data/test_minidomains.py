"""mini-domains generator: determinism (a pinned digest), the smoe3 layout loaded by the real loader, gold answers
scoring 100 with the real benchmark's scorers, chart geometry by hand, the manifest catching a changed file, the
CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dymoe.cli.main import main
from dymoe.data.minidomains import DOMAINS, SCALES, generate, verify
from dymoe.data.minidomains.domains import CATEGORY_COLOURS, _chart, chart_table
from dymoe.data.tasks import load_benchmark
from dymoe.errors import DymoeError
from dymoe.eval.scorers import SCORERS

#: sha256 over every file (path and bytes) of scale small, seed 0; bump GENERATOR_VERSION when it changes
SMALL_SEED0 = Path(__file__).resolve().parents[1] / "fixtures" / "minidomains" / "small-seed0.sha256"


def tree_digest(root: Path) -> str:
    """sha256 over every file's path and content: the text files' bytes and the images' decoded pixels (PNG
    bytes depend on the zlib build, pixels do not)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.json":
            data = np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes()
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + data)
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("md") / "small", scale="small", seed=0).parent


def test_deterministic_and_pinned(small, tmp_path):
    again = generate(tmp_path / "again", scale="small", seed=0).parent
    assert tree_digest(again) == tree_digest(small)
    assert tree_digest(small) == SMALL_SEED0.read_text().strip()
    other = generate(tmp_path / "seed1", scale="small", seed=1).parent
    assert tree_digest(other) != tree_digest(small)
    assert verify(small) == []


def test_manifest_catches_a_changed_file(tmp_path):
    root = generate(tmp_path / "md", scale="small", seed=0).parent
    (root / "math" / "math_test.json").write_text("[]\n")
    (root / "extra.txt").write_text("x")
    problems = verify(root)
    assert any("math/math_test.json: sha256 mismatch" in p for p in problems)
    assert any("extra.txt: not listed" in p for p in problems)


def test_the_real_loader_reads_it(small):
    bench = load_benchmark(small / "benchmark.yaml")
    assert [t.name for t in bench.tasks] == list(DOMAINS)
    n_train, n_test = SCALES["small"]
    counts = json.loads((small / "MANIFEST.json").read_text())["counts"]
    assert counts["Medicine"] == {"med_vqa_train": 2 * n_train, "med_caption_train": n_train,
                                  "med_vqa_test": 2 * n_test}
    assert counts["Chart"]["chart2table_test"] == n_test and counts["Math"]["math_train"] == 2 * n_train
    sets = {t.name: [(e.name, e.scorer) for e in t.eval_sets] for t in bench.tasks}
    assert sets == {"Medicine": [("ScanVQA", "medvqa")],
                    "Chart": [("ChartQA", "chartqa-relaxed"), ("Chart-to-Table", "chart-table-rms"),
                              ("Chart-to-Text", "bleu4")],
                    "Math": [("MWP&GPS", "math")]}


def test_gold_answers_score_100_with_the_real_scorers(small):
    bench = load_benchmark(small / "benchmark.yaml")
    for task in bench.tasks:
        for es in task.eval_sets:
            refs = json.loads(Path(es.path).read_text())
            gold = [{"question_id": r["question_id"],
                     "text": r.get("table", r.get("answer"))} for r in refs]
            res = SCORERS.get(es.scorer)(gold, refs)
            assert res.accuracy == pytest.approx(100.0), (es.name, res.accuracy)
            wrong = [{"question_id": r["question_id"], "text": "purple"} for r in refs]
            assert SCORERS.get(es.scorer)(wrong, refs).accuracy < 50.0
    med = json.loads((small / "medicine" / "med_vqa_test.json").read_text())
    kinds = {r["answer_type"] for r in med}
    assert kinds == {"CLOSED", "OPEN"}
    assert all(r["answer"] in ("yes", "no") for r in med if r["answer_type"] == "CLOSED")


def test_chart_geometry_and_table_by_hand():
    img = np.asarray(_chart("bar", ["red", "blue", "green"], [7, 2, 9]))
    # 5 px per unit from the axis at y = 58; three bars 17 px apart starting at x = 8
    for i, (c, v) in enumerate(zip(["red", "blue", "green"], [7, 2, 9])):
        xc = 8 + 17 * i + 8
        assert tuple(img[58 - 5 * v, xc]) == CATEGORY_COLOURS[c]  # the bar's top row
        assert tuple(img[58 - 5 * v - 2, xc]) != CATEGORY_COLOURS[c]  # above it: background or grid
    assert chart_table(["red", "blue"], [7, 2]) == "category | value\nred | 7\nblue | 2"


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["make-minidomains", "--out", str(out), "--scale", "small"]) == 0
    assert "3 domains" in capsys.readouterr().out and verify(out) == []
    with pytest.raises(DymoeError, match="not empty"):
        generate(out, scale="small")
