"""LLaVA-DyMoE's math as pure functions: TAG, the drift-analysis masks, RSR, load balancing, the RSR ramp.

Notation (one wrapped projection, dymoe.md §4–§7): ``N`` tokens, ``E`` experts present (old/frozen ones first),
``new_mask [E]`` bool true for the experts of the group being trained. ``scores [N, E]`` are the raw routing scores
(cosine router: in ``[-κ, κ]``) before any temperature, top-K or masking. Everything is computed in fp32.

Wherever a function takes ``new_mask`` it also takes a Python ``int`` ``k`` instead, meaning "the first ``k``
experts are old, the rest new", which is how :class:`~dymoe.layers.MoELoRALinear` lays out its bank (frozen
experts first, the trainable group last). The int form slices columns instead of boolean-indexing them: the same
numbers, but no device synchronisation and no gather, which is what the training hot path uses.

The plugin :mod:`dymoe.methods.dymoe.method` wires these into the expert layers; nothing here knows about layers or tasks.
"""

from __future__ import annotations

import torch

from dymoe.layers.functional import route

NEG_INF = float("-inf")
ANALYSIS_MODES = ("none", "only_new", "mask_old", "only_ambiguous", "tag")
#: load-balancing readings (see :func:`load_balance_loss`); ``switch`` is the older name of ``switch_local``
AUX_TYPES = ("switch_all", "switch_new", "group", "switch_local", "switch", "cv2", "none")
_CLAMP = 1e-8  # log clamp of L_spe (upstream)


def _check_groups(scores: torch.Tensor, new_mask: torch.Tensor | int) -> None:
    if isinstance(new_mask, int):
        if scores.dim() != 2 or not 0 < new_mask < scores.shape[1]:
            raise ValueError(f"TAG/RSR need both an old and a new expert group: {new_mask} old experts of "
                             f"scores {tuple(scores.shape)} (expected [N, E] and 0 < old < E)")
        return
    if scores.dim() != 2 or new_mask.shape != (scores.shape[1],):
        raise ValueError(f"expected scores [N, E] and new_mask [E], got {tuple(scores.shape)} and {tuple(new_mask.shape)}")
    n_new = int(new_mask.sum())
    if n_new == 0 or n_new == new_mask.numel():
        raise ValueError("TAG/RSR need both an old and a new expert group (new_mask is all false or all true)")


def _split(x: torch.Tensor, new_mask: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x[:, old] [N, E_old], x[:, new] [N, E_new])``; slices for an int ``new_mask``."""
    if isinstance(new_mask, int):
        return x[:, :new_mask], x[:, new_mask:]
    return x[:, ~new_mask], x[:, new_mask]


def group_maxima(scores: torch.Tensor, new_mask: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token maximum raw score of each group.

    Args:
        scores: ``[N, E]`` raw scores; new_mask: ``[E]`` bool, or the number of (leading) old experts.

    Returns:
        ``(c_old [N], c_new [N])`` fp32.
    """
    _check_groups(scores, new_mask)
    s_old, s_new = _split(scores.float(), new_mask)
    return s_old.amax(dim=-1), s_new.amax(dim=-1)  # [N], [N]


def relative_difference(c_old: torch.Tensor, c_new: torch.Tensor) -> torch.Tensor:
    """``D_rel = |c_new − c_old| / max(|c_new|, |c_old|)``, and 0 where both are 0 (the upstream form, no ε).

    Args:
        c_old, c_new: ``[N]``.

    Returns:
        ``[N]`` fp32, in ``[0, 2]``.
    """
    denom = torch.maximum(c_new.abs(), c_old.abs())  # [N]
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, (c_new - c_old).abs() / safe, torch.zeros_like(denom))


