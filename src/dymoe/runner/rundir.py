"""The run directory: where every file of a continual run lives, and what is already done (for resume).

```
RUN/
  config.yaml   env.json   matrix.json   metrics.json   report.md   plots/
  checkpoints/task_<k>_<name>/         adapter after task k (1-based), + method state
  checkpoints/task_<k>_<name>.partial/ step checkpoint inside task k (removed when the task ends)
  predictions/<task>/after_<k>.jsonl   raw generations for task <task> after training task k
  logs/                                TensorBoard
```
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from dymoe.errors import ConfigError, DymoeError
from dymoe.eval.metrics import load_matrix
from dymoe.injection.state import META_FILE


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


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

    def check_config(self, resolved_yaml: str) -> None:
        """On resume the stored config must equal this run's (else the results would mix two setups)."""
        if not self.config.is_file():
            return
        old = yaml.safe_load(self.config.read_text())
        new = yaml.safe_load(resolved_yaml)
        diff = _first_difference(old, new)
        if diff is not None:
            raise ConfigError(
                f"{self.root} holds a run with a different config (first difference at {diff!r}); "
                "resume with the same config or choose a new --output directory"
            )

    def clear_partial(self, k: int, task: str) -> None:
        shutil.rmtree(self.partial(k, task), ignore_errors=True)


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
            if d is not None:
                return d
        return None
    return None if a == b else (prefix or "<root>")
