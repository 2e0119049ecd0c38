"""`dymoe reproduce main-table` on a tiny plan: all eight methods through the real runner, table with paper rows."""

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from dymoe.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_reproduce_runs_every_method_and_writes_the_table(tmp_path, cache_env, capsys):
    plan = yaml.safe_load((ROOT / "configs" / "reproduce" / "main-table.yaml").read_text())
    plan["base"] = {"minicoin": str(ROOT / "configs" / "smoke.yaml"),
                    "coin": str(ROOT / "configs" / "coin" / "llava-1.5-7b-incmoelora.yaml")}
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    sets = ["benchmark.order=[ScienceQA, ImageNet]", "benchmark.max_train_samples=16", "benchmark.max_eval_samples=4",
            "training.batch_size=8", "trackers=[]", "evaluation.max_new_tokens=4"]
    out = tmp_path / "table"
    args = ["reproduce", "main-table", "--plan", str(plan_path), "--seeds", "1", "--output", str(out)]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    labels = [m["label"] for m in plan["methods"]]
    counts = {}
    for label in labels:
        run = out / label / "seed0"  # the default budget on minicoin is "equal": no row changed, no budget folder
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["label"] == label and metrics["complete"] and metrics["trainable_params"] > 0
        counts[label] = metrics["trainable_params"]
    rows = list(csv.DictReader(io.StringIO((out / "main_table_equal.csv").read_text())))
    # every measured row shows its trainable parameters per task
    assert {r["method"]: int(r["trainable_params"]) for r in rows if r["source"] == "measured"} == counts
    measured = [r["method"] for r in rows if r["source"] == "measured"]
    paper = {r["method"]: r for r in rows if r["source"] == "paper"}
    assert measured == labels
    dymoe_paper = paper["LLaVA-DyMoE (paper)"]
    assert float(dymoe_paper["ScienceQA"]) == 76.25 and float(dymoe_paper["ImageNet"]) == 95.80
    assert dymoe_paper["MFN"] == ""  # the paper's MFN is over 8 tasks: not shown beside a 2-task run
    assert (out / "main_table_equal_radar.png").stat().st_size > 1000
    summary = json.loads((out / "main_table_equal.json").read_text())
    assert summary["methods"] == labels and summary["wall_seconds"] > 0 and summary["budget"] == "equal"
    printed = capsys.readouterr().out
    assert "| Method | n | trainable/task |" in printed and "| LLaVA-DyMoE | 1 |" in printed


# ------------------------------------------------------------------------------------------------ budgets
def test_budgets_resolve_per_benchmark_with_their_own_folders():
    from dymoe.errors import ConfigError
    from dymoe.runner.reproduce import TABLES, load_plan, plan_rows, resolve_budget

    plan = load_plan()
    assert resolve_budget(plan, "coin", None) == "paper" and resolve_budget(plan, "minicoin", None) == "equal"
    paper = {r.label: r for r in plan_rows(plan, "coin", "paper")}
    assert paper["LoRA"].overrides == ["method.name=lora", "method.rank=128", "method.projector_lr=2.0e-5"]
    assert paper["MoELoRA"].overrides[1:] == ["method.total_rank=128", "method.projector_lr=2.0e-5"]
    assert paper["EWC"].overrides[1:] == ["method.rank=64", "method.fisher_batches=50"]
    assert paper["O-LoRA"].overrides[1:] == ["method.rank=64", "method.lambda1=0.5", "adapter.dropout=0.1"]
    assert paper["LoRA"].folder == "LoRA/paper" and paper["O-LoRA"].folder == "O-LoRA/paper"
    # rows a budget leaves alone are shared by both budgets (and by the ablation)
    assert paper["IncMoELoRA"].folder == "IncMoELoRA" and paper["LLaVA-DyMoE"].overrides == ["method.name=dymoe"]
    equal = plan_rows(plan, "coin", "equal")
    assert [(r.overrides, r.folder) for r in equal] == [(sets, label) for label, sets in plan.methods]
    mini = {r.label: r for r in plan_rows(plan, "minicoin", "paper")}
    assert mini["LoRA"].overrides[1:] == ["method.rank=32", "method.projector_lr=2.0e-4"]
    with pytest.raises(ConfigError, match="--budget"):
        resolve_budget(plan, "coin", "huge")
    with pytest.raises(ConfigError, match="no budgets"):
        resolve_budget(load_plan(TABLES["ablation"]), "coin", "paper")


