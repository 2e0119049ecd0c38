"""Routing-drift analysis: checkpoint spacing, per-layer token fractions against hand-typed tokens and
``tag_decision``, the method section of a condition, and a whole tiny ``dymoe analyze drift`` run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from dymoe.analysis.drift import (
    ISOLATING_DEFAULTS,
    checkpoint_steps,
    drift_method_config,
    layer_fractions,
    layer_index,
)
from dymoe.cli.main import main
from dymoe.errors import ConfigError, DataError
from dymoe.injection.inject import AdapterConfig, ExpertAdapter
from dymoe.layers.context import RoutingContext
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.methods.dymoe.functional import tag_decision
from dymoe.methods.dymoe.method import DyMoE, DyMoEOptions


# ---------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("total", "n", "expected"),
    [(10, 4, [3, 5, 8, 10]), (4, 2, [2, 4]), (2, 2, [1, 2]), (1, 3, [1]), (7, 1, [7]), (0, 3, [])],
)
def test_checkpoint_steps_are_even_and_end_at_the_last_step(total, n, expected):
    assert checkpoint_steps(total, n) == expected


def test_checkpoint_steps_rejects_zero_evals():
    with pytest.raises(ConfigError, match="--evals"):
        checkpoint_steps(10, 0)


def test_layer_index_reads_the_decoder_layer():
    assert layer_index("model.language_model.layers.12.self_attn.q_proj") == 12
    assert layer_index("layers.0.mlp.up_proj") == 0
    assert layer_index("model.language_model.embed_tokens") is None
    assert layer_index("model.sublayers.3.proj") is None  # "sublayers" is not "layers"


def test_layer_fractions_sum_modules_of_a_layer_then_normalise():
    counts = {
        "m.layers.0.self_attn.q_proj": [1, 2, 1],
        "m.layers.0.mlp.up_proj": torch.tensor([3, 0, 1]),
        "m.layers.1.mlp.up_proj": [0, 0, 0],
        "m.layers.10.mlp.up_proj": [2, 2, 0],
    }
    out = layer_fractions(counts)
    assert list(out) == ["0", "1", "10", "all"]  # numeric layer order, "all" last
    # layer 0: (1+3, 2+0, 1+1) = (4, 2, 2) of 8
    assert out["0"] == {"new": 0.5, "old": 0.25, "ambiguous": 0.25, "tokens": 8}
    assert out["1"] == {"new": 0.0, "old": 0.0, "ambiguous": 0.0, "tokens": 0}
    assert out["10"] == {"new": 0.5, "old": 0.5, "ambiguous": 0.0, "tokens": 4}
    # all: (6, 4, 2) of 12
    assert out["all"]["new"] == pytest.approx(0.5) and out["all"]["old"] == pytest.approx(4 / 12)
    for key in ("0", "10", "all"):
        assert sum(out[key][t] for t in ("new", "old", "ambiguous")) == pytest.approx(1.0)
    with pytest.raises(DataError, match="q_proj"):
        layer_fractions({"m.layers.0.q_proj": [1, 2]})


def test_drift_method_config_isolates_masking_unless_the_config_says_otherwise():
    assert drift_method_config({"name": "lora"}, "only_new") == {"name": "dymoe", **ISOLATING_DEFAULTS,
                                                                 "token_mask_mode": "only_new"}
    own = drift_method_config({"name": "dymoe", "rsr_exc": 0.01, "tau": 0.3}, "tag")
    assert own["rsr_exc"] == 0.01 and own["rsr_spe"] == 0.0 and own["tau"] == 0.3
    assert own["token_mask_mode"] == "tag" and own["tag"] is True
    with pytest.raises(ConfigError, match="drift mode"):
        drift_method_config({"name": "dymoe"}, "everything")


# ---------------------------------------------------------------------------- token typing through the method
# Two expert groups of two experts each, linear router rows = unit vectors: the old group scores are x[0], x[1] and
# the new group's x[2], x[3], so c_old = max(x0, x1), c_new = max(x2, x3) and D_rel = |c_new - c_old| / max(|.|).
TOKENS = [
    ([0.9, 0.0, 0.1, 0.0], "old"),  # D = 0.8 / 0.9 > 0.2, c_old > c_new
    ([0.1, 0.0, 0.9, 0.0], "new"),  # D = 0.8 / 0.9
    ([0.5, 0.0, 0.45, 0.0], "ambiguous"),  # D = 0.05 / 0.5 = 0.1
    ([0.5, 0.2, 0.42, 0.0], "ambiguous"),  # D = 0.08 / 0.5 = 0.16
    ([0.3, 0.0, 0.5, 0.1], "new"),  # D = 0.2 / 0.5 = 0.4
    ([0.0, 0.0, 0.0, 0.0], "ambiguous"),  # both 0: D = 0
    ([0.9, 0.0, 0.0, 0.0], "pad"),  # masked out by the attention mask: not counted
]


def _two_group_layer(ctx: RoutingContext) -> MoELoRALinear:
    layer = MoELoRALinear(nn.Linear(4, 3), router="linear", top_k=4, temperature=1.0, dropout=0.0, context=ctx)
    layer.add_group(0, 2, 1)
    layer.fold()
    layer.add_group(1, 2, 1)
    with torch.no_grad():
        layer.frozen_router.copy_(torch.eye(4)[:2])
        layer.router.copy_(torch.eye(4)[2:])
    return layer


def test_token_fractions_match_hand_typing_and_tag_decision():
    ctx = RoutingContext()
    modules = {f"model.layers.{i}.mlp.up_proj": _two_group_layer(ctx) for i in range(2)}
    holder = nn.ModuleList(modules.values())
    adapter = ExpertAdapter(holder, modules, ctx, AdapterConfig())
    method = DyMoE(DyMoEOptions(tau=0.2))
    method.track_token_types = True  # as run_drift does
    method.setup(holder, adapter)
    x = torch.tensor([[t for t, _ in TOKENS]])  # [1, 7, 4]
    ctx.attention_mask = torch.tensor([[1] * 6 + [0]])  # [1, 7]
    ctx.recording = True
    with torch.no_grad():
        for layer in modules.values():
            layer(x)
    fr = layer_fractions(method.token_stats.total)
    kinds = [k for _, k in TOKENS if k != "pad"]
    hand = {t: kinds.count(t) / len(kinds) for t in ("new", "old", "ambiguous")}  # 2/6, 1/6, 3/6
    for key in ("0", "1", "all"):
        for t in ("new", "old", "ambiguous"):
            assert fr[key][t] == pytest.approx(hand[t])
        assert sum(fr[key][t] for t in hand) == pytest.approx(1.0)
    assert fr["0"]["tokens"] == 6 and fr["all"]["tokens"] == 12
    # the same typing as tag_decision on the raw scores (old experts first)
    scores = x[0, :6] @ torch.eye(4).T  # [6, 4]
    use_new, ambiguous, _ = tag_decision(scores, torch.tensor([False, False, True, True]), 0.2)
    assert fr["0"]["new"] == pytest.approx(use_new.float().mean().item())
    assert fr["0"]["ambiguous"] == pytest.approx(ambiguous.float().mean().item())


# ---------------------------------------------------------------------------- the whole command on a tiny run
# the tiny run itself is the session fixture `drift_run` (conftest.py), shared with the expert-view tests


def test_drift_command_writes_the_documented_json(drift_run):
    out, status, _ = drift_run
    assert status == 0
    drift = json.loads((out / "drift.json").read_text())
    assert set(drift) == {"tasks", "tau", "modes", "evals", "isolating_defaults", "start", "results"}
    assert drift["tasks"] == ["ScienceQA", "TextVQA"] and drift["modes"] == ["none", "only_new"]
    assert drift["tau"] == 0.2 and drift["evals"] == 2
    start = drift["start"]
    assert set(start) == {"task1_after_task1", "task2_at_start"}
    for mode in ("none", "only_new"):
        res = drift["results"][mode]
        assert res["total_steps"] == 2  # 8 samples / batch 4
        assert res["steps"] == [1, 2]
        assert res["method"]["token_mask_mode"] == mode and res["method"]["rsr_exc"] == 0.0
        for a1, a2, f, g in zip(res["acc_task1"], res["acc_task2"], res["forgetting"], res["gain"]):
            assert 0.0 <= a1 <= 100.0 and 0.0 <= a2 <= 100.0
            assert f == pytest.approx(start["task1_after_task1"] - a1)
            assert g == pytest.approx(a2 - start["task2_at_start"])
        assert len(res["token_fractions"]) == 2
        for fr in [*res["token_fractions"], res["token_fractions_overall"]]:
            assert list(fr) == ["0", "1", "all"]  # tiny:test has two decoder layers
            for key, v in fr.items():
                assert v["tokens"] > 0
                assert v["new"] + v["old"] + v["ambiguous"] == pytest.approx(1.0), key
        # the per-checkpoint intervals add up to the whole task
        tok = [fr["all"]["tokens"] for fr in res["token_fractions"]]
        assert sum(tok) == res["token_fractions_overall"]["all"]["tokens"]
        n_new = sum(fr["all"]["new"] * fr["all"]["tokens"] for fr in res["token_fractions"])
        overall = res["token_fractions_overall"]["all"]
        assert n_new == pytest.approx(overall["new"] * overall["tokens"])
    assert (out / "drift.png").stat().st_size > 0
    assert (out / "task1" / "checkpoints" / "task_1_ScienceQA" / "adapter.safetensors").is_file()
    # every condition is a complete two-task run directory (task 1 shared, task 2 its own)
    for mode in ("none", "only_new"):
        ckpts = out / f"mode_{mode}" / "checkpoints"
        assert (ckpts / "task_1_ScienceQA" / "adapter.json").read_bytes() == (
            out / "task1" / "checkpoints" / "task_1_ScienceQA" / "adapter.json").read_bytes()
        meta = json.loads((ckpts / "task_2_TextVQA" / "adapter.json").read_text())
        assert meta["metadata"]["drift_mode"] == mode


def test_drift_rerun_reuses_task1_and_finished_conditions(drift_run):
    out, _, argv = drift_run
    before = {p: p.stat().st_mtime_ns for p in [out / "mode_none" / "drift_mode.json",
                                                 out / "task1" / "checkpoints" / "task_1_ScienceQA" / "adapter.json"]}
    first = json.loads((out / "drift.json").read_text())
    assert main(argv) == 0
    assert json.loads((out / "drift.json").read_text()) == first
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_drift_command_rejects_bad_modes_and_tasks(drift_run, capsys):
    out, _, argv = drift_run
    base = argv[:5]
    assert main([*base, "--modes", "none,sideways"]) == 2
    assert "sideways" in capsys.readouterr().err
    assert main([*base, "--tasks", "ScienceQA"]) == 2
    assert "--tasks" in capsys.readouterr().err
    assert main([*base, "--evals", "0"]) == 2
