"""Files in and out, with the project's guarantees.

Writes are atomic: a temporary file in the target's directory (``.<name>.<random>.tmp``) is ``os.replace``-d into
place, so a crash (even SIGKILL) leaves either the old file or the new one, never half of one; a temporary file a
killed process leaves behind is removed by :func:`remove_temp_files` (the runner does it at start and on
success). Written files and directories get the permissions the umask gives (``mkstemp``'s 0600 is widened), so
collaborators can read results. A failed write (full disk, read-only file system, permission) raises
:class:`~dymoe.errors.OutputError` naming the file.

Reads give a clear :class:`~dymoe.errors.DymoeError` (``DataError`` unless the caller asks for another kind)
naming the file for a missing file, a directory given as a file, an unreadable file, text that is not UTF-8
(UTF-16 is recognised and named) and malformed JSON/YAML.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dymoe.errors import ConfigError, DataError, DymoeError, OutputError

# errno values that mean "the output cannot be written" (as opposed to a bug)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}

# -------------------------------------------------------------------------------------------- permissions
_UMASK: int | None = None


def umask() -> int:
    """The process umask (read from ``/proc/self/status`` where possible: no window where it is changed)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                line = next(ln for ln in fh if ln.startswith("Umask:"))
            _UMASK = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            old = os.umask(0o022)
            os.umask(old)
            _UMASK = old
    return _UMASK


def apply_umask(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (0666/0777 minus the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def make_temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new temporary directory ``parent/.<name>.tmp-<random>`` with umask permissions (for atomic renames)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    apply_umask(tmp, directory=True)
    return tmp


# ------------------------------------------------------------------------------------------------- writes
def describe_os_error(err: BaseException) -> str:
    """``"No space left on device"`` from an ``OSError`` (or a safetensors error that wraps one)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "", errnos: set[int] | None = None) -> Iterator[None]:
    """Turn an ``OSError`` (or a safetensors I/O error) raised while writing ``path`` into :class:`OutputError`;
    with ``errnos`` only those errors (e.g. :data:`WRITE_ERRNOS` around code that also reads)."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        if errnos is not None and err.errno not in errnos:
            raise
        raise OutputError(f"cannot write {what + ' ' if what else ''}{path}: {describe_os_error(err)}") from None
    except Exception as err:
        if type(err).__name__ == "SafetensorError" and ("I/O error" in str(err) or "os error" in str(err)):
            raise OutputError(f"cannot write {what + ' ' if what else ''}{path}: {err}") from None
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing (``mode`` ``"w"`` or ``"wb"``); on a clean exit it is
    flushed, synced and renamed over ``path``; on an error it is removed and ``path`` is left as it was."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            apply_umask(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_writer(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write one JSON object per line to ``path`` atomically."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# names of the temporaries the writers above (and the checkpoint writer) create
_TEMP_NAME = re.compile(r"^\..+(\.tmp|\.tmp-[^/]*|\.old-[^/]*)$|^[^.].*\.(safetensors|json)\.tmp$")


def is_temp_name(name: str) -> bool:
    """True for the temporaries of an interrupted atomic write: ``.<name>.<random>.tmp`` files,
    ``.<name>.tmp-<random>`` / ``.<name>.old-<pid>`` directories, and ``<file>.json.tmp`` /
    ``<file>.safetensors.tmp`` of a step checkpoint."""
    return bool(_TEMP_NAME.match(name))


def remove_temp_files(root: str | os.PathLike, skip: tuple[str, ...] = ("logs",)) -> list[Path]:
    """Delete every temporary left by an interrupted atomic write under ``root``; returns what was removed.

    Only call this while no other process writes under ``root`` (the runner holds the run directory's lock).
    Top-level folders named in ``skip`` (TensorBoard's ``logs``) are not searched.
    """
    root = Path(root)
    removed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for d in list(dirnames):
            if is_temp_name(d):
                shutil.rmtree(here / d, ignore_errors=True)
                removed.append(here / d)
                dirnames.remove(d)
        for f in filenames:
            if is_temp_name(f):
                (here / f).unlink(missing_ok=True)
                removed.append(here / f)
    return removed


# -------------------------------------------------------------------------------------------------- reads
def decode_text(raw: bytes, path: str | os.PathLike, error: type[DymoeError] = DataError) -> str:
    """UTF-8 text of ``raw`` (a UTF-8 byte-order mark is dropped); UTF-16/32 or other bytes raise ``error``."""
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise error(f"{path}: the file is UTF-32 text; save it as UTF-8")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise error(f"{path}: the file is UTF-16 text; save it as UTF-8")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise error(f"{path}: not a text file (a NUL byte at offset {nul}: UTF-16 without a byte-order mark, "
                    "or binary data); save it as UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise error(f"{path}: not UTF-8 text (byte {raw[err.start:err.start + 1]!r} at offset {err.start}, "
                    f"line {line}); save it as UTF-8") from None


def read_text(path: str | os.PathLike, *, error: type[DymoeError] = DataError, missing: str | None = None) -> str:
    """The UTF-8 text of a file, or ``error`` naming the file: missing (``missing`` replaces the default
    ``"PATH: file not found"``), a directory, unreadable, or not UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(missing or f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a file") from None
    except NotADirectoryError:
        raise error(f"{path}: a parent of this path is a file, not a directory") from None
    except OSError as err:
        raise error(f"{path}: cannot read ({describe_os_error(err)})") from None
    return decode_text(raw, path, error)


def parse_json(text: str, path: str | os.PathLike, error: type[DymoeError] = DataError) -> Any:
    """``json.loads`` with an ``error`` naming the file, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def read_json(path: str | os.PathLike, *, error: type[DymoeError] = DataError) -> Any:
    """Parse a JSON file (errors as :func:`read_text` and :func:`parse_json`)."""
    return parse_json(read_text(path, error=error), path, error)


def read_jsonl(path: str | os.PathLike, *, error: type[DymoeError] = DataError) -> list[dict]:
    """Read a JSON-lines file of objects (blank lines ignored); a bad line raises ``error`` naming file and line."""
    out = []
    for i, line in enumerate(read_text(path, error=error).splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path} line {i + 1}: malformed JSON: {err.msg}") from None
        if not isinstance(obj, dict):
            raise error(f"{path} line {i + 1}: expected a JSON object")
        out.append(obj)
    return out


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file",
                      error: type[DymoeError] = ConfigError) -> dict:
    """Parse a YAML file whose top level must be a mapping (an empty file is ``{}``).

    Raises ``error`` (:class:`dymoe.errors.ConfigError` by default) naming the file: missing
    (``"<what> PATH does not exist"``), a directory, not UTF-8, malformed YAML, or a top level that is not a mapping.
    """
    import yaml

    path = Path(path)
    text = read_text(path, error=error, missing=f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{path}: malformed YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def safe_filename(name: str) -> str:
    """The folder name used for a task on disk (``"Viz Wiz"`` → ``"Viz_Wiz"``): runs of characters other than
    letters, digits, ``_``, ``.`` and ``-`` become one ``_``. Two task names may not share one (checked at load)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
