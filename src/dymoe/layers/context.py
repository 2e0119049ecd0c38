"""Per-forward routing context shared by every expert layer of a model.

The layers read three optional inputs from it and report to observers:

- ``attention_mask`` ``[B, T]``: which positions are real tokens (set once per model forward by a pre-hook, see
  :mod:`dymoe.injection.inject`); observers use it to average losses over non-pad tokens;
- ``group_mask`` ``[B, G]`` bool: which expert groups each sample may use (task routers, CMoE's router bank,
  D-MoLE, DSAL); column ``g`` is group id ``g``;
- ``policy``: a routing policy that rewrites raw scores before top-K (TAG, the drift-analysis masks).

Observers are callables receiving a :class:`RoutingEvent` from each layer on each forward while
``context.recording`` is true. Methods compute their loss terms (RSR, load balancing) and statistics (activation
frequency, token types) from these events; the layer knows nothing about them. Recording is switched off during
evaluation and during the recomputation that gradient checkpointing performs in backward, so nothing is counted
twice.

Rule for observers: a callback runs *inside* the layer's forward, which may be a gradient-checkpointed region. It
must not do differentiable math there (the recomputation would save a different set of tensors). Stash the event's
tensors and compute loss terms after the model's forward returns; non-differentiable statistics under
``torch.no_grad()`` are fine anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn as nn


@dataclass
class RoutingEvent:
    """What one layer saw in one forward.

    Attributes:
        layer: the expert layer that routed, e.g. a :class:`~dymoe.layers.moe_lora.MoELoRALinear`
            (``layer.trainable_mask`` ``[E]`` tells new experts from frozen ones,
            ``layer.expert_group`` ``[E]`` the group id of each expert).
        scores: raw scores ``[N, E]`` fp32, before policy and masks (still attached to the graph).
        adjusted: scores after the policy and group mask ``[N, E]`` (``-inf`` where not allowed).
        weights: final gate weights ``[N, E]`` fp32.
        token_mask: ``[N]`` bool, true for real (non-pad) tokens, or None when unknown.
    """

    layer: nn.Module
    scores: torch.Tensor
    adjusted: torch.Tensor
    weights: torch.Tensor
    token_mask: torch.Tensor | None


class RoutingPolicy(Protocol):
    """Rewrites raw scores before top-K: ``policy(scores [N, E], layer) -> scores [N, E]`` (use ``-inf`` to mask)."""

    def __call__(self, scores: torch.Tensor, layer: nn.Module) -> torch.Tensor: ...


Observer = Callable[[RoutingEvent], None]


@dataclass
class RoutingContext:
    """Mutable state shared by all expert layers of one model (see module docstring)."""

    attention_mask: torch.Tensor | None = None
    group_mask: torch.Tensor | None = None
    policy: RoutingPolicy | None = None
    observers: list[Observer] = field(default_factory=list)
    recording: bool = False

    def token_mask(self, batch: int, seq: int) -> torch.Tensor | None:
        """Non-pad mask ``[batch * seq]`` for hidden states of shape ``[batch, seq, d]``.

        With a KV cache the attention mask covers past positions too, so its last ``seq`` columns are used.
        """
        am = self.attention_mask
        if am is None or am.dim() != 2 or am.shape[0] != batch or am.shape[1] < seq:
            return None
        return am[:, am.shape[1] - seq :].reshape(-1).bool()

    def allowed_experts(
        self, expert_group: torch.Tensor, batch: int, seq: int, max_group: int
    ) -> torch.Tensor | None:
        """Per-token allowed-expert mask ``[batch * seq, E]`` from the per-sample group mask, or None.

        ``max_group`` is the largest group id in ``expert_group`` (known on the host, so no device sync).
        """
        gm = self.group_mask
        if gm is None:
            return None
        if gm.shape[0] != batch:
            raise ValueError(f"group_mask has {gm.shape[0]} rows but the batch has {batch} samples")
        if max_group >= gm.shape[1]:
            raise ValueError(f"group_mask has {gm.shape[1]} columns; expert groups go up to {max_group}")
        per_sample = gm[:, expert_group.to(gm.device)]  # [B, E]
        return per_sample.unsqueeze(1).expand(batch, seq, -1).reshape(batch * seq, -1)

    def emit(self, event: RoutingEvent) -> None:
        if self.recording:
            for obs in self.observers:
                obs(event)
