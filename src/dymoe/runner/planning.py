"""The planning phase before a task's training, and feature passes over a task's samples.

A method with a planning phase (it overrides :meth:`~dymoe.methods.base.Method.plan`; CMoE's probe experts and
activation statistics, D-MoLE's zero-cost proxy and budget allocation) is called once per task, *before*
``before_task`` and the task's optimizer, with a :class:`Planner` over the task's training samples:

* :meth:`Planner.train`: training steps through the runner's trainer (global batches, DDP/ZeRO, the method's loss
  terms and per-batch routing with ``BatchInfo.phase == "plan"``) with the planning phase's **own parameters and
  learning rate** (and epochs, and a seeded subset of the data);
* :meth:`Planner.batches`: this process's share of collated batches (with their :class:`BatchInfo`) for passes the
  method runs itself (D-MoLE's gradients of the frozen weights), and :meth:`Planner.all_reduce` to sum what the
  processes measured;
* :meth:`Planner.features`: a **feature pass** with the frozen backbone (every expert layer bypassed, no grad),
  sharded across processes and returned in sample order.

A method may also have an **initial phase** on a data set of its own before task 1 (:func:`run_initial_phase`;
CMoE's initial experts): the same :class:`Planner` over the samples of
:meth:`~dymoe.methods.base.Method.initial_data`, saved in ``checkpoints/initial.plan/`` and loaded on resume.

The outcome is :meth:`~dymoe.methods.base.Method.plan_state`, saved to ``checkpoints/task_<k>_<name>.plan/``; a
resumed run loads it (:meth:`~dymoe.methods.base.Method.load_plan_state`) instead of planning again. The planning
phase runs under its own seed, and the task's seed is set again after it, so a run killed between planning and
training resumes to the same matrix. ``plan`` runs on every process and must decide the same thing on each (from
all-reduced measurements).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dymoe.data.collate import split_meta
from dymoe.errors import CheckpointError, DymoeError
from dymoe.io import make_temp_dir, writing
from dymoe.methods.base import BatchInfo, TaskInfo
from dymoe.runner.routing import apply_batch_routing, restore_routing
from dymoe.runner.trainer import TrainResult, batch_info

__all__ = ["INITIAL_DIR", "PLAN_FILE", "PLAN_SEED_OFFSET", "Planner", "run_initial_phase", "run_planning"]

PLAN_FILE = "plan.json"
PLAN_STATE_FILE = "plan_state.safetensors"
#: the planning phase's seed is ``training.seed * 1000 + k + PLAN_SEED_OFFSET`` (the task's own is ``... + k``)
PLAN_SEED_OFFSET = 500


def subset_indices(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded subset of ``range(n)`` of ``max(1, round(fraction * n))`` indices, sorted (``fraction`` in (0, 1])."""
    if not 0 < fraction <= 1:
        raise DymoeError(f"planning subset fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n)) if n else 0
    return sorted(random.Random(seed).sample(range(n), k)) if k < n else list(range(n))


class Planner:
    """What a planning phase may do with one task's training samples (see the module docstring).

    Attributes:
        task: the :class:`TaskInfo` of the task about to be trained (``train_samples`` holds its samples, replay
            included); ``samples``: the same list; ``log``: a dict the method may fill (saved in ``plan.json``).
    """

    def __init__(self, run: Any, task: TaskInfo):
        self.run, self.task = run, task
        self.samples: list = list(task.train_samples)
        self.log: dict[str, Any] = {}
        self._trained: list[dict] = []

    @property
    def num_processes(self) -> int:
        return int(self.run.acc.num_processes)

    def subset(self, fraction: float, seed: int = 0) -> list[int]:
        """A seeded subset of the task's sample indices (the same on every process)."""
        return subset_indices(len(self.samples), fraction, seed)

    # ------------------------------------------------------------------ training with its own parameters
    def train(self, *, lr: float, params: list[torch.nn.Parameter] | None = None, epochs: float = 1.0,
              indices: list[int] | None = None, seed: int = 0, schedule: str = "constant",
              warmup_ratio: float = 0.0) -> TrainResult:
        """Train ``params`` (default: what the method left trainable) at ``lr`` for ``epochs`` over the samples
        ``indices`` (default: all) in the run's global batches; the method's loss terms and batch routing apply
        (``BatchInfo.phase == "plan"``). Only what has ``requires_grad`` may change, as in training. The schedule
        is the planning phase's own: constant ``lr`` without warmup unless given (``cosine``, ``linear``...)."""
        idx = list(range(len(self.samples))) if indices is None else list(indices)
        if not idx:
            raise DymoeError(f"planning of task {self.task.name!r}: no samples to train on")
        run = self.run
        result = run.trainer.train(self.task, [self.samples[i] for i in idx], seed=seed, phase="plan",
                                   params=params, lr=lr, epochs=epochs, indices=idx, schedule=schedule,
                                   warmup_ratio=warmup_ratio)
        self._trained.append({"steps": result.steps, "samples": result.samples, "lr": lr, "epochs": epochs,
                              "schedule": schedule,
                              "final_loss": result.final_loss if math.isfinite(result.final_loss) else None})
        return result

    # ------------------------------------------------------------------ passes the method runs itself
    def batches(self, indices: list[int] | None = None, *, batch_size: int | None = None,
                phase: str = "plan") -> Iterator[tuple[dict, BatchInfo]]:
        """This process's batches of ``indices`` (default: all samples; batch ``b`` of the list goes to process
        ``b mod P``), collated with their sample indices, on the device: ``(model inputs, BatchInfo)``. The
        method's routing for the batch is *not* applied (use :meth:`routed`)."""
        run = self.run
        idx = list(range(len(self.samples))) if indices is None else list(indices)
        bs = batch_size or run.cfg.training.batch_size
        chunks = [idx[k: k + bs] for k in range(0, len(idx), bs)]
        rank, world = int(run.acc.process_index), self.num_processes
        for chunk in chunks[rank::world]:
            batch = run.trainer.collator([self.samples[i] for i in chunk], indices=chunk)
            batch = {k: v.to(run.acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            inputs, meta = split_meta(batch)
            yield inputs, batch_info(meta, phase=phase, task=self.task)

    def routed(self, batch: dict, info: BatchInfo):
        """Context manager: the method's :meth:`~dymoe.methods.base.Method.batch_routing` set for one forward."""
        import contextlib

        ctx = self.run.adapter.context

        @contextlib.contextmanager
        def scope():
            saved, _ = apply_batch_routing(ctx, self.run.method.batch_routing(batch, info), batch["input_ids"].shape[0])
            try:
                yield
            finally:
                restore_routing(ctx, saved)

        return scope()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes (in place on a copy on the device; a no-op with one process)."""
        if self.num_processes == 1:
            return tensor
        t = tensor.detach().to(self.run.acc.device).clone()
        torch.distributed.all_reduce(t)
        return t.to(tensor.device)

    # ------------------------------------------------------------------ feature passes
    @torch.no_grad()
    def features(self, fn: Callable[[dict, BatchInfo], torch.Tensor], indices: list[int] | None = None, *,
                 batch_size: int | None = None, bypass: bool = True) -> torch.Tensor:
        """``fn(batch, info) -> [B, ...]`` over the samples ``indices`` (default: all) with the frozen backbone
        (``bypass``: every expert layer returns its base output), sharded across processes (sample ``i`` of the
        list on process ``i mod P``) and returned on every process in the order of ``indices``: ``[N, ...]`` on the
        CPU. A sample the collator drops (its image tokens exceed ``training.max_length``) is an error.
        """
        run = self.run
        idx = list(range(len(self.samples))) if indices is None else list(indices)
        rank, world = int(run.acc.process_index), self.num_processes
        mine = idx[rank::world]
        bs = batch_size or run.cfg.evaluation.batch_size
        ctx = run.adapter.context
        model = run.model
        was_training = model.training
        model.eval()
        rows: list[tuple[int, torch.Tensor]] = []
        old_bypass, old_rec = ctx.bypass, ctx.recording
        ctx.bypass, ctx.recording = bypass, False
        try:
            for k in range(0, len(mine), bs):
                chunk = mine[k: k + bs]
                batch = run.trainer.collator([self.samples[i] for i in chunk], indices=chunk)
                batch = {k2: v.to(run.acc.device) if isinstance(v, torch.Tensor) else v for k2, v in batch.items()}
                inputs, meta = split_meta(batch)
                info = batch_info(meta, phase="features", task=self.task)
                out = fn(inputs, info)
                if out.shape[0] != len(info.indices):
                    raise DymoeError(f"feature function returned {out.shape[0]} rows for a batch of {len(info.indices)}")
                rows += [(i, out[r].detach().float().cpu()) for r, i in enumerate(info.indices)]
        finally:
            ctx.bypass, ctx.recording = old_bypass, old_rec
            model.train(was_training)
        if world > 1:
            from accelerate.utils import gather_object

            rows = list(gather_object(rows))
        got = dict(rows)
        missing = [i for i in idx if i not in got]
        if missing:
            raise DymoeError(f"feature pass of task {self.task.name!r}: samples {missing[:5]} were dropped by the "
                             "collator (image tokens beyond training.max_length); raise max_length")
        return torch.stack([got[i] for i in idx]) if idx else torch.empty(0)


def plan_dir(run: Any, k: int, name: str) -> Path:
    """``checkpoints/task_<k+1>_<name>.plan`` (k 0-based)."""
    return Path(str(run.dir.checkpoint(k + 1, name)) + ".plan")


#: the initial phase's folder under ``checkpoints/`` and its seed offset (``training.seed * 1000 + offset``)
INITIAL_DIR = "initial.plan"
INITIAL_SEED_OFFSET = 900


def run_initial_phase(run: Any, first: TaskInfo) -> dict | None:
    """The method's initial phase before task 1 on its own data set (:meth:`~dymoe.methods.base.Method.initial_data`),
    or its saved outcome on resume; None for a method without one.

    Seeded ``training.seed * 1000 + INITIAL_SEED_OFFSET``; saved in ``checkpoints/initial.plan/`` (``plan.json``:
    the data, its sample count, the training, the method's log and the phase's wall time; the method's
    :meth:`~dymoe.methods.base.Method.initial_state` as safetensors). Returns that summary with ``loaded``.
    """
    method = run.method
    spec = method.initial_data()
    if spec is None:
        return None
    folder = run.dir.root / "checkpoints" / INITIAL_DIR
    loaded = _load_saved(folder)
    if loaded is not None:
        summary, state = loaded
        method.load_initial_state(state)
        if run.main:
            print(f"initial phase loaded from {folder}", file=_stderr())
        return {**summary, "loaded": True}
    from accelerate.utils import set_seed

    samples, files = run.initial_set(spec)
    info = TaskInfo(index=0, name="initial", num_tasks=first.num_tasks, train_samples=samples,
                    epochs=float(run.cfg.training.epochs))
    set_seed(run.cfg.training.seed * 1000 + INITIAL_SEED_OFFSET)
    planner = Planner(run, info)
    if run.main:
        print(f"initial phase: {len(samples)} samples from {', '.join(files)}", file=_stderr())
    start = time.perf_counter()
    method.initial_phase(info, planner)
    summary = {"data": files, "samples": len(samples), "train": planner._trained, "log": planner.log,
               "seconds": time.perf_counter() - start}
    _save(run, folder, summary, method.initial_state() if run.main else {}, "initial phase")
    return {**summary, "loaded": False}


def _load_saved(folder: Path) -> tuple[dict, dict] | None:
    """``(plan.json, state)`` of a saved phase, None if there is none."""
    if not (folder / PLAN_FILE).is_file():
        return None
    try:
        summary = json.loads((folder / PLAN_FILE).read_text())
        state = load_file(str(folder / PLAN_STATE_FILE)) if (folder / PLAN_STATE_FILE).is_file() else {}
    except (OSError, json.JSONDecodeError, Exception) as err:  # safetensors raises its own errors
        raise CheckpointError(f"{folder}: the saved planning phase cannot be read ({err}); delete the folder "
                              "to plan the task again") from None
    return summary, state


def _save(run: Any, folder: Path, summary: dict, state: dict, what: str) -> None:
    """Write a phase's ``plan.json`` and state atomically (main process), then wait for every process."""
    if run.main:
        state = {n: t.detach().cpu().contiguous() for n, t in state.items()}
        with writing(folder, what):
            tmp = make_temp_dir(folder.parent, folder.name)  # .<name>.tmp-<random>: a killed write is cleaned up
            save_file(state, str(tmp / PLAN_STATE_FILE))
            (tmp / PLAN_FILE).write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
    run.acc.wait_for_everyone()


def run_planning(run: Any, k: int, info: TaskInfo) -> dict | None:
    """The planning phase of task ``k`` (0-based), or its saved outcome on resume; None for a method without one.

    Seeds the planning phase (``training.seed * 1000 + k + PLAN_SEED_OFFSET``); the caller sets the task's seed
    after it. Returns the ``plan.json`` summary (``{"loaded": bool, "train": [...], "log": {...}, "seconds": wall
    time of the phase on this process}``).
    """
    method = run.method
    if not method.plans:
        return None
    from accelerate.utils import set_seed

    folder = plan_dir(run, k, info.name)
    loaded = _load_saved(folder)
    if loaded is not None:
        summary, state = loaded
        method.load_plan_state(state, info)
        if run.main:
            print(f"task {k + 1} {info.name}: planning phase loaded from {folder}", file=_stderr())
        return {**summary, "loaded": True}
    set_seed(run.cfg.training.seed * 1000 + k + PLAN_SEED_OFFSET)
    planner = Planner(run, info)
    start = time.perf_counter()
    method.plan(info, planner)
    # wall time of the planning phase (probe training, passes, feature pass...): a resumed run keeps the saved one
    summary = {"train": planner._trained, "log": planner.log, "seconds": time.perf_counter() - start}
    _save(run, folder, summary, method.plan_state() if run.main else {}, "planning phase")
    return {**summary, "loaded": False}


def _json_default(obj):
    if isinstance(obj, float):
        return None
    if torch.is_tensor(obj):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _stderr():
    import sys

    return sys.stderr
