"""The fused mixture-of-LoRA-experts computation, as pure functions, plus the per-expert loop oracle.

Notation (one wrapped projection ``h = W0 x + Δ``):

- ``N`` tokens (batch × sequence flattened), ``d_in`` / ``d_out`` the projection's sizes;
- ``E`` experts, expert ``i`` a LoRA pair ``A_i ∈ R^{r_i × d_in}``, ``B_i ∈ R^{d_out × r_i}``;
- all experts are stored concatenated: ``A_cat = [A_1; …; A_E] ∈ R^{R × d_in}`` and
  ``B_cat = [B_1 … B_E] ∈ R^{d_out × R}`` with ``R = Σ r_i`` rank slots;
- gate weights ``w ∈ R^{N × E}`` (zero outside each token's top-K).

The delta is ``Δ = s · Σ_i w_i B_i A_i x``, computed as two GEMMs over the concatenated bank with the gates expanded
over each expert's rank slots (coin-protocol.md §8.2)::

    Δ = ((x @ A_cat.T) * expand(w)) @ B_cat.T * s

which has the FLOPs of one LoRA of rank R, and never forms the wrong ``(Σ g B)(Σ g A) x`` (§8.3).
The loop in :func:`moe_lora_delta_reference` exists for tests and benchmarks only.

At inference :func:`moe_lora_delta_sparse` computes the same sum over each token's top-K experts only (gathered
rank slots), which reads ``K/E`` of the bank when few tokens come at once (greedy decoding).

The FFN experts of :class:`~dymoe.layers.moe_ffn.MoEFFN` (SwiGLU, smoe-dsal.md §2) are fused the same way in three
GEMMs (:func:`moe_ffn_delta`, oracle :func:`moe_ffn_delta_reference`); :func:`at_route` and :func:`at_combine` are
the AT-Router's gates and output (Eqs. 5–6, 8, 11).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROUTER_MODES = ("linear", "cosine", "none")


def router_scores(
    x: torch.Tensor, weight: torch.Tensor, mode: str, cos_scale: float = 1.0, *, unit_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Raw routing scores (logits), in fp32.

    Args:
        x: token inputs ``[N, d_in]`` (any float dtype).
        weight: router rows ``[E, d_in]``, one per expert.
        mode: ``"linear"`` (``s = x·u``, bias-free), ``"cosine"`` (``s = κ·cos(x, u)``; κ ≤ 0 falls back to the dot
            product, as the upstream DyMoE code does) or ``"none"`` (all zeros: every expert weight 1, see
            :func:`route`).
        cos_scale: κ for the cosine router.
        unit_rows: ``F.normalize(weight.float(), dim=-1)`` if the caller already has it (cosine router: a frozen
            bank at inference normalises its rows once, not at every decoding step); same result either way.

    Returns:
        ``[N, E]`` fp32 scores.
    """
    if mode == "none":
        return x.new_zeros(x.shape[0], weight.shape[0], dtype=torch.float32)
    if mode not in ROUTER_MODES:
        raise ValueError(f"router mode must be one of {ROUTER_MODES}, got {mode!r}")
    # fp32 even under autocast: at T = 0.01 a bf16 score would make routing and TAG decisions coarse. (Entering the
    # autocast context costs tens of µs, a decoding step's whole budget for a small projection: only when needed.)
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return _scores_fp32(x, weight, mode, cos_scale, unit_rows)
    return _scores_fp32(x, weight, mode, cos_scale, unit_rows)


def _scores_fp32(x, weight, mode, cos_scale, unit_rows):
    xf = x.float()
    if mode == "cosine" and cos_scale > 0:
        # scores in [-κ, κ]; normalising in fp32 keeps tiny-norm tokens stable
        u = F.normalize(weight.float(), dim=-1) if unit_rows is None else unit_rows
        return F.normalize(xf, dim=-1) @ u.T * cos_scale
    return xf @ weight.float().T


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


