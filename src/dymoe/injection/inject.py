"""Model surgery: wrap target linears with :class:`MoELoRALinear` and manage the bank across all of them.

``inject`` knows nothing about continual learning: it freezes the model, swaps modules, and returns an
:class:`ExpertAdapter` through which methods grow, freeze, fold and prune groups in every wrapped layer at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn

from dymoe.errors import ConfigError
from dymoe.injection.targets import DEFAULT_TARGETS, find_target_linears
from dymoe.layers.context import RoutingContext
from dymoe.layers.functional import ROUTER_MODES
from dymoe.layers.moe_lora import FROZEN_NAMES, INIT_MODES, TRAINABLE_NAMES, MoELoRALinear


@dataclass
class AdapterConfig:
    """How experts are attached (defaults: LLaVA-DyMoE, dymoe.md §2 and §8).

    Attributes:
        targets: linear-module name suffixes, or ``re:<regex>`` on full names.
        scope: module path to search under; None = the language model (the vision tower is never wrapped).
        experts_per_group: experts added per expansion (per task): 16.
        expert_rank: rank of each expert: 4.
        alpha: LoRA alpha; scaling = alpha / bank_rank. Not stated in the paper: 128 (A6).
        bank_rank: divisor of alpha; None = experts_per_group × expert_rank (the per-task bank rank, 64).
        top_k: experts per token, over all present experts: 16.
        router: ``cosine`` (κ·cos, upstream DyMoE, A1), ``linear`` (CoIN MoELoRA) or ``none`` (IncLoRA/O-LoRA).
        temperature: routing softmax temperature: 0.01 for the cosine router; use 1.0 with ``linear``.
        cos_scale: κ of the cosine router: 1.0.
        dropout: LoRA dropout on the experts' input: 0.05 (A6).
        init: ``kaiming`` (PEFT/DyMoE) or ``normal`` (CoIN's N(0, 0.01)) for A; B starts at 0.
        param_dtype: ``float32`` keeps expert tensors in fp32 under a bf16/fp16 base (fp32 master weights with
            autocast, as PEFT does); ``base`` uses the base weights' dtype.
    """

    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    scope: str | None = None
    experts_per_group: int = 16
    expert_rank: int = 4
    alpha: float = 128.0
    bank_rank: int | None = None
    top_k: int = 16
    router: str = "cosine"
    temperature: float = 0.01
    cos_scale: float = 1.0
    dropout: float = 0.05
    init: str = "kaiming"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.param_dtype not in ("float32", "base"):
            raise ConfigError(f"adapter.param_dtype must be 'float32' or 'base', got {self.param_dtype!r}")
        if self.router not in ROUTER_MODES:
            raise ConfigError(f"adapter.router must be one of {list(ROUTER_MODES)}, got {self.router!r}")
        if self.init not in INIT_MODES:
            raise ConfigError(f"adapter.init must be one of {list(INIT_MODES)}, got {self.init!r}")
        for key in ("experts_per_group", "expert_rank", "top_k"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"adapter.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ConfigError(f"adapter.temperature must be > 0, got {self.temperature}")
        if not self.targets:
            raise ConfigError("adapter.targets must name at least one module")

    @property
    def effective_bank_rank(self) -> int:
        return int(self.bank_rank or self.experts_per_group * self.expert_rank)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)


class ExpertAdapter:
    """All wrapped layers of one model, with bank operations applied to each of them.

    Attributes:
        modules: ``{module name: MoELoRALinear}`` in model order.
        context: the :class:`RoutingContext` shared by every layer.
        config: the :class:`AdapterConfig` used to build them.
    """

    def __init__(self, model: nn.Module, modules: dict[str, MoELoRALinear], context: RoutingContext, config):
        self.model = model
        self.modules = modules
        self.context = context
        self.config = config

    # growth ----------------------------------------------------------------
    def add_group(
        self,
        group_id: int,
        *,
        num_experts: int | None = None,
        rank: int | None = None,
        modules: Iterable[str] | None = None,
        trainable: bool = True,
    ) -> None:
        """Add a group in every layer (or only in ``modules``: groups present in some layers, e.g. CMoE)."""
        names = list(self.modules) if modules is None else list(modules)
        for name in names:
            if name not in self.modules:
                raise KeyError(f"{name!r} is not a wrapped module")
            self.modules[name].add_group(
                group_id, num_experts or self.config.experts_per_group, rank or self.config.expert_rank, trainable=trainable
            )

    def fold(self) -> None:
        """Fold every layer's trainable group into its frozen bank (end of a task)."""
        for m in self.modules.values():
            m.fold()

    def prune(self, expert_ids: dict[str, list[int]]) -> None:
        """Remove experts by id, per module: ``{module name: [expert ids]}``."""
        for name, ids in expert_ids.items():
            self.modules[name].prune(ids)

    # parameters ------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trainable groups that are non-empty (what the optimizer gets)."""
        return [p for m in self.modules.values() for n in TRAINABLE_NAMES if (p := getattr(m, n)).numel() > 0]

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(module.name, tensor)`` for every adapter tensor, frozen and trainable (the checkpoint content)."""
        for mname, m in self.modules.items():
            for n in FROZEN_NAMES + TRAINABLE_NAMES:
                yield f"{mname}.{n}", getattr(m, n)

    def num_parameters(self, trainable_only: bool = False) -> int:
        if trainable_only:
            return sum(p.numel() for p in self.trainable_parameters())
        return sum(t.numel() for _, t in self.named_tensors())

    def groups(self) -> list[int]:
        """Every group id present in at least one layer, sorted."""
        return sorted({g for m in self.modules.values() for g in m.groups})

    def structure(self) -> dict[str, dict]:
        return {name: m.structure() for name, m in self.modules.items()}

    def __repr__(self) -> str:
        return (
            f"ExpertAdapter({len(self.modules)} layers, groups={self.groups()}, "
            f"params={self.num_parameters():,} (trainable {self.num_parameters(True):,}))"
        )


def _capture_attention_mask(context: RoutingContext):
    def hook(module, args, kwargs):
        am = kwargs.get("attention_mask")
        context.attention_mask = am if isinstance(am, torch.Tensor) and am.dim() == 2 else None

    return hook


def inject(model: nn.Module, config: AdapterConfig | None = None) -> ExpertAdapter:
    """Freeze ``model`` and wrap its target linears with empty expert banks (add groups afterwards).

    Works for ``LlavaForConditionalGeneration`` and plain causal LMs (Llama, Qwen2, ...): targets are searched under
    the language model, so the CLIP vision tower keeps its own ``q_proj``s untouched. A forward pre-hook on
    ``model`` stores each call's ``attention_mask`` ``[B, T]`` in the shared context (set before any layer runs, so
    it is also there when gradient checkpointing recomputes a layer).

    Returns:
        the :class:`ExpertAdapter` over the wrapped layers.
    """
    config = config or AdapterConfig()
    if getattr(model, "_dymoe_adapter", None) is not None:
        raise ValueError("this model already has dymoe experts injected")
    targets = find_target_linears(model, config.targets, config.scope)
    for p in model.parameters():
        p.requires_grad_(False)
    context = RoutingContext()
    modules: dict[str, MoELoRALinear] = {}
    for name, linear in targets.items():
        wrapped = MoELoRALinear(
            linear,
            alpha=config.alpha,
            bank_rank=config.effective_bank_rank,
            top_k=config.top_k,
            router=config.router,
            temperature=config.temperature,
            cos_scale=config.cos_scale,
            dropout=config.dropout,
            init=config.init,
            param_dtype=torch.float32 if config.param_dtype == "float32" else None,
            context=context,
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
        modules[name] = wrapped
    model.register_forward_pre_hook(_capture_attention_mask(context), with_kwargs=True)
    adapter = ExpertAdapter(model, modules, context, config)
    model._dymoe_adapter = adapter
    return adapter
