"""``moelora``: CoIN's MoELoRA, a fixed mixture of LoRA experts with a dense softmax router (coin-protocol.md §7.2).

One group of ``num_experts`` experts is added on the first task and trained through every task (never folded):
router ``linear`` (bias-free ``nn.Linear(d_in, E)``), temperature 1, ``top_k = E`` (dense token-level softmax, no
load-balancing loss), A ~ N(0, 0.01) and B = 0 as CoIN. CoIN splits its total rank evenly over the experts
(r = 128, E = 8 → rank 16 each) with ``scaling = alpha / r_total``; here the total defaults to the budget of one
DyMoE task (16 × 4 = 64 → 8 experts × rank 8) so every baseline trains the same LoRA budget per task; CoIN's own
setting (``total_rank=128``, ``projector_lr=2e-5``) is the ``--budget paper`` row of ``dymoe reproduce main-table``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dymoe.errors import ConfigError
from dymoe.methods.base import Method, TaskInfo
from dymoe.methods.projector import check_projector_lr

if TYPE_CHECKING:
    from dymoe.injection.config import AdapterConfig


@dataclass
class MoELoRAOptions:
    """Attributes:
    num_experts: E, the fixed number of experts: 8 (CoIN ``--expert_num 8``).
    total_rank: rank summed over the experts, split evenly (must be divisible by E); None = adapter.experts_per_group
        × adapter.expert_rank (64 with the defaults → rank 8 per expert). CoIN: 128 (8 experts × rank 16).
    projector_lr: train the projector too, at this learning rate (CoIN: 2e-5); None = frozen.
    """

    num_experts: int = 8
    total_rank: int | None = None
    projector_lr: float | None = None

    def __post_init__(self):
        if int(self.num_experts) < 1:
            raise ConfigError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.total_rank is not None and int(self.total_rank) < 1:
            raise ConfigError(f"total_rank must be >= 1 or null, got {self.total_rank}")
        check_projector_lr(self.projector_lr)


class MoELoRA(Method):
    """A fixed dense mixture of ``num_experts`` LoRA experts (group 0) trained through all tasks."""

    name = "moelora"
    Options = MoELoRAOptions

    def configure_adapter(self, config: AdapterConfig) -> AdapterConfig:
        n = int(self.options.num_experts)
        total = int(self.options.total_rank or config.experts_per_group * config.expert_rank)
        if total % n:
            raise ConfigError(
                f"method.total_rank {total} must be divisible by method.num_experts {n} (CoIN splits the rank evenly)"
            )
        self.total_rank, self.expert_rank = total, total // n
        return dataclasses.replace(
            config, experts_per_group=n, expert_rank=total // n, bank_rank=total, router="linear", temperature=1.0,
            top_k=n, init="normal",
        )

    def before_task(self, task: TaskInfo) -> None:
        if not self.adapter.groups():
            self.adapter.add_group(0)  # the same group keeps training on every later task

    def describe(self) -> dict:
        total = getattr(self, "total_rank", self.options.total_rank or "experts_per_group × expert_rank")
        return {
            **super().describe(),
            "budget": f"the same parameters on every task: {self.options.num_experts} experts of rank "
            f"total_rank / num_experts (total_rank = {total}) plus {self.options.num_experts} router rows per module, "
            "i.e. total_rank·(d_in + d_out) + num_experts·d_in per module; no growth",
        }
