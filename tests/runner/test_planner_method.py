"""The test method package (``tests/methods/planner_method``: planning phase, feature pass, per-batch routing,
evaluation variants, task locator) through ``dymoe run`` on the tiny backbone, resumed after SIGKILL between its
planning phase and its training; and the feature pass against the backbone alone.

The two-process run of the same method is in ``test_multiprocess.py`` (case ``test-planner``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dymoe.io import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
METHODS_DIR = ROOT / "tests" / "methods"
if str(METHODS_DIR) not in sys.path:
    sys.path.insert(0, str(METHODS_DIR))

from planner_method import KILL_ENV, PlannerMethod, last_token_features, register  # noqa: E402

TASKS = ["ScienceQA", "ImageNet"]
SETTINGS = [
    "method.name=test-planner",
    f"benchmark.order=[{', '.join(TASKS)}]",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=4",
    "evaluation.metric=cmoe",
    "trackers=[]",
]


def _cli(out: Path, cache: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "planner_method", "run", str(SMOKE), "--output", str(out)]
    for s in SETTINGS:
        cmd += ["--set", s]
    env = dict(os.environ, DYMOE_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(METHODS_DIR), os.environ.get("PYTHONPATH", "")]))
    env.update(extra_env or {})
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dymoe_cache):
    out = tmp_path_factory.mktemp("planner") / "run"
    proc = _cli(out, dymoe_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_planning_phase_is_saved_with_its_own_training(finished):
    for k, task in enumerate(TASKS, start=1):
        plan = finished / "checkpoints" / f"task_{k}_{task}.plan"
        summary = json.loads((plan / "plan.json").read_text())
        # 50 % of 8 samples at global batch 4: 1 step at the probe's own learning rate
        assert summary["train"] == [{"steps": 1, "samples": 4, "lr": 5e-3, "epochs": 1.0, "schedule": "constant",
                                     "final_loss": summary["train"][0]["final_loss"]}]
        assert summary["log"]["features"] == [8, 64]  # every training sample, hidden size 64
        assert summary["log"]["epochs"] == 1.0  # TaskInfo.epochs: no per-task epochs, so smoke's training.epochs
        # the phase's wall time encloses what plan() timed itself, plus the runner's bookkeeping only
        body = summary["log"]["body_seconds"]
        assert body > 0 and body <= summary["seconds"] < body + 1.0
        state = load_file(str(plan / "plan_state.safetensors"))
        assert state["prototypes"].shape == (k, 64)
    metrics = json.loads((finished / "metrics.json").read_text())
    assert metrics["train"]["ImageNet"]["plan"]["loaded"] is False
    assert metrics["train"]["ImageNet"]["plan"]["seconds"] == summary["seconds"]  # reported in metrics.json too
    # parameter accounting: a group of experts per task; the adapter's tensors in the checkpoints by hand
    p1, p2 = (metrics["train"][t]["parameters"] for t in TASKS)
    sizes = [sum(t.numel() for t in load_file(str(finished / "checkpoints" / f"task_{k}_{t}" /
                                                   "adapter.safetensors")).values()) for k, t in enumerate(TASKS, 1)]
    assert [p1["total"], p2["total"]] == sizes and p2["total"] == metrics["total_adapter_params"]
    assert p1["added"] == sizes[0] and p2["added"] == sizes[1] - sizes[0] == p2["by_group"]["1"]
    assert p2["by_stream"] == {"text": sizes[1]} and 0 < p2["activated_per_token"] <= sizes[1]
    assert "## Parameters per task" in (finished / "report.md").read_text()
    # the probe trained in the planning phase only: its tensors are the plan's in both task checkpoints
    s2 = load_file(str(finished / "checkpoints" / "task_2_ImageNet.plan" / "plan_state.safetensors"))
    m2 = load_file(str(finished / "checkpoints" / "task_2_ImageNet" / "method_state.safetensors"))
    assert torch.equal(m2["module.probe.weight"], s2["probe.weight"])
    s1 = load_file(str(finished / "checkpoints" / "task_1_ScienceQA.plan" / "plan_state.safetensors"))
    assert not torch.equal(s1["probe.weight"], s2["probe.weight"])  # task 2's planning trained it further


def test_locator_variants_and_report(finished, dymoe_cache, monkeypatch):
    """The locator's routed task per question equals a loop over the questions with the backbone alone (the
    bypassed feature, nearest plan prototype); the oracle variant routes every question to its own task; the
    locator report, the variant's matrix and CMoE's BWT (Immediate from the oracle variant) follow."""
    monkeypatch.setenv("DYMOE_CACHE", str(dymoe_cache))
    from dymoe.config import load_config
    from dymoe.data.collate import build_generation_batch
    from dymoe.data.formats import load_test
    from dymoe.models.llava import load_backbone
    from dymoe.runner.continual import resolve_benchmark
    from dymoe.runner.resources import resolve_backbone_path

    cfg = load_config(SMOKE, SETTINGS[1:] + ["method.name=lora"])
    bench = resolve_benchmark(cfg)
    model, processor = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    model.eval()
    protos = load_file(str(finished / "checkpoints" / "task_2_ImageNet.plan" / "plan_state.safetensors"))["prototypes"]
    true, routed = [], []
    for j, task in enumerate(bench.tasks):
        rows = read_jsonl(finished / "predictions" / task.name / "after_2.jsonl")
        by_id = {s.question_id: s for s in load_test(task)}
        for r in rows:
            batch = build_generation_batch(processor, [by_id[r["question_id"]]], max_length=cfg.evaluation.max_length)
            with torch.no_grad():
                h = model(**batch, output_hidden_states=True).hidden_states[-1][:, -1].float()  # [1, d]
            expect = int(torch.cdist(h, protos).argmin(1))
            assert r["routed_task"] == expect, (task.name, r["question_id"])
            true.append(j)
            routed.append(expect)
        oracle = read_jsonl(finished / "variants" / "oracle" / "predictions" / task.name / "after_2.jsonl")
        assert [r["routed_task"] for r in oracle] == [j] * len(rows)
    metrics = json.loads((finished / "metrics.json").read_text())
    loc = metrics["locator"]
    assert loc["name"] == "test_locator"
    confusion = [[sum(1 for t, p in zip(true, routed) if t == i and p == c) for c in range(2)] for i in range(2)]
    assert loc["main"]["after_task_2"]["confusion"] == confusion
    assert loc["oracle"]["after_task_2"]["accuracy"] == {"ScienceQA": 100.0, "ImageNet": 100.0}
    oracle_matrix = json.loads((finished / "variants" / "oracle" / "matrix.json").read_text())["accuracy"]
    assert metrics["variants"]["oracle"]["matrix"] == oracle_matrix
    main = json.loads((finished / "matrix.json").read_text())["accuracy"]
    cm = metrics["metric"]
    assert cm["definition"] == "cmoe" and cm["immediate_from"] == "oracle"
    assert cm["BWT"] == pytest.approx(sum(main[-1][i] - oracle_matrix[i][i] for i in range(2)) / 2)
    report = (finished / "report.md").read_text()
    assert "## Variant: oracle" in report and "## Task locator test_locator (main, after task 2)" in report
    assert "## Metrics (cmoe definition)" in report


def test_resume_after_sigkill_between_planning_and_training(finished, tmp_path, dymoe_cache):
    out = tmp_path / "killed"
    marker = tmp_path / "killed.marker"
    proc = _cli(out, dymoe_cache, {KILL_ENV: f"2:{marker}"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "checkpoints" / "task_2_ImageNet.plan" / "plan.json").is_file()
    assert not (out / "checkpoints" / "task_2_ImageNet").exists()
    proc = _cli(out, dymoe_cache, {KILL_ENV: f"2:{marker}"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "planning phase loaded" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["ImageNet"]["plan"]["loaded"] is True
    saved = json.loads((out / "checkpoints" / "task_2_ImageNet.plan" / "plan.json").read_text())
    assert metrics["train"]["ImageNet"]["plan"]["seconds"] == saved["seconds"] > 0  # the saved phase's time
    # the same matrix, predictions and checkpoints as the uninterrupted run
    for rel in ["matrix.json", "variants/oracle/matrix.json", "predictions/ImageNet/after_2.jsonl",
                "variants/oracle/predictions/ScienceQA/after_2.jsonl",
                "checkpoints/task_2_ImageNet/adapter.safetensors",
                "checkpoints/task_2_ImageNet/method_state.safetensors"]:
        assert (out / rel).read_bytes() == (finished / rel).read_bytes(), rel


def test_feature_pass_bypasses_every_expert_layer_and_keeps_sample_order(tmp_path, cache_env):
    """Planner.features with experts whose B is non-zero: equal to a loop over the samples on the backbone alone
    (no adapter), in sample order; without the bypass the features differ."""
    from dymoe.config import load_config
    from dymoe.data.collate import VLMCollator
    from dymoe.methods.base import TaskInfo
    from dymoe.models.llava import load_backbone
    from dymoe.runner.continual import ContinualRun
    from dymoe.runner.planning import Planner
    from dymoe.runner.resources import resolve_backbone_path

    register()
    cfg = load_config(SMOKE, SETTINGS)
    run = ContinualRun(cfg, tmp_path / "run")
    run.setup()
    task = run.tasks[1]
    samples = run.train_set(task)
    run.adapter.add_group(0)
    with torch.no_grad():
        for p in run.adapter.trainable_parameters():
            p.normal_(0, 0.5)  # experts that change the output
    planner = Planner(run, TaskInfo(index=1, name=task.name, num_tasks=2, train_samples=samples))
    order = [4, 0, 5, 2]
    feats = planner.features(lambda b, i: last_token_features(run.model, b, i), order, batch_size=3)
    plain, _ = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    plain.eval()
    collator = VLMCollator(run.processor, max_length=cfg.training.max_length)
    expect = torch.cat([last_token_features(plain, collator([samples[i]])) for i in order])
    torch.testing.assert_close(feats, expect, atol=1e-5, rtol=1e-4)
    routed = planner.features(lambda b, i: last_token_features(run.model, b, i), order, bypass=False)
    assert not torch.allclose(routed, expect, atol=1e-3)
    assert isinstance(run.method, PlannerMethod)
