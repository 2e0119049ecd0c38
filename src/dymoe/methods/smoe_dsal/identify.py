"""Domain identification other than DSAL's argmin (smoe-dsal.md §5): the External Domain Identifier of ablation 2
(DSAL → EDI with CLIP prototypes) and the module sets of "Ours+" (App. D), as pure functions.

EDI (§5 (2)) [S]: the image and text encoders of CLIP embed every training instruction; each domain's prototype is
the mean of its instructions' representations; a test instruction goes to the domain of its nearest prototype, for
every layer. What the paper leaves open, and what dymoe does ([P], options of ``smoe_dsal``):

- the encoders: the backbone's own vision tower (a LLaVA's *is* CLIP's image encoder; nothing is downloaded); the
  backbone has no CLIP text encoder, so the text half is the language model's last hidden state over the text-only
  prompt (``method.edi_features: image_text``, the default) or left out (``image``: the vision tower alone);
- the pooling: the max over the vision tower's last hidden state (a sample's images: their max) and the masked max
  over the prompt's text tokens, the features D-MoLE's router uses (:mod:`dymoe.models.pooled`);
- the fusion and distance: each half L2-normalised, concatenated; nearest prototype by cosine similarity.

The prototypes come from the frozen backbone only, so they do not depend on what the modules learned: they are
computed in the planning phase of each domain (a feature pass over its training samples) and saved with the run.

"Ours+" (App. D) [S]: ``μ_i^{(l)}`` is module ``i``'s mean DSAL over its own domain's training instructions; at
test time the primary module is ``argmin_i L_DSAL^{(l,i)}(x)`` and the auxiliary ones are ``{j : μ_j^{(l)} >
L_DSAL^{(l,j)}(x)}``. How they are combined is unstated; [P] the layer's output is the mean of ``ȟ`` over the
primary and auxiliary modules, each through its own AT-Router (so the frozen FFN term keeps its scale ≈ 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dymoe.models.pooled import text_pooled, vision_pooled

EDI_FEATURES = ("image_text", "image")


@torch.no_grad()
def edi_features(model: nn.Module, vision: nn.Module | None, batch: Mapping[str, torch.Tensor],
                 image_sample: Sequence[int], *, kind: str = "image_text", vision_dim: int = 0,
                 image_token_id: int | None = None, pad_token_id: int = 0) -> torch.Tensor:
    """``[B, D]`` fp32 EDI representations of a batch: ``[v / ‖v‖; w / ‖w‖]`` (``image_text``, ``D = d_v + d_t``)
    or ``v / ‖v‖`` (``image``), ``v`` the vision tower's max-pooled last hidden state (zeros for a sample without
    an image), ``w`` the language model's max-pooled last hidden state over the text-only prompt. Call it with the
    expert layers bypassed (the pretrained backbone)."""
    b = batch["input_ids"].shape[0]
    v = vision_pooled(model, vision, batch, image_sample, image_token_id) if vision is not None else None
    if v is None:
        v = torch.zeros(b, vision_dim, device=batch["input_ids"].device)
    v = F.normalize(v.float(), dim=1)
    if kind == "image":
        return v
    w = F.normalize(text_pooled(model, batch, image_token_id, pad_token_id).float(), dim=1)
    return torch.cat([v.to(w.device), w], dim=1)


def nearest_prototype(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``[B]`` the index of each row's nearest prototype by cosine similarity (ties: the lowest index).

    Args:
        z: ``[B, D]`` representations.
        prototypes: ``[G, D]`` one mean representation per learned domain.
    """
    sim = F.normalize(z.float(), dim=1) @ F.normalize(prototypes.float().to(z.device), dim=1).T  # [B, G]
    return sim.argmax(-1)


def plus_modules(losses: torch.Tensor, mean_losses: torch.Tensor) -> torch.Tensor:
    """``[B, G]`` bool: the modules "Ours+" combines in one layer (App. D): the primary ``argmin_g losses[b, g]``
    and every auxiliary ``g`` with ``mean_losses[g] > losses[b, g]``.

    Args:
        losses: ``[B, G]`` ``L_DSAL^{(l,g)}`` of each learned module on each sample's input of the layer.
        mean_losses: ``[G]`` ``μ_g^{(l)}``: module ``g``'s mean DSAL over its own domain's training instructions.
    """
    primary = F.one_hot(losses.argmin(-1), losses.shape[1]).bool()  # [B, G]
    return primary | (mean_losses.to(losses.device, losses.dtype)[None, :] > losses)