@torch.no_grad()
def tag_decision(
    scores: torch.Tensor, new_mask: torch.Tensor | int, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token typing of TAG (dymoe.md §4): which tokens may use the new group.

    ``ambiguous ⇔ D_rel ≤ τ`` and ``use_new ⇔ D_rel > τ ∧ c_new > c_old``; the remaining tokens (``D_rel > τ`` and
    ``c_old ≥ c_new``) are *old* tokens. The decision is hard (no gradient).

    Args:
        scores: ``[N, E]`` raw scores; new_mask: ``[E]`` bool or the number of old experts (both groups
            non-empty); tau: threshold τ.

    Returns:
        ``(use_new [N] bool, ambiguous [N] bool, d_rel [N] fp32)``.
    """
    c_old, c_new = group_maxima(scores, new_mask)
    d_rel = relative_difference(c_old, c_new)  # [N]
    ambiguous = d_rel <= tau
    use_new = ~ambiguous & (c_new > c_old)
    return use_new, ambiguous, d_rel


def _mask_groups(
    scores: torch.Tensor, new_mask: torch.Tensor | int, block_new: torch.Tensor, block_old: torch.Tensor | None
) -> torch.Tensor:
    """``-inf`` on the new group for tokens in ``block_new [N]`` and on the old group for ``block_old [N]``."""
    if isinstance(new_mask, int):
        s_old, s_new = scores[:, :new_mask], scores[:, new_mask:]
        if block_old is not None:
            s_old = s_old.masked_fill(block_old[:, None], NEG_INF)
        return torch.cat([s_old, s_new.masked_fill(block_new[:, None], NEG_INF)], dim=1)
    mask = block_new[:, None] & new_mask[None, :]  # [N, E]
    if block_old is not None:
        mask = mask | (block_old[:, None] & ~new_mask[None, :])
    return scores.masked_fill(mask, NEG_INF)


def tag_mask(scores: torch.Tensor, new_mask: torch.Tensor | int, tau: float, two_sided: bool = True) -> torch.Tensor:
    """TAG's score adjustment, applied before top-K and softmax (dymoe.md §4, A2).

    Old-dominant and ambiguous tokens get ``-inf`` on every new expert. New-dominant tokens get ``-inf`` on every
    old expert when ``two_sided`` (upstream: each token's routing mass lies in exactly one group); one-sided keeps
    both groups for them. ``masked_fill`` passes no gradient to masked entries, so the new router and experts get
    no task-loss gradient from tokens kept off the new group.

    Args:
        scores: ``[N, E]`` raw scores; new_mask: ``[E]`` bool or the number of old experts; tau: τ;
            two_sided: also mask old experts for new tokens.

    Returns:
        ``[N, E]`` scores with ``-inf`` where a token may not route.
    """
    use_new, _, _ = tag_decision(scores, new_mask, tau)
    return _mask_groups(scores, new_mask, ~use_new, use_new if two_sided else None)


def analysis_mask(
    scores: torch.Tensor, new_mask: torch.Tensor | int, tau: float, mode: str, two_sided: bool = True
) -> torch.Tensor:
    """The routing-drift conditions of Fig. 1 (dymoe.md §11) as score policies.

    Tokens are typed as in :func:`tag_decision`; a masked type gets ``-inf`` on the new group:

    - ``none``: nothing masked (the IncMoELoRA baseline);
    - ``only_new``: only new tokens may reach the new group (old and ambiguous masked);
    - ``mask_old``: old tokens masked (new and ambiguous allowed);
    - ``only_ambiguous``: only ambiguous tokens may reach the new group (new and old masked);
    - ``tag``: :func:`tag_mask` (``two_sided`` as given).

    Args:
        scores: ``[N, E]`` raw scores; new_mask: ``[E]`` bool or the number of old experts; tau: τ;
            mode: one of ``ANALYSIS_MODES``.

    Returns:
        ``[N, E]`` adjusted scores.
    """
    if mode not in ANALYSIS_MODES:
        raise ValueError(f"token mask mode must be one of {ANALYSIS_MODES}, got {mode!r}")
    if mode == "none":
        return scores
    if mode == "tag":
        return tag_mask(scores, new_mask, tau, two_sided)
    use_new, ambiguous, _ = tag_decision(scores, new_mask, tau)
    old = ~use_new & ~ambiguous
    block = {"only_new": ~use_new, "mask_old": old, "only_ambiguous": ~ambiguous}[mode]
    return _mask_groups(scores, new_mask, block, None)


def masked_token_mean(values: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values [N]`` over tokens with ``token_mask [N]`` true, denominator ``max(Σ mask, 1)``; plain mean if None."""
    if token_mask is None:
        return values.mean()
    m = token_mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def rsr_weights(scores: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """RSR's routing weights ``w̃``: top-K of the raw scores, softmax at ``temperature`` over them, 0 elsewhere.

    Args:
        scores: ``[N, E]`` raw (unmasked) scores; top_k: K (clipped to E); temperature: T_rsr.

    Returns:
        ``[N, E]`` fp32, rows summing to 1.
    """
    return route(scores.float(), top_k, temperature)


def rsr_losses(
    scores: torch.Tensor,
    new_mask: torch.Tensor | int,
    token_mask: torch.Tensor | None,
    top_k: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing Score Regularization of one module (dymoe.md §5), on the unmasked scores.

    With ``w̃`` from :func:`rsr_weights`, ``g_old = Σ_old w̃``, ``g_new = Σ_new w̃``:

    - ``L_exc = mean(g_old · g_new)``;
    - ``y = clamp(1 − max_old w̃, 0, 1)`` (detached) and
      ``L_spe = mean(−[y·log(max(g_new, 1e-8)) + (1 − y)·log(max(1 − g_new, 1e-8))])``;

    both masked means over tokens (denominator ``max(Σ mask, 1)``), in fp32.

    Args:
        scores: ``[N, E]`` raw scores; new_mask: ``[E]`` bool or the number of old experts (both groups
        non-empty); token_mask: ``[N]`` bool or None (all tokens); top_k: K; temperature: T_rsr.

    Returns:
        ``(L_exc, L_spe)`` scalars.
    """
    _check_groups(scores, new_mask)
    w = rsr_weights(scores, top_k, temperature)  # [N, E]
    w_old, w_new = _split(w, new_mask)  # [N, E_old], [N, E_new]
    g_new = w_new.sum(dim=-1)  # [N]
    g_old = w_old.sum(dim=-1)  # [N]
    l_exc = masked_token_mean(g_old * g_new, token_mask)
    y = (1.0 - w_old.detach().amax(dim=-1)).clamp(0.0, 1.0)  # [N]
    bce = -(y * g_new.clamp_min(_CLAMP).log() + (1.0 - y) * (1.0 - g_new).clamp_min(_CLAMP).log())  # [N]
    return l_exc, masked_token_mean(bce, token_mask)


def _masked_importance(p: torch.Tensor, m: torch.Tensor, n_tok: torch.Tensor) -> torch.Tensor:
    """``P [E]``: the masked token mean of routing probabilities ``p [N, E]`` (``m [N]`` float, ``n_tok`` scalar)."""
    return (p * m[:, None]).sum(0) / n_tok


@torch.no_grad()
def _dispatch_fraction(s: torch.Tensor, k: int, m: torch.Tensor, n_tok: torch.Tensor) -> torch.Tensor:
    """``f [E]``: the fraction of (token, slot) assignments of each expert under top-``k`` of ``s [N, E]``.

    Normalised by ``k`` so that ``Σ f = 1`` (DeepSpeed's top-k gating; the fraction of tokens whose top-K selects
    expert i is ``K·f_i``). No gradient (the top-K choice is discrete).
    """
    top_idx = s.topk(k, dim=-1).indices  # [N, k]
    hits = torch.zeros_like(s).scatter(-1, top_idx, 1.0)  # [N, E]
    return (hits * m[:, None]).sum(0) / (n_tok * k)


def _constant_one(scores: torch.Tensor) -> torch.Tensor:
    # the loss is the constant 1 with zero gradient: skip the softmax and top-K, stay attached like the full form
    return scores.float().sum() * 0.0 + 1.0


def _group_onehot(new_mask: torch.Tensor | int, e: int, groups: torch.Tensor | None, device) -> torch.Tensor:
    """``[E, G]`` float membership of experts in balance groups: ``groups`` as given, else old / new (G = 2)."""
    if groups is not None:
        return groups.to(device=device, dtype=torch.float32)
    if isinstance(new_mask, int):
        is_new = torch.arange(e, device=device) >= new_mask
    else:
        is_new = new_mask.to(device)
    return torch.stack([~is_new, is_new], dim=1).float()  # [E, 2]


def load_balance_loss(
    scores: torch.Tensor,
    new_mask: torch.Tensor | int,
    token_mask: torch.Tensor | None,
    top_k: int,
    temperature: float,
    kind: str = "switch_all",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The load-balancing loss L_aux of one module (dymoe.md §6), on the unmasked raw scores, in fp32.

    The paper trains with "the standard load balancing loss applied only to new experts" at 1e-3 and does not give
    its form. Readings (``p = softmax(s / T)`` over **all** ``E`` experts, ``P_i`` its masked token mean; ``f_i``
    the fraction of (token, slot) assignments of expert ``i`` under top-``K`` over all experts, ``Σ_i f_i = 1``,
    no gradient; ``f`` = ``P`` = uniform gives 1 for every Switch form):

    - ``switch_all``: ``E · Σ_{i ≤ E} f_i · P_i``: the Switch loss of the whole layer. Only the trainable group can
      move, so only it is balanced against the frozen experts ("applied only to new experts" by the freeze).
    - ``switch_new``: ``E · Σ_{i ∈ new} f_i · P_i``: the same terms, summed over the trainable group only.
    - ``group``: ``G · Σ_g f_g · P_g`` with ``f_g = Σ_{i∈g} f_i`` and ``P_g = Σ_{i∈g} P_i`` over expert groups
      (``groups [E, G]`` membership, e.g. one group per task; default: the old and the new group, G = 2): the
      balance of load across groups, blind to the balance inside each.
    - ``switch_local`` (``switch`` is its older name): ``E_new · Σ_{i∈new} f_i · P_i`` with ``p`` the softmax
      over the new group only and ``f`` its top-``min(K, E_new)``. When ``K ≥ E_new`` (the papers' 16 of 16) every
      token selects every new expert, ``f ≡ 1/E_new``, and the loss is the constant ``Σ P_i = 1``: no gradient.
    - ``cv2``: ``CV²(P) = var(P) / (mean(P)² + 1e-10)`` over the new group's softmax (unbiased variance, Shazeer
      et al.'s importance loss); 0 for a single new expert.
    - ``none``: 0.

    ``switch_all`` is also constant when ``K ≥ E`` (the first task at the papers' settings: top-16 of 16 experts),
    and ``group`` with a single group: both return 1 with zero gradient then.

    Args:
        scores: ``[N, E]`` raw scores; new_mask: ``[E]`` bool (may be all true, e.g. on the first task), or the
            number of (leading) old experts (``0 <= k < E``); token_mask: ``[N]`` bool or None (all tokens);
            top_k: K; temperature: the routing temperature; kind: see above; groups: ``[E, G]`` bool/float
            membership for ``group`` (None: old / new).

    Returns:
        a scalar (fp32).
    """
    if kind not in AUX_TYPES:
        raise ValueError(f"aux loss type must be one of {AUX_TYPES}, got {kind!r}")
    if kind == "none":
        return scores.new_zeros((), dtype=torch.float32)
    e = scores.shape[1]
    if isinstance(new_mask, int):
        if not 0 <= new_mask < e:
            raise ValueError(f"load balancing: {new_mask} old experts of scores {tuple(scores.shape)}; expected 0 <= k < E")
        n_new = e - new_mask
    else:
        n_new = int(new_mask.sum())
    if n_new == 0:
        return scores.new_zeros((), dtype=torch.float32)
    if kind == "switch":
        kind = "switch_local"
    k = min(int(top_k), e)
    if (kind == "switch_local" and int(top_k) >= n_new) or (kind == "switch_all" and k >= e):
        return _constant_one(scores)
    if kind == "group" and (groups.shape[1] < 2 if groups is not None else n_new == e):
        return _constant_one(scores)  # a single group
    s = scores.float()
    m = torch.ones(s.shape[0], device=s.device) if token_mask is None else token_mask.float()  # [N]
    n_tok = m.sum().clamp_min(1.0)
    if kind in ("switch_local", "cv2"):
        s_new = _split(s, new_mask)[1]  # [N, E_new]
        importance = _masked_importance(torch.softmax(s_new / temperature, dim=-1), m, n_tok)  # P [E_new]
        if kind == "cv2":
            if n_new < 2:
                return importance.new_zeros(())
            return importance.var() / (importance.mean() ** 2 + 1e-10)
        frac = _dispatch_fraction(s_new, min(int(top_k), n_new), m, n_tok)  # f [E_new]
        return n_new * (frac * importance).sum()
    importance = _masked_importance(torch.softmax(s / temperature, dim=-1), m, n_tok)  # P [E]
    frac = _dispatch_fraction(s, k, m, n_tok)  # f [E]
    if kind == "switch_all":
        return e * (frac * importance).sum()
    if kind == "switch_new":
        return e * _split((frac * importance)[None, :], new_mask)[1].sum()
    member = _group_onehot(new_mask, e, groups, s.device)  # [E, G]
    return member.shape[1] * ((frac @ member) * (importance @ member)).sum()


def rsr_ramp(progress: float, start: float) -> float:
    """RSR weight schedule ρ(p) (dymoe.md §7): 0 for ``p < start``, then linear to 1 at ``p = 1``.

    ``start = 0`` gives 1 everywhere (the paper's plain weights); ``p`` is clipped to ``[0, 1]``.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if start <= 0:
        return 1.0
    if p < start:
        return 0.0
    return (p - start) / (1.0 - start) if start < 1 else 0.0


def least_activated(frequency: torch.Tensor, fraction: float) -> torch.Tensor:
    """Positions of the ``round(fraction · E)`` least-activated experts (dymoe.md §12.3), at most ``E − 1``.

    Ties are broken by position (the earlier expert goes first), so the choice is deterministic.

    Args:
        frequency: ``[E]`` activation frequencies of one module's candidate experts; fraction: in ``[0, 1)``.

    Returns:
        ``[n]`` long positions into ``frequency``, sorted ascending.
    """
    e = frequency.numel()
    n = min(int(round(fraction * e)), max(e - 1, 0))
    order = torch.sort(frequency.float().cpu(), stable=True).indices  # ascending, ties by position
    return order[:n].sort().values
