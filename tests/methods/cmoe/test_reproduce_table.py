"""``dymoe reproduce cmoe-main-table`` through the real runner on the tiny backbone (two rows, one seed): the
run folders, the Immediate / Immediate (PTL) / Last rows against the runs' own matrices, the paper's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dymoe.cli.main import main
from dymoe.eval.metrics import cmoe_summary

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_reproduce_cmoe_main_table(tmp_path, cache_env, capsys):
    plan = yaml.safe_load((ROOT / "configs" / "reproduce" / "cmoe-main-table.yaml").read_text())
    smoke = str(ROOT / "configs" / "smoke.yaml")
    plan["base"] = {"minicoin": smoke, "coin": str(ROOT / "configs" / "coin" / "llava-1.5-7b-incmoelora.yaml")}
    for m in plan["methods"]:
        if "config" in m:
            m["config"]["minicoin"] = [smoke, str(ROOT / "configs" / "demo" / "cmoe.yaml")]
            m["config"]["coin"] = [str(ROOT / "configs" / "coin" / "llava-1.5-7b-cmoe.yaml")]
    # method.initial_experts is cmoe's (LoRA's run would refuse it): on the CMoE row only
    plan["methods"][-1]["set"] = ["method.initial_experts=4"]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    sets = ["benchmark.order=[ScienceQA, ImageNet]", "benchmark.max_train_samples=8", "benchmark.max_eval_samples=4",
            "training.batch_size=4", "trackers=[]", "evaluation.max_new_tokens=4"]
    out = tmp_path / "table"
    args = ["reproduce", "cmoe-main-table", "--plan", str(path), "--seeds", "1", "--output", str(out),
            "--methods", "LoRA,LLaVA-CMoE"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    md = (out / "cmoe_main_table_equal.md").read_text()
    lines = md.splitlines()
    for label in ("LoRA", "LLaVA-CMoE"):
        run = out / label / "seed0"
        main_m = json.loads((run / "matrix.json").read_text())["accuracy"]
        oracle = run / "variants" / "oracle" / "matrix.json"
        om = json.loads(oracle.read_text())["accuracy"] if oracle.is_file() else None
        s = cmoe_summary(main_m, immediate=[om[i][i] for i in range(2)] if om else None)
        imm = " | ".join(f"{v:.2f}" for v in s["immediate"])
        last = " | ".join(f"{v:.2f}" for v in s["last"])
        assert f"| Immediate | {label} | 1 | {imm} | {s['mean_immediate']:.2f} |  |" in lines
        assert f"| Last | {label} | 1 | {last} | {s['mean_last']:.2f} | {s['BWT']:.2f} |" in lines
        assert (om is not None) == (label == "LLaVA-CMoE")
    ptl = cmoe_summary(json.loads((out / "LLaVA-CMoE" / "seed0" / "matrix.json").read_text())["accuracy"])
    assert f"| Immediate (PTL) | LLaVA-CMoE | 1 | {ptl['immediate'][0]:.2f} | {ptl['immediate'][1]:.2f} |" in md
    # the paper's Table 1 rows for the two tasks run (no Mean / BWT over 2 of its 8 tasks)
    assert "| Immediate | LLaVA-CMoE (paper) |  | 79.01 | 96.85 |  |  |" in lines
    assert "| Last | LoRA (paper) |  | 68.50 | 34.65 |  |  |" in lines
    assert json.loads((out / "cmoe_main_table_equal.json").read_text())["methods"] == ["LoRA", "LLaVA-CMoE"]
    assert "| Last | LLaVA-CMoE | 1 |" in capsys.readouterr().out
