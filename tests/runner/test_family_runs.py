"""A two-task ``dymoe run`` (DyMoE, train + evaluate) on the tiny random model of every family.

Checked against values computed another way: the wrapped modules are exactly the 7 projections of every decoder
layer of the language model (from the model's config), none in the vision tower; one prediction per test sample
and (task, row) pair; the trained experts of task 1 are non-zero and frozen bit-identically through task 2; the
evaluation rows are what re-scoring the stored predictions gives. A text-only causal LM refuses image samples
naming the task, or skips exactly the image rows with ``backbone.image_samples=skip``.

CI runs the families in :data:`CI_FAMILIES` (one per batching rule); the others are marked ``slow`` and run with
``DYMOE_SLOW_TESTS=1 pytest -m slow tests/runner/test_family_runs.py`` (about 20 s each on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dymoe.cli.main import main
from dymoe.io import read_jsonl
from dymoe.models.tiny_families import FAMILIES
from dymoe.models.vision_deps import MissingDependency, require_vision_deps
from dymoe.runner.resources import resolve_backbone_path, resolve_minicoin

ROOT = Path(__file__).resolve().parents[2]
# one family per batching rule: per-image joins + mrope (Qwen2-VL), cross-attention slots (Mllama),
# prefix/suffix token types (PaliGemma), a causal LM (Qwen2); LLaVA itself runs in test_continual.py
CI_FAMILIES = ("qwen2_vl", "mllama", "paligemma", "qwen2")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RUN = ["--set", "benchmark.max_train_samples=12", "--set", "benchmark.max_eval_samples=4",
       "--set", "training.batch_size=4", "--set", "evaluation.batch_size=4", "--set", "evaluation.max_new_tokens=4",
       "--set", "method.name=dymoe", "--set", "trackers=[]",
       # the smoke config's 128 fits the tiny LLaVA's 16 image tokens; LLaVA-NeXT's anyres patches or ChatML
       # templates make mini-CoIN's ScienceQA prompts longer
       "--set", "training.max_length=256", "--set", "evaluation.max_length=256"]


def _run(cfg, out, *overrides) -> int:
    return main(["run", str(cfg), "--output", str(out), *RUN, *[a for o in overrides for a in ("--set", o)]])


def _causal_benchmark(tmp_path):
    """Two text-only tasks made of mini-CoIN ScienceQA's files (its only text-only rows)."""
    yaml_path = resolve_minicoin("small")
    spec = yaml.safe_load(yaml_path.read_text())
    sqa = next(t for t in spec["tasks"] if t["name"] == "ScienceQA")
    bench = {"name": "sqa-text", "instruction_type": "origin", "data_root": str(yaml_path.parent),
             "tasks": [dict(sqa), dict(sqa, name="ScienceQA-again")]}
    out = tmp_path / "bench.yaml"
    out.write_text(yaml.safe_dump(bench))
    return out, yaml_path.parent / sqa["test"]


def _family_params():
    for f in FAMILIES:
        if f == "llava":
            continue
        slow = (pytest.mark.slow, pytest.mark.skipif(not os.environ.get("DYMOE_SLOW_TESTS"),
                                                      reason="~20 s: set DYMOE_SLOW_TESTS=1 to run"))
        yield pytest.param(f, marks=() if f in CI_FAMILIES else slow)


@pytest.mark.parametrize("family", list(_family_params()))
def test_two_task_dymoe_run(family, tmp_path, cache_env):
    try:
        require_vision_deps(family)
    except MissingDependency as err:
        if os.environ.get("DYMOE_REQUIRE_VLM") == "1":
            raise
        pytest.skip(f"needs the vlm extra: {err}")
    from transformers import AutoConfig

    smoke = ROOT / "configs" / "smoke.yaml"
    out = tmp_path / "run"
    causal = family in ("llama", "qwen2")
    if causal:
        bench, test_file = _causal_benchmark(tmp_path)
        overrides = [f"backbone.path=tiny:{family}", f"benchmark.file={bench}", "backbone.image_samples=skip",
                     "benchmark.order=[ScienceQA, ScienceQA-again]"]
        tasks = ["ScienceQA", "ScienceQA-again"]
    else:
        overrides = [f"backbone.path=tiny:{family}", "benchmark.order=[ScienceQA, ImageNet]"]
        tasks = ["ScienceQA", "ImageNet"]
    assert _run(smoke, out, *overrides) == 0

    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["tasks"] == tasks and [len(r) for r in matrix["accuracy"]] == [1, 2]
    for k in (1, 2):
        for t in tasks[:k]:
            rows = read_jsonl(out / "predictions" / t / f"after_{k}.jsonl")
            assert len(rows) == 4 and all(isinstance(r["text"], str) for r in rows)
    if causal:  # exactly the text-only test rows were evaluated
        text_only = {r["question_id"] for r in json.loads(test_file.read_text()) if not r.get("image")}
        assert {r["question_id"] for r in read_jsonl(out / "predictions" / tasks[0] / "after_1.jsonl")} <= text_only

    # the wrapped modules: the 7 projections of every language-model layer, nothing in the vision tower
    config = AutoConfig.from_pretrained(resolve_backbone_path(f"tiny:{family}"))
    n_layers = config.get_text_config().num_hidden_layers
    a1 = load_file(str(out / "checkpoints" / f"task_1_{tasks[0]}" / "adapter.safetensors"))
    a2 = load_file(str(out / "checkpoints" / f"task_2_{tasks[1]}" / "adapter.safetensors"))
    modules = {k.rsplit(".", 1)[0] for k in a1}
    assert len(modules) == 7 * n_layers, sorted(modules)[:9]
    assert {m.split(".")[-1] for m in modules} == set(TARGETS)
    assert not any(seg in m for m in modules for seg in ("vision", "visual", "projector"))
    # task 1's experts trained (B moved off zero) and are kept bit-identically through task 2
    assert any(a1[f"{m}.frozen_B"].abs().sum() > 0 for m in modules)
    for m in modules:
        old = a1[f"{m}.frozen_B"]  # [out, r1]
        assert torch.equal(a2[f"{m}.frozen_B"][:, : old.shape[1]], old), m


def test_causal_lm_refuses_image_samples_naming_the_task(tmp_path, cache_env, capsys):
    code = _run(ROOT / "configs" / "smoke.yaml", tmp_path / "run", "backbone.path=tiny:llama",
                "benchmark.order=[ScienceQA, ImageNet]")
    err = capsys.readouterr().err
    assert code == 2 and "task 'ScienceQA'" in err and "backbone.image_samples=skip" in err
    assert not (tmp_path / "run" / "matrix.json").exists()
