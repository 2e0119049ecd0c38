"""The runner checks the data before anything trains (issue 13): empty sets, what each task's scorer needs,
repeated question ids, unknown tasks under ``evaluation.scorers``; ``benchmark.skip_invalid`` skips images that do
not decode. Runs use the CoIN-layout fixture (tests/fixtures/coin) and fail before anything trains or is written."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dymoe.cli.main import main
from dymoe.config import load_config
from dymoe.data.tasks import load_benchmark
from dymoe.errors import DataError
from dymoe.runner.continual import ContinualRun

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
IO = "Instructions_Original"


def run_on(coin_root: Path, out: Path, capsys, *extra: str) -> str:
    argv = ["run", str(SMOKE), "--output", str(out), "--set", f"benchmark.file={coin_root / 'benchmark.yaml'}",
            "--set", "benchmark.order=null", "--set", "trackers=[]", *[a for o in extra for a in ("--set", o)]]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert not out.exists(), "refused before anything was written"
    assert "task 1/" not in err, "refused before the first task trained"
    return err


def _rows(path: Path) -> list:
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        # the last task's test set is empty: it would score 0 after four tasks had trained
        (lambda r: (r / IO / "OCRVQA/test.json").write_text("[]"), "OCRVQA/test.json: task 'OCRVQA' has no test questions"),
        (lambda r: (r / IO / "OCRVQA/train.json").write_text("[]"), "OCRVQA/train.json: task 'OCRVQA' has no training rows"),
        (lambda r: (r / IO / "OCRVQA/train.json").unlink(), "OCRVQA/train.json: file not found"),
        # a field the last task's scorer needs is missing (found when scoring, after training, before issue 13)
        (lambda r: (r / IO / "OCRVQA/test.json").write_text(json.dumps(
            [{k: v for k, v in _rows(r / IO / "OCRVQA/test.json")[0].items() if k != "answer"}])),
         "OCRVQA/test.json row 0: missing field 'answer' (needed by scorer 'ocrvqa')"),
        (lambda r: (r / IO / "Grounding/test.json").write_text(json.dumps(
            [{**_rows(r / IO / "Grounding/test.json")[0], "size": [8]}])),
         "Grounding/test.json: question_id 7: scorer 'grounding' cannot score it"),
        (lambda r: (r / IO / "OCRVQA/test.json").write_text(json.dumps(_rows(r / IO / "OCRVQA/test.json") * 2)),
         "OCRVQA/test.json: question_id 'o-2' appears more than once"),
    ],
    ids=["empty test", "empty train", "missing train", "missing answer", "unscorable", "repeated ids"],
)
def test_bad_data_is_refused_before_the_first_task_trains(edit, message, coin_root, tmp_path, cache_env, capsys):
    edit(coin_root)
    assert message in run_on(coin_root, tmp_path / "run", capsys)


def test_unknown_task_under_evaluation_scorers(coin_root, tmp_path, cache_env, capsys):
    err = run_on(coin_root, tmp_path / "run", capsys, "evaluation.scorers={Nope: vqav2}")
    assert "evaluation.scorers: no task 'Nope' in this run" in err


def _runner_like(coin_root: Path, *overrides: str) -> SimpleNamespace:
    """What ``ContinualRun.train_set`` reads, without a model."""
    cfg = load_config(SMOKE, ["benchmark.max_train_samples=null", *overrides])
    bench = load_benchmark(coin_root / "benchmark.yaml")
    runner = SimpleNamespace(cfg=cfg, benchmark=bench, main=True, _train_sets={})
    runner._text_only = lambda samples, task, split: samples  # a VLM backbone keeps every sample
    return runner


def test_skip_invalid_skips_images_that_do_not_decode(coin_root, capsys):
    (coin_root / "cl_dataset/ScienceQA/images/train/1.png").write_bytes(b"\x89PNG but truncated")
    runner = _runner_like(coin_root, "benchmark.skip_invalid=true")
    samples = ContinualRun.train_set(runner, runner.benchmark.task("ScienceQA"))
    assert [s.id for s in samples] == ["sqa-2"]  # the text-only row; the row with the broken image is skipped
    assert "skipped 1 invalid training rows: row 0" in capsys.readouterr().err
    (coin_root / "cl_dataset/GQA/images/g1.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"GQA/train.json: task 'GQA' has no training samples \(all 1 rows are invalid\)"):
        ContinualRun.train_set(runner, runner.benchmark.task("GQA"))
    # without skip_invalid the rows are kept (the image is decoded, and refused, when its batch is built)
    strict = _runner_like(coin_root)
    assert len(ContinualRun.train_set(strict, strict.benchmark.task("ScienceQA"))) == 2
