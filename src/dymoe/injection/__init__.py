"""Attaching experts to Hugging Face models: target selection, surgery, and safetensors checkpoints."""

from dymoe.injection.inject import AdapterConfig, ExpertAdapter, inject
from dymoe.injection.state import load_adapter, load_adapter_into, save_adapter
from dymoe.injection.targets import (
    DEFAULT_TARGETS,
    find_target_linears,
    language_model_prefix,
    language_model_scope,
)

__all__ = [
    "DEFAULT_TARGETS",
    "AdapterConfig",
    "ExpertAdapter",
    "find_target_linears",
    "inject",
    "language_model_prefix",
    "language_model_scope",
    "load_adapter",
    "load_adapter_into",
    "save_adapter",
]
