"""Per-forward routing context shared by every expert layer of a model.

**Inputs** a caller sets for a batch (all off by default; each is checked against the batch it meets):

- ``attention_mask`` ``[B, T]``: which positions are real tokens (set once per model forward by a pre-hook, see
  :mod:`dymoe.injection.inject`); observers use it to average losses over non-pad tokens;
- ``group_mask`` ``[B, G]`` bool: which expert groups each sample may use (DyMoE's task router, D-MoLE's
  autoencoder gates); column ``g`` is group id ``g``;
- ``policy``: a routing policy that rewrites raw scores before top-K (TAG, the drift-analysis masks); LoRA banks
  apply it, the AT-Router (which has its own threshold) does not;
- ``bypass``: every expert layer returns its base output (frozen-backbone passes: CMoE's last-token features,
  D-MoLE's zero-cost proxy and autoencoder features);
- ``router_ids`` ``[B]`` long: the router of a per-sample router bank each sample uses (CMoE's task locator picks
  ``router_i``); layers without a router bank ignore it;
- ``selector``: a per-layer module selection (DSAL, smoe-dsal.md §3): called once per layer at prefill with the
  layer's input, its ``[B]`` answer (a group id per sample) is cached for the rest of the forward, for every
  decoding step and for gradient checkpointing's recomputation;
- ``capture_inputs``: routing events carry the layer's input (DSAL's loss reads it);
- ``image_rows`` ``[n_images]`` long: the sample each row of a vision-tower batch belongs to (set by the pre-hook
  for LLaVA-style models), so that per-sample inputs reach experts in the vision tower.

**Per-forward state**, cleared by :meth:`RoutingContext.start_forward` (the pre-hook calls it at every model
forward that is not a decoding step, so nothing from one batch leaks into the next): the selector's cache and the
gates a leader projection shares with its followers (one router per block, CMoE). ``phase`` is ``"prefill"`` or
``"decode"`` (a forward with a non-empty KV cache).

Observers are callables receiving a :class:`RoutingEvent` from each routing layer on each forward while
``context.recording`` is true. Methods compute their loss terms (RSR, load balancing, DSAL) and statistics from
these events; the layer knows nothing about them. Recording is switched off during evaluation and during the
recomputation that gradient checkpointing performs in backward, so nothing is counted twice.

Rule for observers: a callback runs *inside* the layer's forward, which may be a gradient-checkpointed region. It
must not do differentiable math there (the recomputation would save a different set of tensors). Stash the event's
tensors and compute loss terms after the model's forward returns; non-differentiable statistics under
``torch.no_grad()`` are fine anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn as nn

PHASES = ("prefill", "decode")
STREAMS = ("text", "vision")


@dataclass
class RoutingEvent:
    """What one layer saw in one forward.

    Attributes:
        layer: the expert layer that routed, e.g. a :class:`~dymoe.layers.moe_lora.MoELoRALinear`
            (``layer.trainable_mask`` ``[E]`` tells new experts from frozen ones,
            ``layer.expert_group`` ``[E]`` the group id of each expert).
        scores: raw scores ``[N, E']`` fp32, before policy and masks (still attached to the graph).
        adjusted: scores after the policy and group mask ``[N, E']`` (``-inf`` where not allowed).
        weights: final gate weights ``[N, E']`` fp32.
        token_mask: ``[N]`` bool, true for real (non-pad) tokens, or None when every row is a real token (the
            vision stream) or the mask is unknown.
        experts: which of the layer's experts the ``E'`` columns are: None = all of them, in bank order; a
            ``slice`` of the bank otherwise (an FFN layer routing one group reports that group's columns).
        threshold: ``[N]`` fp32 raw threshold score of an AT-Router (the "extra expert"), else None.
        inputs: ``[N, d_in]`` the layer's input when ``context.capture_inputs`` is on, else None.
    """

    layer: nn.Module
    scores: torch.Tensor
    adjusted: torch.Tensor
    weights: torch.Tensor
    token_mask: torch.Tensor | None
    experts: slice | None = None
    threshold: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


class RoutingPolicy(Protocol):
    """Rewrites raw scores before top-K: ``policy(scores [N, E], layer) -> scores [N, E]`` (use ``-inf`` to mask)."""

    def __call__(self, scores: torch.Tensor, layer: nn.Module) -> torch.Tensor: ...


class Selector(Protocol):
    """Per-layer module selection: ``selector(layer, x [B, T, d], token_mask [B, T] | None) -> [B]`` long group ids.

    Called once per layer at prefill (or per training forward); the answer is cached for the forward.
    """

    def __call__(self, layer: nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor: ...


Observer = Callable[[RoutingEvent], None]

# the inputs a caller sets per batch, with their "off" values (see the module docstring)
INPUT_DEFAULTS = {
    "group_mask": None,
    "policy": None,
    "bypass": False,
    "router_ids": None,
    "selector": None,
    "capture_inputs": False,
}


@dataclass
class RoutingContext:
    """Mutable state shared by all expert layers of one model (see module docstring)."""

    attention_mask: torch.Tensor | None = None
    group_mask: torch.Tensor | None = None
    policy: RoutingPolicy | None = None
    observers: list[Observer] = field(default_factory=list)
    recording: bool = False
    bypass: bool = False
    router_ids: torch.Tensor | None = None
    selector: Selector | None = None
    capture_inputs: bool = False
    image_rows: torch.Tensor | None = None
    phase: str = "prefill"
    # per-forward state: {id(layer): [B] selection}, {block key: [N, E] gates of the block's leader}
    selections: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    shared_gates: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ lifecycle
    def start_forward(self) -> None:
        """Forget the per-forward state (selections, shared gates): called at each new, non-decoding forward."""
        self.selections.clear()
        self.shared_gates.clear()

    def reset_inputs(self) -> None:
        """Every per-batch input back to off (:data:`INPUT_DEFAULTS`)."""
        for name, value in INPUT_DEFAULTS.items():
            setattr(self, name, value)

    @contextlib.contextmanager
    def use(self, **inputs) -> Iterator[RoutingContext]:
        """Set per-batch inputs (keys of :data:`INPUT_DEFAULTS`) for a block; restore the previous ones after it."""
        unknown = sorted(set(inputs) - set(INPUT_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown routing inputs {unknown}; known: {sorted(INPUT_DEFAULTS)}")
        saved = {k: getattr(self, k) for k in inputs}
        for k, v in inputs.items():
            setattr(self, k, v)
        try:
            yield self
        finally:
            for k, v in saved.items():
                setattr(self, k, v)

    @contextlib.contextmanager
    def isolated(self) -> Iterator[RoutingContext]:
        """A side forward (a teacher, a feature pass) that leaves no trace: every input, the recording flag and
        the per-forward state are restored afterwards (the main forward's gradient-checkpointing recomputation
        still finds its selections)."""
        fields = [f.name for f in dataclasses.fields(self) if f.name not in ("observers", "selections", "shared_gates")]
        saved = {k: getattr(self, k) for k in fields}
        sel, shared = dict(self.selections), dict(self.shared_gates)
        try:
            yield self
        finally:
            for k, v in saved.items():
                setattr(self, k, v)
            self.selections, self.shared_gates = sel, shared

    @contextlib.contextmanager
    def backbone_only(self) -> Iterator[RoutingContext]:
        """:meth:`isolated` with every expert layer bypassed and nothing recorded: a side forward of the frozen
        backbone (feature passes, D-MoLE's proxy); per-batch inputs such as ``group_mask`` or ``selector`` are
        moot there (a bypassed layer returns its base output before reading them)."""
        with self.isolated():
            self.bypass, self.recording = True, False
            yield self

    # ------------------------------------------------------------------ per-row views of per-sample inputs
    def token_mask(self, batch: int, seq: int, stream: str = "text") -> torch.Tensor | None:
        """Non-pad mask ``[batch * seq]`` for hidden states of shape ``[batch, seq, d]``.

        With a KV cache the attention mask covers past positions too, so its last ``seq`` columns are used. The
        vision stream has no padding: every patch token is real (None).
        """
        if stream != "text":
            return None
        am = self.attention_mask
        if am is None or am.dim() != 2 or am.shape[0] != batch or am.shape[1] < seq:
            return None
        return am[:, am.shape[1] - seq :].reshape(-1).bool()

    def per_row(self, value: torch.Tensor, rows: int, stream: str, what: str) -> torch.Tensor:
        """A per-sample input ``[B, ...]`` as one entry per layer row: the text stream's rows are the samples;
        the vision stream's rows are images, mapped to their samples by ``image_rows``."""
        if stream == "text":
            if value.shape[0] != rows:
                raise ValueError(f"{what} has {value.shape[0]} rows but the batch has {rows} samples")
            return value
        img = self.image_rows
        if img is None:
            if value.shape[0] == rows:
                return value  # one image per sample (the caller did not say otherwise)
            raise ValueError(
                f"{what} has {value.shape[0]} rows but the vision tower sees {rows} images; set "
                "context.image_rows (the sample of each image)"
            )
        if img.shape[0] != rows:
            raise ValueError(f"context.image_rows has {img.shape[0]} entries but the vision tower sees {rows} images")
        return value[img.to(value.device)]

    def allowed_experts(
        self, expert_group: torch.Tensor, batch: int, seq: int, max_group: int, stream: str = "text"
    ) -> torch.Tensor | None:
        """Per-token allowed-expert mask ``[batch * seq, E]`` from the per-sample group mask, or None.

        ``max_group`` is the largest group id in ``expert_group`` (known on the host, so no device sync).
        """
        gm = self.group_mask
        if gm is None:
            return None
        gm = self.per_row(gm, batch, stream, "group_mask")
        if max_group >= gm.shape[1]:
            raise ValueError(f"group_mask has {gm.shape[1]} columns; expert groups go up to {max_group}")
        per_sample = gm[:, expert_group.to(gm.device)]  # [B, E]
        return per_sample.unsqueeze(1).expand(batch, seq, -1).reshape(batch * seq, -1)

    def selection(self, layer: nn.Module, x: torch.Tensor, batch: int, stream: str = "text") -> torch.Tensor | None:
        """The selector's ``[batch]`` group ids for ``layer`` on input ``x [batch, seq, d]`` (cached), or None.

        The selector runs at most once per layer between two :meth:`start_forward` calls: at prefill (or in a
        training forward); decoding steps and recomputations reuse its answer.
        """
        key = id(layer)
        cached = self.selections.get(key)
        if cached is not None:
            if cached.shape[0] != batch:
                raise ValueError(f"cached selection has {cached.shape[0]} rows but the layer sees {batch}")
            return cached
        if self.selector is None:
            return None
        if self.phase == "decode":
            raise ValueError("a selector is set but this layer made no selection at prefill")
        mask = self.token_mask(batch, x.shape[1] if x.dim() == 3 else 1, stream)
        mask = None if mask is None else mask.reshape(batch, -1)
        with torch.no_grad():
            chosen = self.selector(layer, x.detach(), mask)
        chosen = torch.as_tensor(chosen, dtype=torch.long, device=x.device).reshape(-1)
        if chosen.shape[0] != batch:
            raise ValueError(f"the selector returned {chosen.shape[0]} ids for a batch of {batch}")
        self.selections[key] = chosen
        return chosen

    def emit(self, event: RoutingEvent) -> None:
        if self.recording:
            for obs in self.observers:
                obs(event)
