"""Task-router extension of DyMoE (dymoe.md §12.1, proposal [INF]): nearest task prototype per sample.

A sample's feature comes from the frozen backbone, in one of two forms (``method.task_router_features``):

- ``image_text`` (default, §12.1 "mean CLIP image+text features", as HiDe-LLaVA / MR-LoRA identify tasks): the
  mean of the sample's image features (the vision tower's patch features through the frozen projector, i.e. the
  image tokens the language model reads) beside the mean of its text embeddings (the language model's input
  embeddings over the prompt's text tokens: padding, image placeholders and, in a training batch, the answer
  tokens excluded, so a training sample and the same question at inference give one feature), each
  L2-normalised, concatenated
  ``[d_img + d_txt]``. The cosine similarity of two such features is the mean of their image and text cosine
  similarities, so tasks that share a prompt (six of CoIN's eight answer "using a single word or phrase") are
  told apart by their images. A sample without an image has a zero image half (its similarity is then half the
  text similarity, alike for every prototype).
- ``text``: the text half alone.

One prototype per task is the mean feature of that task's training samples. At inference each sample is assigned
the task whose prototype is nearest in cosine similarity, and top-K routing is restricted to that task's expert
group, or to the groups of every task up to it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dymoe.errors import DymoeError

ROUTER_MODES = ("cumulative", "only")
FEATURE_MODES = ("image_text", "text")


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
    """Per-sample text feature of a collated batch: mean input embedding over the prompt's text tokens.

    Padding, image placeholders and answer tokens (positions with ``labels`` ≠ −100 in a training batch) are
    skipped: prototypes are built from training batches but compared with prompt-only evaluation batches, and with
    the answers in, a task whose answers are long (Grounding's boxes) gets a prototype its questions never match.

    Args:
        model: a Hugging Face model (``get_input_embeddings()``); batch: ``input_ids [B, T]`` and optionally
            ``attention_mask [B, T]`` and ``labels [B, T]``; image_token_id: the placeholder id to skip (None: keep
            every token).

    Returns:
        ``[B, d]`` fp32.
    """
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    if image_token_id is not None:
        mask = mask & (ids != image_token_id)
    labels = batch.get("labels")
    if labels is not None:
        # a training batch: the prompt only (answer tokens carry labels), as an evaluation batch has it
        mask = mask & (labels == -100)
    emb = model.get_input_embeddings()(ids)  # [B, T, d]
    return sample_features(emb, mask)


def _per_image_means(out) -> list[torch.Tensor]:
    """Per-image mean feature ``[d]`` from what ``get_image_features`` returns across transformers versions."""
    feats = getattr(out, "pooler_output", out)  # 5.2x: an output object whose pooler_output lists the images
    if isinstance(feats, torch.Tensor):
        return list(feats.float().mean(dim=-2)) if feats.dim() == 3 else [feats.float().mean(dim=0)]
    if isinstance(feats, (list, tuple)) and all(isinstance(f, torch.Tensor) for f in feats):
        return [f.float().reshape(-1, f.shape[-1]).mean(dim=0) for f in feats]
    raise DymoeError(f"get_image_features returned {type(feats).__name__}; the image_text task router cannot read it")


@torch.no_grad()
def image_features(model: nn.Module, batch: dict[str, torch.Tensor], image_token_id: int) -> torch.Tensor:
    """Per-sample image feature of a collated batch: the mean of its image's projected patch features.

    ``pixel_values`` ``[N_img, 3, H, W]`` hold one image per sample that has image tokens, in batch order (the
    LLaVA layout of the collators). Samples without an image get zeros.

    Args:
        model: a Hugging Face VLM with ``get_image_features`` (LLaVA and its relatives); batch: ``input_ids
            [B, T]`` and ``pixel_values``; image_token_id: the placeholder id.

    Returns:
        ``[B, d]`` fp32 (``d`` = the language model's width for LLaVA).

    Raises:
        DymoeError: the model has no ``get_image_features``, or the images do not map one to one onto the samples
            with image tokens (e.g. several images per sample).
    """
    ids = batch["input_ids"]
    has_image = (ids == image_token_id).any(dim=1)  # [B]
    pixel_values = batch.get("pixel_values")
    if pixel_values is None or not bool(has_image.any()):
        d = model.get_input_embeddings().weight.shape[1]
        return torch.zeros(ids.shape[0], d, device=ids.device)
    if not hasattr(model, "get_image_features"):
        raise DymoeError(f"{type(model).__name__} has no get_image_features: use method.task_router_features=text")
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    extra = {k: batch[k] for k in ("image_sizes", "image_grid_thw") if k in batch}
    means = _per_image_means(model.get_image_features(pixel_values=pixel_values.to(dtype), **extra))
    rows = has_image.nonzero().squeeze(-1)
    if len(means) != rows.numel():
        raise DymoeError(
            f"the task router's image features: {len(means)} images for {rows.numel()} samples with image tokens; "
            "it needs one image per sample (or use method.task_router_features=text)"
        )
    out = torch.zeros(ids.shape[0], means[0].shape[0], device=means[0].device)
    out[rows.to(out.device)] = torch.stack(means)
    return out


@torch.no_grad()
def task_features(
    model: nn.Module, batch: dict[str, torch.Tensor], image_token_id: int | None, mode: str = "image_text"
) -> torch.Tensor:
    """The task-router feature of each sample (see the module docstring).

    Args:
        model, batch, image_token_id: as :func:`embedding_features` (``image_text`` needs the image token);
        mode: one of :data:`FEATURE_MODES`.

    Returns:
        ``[B, d_txt]`` (``text``) or ``[B, d_img + d_txt]`` (``image_text``) fp32.
    """
    if mode not in FEATURE_MODES:
        raise ValueError(f"task router features must be one of {FEATURE_MODES}, got {mode!r}")
    text = embedding_features(model, batch, image_token_id)  # [B, d_txt]
    if mode == "text":
        return text
    if image_token_id is None:
        raise DymoeError("method.task_router_features=image_text needs a model with an image token; use 'text'")
    image = image_features(model, batch, image_token_id).to(text.device)  # [B, d_img]
    return torch.cat([F.normalize(image, dim=-1), F.normalize(text, dim=-1)], dim=-1)
