"""``dymoe chat``: the trained adapter after task K with the method's inference routing.

Reference: the run's own evaluation. Asked the test questions one by one, chat must give exactly the answers the
runner stored in ``predictions/<task>/after_<K>.jsonl`` (DyMoE with its task router, which only works if the
per-batch group mask is set as the runner's evaluation sets it). Also: the interactive mode, ``--json``, and
clear errors.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from dymoe.cli.main import main
from dymoe.config import load_config
from dymoe.data.formats import load_test
from dymoe.io import read_jsonl
from dymoe.runner.continual import resolve_benchmark, run
from dymoe.runner.trained import TrainedRun

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["benchmark.order=[ScienceQA, ImageNet]", "benchmark.max_train_samples=16",
             "benchmark.max_eval_samples=6", "training.batch_size=8", "trackers=[]", "method.name=dymoe",
             "method.task_router=true", "method.task_router_batches=2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, dymoe_cache):
    import os

    old = os.environ.get("DYMOE_CACHE")
    os.environ["DYMOE_CACHE"] = str(dymoe_cache)
    cfg = load_config(ROOT / "configs" / "smoke.yaml", OVERRIDES)
    out = tmp_path_factory.mktemp("chat") / "run"
    run(cfg, out)
    yield out, cfg
    if old is None:
        os.environ.pop("DYMOE_CACHE", None)
    else:
        os.environ["DYMOE_CACHE"] = old


def _questions(cfg, task_name):
    bench = resolve_benchmark(cfg)
    task = bench.task(task_name)
    samples = {s.question_id: s for s in load_test(task, instruction_type=bench.instruction_type, seed=0)}
    return samples


@pytest.mark.parametrize("after", [1, 2])
def test_chat_answers_equal_the_runs_own_evaluation(trained_run, cache_env, after):
    out, cfg = trained_run
    trained = TrainedRun(out, after_task=after)
    assert trained.after_task == after and trained.task == ["ScienceQA", "ImageNet"][after - 1]
    for task in ["ScienceQA", "ImageNet"][:after]:
        stored = read_jsonl(out / "predictions" / task / f"after_{after}.jsonl")
        samples = _questions(cfg, task)
        asked = [(samples[r["question_id"]].image, r["prompt"]) for r in stored]
        got = [trained.answer([q])[0] for q in asked]  # one by one, as a user asks
        assert got == [r["text"] for r in stored], task


def test_chat_cli_one_shot_json_and_interactive(trained_run, cache_env, capsys, monkeypatch):
    out, cfg = trained_run
    stored = read_jsonl(out / "predictions" / "ImageNet" / "after_2.jsonl")[0]
    sample = _questions(cfg, "ImageNet")[stored["question_id"]]
    assert main(["chat", str(out), "--image", str(sample.image), "--json", stored["prompt"]]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["answer"] == stored["text"] and row["after_task"] == 2 and row["task"] == "ImageNet"
    assert row["method"] == "dymoe"

    one_line = stored["prompt"].replace("\n", " ")  # interactive mode: one question per line
    lines = f"/image {sample.image}\n{one_line}\n\n/noimage\nIs 7 odd?\n/quit\nnever asked\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["chat", str(out), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["question"] for r in rows] == [one_line, "Is 7 odd?"]
    assert rows[0]["image"] == str(sample.image) and rows[1]["image"] is None


def test_chat_errors_are_clear(trained_run, cache_env, tmp_path, capsys):
    out, _ = trained_run
    assert main(["chat", str(out), "--after-task", "3", "hi"]) == 2
    assert "tasks 1..2" in capsys.readouterr().err
    assert main(["chat", str(tmp_path), "hi"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["chat", str(out), "--image", str(tmp_path / "missing.png"), "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_chat_restores_a_trained_projector(tmp_path, cache_env):
    """A LoRA run that trains the projector (method.projector_lr, CoIN's setting): chat loads the projector saved
    with the method state (module.projector.*), so its answers are the run's own; the weights differ from the
    base's."""
    from dymoe.injection.state import load_method_state

    overrides = ["benchmark.order=[ImageNet]", "benchmark.max_train_samples=16", "benchmark.max_eval_samples=4",
                 "training.batch_size=8", "trackers=[]", "method.name=lora", "method.projector_lr=0.01"]
    cfg = load_config(ROOT / "configs" / "smoke.yaml", overrides)
    out = tmp_path / "run"
    run(cfg, out)
    trained = TrainedRun(out)
    saved = {k.removeprefix("module.projector."): v
             for k, v in load_method_state(out / "checkpoints" / "task_1_ImageNet").items()
             if k.startswith("module.projector.")}
    projector = trained.model.model.multi_modal_projector.state_dict()
    assert saved and set(saved) == set(projector)
    for name, tensor in saved.items():
        assert torch.equal(projector[name], tensor), name
    from dymoe.models.llava import load_backbone
    from dymoe.runner.resources import resolve_backbone_path

    base_model, _ = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")  # for contrast
    base_proj = base_model.model.multi_modal_projector.state_dict()
    assert all(not torch.equal(base_proj[n], saved[n]) for n in saved)  # the projector did train
    stored = read_jsonl(out / "predictions" / "ImageNet" / "after_1.jsonl")
    samples = _questions(cfg, "ImageNet")
    asked = [(samples[r["question_id"]].image, r["prompt"]) for r in stored]
    assert trained.answer(asked) == [r["text"] for r in stored]
