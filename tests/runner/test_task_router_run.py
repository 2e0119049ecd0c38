"""The task router's accuracy through the real runner: per row in metrics.json, the last one in report.md."""

import json
from pathlib import Path

from dymoe.config import load_config
from dymoe.runner.continual import run

ROOT = Path(__file__).resolve().parents[2]


def test_task_router_accuracy_is_in_metrics_and_report(tmp_path, cache_env):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [
        "benchmark.order=[ScienceQA, ImageNet]", "benchmark.max_train_samples=16", "benchmark.max_eval_samples=4",
        "training.batch_size=8", "trackers=[]", "method.name=dymoe", "method.task_router=true",
        "method.task_router_batches=2"])
    out = tmp_path / "router"
    run(cfg, out)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["method_eval"]
    assert set(rows) == {"after_task_1", "after_task_2"}
    first, last = rows["after_task_1"]["task_router"], rows["after_task_2"]["task_router"]
    # one prototype after task 1: every sample goes to it
    assert first["accuracy"] == {"ScienceQA": 100.0} and first["predicted"] == {"ScienceQA": [4]}
    assert last["samples"] == {"ScienceQA": 4, "ImageNet": 4}
    for task, i in (("ScienceQA", 0), ("ImageNet", 1)):
        counts = last["predicted"][task]
        assert sum(counts) == 4 and last["accuracy"][task] == 100.0 * counts[i] / 4
    assert last["mean"] == round((last["accuracy"]["ScienceQA"] + last["accuracy"]["ImageNet"]) / 2, 2)
    report = (out / "report.md").read_text()
    assert "## Task router (after task 2)" in report and "| ImageNet | 4 |" in report
