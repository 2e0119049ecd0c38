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

**Per-batch routing** (:meth:`Method.batch_routing`): called for every batch the model sees in training, evaluation
and the planning phase, with a :class:`BatchInfo` (the phase, the task, the evaluation set and variant, the batch's
sample indices); it returns the routing inputs to set on the model's routing context for that batch (any attribute
of :class:`~dymoe.layers.context.RoutingContext`: ``group_mask``, and with the layer protocol ``router_ids``,
``selector``, ``bypass`` ...) and, for a method with a task locator, the task it predicted per sample
(``"predicted_task"``), from which the runner reports the locator's accuracy and confusion matrix.

**Evaluation variants** (:attr:`Method.evaluation_variants`): extra evaluations after each task with another
routing (CMoE's "Immediate" with the oracle router); each has its own matrix. ``BatchInfo.variant`` says which one a
batch belongs to (``""`` = the main evaluation).

**Planning phase** (:meth:`Method.plan`): before a task's training, with the task's data, through a
:class:`~dymoe.runner.planning.Planner` (training with its own parameters and learning rate, passes over the data,
feature passes); what it decided is :meth:`Method.plan_state`, saved and loaded instead of re-planned on resume.

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
from dymoe.methods.projector import TrainableProjector

if TYPE_CHECKING:
    from dymoe.injection.adapter import ExpertAdapter
    from dymoe.injection.config import AdapterConfig
    from dymoe.layers.context import RoutingPolicy


def adapter_trainable_tensors(adapter: ExpertAdapter) -> dict[str, torch.nn.Parameter]:
    """The adapter's non-empty trainable tensors by their parameter name in the model (``<module>.lora_A`` ...)."""
    return {k: p for k, p in adapter.named_tensors() if p.numel() > 0 and p.requires_grad}


@dataclass
class TaskInfo:
    """What a method is told about the current task.

    Attributes:
        index: 0-based position in the sequence; ``name``: task name; ``num_tasks``: length of the sequence;
        ``train_samples``: the task's training samples (after replay mixing); ``total_steps``: optimizer steps;
        ``epochs``: the task's epochs (its own ``epochs`` in the benchmark, else ``training.epochs``; set by the
        runner before the planning phase, None outside a run).
    """

    index: int
    name: str
    num_tasks: int
    train_samples: list = dataclasses.field(default_factory=list)
    total_steps: int = 0
    epochs: float | None = None


#: the key of :meth:`Method.batch_routing`'s result that holds the locator's predicted task per sample
PREDICTED_TASK = "predicted_task"
PHASES = ("train", "eval", "plan", "features")


@dataclass
class BatchInfo:
    """What the runner tells a method about one batch (:meth:`Method.batch_routing`).

    Attributes:
        phase: ``"train"`` (a task's training), ``"eval"`` (generation on a test set), ``"plan"`` (the planning
            phase's training / passes) or ``"features"`` (a feature pass).
        task_index, task: training / planning: the task being learned; evaluation: the task whose test set this
            batch comes from (the true task, which an oracle router uses and a locator is scored against).
        indices: ``[B]`` each row's sample index: into the task's training samples (replay included,
            ``TaskInfo.train_samples``) for ``train`` / ``plan`` / ``features``, into the evaluation set's samples
            for ``eval``. Samples the collator dropped are not in the batch, so the rows stay aligned.
        image_sample: ``[N_img]`` the batch row each image belongs to.
        eval_set: the evaluation set's name (``"eval"`` only), e.g. ``"ChartQA"``; CoIN tasks: the task name.
        variant: the evaluation variant (``""`` = the main evaluation; see :attr:`Method.evaluation_variants`).
        stage: evaluation: the number of tasks trained so far (row ``stage`` of the matrix); else the 0-based index
            of the task being learned.
    """

    phase: str
    task_index: int
    task: str
    indices: list[int] = dataclasses.field(default_factory=list)
    image_sample: list[int] = dataclasses.field(default_factory=list)
    eval_set: str | None = None
    variant: str = ""
    stage: int = 0


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
    #: extra evaluation variants, each with its own matrix (``BatchInfo.variant``); the main evaluation is ``""``
    evaluation_variants: ClassVar[tuple[str, ...]] = ()
    #: the variant whose diagonal is "Immediate" in the ``cmoe`` metric definition (CMoE: the oracle router)
    immediate_variant: ClassVar[str | None] = None
    #: the name of this method's task locator in ``metrics.json`` / the report (when it predicts tasks)
    locator_name: ClassVar[str] = "task_locator"

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()
        self.adapter: ExpertAdapter | None = None
        self.model: torch.nn.Module | None = None
        # modules this method owns outside the expert layers (see the module docstring); attached to the model
        self.owned_modules = torch.nn.ModuleDict()
        # the vision-language projector, when the method's ``projector_lr`` trains it (dymoe.methods.projector)
        self.projector: TrainableProjector | None = None

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
        """Called once after injection (and after a checkpoint is loaded on resume).

        Unfreezes the projector when the options set ``projector_lr`` (see :mod:`dymoe.methods.projector`).
        """
        self.model, self.adapter = model, adapter
        lr = getattr(self.options, "projector_lr", None)
        if lr is not None and self.projector is None:
            # an owned module: trained, saved as module.projector.* with the method state, restored on resume
            self.projector = TrainableProjector(model, lr)
            self.register_module("projector", self.projector.module)

    def before_task(self, task: TaskInfo) -> None:
        """Grow / unfreeze what this task trains. Called before the optimizer is built."""

    def routing_policy(self, phase: str) -> RoutingPolicy | None:
        """Score adjustment for ``phase`` ``"train"`` or ``"eval"`` (TAG, analysis masks); None = plain routing."""
        return None

    def group_mask(self, batch: dict[str, torch.Tensor], phase: str) -> torch.Tensor | None:
        """Per-sample allowed groups ``[B, G]`` bool (task routers), or None."""
        return None

    def batch_routing(self, batch: dict[str, torch.Tensor], info: BatchInfo) -> dict[str, Any] | None:
        """Routing inputs for this batch: ``{context attribute: value}`` set on the routing context before the
        forward (``group_mask`` ``[B, G]``, ``router_ids`` ``[B]`` ...) and restored after it, plus optionally
        ``"predicted_task"`` ``[B]`` long (the locator's task per sample, scored by the runner against
        ``info.task_index`` in evaluation). ``batch`` holds the model inputs (on the device). Default: None (the
        legacy :meth:`routing_policy` / :meth:`group_mask` hooks are applied before this one either way)."""
        return None

    def plan(self, task: TaskInfo, planner: Any) -> None:
        """The planning phase before ``task``'s training (before :meth:`before_task`), with the task's data through
        ``planner`` (:class:`dymoe.runner.planning.Planner`: ``train``, ``batches``, ``features``). What it decides
        must be in :meth:`plan_state` (loaded instead of re-planned on resume). Default: no planning phase."""

    @property
    def plans(self) -> bool:
        """Whether this method has a planning phase (it overrides :meth:`plan`)."""
        return type(self).plan is not Method.plan

    def initial_data(self) -> dict | None:
        """The data set of an **initial phase** before task 1 (:meth:`initial_phase`; CMoE's initial experts,
        cmoe.md A1), or None (no initial phase, the default): ``{"train": <path, or a list of training files as
        a benchmark task's "train" entry>, "image_root": <folder>}``; relative paths are resolved against the
        benchmark's data root."""
        return None

    def initial_phase(self, task: TaskInfo, planner: Any) -> None:
        """Train what must exist before task 1 on :meth:`initial_data` (called once, before task 1's planning
        phase). ``planner`` is a :class:`dymoe.runner.planning.Planner` over the initial samples (``task``:
        ``TaskInfo(index=0, name="initial")``); the outcome is :meth:`initial_state`, saved in
        ``checkpoints/initial.plan/`` and loaded by :meth:`load_initial_state` on resume."""
        raise NotImplementedError(f"method {self.name!r} names initial data but has no initial phase")

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The initial phase's outcome (tensors). Default: empty."""
        return {}

    def load_initial_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`initial_state` returned (a resumed run does not train the initial phase again)."""
        if state:
            raise ValueError(f"method {self.name!r} has no initial state but got keys {sorted(state)[:3]}")

    def plan_state(self) -> dict[str, torch.Tensor]:
        """The planning phase's outcome (tensors), saved after :meth:`plan` and given to :meth:`load_plan_state`
        on resume instead of planning again. Default: empty."""
        return {}

    def load_plan_state(self, state: dict[str, torch.Tensor], task: TaskInfo) -> None:
        """Restore what :meth:`plan_state` returned for ``task`` (a resumed run does not plan again)."""
        if state:
            raise ValueError(f"method {self.name!r} has no plan state but got keys {sorted(state)[:3]}")

    def on_forward_start(self) -> None:
        """Called right before each training forward (reset per-forward buffers)."""

    def loss_terms(self, batch: dict[str, torch.Tensor], outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """Extra loss terms for this step, each already weighted; the runner adds their sum to the LM loss.

        Base: ``projector_idle`` = 0 · Σ projector weights on a batch without images while the projector is
        trained, so that it takes part in every step's loss as DDP requires (subclasses merge this in)."""
        if self.projector is None or batch.get("pixel_values") is not None:
            return {}
        return {"projector_idle": sum(p.sum() for p in self.projector.parameters()) * 0.0}

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        """End of a task, before the checkpoint is saved (fold groups, compute Fisher, prune, ...).

        ``trainer`` gives access to ``trainer.iter_batches(n)`` for methods that need a pass over training data.
        """

    def begin_evaluation(self, index: int, name: str) -> None:
        """The evaluation batches that follow (``group_mask(batch, "eval")``) come from task ``index``'s test set."""

    def evaluation_metrics(self) -> dict:
        """JSON-serialisable measurements the method took during the evaluation since the last call (e.g. a task
        router's accuracy), stored per row in ``metrics.json``; called on every process. Default: none."""
        return {}

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

    def lr_groups(self) -> list[tuple[str, list[torch.nn.Parameter], float]]:
        """``(name, parameters, lr)``: parameters (among :meth:`extra_parameters`) that get their own learning
        rate in an optimizer parameter group of their own (the schedule scales it like the main one)."""
        if self.projector is None:
            return []
        return [("projector", self.projector.parameters(), self.projector.lr)]

    def trainable_tensors(self) -> dict[str, torch.nn.Parameter]:
        """Every tensor this method trains, by its parameter name in the model: the adapter's non-empty trainable
        tensors (``<module>.lora_A`` ...) and the projector's (EWC's Fisher and LwF's teacher cover all of them)."""
        out = adapter_trainable_tensors(self.adapter)
        if self.projector is not None:
            out.update(self.projector.named_parameters())
        return out

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
