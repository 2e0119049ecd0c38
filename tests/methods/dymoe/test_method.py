"""The ``dymoe`` plugin on real expert layers and a tiny in-memory LLaVA: TAG's effect on routing and gradients,
loss wiring (module mean, weights, ramp, task 1), inference unchanged, IncMoELoRA parity, pruning, task router,
shipped configs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from dymoe.config import load_config
from dymoe.errors import ConfigError, DymoeError
from dymoe.injection import AdapterConfig, ExpertAdapter, inject
from dymoe.layers.context import RoutingContext
from dymoe.layers.functional import router_scores
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.methods import DyMoE, IncMoELoRA, StepInfo, TaskInfo, build_method
from dymoe.methods.dymoe.functional import (
    analysis_mask,
    load_balance_loss,
    rsr_losses,
    tag_decision,
    tag_mask,
)
from dymoe.models.tiny import preset_config

IMG = 4  # image token id of the tiny preset
REPO = Path(__file__).resolve().parents[3]

# all regularisers off: IncMoELoRA
OFF = dict(tag=False, rsr_exc=0.0, rsr_spe=0.0, aux_type="none")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(preset_config("test", 512)).eval()


def adapter_cfg(**kw):
    base = dict(experts_per_group=4, expert_rank=2, top_k=3, alpha=8.0, dropout=0.05, temperature=0.1)
    base.update(kw)
    return AdapterConfig(**base)


def make_batch(seed, lo=10, hi=500, batch=2, text=12):
    """A training batch: <s>, 16 image tokens, text, the last 4 real tokens are the answer; sample 0 right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(lo, hi, (batch, 1 + 16 + text), generator=g)
    ids[:, 0] = 1
    ids[:, 1:17] = IMG
    am = torch.ones_like(ids)
    am[0, -3:] = 0
    ids[0, -3:] = 3
    labels = torch.full_like(ids, -100)
    labels[0, -7:-3] = ids[0, -7:-3]
    labels[1:, -4:] = ids[1:, -4:]
    return {"input_ids": ids, "attention_mask": am, "labels": labels,
            "pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}


class FakeTrainer:
    """What a method may use of the runner's trainer: ``iter_batches``."""

    def __init__(self, batches):
        self.batches, self.calls = batches, 0

    def iter_batches(self, n, batch_size=None, seed=0):
        self.calls += 1
        yield from self.batches[:n]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny GEMMs: one thread is ~100x faster than two when the machine is shared (OpenMP spin-waits)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_task(model, adapter, method, index, batches, *, lr=5e-3, num_tasks=2, finish=True):
    """The runner's per-task protocol, reduced to a plain loop; returns the loss terms of each step.

    ``finish=False`` stops before ``after_task`` (the new group stays trainable, as during the task).
    """
    info = TaskInfo(index=index, name=f"task{index}", num_tasks=num_tasks, total_steps=len(batches))
    method.before_task(info)
    opt = torch.optim.AdamW(adapter.trainable_parameters() + method.extra_parameters(), lr=lr)
    ctx = adapter.context
    model.train()
    logs = []
    for step, batch in enumerate(batches):
        ctx.policy = method.routing_policy("train")
        ctx.group_mask = method.group_mask(batch, "train")
        ctx.recording = True
        method.on_forward_start()
        out = model(**batch)
        terms = method.loss_terms(batch, out, StepInfo(step, len(batches)))
        ctx.recording = False
        loss = out.loss + sum(terms.values()) if terms else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        logs.append({k: v.detach() for k, v in terms.items()})
    ctx.policy, ctx.group_mask = None, None
    model.eval()
    if finish:
        method.after_task(info, FakeTrainer(batches))
    return logs


def setup(method, seed=0, **cfg):
    model = tiny_model(seed)
    adapter = inject(model, method.configure_adapter(adapter_cfg(**cfg)))
    method.setup(model, adapter)
    return model, adapter


BATCHES_1 = [make_batch(s) for s in range(3)]
BATCHES_2 = [make_batch(100 + s) for s in range(3)]


def eval_logits(model, adapter, method, batch):
    ctx = adapter.context
    ctx.policy = method.routing_policy("eval")
    ctx.group_mask = method.group_mask(batch, "eval")
    try:
        with torch.no_grad():
            return model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        ctx.policy, ctx.group_mask = None, None


# ---------------------------------------------------------------------------- TAG on a layer
def two_group_layer():
    torch.manual_seed(3)
    layer = MoELoRALinear(nn.Linear(12, 9, dtype=torch.float64), alpha=8.0, bank_rank=8, top_k=4, router="cosine",
                          temperature=0.1, dropout=0.0)
    layer.add_group(0, 4, 2)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.fold()
    layer.add_group(1, 4, 2)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def layer_grads(layer, x, r):
    layer.zero_grad(set_to_none=True)
    (layer(x) * r).sum().backward()
    return {n: (getattr(layer, n).grad if getattr(layer, n).grad is not None else torch.zeros_like(getattr(layer, n)))
            for n in ("lora_A", "lora_B", "router")}


def test_tag_policy_blocks_gradients_from_masked_tokens():
    layer = two_group_layer()
    method = DyMoE()
    method.task_index = 1  # a task >= 2
    layer.context.policy = method.routing_policy("train")
    assert layer.context.policy is not None
    torch.manual_seed(4)
    x = torch.randn(64, 12, dtype=torch.float64)
    r = torch.randn(64, 9, dtype=torch.float64)
    use_new, ambiguous, _ = tag_decision(router_scores(x, layer.bank()[2], "cosine"), layer.trainable_mask, 0.2)
    assert 0 < int(use_new.sum()) < 64 and int((~use_new).sum()) > 0
    full = layer_grads(layer, x, r)
    only_new = layer_grads(layer, x[use_new], r[use_new])
    masked = layer_grads(layer, x[~use_new], r[~use_new])
    for name in full:
        assert full[name].abs().sum() > 0
        assert torch.count_nonzero(masked[name]) == 0, f"{name} got gradient from old/ambiguous tokens"
        torch.testing.assert_close(full[name], only_new[name], atol=1e-12, rtol=1e-10)
    # each router row separately: none receives anything from the masked tokens
    assert (masked["router"].abs().sum(1) == 0).all() and (full["router"].abs().sum(1) > 0).any()
    # without the policy the same tokens do train the new group (the test above can fail)
    layer.context.policy = None
    assert layer_grads(layer, x[~use_new], r[~use_new])["router"].abs().sum() > 0


def test_policy_is_off_on_task_one_and_at_inference():
    method = DyMoE()
    method.task_index = 0
    assert method.routing_policy("train") is None
    method.task_index = 3
    assert method.routing_policy("train") is not None
    assert method.routing_policy("eval") is None
    off = DyMoE(DyMoE.Options(tag=False))
    off.task_index = 1
    assert off.routing_policy("train") is None
    analysis = DyMoE(DyMoE.Options(tag=False, token_mask_mode="only_new"))
    analysis.task_index = 1
    assert analysis.routing_policy("train") is not None


# ---------------------------------------------------------------------------- two tasks on a tiny LLaVA
def test_two_task_smoke_routing_stats_and_frozen_bank():
    method = DyMoE(DyMoE.Options(rsr_start=0.0))
    assert not method.track_token_types  # off unless an analysis reads them (a per-step cost)
    method.track_token_types = True
    model, adapter = setup(method)
    seen = []
    adapter.context.observers.append(lambda ev: seen.append((ev.layer.trainable_mask.clone(), ev.weights.detach())))
    logs1 = train_task(model, adapter, method, 0, BATCHES_1)
    assert all(set(t) == {"aux", "rsr_exc", "rsr_spe"} for t in logs1)
    assert all(t["rsr_exc"].item() == 0 and t["rsr_spe"].item() == 0 for t in logs1)  # task 1: no RSR
    assert all(t["aux"].item() > 0 for t in logs1)
    assert method.token_stats.total == {}  # no old group on task 1
    assert all(not m.has_trainable_group and m.num_experts == 4 for m in adapter.modules.values())
    frozen = {n: [getattr(m, k).clone() for k in ("frozen_A", "frozen_B", "frozen_router")]
              for n, m in adapter.modules.items()}
    seen.clear()
    logs2 = train_task(model, adapter, method, 1, BATCHES_2)
    assert all(t["rsr_exc"].item() > 0 and t["rsr_spe"].item() > 0 for t in logs2)
    # TAG (two-sided): during task 2 every token's routing mass lies in exactly one group
    assert len(seen) == 14 * 3
    for new_mask, w in seen:
        on_new, on_old = w[:, new_mask].sum(1) > 0, w[:, ~new_mask].sum(1) > 0
        assert (on_new ^ on_old).all()
    # the old bank did not move; the folded bank is old + new
    for n, m in adapter.modules.items():
        a, b, u = frozen[n]
        assert torch.equal(m.frozen_A[: a.shape[0]], a) and torch.equal(m.frozen_B[:, : b.shape[1]], b)
        assert torch.equal(m.frozen_router[: u.shape[0]], u) and m.num_experts == 8
    fr = method.token_stats.fractions()
    assert set(fr) == set(adapter.modules)
    for f in fr.values():
        assert sum(f.values()) == pytest.approx(1.0)
    # the step counts cover the non-pad tokens of the last batch
    n_real = int(BATCHES_2[-1]["attention_mask"].sum())
    assert all(int(c.sum()) == n_real for c in method.token_stats.step.values())
    # after the fold, an analysis pass types tokens against the last folded group
    method.token_stats.reset()
    adapter.context.recording = True
    eval_logits(model, adapter, method, BATCHES_2[0])
    adapter.context.recording = False
    n_real = int(BATCHES_2[0]["attention_mask"].sum())
    assert set(method.token_stats.total) == set(adapter.modules)
    assert all(int(c.sum()) == n_real for c in method.token_stats.total.values())


def test_loss_terms_are_module_means_weighted_and_ramped():
    method = DyMoE(DyMoE.Options(rsr_exc=2e-3, rsr_spe=5e-3, aux_weight=3e-3, aux_type="cv2"))
    model, adapter = setup(method)
    train_task(model, adapter, method, 0, BATCHES_1[:1])
    method.before_task(TaskInfo(1, "task1", 2))
    with torch.no_grad():
        for m in adapter.modules.values():
            m.lora_B.normal_(std=0.1)
    events = []
    adapter.context.observers.append(events.append)
    batch = BATCHES_2[0]
    ctx = adapter.context
    ctx.policy, ctx.group_mask = method.routing_policy("train"), method.group_mask(batch, "train")
    ctx.recording = True
    method.on_forward_start()
    out = model(**batch)
    ctx.recording = False
    exp_exc = exp_spe = exp_aux = 0.0
    for ev in events:
        e, s = rsr_losses(ev.scores, ev.layer.trainable_mask, ev.token_mask, 3, 0.1)
        exp_exc, exp_spe = exp_exc + e.item(), exp_spe + s.item()
        exp_aux += load_balance_loss(ev.scores, ev.layer.trainable_mask, ev.token_mask, 3, 0.1, "cv2").item()
    stash = list(method._events)
    terms = method.loss_terms(batch, out, StepInfo(3, 4))  # progress .75 -> ramp .5
    assert terms["rsr_exc"].item() == pytest.approx(2e-3 * 0.5 * exp_exc / 14, rel=1e-5)
    assert terms["rsr_spe"].item() == pytest.approx(5e-3 * 0.5 * exp_spe / 14, rel=1e-5)
    assert terms["aux"].item() == pytest.approx(3e-3 * exp_aux / 14, rel=1e-5)
    assert terms["rsr_spe"].requires_grad and terms["aux"].requires_grad
    method._events = stash
    early = method.loss_terms(batch, out, StepInfo(1, 4))  # before the ramp
    assert early["rsr_exc"].item() == 0 and early["rsr_spe"].item() == 0 and early["aux"].item() > 0
    # token scope "answer": the means run over answer tokens only
    method.options.reg_token_scope = "answer"
    method._events = stash
    answer = (batch["labels"] != -100).reshape(-1)
    exp_ans = sum(rsr_losses(ev.scores, ev.layer.trainable_mask, ev.token_mask & answer, 3, 0.1)[0].item()
                  for ev in events)
    terms = method.loss_terms(batch, out, StepInfo(4, 4))
    assert terms["rsr_exc"].item() == pytest.approx(2e-3 * exp_ans / 14, rel=1e-5)
    assert exp_ans != pytest.approx(exp_exc, rel=1e-3)


def _task2_events(method):
    """Routing events of one task-2 training forward (no backward)."""
    model, adapter = setup(method)
    train_task(model, adapter, method, 0, BATCHES_1[:1])
    method.before_task(TaskInfo(1, "task1", 2))
    events = []
    adapter.context.observers.append(events.append)
    batch = BATCHES_2[0]
    ctx = adapter.context
    ctx.policy, ctx.group_mask = method.routing_policy("train"), method.group_mask(batch, "train")
    ctx.recording = True
    with torch.no_grad():
        model(**batch)
    ctx.recording, ctx.policy = False, None
    return events, batch


@pytest.mark.parametrize("mode", ["only_new", "mask_old", "only_ambiguous", "none"])
def test_analysis_modes_replace_tag_in_training(mode):
    events, _ = _task2_events(DyMoE(DyMoE.Options(token_mask_mode=mode)))
    assert len(events) == 14
    for ev in events:
        assert torch.equal(ev.adjusted, analysis_mask(ev.scores, ev.layer.trainable_mask, 0.2, mode))


def test_tag_scope_answer_only_masks_answer_tokens():
    events, batch = _task2_events(DyMoE(DyMoE.Options(tag_scope="answer")))
    answer = (batch["labels"] != -100).reshape(-1)
    for ev in events:
        expected = tag_mask(ev.scores, ev.layer.trainable_mask, 0.2)
        assert torch.equal(ev.adjusted[answer], expected[answer])
        assert torch.equal(ev.adjusted[~answer], ev.scores[~answer])


def test_inference_is_identical_with_tag_on_or_off():
    on, off = DyMoE(), DyMoE(DyMoE.Options(**OFF))
    model, adapter = setup(on)
    off.setup(model, adapter)
    train_task(model, adapter, on, 0, BATCHES_1[:2])
    train_task(model, adapter, on, 1, BATCHES_2[:2], finish=False)  # mid-task: the new group is still open
    off.task_index = 1
    batch = BATCHES_2[0]
    ref = eval_logits(model, adapter, on, batch)
    assert torch.equal(ref, eval_logits(model, adapter, off, batch))
    # the training policy does change the outputs (so TAG is really switched off at inference)
    adapter.context.policy = on.routing_policy("train")
    with torch.no_grad():
        trained_route = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    adapter.context.policy = None
    assert not torch.allclose(trained_route, ref)
    # and after the task-end fold the eval outputs are unchanged (the fold is exact)
    on.after_task(TaskInfo(1, "task1", 2), FakeTrainer(BATCHES_2))
    torch.testing.assert_close(eval_logits(model, adapter, on, batch), ref, atol=1e-6, rtol=1e-5)


def _run_two_tasks(method, seed=0, **cfg):
    model, adapter = setup(method, seed=seed, **cfg)
    torch.manual_seed(123)  # dropout draws
    train_task(model, adapter, method, 0, BATCHES_1)
    train_task(model, adapter, method, 1, BATCHES_2)
    return {n: t.detach().clone() for n, t in adapter.named_tensors()}


def test_incmoelora_equals_dymoe_with_everything_off():
    ref = _run_two_tasks(IncMoELoRA())
    off = _run_two_tasks(DyMoE(DyMoE.Options(**OFF)))
    assert ref.keys() == off.keys()
    for k in ref:
        assert torch.equal(ref[k], off[k]), k
    full = _run_two_tasks(DyMoE(DyMoE.Options(rsr_start=0.0)))
    assert any(not torch.equal(ref[k], full[k]) for k in ref)


def test_degenerate_switch_loss_trains_exactly_like_incmoelora():
    """The ablation's "+ L_aux" row with top-K covering the new group (the papers' 16 of 16, the demo's 4 of 4):
    the Switch loss is the constant 1 with zero gradient, so the adapter is bit-identical to IncMoELoRA's."""
    aux_only = {**OFF, "aux_type": "switch", "aux_weight": 1e-3}
    ref = _run_two_tasks(IncMoELoRA(), top_k=4)
    aux = _run_two_tasks(DyMoE(DyMoE.Options(**aux_only)), top_k=4)
    assert all(torch.equal(ref[k], aux[k]) for k in ref)
    # with top-3 of 4 new experts the loss is not constant and does change the router
    ref3 = _run_two_tasks(IncMoELoRA(), top_k=3)
    aux3 = _run_two_tasks(DyMoE(DyMoE.Options(**{**aux_only, "aux_weight": 1.0})), top_k=3)
    assert any(not torch.equal(ref3[k], aux3[k]) for k in ref3)


# ---------------------------------------------------------------------------- pruning
def test_pruning_removes_the_least_activated_fraction_per_module():
    method = DyMoE(DyMoE.Options(prune_fraction=0.25, prune_stat_batches=2))
    model, adapter = setup(method, experts_per_group=8)
    hits = {}  # independent count: per module, per forward, top-K hits over non-pad tokens
    names = {id(m): n for n, m in adapter.modules.items()}
    adapter.context.observers.append(
        lambda ev: hits.setdefault(names[id(ev.layer)], []).append(
            ((ev.weights > 0) & ev.token_mask[:, None]).sum(0).tolist()
        )
    )
    train_task(model, adapter, method, 0, BATCHES_1)  # 3 forwards, the last 2 count
    for name, m in adapter.modules.items():
        per_forward = hits[name][-2:]
        count = [sum(c[i] for c in per_forward) for i in range(8)]
        drop = sorted(range(8), key=lambda i: (count[i], i))[:2]
        expected = [i for i in range(8) if i not in drop]  # each layer numbers its experts from 0
        assert m.expert_id.tolist() == expected, name
        assert m.num_experts == 6 and not m.has_trainable_group
    # the next task trains with per-module bank sizes 6 + 8 and prunes only its own group
    first = {n: m.expert_id.tolist() for n, m in adapter.modules.items()}
    train_task(model, adapter, method, 1, BATCHES_2)
    for name, m in adapter.modules.items():
        assert m.expert_id.tolist()[:6] == first[name] and m.num_experts == 12


def test_pruning_without_recorded_stats_measures_with_the_trainer():
    method = DyMoE(DyMoE.Options(prune_fraction=0.125, prune_stat_batches=2))
    model, adapter = setup(method, experts_per_group=8)
    info = TaskInfo(0, "task0", 1)
    method.before_task(info)
    with pytest.raises(DymoeError, match="needs the trainer"):
        method.after_task(info, None)
    trainer = FakeTrainer(BATCHES_1)
    method.after_task(info, trainer)
    assert trainer.calls == 1
    assert all(m.num_experts == 7 for m in adapter.modules.values())


# ---------------------------------------------------------------------------- task router
def task_batches(lo, hi, n, seed):
    return [make_batch(seed + i, lo=lo, hi=hi) for i in range(n)]


def test_task_router_picks_the_task_and_restricts_groups(tmp_path):
    method = DyMoE(DyMoE.Options(task_router=True, task_router_mode="only", task_router_features="text"))
    model, adapter = setup(method)
    a, b = task_batches(10, 14, 2, 0), task_batches(400, 404, 2, 50)  # disjoint 4-token vocabularies
    train_task(model, adapter, method, 0, a)
    train_task(model, adapter, method, 1, b)
    assert method.prototypes.shape == (2, 64)
    test_a, test_b = task_batches(10, 14, 3, 900), task_batches(400, 404, 3, 950)
    for batches, task in ((test_a, 0), (test_b, 1)):
        for batch in batches:
            assert method.predict_task(batch).tolist() == [task, task]
    # only: the predicted task's group; cumulative: groups up to it
    mixed = {k: torch.cat([test_a[0][k][:1], test_b[0][k][:1]]) for k in test_a[0]}
    assert method.group_mask(mixed, "eval").tolist() == [[True, False], [False, True]]
    method.options.task_router_mode = "cumulative"
    assert method.group_mask(mixed, "eval").tolist() == [[True, False], [True, True]]
    assert method.group_mask(mixed, "train") is None
    # routing at eval follows the mask: sample 0 gives group 1 no weight
    events = []
    adapter.context.observers.append(events.append)
    adapter.context.recording = True
    eval_logits(model, adapter, method, mixed)
    adapter.context.recording = False
    for ev in events:
        w = ev.weights.reshape(2, -1, ev.weights.shape[-1])
        grp1 = ev.layer.expert_group == 1
        assert w[0][:, grp1].sum() == 0 and w[1][:, grp1].sum() > 0
    # evaluating without the group mask is an error, not a silent fallback to plain routing
    adapter.context.policy = method.routing_policy("eval")
    with pytest.raises(DymoeError, match="group mask"), torch.no_grad():
        model(**{k: v for k, v in mixed.items() if k != "labels"})
    adapter.context.policy = None
    # prototypes survive a safetensors round trip
    save_file(method.state_dict(), tmp_path / "method.safetensors")
    fresh = DyMoE(DyMoE.Options(task_router=True, task_router_features="text"))
    fresh.setup(model, adapter)
    fresh.load_state_dict(load_file(tmp_path / "method.safetensors"))
    assert torch.equal(fresh.prototypes, method.prototypes)
    assert fresh.group_mask(mixed, "eval").tolist() == [[True, False], [True, True]]
    # prototypes of one feature form cannot be read with the other
    other = DyMoE(DyMoE.Options(task_router=True, task_router_features="image_text"))
    other.setup(model, adapter)
    other.load_state_dict(load_file(tmp_path / "method.safetensors"))
    with pytest.raises(DymoeError, match="task_router_features"):
        other.group_mask(mixed, "eval")


def shared_prompt_batches(shift, n, seed):
    """Batches whose text is the same for every task (one fixed prompt and answer); only the images differ:
    pixel values around ``shift`` (task A: bright images, task B: dark ones)."""
    out = []
    for i in range(n):
        batch = make_batch(7)  # the same token ids every time
        g = torch.Generator().manual_seed(seed + i)
        batch["pixel_values"] = shift + 0.3 * torch.randn(2, 3, 16, 16, generator=g)
        out.append(batch)
    return out


@pytest.mark.parametrize("features", ["image_text", "text"])
def test_task_router_prototypes_separate_tasks_that_share_a_prompt(features):
    """Two tasks with one prompt and different image distributions: the image+text prototypes tell them apart
    on every test batch; text-only prototypes cannot (they coincide, every sample goes to the first task)."""
    method = DyMoE(DyMoE.Options(task_router=True, task_router_features=features))
    model, adapter = setup(method)
    train_task(model, adapter, method, 0, shared_prompt_batches(1.5, 2, 0), lr=0.0)
    train_task(model, adapter, method, 1, shared_prompt_batches(-1.5, 2, 50), lr=0.0)
    d = 64
    assert method.prototypes.shape == (2, 2 * d if features == "image_text" else d)
    # the runner's evaluation protocol: tell the method which test set follows, route each batch
    for index, shift in ((0, 1.5), (1, -1.5)):
        method.begin_evaluation(index, f"task{index}")
        for batch in shared_prompt_batches(shift, 3, 900 + 10 * index):
            method.group_mask(batch, "eval")
    router = method.evaluation_metrics()["task_router"]
    assert router["samples"] == {"task0": 6, "task1": 6}
    if features == "image_text":
        assert router["accuracy"] == {"task0": 100.0, "task1": 100.0} and router["mean"] == 100.0
        assert router["predicted"] == {"task0": [6, 0], "task1": [0, 6]}
    else:
        torch.testing.assert_close(method.prototypes[0], method.prototypes[1])
        assert router["accuracy"] == {"task0": 100.0, "task1": 0.0} and router["mean"] == 50.0
    # the counts are reset by reading them; nothing evaluated -> nothing reported
    assert method.evaluation_metrics() == {}


def test_task_router_image_features_by_hand():
    """The image half is the mean over the image's projected patch features, L2-normalised; the text half the
    mean input embedding over real text tokens; samples without an image get a zero image half."""
    from dymoe.methods.dymoe.task_router import task_features

    method = DyMoE(DyMoE.Options(task_router=True))
    model, _ = setup(method)
    batch = make_batch(3)
    with torch.no_grad():
        feats = task_features(model, batch, IMG, "image_text")  # [2, 128]
        proj = model.get_image_features(pixel_values=batch["pixel_values"])
        proj = getattr(proj, "pooler_output", proj)
        img = torch.stack([p.mean(0) for p in proj])  # [2, 64]
        emb = model.get_input_embeddings()(batch["input_ids"])
        # the prompt's text tokens: not padding, not image placeholders, not the answer (labelled) tokens
        txt_mask = batch["attention_mask"].bool() & (batch["input_ids"] != IMG) & (batch["labels"] == -100)
        assert txt_mask.sum(1).tolist() == [6, 9]  # <s> + 5 and <s> + 8 prompt tokens
        txt = torch.stack([emb[b][txt_mask[b]].mean(0) for b in range(2)])
    torch.testing.assert_close(feats[:, :64], torch.nn.functional.normalize(img, dim=-1))
    torch.testing.assert_close(feats[:, 64:], torch.nn.functional.normalize(txt, dim=-1))
    # a training batch gives the feature its prompt alone gives at evaluation (left-padded, no answer, no labels)
    ids, am = torch.full((2, 25), 3), torch.zeros(2, 25, dtype=torch.long)
    for b, n in enumerate((22, 25)):  # the prompt's length in tokens
        ids[b, 25 - n:], am[b, 25 - n:] = batch["input_ids"][b, :n], 1
    with torch.no_grad():
        at_eval = task_features(model, {"input_ids": ids, "attention_mask": am,
                                        "pixel_values": batch["pixel_values"]}, IMG, "image_text")
    torch.testing.assert_close(at_eval, feats)
    # a text-only sample (no image tokens) in the batch: zero image half, its text half unchanged
    text_only = {k: v.clone() for k, v in batch.items()}
    text_only["input_ids"][1, 1:17] = 20
    text_only["pixel_values"] = batch["pixel_values"][:1]
    with torch.no_grad():
        mixed = task_features(model, text_only, IMG, "image_text")
    assert torch.count_nonzero(mixed[1, :64]) == 0
    torch.testing.assert_close(mixed[0], feats[0])
    # several images for one sample cannot be attributed
    two = {**batch, "pixel_values": torch.cat([batch["pixel_values"]] * 2)}
    with pytest.raises(DymoeError, match="one image per sample"):
        task_features(model, two, IMG, "image_text")


def test_task_router_off_gives_no_group_mask_and_bad_state_is_rejected():
    method = DyMoE()
    assert method.state_dict() == {}
    assert method.group_mask(BATCHES_1[0], "eval") is None
    with pytest.raises(DymoeError, match="unknown keys"):
        method.load_state_dict({"fisher": torch.zeros(2)})


# ---------------------------------------------------------------------------- options and configs
def test_options_are_validated():
    with pytest.raises(ConfigError, match="method.tau"):
        build_method({"name": "dymoe", "tau": -0.1})
    with pytest.raises(ConfigError, match="aux_type"):
        build_method({"name": "dymoe", "aux_type": "gshard"})
    with pytest.raises(ConfigError, match="rsr_start"):
        build_method({"name": "dymoe", "rsr_start": 1.0})
    with pytest.raises(ConfigError, match="takes"):
        build_method({"name": "dymoe", "temperature": 0.1})
    m = build_method({"name": "dymoe", "tau": 0.1, "token_mask_mode": "mask_old"})
    assert isinstance(m, DyMoE) and m.options.tau == 0.1 and m.describe()["token_mask_mode"] == "mask_old"


def test_defaults_are_pinned():
    """The defaults, with where each comes from (a change here must be deliberate; see DyMoEOptions)."""
    o = DyMoE.Options()
    # from the paper: τ, the three loss weights
    assert (o.tau, o.rsr_exc, o.rsr_spe, o.aux_weight) == (0.2, 1e-3, 1e-3, 1e-3)
    # the paper's L_aux, in the reading that is live at 16 of 16 experts (RESULTS.md "Load balancing")
    assert o.aux_type == "switch_all"
    # from the third-party port (preset "port"): two-sided TAG, RSR ramp after half a task, T_rsr 0.1
    assert (o.preset, o.tag_two_sided, o.rsr_start, o.rsr_temperature) == ("port", True, 0.5, 0.1)
    # upstream's token scopes, no pruning, no task router
    assert (o.tag, o.tag_scope, o.reg_token_scope, o.token_mask_mode) == (True, "all", "all", "tag")
    assert (o.prune_fraction, o.task_router, o.task_router_features) == (0.0, False, "image_text")


def test_paper_preset_and_explicit_options_win():
    p = build_method({"name": "dymoe", "preset": "paper"}).options
    assert (p.tag_two_sided, p.rsr_start, p.rsr_temperature) == (False, 0.0, "route")
    # an option given explicitly wins over its preset, in either direction
    mixed = build_method({"name": "dymoe", "preset": "paper", "rsr_start": 0.25, "tag_two_sided": True}).options
    assert (mixed.tag_two_sided, mixed.rsr_start, mixed.rsr_temperature) == (True, 0.25, "route")
    port = build_method({"name": "dymoe", "rsr_temperature": 0.5}).options
    assert (port.tag_two_sided, port.rsr_start, port.rsr_temperature) == (True, 0.5, 0.5)
    with pytest.raises(ConfigError, match="preset"):
        build_method({"name": "dymoe", "preset": "upstream"})
    with pytest.raises(ConfigError, match="rsr_temperature"):
        build_method({"name": "dymoe", "rsr_temperature": "hot"})
    with pytest.raises(ConfigError, match="rsr_temperature"):
        build_method({"name": "dymoe", "rsr_temperature": 0.0})


def test_paper_preset_trains_one_sided_tag_and_full_rsr_at_the_routing_temperature():
    method = DyMoE(DyMoE.Options(preset="paper"))
    model, adapter = setup(method, temperature=0.05)
    train_task(model, adapter, method, 0, BATCHES_1[:1])
    method.before_task(TaskInfo(1, "task1", 2))
    events = []
    adapter.context.observers.append(events.append)
    batch = BATCHES_2[0]
    ctx = adapter.context
    ctx.policy, ctx.group_mask = method.routing_policy("train"), method.group_mask(batch, "train")
    ctx.recording = True
    method.on_forward_start()
    out = model(**batch)
    ctx.recording = False
    terms = method.loss_terms(batch, out, StepInfo(0, 4))  # the first step: full weight, no ramp
    exc = {t: sum(rsr_losses(ev.scores, ev.layer.trainable_mask, ev.token_mask, 3, t)[0].item() for ev in events)
           for t in (0.05, 0.1)}
    assert terms["rsr_exc"].item() == pytest.approx(1e-3 * exc[0.05] / 14, rel=1e-5)  # T_rsr = the routing T
    assert exc[0.05] != pytest.approx(exc[0.1], rel=1e-3)
    # one-sided: new-dominant tokens keep the old group too (some token routes to both groups)
    both = [((ev.weights[:, ev.layer.trainable_mask] > 0).any(1) & (ev.weights[:, ~ev.layer.trainable_mask] > 0).any(1))
            for ev in events]
    assert any(bool(b.any()) for b in both)
    port = DyMoE()
    port.task_index = 1
    scores = events[0].scores.detach()
    two = port._train_policy(scores, events[0].layer)
    assert not (torch.isfinite(two[:, :4]).any(1) & torch.isfinite(two[:, 4:]).any(1)).any()


@pytest.mark.parametrize("name,cls", [("dymoe", DyMoE), ("incmoelora", IncMoELoRA)])
def test_shipped_coin_configs_load_and_build(name, cls, tiny_llava_dir):
    path = REPO / "configs" / "coin" / f"llava-1.5-7b-{name}.yaml"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# accelerate launch") and f"configs/coin/llava-1.5-7b-{name}.yaml" in first
    cfg = load_config(path, [f"backbone.path={tiny_llava_dir}"])
    assert cfg.backbone.path == str(tiny_llava_dir)
    a = cfg.adapter
    assert (a.experts_per_group, a.expert_rank, a.top_k, a.router, a.temperature, a.effective_alpha, a.dropout) == (
        16, 4, 16, "cosine", 0.01, 128.0, 0.05)
    t = cfg.training
    assert (t.lr, t.warmup_ratio, t.schedule, t.epochs, t.max_length, t.gradient_checkpointing) == (
        2e-4, 0.03, "cosine", 1.0, 2048, True)
    assert (t.global_batch_size, t.batch_size, t.grad_accum) == (128, 16, None)  # accumulation derived per run
    assert cfg.mixed_precision == "bf16"
    assert Path(cfg.benchmark.file).resolve() == REPO / "configs" / "benchmarks" / "coin.yaml"
    method = build_method(cfg.method)
    assert type(method) is cls
    if cls is DyMoE:
        o = method.options
        assert (o.tau, o.tag, o.rsr_exc, o.rsr_spe, o.aux_weight, o.aux_type) == (0.2, True, 1e-3, 1e-3, 1e-3,
                                                                                  "switch_all")
        assert (o.preset, o.tag_two_sided, o.rsr_start, o.rsr_temperature) == ("port", True, 0.5, 0.1)


def _task2_grads(gc: bool):
    method = DyMoE(DyMoE.Options(rsr_start=0.0, aux_type="cv2", rsr_exc=0.5, rsr_spe=0.5, aux_weight=0.5))
    model, adapter = setup(method, dropout=0.0)
    train_task(model, adapter, method, 0, BATCHES_1[:1])
    method.before_task(TaskInfo(1, "task1", 2, total_steps=1))
    with torch.no_grad():
        for m in adapter.modules.values():
            m.lora_B.normal_(std=0.1)
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch, ctx = BATCHES_2[0], adapter.context
    ctx.policy, ctx.group_mask = method.routing_policy("train"), method.group_mask(batch, "train")
    ctx.recording = True
    method.on_forward_start()
    out = model(**batch)
    terms = method.loss_terms(batch, out, StepInfo(1, 1))
    ctx.recording = False
    (out.loss + sum(terms.values())).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, terms


def test_loss_terms_survive_gradient_checkpointing():
    plain, t_plain = _task2_grads(False)
    ckpt, t_ckpt = _task2_grads(True)
    assert set(t_plain) == {"aux", "rsr_exc", "rsr_spe"} and all(v.item() > 0 for v in t_plain.values())
    for k in t_plain:
        torch.testing.assert_close(t_ckpt[k], t_plain[k])
    assert plain.keys() == ckpt.keys() and plain
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5)


