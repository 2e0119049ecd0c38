"""The refactored ``MoELoRALinear`` against a frozen copy of the layer before issue 15 (``frozen_v1.py``).

Outputs, routing events and gradients must be bit-identical (``torch.equal``) over router modes, top-K, group masks,
policies, dropout, bf16 autocast and growth sequences (add / fold / prune), and a default forward + backward must
not run more aten operations than before (counted with a ``TorchDispatchMode``), for one layer and for a whole
injected model.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from dymoe.injection import AdapterConfig, inject
from dymoe.layers.moe_lora import MoELoRALinear


def _load_oracle():
    name = "dymoe_frozen_v1"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("frozen_v1.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


V1 = _load_oracle()
D_IN, D_OUT = 12, 9


def build_pair(router="cosine", top_k=3, dropout=0.0, temperature=0.5, steps=("add:0:3", "fold", "add:1:4"),
               rank=2, dtype=torch.float32):
    """The same layer twice, new code and frozen oracle, grown through ``steps`` with the same random draws."""
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT, dtype=dtype)
    kw = dict(alpha=8.0, bank_rank=8, top_k=top_k, router=router, temperature=temperature, dropout=dropout)
    new = MoELoRALinear(base, **kw)
    old = V1.MoELoRALinear(copy.deepcopy(base), **kw)
    for k, step in enumerate(steps):
        op, *args = step.split(":")
        for layer in (new, old):
            torch.manual_seed(100 + k)
            if op == "add":
                layer.add_group(int(args[0]), int(args[1]), rank, trainable=len(args) < 3)
            elif op == "fold":
                layer.fold()
            elif op == "prune":
                layer.prune([int(a) for a in args])
        if op == "add":  # non-zero B so that experts matter (the same values in both)
            g = torch.Generator().manual_seed(200 + k)
            values = {n: torch.randn(getattr(new, n).shape, generator=g) for n in ("lora_B", "frozen_B")}
            with torch.no_grad():
                for layer in (new, old):
                    for n, v in values.items():
                        getattr(layer, n).copy_(v.to(getattr(layer, n).dtype))
    return new, old


def assert_same_state(new, old):
    for name in ("frozen_A", "frozen_B", "frozen_router", "lora_A", "lora_B", "router"):
        a, b = getattr(new, name), getattr(old, name)
        if name.endswith("router") and new.router_mode == "none":
            # issue 12: router "none" keeps rows of width 0 (the oracle predates it and keeps unused rows)
            assert a.shape == (b.shape[0], 0) and not a.requires_grad, name
            continue
        assert torch.equal(a, b) and a.requires_grad == b.requires_grad, name
    for name in ("expert_group", "expert_id", "expert_rank", "expert_trainable"):
        assert torch.equal(getattr(new, name), getattr(old, name)), name
    assert new.structure() == old.structure()
    assert (new.num_experts, new.num_frozen, new.groups) == (old.num_experts, old.num_frozen, old.groups)


def run(layer, x, *, seed=7, autocast=False, group_mask=None, policy=None):
    """Forward + backward; returns output, input grad, parameter grads and the routing events."""
    events = []
    ctx = layer.context
    ctx.group_mask, ctx.policy, ctx.recording = group_mask, policy, True
    ctx.observers[:] = [events.append]
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    out.float().pow(2).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad and p.grad is not None}
    for p in layer.parameters():
        p.grad = None
    return out.detach(), x.grad, grads, events


def assert_same_run(new, old, x, **kw):
    a, b = run(new, x, **kw), run(old, x, **kw)
    assert torch.equal(a[0], b[0]), "outputs differ"
    assert torch.equal(a[1], b[1]), "input gradients differ"
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        ga, gb = a[2][name], b[2][name]
        assert (ga is None and gb is None) or torch.equal(ga, gb), f"gradient of {name} differs"
    assert len(a[3]) == len(b[3])
    for ea, eb in zip(a[3], b[3]):
        for f in ("scores", "adjusted", "weights"):
            assert torch.equal(getattr(ea, f), getattr(eb, f)), f
        assert (ea.token_mask is None) == (eb.token_mask is None)


def policy_mask_first_expert(scores, layer):
    return scores.masked_fill(torch.arange(scores.shape[1]) == 0, float("-inf"))


@pytest.mark.parametrize("router", ["cosine", "linear", "none"])
@pytest.mark.parametrize("top_k", [1, 3, 99])
def test_router_modes_and_top_k(router, top_k):
    new, old = build_pair(router=router, top_k=top_k)
    assert_same_state(new, old)
    x = torch.randn(2, 5, D_IN)
    assert_same_run(new, old, x)


@pytest.mark.parametrize("mask", [[[True, False], [True, True]], [[False, True], [False, False]]])
def test_group_masks(mask):
    new, old = build_pair(top_k=2)
    x = torch.randn(2, 4, D_IN)
    assert_same_run(new, old, x, group_mask=torch.tensor(mask))


def test_policy():
    new, old = build_pair(top_k=2)
    assert_same_run(new, old, torch.randn(3, 4, D_IN), policy=policy_mask_first_expert)


def test_dropout_in_train_mode():
    new, old = build_pair(dropout=0.3)
    new.train(), old.train()
    assert_same_run(new, old, torch.randn(2, 6, D_IN), seed=11)


@pytest.mark.parametrize("router", ["cosine", "linear"])
def test_bf16_autocast(router):
    new, old = build_pair(router=router, top_k=2)
    assert_same_run(new, old, torch.randn(2, 5, D_IN), autocast=True)


def test_bf16_parameters():
    new, old = build_pair(dtype=torch.bfloat16)
    assert_same_run(new, old, torch.randn(2, 5, D_IN, dtype=torch.bfloat16))


@pytest.mark.parametrize("steps", [
    ("add:0:3", "fold", "add:1:4", "prune:1:4"),
    ("add:0:3", "fold", "add:1:2", "fold", "add:2:3", "prune:0:5:7"),
    ("add:0:2", "add:5:3:frozen", "prune:3"),
    ("add:0:3", "fold", "prune:0:1:2"),
])
def test_growth_sequences(steps):
    new, old = build_pair(steps=steps)
    assert_same_state(new, old)
    x = torch.randn(2, 3, D_IN)
    if new.num_experts:
        assert_same_run(new, old, x)


def test_unbatched_and_flat_inputs():
    new, old = build_pair()
    for shape in [(D_IN,), (7, D_IN), (2, 2, 3, D_IN)]:
        assert_same_run(new, old, torch.randn(*shape))


def test_load_structure_matches_the_oracle():
    new, old = build_pair(steps=("add:0:3", "fold", "add:1:4", "prune:2"))
    spec = old.structure()
    fresh_new, fresh_old = build_pair(steps=())
    fresh_new.load_structure(spec)
    fresh_old.load_structure(spec)
    assert_same_state(fresh_new, fresh_old)


# ---------------------------------------------------------------------------------------------------- op counts
class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> Counter:
    with OpCounter() as c:
        fn()
    return c.ops


def fwd_bwd(layer, x):
    def step():
        out = layer(x.detach().clone().requires_grad_(True))
        out.float().pow(2).sum().backward()

    return step


@pytest.mark.parametrize("steps", [("add:0:4",), ("add:0:3", "fold", "add:1:4"), ("add:0:3", "fold")])
def test_default_forward_backward_runs_no_more_ops(steps):
    new, old = build_pair(steps=steps, dropout=0.05)
    new.train(), old.train()
    x = torch.randn(2, 5, D_IN, requires_grad=True)
    n_new, n_old = count_ops(fwd_bwd(new, x)), count_ops(fwd_bwd(old, x))
    assert sum(n_new.values()) <= sum(n_old.values()), (n_new - n_old)
    assert n_new == n_old  # the same operations, not just as many


def test_forward_with_policy_mask_and_observers_runs_the_same_ops():
    """DyMoE's training path: a policy, a group mask and a recording observer."""
    new, old = build_pair(steps=("add:0:3", "fold", "add:1:4"))
    x = torch.randn(2, 5, D_IN, requires_grad=True)
    counts = []
    for layer in (new, old):
        ctx = layer.context
        ctx.policy, ctx.recording = policy_mask_first_expert, True
        ctx.group_mask = torch.tensor([[True, True], [False, True]])
        ctx.observers[:] = [lambda ev: ev.scores.pow(2).sum()]
        counts.append(count_ops(fwd_bwd(layer, x)))
    assert counts[0] == counts[1], counts[0] - counts[1]


