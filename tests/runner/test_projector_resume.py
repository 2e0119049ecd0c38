"""A run that trains the projector (CoIN's baselines, ``method.projector_lr``): the projector is in every task and
step checkpoint, in its own optimizer group, and a run stopped inside task 2 resumes to the same result."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dymoe.config import load_config
from dymoe.runner.continual import run
from dymoe.runner.trainer import TaskTrainer

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
SETS = ["benchmark.order=[ScienceQA, ImageNet]", "benchmark.max_train_samples=16", "benchmark.max_eval_samples=4",
        "training.batch_size=8", "trackers=[]", "method.name=lora", "method.projector_lr=5.0e-3",
        "training.save_every_steps=1"]


class Stop(Exception):
    pass


def test_projector_checkpoints_and_resume_inside_task_2(tmp_path, cache_env, monkeypatch):
    cfg = load_config(SMOKE, SETS)
    ref = tmp_path / "ref"
    metrics = run(cfg, ref)
    n_proj = (32 * 64 + 64) + (64 * 64 + 64)  # the tiny backbone's projector: 32 -> 64 -> 64
    assert metrics["train"]["ScienceQA"]["trainable_params"] == n_proj + metrics["total_adapter_params"]
    states = {k: load_file(str(ref / "checkpoints" / k / "method_state.safetensors"))
              for k in ("task_1_ScienceQA", "task_2_ImageNet")}
    keys = {f"module.projector.linear_{i}.{t}" for i in (1, 2) for t in ("weight", "bias")}
    assert all(set(s) == keys for s in states.values())
    # it trained: task 2 moved it again
    assert not torch.equal(states["task_1_ScienceQA"]["module.projector.linear_2.weight"],
                           states["task_2_ImageNet"]["module.projector.linear_2.weight"])

    # stop right after task 2's first step checkpoint, then resume
    seen = {}
    save = TaskTrainer._save_step

    def save_then_stop(self, step_dir, micro_done, task, optimizer, scheduler):
        save(self, step_dir, micro_done, task, optimizer, scheduler)
        seen["groups"] = json.loads((step_dir / "trainer_state.json").read_text())["param_groups"]
        seen["partial"] = load_file(str(step_dir / "method_state.safetensors"))
        if task.index == 1:
            raise Stop

    monkeypatch.setattr(TaskTrainer, "_save_step", save_then_stop)
    broken = tmp_path / "broken"
    with pytest.raises(Stop):
        run(cfg, broken)
    monkeypatch.undo()
    assert [g["name"] for g in seen["groups"]] == ["main", "projector"]
    assert seen["groups"][1]["initial_lr"] == 5e-3 and seen["groups"][0]["initial_lr"] == cfg.training.lr
    assert set(seen["partial"]) == set(states["task_1_ScienceQA"])
    run(cfg, broken)
    assert (broken / "matrix.json").read_text() == (ref / "matrix.json").read_text()
    for k, ref_state in states.items():
        got = load_file(str(broken / "checkpoints" / k / "method_state.safetensors"))
        assert all(torch.equal(got[n], ref_state[n]) for n in ref_state), k
        a = load_file(str(ref / "checkpoints" / k / "adapter.safetensors"))
        b = load_file(str(broken / "checkpoints" / k / "adapter.safetensors"))
        assert all(torch.equal(a[n], b[n]) for n in a), k
