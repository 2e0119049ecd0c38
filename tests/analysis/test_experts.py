"""Expert-activation view: per-group routing mass against hand/naive-loop sums for layers with known router rows,
and the whole view (and CLI) on a tiny two-task run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from PIL import Image

from dymoe.analysis.experts import RoutingMassRecorder, group_mass, recording, routing_mass
from dymoe.cli.main import main
from dymoe.injection.inject import AdapterConfig, ExpertAdapter
from dymoe.layers.context import RoutingContext
from dymoe.layers.moe_lora import MoELoRALinear


def test_group_mass_by_hand():
    weights = torch.tensor([[0.5, 0.5, 0.0, 0.0],
                            [0.1, 0.2, 0.3, 0.4],
                            [0.0, 0.0, 1.0, 0.0]])  # [N=3, E=4]
    groups = torch.tensor([0, 0, 1, 1])
    assert group_mass(weights, groups, [0, 1]).tolist() == pytest.approx([1.3, 1.7])
    mask = torch.tensor([True, True, False])
    assert group_mass(weights, groups, [0, 1], mask).tolist() == pytest.approx([1.3, 0.7])
    # columns follow `groups`; an absent group gets 0
    assert group_mass(weights, groups, [1, 5, 0], mask).tolist() == pytest.approx([0.7, 0.0, 1.3])


# ---------------------------------------------------------------------------- a toy model with known routing
ROUTERS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # [E=4, d=2]: group 0 = rows 0, 1


class Toy(nn.Module):
    """``layers.<i>.proj`` linears (wrapped below); sets the routing context's attention mask like inject's hook."""

    def __init__(self, n_layers: int, ctx: RoutingContext):
        super().__init__()
        self.ctx = ctx
        self.layers = nn.ModuleList(nn.ModuleDict({"proj": nn.Linear(2, 2)}) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.ctx.attention_mask = attention_mask
        for block in self.layers:
            block["proj"](x)  # every layer sees the same input, so the routing is predictable
        return x


def _toy(top_k: int, temperature: float) -> tuple[Toy, ExpertAdapter]:
    ctx = RoutingContext()
    model = Toy(2, ctx)
    modules = {}
    for i, block in enumerate(model.layers):
        layer = MoELoRALinear(block["proj"], router="linear", top_k=top_k, temperature=temperature, dropout=0.0,
                              context=ctx)
        layer.add_group(0, 2, 1)
        layer.fold()
        layer.add_group(1, 2, 1)
        with torch.no_grad():
            layer.frozen_router.copy_(ROUTERS[:2])
            layer.router.copy_(ROUTERS[2:])
        block["proj"] = layer
        modules[f"layers.{i}.proj"] = layer
    return model, ExpertAdapter(model, modules, ctx, AdapterConfig())


def _naive_group_mass(tokens, top_k: int, temperature: float) -> list[float]:
    """Per-token loop: dot-product scores, top-K, softmax with math.exp, summed per group (0: experts 0, 1)."""
    mass = [0.0, 0.0]
    for tok in tokens:
        scores = [sum(u * v for u, v in zip(row, tok)) for row in ROUTERS.tolist()]
        keep = sorted(range(4), key=lambda i: -scores[i])[:top_k]
        z = sum(math.exp(scores[i] / temperature) for i in keep)
        for i in keep:
            mass[0 if i < 2 else 1] += math.exp(scores[i] / temperature) / z
    return mass


X = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]],
                  [[-3.0, 0.0], [0.5, -0.5], [9.0, 9.0]]])  # [B=2, T=3, d=2]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the last token of sample 2 is padding
# no tied scores (top-K would break ties arbitrarily): every token has two non-zero coordinates of distinct size
X_TOPK = torch.tensor([[[2.0, 0.5], [0.3, 1.0], [-1.0, 0.5]],
                       [[-3.0, 0.2], [0.5, -0.7], [9.0, 9.0]]])  # [B=2, T=3, d=2]


def test_dense_mass_equals_hand_softmax_sums():
    model, adapter = _toy(top_k=4, temperature=1.0)
    rec = routing_mass(model, adapter, [{"x": X, "attention_mask": MASK}], [0, 1])
    # token [2, 0]: scores (2, 0, -2, 0) -> group 0 gets (e^2 + 1) / (e^2 + 1 + e^-2 + 1)
    first = (math.e ** 2 + 1) / (math.e ** 2 + 2 + math.e ** -2)
    live = [b * 3 + t for b in range(2) for t in range(3) if MASK[b, t]]
    expected = _naive_group_mass([X.view(-1, 2)[i].tolist() for i in live], 4, 1.0)
    assert _naive_group_mass([[2.0, 0.0]], 4, 1.0)[0] == pytest.approx(first)
    keys, rows = rec.matrix()
    assert keys == ["0", "1"]
    for row in rows:  # both layers route identically
        assert row == pytest.approx(expected, rel=1e-6)
        assert sum(row) == pytest.approx(5.0)  # dense softmax: each of the 5 real tokens spreads mass 1
    assert rec.tokens == {"0": 5, "1": 5}


def test_top_k_mass_equals_naive_loop_and_context_is_restored():
    model, adapter = _toy(top_k=2, temperature=0.5)
    ctx = adapter.context
    sentinel = [lambda ev: None]
    ctx.observers[:] = sentinel
    model.train()
    rec = routing_mass(model, adapter, [{"x": X_TOPK[:1], "attention_mask": MASK[:1]},
                                        {"x": X_TOPK[1:], "attention_mask": MASK[1:]}], [0, 1])
    live = [X_TOPK[b, t].tolist() for b in range(2) for t in range(3) if MASK[b, t]]
    expected = _naive_group_mass(live, 2, 0.5)
    assert rec.matrix()[1][0] == pytest.approx(expected, rel=1e-6)
    # nothing left behind: observers, recording flag, policy and train mode as before
    assert ctx.observers == sentinel and ctx.recording is False and ctx.policy is None and model.training


def test_recording_applies_the_policy_and_a_group_mask_hook():
    model, adapter = _toy(top_k=4, temperature=1.0)

    def only_old(scores, layer):  # a policy masking the new group entirely
        return scores.masked_fill(layer.trainable_mask[None, :], float("-inf"))

    rec = routing_mass(model, adapter, [{"x": X, "attention_mask": MASK}], [0, 1], policy=only_old)
    assert rec.matrix()[1][0] == pytest.approx([5.0, 0.0])

    def new_only_hook(batch):
        adapter.context.group_mask = torch.tensor([[False, True]] * batch["x"].shape[0])

    rec = routing_mass(model, adapter, [{"x": X, "attention_mask": MASK}], [0, 1], batch_hook=new_only_hook)
    assert rec.matrix()[1][0] == pytest.approx([0.0, 5.0])
    assert adapter.context.group_mask is None  # restored by `recording`
    rec2 = RoutingMassRecorder(adapter, [1])
    with recording(adapter, rec2):
        with torch.no_grad():
            model(X, MASK)
    assert rec2.matrix()[1][0] == pytest.approx([_naive_group_mass(
        [X[b, t].tolist() for b in range(2) for t in range(3) if MASK[b, t]], 4, 1.0)[1]])


# ---------------------------------------------------------------------------- the view on a tiny run
@pytest.fixture()
def tiny_run(drift_run):
    """A two-task dymoe run directory on the tiny backbone: one condition of the tiny drift run (conftest.py)."""
    out, status, _ = drift_run
    assert status == 0
    return out / "mode_none"


def test_expert_view_matrix_after_each_task(tiny_run, tmp_path):
    png = tmp_path / "after2.png"
    assert main(["analyze", "experts", str(tiny_run), "--after-task", "2", "--output", str(png)]) == 0
    res = json.loads(png.with_suffix(".json").read_text())
    assert res["after_task"] == 2 and res["tasks"] == ["ScienceQA", "TextVQA"]
    assert res["groups"] == [0, 1] and res["group_tasks"] == ["ScienceQA", "TextVQA"]
    assert res["layers"] == ["0", "1"]
    modules_per_layer = 7  # q, k, v, o, gate, up, down of each decoder layer
    for task in res["tasks"]:
        mass = res["mass"][task]
        assert len(mass) == 2 and all(len(r) == 2 for r in mass)
        # top-K softmax over every expert: each real token hands out mass 1 in every wrapped module
        for row in mass:
            assert sum(row) == pytest.approx(modules_per_layer * res["tokens"][task], rel=1e-6)
            assert min(row) > 0.0
        for row in res["share"][task]:
            assert sum(row) == pytest.approx(1.0)
    agg = res["aggregate"]["mass"]
    assert agg[0][1] == pytest.approx(res["mass"]["ScienceQA"][0][1] + res["mass"]["TextVQA"][0][1])
    with Image.open(png) as im:
        assert im.format == "PNG"
    # after task 1 there is one group and one evaluated task; the default output goes into RUN_DIR/plots
    assert main(["analyze", "experts", str(tiny_run), "--after-task", "1"]) == 0
    res1 = json.loads((tiny_run / "plots" / "experts_after_1.json").read_text())
    assert res1["groups"] == [0] and res1["tasks"] == ["ScienceQA"]
    assert all(row == [pytest.approx(1.0)] for row in res1["share"]["ScienceQA"])


def test_expert_view_bad_input(tiny_run, tmp_path, capsys):
    assert main(["analyze", "experts", str(tiny_run), "--after-task", "3"]) == 2
    assert "--after-task 3" in capsys.readouterr().err
    assert main(["analyze", "experts", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err
