"""A frozen copy of the expert layer as it was before issue 15 (commit 505f3f5): the oracle of
``test_layer_oracle.py``. Do not edit: the refactored layer must reproduce it bit for bit.

Concatenation of ``layers/functional.py`` (routing + fused delta), ``layers/context.py`` (the routing context) and
``layers/moe_lora.py`` (``MoELoRALinear``) at that commit, with only the imports between them removed.
"""
# ruff: noqa

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTER_MODES = ("linear", "cosine", "none")


def router_scores(x: torch.Tensor, weight: torch.Tensor, mode: str, cos_scale: float = 1.0) -> torch.Tensor:
    """Raw routing scores (logits), in fp32.

    Args:
        x: token inputs ``[N, d_in]`` (any float dtype).
        weight: router rows ``[E, d_in]``, one per expert.
        mode: ``"linear"`` (``s = x·u``, bias-free), ``"cosine"`` (``s = κ·cos(x, u)``; κ ≤ 0 falls back to the dot
            product, as the upstream DyMoE code does) or ``"none"`` (all zeros: every expert weight 1, see
            :func:`route`).
        cos_scale: κ for the cosine router.

    Returns:
        ``[N, E]`` fp32 scores.
    """
    if mode == "none":
        return x.new_zeros(x.shape[0], weight.shape[0], dtype=torch.float32)
    if mode not in ROUTER_MODES:
        raise ValueError(f"router mode must be one of {ROUTER_MODES}, got {mode!r}")
    # fp32 even under autocast: at T = 0.01 a bf16 score would make routing and TAG decisions coarse
    with torch.autocast(x.device.type, enabled=False):
        xf, uf = x.float(), weight.float()
        if mode == "cosine" and cos_scale > 0:
            # scores in [-κ, κ]; normalising in fp32 keeps tiny-norm tokens stable
            return F.normalize(xf, dim=-1) @ F.normalize(uf, dim=-1).T * cos_scale
        return xf @ uf.T


def route(
    scores: torch.Tensor,
    top_k: int,
    temperature: float,
    *,
    dense_ones: bool = False,
) -> torch.Tensor:
    """Gate weights from (possibly masked) scores: top-K, then softmax at ``temperature`` over the kept experts.

    Masked experts carry ``-inf`` scores and get weight 0. A token whose scores are all ``-inf`` gets all-zero
    weights (it is routed nowhere) instead of NaN. ``top_k >= E`` is a dense softmax over all experts.

    Args:
        scores: ``[N, E]`` fp32 scores, ``-inf`` where an expert is not allowed.
        top_k: K; clipped to E.
        temperature: softmax temperature (> 0).
        dense_ones: router mode ``"none"``: every allowed expert gets weight 1 (IncLoRA / O-LoRA sum their LoRAs).

    Returns:
        ``[N, E]`` fp32 weights; rows sum to 1 (or 0 for fully masked tokens; or the number of allowed experts with
        ``dense_ones``).
    """
    if dense_ones:
        return torch.isfinite(scores).to(torch.float32)
    n_exp = scores.shape[-1]
    k = min(int(top_k), n_exp)
    if k >= n_exp:
        weights = torch.softmax(scores / temperature, dim=-1)
    else:
        # top-K, then a softmax renormalised over the K kept experts; other experts get exactly 0
        top_vals, top_idx = scores.topk(k, dim=-1)  # [N, K]
        top_w = torch.softmax(top_vals / temperature, dim=-1)
        weights = torch.zeros_like(scores).scatter(-1, top_idx, top_w)
    # all -inf rows give NaN in softmax: route such tokens nowhere
    return torch.nan_to_num(weights, nan=0.0)


def expand_gates(weights: torch.Tensor, ranks: torch.Tensor | int, total_rank: int) -> torch.Tensor:
    """Repeat each expert's gate over its rank slots.

    Args:
        weights: ``[N, E]``.
        ranks: an int (every expert has this rank) or a ``[E]`` integer tensor of per-expert ranks.
        total_rank: ``R = Σ r_i`` (passed explicitly so no device sync is needed).

    Returns:
        ``[N, R]``.
    """
    if isinstance(ranks, int):
        # uniform rank: a broadcast, no gather
        n, e = weights.shape
        return weights.unsqueeze(-1).expand(n, e, ranks).reshape(n, e * ranks)
    return weights.repeat_interleave(ranks, dim=-1, output_size=total_rank)


