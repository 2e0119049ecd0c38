"""The run directory: where every file of a continual run lives, who is using it, and what is already done.

```
RUN/
  .lock                                the lock: {"pid", "host", "started", "command"} of the process using RUN
  config.yaml   env.json   matrix.json   metrics.json   report.md   plots/
  checkpoints/task_<k>_<name>/         adapter after task k (1-based), + method state + the task's training log
  checkpoints/task_<k>_<name>.partial/ step checkpoint inside task k (removed when the task ends)
  predictions/<task>/after_<k>.jsonl   raw generations for task <task> after training task k
  evals/<name>/                        re-evaluations with other evaluation settings (`dymoe eval --set ...`):
                                       their own config.yaml, matrix.json, metrics.json, report.md, predictions/
  predictions/<task>/<set>/after_<k>.jsonl  the same per evaluation set (tasks with several)
  scores/after_<k>.json                every set's numbers, variant cells, locator report of row k
  checkpoints/task_<k>_<name>.plan/    the method's planning phase for task k
  checkpoints/initial.plan/            the method's initial phase before task 1 (CMoE's initial experts)
  variants/<name>/                     an evaluation variant's matrix.json and predictions/
  logs/                                TensorBoard
```

Guarantees (the README's "Reliability" section): one process at a time (:class:`RunLock`); every file is written
atomically (:mod:`dymoe.io`), so a killed run leaves complete files plus, at most, temporaries that the next start
removes; a resumed run ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from dymoe.errors import CheckpointError, ConfigError, DymoeError, RunLockedError
from dymoe.eval.metrics import load_matrix
from dymoe.injection.state import META_FILE, read_adapter_meta
from dymoe.io import is_temp_name, read_json, read_yaml_mapping, remove_temp_files, safe_filename, writing

try:  # POSIX; elsewhere the lock falls back to the PID recorded in the lock file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
# what a run writes at the top of its directory, and the folders it owns (temporaries are looked for only there)
RUN_FILES = ("config.yaml", "env.json", "matrix.json", "metrics.json", "report.md", "train_steps.jsonl")
RUN_FOLDERS = ("checkpoints", "predictions", "plots", "evals", "scores", "variants")


def _safe(name: str) -> str:
    return safe_filename(name)


class RunDir:
    """Paths and progress queries of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def matrix(self) -> Path:
        return self.root / "matrix.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def checkpoint(self, k: int, task: str) -> Path:
        """Adapter checkpoint after task ``k`` (1-based)."""
        return self.root / "checkpoints" / f"task_{k}_{_safe(task)}"

    def partial(self, k: int, task: str) -> Path:
        """Step-checkpoint directory inside task ``k``."""
        return self.root / "checkpoints" / f"task_{k}_{_safe(task)}.partial"

    def predictions(self, task: str, after: int) -> Path:
        return self.root / "predictions" / _safe(task) / f"after_{after}.jsonl"

    def evals(self, name: str) -> Path:
        """Where ``dymoe eval --set ... --name NAME`` writes a re-evaluation with other settings."""
        return self.root / "evals" / name

    # ------------------------------------------------------------------ progress
    def completed_tasks(self, tasks: list[str]) -> int:
        """Number of leading tasks whose end-of-task checkpoint is complete."""
        done = 0
        for k, name in enumerate(tasks, start=1):
            if (self.checkpoint(k, name) / META_FILE).is_file():
                done = k
            else:
                break
        return done

    def has_progress(self) -> bool:
        """True once anything a run computed is on disk (a checkpoint, a step checkpoint, predictions, a matrix)."""
        if self.matrix.exists():
            return True
        return any(
            (self.root / sub).is_dir() and any((self.root / sub).iterdir()) for sub in ("checkpoints", "predictions")
        )

    def matrix_rows(self, tasks: list[str]) -> list[list[float]]:
        """Rows of ``matrix.json`` so far (validated against the task order), or [] if there is none."""
        if not self.matrix.is_file():
            return []
        names, rows = load_matrix(self.matrix)
        if names != tasks[: len(names)]:
            raise DymoeError(
                f"{self.matrix}: tasks {names} do not match this run's order {tasks[: len(names)]}; "
                "use a new --output directory"
            )
        return rows

    def train_log(self, tasks: list[str], done: int) -> dict[str, dict]:
        """The training log of the first ``done`` tasks, read from their checkpoints (where the runner stores it
        with the weights, so a run killed before it wrote ``metrics.json`` keeps it); checkpoints written before
        the log moved there fall back to ``metrics.json``."""
        old: dict = {}
        if self.metrics.is_file():
            try:
                old = read_json(self.metrics).get("train", {}) or {}
            except (DymoeError, AttributeError):
                old = {}
        log: dict[str, dict] = {}
        for k, name in enumerate(tasks[:done], start=1):
            entry = read_adapter_meta(self.checkpoint(k, name)).get("metadata", {}).get("train")
            if entry is None:
                entry = old.get(name)
            if entry is not None:
                log[name] = entry
        return log

    def check_config(self, resolved_yaml: str) -> None:
        """On resume the stored config must equal this run's (else the results would mix two setups).

        A run directory without any result yet (a start that failed before task 1 finished anything) takes the
        new config; a stored config that cannot be read while results exist is an error naming the file.
        """
        if not self.config.exists():
            return
        import yaml

        new = yaml.safe_load(resolved_yaml)
        progress = self.has_progress()
        try:
            old = read_yaml_mapping(self.config, "config file", ConfigError)
        except ConfigError as err:
            if not progress:
                return
            raise ConfigError(
                f"{err}. This run directory holds results, and its config.yaml must describe them: restore the "
                "file or choose a new --output directory"
            ) from None
        diff = _first_difference(_with_new_defaults(old), new)
        if diff is None:
            return
        if not progress:
            print(f"{self.config}: nothing was computed with the stored config (first difference at {diff!r}); "
                  "it is replaced by this run's", file=sys.stderr)
            return
        raise ConfigError(
            f"{self.root} holds a run with a different config (first difference at {diff!r}); "
            "resume with the same config or choose a new --output directory"
        )

    def clear_partial(self, k: int, task: str) -> None:
        shutil.rmtree(self.partial(k, task), ignore_errors=True)

    def check_partial(self, k: int, task: str) -> str | None:
        """Read every file of task ``k``'s step checkpoint; a damaged one is removed (the task then restarts from
        its beginning, which gives the same result: seeds are per task) and the reason is returned."""
        part = self.partial(k, task)
        if not part.is_dir():
            return None
        from safetensors.torch import load_file

        try:
            read_adapter_meta(part)
            state = read_json(part / "trainer_state.json", error=CheckpointError)
            if not isinstance(state, dict):  # its fields are the trainer's to check
                raise CheckpointError(f"{part / 'trainer_state.json'}: expected a JSON object")
            for name in ("adapter.safetensors", "optimizer.safetensors", "method_state.safetensors"):
                if name != "method_state.safetensors" or (part / name).exists():
                    try:
                        load_file(str(part / name))
                    except Exception as err:  # SafetensorError, OSError
                        raise CheckpointError(f"{part / name}: cannot read ({err})") from None
        except DymoeError as err:
            self.clear_partial(k, task)
            return str(err)
        return None

    def check_is_run_dir(self) -> None:
        """``--output`` must be new, empty or a run directory (``config.yaml`` or the lock file in it): a run never
        writes into, or cleans, some other folder (``-o .`` in a source tree, ``-o ~``)."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise ConfigError(f"--output {self.root} is a file; expected a run directory")
        names = {p.name for p in self.root.iterdir()}
        if names and not names & {"config.yaml", LOCK_FILE}:
            shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
            raise ConfigError(f"--output {self.root} is not empty ({shown}) and is not a run directory (it has no "
                              "config.yaml): choose a new or empty directory")

    def remove_temp_files(self) -> list[Path]:
        """Remove the temporaries of interrupted writes and the step checkpoints of tasks that finished (a run
        killed between the end-of-task checkpoint and the removal of its step checkpoint leaves both). Only the
        run's own files are looked at: the top-level files it writes and the folders it owns."""
        if not self.root.is_dir():
            return []
        removed = []
        for p in self.root.iterdir():
            if p.is_file() and is_temp_name(p.name) and p.name.startswith(tuple(f".{n}." for n in RUN_FILES)):
                p.unlink(missing_ok=True)
                removed.append(p)
        for sub in RUN_FOLDERS:
            if (self.root / sub).is_dir():
                removed += remove_temp_files(self.root / sub)
        ckpts = self.root / "checkpoints"
        if ckpts.is_dir():
            for part in ckpts.glob("*.partial"):
                if (ckpts / part.name.removesuffix(".partial") / META_FILE).is_file():
                    shutil.rmtree(part, ignore_errors=True)
                    removed.append(part)
        return removed


