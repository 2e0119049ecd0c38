"""dymoe.io: atomic writes with umask permissions, temporaries and their cleanup, reads with clear errors."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from dymoe import io as dio
from dymoe.errors import ConfigError, DataError, OutputError


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    dio._UMASK = None
    yield
    os.umask(old)
    dio._UMASK = None


def test_atomic_writes_follow_the_umask(tmp_path, umask_027):
    assert dio.umask() == 0o027
    path = dio.atomic_write_text(tmp_path / "a" / "b.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # mkstemp alone: 0600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750
    tmp = dio.make_temp_dir(tmp_path, "ckpt")
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o750 and dio.is_temp_name(tmp.name)  # mkdtemp alone: 0700


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = dio.atomic_write_text(tmp_path / "m.json", "old")
    with pytest.raises(RuntimeError), dio.atomic_writer(path) as fh:
        fh.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["m.json"]


def test_write_errors_name_the_file(tmp_path, monkeypatch):
    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'x.json'}: No space left on device"):
        dio.atomic_write_json(tmp_path / "x.json", {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name, temp",
    [(".matrix.json.k2j3_x.tmp", True), (".task_1_A.tmp-abc123", True), (".task_1_A.old-4242", True),
     ("optimizer.safetensors.tmp", True), ("trainer_state.json.tmp", True),
     ("matrix.json", False), (".lock", False), ("after_1.jsonl", False), ("task_1_A.partial", False),
     ("a.tmp", False)],
)
def test_temporary_names(name, temp):
    assert dio.is_temp_name(name) is temp


def test_remove_temp_files_skips_logs(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / ".events.tmp").write_text("tensorboard's")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".after_1.jsonl.x.tmp").write_text("")
    (tmp_path / ".c.tmp-1").mkdir()
    (tmp_path / ".c.tmp-1" / "adapter.json").write_text("")
    removed = dio.remove_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".after_1.jsonl.x.tmp", ".c.tmp-1"]
    assert (tmp_path / "logs" / ".events.tmp").exists()


@pytest.mark.parametrize(
    "data, message",
    [
        ("é".encode("utf-16"), "UTF-16 text"),
        ("é".encode("utf-32"), "UTF-32 text"),
        ("ab".encode("utf-16-le"), "NUL byte at offset 1"),
        (b"ok\n\xff", r"byte b'\\xff' at offset 3, line 2"),
    ],
)
def test_text_that_is_not_utf8(tmp_path, data, message):
    (tmp_path / "f").write_bytes(data)
    with pytest.raises(DataError, match=message):
        dio.read_text(tmp_path / "f")
    with pytest.raises(ConfigError, match=message):
        dio.read_yaml_mapping(tmp_path / "f")


def test_reads_name_the_problem(tmp_path):
    assert dio.read_text(_w(tmp_path / "bom", b"\xef\xbb\xbfhi")) == "hi"
    with pytest.raises(DataError, match="is a directory, expected a file"):
        dio.read_json(tmp_path)
    with pytest.raises(DataError, match="a parent of this path is a file"):
        dio.read_json(tmp_path / "bom" / "x.json")
    with pytest.raises(DataError, match="missing.json: file not found"):
        dio.read_json(tmp_path / "missing.json")
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        dio.read_jsonl(_w(tmp_path / "p.jsonl", b'{"a": 1}\n{"a": \n'))


def _w(path, data: bytes):
    path.write_bytes(data)
    return path
