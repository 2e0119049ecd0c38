"""Continual-learning methods as plugins (one file each), registered by name."""

from dymoe.methods.base import Method, StepInfo, TaskInfo
from dymoe.methods.incmoelora import IncMoELoRA
from dymoe.methods.lora import LoRA
from dymoe.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
METHODS.add(LoRA.name, LoRA)
METHODS.add(IncMoELoRA.name, IncMoELoRA)


def build_method(method_cfg: dict) -> Method:
    """The method named by ``method_cfg["name"]``, with its options validated."""
    return METHODS.get(method_cfg["name"]).from_config(method_cfg)


__all__ = ["METHODS", "Method", "StepInfo", "TaskInfo", "build_method"]
