"""The growable layer: forward vs a loop over its own experts, growth, freezing, folding, pruning, masks, observers."""

import pytest
import torch
import torch.nn as nn

from dymoe.layers.context import RoutingContext
from dymoe.layers.functional import moe_lora_delta_reference, route, router_scores
from dymoe.layers.moe_lora import MoELoRALinear


def make_layer(router="cosine", top_k=3, temperature=0.5, groups=(4,), rank=2, dtype=torch.float64, dropout=0.0):
    base = nn.Linear(10, 7, dtype=dtype)
    layer = MoELoRALinear(base, alpha=8.0, bank_rank=8, top_k=top_k, router=router, temperature=temperature, dropout=dropout)
    for gid, n in enumerate(groups):
        layer.add_group(gid, n, rank)
        with torch.no_grad():  # non-zero B so the experts matter
            layer.lora_B.normal_()
        if gid < len(groups) - 1:
            layer.fold()
    return layer


def loop_output(layer, x):
    """The layer's output recomputed with a per-expert loop over its bank and a naive routing."""
    a, b, u = (t.detach() for t in layer.bank())
    x2 = x.reshape(-1, layer.in_features)
    s = router_scores(x2, u, layer.router_mode, layer.cos_scale)
    w = route(s, layer.top_k, layer.temperature, dense_ones=layer.router_mode == "none").to(x.dtype)
    offs = [0, *torch.cumsum(layer.expert_rank, 0).tolist()]
    a_list = [a[offs[i] : offs[i + 1]] for i in range(layer.num_experts)]
    b_list = [b[:, offs[i] : offs[i + 1]] for i in range(layer.num_experts)]
    delta = moe_lora_delta_reference(x2, a_list, b_list, w, layer.scaling)
    return layer.base(x) + delta.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("router,top_k", [("cosine", 3), ("cosine", 99), ("linear", 2), ("none", 99)])
def test_forward_matches_loop_over_experts(router, top_k):
    layer = make_layer(router=router, top_k=top_k, groups=(3, 4))
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), loop_output(layer, x), atol=1e-10, rtol=1e-10)


def test_new_group_with_zero_b_adds_nothing_when_masked_out():
    """A routed layer's new B=0 group changes nothing once its experts get no routing mass.

    (Unmasked, new router rows do take softmax mass from old experts: that is routing drift, not a bug.)
    """
    layer = make_layer(groups=(4,), top_k=99)
    layer.fold()
    x = torch.randn(3, 4, 10, dtype=torch.float64)
    before = layer(x)
    layer.add_group(1, 4, 2)
    assert layer.num_experts == 8 and layer.has_trainable_group and torch.count_nonzero(layer.lora_B) == 0
    layer.context.group_mask = torch.tensor([[True, False]] * 3)
    # equal up to summation order (the bank is longer by exact zeros; gates are fp32)
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)


def test_new_group_with_zero_b_is_a_noop_with_dense_ones_router():
    # with router "none" every expert has weight 1, so an added B=0 expert cannot change anything
    layer = make_layer(router="none", groups=(1,), rank=4)
    layer.fold()
    x = torch.randn(3, 4, 10, dtype=torch.float64)
    before = layer(x)
    layer.add_group(1, 1, 4)
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)


def test_first_group_is_a_noop_for_the_base():
    base = nn.Linear(10, 7, dtype=torch.float64)
    layer = MoELoRALinear(base, top_k=16, dropout=0.0)
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    ref = base(x)
    layer.add_group(0, 16, 4)
    assert torch.equal(layer(x), ref)


def test_training_new_group_leaves_base_and_frozen_bit_identical():
    layer = make_layer(groups=(3, 3), dtype=torch.float32, dropout=0.1)
    frozen = {n: getattr(layer, n).detach().clone() for n in ("frozen_A", "frozen_B", "frozen_router")}
    w0 = layer.base.weight.detach().clone()
    b0 = layer.base.bias.detach().clone()
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(layer.lora_A), id(layer.lora_B), id(layer.router)}
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    start = layer.lora_A.detach().clone()
    for _ in range(5):
        loss = layer(torch.randn(4, 6, 10)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(layer.lora_A, start)
    for n, t in frozen.items():
        assert torch.equal(getattr(layer, n), t), n
    assert torch.equal(layer.base.weight, w0) and torch.equal(layer.base.bias, b0)


def test_fold_keeps_outputs_and_freezes():
    layer = make_layer(groups=(3, 4))
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    before = layer(x)
    layer.fold()
    assert not layer.has_trainable_group and layer.num_frozen == 7
    assert layer.lora_A.numel() == 0 and not layer.frozen_A.requires_grad
    assert torch.equal(layer(x), before)


def test_prune_removes_exactly_the_named_experts():
    layer = make_layer(groups=(3, 4), rank=2)
    ids = layer.expert_id.tolist()
    a, b, u = (t.detach().clone() for t in layer.bank())
    drop = [ids[1], ids[5]]  # one frozen, one trainable
    layer.prune(drop)
    assert layer.expert_id.tolist() == [i for i in ids if i not in drop]
    assert layer.num_experts == 5 and layer.num_frozen == 2
    keep_e = [k for k, i in enumerate(ids) if i not in drop]
    keep_slots = [2 * k + j for k in keep_e for j in range(2)]
    a2, b2, u2 = layer.bank()
    assert torch.equal(a2, a[keep_slots]) and torch.equal(b2, b[:, keep_slots]) and torch.equal(u2, u[keep_e])
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), loop_output(layer, x))
    with pytest.raises(ValueError, match="no experts with ids"):
        layer.prune([999])


