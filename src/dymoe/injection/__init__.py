"""Attaching experts to Hugging Face models: sites and target selection, surgery, the adapter over every expert
layer, parameter accounting, and safetensors checkpoints."""

from dymoe.injection.accounting import ActiveExpertMeter, parameter_report
from dymoe.injection.adapter import AdapterSnapshot, ExpertAdapter
from dymoe.injection.config import AdapterConfig, SiteConfig
from dymoe.injection.inject import inject
from dymoe.injection.state import load_adapter, load_adapter_into, save_adapter
from dymoe.injection.targets import (
    DEFAULT_TARGETS,
    find_target_linears,
    language_model_prefix,
    language_model_scope,
    vision_tower_scope,
)

__all__ = [
    "DEFAULT_TARGETS",
    "ActiveExpertMeter",
    "AdapterConfig",
    "AdapterSnapshot",
    "ExpertAdapter",
    "SiteConfig",
    "find_target_linears",
    "inject",
    "language_model_prefix",
    "language_model_scope",
    "load_adapter",
    "load_adapter_into",
    "parameter_report",
    "save_adapter",
    "vision_tower_scope",
]