def test_a_plan_naming_an_unknown_row_in_a_budget_is_refused(tmp_path):
    from dymoe.errors import ConfigError
    from dymoe.runner.reproduce import load_plan

    plan = yaml.safe_load((ROOT / "configs" / "reproduce" / "main-table.yaml").read_text())
    plan["budgets"]["paper"]["coin"]["LORA"] = ["method.rank=8"]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    with pytest.raises(ConfigError, match="LORA"):
        load_plan(path)


# router "none" (LoRA, EWC, LwF, IncLoRA, O-LoRA) keeps no router rows
NONE_ROUTER_ROWS = 0


def hand_count(label: str, budget: str, *, h: int, m: int, layers: int, v: int, bank: int, none_rows: int) -> int:
    """Trainable parameters per task, by hand: LoRA of rank r on the 7 projections of a Llama decoder
    (q, k, v, o: h -> h; gate, up: h -> m; down: m -> h) costs r·Σ(d_in + d_out); a router row costs d_in;
    LLaVA's mlp2x_gelu projector v -> h -> h costs v·h + h + h·h + h."""
    io = layers * (4 * 2 * h + 2 * (h + m) + (m + h))  # Σ over modules of (d_in + d_out)
    din = layers * (4 * h + 2 * h + m)  # Σ over modules of d_in
    proj = v * h + h + h * h + h
    if label in ("IncMoELoRA", "LLaVA-DyMoE"):
        return bank * io + 16 * din  # 16 experts of rank bank / 16, one router row each
    if budget == "equal":
        return bank * io + (8 * din if label == "MoELoRA" else none_rows * din)
    return {
        "LoRA": 2 * bank * io + none_rows * din + proj,
        "MoELoRA": 2 * bank * io + 8 * din + proj,
        "EWC": bank * io + none_rows * din,
        "LwF": 2 * bank * io + none_rows * din + proj,
        "IncLoRA": bank * io + none_rows * din,
        "O-LoRA": bank * io + none_rows * din,
    }[label]


LLAVA_7B = dict(h=4096, m=11008, layers=32, v=1024, bank=64)
# the counts documented in configs/reproduce/main-table.yaml
DOCUMENTED_7B = {
    ("paper", "LoRA"): 340_795_392, ("paper", "LwF"): 340_795_392, ("paper", "MoELoRA"): 349_904_896,
    ("paper", "EWC"): 159_907_840, ("paper", "IncLoRA"): 159_907_840, ("paper", "O-LoRA"): 159_907_840,
    ("paper", "IncMoELoRA"): 178_126_848, ("paper", "LLaVA-DyMoE"): 178_126_848,
    ("equal", "LoRA"): 159_907_840, ("equal", "MoELoRA"): 169_017_344, ("equal", "LLaVA-DyMoE"): 178_126_848,
}


def test_the_documented_7b_counts_follow_from_the_shapes():
    for (budget, label), n in DOCUMENTED_7B.items():
        assert hand_count(label, budget, **LLAVA_7B, none_rows=0) == n, (budget, label)


@pytest.mark.parametrize("budget", ["paper", "equal"])
def test_coin_budgets_train_the_hand_counted_parameters(budget, tiny_llava_dir):
    """Every row of the CoIN plan under each budget, built on a small LLaVA (the coin config, backbone swapped):
    the parameters the optimizer gets on task 1 equal the hand count from the model's shapes."""
    from transformers import LlavaForConditionalGeneration

    from dymoe.config import load_config
    from dymoe.injection import inject
    from dymoe.methods import TaskInfo, build_method
    from dymoe.models.tiny import preset_config
    from dymoe.runner.reproduce import load_plan, plan_rows

    plan = load_plan()
    config = preset_config("test", 512)
    shapes = dict(h=config.text_config.hidden_size, m=config.text_config.intermediate_size,
                  layers=config.text_config.num_hidden_layers, v=config.vision_config.hidden_size, bank=64)
    for row in plan_rows(plan, "coin", budget):
        cfg = load_config(plan.base["coin"], [*row.overrides, f"backbone.path={tiny_llava_dir}"])
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config)
        method = build_method(cfg.method)
        adapter = inject(model, method.configure_adapter(cfg.adapter))
        method.setup(model, adapter)
        method.before_task(TaskInfo(0, "ScienceQA", 8))
        got = adapter.num_parameters(trainable_only=True) + sum(p.numel() for p in method.extra_parameters())
        assert got == hand_count(row.label, budget, **shapes, none_rows=NONE_ROUTER_ROWS), row.label
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == got  # nothing else trains
        scaling = {m.scaling for m in adapter.modules.values()}
        assert scaling == {2.0}, row.label  # alpha tied to 2 x the rank: CoIN's r128 / alpha 256 included


