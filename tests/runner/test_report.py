"""report.md / plots of a hand-made run directory, run comparison (mean ± std by hand), and the two CLIs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dymoe.cli.main import main
from dymoe.errors import ConfigError, DataError, DymoeError
from dymoe.runner.report import compare_runs, load_run, mean_final_accuracy, render_report, write_report

TASKS = ["ScienceQA", "TextVQA", "ImageNet"]
MATRIX = [[80.0], [70.5, 60.25], [65.0, 50.0, 90.0]]
# by hand: MFT (80 + 60.25 + 90)/3 = 76.75; MFN (65 + 50 + 90)/3 = 68.33; MAA (80 + 65.375 + 68.3333)/3 = 71.24
# BWT ((65 - 80) + (50 - 60.25))/2 = -12.625 → -12.62 (round half to even on 12.625 is exact binary: -12.62)
# forgetting ((80 - 65) + (60.25 - 50))/2 = 12.625
CONFIG = {
    "backbone": {"path": "/models/llava-1.5-7b", "dtype": "bfloat16"},
    "adapter": {"experts_per_group": 16, "expert_rank": 4, "alpha": 128.0, "top_k": 16, "router": "cosine"},
    "method": {"name": "dymoe", "tau": 0.5, "lambda_exc": 0.1},
    "benchmark": {"file": "minicoin", "order": TASKS, "instruction_type": None},
    "training": {"epochs": 1.0, "batch_size": 16, "lr": 0.0002, "seed": 3},
    "label": "LLaVA-DyMoE",
}


def make_run(root: Path, *, tasks=TASKS, matrix=MATRIX, label="LLaVA-DyMoE", method="dymoe", seed=0,
             config=CONFIG, metrics=True) -> Path:
    """Write a run directory by hand (the runner's contract)."""
    root.mkdir(parents=True)
    (root / "matrix.json").write_text(json.dumps({"tasks": tasks, "accuracy": matrix}))
    if metrics:
        (root / "metrics.json").write_text(json.dumps({
            "method": method, "label": label, "seed": seed, "trainable_params": 1234567,
            "total_adapter_params": 9876543, "final": dict(zip(tasks, matrix[-1])),
        }))
    if config is not None:
        (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "env.json").write_text(json.dumps({"device": "cpu", "git_commit": "abc1234"}))
    return root


def test_report_has_the_exact_matrix_metrics_and_settings(tmp_path):
    run = make_run(tmp_path / "run")
    path = write_report(run)
    assert path == run / "report.md"
    text = path.read_text()
    assert text.startswith("# LLaVA-DyMoE (dymoe)\n")
    assert "Partial run" not in text
    assert "| after \\ on | ScienceQA | TextVQA | ImageNet |" in text
    assert "| ScienceQA | 80.00 |  |  |" in text
    assert "| TextVQA | 70.50 | 60.25 |  |" in text
    assert "| ImageNet | 65.00 | 50.00 | 90.00 |" in text
    assert "| MFT | MFN | MAA | BWT | forgetting |" in text
    assert "| 76.75 | 68.33 | 71.24 | -12.62 | 12.62 |" in text
    assert "- trainable params: 1,234,567" in text and "- total adapter params: 9,876,543" in text
    assert "- seed: 0" in text and "- git commit: abc1234" in text
    for row in ("| method.name | dymoe |", "| method.tau | 0.5 |", "| adapter.experts_per_group | 16 |",
                "| training.lr | 0.0002 |", "| backbone.dtype | bfloat16 |",
                "| benchmark.order | ScienceQA, TextVQA, ImageNet |", "| benchmark.instruction_type | null |"):
        assert row in text, row
    assert "| ImageNet | 90.00 |" in text  # final per-task accuracy
    for name in ("accuracy_matrix", "task_curves", "radar"):
        assert f"(plots/{name}.png)" in text
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] >= 400
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_partial_run_says_so(tmp_path):
    # two rows trained; the config's explicit order has three tasks
    run = make_run(tmp_path / "run", tasks=TASKS[:2], matrix=MATRIX[:2], seed=12345)
    text = write_report(run).read_text()
    assert "- seed: 12345\n" in text  # a seed is not a count: no thousands separator
    assert "> **Partial run**: 2 of 3 tasks trained; not yet: ImageNet." in text
    # metrics of the 2-row matrix: MFT 70.125, MFN 65.375, MAA (80 + 65.375)/2 = 72.6875, BWT -9.5, forgetting 9.5
    assert "| 70.12 | 65.38 | 72.69 | -9.50 | 9.50 |" in text
    with Image.open(run / "plots" / "accuracy_matrix.png") as im:  # columns for all 3 planned tasks
        assert im.size == (round(100 * max(4.5, 0.95 * 3 + 2.5)), round(100 * max(3.5, 0.7 * 2 + 2.0)))


