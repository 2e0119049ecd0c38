"""``dymoe run`` with ``method.name=cmoe`` on the tiny backbone: the planning phase's files, growth, old experts /
routers / VAEs bit-identical after a later task, the locator's routed task against a loop with the backbone alone
and the saved VAEs, the variants, CMoE's BWT; resume after SIGKILL inside the probe phase and inside training ends
with the same files."""

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
TASKS = ["ScienceQA", "ImageNet"]
SETTINGS = [
    "method.name=cmoe",
    f"benchmark.order=[{', '.join(TASKS)}]",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=4",
    "training.save_every_steps=1",
    "evaluation.metric=cmoe",
    "method.initial_experts=4",
    "method.probe_fraction=0.5",
    "method.variants=[oracle, last_router]",
    "trackers=[]",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dymoe_cli):
    out = tmp_path_factory.mktemp("cmoe") / "run"
    proc = dymoe_cli(out, SETTINGS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_planning_phase_and_growth(finished):
    p1 = json.loads((finished / "checkpoints" / "task_1_ScienceQA.plan" / "plan.json").read_text())
    assert p1["train"] == [] and "pgke" not in p1["log"]  # task 1 trains the initial experts: no PGKE
    assert p1["log"]["vae"]["features"] == [8, 64]
    p2 = json.loads((finished / "checkpoints" / "task_2_ImageNet.plan" / "plan.json").read_text())
    # 50 % of 8 samples: 3 probe-train (1 step at batch 4, lr 3e-4), 1 probe-eval
    pg = p2["log"]["pgke"]
    assert pg["probe_train"] == 3 and pg["probe_eval"] == 1
    assert pg["param_ratio"] == pg["layers_grown"] / 2
    assert [(t["steps"], t["samples"], t["lr"]) for t in p2["train"]] == [(1, 3, 3e-4)]
    state = load_file(str(finished / "checkpoints" / "task_2_ImageNet.plan" / "plan_state.safetensors"))
    n_new = state["pgke.n_new"].tolist()
    structure = json.loads((finished / "checkpoints" / "task_2_ImageNet" / "adapter.json").read_text())
    grown = [sum(1 for g in spec["expert_group"] if g == 1) for name, spec in structure["modules"].items()
             if name.endswith("gate_proj")]
    assert grown == n_new
    method = load_file(str(finished / "checkpoints" / "task_2_ImageNet" / "method_state.safetensors"))
    assert method["grown"].tolist() == [[4, 4], n_new]
    # the A1 fallback is recorded in the run's metadata; no initial phase ran
    assert structure["metadata"]["method"]["initial_experts_trained_on"] == "task 1 (small-scale fallback, cmoe.md A1)"
    assert not (finished / "checkpoints" / "initial.plan").exists()
    assert p1["seconds"] > 0 and p2["seconds"] > 0  # the planning phases' wall times


def test_old_experts_routers_and_vaes_are_bit_identical_after_a_later_task(finished):
    a1 = load_file(str(finished / "checkpoints" / "task_1_ScienceQA" / "adapter.safetensors"))
    a2 = load_file(str(finished / "checkpoints" / "task_2_ImageNet" / "adapter.safetensors"))
    checked = 0
    for key, t1 in a1.items():
        if key.endswith("frozen_A") or key.endswith("router_bank.frozen"):
            assert torch.equal(a2[key][: t1.shape[0]], t1), key
            checked += 1
        elif key.endswith("frozen_B"):
            assert torch.equal(a2[key][:, : t1.shape[1]], t1), key
            checked += 1
    assert checked == 4 * 2 + 2  # A and B of 4 projections, 2 router banks
    m1 = load_file(str(finished / "checkpoints" / "task_1_ScienceQA" / "method_state.safetensors"))
    m2 = load_file(str(finished / "checkpoints" / "task_2_ImageNet" / "method_state.safetensors"))
    vae0 = [k for k in m1 if k.startswith("module.vae_0.")]
    assert vae0 and all(torch.equal(m1[k], m2[k]) for k in vae0)
    assert torch.equal(m1["primitives"][0], m2["primitives"][0])


def test_locator_equals_a_loop_with_the_backbone_alone_and_the_saved_vaes(finished, dymoe_cache, monkeypatch):
    monkeypatch.setenv("DYMOE_CACHE", str(dymoe_cache))
    from dymoe.config import load_config
    from dymoe.data.collate import build_generation_batch
    from dymoe.data.formats import load_test
    from dymoe.methods.cmoe.functional import zscore_argmax
    from dymoe.methods.cmoe.vae import TaskVAE
    from dymoe.models.llava import load_backbone
    from dymoe.runner.continual import resolve_benchmark
    from dymoe.runner.resources import resolve_backbone_path

    cfg = load_config(SMOKE, SETTINGS)
    bench = resolve_benchmark(cfg)
    model, processor = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    model.eval()
    state = load_file(str(finished / "checkpoints" / "task_2_ImageNet" / "method_state.safetensors"))
    vaes = []
    for k in range(2):
        vae = TaskVAE(64)
        vae.load_state_dict({n.removeprefix(f"module.vae_{k}."): t for n, t in state.items()
                             if n.startswith(f"module.vae_{k}.")})
        vaes.append(vae.eval())
    prim = state["primitives"]
    true, routed = [], []
    for j, task in enumerate(bench.tasks):
        rows = read_jsonl(finished / "predictions" / task.name / "after_2.jsonl")
        by_id = {s.question_id: s for s in load_test(task)}
        for r in rows:
            batch = build_generation_batch(processor, [by_id[r["question_id"]]], max_length=cfg.evaluation.max_length)
            with torch.no_grad():
                h = model(**batch, output_hidden_states=True).hidden_states[-1][:, -1].float()  # [1, d]
            log_p = torch.stack([v.score(h, 8, 0) for v in vaes], dim=1).double()
            expect = int(zscore_argmax(log_p, prim[:, 0], prim[:, 1])[0][0])
            assert r["routed_task"] == expect, (task.name, r["question_id"])
            true.append(j)
            routed.append(expect)
        oracle = read_jsonl(finished / "variants" / "oracle" / "predictions" / task.name / "after_2.jsonl")
        assert [r["routed_task"] for r in oracle] == [j] * len(rows)
        last = read_jsonl(finished / "variants" / "last_router" / "predictions" / task.name / "after_2.jsonl")
        assert [r["routed_task"] for r in last] == [1] * len(rows)
    metrics = json.loads((finished / "metrics.json").read_text())
    loc = metrics["locator"]
    assert loc["name"] == "ptl"
    confusion = [[sum(1 for t, p in zip(true, routed) if t == i and p == c) for c in range(2)] for i in range(2)]
    assert loc["main"]["after_task_2"]["confusion"] == confusion
    oracle_m = json.loads((finished / "variants" / "oracle" / "matrix.json").read_text())["accuracy"]
    main = json.loads((finished / "matrix.json").read_text())["accuracy"]
    cm = metrics["metric"]
    assert cm["definition"] == "cmoe" and cm["immediate_from"] == "oracle"
    assert cm["BWT"] == pytest.approx(sum(main[-1][i] - oracle_m[i][i] for i in range(2)) / 2)


def test_resume_after_sigkill_in_the_probe_phase_and_in_training(finished, tmp_path, dymoe_cli):
    out = tmp_path / "killed"
    probe, train = tmp_path / "probe.marker", tmp_path / "train.marker"
    kill = f"cmoe.probe:{probe},cmoe.train:2:{train}"
    proc = dymoe_cli(out, SETTINGS, kill)
    assert proc.returncode == -signal.SIGKILL and probe.exists() and not train.exists(), proc.stderr[-3000:]
    assert not (out / "checkpoints" / "task_2_ImageNet.plan").exists()
    proc = dymoe_cli(out, SETTINGS, kill)  # plans task 2 again, then is killed at its second training step
    assert proc.returncode == -signal.SIGKILL and train.exists(), proc.stderr[-3000:]
    assert (out / "checkpoints" / "task_2_ImageNet.plan" / "plan.json").is_file()
    assert not (out / "checkpoints" / "task_2_ImageNet").exists()
    proc = dymoe_cli(out, SETTINGS, kill)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "planning phase loaded" in proc.stderr
    for rel in ["matrix.json", "variants/oracle/matrix.json", "variants/last_router/matrix.json",
                "predictions/ImageNet/after_2.jsonl", "predictions/ScienceQA/after_2.jsonl",
                "checkpoints/task_2_ImageNet.plan/plan_state.safetensors",
                "checkpoints/task_2_ImageNet/adapter.safetensors",
                "checkpoints/task_2_ImageNet/method_state.safetensors"]:
        assert (out / rel).read_bytes() == (finished / rel).read_bytes(), rel
