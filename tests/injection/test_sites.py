"""Injection sites (several target kinds per adapter: linears, MLP blocks, the vision tower), checkpoints and
snapshots over the layer protocol, and parameter accounting against hand counts and the papers' arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from dymoe.errors import ConfigError
from dymoe.injection import ActiveExpertMeter, AdapterConfig, inject, load_adapter, save_adapter
from dymoe.layers.moe_ffn import MoEFFN
from dymoe.layers.moe_lora import MoELoRALinear


def small(**kw):
    base = dict(experts_per_group=3, expert_rank=2, top_k=2, alpha=8.0, dropout=0.0, temperature=0.5)
    return AdapterConfig(**{**base, **kw})


MIXED = [
    {"name": "lm"},
    {"name": "vision", "scope": "vision", "targets": ["q_proj", "v_proj"], "experts_per_group": 2},
    {"name": "ffn", "kind": "mlp", "experts_per_group": 3, "expert_width": 4, "router_hidden": 4},
]


def test_without_sites_the_flat_fields_are_the_default_site(tiny):
    a = inject(tiny.llava(), small())
    b = inject(tiny.llava(), small(sites=[{}]))
    assert list(a.modules) == list(b.modules)
    assert set(a.site_of.values()) == {"default"} and set(b.site_of.values()) == {"site0"}
    site = a.site(next(iter(a.modules)))
    assert (site.kind, site.stream, site.expert_rank, site.top_k) == ("linear", "text", 2, 2)
    assert a.config.to_dict()["sites"] is None  # config.yaml of existing runs is unchanged


def test_sites_wrap_linears_mlp_blocks_and_the_vision_tower(tiny):
    model = tiny.llava()
    adapter = inject(model, small(targets=["q_proj", "o_proj"], sites=MIXED))
    kinds = {}
    for name, m in adapter.modules.items():
        kinds.setdefault((adapter.site_of[name], type(m).__name__, m.stream), []).append(name)
    assert sorted(kinds) == [("ffn", "MoEFFN", "text"), ("lm", "MoELoRALinear", "text"),
                             ("vision", "MoELoRALinear", "vision")]
    assert all("vision_tower" in n for n in kinds[("vision", "MoELoRALinear", "vision")])
    assert len(kinds[("vision", "MoELoRALinear", "vision")]) == 4  # 2 CLIP layers × (q, v)
    assert all(n.endswith(".mlp") and "language_model" in n for n in kinds[("ffn", "MoEFFN", "text")])
    adapter.add_group(0)
    sizes = {adapter.site_of[n]: (m.num_experts, m.expert_sizes[0]) for n, m in adapter.modules.items()}
    assert sizes == {"lm": (3, 2), "vision": (2, 2), "ffn": (3, 4)}  # each site's own sizes


def test_overlapping_sites_and_bad_site_keys_are_clear_errors(tiny):
    with pytest.raises(ConfigError, match="both cover"):
        inject(tiny.llava(), small(sites=[{"targets": ["gate_proj"]}, {"kind": "mlp", "name": "f"}]))
    with pytest.raises(ConfigError, match=r"adapter.sites\[1\]: unknown key 'rank'"):
        small(sites=[{}, {"rank": 3}])
    with pytest.raises(ConfigError, match="router must be one of"):
        small(sites=[{"kind": "mlp", "router": "cosine"}])
    with pytest.raises(ConfigError, match="no vision tower"):
        inject(tiny.llama(), small(sites=[{"scope": "vision"}]))


def _grow(adapter, steps=2):
    torch.manual_seed(3)
    for g in range(steps):
        adapter.add_group(g)
        with torch.no_grad():
            for m in adapter.modules.values():
                for _, t in m.named_tensors():
                    if t.requires_grad:
                        t.normal_(std=0.2)
        if g < steps - 1:
            adapter.fold()


def test_checkpoint_of_a_multi_site_adapter_reproduces_outputs(tiny, tmp_path):
    model = tiny.llava()
    cfg = small(targets=["q_proj"], sites=[*MIXED, {"name": "blk", "targets": ["gate_proj", "up_proj"],
                                                     "share_router": "block"}])
    with pytest.raises(ConfigError, match="both cover"):
        inject(model, cfg)  # the mlp site wraps the blocks that hold gate_proj / up_proj
    cfg = small(targets=["q_proj"], sites=[MIXED[0], MIXED[1], {"name": "blk", "targets": ["gate_proj", "up_proj"],
                                                                 "share_router": "block"}])
    adapter = inject(model, cfg)
    _grow(adapter)
    adapter.prune({next(iter(adapter.modules)): [0]})
    inputs = tiny.llava_inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
    save_adapter(adapter, tmp_path / "ckpt")
    fresh = tiny.llava()
    adapter2, _ = load_adapter(fresh, tmp_path / "ckpt")
    assert adapter2.structure() == adapter.structure() and adapter2.site_of == adapter.site_of
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, ref)
    keys = load_file(str(tmp_path / "ckpt" / "adapter.safetensors")).keys()
    followers = [n for n, m in adapter.modules.items() if getattr(m, "route_role", "") == "follower"]
    assert followers and all(adapter.modules[n].router.numel() == 0 for n in followers)
    assert any(k.endswith(".up_proj.frozen_A") for k in keys)


def test_ffn_site_checkpoint_and_snapshot_restore(tiny, tmp_path):
    model = tiny.llama()
    adapter = inject(model, small(sites=[{"kind": "mlp", "expert_width": 4, "router_hidden": 3}]))
    assert all(isinstance(m, MoEFFN) for m in adapter.modules.values())
    _grow(adapter)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    save_adapter(adapter, tmp_path / "ckpt")
    names = set(load_file(str(tmp_path / "ckpt" / "adapter.safetensors")))
    assert "model.layers.0.mlp.router_w1" in names and "model.layers.0.mlp.frozen_w_down" in names
    fresh = tiny.llama()
    load_adapter(fresh, tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, ref)
    # snapshot, grow probes, change them, restore: the same banks and outputs, no expert id reused
    snap = adapter.snapshot()
    before = adapter.structure()
    next_ids = {n: m._next_expert_id for n, m in adapter.modules.items()}
    adapter.fold()
    adapter.add_group(7, num_experts=1, init="mean", source=[0])
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(1.0)
    adapter.restore(snap)
    assert {n: {k: v for k, v in s.items() if k != "next_expert_id"} for n, s in adapter.structure().items()} == {
        n: {k: v for k, v in s.items() if k != "next_expert_id"} for n, s in before.items()}
    assert all(m._next_expert_id == next_ids[n] + 1 for n, m in adapter.modules.items())
    assert all(p.requires_grad for p in adapter.trainable_parameters()) and adapter.trainable_parameters()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)


def test_lora_snapshot_restore_after_probes(tiny):
    model = tiny.llama()
    adapter = inject(model, small())
    _grow(adapter)
    adapter.fold()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    snap = adapter.snapshot()
    adapter.add_group(9, num_experts=1, init="mean")  # CMoE's probes: the mean of the old experts
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.normal_()
        assert not torch.equal(model(input_ids=ids).logits, ref)
    adapter.restore(snap)
    assert adapter.groups() == [0, 1] and not adapter.trainable_parameters()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)


def test_vision_experts_see_every_patch_token_of_a_mixed_batch(tiny):
    """Text-only and multi-image samples in one batch: rows map to samples, every patch token is counted."""
    model = tiny.llava()
    adapter = inject(model, small(sites=[{"name": "vision", "scope": "vision", "targets": ["q_proj"]}]))
    adapter.add_group(0)
    adapter.fold()
    adapter.add_group(1)
    inputs = tiny.llava_inputs(images_per_sample=(0, 2, 1))  # 3 images for 3 samples, sample 0 has none
    events = []
    ctx = adapter.context
    ctx.recording, ctx.observers = True, [events.append]
    ctx.group_mask = torch.tensor([[True, True], [True, False], [False, True]])
    model(**inputs)
    assert ctx.image_rows.tolist() == [1, 1, 2]
    assert len(events) == 2
    tokens_per_image = tiny.PATCHES + 1  # CLS + patches
    for ev in events:
        assert ev.token_mask is None and ev.weights.shape[0] == 3 * tokens_per_image
        allowed = torch.isfinite(ev.adjusted).reshape(3, tokens_per_image, -1)
        groups = ev.layer.expert_group
        assert allowed[:2][..., groups == 1].sum() == 0 and allowed[:2][..., groups == 0].all()  # sample 1
        assert allowed[2][..., groups == 0].sum() == 0 and allowed[2][..., groups == 1].all()  # sample 2
    meter = ActiveExpertMeter(adapter)
    ctx.observers = [meter]
    model(**inputs)
    assert all(v == pytest.approx(2.0) for v in meter.mean_active().values())  # top-2 on every patch token


def test_parameter_report_matches_hand_counts(tiny):
    model = tiny.llava()
    adapter = inject(model, small(targets=["q_proj"], sites=MIXED))
    adapter.add_group(0)
    rep = adapter.parameter_report()
    assert rep["total"] == adapter.num_parameters() == rep["trainable"]
    # lm: q_proj 32→32, 2 layers, 3 experts of rank 2 + a router row each
    lm = 2 * 3 * (2 * (32 + 32) + 32)
    # vision: q_proj and v_proj 16→16, 2 layers, 2 experts of rank 2 + router rows
    vision = 2 * 2 * 2 * (2 * (16 + 16) + 16)
    # ffn: 2 blocks, 3 SwiGLU experts of width 4 on d = 32 + a router 32→4→(1 + 3)
    ffn = 2 * (3 * 4 * 3 * 32 + (32 * 4 + 4 + 4 * 4 + 4))
    assert rep["by_site"] == {"lm": lm, "vision": vision, "ffn": ffn}
    assert rep["by_stream"] == {"text": lm + ffn, "vision": vision}
    assert rep["by_kind"] == {"moe_lora": lm + vision, "moe_ffn": ffn}
    assert rep["by_group"] == {0: lm + vision + ffn}
    # activated per token: top-2 LoRA experts + every router row; the AT-Router's maximum (3 experts)
    act = 2 * (2 * 2 * (32 + 32) + 3 * 32) + 4 * (2 * 2 * (16 + 16) + 2 * 16) + 2 * (3 * 4 * 96 + 152)
    assert rep["activated_per_token"] == act


def test_cmoe_parameter_arithmetic_at_7b_on_the_meta_device():
    """cmoe.md §6.3: rank-64 experts on gate_proj + up_proj (4096↔11008) of 32 layers = 61.87M per expert set;
    one router per block (the leader's rows only)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                             num_attention_heads=32, vocab_size=32000))
    cfg = AdapterConfig(sites=[{"targets": ["gate_proj", "up_proj"], "share_router": "block", "experts_per_group": 1,
                                "expert_rank": 64, "top_k": 2, "router": "linear", "temperature": 1.0}])
    adapter = inject(model, cfg)
    adapter.add_group(0)
    rep = adapter.parameter_report()
    assert rep["experts_by_group"][0] == 61_865_984  # "MoELoRA 62M" (Table 8)
    assert rep["routers_by_group"][0] == 32 * 4096  # one router row per block, not per projection
    expanded = [n for n in adapter.modules if int(n.split(".")[2]) < 21]  # 21 of 32 layers expanded (SQA, 0.65)
    adapter.fold()
    adapter.add_group(1, modules=expanded)
    assert adapter.parameter_report()["experts_by_group"][1] == 21 * 64 * (4096 + 11008) * 2  # 40.6M


def test_adapter_json_records_the_sites(tiny, tmp_path):
    adapter = inject(tiny.llava(), small(targets=["q_proj"], sites=MIXED))
    adapter.add_group(0)
    save_adapter(adapter, tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "adapter.json").read_text())
    assert [s["name"] for s in meta["config"]["sites"]] == ["lm", "vision", "ffn"]
    assert any(isinstance(m, MoELoRALinear) and m.stream == "vision" for m in adapter.modules.values())