_PRUNE_WORKER = r"""
import json, os, sys
import torch, torch.nn as nn, torch.distributed as dist
from dymoe.injection import AdapterConfig, ExpertAdapter
from dymoe.layers.context import RoutingContext
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.methods import DyMoE
dist.init_process_group("gloo")
rank = dist.get_rank()
ctx = RoutingContext()
layer = MoELoRALinear(nn.Linear(6, 5), bank_rank=8, top_k=2, context=ctx)
layer.add_group(0, 4, 2)
adapter = ExpertAdapter(None, {"m": layer}, ctx, AdapterConfig(experts_per_group=4, expert_rank=2))
method = DyMoE(DyMoE.Options(prune_fraction=0.25, prune_stat_batches=4))
method.adapter = adapter
# this rank's own counts: 10 tokens, hits differ per rank
hits = [[5.0, 0.0, 3.0, 3.0], [0.0, 6.0, 1.0, 3.0]][rank]
w = torch.zeros(10, 4)
for e, h in enumerate(hits):
    w[: int(h), e] = 0.5
method.activation_stats.update("m", layer.expert_id, w, torch.ones(10, dtype=torch.bool))
pruned = method.prune_new_group(None)
print(json.dumps({"rank": rank, "pruned": pruned, "left": layer.expert_id.tolist()}))
dist.destroy_process_group()
"""