def swap_in_oracle(model, adapter):
    """Replace every wrapped layer by a frozen-v1 layer holding the same tensors."""
    for name, layer in adapter.modules.items():
        old = V1.MoELoRALinear(layer.base, alpha=layer.alpha, bank_rank=layer.bank_rank, top_k=layer.top_k,
                               router=layer.router_mode, temperature=layer.temperature, cos_scale=layer.cos_scale,
                               dropout=0.0, init=layer.init, context=layer.context)
        old.load_structure(layer.structure())
        with torch.no_grad():
            for n, t in layer.named_tensors():
                getattr(old, n).copy_(t)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, old)


def test_injected_model_forward_backward_runs_no_more_ops_and_gives_the_same_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    adapter = inject(model, AdapterConfig(experts_per_group=4, expert_rank=2, top_k=2, dropout=0.0))
    adapter.add_group(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.lora_B.normal_()
    adapter.fold()
    adapter.add_group(1)
    ids = torch.randint(0, 64, (2, 9))
    am = torch.ones_like(ids)
    am[0, :2] = 0
    adapter.context.recording = True
    adapter.context.observers.append(lambda ev: None)

    def step():
        out = model(input_ids=ids, attention_mask=am, labels=ids)
        out.loss.backward()
        return out.loss.detach()

    n_new = count_ops(step)
    loss_new = step()
    model.zero_grad(set_to_none=True)
    swap_in_oracle(model, adapter)
    n_old = count_ops(step)
    loss_old = step()
    assert torch.equal(loss_new, loss_old)
    assert sum(n_new.values()) <= sum(n_old.values()), (n_new - n_old)
