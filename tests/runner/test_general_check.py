"""The general-ability check after the last task (``evaluation.general``, :mod:`dymoe.runner.general`) on the tiny
backbone: the final model's scores equal a direct evaluation of the run's final checkpoint (``TrainedRun``, the
method's evaluation routing) on the same file; the pretrained row equals evaluating a freshly loaded, untouched
backbone; the check does not change the run's matrix; it resumes from its stored predictions; a bad file is an error
naming it before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dymoe.config import load_config
from dymoe.data.formats import load_eval_set
from dymoe.data.tasks import EvalSet, TaskSpec, load_benchmark
from dymoe.errors import ConfigError, DataError
from dymoe.eval.generate import generate_predictions
from dymoe.eval.scorers import SCORERS
from dymoe.io import read_jsonl
from dymoe.runner.continual import run
from dymoe.runner.resources import resolve_minicoin

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
BASE = ["method.name=lora", "benchmark.order=[ImageNet, GQA]", "benchmark.max_train_samples=8",
        "benchmark.max_eval_samples=4", "training.batch_size=4", "evaluation.batch_size=4", "trackers=[]"]


def _general_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A test file (mini-CoIN's VQAv2 test rows) and an evaluation-only benchmark YAML (OCRVQA as a CoIN task
    without ``train``; a task with two sets (Grounding boxes, GQA at 3 tokens), each with its own scorer and generation length)."""
    src = resolve_minicoin("small")
    root = src.parent
    bench = {
        "name": "mini-general", "data_root": str(root),
        "tasks": [
            {"name": "OCR", "test": "Instructions_Original/OCRVQA/test.json", "image_root": "cl_dataset",
             "scorer": "ocrvqa"},
            {"name": "Mixed", "image_root": "cl_dataset",
             "eval": [{"name": "box", "path": "Instructions_Original/Grounding/test.json", "scorer": "grounding"},
                      {"name": "short", "path": "Instructions_Original/GQA/test.json", "scorer": "exact-match",
                       "max_new_tokens": 3}]},
        ],
    }
    path = tmp_path / "mini-general.yaml"
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    return path, root / "Instructions_Original" / "VQAv2" / "test.json", root / "cl_dataset"


