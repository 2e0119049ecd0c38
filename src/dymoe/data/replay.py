"""Experience replay: which samples of past tasks are mixed into a later task's training data (dymoe.md §12.2).

A pure selection function; the runner (``replay.samples_per_task``) calls it before each task and concatenates the
result with the task's own samples. Each past task's buffer depends only on ``(seed, task name, n)`` and the task's
sample list, so a past task contributes exactly the same samples to every later task, whatever other tasks precede
it and in which order the mapping lists them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from dymoe.errors import ConfigError


def task_rng(seed: int, task_name: str) -> random.Random:
    """A generator seeded from ``(seed, task_name)`` through SHA-256 (stable across processes and Python runs)."""
    digest = hashlib.sha256(f"dymoe-replay/{int(seed)}/{task_name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def select_replay(past: Mapping[str, list], n: int, seed: int) -> list:
    """``n`` samples of every past task, uniform without replacement, deterministic by seed and task name.

    Args:
        past: ``{task name: that task's training samples}`` for the tasks already learned, in task order.
        n: samples per past task (a task with fewer samples contributes all of them); 0 = no replay.
        seed: replay seed (``replay.seed``).

    Returns:
        the selected samples: past tasks in mapping order, each task's samples in their original order.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"replay.samples_per_task must be an integer >= 0, got {n!r}")
    out: list = []
    if n == 0:
        return out
    for name, samples in past.items():
        k = min(n, len(samples))
        # sorted: a buffer keeps the task's order, so replayed samples mix like the original data
        picked = sorted(task_rng(seed, name).sample(range(len(samples)), k))
        out.extend(samples[i] for i in picked)
    return out
