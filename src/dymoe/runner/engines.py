"""How one task's model and optimizer are wrapped for training: plain / DDP, or a DeepSpeed ZeRO engine.

Both go through ``accelerator.prepare`` (accelerate decides from the launch environment) and expose the same four
operations to the trainer, which owns gradient accumulation itself (every rank runs the same number of micro-steps
per optimizer step, see :mod:`dymoe.runner.trainer`):

- ``sync(last)``: the context of one micro-step; gradients are reduced across processes only on the last one (DDP
  ``no_sync`` before it; ZeRO-2 reduces partitions on every micro-step, that is DeepSpeed's design);
- ``backward(loss, last)``: no scaling is added (the trainer normalises the loss itself);
- ``step()``: clip, optimizer step, zero the gradients (set to None);
- ``close()``: drop every reference to the wrapper, the optimizer state and, for DeepSpeed, the engine (its
  gradient hooks removed with ``engine.destroy()``), so the next task builds a fresh one on the new Parameter
  objects without leaking the previous one.

The learning-rate schedule is *not* given to ``prepare``: accelerate's prepared scheduler steps once per process
on every optimizer step (with 4 processes warmup would end after a quarter of its steps). The trainer steps it
once per optimizer step, so the schedule is the same for any number of processes.

DeepSpeed: the micro-batch, accumulation and global batch are written into the plugin's config from the run
config (never ``auto``, never the accelerate YAML's numbers), ``gradient_clipping`` from
``training.max_grad_norm``. Mixed precision bf16 becomes DeepSpeed's ``torch_autocast`` (bf16 compute, parameters
keep their dtype): DeepSpeed's own ``bf16`` mode would cast the fp32 expert weights to bf16 in the model, so the
saved adapter would no longer be the fp32 master the non-DeepSpeed path trains and saves. fp16 is refused.
"""

from __future__ import annotations

import contextlib
import gc
import logging

import torch

from dymoe.errors import ConfigError

log = logging.getLogger(__name__)


def uses_deepspeed(accelerator) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).endswith("DEEPSPEED")


class PreparedTask:
    """The wrapped model and optimizer of one task (see the module docstring)."""

    def __init__(self, accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, params: list,
                 max_grad_norm: float, batching):
        self.acc, self.params, self.max_grad_norm = accelerator, params, max_grad_norm
        self.deepspeed = uses_deepspeed(accelerator)
        if self.deepspeed:
            configure_deepspeed(accelerator, model, batching, max_grad_norm)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self._no_sync = getattr(self.model, "no_sync", None) if not self.deepspeed else None

    def sync(self, last: bool):
        """Context of one micro-step: gradients are synchronised only when ``last``."""
        if last or self._no_sync is None:
            return contextlib.nullcontext()
        return self._no_sync()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        if self.deepspeed:
            engine = self.model
            engine.set_gradient_accumulation_boundary(last)
            engine.backward(loss, scale_wrt_gas=False)
            if not last:
                engine.step()  # advances DeepSpeed's micro-step counter; no update off the boundary
        else:
            self.acc.backward(loss)

    def step(self) -> None:
        """Clip (over all processes' synchronised gradients), update, and set every gradient to None."""
        if self.deepspeed:
            self.model.step()  # clips with gradient_clipping, updates, zeroes the partitioned gradients
        else:
            if self.max_grad_norm > 0:
                self.acc.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Release the wrapper, the optimizer state and (DeepSpeed) the engine and its hooks."""
        if self.deepspeed:
            self.model.destroy()
        for p in self.params:
            p.grad = None
        self.model = self.optimizer = self._no_sync = None
        self.acc.free_memory()  # drops accelerate's references (models, optimizers, DeepSpeed wrapper)
        gc.collect()


def configure_deepspeed(accelerator, model: torch.nn.Module, batching, max_grad_norm: float) -> dict:
    """Write the run's batch layout, clipping and precision into the DeepSpeed plugin's config; returns it."""
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": batching.per_device,
        "gradient_accumulation_steps": batching.grad_accum,
        "train_batch_size": batching.global_batch_size,
        "gradient_clipping": float(max_grad_norm),
    }
    for key, value in wanted.items():
        old = ds.get(key, "auto")
        if old not in ("auto", None) and old != value and not getattr(plugin, "_dymoe_configured", False):
            log.warning("DeepSpeed config %s=%s replaced by the run config's %s", key, old, value)
        ds[key] = value
    zero = ds.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        raise ConfigError("DeepSpeed ZeRO-3 is not supported (it partitions the frozen backbone the expert layers "
                          "wrap); use configs/accelerate/deepspeed_zero2.yaml")
    hidden = _hidden_size(model)
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if zero.get(key) == "auto":
            zero[key] = max(hidden * hidden, 1)
    if _enabled(ds.get("fp16")):
        raise ConfigError("DeepSpeed fp16 is not supported: it would cast the fp32 expert weights to fp16; "
                          "use mixed_precision bf16")
    if _enabled(ds.get("bf16")):
        # parameters keep their dtype (fp32 experts, the backbone as loaded); bf16 compute through autocast
        ds["bf16"] = {"enabled": False}
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    plugin._dymoe_configured = True
    # accelerate compares its own accumulation setting with DeepSpeed's; the trainer does not use accelerate's
    # (accelerator.backward is never called under DeepSpeed), so agreeing only silences the mismatch warning
    accelerator.gradient_accumulation_steps = batching.grad_accum
    return ds


def _enabled(section) -> bool:
    return isinstance(section, dict) and section.get("enabled") in (True, "auto", "true")


def _hidden_size(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return 1
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(text, "hidden_size", 0) or getattr(cfg, "hidden_size", 0) or 1)
