"""``dymoe run`` with ``method.name=smoe_dsal`` on the tiny backbone and the mini-domains miniature (slow): the
three domains' modules (one group per domain in every FFN, earlier ones bit-identical in the last checkpoint), the
DSAL report (per-(instance, layer) and per-instance identification, activated experts) against the routed tasks
written beside the predictions, the oracle variant's own matrix, and Ours+'s module counts kept with its variant."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from dymoe.io import read_jsonl

SETTINGS = [
    "method.name=smoe_dsal",
    "method.expert_width=8",
    "method.projector_dim=4",
    "benchmark.file=minidomains",
    "benchmark.minicoin_scale=small",
    "benchmark.order=origin",
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=4",
    "training.batch_size=8",
    "evaluation.max_new_tokens=2",
    "method.variants=[oracle, plus]",
    "trackers=[]",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dymoe_cli):
    out = tmp_path_factory.mktemp("smoe") / "run"
    proc = dymoe_cli(out, SETTINGS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_modules_per_domain_and_frozen_ones_unchanged(finished):
    ck = finished / "checkpoints"
    first = load_file(str(ck / "task_1_Medicine" / "adapter.safetensors"))
    last = load_file(str(ck / "task_3_Math" / "adapter.safetensors"))
    key = next(k for k in first if k.endswith("layers.0.mlp.frozen_w_gate"))
    assert first[key].shape[0] == 4 * 8 and last[key].shape[0] == 3 * 4 * 8  # 4 experts of width 8 per domain
    assert (last[key][:32] == first[key]).all()  # Medicine's experts untouched by Chart and Math
    method = load_file(str(ck / "task_3_Math" / "method_state.safetensors"))
    assert int(method["domains"][0]) == 3 and {"module.proj_0.weight", "module.proj_2.weight"} <= set(method)
    # EDI's prototypes (planning phase, also in the plan folder) and Ours+'s mean DSAL per layer, saved with the run
    assert method["edi_prototype.2"].shape == method["edi_prototype.0"].shape and method["mean_dsal.2"].shape == (2,)
    plan = load_file(str(ck / "task_3_Math.plan" / "plan_state.safetensors"))
    assert (plan["edi_prototype"] == method["edi_prototype.2"]).all()


def test_dsal_report_matches_the_routed_tasks(finished):
    scores = json.loads((finished / "scores" / "after_3.json").read_text())
    main = scores["variants"][""]
    rep = main["method_eval"]["dsal"]
    routed = []
    for task, k in (("Medicine", 0), ("Chart", 1), ("Math", 2)):
        for path in sorted((finished / "predictions" / task).rglob("after_3.jsonl")):
            routed += [(k, row["routed_task"]) for row in read_jsonl(path)]
    right = sum(t == p for t, p in routed)
    assert rep["instances"] == len(routed) == 4 + 3 * 4 + 4
    assert rep["accuracy_instance"] == pytest.approx(round(100.0 * right / len(routed), 2))
    assert 0.0 <= rep["mean_active_experts"] <= 4.0 and len(rep["accuracy_per_layer"]) == 2
    assert main["locator"]["tasks"] == ["Medicine", "Chart", "Math"]
    edi = main["method_eval"]["edi"]  # EDI's identification beside DSAL's, on the same questions
    assert edi["instances"] == rep["instances"] and 0.0 <= edi["accuracy_instance"] <= 100.0
    oracle = scores["variants"]["oracle"]
    assert oracle["locator"]["accuracy"] == {"Medicine": 100.0, "Chart": 100.0, "Math": 100.0}
    assert (finished / "variants" / "oracle" / "matrix.json").is_file()


def test_the_plus_variant_keeps_its_own_module_counts(finished):
    """Ours+'s mean number of modules per (instance, layer) is reported with the ``plus`` variant of the row that
    measured it (every test question × every layer), never in a main evaluation's report (before the fix the
    counts of row k's plus pass turned up in row k + 1's main report, and the last row's were lost)."""
    metrics = json.loads((finished / "metrics.json").read_text())
    questions = {1: 4, 2: 4 + 3 * 4, 3: 4 + 3 * 4 + 4}  # Medicine 4; Chart 3 sets of 4; Math 4
    for k in (1, 2, 3):
        scores = json.loads((finished / "scores" / f"after_{k}.json").read_text())
        assert "plus" not in (scores["variants"][""].get("method_eval") or {})
        plus = scores["variants"]["plus"]["method_eval"]["plus"]
        assert plus["pairs"] == questions[k] * 2  # the tiny backbone's 2 layers
        assert 1.0 <= plus["mean_modules"] <= k  # the DSAL winner plus at most every other learned module
        assert metrics["variants"]["plus"]["method_eval"][f"after_task_{k}"] == {"plus": plus}
        assert "plus" not in metrics["method_eval"][f"after_task_{k}"]
    assert "method_eval" not in metrics["variants"]["oracle"]