def _with_new_defaults(old):
    """A stored config with the settings added since it was written (absent from it) at their defaults, so that a
    run started before a setting existed resumes: ``evaluation.tasks``/``metric``/``variants`` (issue 16),
    ``evaluation.general`` (issue 19)."""
    if not isinstance(old, dict):
        return old
    from dymoe.config import RunConfig

    defaults = RunConfig().to_dict()
    out = dict(old)
    for section, values in defaults.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict) and section != "method":
            out[section] = {**{k: v for k, v in values.items() if k in _ADDED_SETTINGS.get(section, ())},
                            **out[section]}
    return out


# settings added to the config after runs were made with it: absent from an older config.yaml = their default
_ADDED_SETTINGS = {"evaluation": ("tasks", "metric", "variants", "general")}


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
            if d is not None:
                return d
        return None
    return None if a == b else (prefix or "<root>")


# ---------------------------------------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class RunLock:
    """Exclusive use of a run directory by one process (one launch: only the main process of a distributed run
    takes it).

    ``RUN/.lock`` is held with ``flock`` for the lifetime of the run, so the kernel releases it when the process
    dies however it dies; the file records the holder (PID, host, start time, command) for the message a second
    process gets. A lock whose holder is gone is taken over (with a note). Where ``flock`` is not available
    (Windows, some network file systems) the recorded PID decides: a live process on this host, or any process on
    another host, holds the directory (delete ``RUN/.lock`` by hand if that host's process is gone).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._fh = None
        self._created_root = False

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> None:
        if self._fh is not None:
            return
        created = not self.root.exists()
        with writing(self.root, "the run directory"):
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's lifetime
        try:
            flocked = self._flock(fh)
            holder = self._read(fh)
            me = {"pid": os.getpid(), "host": socket.gethostname()}
            if flocked is False or (flocked is None and holder and self._holder_alive(holder, me)):
                raise RunLockedError(self._busy_message(holder))
            if holder and (holder.get("pid"), holder.get("host")) != (me["pid"], me["host"]):
                print(f"{self.root}: took over the lock of process {holder.get('pid')} on {holder.get('host')} "
                      "(no longer running)", file=sys.stderr)
            with writing(self.path):
                fh.seek(0)
                fh.truncate()
                fh.write(json.dumps({**me, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "command": " ".join(sys.argv)[:500]}) + "\n")
                fh.flush()
        except RunLockedError:
            fh.close()  # the directory is the holder's: leave it as it is
            raise
        except BaseException:
            fh.close()
            if created:
                self._remove_if_only_lock()
            raise
        self._fh, self._created_root = fh, created

    def release(self) -> None:
        """Give the directory back; a directory this lock created and nothing else was written to is removed
        (a failed start leaves no run directory behind)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if self._created_root and self._remove_if_only_lock():
                return
            fh.seek(0)
            fh.truncate()  # an empty lock file: nobody holds the directory
        except OSError:
            pass
        finally:
            fh.close()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _flock(fh) -> bool | None:
        """True: locked; False: another process holds it; None: ``flock`` is not available here."""
        if fcntl is None:
            return None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            import errno

            if err.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                return False
            return None  # ENOLCK, EOPNOTSUPP, ...: no lock support on this file system

    @staticmethod
    def _read(fh) -> dict:
        try:
            fh.seek(0)
            text = fh.read().strip()
            data = json.loads(text) if text else {}
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _holder_alive(holder: dict, me: dict) -> bool:
        if holder.get("host") != me["host"]:
            return True  # cannot tell: assume it runs
        pid = holder.get("pid")
        return isinstance(pid, int) and pid != me["pid"] and _pid_alive(pid)

    def _busy_message(self, holder: dict) -> str:
        who = (f"process {holder.get('pid')} on host {holder.get('host')}" if holder
               else "another process (it has not recorded its PID yet)")
        since = f", started {holder['started']}" if holder.get("started") else ""
        cmd = f" ({holder['command']})" if holder.get("command") else ""
        hint = "" if fcntl is not None else f"; if that process is gone, delete {self.path}"
        return (f"{self.root} is in use by {who}{since}{cmd}. Two runs on one directory would mix their results: "
                f"wait for it to finish or choose another --output directory{hint}")

    def _remove_if_only_lock(self) -> bool:
        try:
            if [p.name for p in self.root.iterdir()] == [LOCK_FILE]:
                self.path.unlink()
                self.root.rmdir()
                return True
        except OSError:
            pass
        return False
