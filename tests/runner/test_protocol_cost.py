"""Issue 22: the protocol card, per-task cost, format-vs-knowledge forgetting on a smoke run, and compare's
protocol check."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dymoe.cli.main import main
from dymoe.config import load_config
from dymoe.data.tasks import load_benchmark
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.runner.cost import adapter_bypassed, count_flops
from dymoe.runner.protocol import backbone_card, benchmark_card, read_card
from dymoe.runner.report import MixedProtocols, compare_runs

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
FAST = ["benchmark.order=[ScienceQA, TextVQA]", "benchmark.max_train_samples=32", "benchmark.max_eval_samples=8",
        "training.batch_size=8", "trackers=[]"]  # as tests/conftest.py's inclora_smoke_run


@pytest.fixture(scope="module")
def smoke_run(inclora_smoke_run):
    return inclora_smoke_run


# ---------------------------------------------------------------------------------------------- FLOPs


class _Ctx:
    pass


def test_flops_of_one_layer_equal_the_hand_count():
    torch.manual_seed(0)
    n, d_in, d_out, experts, rank = 5, 8, 6, 3, 2
    layer = MoELoRALinear(nn.Linear(d_in, d_out), alpha=4.0, bank_rank=experts * rank, top_k=2, router="linear",
                          temperature=1.0, dropout=0.0)
    layer.add_group(0, experts, rank)
    x = torch.randn(1, n, d_in)
    r = experts * rank
    base = 2 * n * d_in * d_out  # W0 x
    router = 2 * n * d_in * experts  # scores x · U^T
    lora = 2 * n * d_in * r + 2 * n * r * d_out  # (x A^T) then (· B^T)
    assert count_flops(layer, x) == base + router + lora
    adapter = _Ctx()
    adapter.modules = {"layer": layer}
    with adapter_bypassed(adapter):
        assert count_flops(layer, x) == base
    assert count_flops(layer, x) == base + router + lora  # restored


# ---------------------------------------------------------------------------------------------- the smoke run


def test_smoke_run_has_cost_protocol_and_format_matrices(smoke_run):
    out, metrics, _ = smoke_run
    tasks = ["ScienceQA", "TextVQA"]
    cost = metrics["cost"]
    assert list(cost) == tasks
    ckpt_cost = json.loads((out / "checkpoints" / "task_1_ScienceQA" / "adapter.json").read_text())["metadata"]
    assert ckpt_cost["train"]["cost"] == cost["ScienceQA"]  # kept with the checkpoint (survives a kill)
    for _name, c in cost.items():
        assert c["train_seconds"] > 0 and c["optimizer_steps"] == 4 and c["samples"] == 32
        assert c["tokens"] > 0 and c["tokens_per_s"] == pytest.approx(c["tokens"] / c["train_seconds"], rel=1e-2)
        assert c["peak_memory_bytes"] > c["model_bytes"] > 0
        # inclora: a new rank-r LoRA per task; every wrapped module gets r (d_in + d_out) parameters
        assert c["params_added"] == c["params_trainable"] > 0
        assert c["flops_per_token_adapted"] > c["flops_per_token_base"] > 0
        assert c["gen_tokens_per_s_base"] > 0 and c["gen_tokens_per_s_adapted"] > 0
    assert cost["TextVQA"]["total_adapter_params"] == 2 * cost["ScienceQA"]["total_adapter_params"]
    # the extra FLOPs per token are the LoRAs' (router "none": no router products): 2 r (d_in + d_out) per module
    # and token, summed over the bank; twice as many after task 2
    extra = [cost[t]["flops_per_token_adapted"] - cost[t]["flops_per_token_base"] for t in tasks]
    assert extra[0] == 2 * cost["ScienceQA"]["total_adapter_params"] and extra[1] == 2 * extra[0]

    card = read_card(out)
    assert card["benchmark"]["order"] == tasks and card["benchmark"]["max_train_samples"] == 32
    assert card["benchmark"]["eval_questions"] == [8, 8]
    assert len(card["backbone"]["config_sha256"]) == 64 and card["backbone"]["weights"]
    assert card["backbone"]["instruction_tuned"] is None  # tiny:test has no dymoe_base.json
    assert card["adapter"]["trainable_per_task"] == {t: cost[t]["params_trainable"] for t in tasks}
    assert card["recipe"]["global_batch_size"] == 8 and card["evaluation"]["scorers"] == {
        "ScienceQA": "sqa", "TextVQA": "textvqa"}

    fmt = json.loads((out / "format_forgetting.json").read_text())
    matrix = json.loads((out / "matrix.json").read_text())["accuracy"]
    assert fmt["reference"] == matrix  # the configured (reference) scorer, recomputed from the predictions
    assert [len(r) for r in fmt["strict"]] == [1, 2] and all(v is not None for r in fmt["strict"] for v in r)
    assert all(k >= r for rk, rr in zip(fmt["knowledge"], fmt["reference"]) for k, r in zip(rk, rr))
    assert metrics["format_forgetting"] == fmt["summary"]

    report = (out / "report.md").read_text()
    for section in ("## Protocol", "## Cost per task", "## Format vs knowledge forgetting", "### Strict scorers"):
        assert section in report
    assert report.index("## Protocol") < report.index("## Accuracy matrix")
    assert (out / "plots" / "cost.png").stat().st_size > 1000


def test_compare_cost_table(smoke_run, capsys):
    out, metrics, _ = smoke_run
    assert main(["compare", str(out), str(out), "--cost"]) == 0
    text = capsys.readouterr().out
    assert "Cost (totals" in text and "params added" in text
    row = [ln for ln in text.splitlines() if ln.startswith("| inclora | 2 |")][-1]
    total = sum(c["params_added"] for c in metrics["cost"].values())
    assert f"{total:,}" in row


# ---------------------------------------------------------------------------------------------- card hashes


def test_card_hashes_change_with_a_task_file_and_the_backbone(smoke_run, tmp_path):
    out, _, cache = smoke_run
    card = read_card(out)
    folder = tmp_path / "backbone"
    shutil.copytree(card["backbone"]["folder"], folder)
    before = backbone_card("x", folder)
    assert before["weights_sha256"] == card["backbone"]["weights_sha256"]
    assert before["config_sha256"] == card["backbone"]["config_sha256"]
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    after = backbone_card("x", folder)
    assert after["weights_sha256"] != before["weights_sha256"] and after["config_sha256"] == before["config_sha256"]
    cfg_json = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg_json, "note": 1}))
    assert backbone_card("x", folder)["config_sha256"] != before["config_sha256"]
    (folder / "dymoe_base.json").write_text(json.dumps({"instruction_tuned": False, "kind": "llava-1.5-untuned"}))
    assert backbone_card("x", folder)["instruction_tuned"] is False

    # the benchmark: a copy of the run's mini-CoIN, one test file changed by one byte
    bench_dir = next((Path(cache) / "minicoin").iterdir())
    copy = tmp_path / "minicoin"
    shutil.copytree(bench_dir, copy)
    cfg = load_config(SMOKE, FAST)

    def bench_card():
        b = load_benchmark(copy / "benchmark.yaml", order=["ScienceQA", "TextVQA"])
        return benchmark_card(cfg, b, {"ScienceQA": 8, "TextVQA": 8})

    first = bench_card()
    assert first["files_sha256"] == card["benchmark"]["files_sha256"]  # the same files hash the same elsewhere
    test_file = Path(first["tasks"][1]["eval"][0]["path"])
    test_file.write_text(test_file.read_text() + " ")
    second = bench_card()
    assert second["files_sha256"] != first["files_sha256"]
    assert second["tasks"][0] == first["tasks"][0] and second["tasks"][1] != first["tasks"][1]


# ---------------------------------------------------------------------------------------------- compare


def _fake_run(root: Path, label: str, card: dict | None) -> Path:
    root.mkdir(parents=True)
    (root / "matrix.json").write_text(json.dumps({"tasks": ["A", "B"], "accuracy": [[50.0], [40.0, 60.0]]}))
    (root / "metrics.json").write_text(json.dumps({"method": label, "label": label}))
    if card is not None:
        (root / "protocol.json").write_text(json.dumps(card))
    return root


def _card(tuned, lr=1e-3):
    return {"backbone": {"config_sha256": "a" * 64, "weights_sha256": "b" * 64, "instruction_tuned": tuned},
            "recipe": {"lr": lr, "epochs": 1}, "benchmark": {"order": ["A", "B"]}}


def test_compare_refuses_mixed_protocols_and_accepts_them_with_allow_mixed(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", "lora", _card(False))
    b = _fake_run(tmp_path / "b", "dymoe", _card(True, lr=2e-4))
    c = _fake_run(tmp_path / "c", "dymoe", _card(False))
    md, _ = compare_runs([a, c])  # same protocol: one table, no note
    assert "Mixed" not in md and "| dymoe | 1 |" in md
    with pytest.raises(MixedProtocols) as err:
        compare_runs([a, b, c])
    msg = str(err.value)
    assert "backbone.instruction_tuned" in msg and "recipe.lr" in msg and "--allow-mixed" in msg
    assert "recipe.epochs" not in msg and "backbone.config_sha256" not in msg
    md, csv_text = compare_runs([a, b, c], allow_mixed=True)
    assert "| lora [P1] | 1 |" in md and "| dymoe [P2] | 1 |" in md and "| dymoe [P1] | 1 |" in md
    assert "**Mixed protocols** (2)" in md and "- recipe.lr: P1" in md
    # the CLI: a clear error and exit 2, then the table with --allow-mixed
    assert main(["compare", str(a), str(b)]) == 2
    assert "different protocols" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--allow-mixed"]) == 0
    assert "[P2]" in capsys.readouterr().out


def test_compare_notes_fields_some_runs_do_not_have(tmp_path):
    a = _fake_run(tmp_path / "a", "lora", _card(False))
    old = _fake_run(tmp_path / "old", "lora", None)  # a run made before protocol cards
    md, _ = compare_runs([a, old])
    assert "| lora | 2 |" in md and "Not compared" in md and "backbone.instruction_tuned" in md


def test_resume_under_another_protocol_is_refused(smoke_run, tmp_path, monkeypatch):
    from dymoe.errors import DataError
    from dymoe.runner.continual import run

    out, _, cache = smoke_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    card = read_card(copy)
    card["benchmark"]["files_sha256"] = "0" * 64  # as if the task files had been other ones when it started
    (copy / "protocol.json").write_text(json.dumps(card))
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    monkeypatch.setenv("DYMOE_CACHE", str(cache))
    with pytest.raises(DataError, match=r"another protocol \(benchmark.files_sha256: 000000000000 → "):
        run(load_config(SMOKE, [*FAST, "method.name=inclora"]), copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before  # nothing written
