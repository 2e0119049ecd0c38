"""CMoE's initial experts trained on an initial data set of their own (cmoe.md A1) as the runner's initial phase,
on a benchmark with per-task epochs, through ``dymoe run`` on the tiny backbone: the phase's files and training,
PGKE from task 1 on, the initial experts and router 0 frozen afterwards, router ids shifted by one, the VAE trained
for each task's own epochs, the phases' wall times, the metadata, and resume from the saved initial phase."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dymoe.config import load_config
from dymoe.methods.base import BatchInfo
from dymoe.methods.cmoe import CMoE, CMoEOptions
from dymoe.runner.continual import run
from dymoe.runner.resources import resolve_minicoin

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _data(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A benchmark ImageNet (2 epochs) -> ScienceQA, and an initial data set: 8 TextVQA rows (a task not in it)."""
    src = resolve_minicoin("small")
    data = yaml.safe_load(src.read_text())
    tasks = {t["name"]: t for t in data["tasks"]}
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({"name": "two", "instruction_type": "origin", "data_root": str(src.parent),
                                     "order": ["ImageNet", "ScienceQA"],
                                     "tasks": [{**tasks["ImageNet"], "epochs": 2}, tasks["ScienceQA"]]}))
    text = tasks["TextVQA"]
    rows = json.loads((src.parent / text["train"]).read_text())[:8]
    initial = tmp_path / "initial.json"
    initial.write_text(json.dumps(rows))
    return bench, initial, src.parent / text["image_root"]


def _settings(bench: Path, initial: Path, images: Path) -> list[str]:
    return ["method.name=cmoe", f"benchmark.file={bench}", "benchmark.order=null", "benchmark.max_train_samples=8",
            "benchmark.max_eval_samples=2", "evaluation.max_new_tokens=4", "training.batch_size=4", "evaluation.metric=cmoe",
            "method.initial_experts=4", "method.probe_fraction=0.5", f"method.initial_data={initial}",
            f"method.initial_image_root={images}", "method.initial_epochs=2", "method.initial_lr=5.0e-3",
            "method.variants=[oracle]", "trackers=[]"]


@pytest.mark.slow
def test_initial_phase_per_task_epochs_and_phase_times(tmp_path, cache_env):
    bench, initial, images = _data(tmp_path)
    out = tmp_path / "run"
    metrics = run(load_config(SMOKE, _settings(bench, initial, images)), out)
    ck = out / "checkpoints"
    # the initial phase: its own data (8 rows), 2 epochs at batch 4 = 4 steps (16 sample passes) at its own lr
    ini = json.loads((ck / "initial.plan" / "plan.json").read_text())
    assert ini["data"] == [str(initial)] and ini["samples"] == 8 and ini["log"]["initial_experts"] == 4
    assert [(t["steps"], t["samples"], t["lr"], t["epochs"]) for t in ini["train"]] == [(4, 16, 5e-3, 2.0)]
    assert ini["seconds"] > 0 and metrics["train"]["ImageNet"]["initial"]["seconds"] == ini["seconds"]
    # PGKE from task 1 on; task k's experts are group k + 1 (group 0: the initial experts)
    for k, task in enumerate(["ImageNet", "ScienceQA"], start=1):
        plan = json.loads((ck / f"task_{k}_{task}.plan" / "plan.json").read_text())
        assert "pgke" in plan["log"] and plan["seconds"] > 0
        assert metrics["train"][task]["plan"]["seconds"] == plan["seconds"]
        # the VAE trains for the task's own epochs (vae_epochs null): 8 features at batch 4 -> 2 steps per epoch
        assert plan["log"]["vae"]["steps"] == {"ImageNet": 4, "ScienceQA": 2}[task]
        n_new = load_file(str(ck / f"task_{k}_{task}.plan" / "plan_state.safetensors"))["pgke.n_new"].tolist()
        structure = json.loads((ck / f"task_{k}_{task}" / "adapter.json").read_text())["modules"]
        leads = [n for n in structure if n.endswith("gate_proj")]
        assert [structure[n]["expert_group"].count(0) for n in leads] == [4, 4]
        assert [structure[n]["expert_group"].count(k) for n in leads] == n_new
    method = load_file(str(ck / "task_2_ScienceQA" / "method_state.safetensors"))
    assert method["grown"].shape[0] == 2  # one row per task (no initial row)
    # the initial experts and router 0 are the initial phase's, bit for bit, after both tasks; they trained
    state = load_file(str(ck / "initial.plan" / "plan_state.safetensors"))
    final = load_file(str(ck / "task_2_ScienceQA" / "adapter.safetensors"))
    for name, t in state.items():
        if name.endswith("frozen_B"):
            assert torch.equal(final[name][:, : t.shape[1]], t), name
            assert t.abs().sum() > 0, name  # B starts at zero: the phase trained it
        elif name.endswith("frozen_A") or name.endswith("router_bank.frozen"):
            assert torch.equal(final[name][: t.shape[0]], t), name
    bank = [json.loads((ck / "task_2_ScienceQA" / "adapter.json").read_text())["modules"][n] for n in leads]
    routers = [sorted(set(b["router_bank"]["frozen_router"])) for b in bank]
    assert routers == [[0, 1, 2], [0, 1, 2]]
    meta = json.loads((ck / "task_1_ImageNet" / "adapter.json").read_text())["metadata"]
    assert meta["method"]["initial_experts_trained_on"] == f"initial data {initial} (an initial phase before task 1)"

    # resume: the run directory as a run killed right after its initial phase leaves it (its config and the saved
    # phase) loads the phase and ends with the same files
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "config.yaml", again / "config.yaml")
    shutil.copytree(ck / "initial.plan", again / "checkpoints" / "initial.plan")
    m2 = run(load_config(SMOKE, _settings(bench, initial, images)), again)
    assert m2["train"]["ImageNet"]["initial"]["loaded"] is True
    for rel in ["matrix.json", "variants/oracle/matrix.json", "checkpoints/task_2_ScienceQA/adapter.safetensors",
                "checkpoints/task_2_ScienceQA/method_state.safetensors"]:
        assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_router_ids_are_shifted_by_the_initial_phase():
    """With an initial phase, task i's router is i + 1 (router 0: the initial experts); the locator's predicted
    task is not shifted. The fallback keeps router i for task i."""
    batch = {"input_ids": torch.zeros(3, 5, dtype=torch.long)}
    for data, offset in (("first_task", 0), ("init.json", 1)):
        m = CMoE(CMoEOptions(initial_data=data))
        m.primitives = torch.zeros(3, 2, dtype=torch.float64)
        oracle = m.batch_routing(batch, BatchInfo(phase="eval", task_index=1, task="b", variant="oracle", stage=3))
        assert oracle["router_ids"].tolist() == [1 + offset] * 3 and oracle["predicted_task"].tolist() == [1] * 3
        last = m.batch_routing(batch, BatchInfo(phase="eval", task_index=0, task="a", variant="last_router", stage=3))
        assert last["router_ids"].tolist() == [2 + offset] * 3
        assert m.initial_data() == (None if offset == 0 else {"train": "init.json", "image_root": "."})
