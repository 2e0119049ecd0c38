"""Backbones: load Hugging Face VLMs / causal LMs from disk (:mod:`.llava`), per-family batching rules
(:mod:`.families`), what some processors need (:mod:`.vision_deps`), tiny offline models (:mod:`.tiny` for LLaVA,
:mod:`.tiny_families` for 13 other families) and the instruction-untuned LLaVA-1.5 base (:mod:`.build_base`).

Importing this package does not import transformers; the functions import it when called.
"""

from __future__ import annotations

from dymoe.models.llava import (
    image_background_color,
    image_token_id,
    is_multimodal_config,
    language_model_prefix,
    load_backbone,
    num_image_tokens,
)
from dymoe.models.tiny import PRESETS, make_tiny_causal_lm, make_tiny_llava, preset_config

__all__ = [
    "PRESETS",
    "image_background_color",
    "image_token_id",
    "is_multimodal_config",
    "language_model_prefix",
    "load_backbone",
    "make_tiny_causal_lm",
    "make_tiny_llava",
    "num_image_tokens",
    "preset_config",
]
