"""Routing state on whole models: the per-layer selector at prefill and decode (cached generation equals uncached),
its survival through gradient checkpointing, bypass, layer inputs on events, per-sample router banks, shared block
routing, and the per-forward reset."""

from __future__ import annotations

import torch

from dymoe.injection import AdapterConfig, inject


def lora_model(tiny, groups=2, **site):
    model = tiny.llama()
    cfg = AdapterConfig(experts_per_group=3, expert_rank=2, top_k=2, alpha=8.0, dropout=0.0, temperature=0.5,
                        sites=[site] if site else None)
    adapter = inject(model, cfg)
    torch.manual_seed(5)
    for g in range(groups):
        adapter.add_group(g)
        with torch.no_grad():
            for m in adapter.modules.values():
                m.lora_B.normal_(std=0.5)
        adapter.fold()
    return model, adapter


class FirstTokenSelector:
    """Group 0 or 1 per sample from the layer input at the sample's first real token (a causal model's state there
    does not depend on later tokens, so cached and uncached generation must agree). Counts its calls."""

    def __init__(self, context):
        self.context, self.calls, self.phases = context, 0, []

    def __call__(self, layer, x, mask):
        self.calls += 1
        self.phases.append(self.context.phase)
        first = mask.float().argmax(1) if mask is not None else torch.zeros(x.shape[0], dtype=torch.long)
        h = x[torch.arange(x.shape[0]), first]  # [B, d]
        return (h.sum(-1) > h.mean()).long()


def prompts():
    ids = torch.randint(2, 64, (3, 6), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[0, :2] = 0  # left padding
    am[2, :1] = 0
    ids[am == 0] = 0
    return ids, am


def test_selector_runs_once_per_layer_at_prefill_and_never_while_decoding(tiny):
    model, adapter = lora_model(tiny)
    ctx = adapter.context
    sel = FirstTokenSelector(ctx)
    ctx.selector = sel
    ids, am = prompts()
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    cached = model.generate(input_ids=ids, attention_mask=am, use_cache=True, **gen)
    assert sel.calls == len(adapter.modules) and set(sel.phases) == {"prefill"}
    chosen = {k: v.tolist() for k, v in ctx.selections.items()}
    assert len(chosen) == len(adapter.modules) and len({tuple(v) for v in chosen.values()}) > 1
    sel.calls = 0
    uncached = model.generate(input_ids=ids, attention_mask=am, use_cache=False, **gen)
    assert torch.equal(cached, uncached)
    assert sel.calls == len(adapter.modules) * 5  # without a cache every step is a prefill
    # the selection matters: everyone on group 0 generates something else
    ctx.selector = lambda layer, x, mask: torch.zeros(x.shape[0], dtype=torch.long)
    ctx.start_forward()
    assert not torch.equal(model.generate(input_ids=ids, attention_mask=am, use_cache=True, **gen), cached)


def _train_step(tiny, checkpointing: bool):
    model, adapter = lora_model(tiny)
    adapter.add_group(2)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    g = torch.Generator().manual_seed(0)
    calls = []

    def random_selector(layer, x, mask):  # a different answer on every call: recomputation must not call it
        calls.append(1)
        return torch.randint(0, 3, (x.shape[0],), generator=g)

    adapter.context.selector = random_selector
    forwards = []
    adapter.modules["model.layers.0.mlp.up_proj"].register_forward_hook(lambda *a: forwards.append(1))
    ids, am = prompts()
    out = model(input_ids=ids, attention_mask=am, labels=ids.masked_fill(am == 0, -100))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads, len(calls), len(adapter.modules), len(forwards)


def test_selection_survives_gradient_checkpointing_recomputation(tiny):
    loss, grads, calls, n, forwards = _train_step(tiny, checkpointing=False)
    loss_gc, grads_gc, calls_gc, _, forwards_gc = _train_step(tiny, checkpointing=True)
    assert (forwards, forwards_gc) == (1, 2)  # the layer really was recomputed in backward
    assert calls == calls_gc == n
    assert torch.equal(loss, loss_gc)
    assert grads.keys() == grads_gc.keys() and grads
    for k in grads:
        torch.testing.assert_close(grads_gc[k], grads[k], atol=1e-7, rtol=1e-6)


def test_bypass_gives_the_frozen_backbone_exactly(tiny):
    ids, am = prompts()
    with torch.no_grad():
        ref = tiny.llama()(input_ids=ids, attention_mask=am).logits
        model, adapter = lora_model(tiny)
        assert not torch.equal(model(input_ids=ids, attention_mask=am).logits, ref)
        with adapter.context.use(bypass=True):
            assert torch.equal(model(input_ids=ids, attention_mask=am).logits, ref)
        assert not adapter.context.bypass


def test_events_carry_the_layer_input_when_asked(tiny):
    model, adapter = lora_model(tiny)
    name = "model.layers.1.mlp.down_proj"
    seen = []
    adapter.modules[name].base.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    events = []
    ctx = adapter.context
    ctx.recording, ctx.observers = True, [events.append]
    ids, am = prompts()
    with ctx.use(capture_inputs=True):
        model(input_ids=ids, attention_mask=am)
    ev = next(e for e in events if e.layer is adapter.modules[name])
    assert torch.equal(ev.inputs, seen[0].reshape(-1, seen[0].shape[-1]))
    events.clear()
    model(input_ids=ids, attention_mask=am)
    assert all(e.inputs is None for e in events)  # off by default


def test_per_forward_state_does_not_leak_into_the_next_batch(tiny):
    model, adapter = lora_model(tiny)
    ids, am = prompts()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=am).logits
        with adapter.context.use(selector=lambda layer, x, mask: torch.ones(x.shape[0], dtype=torch.long)):
            picked = model(input_ids=ids, attention_mask=am).logits
        assert adapter.context.selections  # kept for decoding and recomputation of that forward...
        assert not torch.equal(picked, plain)
        assert torch.equal(model(input_ids=ids, attention_mask=am).logits, plain)  # ...dropped by the next one
        assert not adapter.context.selections


