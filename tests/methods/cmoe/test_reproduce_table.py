"""``dymoe reproduce cmoe-main-table`` through the CLI with the runner replaced by a stand-in that records each
run's config and writes fixed matrices (the runner itself is exercised by the main table's end-to-end test and the
cmoe run tests): the CMoE row runs the demo's cmoe.yaml layered over its base, the baselines the plan's base; the
table's Immediate / Immediate (PTL) / Last rows and the paper's rows come out of those matrices."""

from __future__ import annotations

import json
from pathlib import Path

from dymoe.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
MAIN = [[10.0], [6.0, 30.0]]  # main evaluation (CMoE: PTL-routed)
ORACLE = [[12.0], [0.0, 32.0]]  # CMoE's oracle-router variant


def test_reproduce_cmoe_main_table(tmp_path, monkeypatch, capsys):
    import dymoe.runner.continual as continual

    seen = {}

    def fake_run(cfg, out):
        out = Path(out)
        seen[cfg.label] = cfg
        out.mkdir(parents=True)
        (out / "matrix.json").write_text(json.dumps({"tasks": ["ScienceQA", "ImageNet"], "accuracy": MAIN}))
        (out / "metrics.json").write_text(json.dumps({"label": cfg.label, "MFN": 18.0}))
        if cfg.method_name == "cmoe":
            (out / "variants" / "oracle").mkdir(parents=True)
            (out / "variants" / "oracle" / "matrix.json").write_text(json.dumps({"tasks": ["ScienceQA", "ImageNet"],
                                                                                 "accuracy": ORACLE}))
        return {}

    monkeypatch.setattr(continual, "run", fake_run)
    out = tmp_path / "table"
    assert main(["reproduce", "cmoe-main-table", "--seeds", "1", "--output", str(out), "--methods",
                 "LoRA,LLaVA-CMoE", "--set", "backbone.path=tiny:test"]) == 0
    cmoe, lora = seen["LLaVA-CMoE"], seen["LoRA"]
    # the CMoE row: configs/demo/cmoe.yaml over configs/demo/minicoin.yaml; LoRA: the plan's base as written
    assert cmoe.method_name == "cmoe" and cmoe.method["vae_epochs"] == 20 and cmoe.adapter.alpha == 8.0
    assert cmoe.benchmark.file == lora.benchmark.file == "minicoin" and cmoe.training.seed == 0
    assert lora.method_name == "lora" and lora.adapter.expert_rank == cmoe.adapter.expert_rank == 4
    lines = (out / "cmoe_main_table_equal.md").read_text().splitlines()
    # LoRA: Immediate = its diagonal (10, 30), Last (6, 30), BWT ((6-10) + 0) / 2 = -2
    assert "| Immediate | LoRA | 1 | 10.00 | 30.00 | 20.00 |  |" in lines
    assert "| Last | LoRA | 1 | 6.00 | 30.00 | 18.00 | -2.00 |" in lines
    # CMoE: Immediate from the oracle (12, 32), PTL diagonal (10, 30), BWT ((6-12) + (30-32)) / 2 = -4
    assert "| Immediate | LLaVA-CMoE | 1 | 12.00 | 32.00 | 22.00 |  |" in lines
    assert "| Immediate (PTL) | LLaVA-CMoE | 1 | 10.00 | 30.00 | 20.00 |  |" in lines
    assert "| Last | LLaVA-CMoE | 1 | 6.00 | 30.00 | 18.00 | -4.00 |" in lines
    # the paper's Table 1 rows for the two tasks run (no Mean / BWT over 2 of its 8 tasks), under the measured ones
    assert lines.index("| Immediate | LLaVA-CMoE (paper) |  | 79.01 | 96.85 |  |  |") > lines.index(
        "| Immediate | LLaVA-CMoE | 1 | 12.00 | 32.00 | 22.00 |  |")
    assert "| Last | LoRA (paper) |  | 68.50 | 34.65 |  |  |" in lines
    summary = json.loads((out / "cmoe_main_table_equal.json").read_text())
    assert summary["methods"] == ["LoRA", "LLaVA-CMoE"] and (out / "LLaVA-CMoE" / "seed0" / "matrix.json").is_file()
    assert "| Last | LLaVA-CMoE | 1 |" in capsys.readouterr().out
