"""Training one task: seeded length-grouped batches, AdamW + warmup/cosine, gradient accumulation, method loss terms,
step checkpoints, NaN guard. Devices, DDP and mixed precision come from an ``accelerate.Accelerator``.
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
from dymoe.errors import DymoeError
from dymoe.injection.inject import ExpertAdapter
from dymoe.injection.state import load_adapter_into, load_method_state, save_adapter
from dymoe.methods.base import Method, StepInfo, TaskInfo


class TrainingDiverged(DymoeError):
    """The loss became NaN or infinite."""


def approx_length(sample) -> int:
    """Cheap length proxy for length-grouped batching: characters of the conversation (+ a bonus for an image)."""
    return sum(len(u) + len(a) for u, a in sample.turns) + (1000 if sample.image is not None else 0)


def plan_batches(
    lengths: list[int], batch_size: int, epochs: float, seed: int, group_by_length: bool
) -> list[list[int]]:
    """Global batches of sample indices for the whole task, deterministic in ``seed``.

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


def shard_batch(global_batch: list[int], rank: int, world: int) -> list[int]:
    """This process's part of a global batch (wrapped around so every process gets the same count)."""
    if world == 1:
        return global_batch
    per = math.ceil(len(global_batch) / world)
    padded = (global_batch * world)[: per * world]
    return padded[rank * per : (rank + 1) * per]


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


def forward_loss(model, adapter: ExpertAdapter, method: Method, batch: dict, step: StepInfo):
    """One training forward with the method's routing policy, group mask and loss terms.

    This is the step the runner trains with (and the one ``benchmarks/bench_train_step.py`` times). Returns
    ``(loss, terms, outputs)``: the LM loss plus the method's (already weighted) terms, each term by name, and the
    model outputs. Recording is switched off before returning, so gradient checkpointing's recomputation in
    backward does not report to the observers again.
    """
    ctx = adapter.context
    ctx.policy = method.routing_policy("train")
    ctx.group_mask = method.group_mask(batch, "train")
    ctx.recording = True
    try:
        method.on_forward_start()
        outputs = model(**batch)
        terms = method.loss_terms(batch, outputs, step)
    finally:
        ctx.recording = False
    loss = outputs.loss + sum(terms.values()) if terms else outputs.loss
    return loss, terms, outputs