def test_partial_run_from_matrix_tasks_and_minicoin_order(tmp_path):
    # matrix.json may list more tasks than rows
    run = make_run(tmp_path / "a", tasks=TASKS, matrix=MATRIX[:1], config=None, metrics=False)
    text = write_report(run).read_text()
    assert "1 of 3 tasks trained; not yet: TextVQA, ImageNet." in text
    assert text.startswith("# unknown\n") and "No config.yaml" in text
    assert "| 80.00 | 80.00 | 80.00 | n/a | n/a |" in text  # one task: no BWT / forgetting
    # the embedded mini-CoIN's origin order (8 tasks) is known without the data
    from dymoe.data.minicoin import TASK_NAMES

    cfg = {"method": {"name": "lora"}, "benchmark": {"file": "minicoin", "order": "origin"}}
    run = make_run(tmp_path / "b", tasks=list(TASK_NAMES[:2]), matrix=MATRIX[:2], config=cfg, metrics=False)
    summary = load_run(run)
    assert summary.partial and summary.planned == list(TASK_NAMES) and summary.label == "lora"
    # a benchmark YAML on disk gives the order (the data itself is not needed)
    coin = Path(__file__).resolve().parents[2] / "configs" / "benchmarks" / "coin.yaml"
    cfg = {"method": {"name": "lora"}, "benchmark": {"file": str(coin), "order": "reverse", "data_root": None}}
    run = make_run(tmp_path / "d", tasks=["OCRVQA", "VQAv2"], matrix=MATRIX[:2], config=cfg, metrics=False)
    assert "2 of 8 tasks trained; not yet: Grounding, VizWiz, GQA, ImageNet, TextVQA, ScienceQA." in (
        render_report(load_run(run)))
    # an order that cannot be resolved without the data, but the runner's metrics.json says the run is incomplete
    cfg = {"method": {"name": "lora"}, "benchmark": {"file": str(tmp_path / "gone.yaml"), "order": "origin"}}
    run = make_run(tmp_path / "c", tasks=TASKS[:2], matrix=MATRIX[:2], config=cfg)
    info = json.loads((run / "metrics.json").read_text())
    assert "Partial run" not in render_report(load_run(run))
    (run / "metrics.json").write_text(json.dumps({**info, "complete": False}))
    assert "> **Partial run**: 2 task(s) trained so far; the run is not complete." in render_report(load_run(run))


def test_report_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matrix.json: file not found"):
        write_report(tmp_path / "empty")
    run = make_run(tmp_path / "bad")
    (run / "metrics.json").write_text("{oops")
    with pytest.raises(DataError, match="metrics.json: malformed JSON"):
        write_report(run)
    assert not (run / "report.md").exists()


# ------------------------------------------------------------------------------------------------ compare