def _one_layer_method(hits, tokens=10):
    ctx = RoutingContext()
    layer = MoELoRALinear(nn.Linear(6, 5), bank_rank=8, top_k=2, context=ctx)
    layer.add_group(0, 4, 2)
    method = DyMoE(DyMoE.Options(prune_fraction=0.25, prune_stat_batches=4))
    method.adapter = ExpertAdapter(None, {"m": layer}, ctx, AdapterConfig(experts_per_group=4, expert_rank=2))
    w = torch.zeros(tokens, 4)
    for e, h in enumerate(hits):
        w[: int(h), e] = 0.5
    method.activation_stats.update("m", layer.expert_id, w, torch.ones(tokens, dtype=torch.bool))
    return method, layer


def test_pruning_sums_counts_over_processes(monkeypatch):
    """The all-reduce is wired in: a fake 2-process reduce adds the other rank's counts before the choice."""
    import torch.distributed as dist

    other = torch.tensor([0.0, 6.0, 1.0, 3.0, 10.0])  # the other rank: hits per expert, then its token count
    calls = []

    def fake_all_reduce(t):
        calls.append(t.clone())
        t.add_(other)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    method, layer = _one_layer_method([5.0, 0.0, 3.0, 3.0])
    # alone this rank would drop expert 1; summed hits [5, 6, 4, 6] drop expert 2
    assert method.prune_new_group(None) == {"m": [2]}
    assert layer.expert_id.tolist() == [0, 1, 3]
    assert len(calls) == 1 and calls[0].tolist() == [5.0, 0.0, 3.0, 3.0, 10.0]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DYMOE_SLOW_TESTS"), reason="~30 s: set DYMOE_SLOW_TESTS=1 to run")
def test_pruning_decision_is_shared_across_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", _PRUNE_WORKER], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    # summed hits [5, 6, 4, 6] over 20 tokens: both ranks drop expert 2 (alone, rank 0 would drop 1, rank 1 drop 0)
    assert [o["pruned"] for o in outs] == [{"m": [2]}, {"m": [2]}]
    assert [o["left"] for o in outs] == [[0, 1, 3], [0, 1, 3]]
