"""The shipped D-MoLE configs: LLaVA-1.5-7B and the HF-native InternVL layout loaded against tiny backbones (the
slots of both towers, the paper's settings), the budget arithmetic at LLaVA-1.5-7B's size on the meta device, the
mini-CoIN config and the demo's method list."""

from __future__ import annotations

from pathlib import Path

import torch

from dymoe.config import load_config
from dymoe.injection import inject
from dymoe.methods import build_method

ROOT = Path(__file__).resolve().parents[3]
LLAVA = ROOT / "configs" / "dmole" / "llava-1.5-7b-dmole.yaml"
INTERNVL = ROOT / "configs" / "dmole" / "internvl-hf-dmole.yaml"


def _setup(cfg, model):
    method = build_method(cfg.method)
    adapter = inject(model, method.configure_adapter(cfg.adapter))
    method.setup(model, adapter)
    return method, adapter


def test_llava_config_loads_against_the_tiny_backbone(cache_env):
    from dymoe.models.llava import load_backbone
    from dymoe.runner.resources import resolve_backbone_path

    cfg = load_config(LLAVA, ["backbone.path=tiny:test"])
    o = build_method(cfg.method).options
    assert (o.rank, o.effective_alpha, o.dropout, o.rho, o.min_vision_frac, o.proxy_fraction) == (
        8, 16.0, 0.05, 0.5, 0.25, 0.01)
    assert (o.ae_hidden, o.ae_epochs, o.ae_lr, o.threshold_multiplier, o.eval_top_k) == (128, 100, 1e-3, 1.2, 2)
    assert (cfg.training.lr, cfg.training.global_batch_size, cfg.training.weight_decay) == (1e-4, 80, 0.01)
    assert cfg.evaluation.tasks == "all" and cfg.evaluation.metric == "dmole"
    model, _ = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    method, adapter = _setup(cfg, model)
    assert len(method.slots) == 8 and sorted(adapter.sites) == ["llm", "vision"]


def test_llava_7b_budget_on_the_meta_device():
    """LLaVA-1.5-7B: 32 Vicuna + 24 CLIP-L layers = 112 slots, B = 56, vision floor 14; a rank-8 expert costs
    8 x (4096 + 3 x 4096) per Vicuna qkv slot and 8 x (1024 + 1024) per CLIP o slot."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from dymoe.methods.dmole.allocation import allocate

    cfg = load_config(LLAVA, ["backbone.path=tiny:test"])
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(
            text_config=LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                    num_attention_heads=32, vocab_size=32064),
            vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                           num_attention_heads=16, image_size=336, patch_size=14)))
    method, adapter = _setup(cfg, model)
    assert sum(1 for m in method.modality.values() if m == "llm") == 64
    assert sum(1 for m in method.modality.values() if m == "vision") == 48
    scores = {s: 1.0 for s in method.slots}  # uniform scores: r_vis = 48 / 112 -> round_half_up(24.0) = 24
    out = allocate(scores, method.modality)
    assert out["budget"] == 56 and out["budgets"] == {"llm": 32, "vision": 24}
    llm_qkv = method.slots["model.language_model.layers.0.self_attn.qkv"]
    clip_o = method.slots["model.vision_tower.encoder.layers.0.self_attn.o"]
    adapter.add_group(0, num_experts=1, rank=8, modules=llm_qkv + clip_o)
    assert adapter.num_parameters(trainable_only=True) == 3 * 8 * (4096 + 4096) + 8 * (1024 + 1024)


def test_internvl_hf_layout_loads_against_a_tiny_internvl():
    from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config

    cfg = load_config(INTERNVL, ["backbone.path=tiny:test"])
    torch.manual_seed(0)
    config = InternVLConfig(
        text_config=Qwen2Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=128, pad_token_id=0),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=[16, 16], patch_size=[4, 4]),
        image_token_id=5, image_seq_length=4, downsample_ratio=0.5, vision_feature_layer=-1)
    model = InternVLForConditionalGeneration(config).eval()
    method, adapter = _setup(cfg, model)
    by_mod = {m: sorted(s for s in method.slots if method.modality[s] == m) for m in ("llm", "vision")}
    assert len(by_mod["llm"]) == 4 and len(by_mod["vision"]) == 4
    vis_o = [s for s in by_mod["vision"] if s.endswith(".o")][0]
    assert method.slots[vis_o][0].endswith("attention.projection_layer")
    assert sorted(n.rsplit(".", 1)[1] for n in method.slots[vis_o.replace(".o", ".qkv")]) == ["k_proj", "q_proj",
                                                                                              "v_proj"]
    # the router feature on this layout: [vision last hidden (32); Qwen2 last hidden (64)], L2-normalised
    ids = torch.tensor([[7, 5, 5, 5, 5, 9, 11], [7, 5, 5, 5, 5, 12, 0]])
    batch = {"input_ids": ids, "attention_mask": (torch.arange(7)[None] < torch.tensor([[7], [6]])).long(),
             "pixel_values": torch.randn(2, 3, 16, 16)}
    z = method._features(batch, [0, 1])
    assert z.shape == (2, 96) and torch.allclose(z.norm(dim=1), torch.ones(2))
    assert method.vision_dim == 32


def test_mini_coin_config_and_the_demo():
    from dymoe.demo.plan import demo_config, select_methods

    cfg = demo_config("dmole")
    method = build_method(cfg.method)
    assert method.name == "dmole" and cfg.label == "D-MoLE" and method.options.rank == 8
    assert cfg.evaluation.tasks == "all" and cfg.evaluation.metric == "dmole"
    registered = ["lora", "incmoelora", "dymoe", "cmoe", "dmole"]
    assert select_methods(None, registered) == (["lora", "incmoelora", "dymoe"], [])
    assert select_methods(["dmole", "lora"], registered) == (["lora", "dmole"], [])


def test_the_reproduce_plan_with_d_moles_protocol():
    from dymoe.runner.reproduce import TABLES, load_plan, plan_rows

    plan = load_plan(TABLES["dmole"])
    assert sorted(plan.base) == ["dmole9", "minicoin"]
    for bench in plan.base:
        rows = plan_rows(plan, bench, "paper")
        assert [r.label for r in rows] == ["D-MoLE", "Seq-FT", "IncMoELoRA", "LLaVA-DyMoE", "LLaVA-CMoE"]
        for row in rows:
            cfg = load_config(plan.base[bench], row.overrides)  # every row validates
            build_method(cfg.method)
            assert cfg.evaluation.tasks == "all" and cfg.evaluation.metric == "dmole"
    seqft = load_config(plan.base["minicoin"], plan_rows(plan, "minicoin", "paper")[1].overrides)
    assert build_method(seqft.method).options.merge_after_task
    d9 = load_config(plan.base["dmole9"], plan_rows(plan, "dmole9", "paper")[0].overrides)
    assert build_method(d9.method).options.proxy_fraction == 0.01  # the paper's 1 % on the real benchmark
