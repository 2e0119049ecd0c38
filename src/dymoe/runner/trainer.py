"""Training one task: seeded length-grouped global batches, AdamW + warmup/cosine in global optimizer steps, method
loss terms, step checkpoints, NaN guard. Devices, DDP / DeepSpeed and mixed precision come from an
``accelerate.Accelerator`` (:mod:`dymoe.runner.engines`).

**One optimizer step = one global batch**, whatever the number of processes. The task's samples are planned into
global batches of ``training.global_batch_size`` (:func:`plan_batches`, seeded, identical on every process); each
global batch is cut into micro-batches of ``training.batch_size`` and micro-batch ``j`` runs on process
``j mod P`` at accumulation step ``j div P`` (:func:`micro_batches`). So the same micro-batches are formed on 1, 2
or 8 processes, and a run's result depends on the global and per-device batch sizes only, not on how the
micro-batches are spread over processes and accumulation steps (up to floating-point summation order and the
per-process dropout masks). A partial last global batch is applied like any other; a process with fewer
micro-batches in it than the others runs zero-weight micro-steps (a real micro-batch, loss × 0, routing not
recorded) so that every process takes part in the same gradient reductions.

**Loss normalisation** (as HF's ``num_items_in_batch``): the LM loss of a micro-batch (the model's mean over its
answer tokens) is weighted by its share of the answer tokens of the *whole global batch* (counted over all
micro-batches and processes before the first backward), so the gradient of P processes × b samples equals the
gradient of one process × P·b samples. A method's loss terms are averaged over the global batch's micro-batches.
With one process and no accumulation both weights are exactly 1 and the step is the plain ``loss.backward()``.

**Schedule**: built per task over the task's global optimizer steps and stepped once per optimizer step (never by
the accelerate wrapper, which steps once per process); the learning rate of every step is logged
(``train_steps.jsonl`` in the run directory, and the trackers).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from dymoe.config import TrainingConfig
from dymoe.data.collate import split_meta
from dymoe.errors import ConfigError, DymoeError
from dymoe.injection.inject import ExpertAdapter
from dymoe.injection.state import load_adapter_into, load_method_state, save_adapter
from dymoe.io import atomic_write_text
from dymoe.methods.base import BatchInfo, Method, StepInfo, TaskInfo
from dymoe.runner.engines import PreparedTask
from dymoe.runner.routing import apply_batch_routing, restore_routing


class TrainingDiverged(DymoeError):
    """The loss became NaN or infinite."""


def approx_length(sample) -> int:
    """Cheap length proxy for length-grouped batching: characters of the conversation (+ a bonus for an image)."""
    return sum(len(u) + len(a) for u, a in sample.turns) + (1000 if sample.image is not None else 0)


def plan_batches(
    lengths: list[int], batch_size: int, epochs: float, seed: int, group_by_length: bool
) -> list[list[int]]:
    """Global batches (one per optimizer step) of sample indices for the whole task, deterministic in ``seed``.

    Each epoch is a seeded shuffle; with ``group_by_length`` the shuffle is cut into mega-batches of 50 batches,
    each sorted by length (HF's LengthGroupedSampler), and the batches are shuffled again. A fractional epoch count
    takes that fraction of the next epoch's batches. The last batch of an epoch may be smaller.
    """
    n = len(lengths)
    if n == 0:
        return []
    rng = random.Random(seed)
    batches: list[list[int]] = []
    full, frac = int(epochs), epochs - int(epochs)
    for ep in range(full + (1 if frac > 0 else 0)):
        order = list(range(n))
        rng.shuffle(order)
        if group_by_length:
            mega = batch_size * 50
            order = [i for k in range(0, n, mega) for i in sorted(order[k : k + mega], key=lambda i: -lengths[i])]
        ep_batches = [order[k : k + batch_size] for k in range(0, n, batch_size)]
        if group_by_length:
            rng.shuffle(ep_batches)
        if ep == full:  # fractional last epoch
            ep_batches = ep_batches[: max(1, round(len(ep_batches) * frac))]
        batches.extend(ep_batches)
    return batches


@dataclass(frozen=True)
class Batching:
    """The batch layout of one optimizer step: ``global_batch_size = per_device × grad_accum × num_processes``."""

    global_batch_size: int
    per_device: int
    grad_accum: int
    num_processes: int

    def describe(self) -> str:
        return (f"global batch {self.global_batch_size} = {self.per_device} per device × {self.grad_accum} "
                f"accumulation step{'s' if self.grad_accum != 1 else ''} × {self.num_processes} "
                f"process{'es' if self.num_processes != 1 else ''}")

    def to_dict(self) -> dict:
        return {"global_batch_size": self.global_batch_size, "per_device_batch_size": self.per_device,
                "grad_accum": self.grad_accum, "num_processes": self.num_processes}


def resolve_batching(cfg: TrainingConfig, num_processes: int) -> Batching:
    """The batch layout for ``num_processes`` processes (see :class:`~dymoe.config.TrainingConfig`).

    Raises:
        ConfigError: ``global_batch_size`` is not a multiple of ``batch_size × num_processes``, or contradicts an
            explicit ``grad_accum``.
    """
    b, n = int(cfg.batch_size), int(num_processes)
    if cfg.global_batch_size is None:
        k = int(cfg.grad_accum or 1)
        return Batching(b * k * n, b, k, n)
    g = int(cfg.global_batch_size)
    if g % (b * n):
        raise ConfigError(
            f"training.global_batch_size {g} is not divisible by training.batch_size {b} × {n} "
            f"process{'es' if n != 1 else ''} (= {b * n}): gradient accumulation must be a whole number. Choose a "
            f"global batch that is a multiple of {b * n}, or a per-device batch_size that divides {g // n if g % n == 0 else g}"
            f"{'' if g % n == 0 else ' (and a number of processes that divides it)'}"
        )
    k = g // (b * n)
    if cfg.grad_accum is not None and int(cfg.grad_accum) != k:
        raise ConfigError(
            f"training.grad_accum {cfg.grad_accum} contradicts training.global_batch_size {g} = batch_size {b} × "
            f"{n} process{'es' if n != 1 else ''} × {k}; leave grad_accum unset (it is derived)"
        )
    return Batching(g, b, k, n)


def micro_batches(global_batch: list[int], per_device: int, rank: int, world: int) -> list[list[int] | None]:
    """This process's micro-batches of one global batch, one per accumulation step (see the module docstring).

    Micro-batch ``j`` (samples ``j·b … j·b + b − 1``) goes to process ``j mod world`` at step ``j div world``; every
    process gets ``ceil(M / world)`` steps for ``M`` micro-batches, ``None`` marking a zero-weight step.
    """
    micro = [global_batch[k : k + per_device] for k in range(0, len(global_batch), per_device)]
    steps = math.ceil(len(micro) / world)
    return [micro[s * world + rank] if s * world + rank < len(micro) else None for s in range(steps)]


def answer_tokens(batch: dict) -> int:
    """Tokens the LM loss averages over: labels ≠ −100 after the causal shift (``labels[:, 1:]``)."""
    labels = batch.get("labels")
    return 0 if labels is None else int((labels[:, 1:] != -100).sum())


@dataclass
class TrainResult:
    """Summary of one task's training."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    loss_terms: dict[str, float] = field(default_factory=dict)
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0  # answer tokens of the steps run by this call (all processes)


def batch_info(meta: dict, *, phase: str, task: TaskInfo, **extra) -> BatchInfo:
    """The :class:`BatchInfo` of a batch from its metadata (``sample_index``, ``image_sample``; see
    :func:`dymoe.data.collate.split_meta`)."""
    idx, img = meta.get("sample_index"), meta.get("image_sample")
    return BatchInfo(phase=phase, task_index=task.index, task=task.name,
                     indices=[] if idx is None else idx.tolist(), image_sample=[] if img is None else img.tolist(),
                     stage=extra.pop("stage", task.index), **extra)


def forward_loss(model, adapter: ExpertAdapter, method: Method, batch: dict, step: StepInfo, *, record: bool = True,
                 info: BatchInfo | None = None):
    """One training forward with the method's routing policy, group mask, per-batch routing and loss terms.

    This is the step the runner trains with (and the one ``benchmarks/bench_train_step.py`` times). Returns
    ``(loss, terms, outputs)``: the LM loss plus the method's (already weighted) terms, each term by name, and the
    model outputs. Recording is switched off before returning, so gradient checkpointing's recomputation in
    backward does not report to the observers again. ``record=False`` (zero-weight micro-steps) leaves routing
    unrecorded, so observers' statistics see only real data. ``info`` (the batch's :class:`BatchInfo`) is given to
    :meth:`Method.batch_routing`, whose routing inputs hold for this forward only.
    """
    ctx = adapter.context
    ctx.policy = method.routing_policy("train")
    ctx.group_mask = method.group_mask(batch, "train")
    saved = {}
    if info is not None:
        saved, _ = apply_batch_routing(ctx, method.batch_routing(batch, info), batch["input_ids"].shape[0])
    ctx.recording = record
    try:
        method.on_forward_start()
        outputs = model(**batch)
        terms = method.loss_terms(batch, outputs, step)
    finally:
        ctx.recording = False
        restore_routing(ctx, saved)
    loss = outputs.loss + sum(terms.values()) if terms else outputs.loss
    return loss, terms, outputs


def _weighted(x: torch.Tensor, w: float) -> torch.Tensor:
    return x if w == 1.0 else x * w


def param_groups(params: list[torch.nn.Parameter], method: Method) -> list[dict]:
    """Optimizer parameter groups: ``params`` at the run's learning rate, except those a method gives their own
    (``method.lr_groups()``, e.g. CoIN's projector at 2e-5), each in a named group of its own."""
    special = method.lr_groups()
    own = {id(p) for _, ps, _ in special for p in ps}
    groups = [{"params": [p for p in params if id(p) not in own], "name": "main"}]
    groups += [{"params": list(ps), "lr": lr, "name": name} for name, ps, lr in special]
    return groups


class TaskTrainer:
    """Trains the adapter on one task's samples (see module docstring).

    Args:
        model: the model with experts injected (and the method's modules attached); adapter: its
        :class:`ExpertAdapter`; method: the plugin; collator: turns a list of samples into a batch dict;
        cfg: :class:`TrainingConfig`; accelerator: an ``accelerate.Accelerator``; batching: the resolved
        :class:`Batching` (default: from ``cfg`` and the accelerator's process count); step_log: a JSONL file that
        receives one row per optimizer step (main process only), or None.
    """

    def __init__(self, model, adapter: ExpertAdapter, method: Method, collator, cfg: TrainingConfig, accelerator,
                 batching: Batching | None = None, step_log: Path | None = None):
        self.model, self.adapter, self.method = model, adapter, method
        self.collator, self.cfg, self.acc = collator, cfg, accelerator
        self._batching = batching
        self.step_log = step_log
        self.samples: list = []
        self._phase, self._indices = "train", None

    @property
    def batching(self) -> Batching:
        if self._batching is None:  # resolved on first use: an evaluation-only run never needs it
            self._batching = resolve_batching(self.cfg, self.acc.num_processes)
        return self._batching

    # ------------------------------------------------------------------ data
    def plan(self, samples: list, seed: int, epochs: float | None = None) -> list[list[int]]:
        """The task's global batches (one per optimizer step), the same on every process (``epochs``: default
        ``training.epochs``)."""
        lengths = [approx_length(s) for s in samples]
        epochs = self.cfg.epochs if epochs is None else epochs
        return plan_batches(lengths, self.batching.global_batch_size, epochs, seed, self.cfg.group_by_length)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def iter_batches(self, n: int, batch_size: int | None = None, seed: int = 0, *,
                     shard: bool = False) -> Iterator[dict]:
        """Up to ``n`` collated batches of the current task's samples on the device (for Fisher estimates etc.),
        in one seeded order. ``shard``: batch ``b`` of them is collated and yielded only on process ``b mod P``
        (a pass whose sums the caller adds up with :meth:`all_sum`); otherwise every process gets every batch."""
        rng = random.Random(seed)
        order = list(range(len(self.samples)))
        rng.shuffle(order)
        bs = batch_size or self.cfg.batch_size
        rank, world = (self.acc.process_index, self.acc.num_processes) if shard else (0, 1)
        for b, k in enumerate(range(0, min(len(order), n * bs), bs)):
            if b % world == rank:
                yield self._to_device(self.collator([self.samples[i] for i in order[k : k + bs]]))

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over all processes (float64; a no-op with one process)."""
        if self.acc.num_processes == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    # ------------------------------------------------------------------ loop
    def train(
        self,
        task: TaskInfo,
        samples: list,
        *,
        seed: int,
        step_dir: Path | None = None,
        on_step: Callable[[int, int], None] | None = None,
        phase: str = "train",
        params: list[torch.nn.Parameter] | None = None,
        lr: float | None = None,
        epochs: float | None = None,
        indices: list[int] | None = None,
        schedule: str | None = None,
        warmup_ratio: float | None = None,
    ) -> TrainResult:
        """Train on ``samples``; ``step_dir`` (if given) holds/receives mid-task step checkpoints.

        ``on_step(step, total)`` is called after every optimizer step (analyses evaluate mid-task with it; the
        model is in train mode again when it returns).

        The planning phase trains through the same loop with ``phase="plan"``, its own ``params`` (default: the
        adapter's trainable tensors and the method's registered modules), ``lr`` and ``epochs`` (defaults:
        ``training.lr`` / the task's epochs) and schedule (``schedule``, ``warmup_ratio``; defaults: the training
        config's), without step checkpoints or the per-step log; ``indices`` are the samples' indices reported to
        :meth:`Method.batch_routing` (default: their positions in ``samples``).
        """
        cfg, acc, lay = self.cfg, self.acc, self.batching
        self.samples = samples
        self._phase = phase
        self._indices = indices
        plan = self.plan(samples, seed, epochs)
        total = len(plan)
        task.total_steps = total
        resuming = step_dir is not None and (step_dir / "trainer_state.json").is_file()
        if resuming:
            # the adapter first: loading replaces the Parameter objects the optimizer must be built on
            load_adapter_into(self.adapter, step_dir)
            self.method.load_checkpoint_state(load_method_state(step_dir))
        if params is None:
            params = self.adapter.trainable_parameters() + self.method.extra_parameters()
        if not params:
            what = "the planning phase" if phase == "plan" else f"task {task.name!r}"
            raise DymoeError(f"method {self.method.name!r} left nothing trainable for {what}")
        # the planning phase trains only what it was given, in one group; the task's training uses the method's
        # parameter groups (e.g. a trained projector at its own learning rate)
        groups = [{"params": params, "name": "plan"}] if phase == "plan" else param_groups(params, self.method)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay)
        # the schedule counts global optimizer steps and is stepped here once per step (never by accelerate)
        schedule = cfg.schedule if schedule is None else schedule
        warmup = cfg.warmup_ratio if warmup_ratio is None else warmup_ratio
        scheduler = get_scheduler(
            "constant_with_warmup" if schedule == "constant" else schedule,
            optimizer,
            num_warmup_steps=int(math.ceil(warmup * total)),
            num_training_steps=max(total, 1),
        )
        prepared = PreparedTask(acc, self.model, optimizer, params=params, max_grad_norm=cfg.max_grad_norm,
                                batching=lay)
        try:
            start = self._load_step(step_dir, prepared.optimizer, scheduler) if resuming else 0
            result = self._loop(task, samples, plan, start, prepared, scheduler, step_dir, on_step)
        finally:
            prepared.close()  # also sets every trainable .grad to None: nothing leaks into the next task
            ctx = self.adapter.context
            ctx.policy, ctx.group_mask, ctx.recording = None, None, False
        result.truncated = getattr(self.collator, "num_truncated", 0)
        result.dropped = getattr(self.collator, "num_dropped", 0)
        return result

    def _loop(self, task, samples, plan, start, prepared: PreparedTask, scheduler, step_dir, on_step) -> TrainResult:
        cfg, acc = self.cfg, self.acc
        total = len(plan)
        wrapped = prepared.model
        wrapped.train()
        if self._phase == "train":
            self._open_step_log(task, start)
        result = TrainResult()
        bar = tqdm(total=total, initial=start, desc=f"{self._phase} {task.name}", disable=not acc.is_local_main_process,
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        seen_before = sum(len(gb) for gb in plan[:start])
        seen = 0
        for step in range(start, total):
            gb = plan[step]
            loss_val, terms_val, n_tokens, bad = self._accumulate(gb, samples, StepInfo(step, total), prepared, task)
            if bad:  # every process raises together (a lone raise would leave the others waiting)
                raise TrainingDiverged(
                    f"loss became {loss_val + sum(terms_val.values())} on task {task.index + 1} ({task.name!r}) "
                    f"at step {step + 1}; the last good checkpoint is kept. Try a lower training.lr or "
                    "training.max_grad_norm."
                )
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            prepared.step()
            scheduler.step()
            seen += len(gb)
            result.tokens += int(n_tokens)
            done = step + 1
            bar.update(1)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
            logs = {"train/lr": lr}
            if done % cfg.log_every == 0 or done == total:
                logs.update({f"train/{task.name}/loss": loss_val, "train/samples_per_s": rate})
                logs.update({f"train/{task.name}/{k}": v for k, v in terms_val.items()})
            if self._phase != "train":
                logs = {f"{self._phase}/{k.removeprefix('train/')}": v for k, v in logs.items()}
            acc.log(logs, step=task.index * 1_000_000 + done)
            if self._phase == "train":
                self._log_step({"task": task.name, "task_index": task.index, "step": done, "lr": lr, "loss": loss_val,
                                **terms_val, "samples": len(gb), "tokens": int(n_tokens)})
            if step_dir is not None and cfg.save_every_steps and done % cfg.save_every_steps == 0 and done < total:
                self._save_step(step_dir, done, task, prepared.optimizer, scheduler)
            if on_step is not None:
                on_step(done, total)
                wrapped.train()
            result.final_loss, result.loss_terms = loss_val, terms_val
        bar.close()
        result.steps, result.samples = total, seen_before + seen
        result.seconds = time.perf_counter() - t0
        return result

    def _accumulate(self, gb: list[int], samples: list, info: StepInfo, prepared: PreparedTask, task: TaskInfo):
        """Forward and backward of this process's micro-batches of global batch ``gb`` (gradients synchronised on
        the last). Returns the global batch's token-mean LM loss, its micro-batch-mean loss terms, its answer-token
        count and whether any process saw a non-finite loss (all summed over processes)."""
        world, rank, per_device = self.acc.num_processes, self.acc.process_index, self.batching.per_device
        local = micro_batches(gb, per_device, rank, world)
        n_micro = math.ceil(len(gb) / per_device)
        ids = self._indices
        collated = [self.collator([samples[i] for i in idx], indices=[i if ids is None else ids[i] for i in idx])
                    if idx is not None else None for idx in local]
        (n_tokens,) = self.all_sum([float(sum(answer_tokens(c) for c in collated if c is not None))])
        lm_sum, bad, term_sums, terms = 0.0, 0.0, {}, {}
        for s, idx in enumerate(local):
            last, real = s == len(local) - 1, idx is not None
            # a zero-weight step reruns this process's first micro-batch (or the global batch's first)
            zero = local[0] if local[0] is not None else gb[:per_device]
            batch = collated[s] if real else self.collator(
                [samples[i] for i in zero], indices=[i if ids is None else ids[i] for i in zero])
            batch, meta = split_meta(self._to_device(batch))
            binfo = batch_info(meta, phase=self._phase, task=task)
            n_here = answer_tokens(batch)
            w_lm = world * n_here / n_tokens if real and n_tokens > 0 else 0.0  # share of the global batch's tokens
            w_terms = world / n_micro if real else 0.0  # DDP / ZeRO average over processes: hence × world
            with prepared.sync(last):
                loss, terms, outputs = forward_loss(prepared.model, self.adapter, self.method, batch, info, record=real,
                                                    info=binfo)
                if not (w_lm == 1.0 and w_terms == 1.0):  # (one process, no accumulation: the plain loss)
                    loss = _weighted(outputs.loss, w_lm)
                    if terms:
                        loss = loss + _weighted(sum(terms.values()), w_terms)
                prepared.backward(loss, last)
            if real:
                values = [outputs.loss.detach().float(), *(v.detach() for v in terms.values())]
                bad += 0.0 if all(bool(torch.isfinite(v).all()) for v in values) else 1.0
                lm_sum += float(values[0]) * n_here
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + float(v.detach())
        keys = sorted(term_sums) if term_sums else sorted(terms)
        sums = self.all_sum([lm_sum, bad, *[term_sums.get(k, 0.0) for k in keys]])
        terms_val = {k: v / n_micro for k, v in zip(keys, sums[2:])}
        return sums[0] / max(n_tokens, 1.0), terms_val, n_tokens, sums[1] > 0

    # ------------------------------------------------------------------ per-step log
    def _open_step_log(self, task: TaskInfo, start: int) -> None:
        """Drop rows of this task past ``start`` (a resumed task rewrites them) so every step appears once."""
        path = self.step_log
        if path is None or not self.acc.is_main_process or not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if row.get("task_index") != task.index or row.get("step", 0) <= start:
                keep.append(line)
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))

    def _log_step(self, row: dict) -> None:
        if self.step_log is None or not self.acc.is_main_process:
            return
        self.step_log.parent.mkdir(parents=True, exist_ok=True)
        with self.step_log.open("a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")

    # ------------------------------------------------------------------ step checkpoints
    def _save_step(self, step_dir: Path, steps_done: int, task: TaskInfo, optimizer, scheduler) -> None:
        if not self.acc.is_main_process:
            return
        opt = optimizer.state_dict()
        tensors = {}
        for pid, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        state = {
            "steps_done": steps_done,
            "global_batch_size": self.batching.global_batch_size,
            "task_index": task.index,
            "task": task.name,
            "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict(),
        }
        save_adapter(self.adapter, step_dir, metadata={"partial": True, "task": task.name},
                     method_state=self.method.checkpoint_state())
        # the adapter dir was just replaced atomically; add the trainer state files inside it, state last
        save_file(tensors, str(step_dir / "optimizer.safetensors.tmp"))
        (step_dir / "optimizer.safetensors.tmp").replace(step_dir / "optimizer.safetensors")
        tmp = step_dir / "trainer_state.json.tmp"
        tmp.write_text(json.dumps(state, default=_json_default))
        tmp.replace(step_dir / "trainer_state.json")

    def _load_step(self, step_dir: Path, optimizer, scheduler) -> int:
        state = json.loads((step_dir / "trainer_state.json").read_text())
        if "steps_done" not in state or state.get("global_batch_size") != self.batching.global_batch_size:
            raise DymoeError(
                f"{step_dir}: this step checkpoint was written with another batch layout (or an older dymoe); "
                "delete the folder to restart the task from its beginning"
            )
        tensors = load_file(str(step_dir / "optimizer.safetensors"))
        opt_state: dict = {"state": {}, "param_groups": state["param_groups"]}
        for key, v in tensors.items():
            if key.startswith("state."):
                _, pid, name = key.split(".", 2)
                opt_state["state"].setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        return int(state["steps_done"])


def _json_default(obj):
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj)}")
