"""Benchmark YAML: the shipped coin.yaml, orders, overrides and invalid files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dymoe.data.tasks import default_orders, load_benchmark
from dymoe.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
COIN_YAML = REPO / "configs" / "benchmarks" / "coin.yaml"
ORIGIN = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]


def test_shipped_coin_yaml(tmp_path):
    bench = load_benchmark(COIN_YAML, data_root=tmp_path)
    assert bench.name == "coin" and bench.instruction_type == "origin"
    assert [t.name for t in bench.tasks] == ORIGIN
    assert [t.scorer for t in bench.tasks] == ["sqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding",
                                               "vqav2", "ocrvqa"]
    sqa = bench.tasks[0]
    assert sqa.train == tmp_path / "Instructions_Original/ScienceQA/train.json"
    assert sqa.image_root == tmp_path / "cl_dataset"
    assert sqa.annotations == {"problems": tmp_path / "cl_dataset/ScienceQA/problems.json",
                               "pid_splits": tmp_path / "cl_dataset/ScienceQA/pid_splits.json"}
    assert bench.task("TextVQA").test.name == "val.json"
    assert bench.task("GQA").annotations["questions"].name == "testdev_balanced_questions.json"


@pytest.mark.parametrize(
    "order, expected",
    [
        ("reverse", ORIGIN[::-1]),
        ("alphabet", ["GQA", "Grounding", "ImageNet", "OCRVQA", "ScienceQA", "TextVQA", "VizWiz", "VQAv2"]),
        (["GQA", "ScienceQA"], ["GQA", "ScienceQA"]),
    ],
)
def test_orders(tmp_path, order, expected):
    assert [t.name for t in load_benchmark(COIN_YAML, data_root=tmp_path, order=order).tasks] == expected


def test_default_orders_match_the_shipped_ones():
    # without `orders:` the derived alphabet order (case-insensitive) is CoIN's
    assert default_orders(ORIGIN) == {
        "origin": ORIGIN,
        "reverse": ORIGIN[::-1],
        "alphabet": ["GQA", "Grounding", "ImageNet", "OCRVQA", "ScienceQA", "TextVQA", "VizWiz", "VQAv2"],
    }


def test_null_data_root_must_be_given():
    with pytest.raises(ConfigError, match="data_root is null"):
        load_benchmark(COIN_YAML)


def test_relative_data_root_is_relative_to_the_yaml(tmp_path):
    (tmp_path / "b.yaml").write_text(
        "name: x\ndata_root: data\ninstruction_type: 10Type\ntasks:\n"
        "  - {name: A, train: a/train.json, test: a/test.json, image_root: img, scorer: vqav2}\n"
    )
    bench = load_benchmark(tmp_path / "b.yaml")
    assert bench.data_root == tmp_path / "data"
    assert bench.tasks[0].train == tmp_path / "data" / "a" / "train.json"
    assert bench.tasks[0].annotations == {}
    assert bench.instruction_type == "10type"
    assert load_benchmark(tmp_path / "b.yaml", instruction_type="diverse").instruction_type == "diverse"


TASK = "  - {name: A, train: t.json, test: t.json, image_root: i, scorer: vqav2}\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("name: x\ndata_root: .\ntasks: [\n", "malformed YAML"),
        ("name: x\ndata_root: .\ntasks: []\n", "'tasks' must be a non-empty list"),
        ("name: x\ndata_root: .\nbogus: 1\ntasks:\n" + TASK, r"unknown keys \['bogus'\]"),
        ("name: x\ndata_root: .\ntasks:\n  - {name: A, train: t.json, test: t.json, image_root: i}\n",
         r"tasks\[0\]: missing key 'scorer'"),
        ("name: x\ndata_root: .\ntasks:\n  - {name: A, train: t, test: t, image_root: i, scorer: bleu}\n",
         "unknown scorer 'bleu'"),
        ("name: x\ndata_root: .\norder: sideways\ntasks:\n" + TASK, "unknown order 'sideways'"),
        ("name: x\ndata_root: .\norder: [A, B]\ntasks:\n" + TASK, "unknown task 'B'"),
        ("name: x\ndata_root: .\ninstruction_type: fancy\ntasks:\n" + TASK, "instruction_type 'fancy'"),
        ("name: x\ndata_root: .\ntasks:\n" + TASK + TASK, "task names repeat"),
    ],
)
def test_invalid_yaml(tmp_path, text, match):
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_benchmark(tmp_path / "b.yaml")


def test_a_joint_task_trains_every_file_and_evaluates_every_set(tmp_path):
    """``A+B`` in an order: one task with both tasks' training files and evaluation sets (each with its own image
    root and scorer): SMoE-DSAL's multi-domain setting."""
    bench = load_benchmark(COIN_YAML, data_root=tmp_path, order=["ScienceQA+ImageNet", "GQA"])
    joint, gqa = bench.tasks
    sqa, imagenet = (load_benchmark(COIN_YAML, data_root=tmp_path).task(n) for n in ("ScienceQA", "ImageNet"))
    assert joint.name == "ScienceQA+ImageNet" and gqa.name == "GQA"
    assert joint.train_files == sqa.train_files + imagenet.train_files
    assert joint.eval_sets == sqa.eval_sets + imagenet.eval_sets
    assert [e.scorer for e in joint.eval_sets] == ["sqa", "imagenet"] and joint.train == sqa.train
    with pytest.raises(ConfigError, match="unknown task 'Nope'"):
        load_benchmark(COIN_YAML, data_root=tmp_path, order=["ScienceQA+Nope"])
    with pytest.raises(ConfigError, match="two evaluation sets of one name"):
        load_benchmark(COIN_YAML, data_root=tmp_path, order=["ScienceQA+ScienceQA"])