def moe_lora_delta(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    weights: torch.Tensor,
    ranks: torch.Tensor | int,
    scaling: float,
) -> torch.Tensor:
    """Fused ``Δ = s · Σ_i w_i B_i A_i x`` in two GEMMs.

    Args:
        x: ``[N, d_in]`` (already dropped-out if dropout is used).
        lora_a: ``[R, d_in]`` concatenated A's.
        lora_b: ``[d_out, R]`` concatenated B's.
        weights: ``[N, E]`` gate weights (same dtype as ``x``).
        ranks: per-expert rank (int) or ``[E]`` tensor.
        scaling: ``s = alpha / bank_rank``.

    Returns:
        ``[N, d_out]`` in ``x``'s dtype.
    """
    total_rank = lora_a.shape[0]
    h = x @ lora_a.T  # [N, R]: every expert's down-projection at once
    h = h * expand_gates(weights, ranks, total_rank)  # [N, R]: gate each expert's rank slots
    return (h @ lora_b.T) * scaling  # [N, d_out]


def moe_lora_delta_reference(
    x: torch.Tensor,
    a_list: list[torch.Tensor],
    b_list: list[torch.Tensor],
    weights: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Per-expert loop oracle (the way CoIN, MCITlib and Prism compute MoE-LoRA). Tests and benchmarks only.

    Args:
        x: ``[N, d_in]``; a_list[i]: ``[r_i, d_in]``; b_list[i]: ``[d_out, r_i]``; weights: ``[N, E]``.

    Returns:
        ``[N, d_out]``.
    """
    out = x.new_zeros(x.shape[0], b_list[0].shape[0]) if b_list else x.new_zeros(x.shape[0], 0)
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        out = out + weights[:, i : i + 1] * ((x @ a.T) @ b.T)
    return out * scaling


@dataclass
class RoutingEvent:
    """What one layer saw in one forward.

    Attributes:
        layer: the layer that routed (``layer.trainable_mask`` ``[E]`` tells new experts from frozen ones,
            ``layer.expert_group`` ``[E]`` the group id of each expert).
        scores: raw scores ``[N, E]`` fp32, before policy and masks (still attached to the graph).
        adjusted: scores after the policy and group mask ``[N, E]`` (``-inf`` where not allowed).
        weights: final gate weights ``[N, E]`` fp32.
        token_mask: ``[N]`` bool, true for real (non-pad) tokens, or None when unknown.
    """

    layer: MoELoRALinear
    scores: torch.Tensor
    adjusted: torch.Tensor
    weights: torch.Tensor
    token_mask: torch.Tensor | None


class RoutingPolicy(Protocol):
    """Rewrites raw scores before top-K: ``policy(scores [N, E], layer) -> scores [N, E]`` (use ``-inf`` to mask)."""

    def __call__(self, scores: torch.Tensor, layer: MoELoRALinear) -> torch.Tensor: ...


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


# parameter names, declared once: save/load and requires_grad filtering work on these (PEFT style)
TRAINABLE_NAMES = ("lora_A", "lora_B", "router")
FROZEN_NAMES = ("frozen_A", "frozen_B", "frozen_router")
META_NAMES = ("expert_group", "expert_id", "expert_rank", "expert_trainable")
INIT_MODES = ("kaiming", "normal")


class MoELoRALinear(nn.Module):
    """A frozen linear layer with a routed, growable mixture of LoRA experts.

    ``h = W0 x + s · Σ_i w_i(x) B_i A_i dropout(x)`` with ``w`` the top-K softmax of the router scores at
    ``temperature`` and ``s = alpha / bank_rank``.

    Args:
        base: the wrapped linear layer (frozen in place; its weights are not copied).
        alpha: LoRA alpha.
        bank_rank: the rank that ``alpha`` is divided by (DyMoE: the per-task bank rank ``E_t · r``, dymoe.md §2.2).
        top_k: K, over all present experts; ``K >= E`` is a dense softmax.
        router: ``"linear"``, ``"cosine"`` or ``"none"``.
        temperature: softmax temperature of the routing (DyMoE: 0.01 with the cosine router).
        cos_scale: κ of the cosine router.
        dropout: dropout on the experts' input (the router sees the un-dropped input).
        init: ``"kaiming"`` (A kaiming-uniform a=√5 like PEFT / DyMoE) or ``"normal"`` (A ~ N(0, 0.01) like CoIN).
        param_dtype: dtype of the expert tensors; None = the base weight's. Keeping them in float32 under a bf16
            base (with autocast) gives fp32 master weights, as PEFT does.
        context: the shared :class:`RoutingContext` (one per model); a private one if None.
    """

    def __init__(
        self,
        base: nn.Linear,
        *,
        alpha: float = 128.0,
        bank_rank: int = 64,
        top_k: int = 16,
        router: str = "cosine",
        temperature: float = 0.01,
        cos_scale: float = 1.0,
        dropout: float = 0.05,
        init: str = "kaiming",
        param_dtype: torch.dtype | None = None,
        context: RoutingContext | None = None,
    ):
        super().__init__()
        if router not in ROUTER_MODES:
            raise ValueError(f"router must be one of {ROUTER_MODES}, got {router!r}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.alpha, self.bank_rank = float(alpha), int(bank_rank)
        self.scaling = self.alpha / self.bank_rank
        self.top_k, self.router_mode, self.temperature = int(top_k), router, float(temperature)
        self.cos_scale, self.init = float(cos_scale), init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.context = context if context is not None else RoutingContext()
        self.param_dtype = param_dtype
        self._next_expert_id = 0

        w = base.weight
        for name in FROZEN_NAMES + TRAINABLE_NAMES:
            self._set_param(name, self._empty(name, 0, self._pdtype(), w.device), trainable=name in TRAINABLE_NAMES)
        for name in META_NAMES:
            dtype = torch.bool if name == "expert_trainable" else torch.long
            self.register_buffer(name, torch.zeros(0, dtype=dtype, device=w.device))
        self._refresh()

    # ------------------------------------------------------------------ structure
    def _pdtype(self) -> torch.dtype:
        # once built, the bank's own dtype is the truth (model.to(dtype) converts it); at creation param_dtype
        if "frozen_router" in self._parameters:
            return self._parameters["frozen_router"].dtype
        return self.param_dtype or self.base.weight.dtype

    def _empty(self, name: str, rows: int, dtype, device) -> torch.Tensor:
        if name.endswith("_A") or name == "lora_A":
            return torch.zeros(rows, self.in_features, dtype=dtype, device=device)
        if name.endswith("_B") or name == "lora_B":
            return torch.zeros(self.out_features, rows, dtype=dtype, device=device)
        return torch.zeros(rows, self.in_features, dtype=dtype, device=device)  # router rows

    def _set_param(self, name: str, value: torch.Tensor, *, trainable: bool) -> None:
        # re-registering replaces the Parameter object: optimizers must be rebuilt after any growth step.
        # An empty trainable slot does not require grad, so "frozen model" checks stay simple.
        trainable = trainable and value.numel() > 0
        setattr(self, name, nn.Parameter(value.detach().clone() if trainable else value.detach(), requires_grad=trainable))

    def _refresh(self) -> None:
        # host-side copies of the bank's shape, so the forward never syncs with the device
        self._n_experts = int(self.expert_id.numel())
        self._n_frozen = int((~self.expert_trainable).sum())
        self._groups = list(dict.fromkeys(self.expert_group.tolist()))
        ranks = self.expert_rank.tolist()
        self._rank = ranks[0] if ranks and all(r == ranks[0] for r in ranks) else None

    @property
    def num_experts(self) -> int:
        return self._n_experts

    @property
    def num_frozen(self) -> int:
        return self._n_frozen

    @property
    def trainable_mask(self) -> torch.Tensor:
        """``[E]`` bool: true for experts of the trainable group (frozen experts come first)."""
        return self.expert_trainable

    @property
    def groups(self) -> list[int]:
        """Group ids present in this layer, in bank order."""
        return list(self._groups)

    @property
    def has_trainable_group(self) -> bool:
        return self._n_experts > self._n_frozen

    @torch.no_grad()
    def add_group(self, group_id: int, num_experts: int, rank: int, *, trainable: bool = True) -> list[int]:
        """Append a group of ``num_experts`` experts of rank ``rank``; returns their expert ids.

        A new trainable group has ``B = 0`` (the layer's output is unchanged), A initialised per ``init`` and
        router rows with the ``nn.Linear`` default (kaiming-uniform), dymoe.md §2.2. A frozen group
        (``trainable=False``) is appended to the frozen bank, e.g. when a checkpoint is rebuilt.
        """
        if num_experts <= 0 or rank <= 0:
            raise ValueError(f"num_experts and rank must be positive, got {num_experts}, {rank}")
        if group_id in self.groups:
            raise ValueError(f"group {group_id} already exists in this layer")
        if trainable and self.has_trainable_group:
            raise ValueError("the layer already has a trainable group; fold or freeze it first")
        w = self.base.weight
        dt = self._pdtype()
        a = torch.empty(num_experts * rank, self.in_features, dtype=torch.float32, device=w.device)
        if self.init == "kaiming":
            # PEFT's LoRA init; one fan-in per expert is the same as per row-block since fan_in = d_in
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        else:
            nn.init.normal_(a, std=0.01)
        b = torch.zeros(self.out_features, num_experts * rank, dtype=dt, device=w.device)
        u = torch.empty(num_experts, self.in_features, dtype=torch.float32, device=w.device)
        nn.init.kaiming_uniform_(u, a=math.sqrt(5))
        ids = list(range(self._next_expert_id, self._next_expert_id + num_experts))
        self._next_expert_id += num_experts
        meta = {
            "expert_group": torch.full((num_experts,), group_id, dtype=torch.long),
            "expert_id": torch.tensor(ids, dtype=torch.long),
            "expert_rank": torch.full((num_experts,), rank, dtype=torch.long),
            "expert_trainable": torch.full((num_experts,), trainable, dtype=torch.bool),
        }
        if trainable:
            self._set_param("lora_A", a.to(dt), trainable=True)
            self._set_param("lora_B", b, trainable=True)
            self._set_param("router", u.to(dt), trainable=True)
            for name, value in meta.items():
                setattr(self, name, torch.cat([getattr(self, name), value.to(w.device)]))
        else:
            # frozen experts go at the end of the frozen bank, before any trainable group
            nf = self.num_frozen
            self._set_param("frozen_A", torch.cat([self.frozen_A, a.to(dt)]), trainable=False)
            self._set_param("frozen_B", torch.cat([self.frozen_B, b], dim=1), trainable=False)
            self._set_param("frozen_router", torch.cat([self.frozen_router, u.to(dt)]), trainable=False)
            for name, value in meta.items():
                cur = getattr(self, name)
                setattr(self, name, torch.cat([cur[:nf], value.to(w.device), cur[nf:]]))
        self._refresh()
        return ids

    @torch.no_grad()
    def fold(self) -> None:
        """Move the trainable group into the frozen bank (rows of A, columns of B, router rows); no-op if none.

        The output is unchanged: the concatenated bank is the same, only ``requires_grad`` changes.
        """
        if not self.has_trainable_group:
            return
        self._set_param("frozen_A", torch.cat([self.frozen_A, self.lora_A.detach()]), trainable=False)
        self._set_param("frozen_B", torch.cat([self.frozen_B, self.lora_B.detach()], dim=1), trainable=False)
        self._set_param("frozen_router", torch.cat([self.frozen_router, self.router.detach()]), trainable=False)
        for name in TRAINABLE_NAMES:
            self._set_param(name, self._empty(name, 0, self.frozen_A.dtype, self.frozen_A.device), trainable=True)
        self.expert_trainable = torch.zeros_like(self.expert_trainable)
        self._refresh()

    @torch.no_grad()
    def prune(self, expert_ids: list[int]) -> None:
        """Remove the experts with these ids (their A rows, B columns and router rows) from either bank."""
        ids = torch.tensor(sorted(set(int(i) for i in expert_ids)), dtype=torch.long, device=self.expert_id.device)
        missing = ids[~torch.isin(ids, self.expert_id)]
        if missing.numel():
            raise ValueError(f"no experts with ids {missing.tolist()} in this layer")
        keep = ~torch.isin(self.expert_id, ids)  # [E]
        slot_keep = keep.repeat_interleave(self.expert_rank)  # [R]
        nf, nf_slots = self.num_frozen, int(self.expert_rank[: self.num_frozen].sum())
        fk, tk = keep[:nf], keep[nf:]
        fs, ts = slot_keep[:nf_slots], slot_keep[nf_slots:]
        self._set_param("frozen_A", self.frozen_A[fs], trainable=False)
        self._set_param("frozen_B", self.frozen_B[:, fs], trainable=False)
        self._set_param("frozen_router", self.frozen_router[fk], trainable=False)
        if self.has_trainable_group:
            self._set_param("lora_A", self.lora_A.detach()[ts], trainable=True)
            self._set_param("lora_B", self.lora_B.detach()[:, ts], trainable=True)
            self._set_param("router", self.router.detach()[tk], trainable=True)
        for name in META_NAMES:
            setattr(self, name, getattr(self, name)[keep])
        self._refresh()

    def structure(self) -> dict:
        """JSON-serialisable description of the bank (enough to rebuild empty tensors of the right shapes)."""
        return {
            "expert_group": self.expert_group.tolist(),
            "expert_id": self.expert_id.tolist(),
            "expert_rank": self.expert_rank.tolist(),
            "expert_trainable": self.expert_trainable.tolist(),
            "next_expert_id": self._next_expert_id,
        }

    @torch.no_grad()
    def load_structure(self, spec: dict) -> None:
        """Resize the banks to match :meth:`structure` output (contents zero; load the tensors afterwards)."""
        trainable = torch.tensor(spec["expert_trainable"], dtype=torch.bool)
        ranks = torch.tensor(spec["expert_rank"], dtype=torch.long)
        n_frozen = int((~trainable).sum())
        if bool(trainable[:n_frozen].any()):
            raise ValueError("frozen experts must come before trainable ones")
        fr, tr = int(ranks[:n_frozen].sum()), int(ranks[n_frozen:].sum())
        w = self.base.weight
        dt = self._pdtype()
        for name, rows in (("frozen_A", fr), ("frozen_B", fr), ("frozen_router", n_frozen)):
            self._set_param(name, self._empty(name, rows, dt, w.device), trainable=False)
        for name, rows in (("lora_A", tr), ("lora_B", tr), ("router", len(trainable) - n_frozen)):
            self._set_param(name, self._empty(name, rows, dt, w.device), trainable=True)
        self.expert_group = torch.tensor(spec["expert_group"], dtype=torch.long, device=w.device)
        self.expert_id = torch.tensor(spec["expert_id"], dtype=torch.long, device=w.device)
        self.expert_rank = ranks.to(w.device)
        self.expert_trainable = trainable.to(w.device)
        self._next_expert_id = int(spec.get("next_expert_id", max(spec["expert_id"], default=-1) + 1))
        self._refresh()

    # ------------------------------------------------------------------ forward
    def bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole bank, frozen experts first: ``A [R, d_in]``, ``B [d_out, R]``, ``U [E, d_in]``."""
        if not self.has_trainable_group:
            return self.frozen_A, self.frozen_B, self.frozen_router
        if self.num_frozen == 0:
            return self.lora_A, self.lora_B, self.router
        return (
            torch.cat([self.frozen_A, self.lora_A]),
            torch.cat([self.frozen_B, self.lora_B], dim=1),
            torch.cat([self.frozen_router, self.router]),
        )

    def gate_weights(
        self, x2d: torch.Tensor, batch: int, seq: int, router: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingEvent | None]:
        """Routing for ``x2d [N, d_in]`` (``N = batch * seq``): returns weights ``[N, E]`` fp32 and the event.

        ``router`` ``[E, d_in]``: the bank's router rows if the caller already has them (saves a concatenation).
        """
        u = self.bank()[2] if router is None else router
        ctx = self.context
        scores = router_scores(x2d, u, self.router_mode, self.cos_scale)  # [N, E] fp32
        adjusted = scores
        if ctx.policy is not None:
            adjusted = ctx.policy(adjusted, self)
        allowed = ctx.allowed_experts(self.expert_group, batch, seq, max(self._groups))
        if allowed is not None:
            adjusted = adjusted.masked_fill(~allowed, float("-inf"))
        if self.router_mode == "none":
            weights = route(adjusted, self.top_k, self.temperature, dense_ones=True)
        else:
            weights = route(adjusted, self.top_k, self.temperature)
        event = None
        if ctx.recording and ctx.observers:
            event = RoutingEvent(self, scores, adjusted, weights, ctx.token_mask(batch, seq))
        return weights, event

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_in]`` → ``[..., d_out]``."""
        out = self.base(x)
        if self.num_experts == 0:
            return out
        lead = x.shape[:-1]
        batch, seq = (lead[0], math.prod(lead[1:])) if len(lead) >= 2 else (1, math.prod(lead))
        x2d = x.reshape(-1, self.in_features)  # [N, d_in]
        a, b, u = self.bank()  # concatenated once per forward (frozen + trainable)
        weights, event = self.gate_weights(x2d, batch, seq, u)
        if event is not None:
            self.context.emit(event)
        ranks = self._rank if self._rank is not None else self.expert_rank
        # .to() is a no-op when dtypes agree; under autocast the GEMMs run in the autocast dtype anyway
        a, b = a.to(x.dtype), b.to(x.dtype)
        delta = moe_lora_delta(self.dropout(x2d), a, b, weights.to(x.dtype), ranks, self.scaling)  # [N, d_out]
        return out + delta.reshape(*lead, self.out_features).to(out.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts} "
            f"(frozen {self.num_frozen}), groups={self.groups}, router={self.router_mode}, top_k={self.top_k}, "
            f"T={self.temperature}, scaling={self.scaling:g}"
        )
