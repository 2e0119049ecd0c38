"""``MoEFFN``: the fused SwiGLU bank against a per-expert loop, the AT-Router (smoe-dsal.md Eqs. 5–6, 8, 11) on a
hand-computed example, the exact base block at k = 0, per-sample groups, and growth (fold, prune, init, structure)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from dymoe.layers.functional import at_combine, at_route, moe_ffn_delta, moe_ffn_delta_reference, route
from dymoe.layers.moe_ffn import MoEFFN

D, D_FF = 12, 20


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=D, intermediate_size=D_FF, hidden_act="silu", num_attention_heads=2, num_key_value_heads=2)
    return LlamaMLP(cfg).to(dtype)


def make_layer(router="at", groups=(3,), width=4, hidden=5, dtype=torch.float64, fold_all_but_last=True, **kw):
    layer = MoEFFN(mlp(dtype), router=router, router_hidden=hidden, down_init="kaiming", router_init_std=0.5, **kw)
    for g, n in enumerate(groups):
        layer.add_group(g, n, width)
        if fold_all_but_last and g < len(groups) - 1:
            layer.fold()
    return layer


def split_experts(layer):
    """Per-expert ``(W_gate, W_up, W_down)`` views of the whole bank (gradients flow to the layer's tensors)."""
    g, u, d = layer._cat("w_gate"), layer._cat("w_up"), layer._cat("w_down", dim=1)
    offs = [0, *torch.cumsum(torch.tensor(layer.expert_sizes), 0).tolist()]
    return [(g[a:b], u[a:b], d[:, a:b]) for a, b in zip(offs[:-1], offs[1:])]


def loop_forward(layer, x, group_index):
    """Eqs. 5–6, 8, 11 token by token, expert by expert (the naive reference)."""
    x2 = x.reshape(-1, layer.d_model)
    ffn = layer.base(x2)
    e0, e1 = layer._layout()["experts"][group_index]
    t = layer._group_tensors(group_index)
    hid = F.silu(x2 @ t["router_w1"].T + t["router_b1"]) if layer.router_hidden else x2
    scores = hid @ t["router_w2"].T + t["router_b2"]  # [N, (1 +) n]
    experts = split_experts(layer)[e0:e1]
    rows = []
    for i in range(x2.shape[0]):
        outs = [(F.silu(x2[i] @ g.T) * (x2[i] @ u.T)) @ d.T for g, u, d in experts]
        if layer.router_mode == "at":
            alpha, s = scores[i, 0], scores[i, 1:]
            active = [n for n in range(len(experts)) if s[n] > alpha]
            z = torch.exp(alpha) + sum(torch.exp(s[n]) for n in active)
            y = sum((torch.exp(s[n]) / z * outs[n] for n in active), torch.zeros_like(ffn[i]))
            rows.append((1 + len(active)) * (y + torch.exp(alpha) / z * ffn[i]))
        else:
            w = route(scores[i : i + 1], layer.top_k, layer.temperature)[0]
            rows.append(ffn[i] + sum(w[n] * outs[n] for n in range(len(experts))))
    return torch.stack(rows).reshape(*x.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------------- fused op
@pytest.mark.parametrize("widths", [[4, 4, 4], [2, 5, 3]])
def test_fused_ffn_bank_equals_loop_forward_and_backward(widths):
    torch.manual_seed(0)
    n, e = 7, len(widths)
    x = torch.randn(n, D, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(sum(widths), D, dtype=torch.float64, requires_grad=True)
    up = torch.randn(sum(widths), D, dtype=torch.float64, requires_grad=True)
    down = torch.randn(D, sum(widths), dtype=torch.float64, requires_grad=True)
    w = torch.rand(n, e, dtype=torch.float64)
    w[w < 0.4] = 0
    size = widths[0] if len(set(widths)) == 1 else torch.tensor(widths)
    fused = moe_ffn_delta(x, gate, up, down, w, size)
    offs = [0, *torch.cumsum(torch.tensor(widths), 0).tolist()]
    experts = [(gate[offs[i] : offs[i + 1]], up[offs[i] : offs[i + 1]], down[:, offs[i] : offs[i + 1]]) for i in range(e)]
    ref = moe_ffn_delta_reference(x, experts, w)
    torch.testing.assert_close(fused, ref, atol=1e-12, rtol=1e-12)
    g1 = torch.autograd.grad(fused.pow(2).sum(), [x, gate, up, down])
    g2 = torch.autograd.grad(ref.pow(2).sum(), [x, gate, up, down])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------- AT-Router
def test_at_router_on_a_hand_computed_three_expert_example():
    # S = [α, s1, s2, s3] = [0.5, 1.0, 0.2, 0.9]: A = {1, 3} (s2 = 0.2 is not above α), k = 2        (Eq. 5)
    # Z = e^0.5 + e^1.0 + e^0.9 = 1.648721 + 2.718282 + 2.459603 = 6.826606
    # α̃ = 0.241514, s̃1 = 0.398189, s̃2 = 0, s̃3 = 0.360297                                            (Eq. 6)
    alpha_w, weights, k = at_route(torch.tensor([[0.5, 1.0, 0.2, 0.9]], dtype=torch.float64))
    assert k.tolist() == [2]
    torch.testing.assert_close(alpha_w, torch.tensor([0.241514], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, torch.tensor([[0.398189, 0.0, 0.360297]], dtype=torch.float64), atol=1e-6,
                               rtol=0)
    # expert outputs E1 = [1, 0], E2 = [0, 1], E3 = [2, 2] and FFN = [1, 1]:
    # h̃ = s̃1 E1 + s̃3 E3 = [1.118783, 0.720594]                                                     (Eq. 8)
    # ȟ = (1 + k)(h̃ + α̃ FFN) = 3 · [1.360297, 0.962108] = [4.080891, 2.886324]                      (Eq. 11)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    out = at_combine(torch.tensor([[1.0, 1.0]], dtype=torch.float64), weights @ e, alpha_w, k)
    torch.testing.assert_close(out, torch.tensor([[4.080891, 2.886324]], dtype=torch.float64), atol=5e-6, rtol=0)
    # without the (1 + k) factor (ablation 5)
    out = at_combine(torch.tensor([[1.0, 1.0]], dtype=torch.float64), weights @ e, alpha_w, k, scale_by_count=False)
    torch.testing.assert_close(out, torch.tensor([[1.360297, 0.962108]], dtype=torch.float64), atol=5e-6, rtol=0)


def test_layer_applies_eqs_5_6_8_11_with_constant_router_outputs():
    """A linear router with zero weights and bias [0.5, 1.0, 0.2, 0.9] scores every token like the hand example."""
    layer = make_layer(groups=(3,), hidden=0)
    with torch.no_grad():
        layer.router_w2.zero_()
        layer.router_b2.copy_(torch.tensor([0.5, 1.0, 0.2, 0.9]))
    x = torch.randn(2, 3, D, dtype=torch.float64)
    x2 = x.reshape(-1, D)
    e = [(F.silu(x2 @ g.T) * (x2 @ u.T)) @ d.T for g, u, d in split_experts(layer)]
    z = math.exp(0.5) + math.exp(1.0) + math.exp(0.9)
    want = 3 * (math.exp(1.0) / z * e[0] + math.exp(0.9) / z * e[2] + math.exp(0.5) / z * layer.base(x2))
    torch.testing.assert_close(layer(x).reshape(-1, D), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_k_zero_is_exactly_the_base_mlp(dtype):
    layer = make_layer(groups=(2, 4), dtype=dtype, hidden=5)
    with torch.no_grad():  # a threshold far above every expert score: k = 0 for every token
        layer.router_b2[0] = 1e4
    x = torch.randn(3, 5, D, dtype=dtype)
    assert torch.equal(layer(x), layer.base(x))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.float32):
        assert torch.equal(layer(x), layer.base(x))


def test_a_group_of_experts_with_w_down_zero_leaves_the_block_unchanged_up_to_scaling():
    # the proposed init: W_down = 0, so Σ s̃ E = 0 and ȟ = (1 + k) α̃ FFN, which is FFN when k = 0
    layer = MoEFFN(mlp(), router="at", router_hidden=4)
    layer.add_group(0, 4, 3)
    assert torch.count_nonzero(layer.w_down) == 0
    x = torch.randn(2, 4, D, dtype=torch.float64)
    alpha_w, _, k = at_route(layer._router_scores(x.reshape(-1, D), layer.router_w1, layer.router_b1,
                                                  layer.router_w2, layer.router_b2))
    want = ((1 + k)[:, None] * alpha_w[:, None]) * layer.base(x).reshape(-1, D)
    torch.testing.assert_close(layer(x).reshape(-1, D), want.to(torch.float64))


@pytest.mark.parametrize("router", ["at", "topk"])
@pytest.mark.parametrize("hidden", [0, 5])
def test_layer_equals_token_and_expert_loop_forward_and_backward(router, hidden):
    layer = make_layer(router=router, groups=(3, 4), hidden=hidden, top_k=2)
    x = torch.randn(2, 4, D, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    ref = loop_forward(layer, x, group_index=1)  # the trainable (newest) group routes every token
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    params = layer.trainable_parameters()
    g1 = torch.autograd.grad(out.pow(2).sum(), [x, *params], allow_unused=True)
    g2 = torch.autograd.grad(ref.pow(2).sum(), [x, *params], allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("router", ["at", "topk"])
def test_per_sample_groups_equal_one_group_at_a_time(router):
    """Samples picking different domain modules (group mask or selector) get each module's own output."""
    layer = make_layer(router=router, groups=(3, 2, 4), top_k=2)
    x = torch.randn(4, 5, D, dtype=torch.float64)
    want = torch.stack([loop_forward(layer, x[b : b + 1], g)[0] for b, g in enumerate([0, 2, 1, 0])])
    ctx = layer.context
    ctx.group_mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)  # newest allowed
    torch.testing.assert_close(layer(x), want, atol=1e-10, rtol=1e-10)
    ctx.group_mask = None
    ctx.selector = lambda lyr, h, mask: torch.tensor([0, 2, 1, 0])
    ctx.start_forward()
    torch.testing.assert_close(layer(x), want, atol=1e-10, rtol=1e-10)
    ctx.selector = None
    ctx.start_forward()
    # a sample no group is allowed for gets the base block exactly
    ctx.group_mask = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    out, base = layer(x), layer.base(x)
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2]) and torch.equal(out[3], base[3])


def test_events_report_the_routed_group_and_threshold():
    layer = make_layer(groups=(3, 4))
    events = []
    layer.context.recording, layer.context.observers = True, [events.append]
    layer.context.capture_inputs = True
    x = torch.randn(2, 3, D, dtype=torch.float64)
    layer(x)
    (ev,) = events
    assert ev.experts == slice(3, 7) and ev.scores.shape == (6, 4) and ev.threshold.shape == (6,)
    active = ev.scores > ev.threshold[:, None]
    assert torch.equal(ev.weights > 0, active)
    assert torch.equal(ev.inputs, x.reshape(-1, D))


# ---------------------------------------------------------------------------------------------------- growth
def test_fold_keeps_outputs_and_freezes():
    layer = make_layer(groups=(3, 4))
    x = torch.randn(2, 3, D, dtype=torch.float64)
    before = layer(x)
    layer.fold()
    assert not layer.has_trainable_group and not layer.trainable_parameters()
    assert torch.equal(layer(x), before)


def test_prune_removes_exactly_the_named_experts():
    layer = make_layer(router="topk", groups=(3, 4), top_k=4)
    x = torch.randn(2, 3, D, dtype=torch.float64)
    keep_ids = [i for i in layer.expert_ids if i not in (1, 4)]
    state = layer.expert_state(keep_ids)
    layer.prune([1, 4])
    assert layer.expert_ids == keep_ids and layer.num_frozen == 2
    after = layer.expert_state(keep_ids)
    for k in state:
        assert torch.equal(state[k], after[k])
    assert layer.router_w2.shape[0] == 3  # the trainable group's router lost one row
    torch.testing.assert_close(layer(x), loop_forward(layer, x, 1), atol=1e-10, rtol=1e-10)
    layer.prune([0, 2])  # the frozen group loses every expert and its router
    assert layer.groups == [1] and layer.frozen_router_w1.shape[0] == 0 and layer.frozen_router_w2.shape[0] == 0


def test_init_mean_and_copy():
    layer = make_layer(groups=(3,))
    layer.fold()
    old = layer.expert_state(layer.expert_ids)
    layer.add_group(1, 2, 4, init="mean", source=[0])
    new = layer.expert_state(layer.expert_ids[3:])
    for k in old:
        torch.testing.assert_close(new[k][0], old[k].mean(0))
        assert torch.equal(new[k][0], new[k][1])
    layer.fold()
    layer.add_group(2, 1, 4, init="copy", source=2)
    copied = layer.expert_state([layer.expert_ids[-1]])
    for k in old:
        assert torch.equal(copied[k][0], old[k][2])


def test_structure_roundtrip_rebuilds_the_same_shapes():
    layer = make_layer(groups=(3, 2, 4))
    layer.prune([1])
    fresh = MoEFFN(mlp(), router="at", router_hidden=5)
    fresh.load_structure(layer.structure())
    for (n, a), (_, b) in zip(layer.named_tensors(), fresh.named_tensors()):
        assert a.shape == b.shape and a.requires_grad == b.requires_grad, n
    with torch.no_grad():
        for (_, a), (_, b) in zip(layer.named_tensors(), fresh.named_tensors()):
            b.copy_(a)
    x = torch.randn(2, 3, D, dtype=torch.float64)
    assert torch.equal(fresh(x), layer(x))


def test_parameter_counts_match_the_smoe_arithmetic():
    """At LLaMA-7B sizes one domain module per layer is 3·d·d'·N_e = 6.29M expert parameters (smoe-dsal.md §1)."""
    with torch.device("meta"):
        block = LlamaMLP(LlamaConfig(hidden_size=4096, intermediate_size=11008))
    layer = MoEFFN(block, router="at", router_hidden=16)
    layer.add_group(0, 4, 128)
    counts = layer.parameter_counts()
    router = 4096 * 16 + 16 + 5 * 16 + 5
    assert counts["routers"][0] == router
    assert counts["experts"][0] == 3 * 4096 * 128 * 4
    assert counts["experts"][0] * 32 == 201_326_592  # Table 3's 208M learnable: 201.3M experts + routers/projectors
    # 0.81 experts per token (Table 3, top-0.81): 0.81 · 1.57M · 32 = 40.8M activated expert parameters
    assert round((layer.activated_per_token(0.81) - router) * 32 / 1e6, 1) == 40.8


def test_group_tensors_are_differentiable_views_of_a_domain_module():
    layer = make_layer(groups=(3, 2))
    g0 = layer.group_tensors(0)
    st = layer.expert_state(layer.expert_ids[:3])
    assert torch.equal(g0["w_gate"], st["w_gate"].reshape(-1, D))
    virtual = layer.group_tensors(1)["w_up"].reshape(2, 4, D).mean(0)  # DSAL's parameter-averaged expert
    virtual.sum().backward()
    assert layer.w_up.grad is not None and torch.all(layer.w_up.grad == 0.5)
    with pytest.raises(ValueError, match="no group 7"):
        layer.group_tensors(7)
