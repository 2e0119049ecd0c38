"""Task-router extension of DyMoE (dymoe.md §12.1, proposal [INF]): nearest task prototype per sample.

A sample's feature is the mean of the language model's input embeddings over its real text tokens (padding and
image placeholders excluded; the placeholders all share one embedding). One prototype per task is the mean feature
of that task's training samples. At inference each sample is assigned the task whose prototype is nearest in cosine
similarity, and top-K routing is restricted to that task's expert group, or to the groups of every task up to it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTER_MODES = ("cumulative", "only")


def sample_features(embeddings: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens.

    Args:
        embeddings: ``[B, T, d]``; token_mask: ``[B, T]`` bool (tokens to average).

    Returns:
        ``[B, d]`` fp32 (a sample without any selected token gets zeros).
    """
    m = token_mask.to(torch.float32).unsqueeze(-1)  # [B, T, 1]
    return (embeddings.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index of the prototype with the highest cosine similarity.

    Args:
        features: ``[B, d]``; prototypes: ``[P, d]`` (P ≥ 1).

    Returns:
        ``[B]`` long, in ``[0, P)`` (ties: the lowest index).
    """
    sim = F.normalize(features.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T  # [B, P]
    return sim.argmax(dim=-1)


def task_group_mask(predicted: torch.Tensor, num_groups: int, mode: str = "cumulative") -> torch.Tensor:
    """Allowed expert groups per sample (group id = task index).

    Args:
        predicted: ``[B]`` predicted task indices; num_groups: G (columns); mode: ``cumulative`` (groups
            ``0..predicted``) or ``only`` (group ``predicted``).

    Returns:
        ``[B, G]`` bool.
    """
    if mode not in ROUTER_MODES:
        raise ValueError(f"task router mode must be one of {ROUTER_MODES}, got {mode!r}")
    g = torch.arange(num_groups, device=predicted.device)  # [G]
    if mode == "only":
        return g[None, :] == predicted[:, None]
    return g[None, :] <= predicted[:, None]


@torch.no_grad()
def embedding_features(model: nn.Module, batch: dict[str, torch.Tensor], image_token_id: int | None) -> torch.Tensor:
    """Per-sample feature of a collated batch: mean input embedding over non-pad, non-image tokens.

    Args:
        model: a Hugging Face model (``get_input_embeddings()``); batch: ``input_ids [B, T]`` and optionally
            ``attention_mask [B, T]``; image_token_id: the placeholder id to skip (None: keep every token).

    Returns:
        ``[B, d]`` fp32.
    """
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    if image_token_id is not None:
        mask = mask & (ids != image_token_id)
    emb = model.get_input_embeddings()(ids)  # [B, T, d]
    return sample_features(emb, mask)
