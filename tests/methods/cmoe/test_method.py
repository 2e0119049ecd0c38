"""CMoE's plugin on the tiny backbone, in process: PGKE's probes (init = mean of the old experts, bit for bit), the
copies (= their source, bit for bit), probes that leave no trace (the same adapter as a run that applies the same
decision without probing), the per-sample router bank against one sample at a time, and PTL's feature at training
and at generation time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dymoe.config import load_config
from dymoe.methods.base import TaskInfo
from dymoe.methods.cmoe.method import PROBE_GROUP, CMoE, last_prompt_features

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"
SETTINGS = [
    "method.name=cmoe",
    "benchmark.order=[ScienceQA, ImageNet]",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=4",
    "evaluation.metric=cmoe",
    "trackers=[]",
    "method.initial_experts=4",
]


def _run(tmp_path: Path, name: str):
    from dymoe.runner.continual import ContinualRun

    run = ContinualRun(load_config(SMOKE, SETTINGS), tmp_path / name)
    run.setup()
    return run


def _info(run, k: int) -> TaskInfo:
    task = run.tasks[k]
    return TaskInfo(index=k, name=task.name, num_tasks=len(run.tasks), train_samples=run.train_set(task))


def _first_task(run) -> None:
    """Task 1 without training: the initial experts with non-zero tensors (a seeded draw), folded."""
    method = run.method
    torch.manual_seed(0)
    method.before_task(_info(run, 0))
    with torch.no_grad():
        for p in run.adapter.trainable_parameters():
            p.normal_(0, 0.5)
    method.after_task(_info(run, 0))
    method.primitives = torch.tensor([[0.0, 1.0]], dtype=torch.float64)


def _tensors(adapter) -> dict[str, torch.Tensor]:
    return {k: t.detach().clone() for k, t in adapter.named_tensors()}


def test_the_layer_is_the_papers(tmp_path, cache_env):
    run = _run(tmp_path, "layer")
    names = list(run.adapter.modules)
    assert [n.rsplit(".", 1)[1] for n in names] == ["gate_proj", "up_proj"] * 2  # 2 decoder layers
    lead, follow = run.adapter.modules[names[0]], run.adapter.modules[names[1]]
    assert lead.router_bank is not None and follow.route_role == "follower" and follow.router_bank is None
    assert lead.top_k == 2 and lead.router_mode == "linear" and lead.temperature == 1.0
    assert lead.scaling == 2.0  # alpha / rank per expert (alpha defaults to 2 x the rank, the paper's 128 / 64)
    assert [b[0] for b in run.method.blocks] == [names[0], names[2]]


def test_probes_copies_and_no_trace(tmp_path, cache_env):
    from dymoe.runner.planning import Planner

    run = _run(tmp_path, "probed")
    _first_task(run)
    adapter, method = run.adapter, run.method
    # probe init: the mean of the old group, bit for bit
    for name, layer in adapter.modules.items():
        e, r = layer.num_experts, layer.expert_rank[0].item()
        ids = adapter.add_group(PROBE_GROUP, num_experts=1, modules=[name], init="mean")[name]
        assert ids == [e]
        assert torch.equal(layer.lora_A, layer.frozen_A.reshape(e, r, -1).float().mean(0))
        assert torch.equal(layer.lora_B, layer.frozen_B.reshape(layer.out_features, e, r).float().mean(1))
        layer.prune(ids)
    before, structure = _tensors(adapter), adapter.structure()
    info = _info(run, 1)
    method.plan(info, Planner(run, info))
    # the probes and the probe router leave no trace: every tensor and the structure as before (only the expert-id
    # counter moved on, so that probe ids are never reused)
    after = _tensors(adapter)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    strip = lambda s: {m: {k: v for k, v in d.items() if k != "next_expert_id"} for m, d in s.items()}  # noqa: E731
    assert strip(adapter.structure()) == strip(structure)
    decision = {k: v.clone() for k, v in method.plan_out.items()}
    assert decision["pgke.n_new"].shape == (2,)
    torch.manual_seed(1)
    method.before_task(info)
    # the copies equal their source, bit for bit (the most activated expert, or a trained probe kept in the plan)
    for b, (_lead, members) in enumerate(method.blocks):
        n, src = int(decision["pgke.n_new"][b]), int(decision["pgke.source"][b])
        for m in members:
            layer = adapter.modules[m]
            assert layer.groups == ([0, 1] if n else [0])
            if not n:
                continue
            r = layer.expert_rank[0].item()
            new_a = layer.lora_A.reshape(n, r, -1)
            if f"copy.{m}.A" in decision:
                src_a = decision[f"copy.{m}.A"][0]
            else:
                src_a = layer.frozen_A.reshape(-1, r, layer.in_features)[src]
            assert all(torch.equal(new_a[j], src_a) for j in range(n))
    # a run that applies the same decision without probing ends with the same adapter (structure up to the ids)
    run2 = _run(tmp_path, "unprobed")
    _first_task(run2)
    run2.method.plan_out = decision
    torch.manual_seed(1)
    run2.method.before_task(_info(run2, 1))
    t1, t2 = _tensors(adapter), _tensors(run2.adapter)
    assert t1.keys() == t2.keys() and all(torch.equal(t1[k], t2[k]) for k in t1)

    def shape(s):
        return {m: {k: v for k, v in d.items() if k in ("expert_group", "expert_rank", "expert_trainable")}
                for m, d in s.items()}

    assert shape(adapter.structure()) == shape(run2.adapter.structure())
    # old experts and router 0 untouched by the growth; router 1 open with router 0's rows for the old experts
    for lead, _ in method.blocks:
        bank = adapter.modules[lead].router_bank
        assert bank.router_ids == [0, 1] and bank.current.requires_grad
        old = len(bank.rows_of(0))
        assert torch.equal(bank.current[:old], bank.frozen)


def test_router_bank_per_sample_equals_one_sample_at_a_time(tmp_path, cache_env):
    run = _run(tmp_path, "bank")
    _first_task(run)
    method, adapter = run.method, run.adapter
    method.plan_out = {"pgke.n_new": torch.tensor([1, 2]), "pgke.source": torch.tensor([0, 3])}
    torch.manual_seed(2)
    method.before_task(_info(run, 1))
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    method.after_task(_info(run, 1))
    samples = run.train_set(run.tasks[0])[:3]
    batch = run.trainer.collator(samples)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in ("labels",)}
    inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    run.model.eval()
    ids = torch.tensor([1, 0, 1])
    ctx = adapter.context
    with torch.no_grad(), ctx.use(router_ids=ids):
        together = run.model(**inputs).logits
    for b in range(3):
        one = run.trainer.collator([samples[b]])
        one = {k: v for k, v in one.items() if k in ("input_ids", "attention_mask", "pixel_values")}
        with torch.no_grad(), ctx.use(router_ids=ids[b: b + 1]):
            alone = run.model(**one).logits[0]
        n = int(one["attention_mask"].sum())
        torch.testing.assert_close(together[b, :n], alone[:n], atol=1e-5, rtol=1e-5)
    # and the two routers do route differently (router 1 reaches the task-2 experts)
    with torch.no_grad(), ctx.use(router_ids=torch.tensor([0, 0, 0])):
        zero = run.model(**inputs).logits
    assert not torch.allclose(zero[0], together[0], atol=1e-4)


def test_ptl_feature_is_the_same_at_training_and_at_generation(tmp_path, cache_env):
    """The last prompt token's feature from a training batch (prompt + answer, right padded) equals the one from
    a generation batch (prompt only, left padded), so the VAEs score at test time what they were trained on."""
    from dymoe.data.coin import TestSample
    from dymoe.data.collate import build_generation_batch

    run = _run(tmp_path, "feat")
    run.model.eval()
    samples = run.train_set(run.tasks[0])[:3]
    train = run.trainer.collator(samples)
    train = {k: v for k, v in train.items() if k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    with run.adapter.context.use(bypass=True):
        f_train = last_prompt_features(run.model, train, left_padded=False)
        questions = [TestSample(question_id=s.id, image=s.image, prompt=s.turns[0][0], reference={}) for s in samples]
        gen = build_generation_batch(run.processor, questions, max_length=run.cfg.evaluation.max_length)
        gen = {k: v for k, v in gen.items() if k in ("input_ids", "attention_mask", "pixel_values")}
        f_gen = last_prompt_features(run.model, gen, left_padded=True)
    torch.testing.assert_close(f_train, f_gen, atol=1e-4, rtol=1e-4)
    assert isinstance(run.method, CMoE)


def test_options_are_checked():
    from dymoe.errors import ConfigError
    from dymoe.methods import build_method

    with pytest.raises(ConfigError, match="targets"):
        build_method({"name": "cmoe", "targets": "q_proj"})
    with pytest.raises(ConfigError, match="variants"):
        build_method({"name": "cmoe", "variants": ["every_layer"]})
    m = build_method({"name": "cmoe", "variants": ["oracle", "last_router", "random_router"]})
    assert m.evaluation_variants == ("oracle", "last_router", "random_router") and m.immediate_variant == "oracle"
    assert build_method({"name": "cmoe", "variants": []}).immediate_variant is None