def _settings(tmp_path: Path) -> list[str]:
    yaml_file, test_file, images = _general_files(tmp_path)
    entries = (f"[{{file: {yaml_file}, aggregate: sum, max_samples: 3}}, "
               f"{{file: {test_file}, name: vqa, scorer: vqav2, image_root: {images}, max_samples: 5}}]")
    return [*BASE, f"evaluation.general.benchmarks={entries}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dymoe_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("DYMOE_CACHE", str(dymoe_cache))
    tmp = tmp_path_factory.mktemp("general")
    cfg = load_config(SMOKE, _settings(tmp))
    out = tmp / "run"
    metrics = run(cfg, out)
    yield out, metrics, cfg
    mp.undo()


def _samples(cfg, bench: str, task: str, es_name: str) -> tuple[list, str]:
    """The questions and scorer of one set, read independently of the runner (same seeded subset rule)."""
    import random

    entry = next(b for b in cfg.evaluation.general.benchmarks if (b.name or Path(b.file).stem) == bench)
    if entry.file.endswith(".yaml"):
        t = next(t for t in load_benchmark(entry.file, eval_only=True).tasks if t.name == task)
        es = next(e for e in t.eval_sets if e.name == es_name)
    else:
        es = EvalSet(bench, Path(entry.file), Path(entry.image_root), entry.scorer, "coin", {})
        t = TaskSpec(name=bench, train=es.path, test=es.path, image_root=es.image_root, scorer=es.scorer,
                     eval_sets=[es])
    samples = load_eval_set(t, es, seed=0)
    keep = sorted(random.Random(0).sample(range(len(samples)), entry.max_samples))
    return [samples[j] for j in keep], es


def _direct(model, processor, samples, es, cfg, hook=None) -> tuple[list[dict], float]:
    ev = cfg.evaluation
    import torch

    with torch.no_grad():
        preds = generate_predictions(model, processor, samples, batch_size=ev.batch_size,
                                     max_new_tokens=es.max_new_tokens or ev.max_new_tokens, max_length=ev.max_length,
                                     batch_hook=hook)
    res = SCORERS.get(es.scorer)(preds, [s.reference for s in samples], {})
    return preds, round(float(res.accuracy), 4)


SETS = [("mini-general", "OCR", "OCR"), ("mini-general", "Mixed", "box"), ("mini-general", "Mixed", "short"),
        ("vqa", "vqa", "vqa")]


@pytest.mark.slow
def test_final_model_scores_equal_a_direct_evaluation_of_the_final_checkpoint(finished):
    from dymoe.runner.trained import TrainedRun, eval_routing

    out, metrics, cfg = finished
    general = metrics["general"]
    assert set(general) == {"pretrained", "final"}
    trained = TrainedRun(out, device="cpu")
    assert trained.after_task == 2
    for bench, task, name in SETS:
        samples, es = _samples(cfg, bench, task, name)
        with eval_routing(trained.method, trained.adapter) as hook:
            preds, score = _direct(trained.model, trained.processor, samples, es, cfg, hook)
        got = general["final"]["benchmarks"][bench]["sets"][task][name]
        assert got["score"] == score and got["n"] == len(samples) == (3 if bench == "mini-general" else 5)
        folder = out / "general" / "final" / bench / task
        stored = read_jsonl(folder / f"{name}.jsonl" if task == "Mixed" else folder.with_suffix(".jsonl"))
        assert [p["text"] for p in stored] == [p["text"] for p in preds]
    # a task's cell is the mean of its sets; the YAML's aggregate is the sum of its tasks, the test file's the mean
    b = general["final"]["benchmarks"]["mini-general"]
    boxes = b["sets"]["Mixed"]
    assert b["tasks"]["Mixed"] == round((boxes["box"]["score"] + boxes["short"]["score"]) / 2, 4)
    assert b["score"] == pytest.approx(b["tasks"]["OCR"] + b["tasks"]["Mixed"], abs=1e-4)
    assert general["final"]["benchmarks"]["vqa"]["score"] == general["final"]["benchmarks"]["vqa"]["tasks"]["vqa"]


@pytest.mark.slow
def test_pretrained_row_equals_the_untouched_backbone(finished):
    from dymoe.models.llava import load_backbone
    from dymoe.runner.resources import resolve_backbone_path

    out, metrics, cfg = finished
    model, processor = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    pre = metrics["general"]["pretrained"]
    assert pre["when"] == "before task 1"
    differ = 0
    for bench, task, name in SETS:
        samples, es = _samples(cfg, bench, task, name)
        preds, score = _direct(model, processor, samples, es, cfg)
        assert pre["benchmarks"][bench]["sets"][task][name]["score"] == score
        folder = out / "general" / "pretrained" / bench / task
        stored = read_jsonl(folder / f"{name}.jsonl" if task == "Mixed" else folder.with_suffix(".jsonl"))
        assert [p["text"] for p in stored] == [p["text"] for p in preds]
        final = read_jsonl(Path(str(folder).replace("pretrained", "final"))
                           / f"{name}.jsonl" if task == "Mixed" else
                           Path(str(folder).replace("pretrained", "final")).with_suffix(".jsonl"))
        differ += sum(a["text"] != b["text"] for a, b in zip(stored, final))
    assert differ > 0  # the trained LoRA changed some answers: the two rows are two models


@pytest.mark.slow
def test_report_and_resume(finished, tmp_path, cache_env):
    out, metrics, cfg = finished
    report = (out / "report.md").read_text()
    assert "## General ability" in report and "| mini-general | **sum** |" in report
    from dymoe.runner.general import general_table

    g = {m: metrics["general"][m]["benchmarks"]["vqa"]["score"] for m in ("pretrained", "final")}
    assert (f"| lora | vqa | 1 | {g['pretrained']:.2f} | {g['final']:.2f} | {g['final'] - g['pretrained']:.2f} |"
            in general_table([out]))  # dymoe reproduce's table
    # a run killed after the final model's predictions were written, before its scores: re-scored from disk
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "general" / "final.json").unlink()
    (copy / "metrics.json").unlink()
    again = run(cfg, copy)
    assert again["general"] == metrics["general"]