def top_experts(weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` live experts of each token: ``(weights [N, k], expert ids [N, k])``.

    :func:`route` leaves at most ``top_k`` nonzero gates per token, so the ``k = top_k`` largest are all of them
    (a token with fewer allowed experts picks some zero gates, which add exactly nothing).
    """
    return weights.topk(min(int(k), weights.shape[-1]), dim=-1)


def moe_lora_delta_sparse(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b_t: torch.Tensor,
    top_w: torch.Tensor,
    top_idx: torch.Tensor,
    rank: int,
    scaling: float,
) -> torch.Tensor:
    """``Δ = s · Σ_i w_i B_i A_i x`` over each token's live experts only (the inference path).

    With top-K of E experts of rank r only ``K·r`` of the ``E·r`` rank slots carry a nonzero gate; this gathers
    those rows of ``A`` and of ``Bᵀ`` per token and runs two batched GEMVs, so the work and the bytes read are
    ``N·K·r·(d_in + d_out)`` instead of the dense path's ``E·r·(d_in + d_out)`` (bank) plus ``N·E·r·(d_in +
    d_out)`` (FLOPs). It pays when ``N·K`` is small against ``E`` (decoding); the gathered copies cost more than
    the dense GEMMs when many tokens come at once (prefill, training). Equal to :func:`moe_lora_delta` up to
    floating-point summation order.

    Args:
        x: ``[N, d_in]``.
        lora_a: ``[R, d_in]`` concatenated A's (expert ``e`` owns rows ``e·r … e·r + r - 1``).
        lora_b_t: ``[R, d_out]``: the concatenated B's transposed and contiguous, so that one expert's slots are
            contiguous rows (gathering columns of ``B [d_out, R]`` would read strided memory).
        top_w: ``[N, K]`` gates of the live experts (any dtype; cast to ``x``'s).
        top_idx: ``[N, K]`` expert ids (int64).
        rank: r, the same for every expert.
        scaling: ``s``.

    Returns:
        ``[N, d_out]`` in ``x``'s dtype.
    """
    n, k = top_idx.shape
    # slot ids of each token's live experts: [N, K, r] -> [N*K*r]
    slots = (top_idx.unsqueeze(-1) * rank + torch.arange(rank, device=top_idx.device)).reshape(-1)
    a_live = lora_a.index_select(0, slots).to(x.dtype).view(n, k * rank, -1)  # [N, K*r, d_in]
    h = torch.bmm(a_live, x.unsqueeze(-1)).view(n, k, rank)  # [N, K, r]: the live down-projections
    h = h * top_w.to(x.dtype).unsqueeze(-1)  # gate each live expert's slots
    b_live = lora_b_t.index_select(0, slots).to(x.dtype).view(n, k * rank, -1)  # [N, K*r, d_out]
    return torch.bmm(h.view(n, 1, k * rank), b_live).view(n, -1) * scaling  # [N, d_out]


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


# ---------------------------------------------------------------------------------------------------- FFN experts
#
# SwiGLU experts beside a frozen MLP block (smoe-dsal.md §2): expert ``i`` of width ``d'_i`` is
# ``E_i(x) = (silu(x W_gate,i^T) ∘ (x W_up,i^T)) W_down,i^T`` with ``W_gate,i, W_up,i ∈ R^{d'_i × d}`` and
# ``W_down,i ∈ R^{d × d'_i}``. Stored concatenated over the bank like the LoRA experts (``R = Σ d'_i`` slots):
# ``G_cat, U_cat ∈ R^{R × d}``, ``D_cat ∈ R^{d × R}``, so the gated sum is three GEMMs.


def moe_ffn_delta(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    weights: torch.Tensor,
    widths: torch.Tensor | int,
) -> torch.Tensor:
    """Fused ``Σ_i w_i E_i(x)`` in three GEMMs over the concatenated experts.

    Args:
        x: ``[N, d]``.
        w_gate, w_up: ``[R, d]`` concatenated gate / up projections.
        w_down: ``[d_out, R]`` concatenated down projections.
        weights: ``[N, E]`` gate weights (same dtype as ``x``; zero for experts a token does not use).
        widths: per-expert width (int) or ``[E]`` tensor.

    Returns:
        ``[N, d_out]`` in ``x``'s dtype.
    """
    total = w_gate.shape[0]
    h = F.silu(x @ w_gate.T) * (x @ w_up.T)  # [N, R]: every expert's hidden units at once
    h = h * expand_gates(weights, widths, total)  # [N, R]: gate each expert's slots
    return h @ w_down.T  # [N, d_out]


def moe_ffn_delta_reference(
    x: torch.Tensor,
    experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    weights: torch.Tensor,
) -> torch.Tensor:
    """Per-expert SwiGLU loop oracle. Tests and benchmarks only.

    Args:
        x: ``[N, d]``; experts[i]: ``(W_gate [d'_i, d], W_up [d'_i, d], W_down [d_out, d'_i])``; weights: ``[N, E]``.

    Returns:
        ``[N, d_out]``.
    """
    out = x.new_zeros(x.shape[0], experts[0][2].shape[0]) if experts else x.new_zeros(x.shape[0], 0)
    for i, (g, u, d) in enumerate(experts):
        out = out + weights[:, i : i + 1] * ((F.silu(x @ g.T) * (x @ u.T)) @ d.T)
    return out


def at_route(scores: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The AT-Router's gates (smoe-dsal.md §2, Eqs. 5–6): an adaptive threshold scored as an extra expert.

    Expert ``n`` is active for a token when ``s_n > α`` (strict); the softmax runs over ``{α} ∪ {s_n : n active}``,
    so ``α̃ = e^α / Z`` and ``s̃_n = e^{s_n} / Z`` with ``Z = e^α + Σ_active e^{s_n}``.

    Args:
        scores: ``[N, 1 + E]`` fp32 raw router outputs ``[α, s_1, …, s_E]``.
        valid: ``[N, E]`` bool, experts a token may use at all (its module's experts), or None for all.

    Returns:
        ``(alpha_w [N], weights [N, E], k [N])``: ``α̃``, ``s̃`` (0 for inactive experts) and ``k = |A_t|`` (int64).
    """
    alpha, s = scores[:, :1], scores[:, 1:]
    active = s > alpha  # [N, E]
    if valid is not None:
        active = active & valid
    logits = torch.cat([alpha, s.masked_fill(~active, float("-inf"))], dim=-1)  # [N, 1 + E]
    p = torch.softmax(logits, dim=-1)
    return p[:, 0], p[:, 1:], active.sum(-1)


def at_combine(
    ffn: torch.Tensor, experts: torch.Tensor, alpha_w: torch.Tensor, k: torch.Tensor, scale_by_count: bool = True
) -> torch.Tensor:
    """Eq. 11: ``ȟ = (1 + k) · (Σ s̃ E + α̃ · FFN)``; without ``scale_by_count`` (ablation 5) the ``(1 + k)`` goes.

    Args:
        ffn: ``[N, d]`` the frozen block's output; experts: ``[N, d]`` the gated expert sum ``Σ s̃ E``;
        alpha_w: ``[N]`` ``α̃``; k: ``[N]`` active experts per token.

    Returns:
        ``[N, d]`` in fp32 (fp64 for fp64 inputs). With ``k = 0`` (``α̃ = 1``, no expert) this is exactly ``ffn``.
    """
    dt = torch.promote_types(ffn.dtype, torch.float32)
    out = experts.to(dt) + alpha_w[:, None].to(dt) * ffn.to(dt)
    if scale_by_count:
        out = out * (1 + k).to(out.dtype)[:, None]
    return out
