"""``verify-data``: every file opened, every image decoded, problems reported with file, row and reason."""

from __future__ import annotations

import json

from dymoe.cli.main import main
from dymoe.data.tasks import load_benchmark
from dymoe.data.verify import verify_benchmark


def test_clean_fixture_passes(coin_root, capsys):
    assert verify_benchmark(load_benchmark(coin_root / "benchmark.yaml")) == []
    assert main(["verify-data", str(coin_root / "benchmark.yaml")]) == 0
    assert "ok: 5 task(s)" in capsys.readouterr().out


def test_problems_are_listed_with_file_row_and_reason(coin_root, capsys):
    sqa_train = coin_root / "Instructions_Original/ScienceQA/train.json"
    rows = json.loads(sqa_train.read_text())
    rows[1]["image"] = "../outside.png"
    rows.append({"id": "x"})
    sqa_train.write_text(json.dumps(rows))
    # an undecodable image referenced by the GQA test file (twice: reported for both rows, decoded once)
    (coin_root / "cl_dataset/GQA/images/g2.jpg").write_bytes(b"\x00garbage")
    (coin_root / "Instructions_Original/OCRVQA/test.json").write_text("[{")
    (coin_root / "cl_dataset/TextVQA/TextVQA_0.5.1_val.json").unlink()
    problems = [str(p) for p in verify_benchmark(load_benchmark(coin_root / "benchmark.yaml"))]
    assert any(p.startswith(str(sqa_train) + " row 1: image path '../outside.png' escapes") for p in problems)
    assert any(p.startswith(str(sqa_train) + " row 2: missing or empty 'conversations'") for p in problems)
    gqa = [p for p in problems if "GQA/test.json" in p]
    assert len(gqa) == 2 and all("g2.jpg does not decode" in p for p in gqa)
    assert " row 0:" in gqa[0] and " row 1:" in gqa[1]
    assert any("OCRVQA/test.json: malformed JSON" in p for p in problems)
    assert any("side file 'annotations' not found" in p for p in problems)
    assert len(problems) == 6
    assert main(["verify-data", str(coin_root / "benchmark.yaml")]) == 1
    out = capsys.readouterr().out
    assert "6 problem(s) in 5 task(s)" in out


def test_data_root_flag_and_missing_root(tmp_path, capsys, coin_root):
    yaml_text = (coin_root / "benchmark.yaml").read_text().replace("data_root: .", "data_root: null")
    (tmp_path / "b.yaml").write_text(yaml_text)
    assert main(["verify-data", str(tmp_path / "b.yaml")]) == 2
    assert "data_root is null" in capsys.readouterr().err
    assert main(["verify-data", str(tmp_path / "b.yaml"), "--data-root", str(coin_root)]) == 0
