"""Pooled features of the frozen backbone, shared by the methods that identify a task or domain from its input:
the vision encoder's last hidden state max-pooled per sample, and the language model's last hidden state
max-pooled over the text-only prompt (D-MoLE's router feature, dmole.md §7; SMoE-DSAL's EDI prototypes,
smoe-dsal.md Table 4 ablation 2).

Both run under ``torch.no_grad()``; call them with the expert layers bypassed to get the pretrained backbone's
features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from dymoe.injection.inject import image_token_id


def prompt_token_ids(model: nn.Module) -> tuple[int, int | None]:
    """``(pad_token_id, image_token_id)`` of ``model.config`` as :func:`text_pooled` and :func:`vision_pooled` take
    them: the (text) config's pad id, 0 when unset, and the image placeholder id or None."""
    cfg = model.config
    pad = getattr(getattr(cfg, "text_config", cfg), "pad_token_id", None)
    return (pad if isinstance(pad, int) else 0), image_token_id(model)


class _VisionCaptured(Exception):
    """Raised by the vision tower's hook once its output is captured: the rest of the forward is not needed."""


@torch.no_grad()
def vision_pooled(model: nn.Module, vision: nn.Module, batch: Mapping[str, torch.Tensor],
                  image_sample: Sequence[int], image_token_id: int | None = None) -> torch.Tensor | None:
    """``[B, d_v]``: the vision encoder's last hidden state, max-pooled over its tokens (Eq. 6), one row per sample
    (max over a sample's images; zeros for a sample without an image); None when the batch has no image.
    ``image_sample`` ``[N_img]``: the sample of each image (the collator's); if it is not given, the images are
    mapped by their placeholder tokens in ``input_ids``.

    Runs the model until the vision tower has returned (a hook stops the forward there)."""
    if batch.get("pixel_values") is None:
        return None
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
        captured["h"] = hidden
        raise _VisionCaptured

    handle = vision.register_forward_hook(hook)
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    except _VisionCaptured:
        pass
    finally:
        handle.remove()
    if "h" not in captured:
        return None
    h = captured["h"].float()  # [n_img, P, d_v] (or [tokens, d_v] for flat-patch towers)
    per_image = h.amax(dim=1) if h.dim() == 3 else h.amax(dim=0, keepdim=True)  # [n_img, d_v]
    b = batch["input_ids"].shape[0]
    if len(image_sample) == per_image.shape[0]:
        rows = list(image_sample)
    else:
        from dymoe.injection.inject import image_rows

        mapped = None if image_token_id is None else image_rows(batch["input_ids"], per_image.shape[0], image_token_id)
        if mapped is None and per_image.shape[0] != b:
            raise ValueError(f"{per_image.shape[0]} images in a batch of {b} samples and no image -> sample map")
        rows = mapped.tolist() if mapped is not None else list(range(b))
    idx = torch.tensor(rows, dtype=torch.long, device=per_image.device)[:, None].expand_as(per_image)  # [n_img, d_v]
    out = torch.full((b, per_image.shape[1]), -torch.inf, device=per_image.device)
    out = out.scatter_reduce(0, idx, per_image, "amax")
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


@torch.no_grad()
def text_pooled(model: nn.Module, batch: Mapping[str, torch.Tensor], image_token_id: int | None,
                pad_token_id: int = 0) -> torch.Tensor:
    """``[B, d_t]``: the language model's last hidden state over the *text-only* prompt, max-pooled over its real
    tokens (a masked max, dmole.md §7). The prompt is every real token before the answer (training batches: before
    the first supervised token; generation batches: every real token) with the image tokens removed; it is run
    alone, without images, right padded."""
    ids, am = batch["input_ids"], batch["attention_mask"].bool()  # [B, T]
    keep = am.clone()
    labels = batch.get("labels")
    if labels is not None:
        answer = (labels != -100) & am
        first = torch.where(answer.any(1), answer.long().argmax(1), torch.full_like(answer[:, 0], ids.shape[1],
                                                                                      dtype=torch.long))
        keep &= torch.arange(ids.shape[1], device=ids.device)[None, :] < first[:, None]
    if image_token_id is not None:
        keep &= ids != image_token_id
    lengths = keep.sum(1)  # [B]
    width = max(int(lengths.max()), 1)
    text = torch.full((ids.shape[0], width), pad_token_id, dtype=ids.dtype, device=ids.device)
    mask = torch.zeros_like(text)
    for r in range(ids.shape[0]):  # a gather per row: the prompt tokens in order, right padded
        n = int(lengths[r])
        text[r, :n] = ids[r][keep[r]]
        mask[r, :n] = 1
    hidden = model(input_ids=text, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()  # [B,L,d]
    hidden = hidden.masked_fill(~mask.bool()[..., None], -torch.inf)
    pooled = hidden.amax(1)  # [B, d_t]
    return torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))