@pytest.mark.slow
def test_the_check_leaves_the_matrix_unchanged(finished, tmp_path, cache_env):
    out, _, _ = finished
    cfg = load_config(SMOKE, BASE)
    plain = tmp_path / "plain"
    run(cfg, plain)
    assert json.loads((plain / "matrix.json").read_text()) == json.loads((out / "matrix.json").read_text())
    assert not (plain / "general").exists() and "general" not in json.loads((plain / "metrics.json").read_text())


def test_bad_files_are_refused_before_anything_is_written(tmp_path, cache_env):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"benchmarks\[0\]\.file: .*nope\.json is not a file"):
        load_config(SMOKE, [*BASE, f"evaluation.general.benchmarks=[{missing}]"])
    rows = tmp_path / "rows.json"
    rows.write_text("[]")
    with pytest.raises(ConfigError, match=r"rows\.json needs a scorer"):
        load_config(SMOKE, [*BASE, f"evaluation.general.benchmarks=[{rows}]"])
    with pytest.raises(ConfigError, match="unknown scorer 'mme'"):
        load_config(SMOKE, [*BASE, f"evaluation.general.benchmarks=[{{file: {rows}, scorer: mme}}]"])
    # a row without its answer: the file and the question are named when the run starts, before any training
    src = resolve_minicoin("small").parent
    good = json.loads((src / "Instructions_Original" / "VQAv2" / "test.json").read_text())
    bad = tmp_path / "bad.json"
    good[1] = {k: v for k, v in good[1].items() if k != "answer"}
    bad.write_text(json.dumps(good))
    cfg = load_config(SMOKE, [*BASE, f"evaluation.general.benchmarks=[{{file: {bad}, scorer: vqav2, "
                                     f"image_root: {src / 'cl_dataset'}}}]"])
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"bad\.json"):
        run(cfg, out)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_dmole_routes_the_general_questions_as_its_evaluation_does(tmp_path, cache_env):
    """D-MoLE's final model answers the general set with its autoencoder router (each question: up to two tasks'
    experts, or the pretrained model): the scores and the routed tasks equal the final checkpoint's own routing."""
    from dymoe.runner.trained import TrainedRun, eval_routing

    _, test_file, images = _general_files(tmp_path)
    cfg = load_config(SMOKE, [*BASE, "method.name=dmole", "method.proxy_fraction=0.5", "method.ae_epochs=10",
                              "evaluation.tasks=all", "evaluation.metric=dmole", "evaluation.general.pretrained=false",
                              f"evaluation.general.benchmarks=[{{file: {test_file}, name: vqa, scorer: vqav2, "
                              f"image_root: {images}, max_samples: 5}}]"])
    out = tmp_path / "run"
    metrics = run(cfg, out)
    assert set(metrics["general"]) == {"final"}
    got = metrics["general"]["final"]["benchmarks"]["vqa"]["sets"]["vqa"]["vqa"]
    assert sum(got["routed"].values()) == 5 and set(got["routed"]) <= {"ImageNet", "GQA", "none"}
    samples, es = _samples(cfg, "vqa", "vqa", "vqa")
    trained = TrainedRun(out, device="cpu")
    with eval_routing(trained.method, trained.adapter) as hook:
        preds, score = _direct(trained.model, trained.processor, samples, es, cfg, hook)
    assert got["score"] == score
    stored = read_jsonl(out / "general" / "final" / "vqa" / "vqa.jsonl")
    assert [(p["text"], p["routed_task"]) for p in stored] == [(p["text"], p["routed_task"]) for p in preds]
    assert "Questions per routed task" in (out / "report.md").read_text()
