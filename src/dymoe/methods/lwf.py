"""``lwf``: LoRA + Learning without Forgetting on the LLM's outputs (coin-protocol.md §7.6).

``L = CE + λ · T² · KL(softmax(z_old/T) ‖ softmax(z/T))`` averaged over the answer tokens of the *current* task's
batch, with the teacher ``z_old`` = the model as it was before the current task; λ = 1, T = 2 (Avalanche's LwF
defaults, also used by public LLaVA LwF scripts). Zero on the first task.

The teacher shares the frozen base: at ``before_task`` the adapter's trainable tensors are snapshotted (a copy of
the LoRA only, no second model), and each step runs one extra no-grad forward with the snapshot swapped in through
:func:`torch.func.functional_call` (swap in, forward, swap back), in eval mode and with routing recording off so
observers never see the teacher.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.func import functional_call

from dymoe.errors import ConfigError
from dymoe.methods.base import StepInfo, TaskInfo
from dymoe.methods.base import adapter_trainable_tensors as trainable_tensors  # noqa: F401  (tests, analyses)
from dymoe.methods.lora import LoRA, LoRAOptions
from dymoe.methods.penalties import distillation_kl

if TYPE_CHECKING:
    from dymoe.layers.context import RoutingContext


@dataclass
class LwFOptions(LoRAOptions):
    """Attributes:
    rank, projector_lr: as ``lora``.
    lam: λ, weight of the distillation term: 1.0.
    temperature: T of the softened distributions: 2.0 (the loss carries T² so its gradient scale does not depend on T).
    """

    lam: float = 1.0
    temperature: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        if float(self.lam) < 0:
            raise ConfigError(f"lam must be >= 0, got {self.lam}")
        if float(self.temperature) <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


@contextlib.contextmanager
def side_forward(model: torch.nn.Module, context: RoutingContext) -> Iterator[None]:
    """A forward that is not training: every module in eval mode (no dropout, no gradient checkpointing) and
    routing recording off. Each module's mode and the whole routing context (inputs, recording flag, per-forward
    state) are restored afterwards. Callers pass ``use_cache=False`` to the model: a KV cache would only cost memory
    here."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with context.isolated():
            context.recording = False
            yield
    finally:
        for m, mode in modes:
            m.training = mode


class LwF(LoRA):
    """LoRA distilled towards its own pre-task snapshot (loss term ``lwf``)."""

    name = "lwf"
    Options = LwFOptions

    def __init__(self, options: LwFOptions | None = None):
        super().__init__(options)
        self.teacher: dict[str, torch.Tensor] | None = None

    def before_task(self, task: TaskInfo) -> None:
        super().before_task(task)
        if task.index == 0:
            self.teacher = None
            return
        # the adapter's trainable tensors (and the projector's, when trained): the model as it was before the task
        self.teacher = {k: p.detach().clone() for k, p in self.trainable_tensors().items()}

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, T, V]`` of the model with the pre-task adapter swapped in (no grad, eval mode)."""
        params = self.trainable_tensors()
        # a teacher restored from a checkpoint lies on the CPU: move it once, beside the weights it replaces
        self.teacher = {k: v.to(params[k].device, params[k].dtype) for k, v in self.teacher.items()}
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # the teacher's own LM loss is not needed
        with side_forward(self.model, self.adapter.context):
            # tie_weights=False: a trained projector is also reachable as the method's owned module (model.dymoe_method);
            # with tie handling, torch.func restored that alias to the teacher's tensor after the call
            out = functional_call(self.model, self.teacher, args=(), kwargs={**inputs, "use_cache": False}, strict=False,
                                  tie_weights=False)
        return out.logits

    def loss_terms(self, batch: dict[str, torch.Tensor], outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        base = super().loss_terms(batch, outputs, step)
        if self.teacher is None or self.options.lam == 0:
            return {**base, "lwf": outputs.logits.new_zeros((), dtype=torch.float32)}
        z_old = self.teacher_logits(batch)
        kl = distillation_kl(outputs.logits, z_old, batch["labels"], self.options.temperature)
        return {**base, "lwf": self.options.lam * kl}

    def state_dict(self) -> dict[str, torch.Tensor]:
        # the teacher cannot be rebuilt from mid-task weights, so a resumed task needs it
        return {f"teacher.{k}": v for k, v in (self.teacher or {}).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        bad = [k for k in state if not k.startswith("teacher.")]
        if bad:
            raise ValueError(f"method 'lwf' got unexpected state keys {bad[:3]}")
        self.teacher = {k.removeprefix("teacher."): v for k, v in state.items()} or None

    def describe(self) -> dict:
        return {
            **super().describe(),
            "budget": "the same LoRA as 'lora' (rank r·(d_in + d_out) per module, trained through all tasks); "
            "the teacher is a frozen copy of these tensors (no extra trainable parameters, one extra forward/step)",
        }
