"""What D-MoLE measures on the frozen, pretrained backbone (dmole.md §3, §7): the zero-cost proxy (gradient norms
of the slots' pretrained weights) and the autoencoder router's feature ``z``.

Both run with every expert layer bypassed (``context.bypass``): the base weights are never changed by D-MoLE, so the
bypassed model *is* the pretrained model at every task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from dymoe.models.pooled import text_pooled, vision_pooled

__all__ = ["router_feature", "slot_gradient_norms", "text_pooled", "vision_pooled"]


@torch.no_grad()
def router_feature(model: nn.Module, vision: nn.Module | None, batch: Mapping[str, torch.Tensor],
                   image_sample: Sequence[int], *, vision_dim: int, image_token_id: int | None,
                   pad_token_id: int = 0, normalize: bool = True) -> torch.Tensor:
    """``z = [v_pooled; w_pooled]`` ``[B, d_v + d_t]`` fp32 (Eq. 6–7), L2-normalised per row when ``normalize`` (the
    code). Call it with the expert layers bypassed (the pretrained backbone)."""
    w = text_pooled(model, batch, image_token_id, pad_token_id)  # [B, d_t]
    v = vision_pooled(model, vision, batch, image_sample, image_token_id) if vision is not None else None
    if v is None:
        v = torch.zeros(w.shape[0], vision_dim, device=w.device)
    z = torch.cat([v.to(w.device), w], dim=1)
    return torch.nn.functional.normalize(z, dim=1) if normalize else z


def slot_gradient_norms(groups: Mapping[str, Iterable[nn.Linear]], *, bias: bool = True,
                        reduce=None) -> dict[str, float]:
    """``S_m = ‖∂L/∂W_m‖₂`` per slot (Eq. 3) from the ``.grad`` of each slot's linears: the norm of the slot's
    concatenated weight gradients (q, k and v of one block form one slot, as a fused ``qkv`` linear), plus, with
    ``bias``, the norm of its concatenated bias gradients (the code sums every parameter's gradient norm).
    ``reduce``: applied to each gradient before the norm (the sum over processes)."""
    out = {}
    for slot, linears in groups.items():
        w2, b2 = 0.0, 0.0
        for lin in linears:
            # a weight without a gradient (unused by the loss, or no batch on this process) counts as zeros, and
            # every process reduces the same tensors in the same order
            g = lin.weight.grad if lin.weight.grad is not None else torch.zeros_like(lin.weight)
            g = reduce(g) if reduce is not None else g
            w2 += float(g.double().pow(2).sum())
            if bias and lin.bias is not None:
                gb = lin.bias.grad if lin.bias.grad is not None else torch.zeros_like(lin.bias)
                gb = reduce(gb) if reduce is not None else gb
                b2 += float(gb.double().pow(2).sum())
        out[slot] = w2 ** 0.5 + (b2 ** 0.5 if bias else 0.0)
    return out
