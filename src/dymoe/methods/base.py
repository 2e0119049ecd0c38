"""The method plugin interface: a handful of hooks the continual runner calls in order.

For each task the runner calls ``before_task`` → (per step: ``loss_terms``) → ``after_task``; it sets the routing
policy returned by ``routing_policy("train" | "eval")`` on the model's routing context, sums the loss terms a method
*returns* (each already weighted, logged by name) and saves ``state_dict()`` beside the adapter checkpoint. A method
never touches files, data loading or the optimizer; the math it needs lives in pure functions
(:mod:`dymoe.methods.penalties` and friends) so it is unit-tested without a training loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from dymoe.config import build_dataclass
from dymoe.errors import ConfigError

if TYPE_CHECKING:
    from dymoe.injection.inject import AdapterConfig, ExpertAdapter
    from dymoe.layers.context import RoutingPolicy


@dataclass
class TaskInfo:
    """What a method is told about the current task.

    Attributes:
        index: 0-based position in the sequence; ``name``: task name; ``num_tasks``: length of the sequence;
        ``train_samples``: the task's training samples (after replay mixing); ``total_steps``: optimizer steps.
    """

    index: int
    name: str
    num_tasks: int
    train_samples: list = dataclasses.field(default_factory=list)
    total_steps: int = 0


@dataclass
class StepInfo:
    """Where training is inside the current task: ``step`` (optimizer steps done), ``progress`` = step / total."""

    step: int
    total_steps: int

    @property
    def progress(self) -> float:
        return self.step / max(self.total_steps, 1)


@dataclass
class NoOptions:
    """A method without options."""


class Method:
    """Base class of continual-learning methods (see the module docstring for the call order).

    Subclasses set ``name`` and, if they take options, ``Options`` (a dataclass; fields documented in its docstring).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()
        self.adapter: ExpertAdapter | None = None
        self.model: torch.nn.Module | None = None

    @classmethod
    def from_config(cls, method_cfg: dict) -> Method:
        """Build from the config's ``method`` section (``name`` plus this method's options)."""
        opts = {k: v for k, v in method_cfg.items() if k != "name"}
        try:
            options = build_dataclass(cls.Options, opts, "method")
        except ConfigError as err:
            allowed = [f.name for f in dataclasses.fields(cls.Options)]
            raise ConfigError(f"{err} (method {cls.name!r} takes {allowed or 'no options'})") from None
        return cls(options)

    # ------------------------------------------------------------------ hooks
    def configure_adapter(self, config: AdapterConfig) -> AdapterConfig:
        """Adjust the adapter config before injection (e.g. LoRA: one expert, no router). Default: unchanged."""
        return config

    def setup(self, model: torch.nn.Module, adapter: ExpertAdapter) -> None:
        """Called once after injection (and after a checkpoint is loaded on resume)."""
        self.model, self.adapter = model, adapter

    def before_task(self, task: TaskInfo) -> None:
        """Grow / unfreeze what this task trains. Called before the optimizer is built."""

    def routing_policy(self, phase: str) -> RoutingPolicy | None:
        """Score adjustment for ``phase`` ``"train"`` or ``"eval"`` (TAG, analysis masks); None = plain routing."""
        return None

    def group_mask(self, batch: dict[str, torch.Tensor], phase: str) -> torch.Tensor | None:
        """Per-sample allowed groups ``[B, G]`` bool (task routers), or None."""
        return None

    def on_forward_start(self) -> None:
        """Called right before each training forward (reset per-forward buffers)."""

    def loss_terms(self, batch: dict[str, torch.Tensor], outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """Extra loss terms for this step, each already weighted; the runner adds their sum to the LM loss."""
        return {}

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        """End of a task, before the checkpoint is saved (fold groups, compute Fisher, prune, ...).

        ``trainer`` gives access to ``trainer.iter_batches(n)`` for methods that need a pass over training data.
        """

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters outside the adapter (rare)."""
        return []

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to keep across tasks (saved as safetensors beside the adapter)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"method {self.name!r} has no state but got keys {sorted(state)[:3]}")

    def describe(self) -> dict:
        """JSON-serialisable summary for run metadata."""
        return {"name": self.name, **dataclasses.asdict(self.options)}
