"""Every shipped YAML is parsed and validated (STYLE.md rule 8)."""

from pathlib import Path

import pytest
import yaml

from dymoe.config import RunConfig, load_config
from dymoe.data.tasks import load_benchmark
from dymoe.methods import METHODS, build_method
from dymoe.runner.reproduce import DEFAULT_PLAN, load_plan

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = set(RunConfig.__dataclass_fields__)
ALL_YAML = sorted(p for p in (ROOT / "configs").rglob("*.yaml"))
#: the system whose paper table each reproduce plan reproduces (a new plan must be listed here)
PLAN_SYSTEMS = {"main-table.yaml": "LLaVA-DyMoE", "ablation.yaml": "LLaVA-DyMoE", "task-router.yaml": "LLaVA-DyMoE",
                "cmoe-main-table.yaml": "LLaVA-CMoE", "dmole.yaml": "D-MoLE", "smoe-dsal.yaml": "SMoE-DSAL",
                "smoe-dsal-single.yaml": "SMoE-DSAL (single-domain)", "smoe-dsal-multi.yaml": "SMoE-DSAL (multi-domain)"}


def test_there_are_configs():
    assert len(ALL_YAML) >= 8


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_parses_and_validates(path, tmp_path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    rel = path.relative_to(ROOT / "configs").parts
    if rel[0] == "accelerate":
        assert data["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED", "MULTI_CPU", "FSDP"}
        assert int(data["num_processes"]) >= 1
    elif rel[0] == "benchmarks":
        bench = load_benchmark(path, data_root=tmp_path)
        first = {"coin": ["ScienceQA", "TextVQA"], "dmole9": ["VizWiz-Cap", "SK-VG"],
                 "smoe3": ["Medicine", "Chart"]}[bench.name]
        assert [t.name for t in bench.tasks][:2] == first
    elif rel[0] == "reproduce":
        plan = load_plan(path)
        assert all(p.is_file() for p in plan.base.values())
        assert all(f.is_file() for per in plan.configs.values() for files in per.values() for f in files)
        # every plan reproduces a table of one system's paper and holds that system's row
        assert PLAN_SYSTEMS[path.name] in [label for label, _ in plan.methods]
    elif set(data) <= RUN_KEYS:
        cfg = load_config(path, ["backbone.path=tiny:test"])
        method = build_method(cfg.method)
        assert method.name == cfg.method_name
    else:
        pytest.skip(f"{path.name}: not a run config (keys {sorted(data)})")


def test_ablation_plan_is_cumulative_and_shares_its_ends_with_the_main_table():
    from dymoe.runner.reproduce import TABLES

    main_plan, ablation = load_plan(TABLES["main-table"]), load_plan(TABLES["ablation"])
    rows = dict(ablation.methods)
    assert list(rows) == ["IncMoELoRA", "+ L_aux", "+ TAG", "+ L_exc", "LLaVA-DyMoE"]
    main_rows = dict(main_plan.methods)
    for label in ("IncMoELoRA", "LLaVA-DyMoE"):  # same label and overrides: the same run directories
        assert rows[label] == main_rows[label]
        assert {k: ablation.paper[label][k] for k in ("MFN", "MAA", "BWT")} == {
            k: main_plan.paper[label][k] for k in ("MFN", "MAA", "BWT")}
    options = []
    for _label, sets in ablation.methods:
        cfg = load_config(ablation.base["coin"], [*sets, "backbone.path=tiny:test"])
        method = build_method(cfg.method)
        options.append((method.name, getattr(method, "options", None)))
    assert options[0][0] == "incmoelora"
    aux, tag, exc, full = (o for _, o in options[1:])
    assert (aux.tag, aux.rsr_exc, aux.rsr_spe, aux.aux_weight, aux.aux_type) == (False, 0.0, 0.0, 1e-3, "switch_all")
    assert (tag.tag, tag.rsr_exc, tag.rsr_spe) == (True, 0.0, 0.0)
    assert (exc.tag, exc.rsr_exc, exc.rsr_spe) == (True, 1e-3, 0.0)
    assert (full.tag, full.rsr_exc, full.rsr_spe, full.aux_type) == (True, 1e-3, 1e-3, "switch_all")


def test_task_router_plan_shares_dymoe_with_the_main_table():
    from dymoe.runner.reproduce import TABLES

    main_plan, router = load_plan(TABLES["main-table"]), load_plan(TABLES["task-router"])
    rows = dict(router.methods)
    assert rows["LLaVA-DyMoE"] == dict(main_plan.methods)["LLaVA-DyMoE"]
    for label, sets in router.methods:
        opts = build_method(load_config(router.base["coin"], [*sets, "backbone.path=tiny:test"]).method).options
        assert opts.task_router == (label != "LLaVA-DyMoE")
        assert opts.task_router_features == ("text" if "text only" in label else "image_text")
    for label, row in router.paper.items():  # Table 12: MFN is the mean of the final row
        tasks = [v for k, v in row.items() if k not in ("MFN", "MAA", "BWT")]
        assert abs(sum(tasks) / 8 - row["MFN"]) < 0.01, label


def test_main_table_plan_names_registered_methods():
    plan = load_plan(DEFAULT_PLAN)
    for label, sets in plan.methods:
        name = next(s.split("=", 1)[1] for s in sets if s.startswith("method.name="))
        assert name in METHODS, (label, name)
        cfg = load_config(plan.base["coin"], [*sets, "backbone.path=tiny:test"])
        assert build_method(cfg.method).name == name
    assert set(plan.paper) == {label for label, _ in plan.methods}
    # the paper's MFN is the mean of its final row (dymoe.md §10), to rounding
    for label, row in plan.paper.items():
        tasks = [v for k, v in row.items() if k not in ("MFN", "MAA", "BWT")]
        assert abs(sum(tasks) / 8 - row["MFN"]) < 0.01, label
