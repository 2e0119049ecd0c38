"""``incmoelora``: a new group of experts (and router rows) per task, older groups frozen, top-K over all experts.

The common ancestor of LLaVA-DyMoE (dymoe.md §3): DyMoE is this method plus TAG, RSR and the load-balancing loss.
"""

from __future__ import annotations

from dymoe.methods.base import Method, TaskInfo


class IncMoELoRA(Method):
    name = "incmoelora"

    def before_task(self, task: TaskInfo) -> None:
        # group id = task index: the expert-activation views map groups back to tasks with it
        self.adapter.add_group(task.index)

    def after_task(self, task: TaskInfo, trainer=None) -> None:
        self.adapter.fold()  # task-end fold: the new bank joins the frozen one (dymoe.md §3.4)
