"""``dymoe run`` with ``method.name=dmole`` on the tiny backbone (vision tower included): the planning phase's files
(proxy, allocation, autoencoder), growth in the allocated slots only, experts of both the language model and the
vision tower trained and then frozen bit for bit, the cumulative architecture in the report, the routed task
against a loop with the pretrained backbone and the saved autoencoders, the dmole metric; resume after SIGKILL
between the planning phase (proxy, allocation, autoencoder) and training ends with identical files."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dymoe.io import read_jsonl

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"
TASKS = ["ImageNet", "GQA"]
SETTINGS = [
    "method.name=dmole",
    f"benchmark.order=[{', '.join(TASKS)}]",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=4",
    "training.save_every_steps=1",
    "evaluation.tasks=all",
    "evaluation.metric=dmole",
    "method.proxy_fraction=0.5",
    "method.ae_epochs=10",
    "trackers=[]",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dymoe_cli):
    out = tmp_path_factory.mktemp("dmole") / "run"
    proc = dymoe_cli(out, SETTINGS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _plan(run: Path, k: int) -> dict:
    return json.loads((run / "checkpoints" / f"task_{k + 1}_{TASKS[k]}.plan" / "plan.json").read_text())


def test_planning_phase_allocation_and_growth(finished):
    for k in range(2):
        log = _plan(finished, k)["log"]
        assert log["proxy"]["samples"] == 4 and log["proxy"]["batches"] == 1
        alloc = log["allocation"]
        # 8 slots (2 LLM + 2 CLIP layers x {qkv, o}): B = 4, vision floor floor(0.25 * 4) = 1
        assert alloc["budget"] == 4 and sum(alloc["budgets"].values()) == 4 and alloc["budgets"]["vision"] >= 1
        chosen = alloc["chosen"]["llm"] + alloc["chosen"]["vision"]
        scores = alloc["scores"]
        for m in ("llm", "vision"):  # the top-B_M slots of each modality
            mine = sorted((s for s in scores if ("vision_tower" in s) == (m == "vision")), key=lambda s: (-scores[s], s))
            assert alloc["chosen"][m] == mine[: alloc["budgets"][m]]
        structure = json.loads((finished / "checkpoints" / f"task_{k + 1}_{TASKS[k]}" / "adapter.json").read_text())
        with_k = {n.rsplit(".", 1)[0] + (".qkv" if n.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj") else ".o")
                  for n, spec in structure["modules"].items() if k in spec["expert_group"]}
        assert with_k == set(chosen)
        assert log["autoencoder"]["features"] == [8, 32 + 64] and log["autoencoder"]["tau"] == pytest.approx(
            1.2 * log["autoencoder"]["in_task_max"])


def test_experts_of_both_towers_are_trained_then_frozen(finished):
    a1 = load_file(str(finished / "checkpoints" / "task_1_ImageNet" / "adapter.safetensors"))
    a2 = load_file(str(finished / "checkpoints" / "task_2_GQA" / "adapter.safetensors"))
    trained = {"vision": 0, "llm": 0}
    for key, t1 in a1.items():
        if key.endswith("frozen_B") and t1.numel():
            trained["vision" if "vision_tower" in key else "llm"] += int(t1.abs().sum() > 0)  # B left 0: trained
            assert torch.equal(a2[key][:, : t1.shape[1]], t1), key  # task 1's experts unchanged by task 2
        elif key.endswith("frozen_A") and t1.numel():
            assert torch.equal(a2[key][: t1.shape[0]], t1), key
    assert trained["vision"] >= 1 and trained["llm"] >= 1
    report = (finished / "report.md").read_text()
    assert "## D-MoLE architecture" in report


def test_routing_equals_a_loop_with_the_pretrained_backbone_and_the_saved_autoencoders(finished, dymoe_cache,
                                                                                     monkeypatch):
    monkeypatch.setenv("DYMOE_CACHE", str(dymoe_cache))
    from dymoe.config import load_config
    from dymoe.data.collate import build_generation_batch
    from dymoe.data.formats import load_test
    from dymoe.methods.dmole.features import router_feature
    from dymoe.methods.dmole.router import TaskAutoencoder, eval_gates
    from dymoe.models.llava import load_backbone
    from dymoe.runner.continual import resolve_benchmark
    from dymoe.runner.resources import resolve_backbone_path

    cfg = load_config(SMOKE, SETTINGS)
    bench = resolve_benchmark(cfg)
    model, processor = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    model.eval()
    state = load_file(str(finished / "checkpoints" / "task_2_GQA" / "method_state.safetensors"))
    aes = []
    for k in range(2):
        ae = TaskAutoencoder(96, 128)
        ae.load_state_dict({n.removeprefix(f"module.ae_{k}."): t for n, t in state.items()
                            if n.startswith(f"module.ae_{k}.")})
        aes.append(ae.eval())
    taus = state["taus"].float()
    routed = 0
    for task in bench.tasks:
        rows = read_jsonl(finished / "predictions" / task.name / "after_2.jsonl")
        by_id = {s.question_id: s for s in load_test(task)}
        for r in rows:
            batch = build_generation_batch(processor, [by_id[r["question_id"]]], max_length=cfg.evaluation.max_length)
            batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
            z = router_feature(model, model.model.vision_tower, batch, [0], vision_dim=32, image_token_id=4)
            losses = torch.stack([ae.loss(z) for ae in aes], dim=1)
            gates = eval_gates(losses, taus)
            expect = int(losses.masked_fill(~gates, float("inf")).argmin(1)) if gates.any() else -1
            assert r["routed_task"] == expect, (task.name, r["question_id"])
            routed += int(expect >= 0)
    assert routed > 0
    metrics = json.loads((finished / "metrics.json").read_text())
    assert metrics["locator"]["name"] == "autoencoder_router"
    main = json.loads((finished / "matrix.json").read_text())["accuracy"]
    dm = metrics["metric"]
    assert dm["definition"] == "dmole" and len(main) == 2 and len(main[0]) == 2
    assert dm["BWT"] == pytest.approx(main[1][0] - main[0][0])


def test_resume_after_sigkill_between_proxy_and_training(finished, tmp_path, dymoe_cli):
    """Killed after task 2's planning phase (proxy, allocation, autoencoder) was saved and before its experts are
    added and trained: the resumed run loads the plan instead of planning again and ends with the same files.
    (``killrun.py`` can also kill right after the proxy, ``dmole.proxy:<marker>``: the unsaved plan is then redone.)"""
    out = tmp_path / "killed"
    grow = tmp_path / "grow.marker"
    kill = f"dmole.grow:{grow}"
    proc = dymoe_cli(out, SETTINGS, kill)
    assert proc.returncode == -signal.SIGKILL and grow.exists(), proc.stderr[-3000:]
    assert (out / "checkpoints" / "task_2_GQA.plan" / "plan.json").is_file()
    assert not (out / "checkpoints" / "task_2_GQA").exists()
    proc = dymoe_cli(out, SETTINGS, kill)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "planning phase loaded" in proc.stderr
    for rel in ["matrix.json", "predictions/GQA/after_2.jsonl", "predictions/ImageNet/after_2.jsonl",
                "checkpoints/task_2_GQA.plan/plan_state.safetensors",
                "checkpoints/task_2_GQA/adapter.safetensors",
                "checkpoints/task_2_GQA/method_state.safetensors"]:
        assert (out / rel).read_bytes() == (finished / rel).read_bytes(), rel
