"""LLaVA-DyMoE (dymoe.md): the plugin (``method``), its math as pure functions (``functional``: TAG, RSR, load
balancing), the routing statistics it collects (``stats``) and the task-router extension (``task_router``)."""

from dymoe.methods.dymoe.method import DyMoE, DyMoEOptions

__all__ = ["DyMoE", "DyMoEOptions"]