def test_router_bank_in_a_model_equals_one_sample_at_a_time(tiny):
    model = tiny.llama()
    adapter = inject(model, AdapterConfig(sites=[{"targets": ["gate_proj", "up_proj"], "router_bank": True,
                                                  "experts_per_group": 2, "expert_rank": 2, "top_k": 1,
                                                  "router": "linear", "temperature": 1.0, "dropout": 0.0}]))
    torch.manual_seed(1)
    for task in range(3):
        adapter.add_group(task)
        adapter.open_router(task)
        with torch.no_grad():
            for m in adapter.modules.values():
                m.lora_B.normal_(std=0.5)
        adapter.fold()
    ids = torch.randint(2, 64, (3, 5))
    ctx = adapter.context
    with torch.no_grad(), ctx.use(router_ids=torch.tensor([0, 2, 1])):
        batched = model(input_ids=ids).logits
    for b, rid in enumerate([0, 2, 1]):
        with torch.no_grad(), ctx.use(router_ids=torch.tensor([rid])):
            alone = model(input_ids=ids[b : b + 1]).logits[0]
        torch.testing.assert_close(batched[b], alone, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), ctx.use(router_ids=torch.tensor([0, 0, 0])):
        assert not torch.allclose(model(input_ids=ids).logits[1], batched[1])


def test_followers_route_with_their_leaders_gates_in_a_model(tiny):
    model, adapter = lora_model(tiny, targets=["gate_proj", "up_proj", "down_proj"], share_router="block")
    roles = {n.rsplit(".", 1)[1]: m.route_role for n, m in adapter.modules.items()}
    assert roles == {"gate_proj": "leader", "up_proj": "follower", "down_proj": "follower"}
    used = {}
    for name, m in adapter.modules.items():
        if m.route_role == "follower":
            orig = m._follower_gates
            m._follower_gates = lambda n, orig=orig, name=name: used.setdefault(name, orig(n))
    events = []
    ctx = adapter.context
    ctx.recording, ctx.observers = True, [events.append]
    ids, am = prompts()
    model(input_ids=ids, attention_mask=am)
    assert len(events) == 2  # one router per block
    for ev in events:
        block = next(n for n, m in adapter.modules.items() if m is ev.layer).rsplit(".", 1)[0]
        assert torch.equal(used[f"{block}.up_proj"], ev.weights)
        assert torch.equal(used[f"{block}.down_proj"], ev.weights)


