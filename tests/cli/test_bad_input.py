"""Bad input, as a hostile user gives it, through the CLI: every case is a clear message naming the file, row or
key, a non-zero exit and no traceback (issue 13). All cases here fail before a model is loaded, so they are fast;
the runner's own cases (lock, kills, full disk, damaged run directories) are in tests/runner/test_reliability.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dymoe.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "Traceback" not in text
    return code, text


# ------------------------------------------------------------------------------------------ run configs
CONFIG_CASES = [
    # (override, message) — issue 13 defect 5 first, then the neighbours of each check
    ("training.log_every=0", "training.log_every must be >= 1, got 0"),
    ("training.seed=-1", "training.seed must be in [0, 4294966]"),
    ("training.seed=5e9", "training.seed: expected an integer, got 5000000000.0"),
    ("training.seed=5000000000", "training.seed must be in [0, 4294966]"),
    ("training.weight_decay=-1", "training.weight_decay must be >= 0"),
    ("benchmark.max_train_samples=-1", "benchmark.max_train_samples must be >= 1 or null"),
    ("benchmark.max_eval_samples=-1", "benchmark.max_eval_samples must be >= 1 or null"),
    ("benchmark.max_eval_samples=0", "an empty test set would score 0"),
    ("benchmark.max_train_samples=0", "an empty training set trains nothing"),
    ("training.epochs=.inf", "training.epochs: inf is not a finite number"),
    ("training.epochs=1e999", "training.epochs: inf is not a finite number"),
    ("adapter.dropout=1.5", "adapter.dropout must be in [0, 1)"),
    ("trackers=[nope]", "trackers[0]: unknown tracker 'nope'"),
    ("adapter.temperature=.nan", "adapter.temperature: nan is not a finite number"),
    ("training.max_grad_norm=.nan", "training.max_grad_norm: nan is not a finite number"),
    ("training.lr=.inf", "training.lr: inf is not a finite number"),
    ("evaluation.scorers={ScienceQA: bleu}", "evaluation.scorers.ScienceQA: unknown scorer 'bleu'"),
    ("evaluation.max_length=0", "evaluation.max_length must be >= 8"),
    ("method.name=5", "method.name must be a method name (a string), got 5"),
    ("method.name=nope", "unknown method 'nope'"),
    ("method.name=null", "method.name is required"),
    ("method.tau=.nan", "method.tau: nan is not a finite number"),
    ("method.bogus=1", "unknown key 'method.bogus'"),
    ("training.batch_size=0", "training.batch_size must be >= 1"),
    ("training.grad_accum=0", "training.grad_accum must be >= 1"),
    ("training.lr=0", "training.lr must be > 0"),
    ("training.lr=-1e-4", "training.lr must be > 0"),
    ("training.warmup_ratio=1", "training.warmup_ratio must be in [0, 1)"),
    ("training.epochs=0", "training.epochs must be > 0"),
    ("training.max_length=4", "training.max_length must be >= 8"),
    ("training.save_every_steps=-1", "training.save_every_steps must be >= 0"),
    ("training.num_workers=-1", "training.num_workers must be >= 0"),
    ("training.max_grad_norm=-1", "training.max_grad_norm must be >= 0"),
    ("evaluation.batch_size=0", "evaluation.batch_size must be >= 1"),
    ("evaluation.max_new_tokens=0", "evaluation.max_new_tokens must be >= 1"),
    ("adapter.alpha=0", "adapter.alpha must be > 0"),
    ("adapter.bank_rank=0", "adapter.bank_rank must be >= 1 or null"),
    ("adapter.cos_scale=0", "adapter.cos_scale must be > 0"),
    ("adapter.top_k=0", "adapter.top_k must be >= 1"),
    ("replay.seed=-1", "replay.seed must be >= 0"),
    ("replay.samples_per_task=-1", "replay.samples_per_task must be >= 0"),
    ("mixed_precision=fp64", "mixed_precision: 'fp64' is not allowed"),
    ("foo=1", "unknown key 'foo'"),
    ("training=5", "training: expected a mapping"),
    ("trackers=tensorboard", "trackers: expected a list"),
    ("training.seed=1.5", "training.seed: expected an integer"),
    ("training.seed=true", "training.seed: expected an integer"),
    ("training.lr=abc", "training.lr: expected a number"),
    ("training.schedule=steps", "allowed values: ['cosine', 'linear', 'constant']"),
    ("noequals", "expected key.sub=value"),
    ("=5", "empty key"),
]


@pytest.mark.parametrize("override, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_values_are_refused_before_anything_is_written(override, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, text = cli(capsys, "run", SMOKE, "--output", out, "--set", override)
    assert code == 2 and message in text, text
    assert not out.exists()


def _utf16(text: str) -> bytes:
    return text.encode("utf-16")  # with a byte-order mark


CONFIG_FILES = [
    ("utf16", lambda p: p.write_bytes(_utf16("method: {name: lora}\n")), "the file is UTF-16 text; save it as UTF-8"),
    ("utf16-no-bom", lambda p: p.write_bytes("method: {name: lora}\n".encode("utf-16-le")), "NUL byte at offset 1"),
    ("latin1", lambda p: p.write_bytes("label: caf\xe9\n".encode("latin-1")), "not UTF-8 text (byte b'\\xe9' at offset"),
    ("directory", lambda p: p.mkdir(), "is a directory, expected a file"),
    ("missing", lambda p: None, "does not exist"),
    ("list", lambda p: p.write_text("- a\n- b\n"), "the top level must be a mapping, got list"),
    ("malformed", lambda p: p.write_text("training: [\n"), "malformed YAML"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in CONFIG_FILES], ids=[c[0] for c in CONFIG_FILES])
def test_bad_config_files(make, message, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    make(path)
    code, text = cli(capsys, "run", path, "--output", tmp_path / "run")
    assert code == 2 and message in text and str(path) in text, text
    assert not (tmp_path / "run").exists()


def test_utf8_with_a_byte_order_mark_is_fine(tmp_path):
    from dymoe.config import load_config

    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + SMOKE.read_bytes())
    assert load_config(path).training.lr == 1e-3


# ------------------------------------------------------------------------------------ benchmark YAMLs
def _bench(root: Path, edit) -> Path:
    text = (root / "benchmark.yaml").read_text()
    path = root / "benchmark.yaml"
    edit(path, text)
    return path


YAML_CASES = [
    ("utf16", lambda p, t: p.write_bytes(_utf16(t)), "UTF-16"),
    ("names collide", lambda p, t: p.write_text(t.replace("name: GQA", "name: Viz Wiz").replace(
        "name: OCRVQA", "name: Viz_Wiz")), "task names 'Viz Wiz' and 'Viz_Wiz' map to the same folder name"),
    ("names collide ignoring case", lambda p, t: p.write_text(t.replace("name: GQA", "name: gqa2").replace(
        "name: OCRVQA", "name: GQA2")), "task names 'gqa2' and 'GQA2' map to the same folder name"),
    ("dots", lambda p, t: p.write_text(t.replace("name: GQA", "name: '..'")), "task name '..' cannot be a folder"),
    ("hidden", lambda p, t: p.write_text(t.replace("name: GQA", "name: .hidden")), "cannot be a folder name"),
    ("unknown scorer", lambda p, t: p.write_text(t.replace("scorer: gqa", "scorer: bleu")), "unknown scorer 'bleu'"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_bad_benchmark_yaml(edit, message, coin_root, capsys):
    code, text = cli(capsys, "verify-data", _bench(coin_root, edit))
    assert code == 2 and message in text, text


def test_benchmark_yaml_given_as_a_directory(coin_root, capsys):
    code, text = cli(capsys, "verify-data", coin_root)
    assert code == 2 and "is a directory, expected a file" in text


# ------------------------------------------------------------------------------------------ data files
def _rows(path: Path) -> list:
    return json.loads(path.read_text())


def _write(path: Path, rows) -> None:
    path.write_text(json.dumps(rows))


IO = "Instructions_Original"
DATA_CASES = [
    # (id, edit(root), file (relative) that the problem names, message)
    ("train utf16", lambda r: (r / IO / "GQA/train.json").write_bytes(_utf16((r / IO / "GQA/train.json").read_text())),
     "GQA/train.json", "UTF-16"),
    ("train latin1", lambda r: (r / IO / "GQA/train.json").write_bytes(b'[{"id": "caf\xe9"}]'),
     "GQA/train.json", "not UTF-8 text"),
    ("train is a directory", lambda r: ((r / IO / "GQA/train.json").unlink(), (r / IO / "GQA/train.json").mkdir()),
     "GQA/train.json", "is a directory, expected a file"),
    ("test missing", lambda r: (r / IO / "OCRVQA/test.json").unlink(), "OCRVQA/test.json", "file not found"),
    ("empty train", lambda r: _write(r / IO / "GQA/train.json", []), "GQA/train.json",
     "no training rows (an empty training set: 0 training steps)"),
    ("empty test", lambda r: _write(r / IO / "OCRVQA/test.json", []), "OCRVQA/test.json",
     "no test questions (an empty test set: a score of 0)"),
    ("test row without answer", lambda r: _write(r / IO / "OCRVQA/test.json", [
        {k: v for k, v in _rows(r / IO / "OCRVQA/test.json")[0].items() if k != "answer"}]),
     "OCRVQA/test.json row 0", "missing field 'answer' (needed by scorer 'ocrvqa')"),
    ("duplicate question ids", lambda r: _write(r / IO / "OCRVQA/test.json",
                                                _rows(r / IO / "OCRVQA/test.json") * 2),
     "OCRVQA/test.json row 1", "question_id 'o-2' repeats row 0"),
    ("grounding size unreadable", lambda r: _write(r / IO / "Grounding/test.json", [
        {**_rows(r / IO / "Grounding/test.json")[0], "size": "big"}]),
     "Grounding/test.json row 0", "expected 'size' as [width, height], got 'big'"),
    ("question_id a list", lambda r: _write(r / IO / "OCRVQA/test.json", [
        {**_rows(r / IO / "OCRVQA/test.json")[0], "question_id": [1]}]),
     "OCRVQA/test.json row 0", "'question_id' must be a string or an integer"),
    ("text not a string", lambda r: _write(r / IO / "OCRVQA/test.json", [
        {**_rows(r / IO / "OCRVQA/test.json")[0], "text": 5}]), "OCRVQA/test.json row 0", "'text' must be a string"),
    ("train not a list", lambda r: (r / IO / "GQA/train.json").write_text("{}"), "GQA/train.json",
     "expected a JSON list of rows"),
    ("undecodable image", lambda r: (r / "cl_dataset/OCR-VQA/images/o1.jpg").write_bytes(b"\x00garbage"),
     "OCRVQA/test.json row 0", "o1.jpg does not decode"),
    ("image is a directory", lambda r: ((r / "cl_dataset/OCR-VQA/images/o1.jpg").unlink(),
                                        (r / "cl_dataset/OCR-VQA/images/o1.jpg").mkdir()),
     "OCRVQA/test.json row 0", "is a directory, expected an image file"),
    ("side file is a directory", lambda r: ((r / "cl_dataset/GQA/testdev_balanced_questions.json").unlink(),
                                            (r / "cl_dataset/GQA/testdev_balanced_questions.json").mkdir()),
     "GQA/testdev_balanced_questions.json", "is a directory, expected a file"),
    ("side file utf16", lambda r: (r / "cl_dataset/GQA/testdev_balanced_questions.json").write_bytes(
        _utf16((r / "cl_dataset/GQA/testdev_balanced_questions.json").read_text())),
     "testdev_balanced_questions.json", "UTF-16"),
    ("image path escapes", lambda r: _write(r / IO / "GQA/train.json", [
        {**_rows(r / IO / "GQA/train.json")[0], "image": "../../etc/passwd"}]),
     "GQA/train.json row 0", "escapes the image root"),
]


@pytest.mark.parametrize("edit, file, message", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_listed_by_verify_data(edit, file, message, coin_root, capsys):
    edit(coin_root)
    code, text = cli(capsys, "verify-data", coin_root / "benchmark.yaml")
    assert code == 1, text
    line = next((ln for ln in text.splitlines() if file in ln and message in ln), None)
    assert line is not None, text


def test_verify_data_lists_every_problem_not_the_first(coin_root, capsys):
    cases = [DATA_CASES[0], DATA_CASES[3], DATA_CASES[8]]  # three files of three tasks
    for _, edit, _, _ in cases:
        edit(coin_root)
    code, text = cli(capsys, "verify-data", coin_root / "benchmark.yaml")
    assert code == 1
    for _, _, file, message in cases:
        assert any(file in ln and message in ln for ln in text.splitlines()), (file, text)
    assert "3 problem(s) in 5 task(s)" in text


def test_verify_data_notes_paths_outside_the_data_root(coin_root, tmp_path, capsys):
    outside = tmp_path / "elsewhere.json"
    outside.write_text((coin_root / IO / "GQA/train.json").read_text())
    text = (coin_root / "benchmark.yaml").read_text().replace("train: Instructions_Original/GQA/train.json",
                                                               f"train: {outside}")
    text = text.replace("image_root: cl_dataset\n    scorer: ocrvqa", "image_root: ../coin/cl_dataset\n    scorer: ocrvqa")
    (coin_root / "benchmark.yaml").write_text(text)
    code, out = cli(capsys, "verify-data", coin_root / "benchmark.yaml")
    assert code == 0, out  # allowed: the benchmark YAML is trusted configuration
    assert f"note: {outside}: task 'GQA' train is outside the data root" in out
    assert "OCRVQA' image_root" not in out  # ../coin/cl_dataset is the same folder: inside


# ----------------------------------------------------------------------------- predictions and matrices
def test_bad_predictions_and_matrices(coin_root, tmp_path, capsys):
    refs = coin_root / IO / "OCRVQA/test.json"
    good = tmp_path / "p.jsonl"
    good.write_text('{"question_id": "o-2", "text": "Emma"}\n')
    cases = [
        (["score", "--scorer", "ocrvqa", "--predictions", tmp_path, "--references", refs], "is a directory"),
        (["score", "--scorer", "ocrvqa", "--predictions", _w(tmp_path / "u.jsonl", _utf16(good.read_text())),
          "--references", refs], "UTF-16"),
        (["score", "--scorer", "ocrvqa", "--predictions", _w(tmp_path / "l.jsonl", b"[1]\n"), "--references", refs],
         "l.jsonl line 1: expected a JSON object"),
        (["score", "--scorer", "ocrvqa", "--predictions", good, "--references",
          _w(tmp_path / "r.json", b'[{"question_id": "o-2", "answer": "\xe9"}]')], "not UTF-8 text"),
        (["metrics", tmp_path], "is a directory"),
        (["metrics", _w(tmp_path / "m.json", _utf16('{"tasks": ["a"], "accuracy": [[1]]}'))], "UTF-16"),
        (["metrics", _w(tmp_path / "n.json", b'{"tasks": ["a"], "accuracy": [[NaN]]}')], "row 0 column 0 is nan"),
        (["eval", tmp_path], "not a run directory"),
    ]
    for argv, message in cases:
        code, text = cli(capsys, *argv)
        assert code == 2 and message in text, (argv, text)


def _w(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- 16-bit images keep range
def test_sixteen_bit_image_is_not_turned_white(coin_root, capsys):
    path = coin_root / "cl_dataset/OCR-VQA/images/o1.jpg"
    grey = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(grey).save(path.with_suffix(".png"))
    os.replace(path.with_suffix(".png"), path)  # a PNG behind a .jpg name: decoded by content
    code, text = cli(capsys, "verify-data", coin_root / "benchmark.yaml")
    assert code == 0, text
    from dymoe.data.images import load_image

    rgb = np.asarray(load_image(path))
    assert rgb.shape == (8, 8, 3) and (rgb == 255).mean() < 0.05
    np.testing.assert_array_equal(rgb[..., 0], np.rint(grey / 257.0).astype(np.uint8))
