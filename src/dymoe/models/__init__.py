"""Backbones: load any Hugging Face VLM / causal LM from disk (:mod:`.llava`) and build tiny offline ones (:mod:`.tiny`).

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