def test_task_router_table_averages_the_last_row_over_seeds(tmp_path):
    from dymoe.runner.reproduce import task_router_table

    dirs = []
    for seed, (a, b) in enumerate(((100.0, 50.0), (80.0, 70.0))):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        router = {"after_task_1": {"task_router": {"accuracy": {"A": 0.0}, "mean": 0.0}},
                  "after_task_2": {"task_router": {"accuracy": {"A": a, "B": b}, "mean": (a + b) / 2}}}
        (d / "metrics.json").write_text(json.dumps({"label": "+ Task Router", "method_eval": router}))
        dirs.append(d)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "metrics.json").write_text(json.dumps({"label": "LLaVA-DyMoE"}))
    table = task_router_table([*dirs, plain])
    assert "| Method | n | A | B | mean |" in table
    assert "| + Task Router | 2 | 90.00 ± 14.14 | 60.00 ± 14.14 | 75.00 ± 0.00 |" in table
    assert "LLaVA-DyMoE" not in table and task_router_table([plain]) == ""


def test_paper_rows_keep_shared_tasks_and_drop_rows_with_none():
    """D-MoLE's Table 2 rows (its nine tasks) share no task with mini-CoIN: left out, not printed empty; on its own
    benchmark the tasks run are kept (and its averages only when every paper task ran)."""
    from dymoe.runner.reproduce import TABLES, load_plan, paper_rows

    plan = load_plan(TABLES["dmole"])
    minicoin = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]
    assert paper_rows(plan, ["D-MoLE", "Seq-FT", "IncMoELoRA"], minicoin) == {}
    rows = paper_rows(plan, ["D-MoLE", "Seq-FT"], ["VizWiz-Cap", "SK-VG"])
    assert rows == {"D-MoLE": {"VizWiz-Cap": 148.77, "SK-VG": 61.60}, "Seq-FT": {"VizWiz-Cap": 52.70, "SK-VG": 21.76}}


def test_smoe_dsal_single_and_multi_domain_plans(tmp_path):
    """Table 2's settings of SMoE-DSAL: the single-domain plan runs every row once per domain, that domain alone
    (its own folder), and its table joins the runs (means over seeds by hand); the multi-domain plan trains one joint
    task at 3x the per-domain budget. Every row's config loads."""
    from dymoe.config import load_config
    from dymoe.methods import build_method
    from dymoe.runner.reproduce import TABLES, load_plan, per_task_table, plan_rows

    single = load_plan(TABLES["smoe-dsal-single"])
    rows = plan_rows(single, "minidomains", None)
    assert [(r.label, r.folder) for r in rows[:3]] == [
        ("LoRA (single-domain)", f"LoRA_single-domain_/{t}") for t in ("Medicine", "Chart", "Math")]
    assert len(rows) == 4 * 3 and rows[4].overrides[-1] == "benchmark.order=[Chart]"
    multi = plan_rows(load_plan(TABLES["smoe-dsal-multi"]), "minidomains", None)
    for row in rows + multi:
        cfg = load_config(single.base["minidomains"], [*row.overrides, "backbone.path=tiny:test"])
        method = build_method(cfg.method)
        if "(multi-domain)" in row.label:
            assert cfg.benchmark.order == ["Medicine+Chart+Math"]
            assert (cfg.adapter.expert_rank == 57) if method.name == "lora" else method.options.num_experts == 12
        else:
            assert cfg.benchmark.order == [row.folder.split("/")[-1]]
    dense = build_method(load_config(single.base["minidomains"], rows[3].overrides).method)
    assert (dense.options.router, dense.options.router_top_k) == ("topk", 4)
    dirs = []
    for label, task, seed, value in (("A", "Medicine", 0, 10.0), ("A", "Medicine", 1, 20.0), ("A", "Chart", 0, 4.0),
                                     ("A", "Math", 0, 6.0), ("B", "Medicine", 0, 1.0)):
        d = tmp_path / label / task / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"label": label, "final": {task: value}}))
        dirs.append(d)
    markdown, csv_text = per_task_table(dirs, ["Medicine", "Chart", "Math"])
    assert "| A | 15.00 ± 7.07 | 4.00 | 6.00 | 8.33 |" in markdown  # sample std of 10, 20; mean of 15, 4, 6
    assert "| B | 1.00 |  |  |  |" in markdown
    assert csv_text.splitlines()[1] == "A,15.00,4.00,6.00,8.33"
