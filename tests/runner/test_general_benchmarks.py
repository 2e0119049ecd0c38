"""The peers' benchmark protocol end to end on the tiny backbone: a task with two evaluation sets (each with its own
scorer and generation length) and its own epochs, every task evaluated after every stage (full matrix) and D-MoLE's
metric definition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dymoe.config import load_config
from dymoe.data.formats import load_eval_set
from dymoe.eval.metrics import dmole_summary, summarize
from dymoe.eval.scorers import SCORERS
from dymoe.io import read_jsonl
from dymoe.runner.continual import resolve_benchmark, run
from dymoe.runner.resources import resolve_minicoin

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _benchmark(tmp_path: Path) -> Path:
    """mini-CoIN's ImageNet with a second evaluation set (exact match, 2 new tokens) and 2 epochs, then ScienceQA."""
    src = resolve_minicoin("small")
    data = yaml.safe_load(src.read_text())
    tasks = {t["name"]: t for t in data["tasks"]}
    inet = tasks["ImageNet"]
    general = {
        "name": "ImageNet", "image_root": inet["image_root"], "epochs": 2,
        "train": [{"path": inet["train"], "source": "ImageNet"}],
        "eval": [{"name": "ImageNet", "path": inet["test"], "scorer": "imagenet"},
                 {"name": "ImageNet-short", "path": inet["test"], "scorer": "exact-match", "max_new_tokens": 2}],
    }
    out = tmp_path / "bench.yaml"
    out.write_text(yaml.safe_dump({"name": "general", "instruction_type": "origin", "data_root": str(src.parent),
                                   "order": ["ImageNet", "ScienceQA"], "tasks": [general, tasks["ScienceQA"]]}))
    return out


def test_sets_lengths_epochs_full_matrix_and_dmole_metric(tmp_path, cache_env):
    bench = _benchmark(tmp_path)
    cfg = load_config(SMOKE, [
        "method.name=lora", f"benchmark.file={bench}", "benchmark.order=null", "benchmark.max_train_samples=8",
        "benchmark.max_eval_samples=4", "training.batch_size=4", "evaluation.tasks=all", "evaluation.metric=dmole",
        "trackers=[]",
    ])
    out = tmp_path / "run"
    metrics = run(cfg, out)
    stored = json.loads((out / "matrix.json").read_text())
    matrix = stored["accuracy"]
    assert stored["full"] is True and stored["tasks"] == ["ImageNet", "ScienceQA"]
    assert [len(r) for r in matrix] == [2, 2]  # the unseen ScienceQA is evaluated after task 1
    assert (out / "predictions" / "ScienceQA" / "after_1.jsonl").is_file()
    # per-task epochs: 8 samples at batch 4 = 2 steps per epoch; ImageNet trains 2 epochs, ScienceQA 1
    steps = [json.loads(line) for line in (out / "train_steps.jsonl").read_text().splitlines()]
    assert [sum(r["task"] == t for r in steps) for t in ("ImageNet", "ScienceQA")] == [4, 2]
    # every set scored by its own scorer; the cell is the mean of the two headlines (re-scored here from the files)
    for k in (1, 2):
        pred = {s: read_jsonl(out / "predictions" / "ImageNet" / s / f"after_{k}.jsonl")
                for s in ("ImageNet", "ImageNet-short")}
        task = resolve_benchmark(cfg).tasks[0]
        by_id = {s.question_id: s.reference for s in load_eval_set(task, task.eval_sets[0])}
        refs = [by_id[r["question_id"]] for r in pred["ImageNet"]]
        a = SCORERS.get("imagenet")(pred["ImageNet"], refs).accuracy
        b = SCORERS.get("exact-match")(pred["ImageNet-short"], refs).accuracy
        assert matrix[k - 1][0] == pytest.approx(round((a + b) / 2, 4))
        sets = metrics["eval_sets"][f"after_task_{k}"]["ImageNet"]
        assert sets["ImageNet"]["scorer"] == "imagenet" and sets["ImageNet-short"]["scorer"] == "exact-match"
        assert sets["ImageNet"]["score"] == pytest.approx(a, abs=1e-4)
        # the set's own generation length: greedy decoding, same batches, so 2 tokens are a prefix of 8
        for short, long in zip(pred["ImageNet-short"], pred["ImageNet"]):
            assert long["text"].startswith(short["text"]), (short["text"], long["text"])
        assert any(len(s["text"]) < len(l_["text"]) for s, l_ in zip(pred["ImageNet-short"], pred["ImageNet"]))
    # the run's metric definition: D-MoLE's Eqs. 16-18 over the full matrix; CoIN's over its seen part
    assert metrics["metric"]["definition"] == "dmole"
    assert metrics["metric"]["AVG"] == pytest.approx(dmole_summary(matrix)["AVG"])
    assert metrics["MFN"] == pytest.approx(summarize([matrix[0][:1], matrix[1]])["MFN"])
    report = (out / "report.md").read_text()
    assert "## Every task after every stage" in report and "## Metrics (dmole definition)" in report
    assert "| ImageNet | ImageNet-short | exact-match |" in report