def test_router_bank_shared_by_a_block_cmoe(tiny, tmp_path):
    """CMoE's layout (cmoe.md §2-§3): gate_proj and up_proj share one router per block, and that router is a
    per-task bank picked per sample. The leader holds the bank, the follower reuses its gates; per-sample router ids
    in a batch equal one sample at a time; the checkpoint brings it all back."""
    from dymoe.injection import load_adapter, save_adapter

    site = {"targets": ["gate_proj", "up_proj"], "share_router": "block", "router_bank": True, "experts_per_group": 2,
            "expert_rank": 2, "top_k": 1, "router": "linear", "temperature": 1.0, "dropout": 0.0}
    model = tiny.llama()
    adapter = inject(model, AdapterConfig(sites=[site]))
    leaders = {n: m for n, m in adapter.modules.items() if m.route_role == "leader"}
    assert sorted(n.rsplit(".", 1)[1] for n in adapter.modules) == ["gate_proj", "gate_proj", "up_proj", "up_proj"]
    assert all(n.endswith("gate_proj") and m.router_bank is not None for n, m in leaders.items())
    assert all(m.router_bank is None for m in adapter.modules.values() if m.route_role == "follower")
    torch.manual_seed(1)
    for task in range(3):
        adapter.add_group(task)
        adapter.open_router(task)
        with torch.no_grad():
            for m in adapter.modules.values():
                m.lora_B.normal_(std=0.5)
        adapter.fold()
    ids = torch.randint(2, 64, (3, 5), generator=torch.Generator().manual_seed(2))
    rids = [0, 2, 1]
    ctx = adapter.context
    events = []
    ctx.recording, ctx.observers = True, [events.append]
    with torch.no_grad(), ctx.use(router_ids=torch.tensor(rids)):
        batched = model(input_ids=ids).logits
    assert {id(ev.layer) for ev in events} == {id(m) for m in leaders.values()}  # one router per block
    ctx.recording = False
    for b, rid in enumerate(rids):
        with torch.no_grad(), ctx.use(router_ids=torch.tensor([rid])):
            alone = model(input_ids=ids[b : b + 1]).logits[0]
        torch.testing.assert_close(batched[b], alone, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), ctx.use(router_ids=torch.tensor([0, 0, 0])):
        assert not torch.allclose(model(input_ids=ids).logits[1], batched[1])
    save_adapter(adapter, tmp_path / "ckpt")
    fresh, _ = load_adapter(tiny.llama(), tmp_path / "ckpt")
    with torch.no_grad(), fresh.context.use(router_ids=torch.tensor(rids)):
        assert torch.equal(fresh.model(input_ids=ids).logits, batched)


def test_backbone_only_bypasses_records_nothing_and_restores_everything():
    """``RoutingContext.backbone_only()``: inside, every expert layer is bypassed and nothing is recorded; after it
    the caller's inputs (here a group mask and recording on) and per-forward selections are back unchanged."""
    from dymoe.layers.context import RoutingContext

    ctx = RoutingContext()
    mask = torch.ones(2, 1, dtype=torch.bool)
    ctx.group_mask, ctx.recording, ctx.selections = mask, True, {"layer": torch.tensor([0, 1])}
    with ctx.backbone_only() as inner:
        assert inner is ctx and ctx.bypass is True and ctx.recording is False
        ctx.selections["other"] = torch.tensor([1, 1])  # a side forward's own selections are dropped after it
    assert ctx.bypass is False and ctx.recording is True and ctx.group_mask is mask
    assert list(ctx.selections) == ["layer"]