def _two_seeds_and_lora(tmp_path) -> list[Path]:
    a = make_run(tmp_path / "s0", matrix=[[80.0], [70.0, 60.0], [50.0, 40.0, 90.0]], seed=0)
    b = make_run(tmp_path / "s1", matrix=[[82.0], [72.0, 62.0], [54.0, 44.0, 88.0]], seed=1)
    c = make_run(tmp_path / "lora", matrix=[[70.0], [30.0, 50.0], [20.0, 25.0, 60.0]], label="LoRA", method="lora")
    return [a, b, c]


def test_compare_mean_std_by_hand(tmp_path):
    md, csv_text = compare_runs(_two_seeds_and_lora(tmp_path))
    lines = md.splitlines()
    assert lines[0] == "| Method | n | ScienceQA | TextVQA | ImageNet | MFN | MAA | BWT |"
    # seeds: ScienceQA 50, 54 → 52.00 ± 2.83 (sqrt(8) = 2.828); TextVQA 40, 44 → 42.00 ± 2.83; ImageNet 90, 88 →
    # 89.00 ± 1.41. MFN 60, 62 → 61.00 ± 1.41. MAA: (80 + 65 + 60)/3 = 68.333, (82 + 67 + 62)/3 = 70.333 →
    # 69.33 ± 1.41. BWT: ((50-80) + (40-60))/2 = -25, ((54-82) + (44-62))/2 = -23 → -24.00 ± 1.41
    assert lines[2] == ("| LLaVA-DyMoE | 2 | 52.00 ± 2.83 | 42.00 ± 2.83 | 89.00 ± 1.41 | 61.00 ± 1.41 | "
                        "69.33 ± 1.41 | -24.00 ± 1.41 |")
    # LoRA, one run: MFN 35, MAA (70 + 40 + 35)/3 = 48.33, BWT ((20-70) + (25-50))/2 = -37.5
    assert lines[3] == "| LoRA | 1 | 20.00 | 25.00 | 60.00 | 35.00 | 48.33 | -37.50 |"
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert list(rows[0]) == ["method", "n", "source", "ScienceQA", "ScienceQA_std", "TextVQA", "TextVQA_std",
                             "ImageNet", "ImageNet_std", "MFN", "MFN_std", "MAA", "MAA_std", "BWT", "BWT_std"]
    assert rows[0]["method"] == "LLaVA-DyMoE" and rows[0]["n"] == "2" and rows[0]["source"] == "measured"
    assert float(rows[0]["ScienceQA"]) == 52.0
    assert float(rows[0]["ScienceQA_std"]) == pytest.approx(math.sqrt(8), abs=1e-4)
    assert float(rows[0]["MAA"]) == pytest.approx(69.3333, abs=1e-4)
    assert rows[1]["ScienceQA_std"] == "" and float(rows[1]["BWT"]) == -37.5


def test_compare_group_by_method_order_and_reference(tmp_path):
    runs = _two_seeds_and_lora(tmp_path)
    # a run trained in another order: columns follow the first run, values are matched by name
    d = make_run(tmp_path / "rev", tasks=TASKS[::-1], matrix=[[10.0], [20.0, 30.0], [40.0, 50.0, 60.0]],
                 label="Reversed", method="lora")
    md, _ = compare_runs([runs[2], d], group_by="method")
    # lora: ScienceQA (20, 60), TextVQA (25, 50), ImageNet (60, 40)
    assert md.splitlines()[2].startswith("| lora | 2 | 40.00 ± 28.28 | 37.50 ± 17.68 | 50.00 ± 14.14 |")
    ref = {"LoRA": {"ScienceQA": 52.56, "TextVQA": 48.12, "MFN": 41.79, "BWT": -23.12}}
    md, csv_text = compare_runs(runs, reference=ref)
    assert md.splitlines()[-1] == "| LoRA (paper) |  | 52.56 | 48.12 |  | 41.79 |  | -23.12 |"
    last = list(csv.DictReader(io.StringIO(csv_text)))[-1]
    assert last["method"] == "LoRA (paper)" and last["source"] == "paper" and last["n"] == ""
    assert last["ImageNet"] == "" and float(last["MFN"]) == 41.79
    with pytest.raises(DymoeError, match="unknown columns \\['SQA'\\]"):
        compare_runs(runs, reference={"LoRA": {"SQA": 1.0}})
    assert mean_final_accuracy(runs) == {
        "LLaVA-DyMoE": {"ScienceQA": 52.0, "TextVQA": 42.0, "ImageNet": 89.0},
        "LoRA": {"ScienceQA": 20.0, "TextVQA": 25.0, "ImageNet": 60.0},
    }


