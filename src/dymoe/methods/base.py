"""The method plugin interface: a handful of hooks the continual runner calls in order.

For each task the runner calls ``before_task`` → (per step: ``loss_terms``) → ``after_task``; it sets the routing
policy returned by ``routing_policy("train" | "eval")`` on the model's routing context, sums the loss terms a method
*returns* (each already weighted, logged by name) and saves ``state_dict()`` beside the adapter checkpoint. A method
never touches files, data loading or the optimizer; the math it needs lives in pure functions
(:mod:`dymoe.methods.penalties` and friends) so it is unit-tested without a training loop.

**Modules a method owns** (a task locator, a VAE or autoencoder per task, a projector) are registered with
:meth:`Method.register_module` instead of being kept in plain attributes. They live in one ``nn.ModuleDict``
that the runner attaches to the model (``model.dymoe_method``, see :func:`attach_method_modules`), so that

- ``model.to(device)`` moves them, and a module registered later is moved to the model's device on registration;
- DDP and DeepSpeed ZeRO wrap the model *with* them: their gradients are synchronised across processes like the
  adapter's (a trainable registered module must then take part in every training step's loss, as DDP expects);
- their trainable parameters go to the optimizer (:meth:`Method.trainable_parameters`), and ``.grad`` is cleared
  at task ends like the adapter's;
- their tensors are saved with the method state (keys ``module.<name>.<tensor>``) and restored on resume
  (:meth:`Method.checkpoint_state` / :meth:`Method.load_checkpoint_state`).

Registration must happen before the optimizer of a task is built (``setup``, ``before_task`` or, when resuming,
``load_state_dict``, which receives the method's own tensors *before* the module tensors are loaded, so a method
whose modules depend on the task count re-registers them there). Freeze a module that a task does not train
(``requires_grad_(False)``) instead of leaving it out of the loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from dymoe.config import build_dataclass
from dymoe.errors import ConfigError

if TYPE_CHECKING:
    from dymoe.injection.adapter import ExpertAdapter
    from dymoe.injection.config import AdapterConfig
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
        # modules this method owns outside the expert layers (see the module docstring); attached to the model
        self.owned_modules = torch.nn.ModuleDict()

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

    # ------------------------------------------------------------------ owned modules
    def register_module(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        """Own ``module`` under ``name`` (replacing a module of that name); returns it.

        It is moved to the device of the model's parameters (if the method is set up); its dtype is kept.
        """
        if not name.isidentifier():
            raise ValueError(f"module name must be a Python identifier, got {name!r}")
        device = _model_device(self.model)
        if device is not None:
            module = module.to(device)
        self.owned_modules[name] = module
        return module

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters outside the adapter: those of the registered modules (see the module docstring)."""
        return [p for p in self.owned_modules.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to keep across tasks (saved as safetensors beside the adapter); registered modules' tensors are
        added by :meth:`checkpoint_state`, not here."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"method {self.name!r} has no state but got keys {sorted(state)[:3]}")

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Everything the runner saves: :meth:`state_dict` plus ``module.<name>.<tensor>`` of the registered modules."""
        state = dict(self.state_dict())
        for key, value in self.owned_modules.state_dict().items():
            state[f"{MODULE_PREFIX}{key}"] = value
        return state

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`checkpoint_state`: the method's own tensors first (it may re-register modules there), then
        the registered modules' tensors (strict: every registered tensor must be present, nothing else)."""
        own = {k: v for k, v in state.items() if not k.startswith(MODULE_PREFIX)}
        mods = {k.removeprefix(MODULE_PREFIX): v for k, v in state.items() if k.startswith(MODULE_PREFIX)}
        self.load_state_dict(own)
        if mods or len(self.owned_modules):
            try:
                self.owned_modules.load_state_dict(mods, strict=True)
            except RuntimeError as err:
                raise ValueError(f"method {self.name!r}: saved module tensors do not match its modules ({err})") from None

    def describe(self) -> dict:
        """JSON-serialisable summary for run metadata."""
        return {"name": self.name, **dataclasses.asdict(self.options)}


MODULE_PREFIX = "module."
#: attribute of the model that holds the method's registered modules
METHOD_MODULES_ATTR = "dymoe_method"


def _model_device(model: torch.nn.Module | None) -> torch.device | None:
    if model is None:
        return None
    p = next(model.parameters(), None)
    return None if p is None else p.device


def attach_method_modules(model: torch.nn.Module, method: Method) -> None:
    """Make ``method``'s registered modules a submodule of ``model`` (``model.dymoe_method``): one ModuleDict, so
    modules registered later appear in the model too. Call before the model is moved and wrapped."""
    current = getattr(model, METHOD_MODULES_ATTR, None)
    if current is method.owned_modules:
        return
    if current is not None:
        raise ValueError(f"the model already holds modules of another method under {METHOD_MODULES_ATTR!r}")
    model.add_module(METHOD_MODULES_ATTR, method.owned_modules)
