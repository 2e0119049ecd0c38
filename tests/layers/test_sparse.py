"""Sparse inference: the gathered live-slot path equals the dense path (and the loop oracle) for every routing mode
of :class:`MoELoRALinear`, is chosen only at inference with few tokens, and generation gives the same tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dymoe.layers.moe_lora as moe_lora_mod
from dymoe.injection import AdapterConfig, inject
from dymoe.layers.functional import (
    moe_lora_delta,
    moe_lora_delta_reference,
    moe_lora_delta_sparse,
    route,
    router_scores,
    top_experts,
)
from dymoe.layers.moe_lora import MoELoRALinear


def loop_output(layer, x):
    """The layer's output recomputed with a per-expert loop over its bank and a naive routing (own router rows, no
    context)."""
    a, b, u = (t.detach() for t in layer.bank())
    x2 = x.reshape(-1, layer.in_features)
    s = router_scores(x2, u, layer.router_mode, layer.cos_scale)
    w = route(s, layer.top_k, layer.temperature, dense_ones=layer.router_mode == "none").to(x.dtype)
    offs = [0, *torch.cumsum(layer.expert_rank, 0).tolist()]
    a_list = [a[offs[i] : offs[i + 1]] for i in range(layer.num_experts)]
    b_list = [b[:, offs[i] : offs[i + 1]] for i in range(layer.num_experts)]
    delta = moe_lora_delta_reference(x2, a_list, b_list, w, layer.scaling)
    return layer.base(x) + delta.reshape(*x.shape[:-1], -1)


def make_layer(router="cosine", top_k=3, temperature=0.5, groups=(4, 4, 4), trainable_last=True, dtype=torch.float32,
               **kw):
    torch.manual_seed(0)
    base = nn.Linear(10, 7, dtype=dtype)
    layer = MoELoRALinear(base, alpha=8.0, bank_rank=8, top_k=top_k, router=router, temperature=temperature,
                          dropout=0.0, **kw)
    for gid, n in enumerate(groups):
        layer.add_group(gid, n, 2)
        with torch.no_grad():  # non-zero B so the experts matter
            layer.lora_B.normal_()
        if gid < len(groups) - 1 or not trainable_last:
            layer.fold()
    return layer.eval()


def both_paths(layer, x):
    """(sparse, dense) outputs of the same layer on ``x``, without gradients."""
    with torch.no_grad():
        layer.sparse = "always"
        sparse = layer(x)
        layer.sparse = "never"
        dense = layer(x)
    layer.sparse = "auto"
    return sparse, dense


def test_functional_sparse_equals_dense_and_counts_only_live_slots():
    torch.manual_seed(1)
    n, e, r, k, d_in, d_out = 6, 8, 3, 3, 5, 4
    x = torch.randn(n, d_in, dtype=torch.float64)
    a, b = torch.randn(e * r, d_in, dtype=torch.float64), torch.randn(d_out, e * r, dtype=torch.float64)
    scores = torch.randn(n, e, dtype=torch.float64)
    scores[0, 2:] = float("-inf")  # a token with only two allowed experts: its third pick is a zero gate
    w = route(scores, k, 0.7)
    top_w, top_idx = top_experts(w, k)
    out = moe_lora_delta_sparse(x, a, b.t().contiguous(), top_w, top_idx, r, 0.5)
    torch.testing.assert_close(out, moe_lora_delta(x, a, b, w, r, 0.5), atol=1e-12, rtol=1e-12)
    # by hand for token 0: experts 0 and 1 only
    hand = sum(w[0, i] * (b[:, i * r : (i + 1) * r] @ (a[i * r : (i + 1) * r] @ x[0])) for i in range(2)) * 0.5
    torch.testing.assert_close(out[0], hand, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "router,top_k,trainable_last",
    [
        ("cosine", 3, True),  # top-K over frozen + trainable groups (DyMoE during a task's evaluation)
        ("cosine", 3, False),  # folded bank only (after the task)
        ("linear", 2, True),
        ("cosine", 99, True),  # soft routing: every expert, dense softmax
        ("none", 99, True),  # IncLoRA / O-LoRA: every allowed expert weight 1
    ],
)
def test_sparse_equals_dense_and_loop_for_each_router(router, top_k, trainable_last):
    layer = make_layer(router=router, top_k=top_k, trainable_last=trainable_last)
    x = torch.randn(3, 5, 10)
    sparse, dense = both_paths(layer, x)
    torch.testing.assert_close(sparse, dense)  # fp32 tolerance
    with torch.no_grad():
        torch.testing.assert_close(sparse, loop_output(layer, x))


@pytest.mark.parametrize("router", ["cosine", "none"])
def test_sparse_equals_dense_with_masked_groups(router):
    """Per-sample group masks (task routers, frozen groups masked out): fewer allowed experts than K."""
    layer = make_layer(router=router, top_k=5 if router == "cosine" else 99)
    layer.context.group_mask = torch.tensor([[True, False, False], [False, True, True], [False, False, False]])
    x = torch.randn(3, 4, 10)
    sparse, dense = both_paths(layer, x)
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(sparse[2], layer.base(x[2]).detach())  # routed nowhere: the base alone


def test_sparse_equals_dense_with_a_policy_router_bank_and_follower():
    # a policy masking the trainable group's experts for half the tokens (TAG-like)
    layer = make_layer(top_k=4)

    def policy(scores, lay):
        out = scores.clone()
        out[::2, lay.trainable_mask] = float("-inf")
        return out

    layer.context.policy = policy
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(*both_paths(layer, x))
    # a router bank (CMoE)
    bank_layer = make_layer(top_k=3, router_bank=True, groups=(4,))
    bank_layer.open_router(0)
    torch.testing.assert_close(*both_paths(bank_layer, x))


def test_sparse_under_bf16_autocast_close_to_dense():
    layer = make_layer(top_k=3, trainable_last=False)
    x = torch.randn(2, 3, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sparse, dense = both_paths(layer, x)
    torch.testing.assert_close(sparse.float(), dense.float(), atol=2e-2, rtol=2e-2)
    # the cached B^T is kept in the compute dtype (half the memory of the fp32 master copy)
    assert layer._b_t_cache[3].dtype == torch.bfloat16 and layer.frozen_B.dtype == torch.float32


def test_auto_goes_sparse_only_at_inference_with_few_tokens(monkeypatch):
    calls = []
    real = moe_lora_mod.moe_lora_delta_sparse
    monkeypatch.setattr(moe_lora_mod, "moe_lora_delta_sparse", lambda *a, **k: calls.append(1) or real(*a, **k))
    # 8 groups of 4 = 32 experts, top-2: N·K·2 <= 32 for N <= 8 tokens
    layer = make_layer(top_k=2, groups=(4,) * 8, trainable_last=False)
    assert layer.sparse == "auto"
    small, large = torch.randn(2, 4, 10), torch.randn(3, 4, 10)

    def sparse_used(x, *, grad=False, train=False):
        calls.clear()
        layer.train(train)
        with torch.set_grad_enabled(grad):
            layer(x)
        return bool(calls)

    assert sparse_used(small)  # 8 tokens: a decoding step of a batch of 8
    assert not sparse_used(large)  # 12 tokens: prefill-like, dense
    assert not sparse_used(small, grad=True)  # gradients on: dense
    assert not sparse_used(small, train=True)  # training mode: dense
    layer.top_k = 99  # soft routing: nothing to skip
    assert not sparse_used(small)
    layer.top_k, layer.sparse = 2, "never"
    assert not sparse_used(small)


def test_transposed_b_cache_follows_in_place_updates_and_growth():
    layer = make_layer(top_k=3, trainable_last=False)
    x = torch.randn(1, 2, 10)
    layer.sparse = "always"
    with torch.no_grad():
        first = layer(x)
        layer.frozen_B.mul_(2.0)  # in place: the cached B^T must not be reused
        second = layer(x)
    base = layer.base(x).detach()
    torch.testing.assert_close(second - base, 2 * (first - base))
    layer.add_group(9, 4, 2)  # growth replaces the bank: the cache is dropped, trainable group is concatenated
    with torch.no_grad():
        layer.lora_B.normal_()
    torch.testing.assert_close(*both_paths(layer, x))


def test_non_uniform_ranks_fall_back_to_dense():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(10, 7), alpha=8.0, bank_rank=8, top_k=2, dropout=0.0, sparse="always")
    layer.add_group(0, 3, 2)
    layer.fold()
    layer.add_group(1, 3, 4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), loop_output(layer, x))


def test_sparse_option_is_validated():
    from dymoe.errors import ConfigError

    with pytest.raises(ValueError, match="sparse must be one of"):
        MoELoRALinear(nn.Linear(4, 4), sparse="maybe")
    with pytest.raises(ConfigError, match="adapter.sparse"):
        AdapterConfig(sparse="maybe")


def test_generation_gives_the_same_tokens_sparse_and_dense(tiny_llava_dir):
    """The tiny LLaVA with two groups of experts (one folded): greedy tokens equal with auto (sparse at each
    one-token decoding step) and with the dense path forced."""
    from dymoe.models.llava import load_backbone

    model, processor = load_backbone(tiny_llava_dir)
    torch.manual_seed(0)
    adapter = inject(model, AdapterConfig(experts_per_group=8, expert_rank=2, top_k=2, dropout=0.0))
    for g in range(2):
        adapter.add_group(g)
        with torch.no_grad():
            for m in adapter.modules.values():
                m.lora_B.normal_(std=0.05)
        adapter.fold()
    model.eval()
    layers = list(adapter.modules.values())
    calls = []
    real = moe_lora_mod.moe_lora_delta_sparse
    moe_lora_mod.moe_lora_delta_sparse = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        ids = torch.tensor([[5, 17, 42, 9, 33, 61, 7]])
        out = {}
        for mode in ("never", "auto"):
            for m in layers:
                m.sparse = mode
            with torch.no_grad():
                out[mode] = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
    finally:
        moe_lora_mod.moe_lora_delta_sparse = real
    assert calls, "the sparse path was never taken"
    assert torch.equal(out["never"], out["auto"])
    # and the adapter mattered: the base model alone gives other logits
    with torch.no_grad():
        with_experts = model(input_ids=ids).logits
        with adapter.context.use(bypass=True):
            base_only = model(input_ids=ids).logits
    assert (with_experts - base_only).abs().max() > 1e-3


def test_cached_unit_router_rows_give_bitwise_the_same_routing_and_follow_updates():
    """Inference normalises a frozen cosine router's rows once; the scores are bit-identical to normalising anew."""
    layer = make_layer(top_k=3, trainable_last=False)
    x = torch.randn(2, 3, 10)
    with torch.no_grad():
        cached = layer(x)
        assert layer._unit_cache is not None
        layer._unit_cache = None
        layer.sparse = "never"
        fresh = layer(x)
        with torch.enable_grad():
            graded = layer(x)  # gradients on: no cache, normalised in the forward
        layer.sparse = "auto"
        assert torch.equal(layer(x), cached)  # hits the cache again
        layer.frozen_router.mul_(-1.0)  # in place: the cache must notice
        flipped = layer(x)
        layer._unit_cache = None
        assert torch.equal(layer(x), flipped)
    assert torch.equal(fresh, graded.detach())
    assert not torch.equal(flipped, cached)