def test_compare_errors(tmp_path):
    runs = _two_seeds_and_lora(tmp_path)
    other = make_run(tmp_path / "other", tasks=["ScienceQA", "GQA"], matrix=MATRIX[:2])
    with pytest.raises(DymoeError, match="different task lists.*'GQA'"):
        compare_runs([runs[0], other])
    partial = make_run(tmp_path / "partial", tasks=TASKS, matrix=MATRIX[:2])  # 2 of 3 trained
    with pytest.raises(DymoeError, match="different task lists"):
        compare_runs([runs[0], partial])
    with pytest.raises(ConfigError, match="group_by"):
        compare_runs(runs, group_by="seed")
    with pytest.raises(DataError, match="no run directories"):
        compare_runs([])


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_report(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.md")
    assert "| 76.75 | 68.33 | 71.24 | -12.62 | 12.62 |" in (run / "report.md").read_text()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "error: " in capsys.readouterr().err


def test_cli_compare_writes_the_files(tmp_path, capsys):
    runs = _two_seeds_and_lora(tmp_path)
    ref = tmp_path / "paper.json"
    ref.write_text(json.dumps({"LoRA": {"MFN": 41.79}}))
    out = tmp_path / "out"
    argv = ["compare", *map(str, runs), "--csv", str(out / "t.csv"), "--md", str(out / "t.md"),
            "--radar", str(out / "r.png"), "--reference", str(ref)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| LLaVA-DyMoE | 2 | 52.00 ± 2.83 |" in printed and "| LoRA (paper) |" in printed
    assert (out / "t.md").read_text() == printed
    assert (out / "t.csv").read_text().startswith("method,n,source,ScienceQA,ScienceQA_std,")
    with Image.open(out / "r.png") as im:
        assert im.format == "PNG" and im.size == (600, 600)


def test_cli_compare_errors_exit_2(tmp_path, capsys):
    runs = _two_seeds_and_lora(tmp_path)
    other = make_run(tmp_path / "other", tasks=["GQA"], matrix=[[1.0]])
    assert main(["compare", str(runs[0]), str(other), "--csv", str(tmp_path / "t.csv")]) == 2
    assert "different task lists" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"LoRA": {"MFN": "high"}}))
    assert main(["compare", str(runs[0]), "--reference", str(bad)]) == 2
    assert "expected {label: {task or metric: number}}" in capsys.readouterr().err


def test_an_unset_alpha_is_shown_as_what_it_resolves_to():
    from dymoe.injection.config import AdapterConfig
    from dymoe.runner.report import _settings_rows

    for adapter, expect in (({"experts_per_group": 4, "expert_rank": 4, "alpha": None}, "2 × bank rank = 32"),
                            ({"experts_per_group": 4, "expert_rank": 4, "bank_rank": 64, "alpha": None},
                             "2 × bank rank = 128"),
                            ({"experts_per_group": 4, "expert_rank": 4, "alpha": 8.0}, 8.0)):
        rows = dict(_settings_rows({"method": {"name": "lora"}, "adapter": adapter}))
        assert rows["adapter.alpha"] == expect
        if isinstance(expect, str):  # the same number the layers use
            fields = {k: v for k, v in adapter.items() if k in AdapterConfig.__dataclass_fields__}
            assert expect.endswith(f"{AdapterConfig(**fields).effective_alpha:g}")
