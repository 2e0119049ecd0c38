"""Continual-learning methods as plugins, registered by name: one file per baseline, one package per system
(``dymoe/``, ``cmoe/``, ``dmole/``, ``smoe_dsal/``)."""

from dymoe.methods.base import Method, StepInfo, TaskInfo
from dymoe.methods.cmoe import CMoE
from dymoe.methods.dmole import DMoLE
from dymoe.methods.dymoe import DyMoE
from dymoe.methods.ewc import EWC
from dymoe.methods.inclora import IncLoRA
from dymoe.methods.incmoelora import IncMoELoRA
from dymoe.methods.lora import LoRA
from dymoe.methods.lwf import LwF
from dymoe.methods.moelora import MoELoRA
from dymoe.methods.olora import OLoRA
from dymoe.methods.smoe_dsal import SMoEDSAL
from dymoe.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
METHODS.add(LoRA.name, LoRA)
METHODS.add(IncMoELoRA.name, IncMoELoRA)
METHODS.add(MoELoRA.name, MoELoRA)
METHODS.add(EWC.name, EWC)
METHODS.add(LwF.name, LwF)
METHODS.add(IncLoRA.name, IncLoRA)
METHODS.add(OLoRA.name, OLoRA)
METHODS.add(DyMoE.name, DyMoE)
METHODS.add(CMoE.name, CMoE)
METHODS.add(DMoLE.name, DMoLE)
METHODS.add(SMoEDSAL.name, SMoEDSAL)


def build_method(method_cfg: dict) -> Method:
    """The method named by ``method_cfg["name"]``, with its options validated."""
    return METHODS.get(method_cfg["name"]).from_config(method_cfg)


__all__ = ["METHODS", "Method", "StepInfo", "TaskInfo", "build_method"]
