"""``inclora``: a new LoRA per task, earlier ones frozen, outputs summed (coin-protocol.md §7.3).

On the shared expert layer: each task adds a group of **one** expert of rank ``r`` (router ``none``: every present
expert has weight 1, so the output is ``W0 x + s Σ_t B_t A_t x``); the group is folded into the frozen bank at the
end of its task and never trained again. This is MCITlib's O-LoRA architecture with λ = 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dymoe.errors import ConfigError
from dymoe.methods.base import Method, TaskInfo
from dymoe.methods.projector import check_projector_lr

if TYPE_CHECKING:
    from dymoe.injection.config import AdapterConfig


@dataclass
class IncLoRAOptions:
    """Attributes:
    rank: rank of each task's LoRA; None = the budget of one DyMoE task (adapter.experts_per_group ×
        adapter.expert_rank = 16 × 4 = 64 with the defaults), so every task trains as many LoRA parameters as
        IncMoELoRA's / DyMoE's new group.
    projector_lr: train the projector too, at this learning rate; None = frozen (Prism's CoIN default).
    """

    rank: int | None = None
    projector_lr: float | None = None

    def __post_init__(self):
        if self.rank is not None and int(self.rank) < 1:
            raise ConfigError(f"rank must be >= 1 or null, got {self.rank}")
        check_projector_lr(self.projector_lr)


def resolve_rank(rank: int | None, config: AdapterConfig) -> int:
    """The per-task LoRA rank: ``rank`` or, if None, ``experts_per_group × expert_rank`` of the adapter config."""
    return int(rank or config.experts_per_group * config.expert_rank)


class IncLoRA(Method):
    """A fresh rank-``r`` LoRA per task (group id = task index), folded (frozen) at the task's end."""

    name = "inclora"
    Options = IncLoRAOptions

    def configure_adapter(self, config: AdapterConfig) -> AdapterConfig:
        self.rank = resolve_rank(self.options.rank, config)
        # router "none": every LoRA present gets weight 1 (top_k does not apply); scaling alpha / r per LoRA
        return dataclasses.replace(config, experts_per_group=1, expert_rank=self.rank, bank_rank=self.rank, router="none")

    def before_task(self, task: TaskInfo) -> None:
        self.adapter.add_group(task.index)

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        self.adapter.fold()  # the task's LoRA joins the frozen bank, bit-identical from now on

    def describe(self) -> dict:
        return {
            **super().describe(),
            "budget": "per task: a new LoRA of rank r on every target module, r·(d_in + d_out) parameters per module "
            "(router 'none' has no router rows); earlier tasks' LoRAs frozen; r = "
            f"{getattr(self, 'rank', self.options.rank or 'experts_per_group × expert_rank')}",
        }