class TaskTrainer:
    """Trains the adapter on one task's samples (see module docstring).

    Args:
        model: the model with experts injected; adapter: its :class:`ExpertAdapter`; method: the plugin;
        collator: turns a list of samples into a batch dict; cfg: :class:`TrainingConfig`;
        accelerator: an ``accelerate.Accelerator`` (created with ``gradient_accumulation_steps=cfg.grad_accum``).
    """

    def __init__(self, model, adapter: ExpertAdapter, method: Method, collator, cfg: TrainingConfig, accelerator):
        self.model, self.adapter, self.method = model, adapter, method
        self.collator, self.cfg, self.acc = collator, cfg, accelerator
        self.samples: list = []

    # ------------------------------------------------------------------ data
    def _batches(self, samples: list, seed: int) -> list[list[int]]:
        global_bs = self.cfg.batch_size * self.acc.num_processes
        plan = plan_batches([approx_length(s) for s in samples], global_bs, self.cfg.epochs, seed, self.cfg.group_by_length)
        return [shard_batch(b, self.acc.process_index, self.acc.num_processes) for b in plan]

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def iter_batches(self, n: int, batch_size: int | None = None, seed: int = 0) -> Iterator[dict]:
        """Up to ``n`` collated batches of the current task's samples on the device (for Fisher estimates etc.)."""
        rng = random.Random(seed)
        order = list(range(len(self.samples)))
        rng.shuffle(order)
        bs = batch_size or self.cfg.batch_size
        for k in range(0, min(len(order), n * bs), bs):
            yield self._to_device(self.collator([self.samples[i] for i in order[k : k + bs]]))

    # ------------------------------------------------------------------ loop
    def train(
        self,
        task: TaskInfo,
        samples: list,
        *,
        seed: int,
        step_dir: Path | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> TrainResult:
        """Train on ``samples``; ``step_dir`` (if given) holds/receives mid-task step checkpoints.

        ``on_step(step, total)`` is called after every optimizer step (analyses evaluate mid-task with it; the
        model is in train mode again when it returns).
        """
        cfg, acc, model = self.cfg, self.acc, self.model
        self.samples = samples
        batches = self._batches(samples, seed)
        total = math.ceil(len(batches) / cfg.grad_accum)
        task.total_steps = total
        resuming = step_dir is not None and (step_dir / "trainer_state.json").is_file()
        if resuming:
            # the adapter first: loading replaces the Parameter objects the optimizer must be built on
            load_adapter_into(self.adapter, step_dir)
            self.method.load_state_dict(load_method_state(step_dir))
        params = self.adapter.trainable_parameters() + self.method.extra_parameters()
        if not params:
            raise DymoeError(f"method {self.method.name!r} left nothing trainable for task {task.name!r}")
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(
            "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule,
            optimizer,
            num_warmup_steps=int(math.ceil(cfg.warmup_ratio * total)),
            num_training_steps=max(total, 1),
        )
        wrapped, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
        start_micro = self._load_step(step_dir, optimizer, scheduler) if resuming else 0
        ctx = self.adapter.context
        wrapped.train()
        result = TrainResult()
        bar = tqdm(total=total, initial=start_micro // cfg.grad_accum, desc=f"train {task.name}",
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        t0, seen, loss_val = time.perf_counter(), 0, float("nan")
        step = start_micro // cfg.grad_accum
        for micro, idx in enumerate(batches):
            if micro < start_micro:
                continue
            batch = self._to_device(self.collator([samples[i] for i in idx]))
            with acc.accumulate(wrapped):
                loss, terms, _ = forward_loss(wrapped, self.adapter, self.method, batch, StepInfo(step, total))
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingDiverged(
                        f"loss became {loss.item()} on task {task.index + 1} ({task.name!r}) at step {step + 1}; "
                        "the last good checkpoint is kept. Try a lower training.lr or training.max_grad_norm."
                    )
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += len(idx) * acc.num_processes
            loss_val = loss.item()
            if acc.sync_gradients:
                step += 1
                bar.update(1)
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
                if step % cfg.log_every == 0 or step == total:
                    logs = {f"train/{task.name}/loss": loss_val, "train/lr": lr, "train/samples_per_s": rate}
                    logs.update({f"train/{task.name}/{k}": float(v.detach()) for k, v in terms.items()})
                    acc.log(logs, step=task.index * 1_000_000 + step)
                if step_dir is not None and cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < total:
                    self._save_step(step_dir, micro + 1, task, optimizer, scheduler)
                if on_step is not None:
                    on_step(step, total)
                    wrapped.train()
            result.loss_terms = {k: float(v.detach()) for k, v in terms.items()}
        bar.close()
        ctx.policy, ctx.group_mask, ctx.recording = None, None, False
        result.steps, result.samples, result.final_loss = step, seen, loss_val
        result.seconds = time.perf_counter() - t0
        result.truncated = getattr(self.collator, "num_truncated", 0)
        result.dropped = getattr(self.collator, "num_dropped", 0)
        acc.free_memory()  # drop the wrapped model / optimizer references held by accelerate
        return result

    # ------------------------------------------------------------------ step checkpoints
    def _save_step(self, step_dir: Path, micro_done: int, task: TaskInfo, optimizer, scheduler) -> None:
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
            "micro_steps_done": micro_done,
            "task_index": task.index,
            "task": task.name,
            "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict(),
        }
        save_adapter(self.adapter, step_dir, metadata={"partial": True, "task": task.name},
                     method_state=self.method.state_dict())
        # the adapter dir was just replaced atomically; add the trainer state files inside it, state last
        save_file(tensors, str(step_dir / "optimizer.safetensors.tmp"))
        (step_dir / "optimizer.safetensors.tmp").replace(step_dir / "optimizer.safetensors")
        tmp = step_dir / "trainer_state.json.tmp"
        tmp.write_text(json.dumps(state, default=_json_default))
        tmp.replace(step_dir / "trainer_state.json")

    def _load_step(self, step_dir: Path, optimizer, scheduler) -> int:
        state = json.loads((step_dir / "trainer_state.json").read_text())
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
        return int(state["micro_steps_done"])


def _json_default(obj):
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj)}")
