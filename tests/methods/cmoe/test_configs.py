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


def test_cmoe_main_table_plan_rows_and_paper_rows():
    """``dymoe reproduce cmoe-main-table``: the baselines are the DyMoE main table's rows (same overrides and budgets:
    the same run folders), CMoE runs its own configs (mini-CoIN: the demo's cmoe.yaml layered over minicoin.yaml;
    CoIN: the paper's 7B config), and the paper's rows reproduce its printed Means and CMoE's BWT of Table 1."""
    from dymoe.config import load_config
    from dymoe.methods import build_method
    from dymoe.runner.reproduce import TABLES, load_plan, plan_rows

    plan, main = load_plan(TABLES["cmoe-main-table"]), load_plan(TABLES["main-table"])
    assert plan.layout == "immediate-last" and [label for label, _ in plan.methods] == [
        "LoRA", "MoELoRA", "EWC", "LwF", "LLaVA-CMoE"]
    for bench, budget in (("minicoin", "equal"), ("coin", "paper"), ("minicoin", "paper")):
        ours = {r.label: r for r in plan_rows(plan, bench, budget)}
        theirs = {r.label: r for r in plan_rows(main, bench, budget)}
        for label in ("LoRA", "MoELoRA", "EWC", "LwF"):
            assert (ours[label].overrides, ours[label].folder, ours[label].base) == (
                theirs[label].overrides, theirs[label].folder, None)
    mini = {r.label: r for r in plan_rows(plan, "minicoin", "equal")}["LLaVA-CMoE"]
    cfg = load_config(mini.base, [*mini.overrides, "backbone.path=tiny:test"])
    o = build_method(cfg.method).options
    assert mini.base.name == "minicoin.yaml" and cfg.method_name == "cmoe" and cfg.label == "LLaVA-CMoE"
    assert (o.probe_fraction, o.vae_epochs, o.variants, cfg.adapter.alpha) == (0.5, 20, ["oracle"], 8.0)
    coin = {r.label: r for r in plan_rows(plan, "coin", "paper")}["LLaVA-CMoE"]
    assert coin.base.name == "llava-1.5-7b-cmoe.yaml" and coin.overrides == [] and coin.folder == "LLaVA-CMoE"
    for label, rows in plan.paper.items():
        imm, last = rows["Immediate"], rows["Last"]
        tasks = [k for k in imm if k != "Mean"]
        # printed Means recompute to +-0.01 after rounding (LwF Last: 43.51 printed, 43.52 computed; cmoe.md D2)
        assert abs(sum(imm[t] for t in tasks) / 8 - imm["Mean"]) < 0.015, label
        assert abs(sum(last[t] for t in tasks) / 8 - last["Mean"]) < 0.015, label
    cm = plan.paper["LLaVA-CMoE"]
    assert round(sum(cm["Last"][t] - cm["Immediate"][t] for t in cm["Immediate"] if t != "Mean") / 8, 2) == -3.58


def test_immediate_last_table_from_hand_made_runs(tmp_path):
    """The table's cells against a hand computation: two seeds of a baseline (Immediate = its diagonal) and one of
    CMoE with an oracle variant (Immediate = the oracle's diagonal, Immediate (PTL) = the main diagonal)."""
    import json

    from dymoe.runner.reproduce import immediate_last_table

    def write(folder, label, matrix, oracle=None):
        folder.mkdir(parents=True)
        (folder / "matrix.json").write_text(json.dumps({"tasks": ["A", "B"], "accuracy": matrix}))
        (folder / "metrics.json").write_text(json.dumps({"label": label}))
        if oracle is not None:
            (folder / "variants" / "oracle").mkdir(parents=True)
            (folder / "variants" / "oracle" / "matrix.json").write_text(json.dumps({"tasks": ["A", "B"],
                                                                                    "accuracy": oracle}))
        return folder

    runs = [write(tmp_path / "L0", "LoRA", [[10.0], [4.0, 20.0]]),
            write(tmp_path / "L1", "LoRA", [[30.0], [8.0, 40.0]]),
            write(tmp_path / "C0", "LLaVA-CMoE", [[50.0], [48.0, 60.0]], oracle=[[52.0], [0.0, 62.0]])]
    paper = {"LLaVA-CMoE": {"Immediate": {"A": 1.0, "C": 5.0, "Mean": 2.0},
                            "Last": {"A": 3.0, "C": 5.0, "Mean": 4.0, "BWT": -1.0}}}
    md, csv_text = immediate_last_table(runs, paper)
    lines = md.splitlines()
    # LoRA Immediate: A = (10, 30), B = (20, 40) -> 20 ± 14.14, 30 ± 14.14; Mean (15, 35) -> 25 ± 14.14
    assert "| Immediate | LoRA | 2 | 20.00 ± 14.14 | 30.00 ± 14.14 | 25.00 ± 14.14 |  |" in lines
    # LoRA Last: (4, 8), (20, 40); Mean (12, 24); BWT ((4-10)+(20-20))/2 = -3, ((8-30)+0)/2 = -11 -> -7 ± 5.66
    assert "| Last | LoRA | 2 | 6.00 ± 2.83 | 30.00 ± 14.14 | 18.00 ± 8.49 | -7.00 ± 5.66 |" in lines
    # CMoE: Immediate from the oracle (52, 62), PTL diagonal (50, 60), Last (48, 60), BWT ((48-52)+(60-62))/2 = -3
    assert "| Immediate | LLaVA-CMoE | 1 | 52.00 | 62.00 | 57.00 |  |" in lines
    assert "| Immediate (PTL) | LLaVA-CMoE | 1 | 50.00 | 60.00 | 55.00 |  |" in lines
    assert "| Last | LLaVA-CMoE | 1 | 48.00 | 60.00 | 54.00 | -3.00 |" in lines
    # the paper's rows under the measured ones, only the tasks run, no Mean / BWT (its task C was not run)
    assert "| Immediate | LLaVA-CMoE (paper) |  | 1.00 |  |  |  |" in lines
    assert "| Last | LLaVA-CMoE (paper) |  | 3.00 |  |  |  |" in lines
    assert lines.index("| Last | LLaVA-CMoE (paper) |  | 3.00 |  |  |  |") > lines.index(
        "| Last | LLaVA-CMoE | 1 | 48.00 | 60.00 | 54.00 | -3.00 |")
    assert csv_text.splitlines()[0] == "stage,method,source,n,A,B,Mean,BWT"
