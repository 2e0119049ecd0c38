"""``lora``: one LoRA trained through all tasks (CoIN's sequential LoRA, coin-protocol.md §7.1).

Expressed on the shared expert layer as a single group of one expert with router ``none`` (weight 1), never
folded: the same adapter keeps training on every task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dymoe.errors import ConfigError
from dymoe.methods.base import Method, TaskInfo
from dymoe.methods.projector import check_projector_lr


@dataclass
class LoRAOptions:
    """Attributes:
    rank: LoRA rank; None = the budget of one task's experts (adapter.experts_per_group × adapter.expert_rank,
        64 with the DyMoE defaults), so LoRA trains as many parameters per task as IncMoELoRA's new group.
        CoIN's own setting is 128 (``dymoe reproduce main-table --budget paper``).
    projector_lr: train the vision-language projector too, at this learning rate (CoIN: 2e-5,
        ``--mm_projector_lr``); None = frozen (:mod:`dymoe.methods.projector`).
    merge_after_task: D-MoLE's Seq-FT baseline (dmole.md §11, the official code's ``merge_and_unload``): after
        each task the LoRA is merged into the base and a fresh LoRA (B = 0, a new A) is trained on the next task.
        The merge is kept as a frozen group (router ``none`` sums it with weight 1: ``W0 + s·B_1 A_1 + ...``, the
        merged weight exactly, while the base stays the pretrained checkpoint and the adapter checkpoint holds
        everything a resume needs); ``dymoe export --format merged`` writes the physically merged weights. False =
        one LoRA trained through all tasks (CoIN's sequential LoRA).
    """

    rank: int | None = None
    projector_lr: float | None = None
    merge_after_task: bool = False

    def __post_init__(self):
        if self.rank is not None and int(self.rank) < 1:
            raise ConfigError(f"rank must be >= 1 or null, got {self.rank}")
        check_projector_lr(self.projector_lr)


class LoRA(Method):
    name = "lora"
    Options = LoRAOptions

    def configure_adapter(self, config):
        rank = self.options.rank or config.experts_per_group * config.expert_rank
        return dataclasses.replace(config, experts_per_group=1, expert_rank=rank, bank_rank=rank, router="none", top_k=1)

    def before_task(self, task: TaskInfo) -> None:
        if self.options.merge_after_task:
            if task.index not in self.adapter.groups():
                self.adapter.add_group(task.index)  # a fresh LoRA on top of the merged ones
        elif not self.adapter.groups():
            self.adapter.add_group(0)

    def after_task(self, task: TaskInfo, trainer=None) -> None:
        if self.options.merge_after_task:
            self.adapter.fold()  # merged: frozen, summed with weight 1 into every later forward