def test_frozen_group_added_between_is_placed_before_trainable():
    layer = make_layer(groups=(2,))
    layer.add_group(5, 3, 2, trainable=False)
    assert layer.expert_group.tolist() == [5, 5, 5, 0, 0]
    assert layer.expert_trainable.tolist() == [False] * 3 + [True] * 2


def test_group_mask_restricts_samples():
    layer = make_layer(groups=(3, 3), top_k=99)
    ctx = layer.context
    x = torch.randn(2, 4, 10, dtype=torch.float64)
    ctx.group_mask = torch.tensor([[True, False], [False, True]])
    seen = []
    ctx.observers.append(seen.append)
    ctx.recording = True
    layer(x)
    w = seen[0].weights.reshape(2, 4, 6)
    assert torch.all(w[0, :, 3:] == 0) and torch.all(w[1, :, :3] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, dtype=torch.float32))


def test_policy_and_observer_see_raw_and_adjusted_scores():
    layer = make_layer(groups=(2, 2), top_k=99)

    def only_old(scores, lyr):
        return scores.masked_fill(lyr.trainable_mask, float("-inf"))

    events = []
    layer.context.policy = only_old
    layer.context.observers.append(events.append)
    layer.context.recording = True
    layer.context.attention_mask = torch.tensor([[1, 1, 0]])
    layer(torch.randn(1, 3, 10, dtype=torch.float64))
    (ev,) = events
    assert torch.isfinite(ev.scores).all()
    assert torch.isinf(ev.adjusted[:, 2:]).all() and torch.all(ev.weights[:, 2:] == 0)
    assert ev.token_mask.tolist() == [True, True, False]
    layer.context.recording = False
    layer(torch.randn(1, 3, 10, dtype=torch.float64))
    assert len(events) == 1  # not recording: observers not called


def test_masked_tokens_give_no_gradient_to_new_experts():
    layer = make_layer(groups=(2, 2), top_k=99)
    layer.context.policy = lambda s, lyr: s.masked_fill(lyr.trainable_mask, float("-inf"))
    layer(torch.randn(2, 3, 10, dtype=torch.float64)).sum().backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.router.grad) == 0


def test_bf16_forward_close_to_fp32():
    layer = make_layer(groups=(3, 3), dtype=torch.float32)
    x = torch.randn(2, 5, 10)
    ref = layer(x)
    layer.to(torch.bfloat16)
    out = layer(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_structure_roundtrip():
    layer = make_layer(groups=(3, 4))
    layer.prune([layer.expert_id.tolist()[0]])
    other = MoELoRALinear(nn.Linear(10, 7, dtype=torch.float64), alpha=8.0, bank_rank=8, top_k=3)
    other.load_structure(layer.structure())
    for n in ("frozen_A", "frozen_B", "frozen_router", "lora_A", "lora_B", "router"):
        assert getattr(other, n).shape == getattr(layer, n).shape, n
    assert other.structure() == layer.structure()
    assert isinstance(layer.context, RoutingContext)


def test_router_none_has_no_router_rows_and_draws_the_same_init(tmp_path):
    """Router "none" keeps rows of width 0: nothing untrained is trainable (DDP would wait for its gradient); the
    initialisation consumes the same random numbers, so A is the one a scoring router's layer gets."""
    from safetensors.torch import load_file, save_file

    from dymoe.injection import AdapterConfig, ExpertAdapter
    from dymoe.injection.state import load_adapter_into, save_adapter

    torch.manual_seed(0)
    none = make_layer(router="none", groups=(1, 1), rank=3)
    torch.manual_seed(0)
    cosine = make_layer(router="cosine", groups=(1, 1), rank=3)
    assert none.router.shape == (1, 0) and none.frozen_router.shape == (1, 0) and not none.router.requires_grad
    assert torch.equal(none.lora_A, cosine.lora_A) and torch.equal(none.frozen_A, cosine.frozen_A)
    assert sum(p.numel() for p in none.parameters() if p.requires_grad) == 3 * (10 + 7)  # r·(d_in + d_out)
    # a checkpoint written before (unused [E, d_in] router rows) still loads
    cfg = AdapterConfig(experts_per_group=1, expert_rank=3, router="none", top_k=1)
    save_adapter(ExpertAdapter(None, {"m": none}, none.context, cfg), tmp_path / "ckpt")
    tensors = load_file(str(tmp_path / "ckpt" / "adapter.safetensors"))
    tensors["m.router"], tensors["m.frozen_router"] = torch.ones(1, 10), torch.ones(1, 10)
    save_file(tensors, str(tmp_path / "ckpt" / "adapter.safetensors"), metadata={"format": "dymoe-adapter"})
    fresh = MoELoRALinear(nn.Linear(10, 7, dtype=torch.float64), alpha=8.0, bank_rank=8, router="none")
    load_adapter_into(ExpertAdapter(None, {"m": fresh}, fresh.context, cfg), tmp_path / "ckpt")
    assert fresh.router.shape == (1, 0) and torch.equal(fresh.lora_A, none.lora_A)
