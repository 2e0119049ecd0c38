"""Per-sample router banks (CMoE) against a loop over separate routers, shared block routing (leader/followers),
expert initialisation from existing experts, and the routing context's per-forward state."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dymoe.layers.context import RoutingContext
from dymoe.layers.functional import moe_lora_delta_reference, route, router_scores
from dymoe.layers.moe_lora import MoELoRALinear

D_IN, D_OUT = 10, 7


def bank_layer(router="cosine", top_k=2):
    """Task 0: 3 experts + router 0; task 1: +2 experts + router 1; task 2: +3 experts + router 2 (open)."""
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(D_IN, D_OUT, dtype=torch.float64), alpha=4.0, bank_rank=4, top_k=top_k,
                          router=router, temperature=0.5, dropout=0.0, router_bank=True)
    for task, n in enumerate((3, 2, 3)):
        layer.add_group(task, n, 2)
        layer.open_router(task)
        with torch.no_grad():
            layer.lora_B.normal_()
            layer.router_bank.current.add_(0.3 * torch.randn_like(layer.router_bank.current))  # "trained" rows
        if task < 2:
            layer.fold()
    return layer


def loop_with_router(layer, x, router_id):
    """Output for ``x [T, d]`` routed by router ``router_id`` alone: its rows, -inf for experts it has none for."""
    rows = dict((e, layer.router_bank.all_rows()[r].detach()) for r, e in layer.router_bank.rows_of(router_id))
    u = torch.stack([rows.get(e, torch.zeros(D_IN, dtype=torch.float64)) for e in layer.expert_ids])
    covered = torch.tensor([e in rows for e in layer.expert_ids])
    s = router_scores(x, u, layer.router_mode, layer.cos_scale).masked_fill(~covered, float("-inf"))
    w = route(s, layer.top_k, layer.temperature, dense_ones=layer.router_mode == "none").to(x.dtype)
    a, b, _ = (t.detach() for t in layer.bank())
    offs = [0, *torch.cumsum(layer.expert_rank, 0).tolist()]
    a_list = [a[offs[i] : offs[i + 1]] for i in range(layer.num_experts)]
    b_list = [b[:, offs[i] : offs[i + 1]] for i in range(layer.num_experts)]
    return layer.base(x) + moe_lora_delta_reference(x, a_list, b_list, w, layer.scaling)


@pytest.mark.parametrize("router,top_k", [("cosine", 2), ("linear", 8), ("none", 8)])
def test_router_bank_equals_a_per_sample_loop_over_separate_routers(router, top_k):
    layer = bank_layer(router, top_k)
    assert layer.router_bank.router_ids == [0, 1, 2] and layer.tied_router is False
    assert layer.router.numel() == 0 and layer.frozen_router.numel() == 0  # no per-expert rows
    x = torch.randn(4, 5, D_IN, dtype=torch.float64)
    choice = [0, 2, 1, 2]
    layer.context.router_ids = torch.tensor(choice)
    out = layer(x)
    for b, rid in enumerate(choice):
        torch.testing.assert_close(out[b], loop_with_router(layer, x[b], rid), atol=1e-6, rtol=1e-6)
    # no per-sample choice: the open router (2) routes everyone
    layer.context.router_ids = None
    torch.testing.assert_close(layer(x)[0], loop_with_router(layer, x[0], 2), atol=1e-6, rtol=1e-6)


def test_router_i_reaches_only_the_experts_up_to_task_i():
    layer = bank_layer("none", 8)
    layer.context.router_ids = torch.tensor([0, 1])
    events = []
    layer.context.recording, layer.context.observers = True, [events.append]
    layer(torch.randn(2, 3, D_IN, dtype=torch.float64))
    w = events[0].weights.reshape(2, 3, -1)
    assert (w[0, :, :3] == 1).all() and (w[0, :, 3:] == 0).all()  # router 0: group 0's three experts
    assert (w[1, :, :5] == 1).all() and (w[1, :, 5:] == 0).all()  # router 1: groups 0 and 1


def test_unknown_router_ids_fall_back_to_the_newest_older_router():
    layer = bank_layer()
    x = torch.randn(2, 3, D_IN, dtype=torch.float64)
    layer.context.router_ids = torch.tensor([7, 2])
    out = layer(x)
    torch.testing.assert_close(out[0], loop_with_router(layer, x[0], 2), atol=1e-6, rtol=1e-6)


def test_open_router_copies_the_previous_rows_and_trains_all_of_them():
    layer = bank_layer()
    bank = layer.router_bank
    layer.fold()
    prev = {e: bank.all_rows()[r].detach().clone() for r, e in bank.rows_of(2)}
    layer.add_group(3, 1, 2)
    layer.open_router(3)
    cur = {e: bank.current[k] for k, e in enumerate(bank.current_expert)}
    assert sorted(cur) == layer.expert_ids  # every present expert has a row in the new router
    for e, row in prev.items():
        assert torch.equal(cur[e].detach(), row)  # G_i = [G_{i-1}; random] (cmoe.md §4.4)
    assert bank.current.requires_grad and not bank.frozen.requires_grad
    layer.context.router_ids = None
    layer(torch.randn(2, 3, D_IN, dtype=torch.float64)).sum().backward()
    assert bank.current.grad is not None and bank.current.grad.abs().sum(1).gt(0).sum() > 0
    layer.fold()  # closes the router: frozen from now on
    assert not bank.is_open and bank.current.numel() == 0 and bank.router_ids == [0, 1, 2, 3]


def test_router_bank_structure_roundtrip_and_prune():
    layer = bank_layer()
    layer.prune([1, 4])
    assert all(e not in (1, 4) for e in layer.router_bank.frozen_expert + layer.router_bank.current_expert)
    fresh = MoELoRALinear(nn.Linear(D_IN, D_OUT, dtype=torch.float64), alpha=4.0, bank_rank=4, top_k=2,
                          temperature=0.5, dropout=0.0, router_bank=True)
    fresh.base.load_state_dict(layer.base.state_dict())
    fresh.load_structure(layer.structure())
    with torch.no_grad():
        for (n, a), (m, b) in zip(layer.named_tensors(), fresh.named_tensors()):
            assert n == m and a.shape == b.shape
            b.copy_(a)
    x = torch.randn(3, 4, D_IN, dtype=torch.float64)
    for layer_ in (layer, fresh):
        layer_.context.router_ids = torch.tensor([0, 1, 2])
    assert torch.equal(fresh(x), layer(x))


# ---------------------------------------------------------------------------------------------------- shared routing
def test_follower_uses_its_leaders_gates():
    torch.manual_seed(0)
    ctx = RoutingContext()
    kw = dict(alpha=4.0, bank_rank=4, top_k=2, temperature=0.5, dropout=0.0, context=ctx)
    leader = MoELoRALinear(nn.Linear(D_IN, 6, dtype=torch.float64), share=("leader", "blk"), **kw)
    follower = MoELoRALinear(nn.Linear(D_IN, 5, dtype=torch.float64), share=("follower", "blk"), **kw)
    for m in (leader, follower):
        m.add_group(0, 4, 2)
        with torch.no_grad():
            m.lora_B.normal_()
    assert follower.router.numel() == 0 and leader.router.shape == (4, D_IN)
    x = torch.randn(2, 3, D_IN, dtype=torch.float64)
    events = []
    ctx.recording, ctx.observers = True, [events.append]
    ctx.start_forward()
    leader(x)
    out = follower(x)
    (ev,) = events  # only the leader routes
    w = ctx.shared_gates["blk"]
    assert torch.equal(w, ev.weights)
    a, b, _ = (t.detach() for t in follower.bank())
    want = follower.base(x) + moe_lora_delta_reference(
        x.reshape(-1, D_IN), [a[2 * i : 2 * i + 2] for i in range(4)], [b[:, 2 * i : 2 * i + 2] for i in range(4)],
        w.to(x.dtype), follower.scaling).reshape(2, 3, -1)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)
    # a new forward: the follower must not reuse the previous forward's gates
    ctx.start_forward()
    with pytest.raises(RuntimeError, match="ran before its leader"):
        follower(x)


# ---------------------------------------------------------------------------------------------------- expert init
def test_init_mean_of_a_group_and_copy_of_an_expert():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(D_IN, D_OUT), top_k=2, dropout=0.0)
    layer.add_group(0, 3, 2)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.fold()
    old = layer.expert_state(layer.expert_ids)
    layer.add_group(1, 2, 2, init="mean", source=[0])  # CMoE's probes: the average of the old group
    probes = layer.expert_state(layer.expert_ids[3:])
    for k in ("A", "B"):
        torch.testing.assert_close(probes[k][0], old[k].mean(0))
        assert torch.equal(probes[k][0], probes[k][1])
    assert not torch.equal(probes["router"][0], old["router"].mean(0))  # fresh router rows by default
    layer.fold()
    layer.add_group(2, 1, 2, init="copy", source=1, router_init="source")  # copy of expert 1 (MoExtend-style row)
    copied = layer.expert_state([layer.expert_ids[-1]])
    for k in ("A", "B", "router"):
        assert torch.equal(copied[k][0], old[k][1])
    layer.fold()
    with pytest.raises(ValueError, match="rank"):
        layer.add_group(3, 1, 4, init="copy", source=0)


# ---------------------------------------------------------------------------------------------------- context
def test_context_use_restores_and_rejects_unknown_inputs():
    ctx = RoutingContext()
    with ctx.use(bypass=True, router_ids=torch.tensor([1])):
        assert ctx.bypass and ctx.router_ids is not None
    assert ctx.bypass is False and ctx.router_ids is None
    with pytest.raises(TypeError, match="unknown routing inputs"):
        with ctx.use(bypas=True):
            pass


def test_per_sample_inputs_are_checked_against_the_batch():
    layer = bank_layer()
    layer.context.router_ids = torch.tensor([0, 1, 2])  # stale: from a batch of 3
    with pytest.raises(ValueError, match="router_ids has 3 rows but the batch has 2 samples"):
        layer(torch.randn(2, 3, D_IN, dtype=torch.float64))
