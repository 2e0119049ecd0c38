"""The evaluation after a task (runner.evaluation) and the per-batch routing helpers (runner.routing), on stubs:
several evaluation sets per task, the combine rule, variants, the locator report, the metric definitions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dymoe.config import load_config
from dymoe.data.coin import TestSample as CoinTestSample
from dymoe.data.tasks import EvalSet, TaskSpec
from dymoe.errors import ConfigError, DymoeError
from dymoe.eval.metrics import METRICS, cmoe_summary, dmole_summary, summarize
from dymoe.io import atomic_write_jsonl
from dymoe.layers.context import RoutingContext
from dymoe.methods.base import Method
from dymoe.runner.continual import metric_summary
from dymoe.runner.evaluation import (
    combine,
    evaluate_row,
    prediction_path,
    read_predictions,
    variants_of,
)
from dymoe.runner.routing import apply_batch_routing, locator_report, restore_routing
from dymoe.runner.rundir import RunDir


# ---------------------------------------------------------------------------------------------- routing helpers
def test_locator_report_counts_by_hand():
    # task 0: 3 samples, 2 right; task 2: 2 samples, both sent to task 1; one prediction outside the tasks
    rep = locator_report([0, 0, 0, 2, 2, 2], [0, 1, 0, 1, 1, 7], ["A", "B", "C"])
    assert rep["tasks"] == ["A", "B", "C", "other"]
    assert rep["confusion"] == [[2, 1, 0, 0], [0, 2, 0, 1]]
    assert rep["accuracy"] == {"A": round(200 / 3, 2), "C": 0.0}
    assert rep["samples"] == {"A": 3, "C": 3}
    assert rep["mean"] == round((200 / 3 + 0) / 2, 2)
    assert rep["predicted"]["A"] == [2, 1, 0, 0]
    clean = locator_report([1, 1], [1, 1], ["A", "B"])
    assert clean["tasks"] == ["A", "B"] and clean["confusion"] == [[0, 2]] and clean["accuracy"] == {"B": 100.0}


def test_batch_routing_sets_context_inputs_for_one_forward_and_refuses_unknown_keys():
    ctx = RoutingContext()
    mask = torch.ones(2, 3, dtype=torch.bool)
    saved, predicted = apply_batch_routing(ctx, {"group_mask": mask, "predicted_task": [1, 0]}, rows=2)
    assert ctx.group_mask is mask and predicted.tolist() == [1, 0]
    restore_routing(ctx, saved)
    assert ctx.group_mask is None
    with pytest.raises(DymoeError, match="'router_idz' is not a routing input.*group_mask"):
        apply_batch_routing(ctx, {"router_idz": torch.zeros(2)}, rows=2)
    with pytest.raises(DymoeError, match="3 entries for 2 batch rows"):
        apply_batch_routing(ctx, {"predicted_task": [0, 1, 2]}, rows=2)
    assert apply_batch_routing(ctx, None, rows=2) == ({}, None)


def test_variants_of_a_method():
    class WithOracle(Method):
        name = "w"
        evaluation_variants = ("oracle", "noisy")

    assert variants_of(Method(), None) == [""]
    assert variants_of(WithOracle(), None) == ["", "oracle", "noisy"]
    assert variants_of(WithOracle(), ["noisy"]) == ["", "noisy"]
    with pytest.raises(ConfigError, match=r"\['bogus'\] are not variants of method 'w'"):
        variants_of(WithOracle(), ["bogus"])


# ---------------------------------------------------------------------------------------------- one row, stubbed
class _Acc:
    num_processes, process_index, is_main_process = 1, 0, True

    def wait_for_everyone(self):
        pass

    def log(self, *a, **k):
        pass


def _stub_run(tmp_path: Path, method: Method, *, tasks_mode: str = "seen"):
    """Two tasks; task A has two evaluation sets (exact-match, 4 and 2 questions), task B one. No model: every
    prediction is on disk, so evaluate_row only reads and scores."""
    def es(name, scorer="exact-match"):
        return EvalSet(name, tmp_path / f"{name}.json", tmp_path, scorer, "coin")

    a = TaskSpec("A", tmp_path / "a.json", tmp_path / "A1.json", tmp_path, "exact-match",
                 eval_sets=[es("A1"), es("A2")])
    b = TaskSpec("B", tmp_path / "b.json", tmp_path / "B1.json", tmp_path, "exact-match", eval_sets=[es("B1")])
    sets = {("A", "A1"): ["x", "y", "z", "w"], ("A", "A2"): ["p", "q"], ("B", "B1"): ["u", "v"]}
    samples = {k: [CoinTestSample(f"{k[1]}-{i}", None, "Q?", {"question_id": f"{k[1]}-{i}", "answer": ans})
                   for i, ans in enumerate(v)]
               for k, v in sets.items()}
    cfg = load_config(None, ["method.name=lora", f"evaluation.tasks={tasks_mode}", "trackers=[]"])
    run = SimpleNamespace(
        cfg=cfg, acc=_Acc(), main=True, method=method, adapter=SimpleNamespace(context=RoutingContext()),
        tasks=[a, b], names=["A", "B"], out=RunDir(tmp_path / "run"), model=None, processor=None,
        test_set=lambda task, e=None: samples[(task.name, (e or task.eval_sets[0]).name)],
        stored_predictions=read_predictions,
        scorer_name=lambda task, e=None: (e or task.eval_sets[0]).scorer,
        annotations=lambda task, scorer, e=None: {},
    )
    return run, samples


def _write(run, task, es_name, after, texts, routed=None, variant=""):
    es = task.eval_set(es_name)
    rows = [{"question_id": s.question_id, "prompt": "Q?", "text": t} for s, t in
            zip(run.test_set(task, es), texts)]
    for r, p in zip(rows, routed or []):
        r["routed_task"] = p
    atomic_write_jsonl(prediction_path(run.out, task, es, after, variant), rows)


def test_a_cell_is_the_mean_of_its_sets_headlines_and_every_set_is_kept(tmp_path):
    run, _ = _stub_run(tmp_path, Method())
    a, b = run.tasks
    _write(run, a, "A1", 2, ["x", "y", "no", "no"], routed=[0, 0, 1, 0])  # 50 %, locator 3/4 right
    _write(run, a, "A2", 2, ["p", "q"], routed=[0, 0])  # 100 %
    _write(run, b, "B1", 2, ["u", "no"], routed=[0, 1])  # 50 %, locator 1/2
    rows = evaluate_row(run, 1)
    main = rows[""]
    assert main.cells == [75.0, 50.0] == [combine([50.0, 100.0]), combine([50.0])]
    assert main.sets["A"] == {"A1": {"scorer": "exact-match", "headline": "accuracy", "score": 50.0, "n": 4},
                              "A2": {"scorer": "exact-match", "headline": "accuracy", "score": 100.0, "n": 2}}
    # the locator: task A's 6 questions (5 to A), task B's 2 (1 to B)
    assert main.locator["confusion"] == [[5, 1], [1, 1]]
    assert main.locator["accuracy"] == {"A": round(500 / 6, 2), "B": 50.0}
    # files: a task with several sets keeps one file per set; a task with one set the CoIN path
    assert (run.out.root / "predictions" / "A" / "A2" / "after_2.jsonl").is_file()
    assert (run.out.root / "predictions" / "B" / "after_2.jsonl").is_file()


def test_variants_and_the_full_matrix_read_their_own_predictions(tmp_path):
    class WithOracle(Method):
        name = "w"
        evaluation_variants = ("oracle",)

    run, _ = _stub_run(tmp_path, WithOracle(), tasks_mode="all")
    a, b = run.tasks
    for variant, good in (("", 1), ("oracle", 2)):
        _write(run, a, "A1", 1, ["x", "y", "z", "w"][:good] + ["no"] * (4 - good), variant=variant)
        _write(run, a, "A2", 1, ["p", "no"], variant=variant)
        _write(run, b, "B1", 1, ["no", "no"], variant=variant)  # an unseen task is evaluated after task 1 too
    rows = evaluate_row(run, 0)
    assert rows[""].cells == [combine([25.0, 50.0]), 0.0]
    assert rows["oracle"].cells == [combine([50.0, 50.0]), 0.0]
    assert (run.out.root / "variants" / "oracle" / "predictions" / "A" / "A1" / "after_1.jsonl").is_file()
    assert rows[""].locator is None


def test_stored_predictions_that_do_not_answer_the_questions_are_refused(tmp_path):
    run, _ = _stub_run(tmp_path, Method())
    a = run.tasks[0]
    _write(run, a, "A1", 1, ["x"] * 4)
    path = prediction_path(run.out, a, a.eval_set("A2"), 1)
    atomic_write_jsonl(path, [{"question_id": "other", "text": "p"}])
    with pytest.raises(Exception, match="do not answer this run's 2 test questions"):
        evaluate_row(run, 0)


# ---------------------------------------------------------------------------------------------- metric definitions
def test_the_run_metric_definition_is_the_registry_function_of_the_matrix():
    lower = [[80.0], [70.0, 90.0], [60.0, 85.0, 95.0]]
    full = [[80.0, 10.0, 5.0], [70.0, 90.0, 8.0], [60.0, 85.0, 95.0]]

    class CM(Method):
        name = "cm"
        immediate_variant = "oracle"

    assert metric_summary("coin", lower, {"": lower}, Method()) == summarize(lower)
    assert metric_summary("coin", full, {"": full}, Method()) == summarize(lower)  # the seen part
    oracle = [[82.0], [71.0, 93.0], [61.0, 86.0, 96.0]]
    cm = metric_summary("cmoe", lower, {"": lower, "oracle": oracle}, CM())
    # Immediate = the oracle variant's diagonal; BWT = (1/N) sum(Last - Immediate) by hand
    assert cm["immediate"] == [82.0, 93.0, 96.0] and cm["immediate_from"] == "oracle"
    assert cm["BWT"] == pytest.approx(((60 - 82) + (85 - 93) + (95 - 96)) / 3)
    assert metric_summary("cmoe", lower, {"": lower}, Method())["BWT"] == cmoe_summary(lower)["BWT"]
    dm = metric_summary("dmole", full, {"": full}, Method())
    assert dm["AVG"] == dmole_summary(full)["AVG"] == pytest.approx(
        ((80 + 70 + 60) / 3 + (10 + 90 + 85) / 3 + (5 + 8 + 95) / 3) / 3)
    assert "note" in metric_summary("dmole", full[:2], {"": full[:2]}, Method())  # a run in progress


def test_evaluation_config_choices_are_the_registry_and_dmole_needs_the_full_matrix():
    import typing

    from dymoe.config import EvaluationConfig

    assert sorted(typing.get_args(typing.get_type_hints(EvaluationConfig)["metric"])) == sorted(METRICS.names())
    with pytest.raises(ConfigError, match="evaluation.metric=dmole.*evaluation.tasks=all"):
        load_config(None, ["method.name=lora", "evaluation.metric=dmole"])
    cfg = load_config(None, ["method.name=lora", "evaluation.metric=dmole", "evaluation.tasks=all"])
    assert cfg.evaluation.tasks == "all" and cfg.evaluation.variants is None
    assert json.dumps(cfg.to_dict())  # serialisable (config.yaml)


def test_a_run_stored_before_the_new_evaluation_settings_resumes(tmp_path):
    """config.yaml of a run made before evaluation.tasks/metric/variants existed equals the same config now (the
    settings at their defaults); another value is still a different config."""
    import yaml

    from dymoe.config import dump_config

    cfg = load_config(None, ["method.name=lora", "trackers=[]"])
    old = yaml.safe_load(dump_config(cfg))
    for key in ("tasks", "metric", "variants"):
        del old["evaluation"][key]
    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    rd.config.write_text(yaml.safe_dump(old))
    (rd.root / "predictions" / "A").mkdir(parents=True)
    (rd.root / "predictions" / "A" / "after_1.jsonl").write_text("{}\n")  # progress: the config must match
    rd.check_config(dump_config(cfg))
    other = load_config(None, ["method.name=lora", "trackers=[]", "evaluation.tasks=all"])
    with pytest.raises(ConfigError, match="evaluation.tasks"):
        rd.check_config(dump_config(other))
