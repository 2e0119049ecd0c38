"""Load a Hugging Face vision-language model (14 families tested) or plain causal LM from disk, plus backbone facts.

:func:`load_backbone` returns ``(model, processor)``: ``AutoModelForImageTextToText`` + ``AutoProcessor`` when the
config has a vision part, ``AutoModelForCausalLM`` + ``AutoTokenizer`` otherwise. Local folders load offline; hub
ids are only passed through when ``HF_HUB_OFFLINE`` is off.

The helpers answer what the rest of dymoe needs to know about a backbone without caring which one it is:
where its language model lives (:func:`language_model_prefix`, to keep adapters out of the CLIP vision tower whose
attention also has ``q_proj``/``k_proj``/``v_proj``), how many image tokens one image becomes
(:func:`num_image_tokens`), the image token id (:func:`image_token_id`) and the pad-to-square colour
(:func:`image_background_color`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dymoe.errors import ConfigError, DymoeError
from dymoe.injection.targets import (
    language_model_prefix,  # re-exported: one function for injection and loading
)

__all__ = [
    "DTYPES",
    "image_background_color",
    "image_token_id",
    "is_multimodal_config",
    "language_model_prefix",
    "load_backbone",
    "load_image_processor",
    "load_processor",
    "num_image_tokens",
]

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",  # the dtype stored in config.json
}

_TRUE = {"1", "ON", "YES", "TRUE"}
# "owner/name" or "name": what a Hugging Face hub id can look like (a path with more parts cannot be one).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _resolve_source(path_or_id: str | os.PathLike) -> tuple[str, bool]:
    """Return ``(source, is_local)``; raise :class:`DymoeError` for a missing path or an offline hub id."""
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DymoeError(f"model folder {path} has no config.json; expected a Hugging Face model folder")
        return str(path), True
    if path.exists():
        raise DymoeError(f"model path {path} is a file; expected a Hugging Face model folder")
    if _hub_offline() or not _HUB_ID.match(text):
        raise DymoeError(
            f"model path {text!r} does not exist; to download a Hugging Face hub id instead, "
            "set HF_HUB_OFFLINE=0 (and have network access)"
        )
    return text, False


def is_multimodal_config(config: Any) -> bool:
    """True when a transformers config describes a vision-language model.

    That is: it has a ``vision_config``, or its ``model_type`` is an image-text-to-text model and not a causal LM.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    if getattr(config, "vision_config", None) is not None:
        return True
    model_type = getattr(config, "model_type", None)
    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def load_backbone(
    path_or_id: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = "sdpa",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """Load a model and its processor (or tokenizer, for a text-only LM).

    Args:
        path_or_id: a local model folder (loaded offline) or, when ``HF_HUB_OFFLINE`` is not set, a hub id.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` (config's dtype) or a ``torch.dtype``.
        attn_implementation: passed to ``from_pretrained`` (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``...).
        device: move the model there after loading (``None``: stay on CPU).
        trust_remote_code: passed to every ``from_pretrained``; keep False unless the folder is trusted.

    Returns:
        ``(model, processor)``: a ``PreTrainedModel`` in eval mode and a ``ProcessorMixin`` for vision-language
        folders or a tokenizer for text-only ones.

    Raises:
        DymoeError: missing path, hub id while offline, unreadable config, or a folder transformers cannot load.
        ConfigError: unsupported ``dtype``.
    """
    from transformers import AutoConfig

    torch_dtype = _resolve_dtype(dtype)
    source, local = _resolve_source(path_or_id)
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local:
        common["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        where = Path(source) / "config.json" if local else source
        raise DymoeError(f"cannot read the model config {where}: {e}") from e

    kwargs = dict(common, dtype=torch_dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    multimodal = is_multimodal_config(config)
    if multimodal:
        from dymoe.models.vision_deps import require_vision_deps

        require_vision_deps(getattr(config, "model_type", None))
    try:
        if multimodal:
            model, processor = _load_vlm(source, config, kwargs, common)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
            processor = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # missing weights / tokenizer files, hub errors, unknown model class, a config transformers cannot read
        raise DymoeError(f"cannot load the model at {source}: {type(e).__name__}: {e}") from e
    except (ImportError, RuntimeError) as e:  # transformers' lazy imports of a model/processor class failed
        if "torchvision" in str(e) or "num2words" in str(e):
            from dymoe.models.vision_deps import VLM_INSTALL_HINT, MissingDependency

            raise MissingDependency(f"cannot load the model at {source}: {e}; {VLM_INSTALL_HINT}") from e
        if isinstance(e, ImportError):
            raise DymoeError(f"cannot load the model at {source}: {e}") from e
        raise
    if device is not None:
        model.to(device)
    model.eval()
    return model, processor


def _load_vlm(source: str, config: Any, kwargs: dict[str, Any], common: dict[str, Any]) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    try:
        model = AutoModelForImageTextToText.from_pretrained(source, config=config, **kwargs)
    except ValueError:  # a config class the auto mapping does not know (older transformers, custom LLaVA)
        if "llava" not in config.model_type:
            raise
        model = LlavaForConditionalGeneration.from_pretrained(source, config=config, **kwargs)
    return model, load_processor(source, **common)


def load_processor(source: str | os.PathLike, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained``, with the image processor's PIL backend where transformers has one.

    The PIL backend makes pixels independent of whether torchvision is installed (transformers picks its
    torchvision backend when it is) and is the backend of the original LLaVA preprocessing. Video processors
    (torchvision only) are left as they are.
    """
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor

    from dymoe.models.vision_deps import IMAGE_BACKEND

    source = os.fspath(source)
    processor = AutoProcessor.from_pretrained(source, **kwargs)
    image_processor = getattr(processor, "image_processor", None)
    backends = hasattr(transformers, "CLIPImageProcessorPil")  # transformers >= 5.2x: processors have backends
    if backends and image_processor is not None and not type(image_processor).__name__.endswith("Pil"):
        try:
            pil = AutoImageProcessor.from_pretrained(source, backend=IMAGE_BACKEND, **kwargs)
        except (ImportError, OSError, ValueError):  # this family has no PIL image processor
            pil = None
        if pil is not None and type(pil).__name__.endswith("Pil"):
            processor.image_processor = pil
    return processor


def load_image_processor(source: str | os.PathLike, **kwargs: Any) -> Any:
    """``AutoImageProcessor.from_pretrained`` with the PIL backend where transformers has backends."""
    import transformers
    from transformers import AutoImageProcessor

    from dymoe.models.vision_deps import IMAGE_BACKEND

    if hasattr(transformers, "CLIPImageProcessorPil"):
        kwargs.setdefault("backend", IMAGE_BACKEND)
    return AutoImageProcessor.from_pretrained(os.fspath(source), **kwargs)


# -------------------------------------------------------------------------------------------------------- helpers


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def image_token_id(model_or_processor: Any) -> int:
    """Id of the image placeholder token (LLaVA-1.5: 32000; the tiny models: 4).

    Accepts a model (reads ``config.image_token_id``/``image_token_index``), a processor or a tokenizer
    (reads ``image_token_id`` or converts ``image_token``).

    Raises:
        DymoeError: the object has no image token (a text-only model or tokenizer).
    """
    config = getattr(model_or_processor, "config", None)
    if config is not None:
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
    else:
        for obj in (model_or_processor, _tokenizer_of(model_or_processor)):
            value = getattr(obj, "image_token_id", None)
            if isinstance(value, int):
                return value
            token = getattr(obj, "image_token", None)
            if isinstance(token, str):
                tid = _tokenizer_of(model_or_processor).convert_tokens_to_ids(token)
                if isinstance(tid, int) and tid != getattr(_tokenizer_of(model_or_processor), "unk_token_id", None):
                    return tid
    raise DymoeError(f"{type(model_or_processor).__name__} has no image token (is it a text-only model?)")


def _image_processor_of(processor: Any) -> Any:
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        raise DymoeError(f"{type(processor).__name__} has no image processor (is it a text-only model?)")
    return image_processor


def image_background_color(processor: Any) -> tuple[int, int, int]:
    """Pad-to-square fill colour: the image processor's mean × 255, truncated (LLaVA's ``expand2square``).

    CLIP's mean gives ``(122, 116, 104)``.
    """
    mean = _image_processor_of(processor).image_mean
    if isinstance(mean, (int, float)):
        mean = [mean] * 3
    return tuple(int(x * 255) for x in mean[:3])  # type: ignore[return-value]


def _size_side(size: Any) -> int:
    """Side of a square image from a size spec (a dict or transformers' ``SizeDict``; 224 if none is given)."""
    for key in ("height", "shortest_edge", "longest_edge"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return 224


def num_image_tokens(processor: Any) -> int:
    """Number of image tokens the processor puts into the text for one image (LLaVA-1.5: 576; tiny "test": 16).

    Measured by running the processor on one blank image of its crop size, so it is what the processor really
    emits (for dynamic-resolution processors it is the count of that square image).
    """
    from PIL import Image

    image_processor = _image_processor_of(processor)
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
    side = int(size) if isinstance(size, (int, float)) else _size_side(size)
    # Qwen-style processors give a pixel *count* as "shortest_edge" (min_pixels): no need for a 3136-px probe
    side = min(side, 1024)
    token = getattr(processor, "image_token", None) or _tokenizer_of(processor).image_token
    image = Image.new("RGB", (side, side), image_background_color(processor))
    encoded = processor(images=image, text=token, return_tensors="pt")
    return int((encoded["input_ids"] == image_token_id(processor)).sum())
