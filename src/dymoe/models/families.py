"""Per-family rules for turning a processor's outputs into batches (used by :mod:`dymoe.data.collate`).

Most of what differs between VLM families is generic and needs no rule here: the collator keeps *every* tensor
the processor returns, joining per-image tensors along dim 0 (``pixel_values``, ``image_grid_thw``,
``image_sizes``, ``pixel_attention_mask``, ``aspect_ratio_ids``...) and padding per-token tensors
(:data:`TOKEN_KEYS`) along the sequence. What is left is a handful of rules, by processor class:

* **PaliGemma** has no chat template: its processor writes the prefix ``<image>*n<bos>{question}\\n`` and the
  answer follows with ``<eos>``; ``token_type_ids`` are 0 on the prefix (attended bidirectionally) and 1 from the
  first answer on (causal), which is how PaliGemma marks what it is trained on. Without an image, the prefix is
  ``<bos>{question}\\n`` (its processor refuses text-only input).
* **Mllama** attends to images through cross-attention, with one image slot per row: a text-only row in a batch
  with images gets an empty slot (zero pixels, aspect-ratio id 0, first tile marked, a zero cross-attention
  mask), exactly as its processor pads rows that have fewer images.
* **Causal LMs** (a tokenizer instead of a processor) take no images and render chat messages with plain-string
  contents (what text-only chat templates expect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TOKEN_KEYS", "BatchRules", "batch_rules", "image_block_token_ids", "is_text_only", "tokenizer_of"]

# Per-token tensors a processor may return: name -> (padding value, value on tokens appended after the first
# segment, or "last" to repeat the first segment's last position: a cross-attention row keeps attending to the
# image of the prompt).
TOKEN_KEYS: dict[str, tuple[int, int | str]] = {
    "attention_mask": (0, 1),
    "token_type_ids": (0, 0),
    "mm_token_type_ids": (0, 0),
    "cross_attention_mask": (0, "last"),
}

# Token strings that close an image block in some family's prompt (prompt truncation never cuts before them).
_IMAGE_BLOCK_TOKENS = ("<|vision_end|>", "<end_of_image>", "</img>", "<fake_token_around_image>")


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer of a processor, or the object itself when it is a tokenizer (causal LMs)."""
    return getattr(processor, "tokenizer", processor)


def is_text_only(processor: Any) -> bool:
    """True for a causal LM's tokenizer (no image processor)."""
    return getattr(processor, "image_processor", None) is None


def _mllama_empty_slot(like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Empty image slot of one row, shaped like ``like`` (one row's image tensors, batch dim 1)."""
    out = {k: torch.zeros_like(v) for k, v in like.items()}
    if "aspect_ratio_mask" in out:
        out["aspect_ratio_mask"][..., 0] = 1  # as MllamaImageProcessor pads missing images
    return out


@dataclass(frozen=True)
class BatchRules:
    """What one family's batches need beyond the generic handling (see the module docstring).

    Attributes:
        prompt_format: ``chat_template`` (the processor's template) or ``paligemma`` (prefix/suffix).
        answer_token_type: value of ``token_type_ids`` from the first answer on (PaliGemma: 1), None = no rule.
        empty_image_slot: builds a text-only row's image tensors from an image row's (Mllama), None = a
            text-only row contributes no image tensors.
        text_only: a causal LM: images are refused, messages have plain-string contents.
    """

    prompt_format: str = "chat_template"
    answer_token_type: int | None = None
    empty_image_slot: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    text_only: bool = False


_RULES: dict[str, BatchRules] = {
    "PaliGemmaProcessor": BatchRules(prompt_format="paligemma", answer_token_type=1),
    "MllamaProcessor": BatchRules(empty_image_slot=_mllama_empty_slot),
}


def batch_rules(processor: Any) -> BatchRules:
    """The rules for ``processor`` (by class name; generic rules for every other processor)."""
    if is_text_only(processor):
        return BatchRules(text_only=True)
    return _RULES.get(type(processor).__name__, BatchRules())


def image_block_token_ids(processor: Any) -> set[int]:
    """Ids of the tokens that make up (or close) an image block in the prompt.

    The image placeholder the processor expands (``processor.image_token_id``, and the tokenizer's
    ``image_token`` where it differs, as Gemma3's ``<image_soft_token>``) plus the family's block-closing marker
    when its vocabulary has one (``<|vision_end|>``, ``<end_of_image>``, ``</img>``). Empty for a causal LM.
    """
    if is_text_only(processor):
        return set()
    tok = tokenizer_of(processor)
    unk = getattr(tok, "unk_token_id", None)
    ids: set[int] = set()
    tid = getattr(processor, "image_token_id", None)
    if isinstance(tid, int):
        ids.add(tid)
    names = [getattr(processor, "image_token", None), getattr(tok, "image_token", None), *_IMAGE_BLOCK_TOKENS]
    for name in names:
        if isinstance(name, str):
            tid = tok.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != unk:
                ids.add(tid)
    return ids
