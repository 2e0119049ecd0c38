"""The shipped CMoE configs: the CoIN 7B config (the paper's settings) loaded against the tiny backbone, its layer
arithmetic at 7B on the meta device, and the mini-CoIN config."""

from __future__ import annotations

from pathlib import Path

import torch

from dymoe.config import load_config
from dymoe.injection import inject
from dymoe.methods import build_method

ROOT = Path(__file__).resolve().parents[3]
COIN = ROOT / "configs" / "coin" / "llava-1.5-7b-cmoe.yaml"


def test_coin_7b_config_loads_against_the_tiny_backbone(tmp_path, cache_env):
    from dymoe.models.llava import load_backbone
    from dymoe.runner.resources import resolve_backbone_path

    cfg = load_config(COIN, ["backbone.path=tiny:test"])
    method = build_method(cfg.method)
    o = method.options
    assert (o.top_k, o.initial_experts, o.probes, o.probe_fraction, o.probe_lr, o.threshold_alpha, o.aux_weight) == (
        2, 8, 1, 0.1, 3e-4, 0.8, 1e-3)
    assert (o.vae_kl_weight, o.vae_rec_weight, o.vae_hidden, o.vae_latent) == (1e-3, 1e-3, 512, 64)
    assert method.immediate_variant == "oracle" and cfg.evaluation.metric == "cmoe"
    assert (cfg.training.lr, cfg.training.global_batch_size, cfg.training.warmup_ratio) == (2e-4, 128, 0.03)
    model, _ = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    adapter = inject(model, method.configure_adapter(cfg.adapter))
    method.setup(model, adapter)
    torch.manual_seed(0)
    from dymoe.methods.base import TaskInfo

    method.before_task(TaskInfo(index=0, name="ScienceQA", num_tasks=8))
    lead = adapter.modules[method.blocks[0][0]]
    assert lead.expert_sizes == [64] * 8 and lead.scaling == 2.0 and lead.top_k == 2
    assert lead.router_bank.router_ids == [0] and lead.router_mode == "linear"
    assert [n.rsplit(".", 1)[1] for n in method.blocks[0][1]] == ["gate_proj", "up_proj"]


def test_coin_7b_layer_arithmetic_on_the_meta_device():
    """cmoe.md §6.3: one new rank-64 expert on gate_proj + up_proj per selected layer: 1.93M per layer, 61.87M for
    all 32 ("MoELoRA 62M"); SQA's param-ratio 0.65 = 21 of 32 layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = load_config(COIN, ["backbone.path=tiny:test"])
    method = build_method(cfg.method)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                             num_attention_heads=32, vocab_size=32000))
    adapter = inject(model, method.configure_adapter(cfg.adapter))
    adapter.add_group(0, num_experts=1)
    assert adapter.parameter_report()["experts_by_group"][0] == 61_865_984
    adapter.fold()
    expanded = [n for n in adapter.modules if int(n.split(".")[2]) < 21]
    adapter.add_group(1, num_experts=1, modules=expanded)
    assert adapter.parameter_report()["experts_by_group"][1] / 61_865_984 == 21 / 32


def test_mini_coin_config():
    from dymoe.demo.plan import demo_config

    cfg = demo_config("cmoe")
    method = build_method(cfg.method)
    assert method.name == "cmoe" and cfg.adapter.alpha / cfg.adapter.expert_rank == 2.0
    assert cfg.benchmark.file == "minicoin" and cfg.benchmark.order == "origin"
    assert cfg.evaluation.metric == "cmoe" and method.options.vae_epochs == 20


def test_cmoe_joins_the_demo_on_request_only():
    from dymoe.demo.plan import demo_config, select_methods

    registered = ["lora", "incmoelora", "dymoe", "cmoe"]
    assert select_methods(None, registered) == (["lora", "incmoelora", "dymoe"], [])  # the default demo's budget
    assert select_methods(["cmoe", "incmoelora"], registered) == (["incmoelora", "cmoe"], [])
    cfg = demo_config("cmoe", quick=True, seed=2)
    assert cfg.method_name == "cmoe" and cfg.label == "LLaVA-CMoE" and cfg.training.seed == 2
