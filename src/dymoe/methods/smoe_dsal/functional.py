"""SMoE-DSAL's math as pure functions (smoe-dsal.md §3–§4): the virtual expert, the soft labels, the DSAL loss in
its efficient form (with the naive ``T × V`` oracle for tests), the expert-balance loss L3 and the top-K loss L4.

Shapes: ``B`` samples, ``T`` positions, ``d`` hidden size, ``V`` vocabulary, ``d_p`` projector width, ``N_e``
experts of a module, ``d'`` expert width.

The efficient DSAL (smoe-dsal.md §3, proposed): with the projector ``P(x) = x A + b`` the predicted distribution
at position ``t`` is ``softmax(W̄ h̄_t)`` with ``W̄ = W_em A + b`` ``[V, d_p]`` and ``h̄_t = P(E_V(ĥ_t))``; against
the soft label ``p_{t+1}`` (a distribution) the cross-entropy is ``logsumexp(W̄ h̄_t) − (ē_{t+1} A + b) · h̄_t``
where ``ē = p^T W_em`` ``[d]`` is the label's *expected embedding*, precomputed once per sample. Only the
logsumexp needs the ``V`` logits: :class:`ChunkedLogSumExp` computes it in chunks of positions and recomputes the
chunk's softmax in backward, so neither pass holds more than ``chunk × V`` logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BALANCE_FREQUENCIES = ("share", "per_token")


def virtual_expert(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                   num_experts: int) -> torch.Tensor:
    """Eq. 7 with parameter-averaged weights (the virtual expert ``E_V``, smoe-dsal.md §3; differentiable, so every
    expert gets DSAL's gradient).

    Args:
        x: ``[N, d]`` FFN inputs.
        w_gate, w_up: ``[N_e · d', d]`` the module's experts concatenated (:meth:`MoEFFN.group_tensors`).
        w_down: ``[d_out, N_e · d']``.
        num_experts: ``N_e``.

    Returns:
        ``[N, d_out]``: ``(silu(x W̄_gate) ∘ (x W̄_up)) W̄_down`` with ``W̄ = (1/N_e) Σ_n W^{(n)}``.
    """
    width = w_gate.shape[0] // num_experts
    g = w_gate.reshape(num_experts, width, -1).mean(0)  # [d', d]
    u = w_up.reshape(num_experts, width, -1).mean(0)  # [d', d]
    dn = w_down.reshape(w_down.shape[0], num_experts, width).mean(1)  # [d_out, d']
    dt = x.dtype
    return (F.silu(x @ g.to(dt).T) * (x @ u.to(dt).T)) @ dn.to(dt).T


@torch.no_grad()
def expected_embeddings(h0: torch.Tensor, w_em: torch.Tensor, temperature: float = 1.0,
                        chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft labels ``P = softmax(H⁽⁰⁾ W_emᵀ / τ)`` (smoe-dsal.md §3, A5) reduced to what the loss needs.

    Args:
        h0: ``[M, d]`` the language model's input sequence rows (token embeddings, connector outputs at image
            positions).
        w_em: ``[V, d]`` the input embedding matrix.
        temperature: ``τ`` (the paper's is unstated: 1).
        chunk: rows per chunk (never more than ``chunk × V`` logits at once).

    Returns:
        ``(ē [M, d], entropy [M])`` fp32 (fp64 for fp64 inputs): each row's expected embedding ``p^T W_em`` and the entropy of ``p``
        (logged: small-norm embeddings give near-uniform labels).
    """
    dt = torch.promote_types(h0.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    w = w_em.to(dt)
    out, ent = [], []
    for s in range(0, h0.shape[0], chunk):
        logits = h0[s : s + chunk].to(dt) @ w.T / temperature  # [c, V]
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        out.append(p @ w)
        ent.append(-(p * logp).sum(-1))
    if not out:
        return h0.new_zeros(0, w.shape[1], dtype=dt), h0.new_zeros(0, dtype=dt)
    return torch.cat(out), torch.cat(ent)


class ChunkedLogSumExp(torch.autograd.Function):
    """``logsumexp(h W̄ᵀ, dim=-1)`` ``[N]`` for ``h [N, d_p]``, ``W̄ [V, d_p]``, ``chunk`` rows at a time; backward
    recomputes each chunk's softmax (``∂/∂h = softmax · W̄``, ``∂/∂W̄ = softmaxᵀ · h``) instead of saving logits."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
        out = torch.cat([torch.logsumexp(h[s : s + chunk] @ w.T, dim=-1) for s in range(0, h.shape[0], chunk)]) \
            if h.shape[0] else h.new_zeros(0)
        ctx.save_for_backward(h, w, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w, lse = ctx.saved_tensors
        gh = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        c = ctx.chunk
        for s in range(0, h.shape[0], c):
            p = torch.exp(h[s : s + c] @ w.T - lse[s : s + c, None]) * grad[s : s + c, None]  # [c, V]
            if gh is not None:
                gh[s : s + c] = p @ w
            if gw is not None:
                gw += p.T @ h[s : s + c]
        return gh, gw, None


def pair_mask(prompt_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` bool: position ``t`` predicts ``t + 1`` and both are prompt tokens (Eq. 3's ``t = 2..T``)."""
    return prompt_mask[:, :-1] & prompt_mask[:, 1:]


def dsal_loss(h: torch.Tensor, e_bar: torch.Tensor, prompt_mask: torch.Tensor, w_em: torch.Tensor,
              experts: dict[str, torch.Tensor], num_experts: int, proj_w: torch.Tensor, proj_b: torch.Tensor,
              *, chunk: int = 256) -> torch.Tensor:
    """Per-sample DSAL of one module on one layer (Eqs. 2–3), efficient form (see the module docstring).

    Args:
        h: ``[B, T, d]`` the layer's FFN input ``Ĥ⁽ˡ⁾``.
        e_bar: ``[B, T, d]`` the soft labels' expected embeddings (:func:`expected_embeddings`).
        prompt_mask: ``[B, T]`` bool, the instruction (prompt) tokens, image positions included, padding excluded.
        w_em: ``[V, d]`` the input embedding matrix (frozen).
        experts: the module's ``w_gate``, ``w_up``, ``w_down`` (:meth:`MoEFFN.group_tensors`).
        num_experts: ``N_e``.
        proj_w, proj_b: the projector ``A [d_p, d]`` (``nn.Linear`` layout) and ``b [d_p]``.
        chunk: positions per logsumexp chunk.

    Returns:
        ``[B]`` fp32 (fp64 for fp64 inputs): each sample's mean soft-label cross-entropy over its prompt pairs (0 for a sample without any).
    """
    pairs = pair_mask(prompt_mask)  # [B, T-1]
    b_idx, t_idx = pairs.nonzero(as_tuple=True)  # [M]
    x = h[b_idx, t_idx]  # [M, d] inputs predicting the next position
    dt = torch.promote_types(h.dtype, torch.float32)  # the loss in fp32 (fp64 for fp64 inputs)
    hv = virtual_expert(x, experts["w_gate"], experts["w_up"], experts["w_down"], num_experts).to(dt)  # [M, d]
    a, b = proj_w.to(dt), proj_b.to(dt)
    hbar = hv @ a.T + b  # [M, d_p]
    w_bar = w_em.to(dt) @ a.T + b  # [V, d_p]
    target = e_bar[b_idx, t_idx + 1].to(dt) @ a.T + b  # [M, d_p]: p^T W̄ = ē A + b (p sums to 1)
    per = ChunkedLogSumExp.apply(hbar, w_bar, chunk) - (target * hbar).sum(-1)  # [M]
    n = pairs.sum(1).clamp_min(1).to(dt)  # [B]
    return torch.zeros(h.shape[0], device=h.device, dtype=dt).index_add(0, b_idx, per) / n


def dsal_loss_naive(h: torch.Tensor, h0: torch.Tensor, prompt_mask: torch.Tensor, w_em: torch.Tensor,
                    experts: dict[str, torch.Tensor], num_experts: int, proj_w: torch.Tensor, proj_b: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """Eq. 3 as written, with the full ``T × V`` soft labels and predictions. Tests and benchmarks only.

    Args: as :func:`dsal_loss`, but ``h0 [B, T, d]`` the input sequence itself instead of the expected embeddings.

    Returns:
        ``[B]``.
    """
    dt = torch.promote_types(h.dtype, torch.float32)
    p = torch.softmax(h0.to(dt) @ w_em.to(dt).T / temperature, dim=-1)  # [B, T, V]
    hv = virtual_expert(h, experts["w_gate"], experts["w_up"], experts["w_down"], num_experts).to(dt)
    hbar = hv @ proj_w.to(dt).T + proj_b.to(dt)  # [B, T, d_p]
    w_bar = w_em.to(dt) @ proj_w.to(dt).T + proj_b.to(dt)  # [V, d_p]
    logq = torch.log_softmax(hbar @ w_bar.T, dim=-1)  # [B, T, V]: q_{t+1} from position t
    ce = -(p[:, 1:] * logq[:, :-1]).sum(-1)  # [B, T-1]
    pairs = pair_mask(prompt_mask).float()
    return (ce * pairs).sum(1) / pairs.sum(1).clamp_min(1)


def balance_loss(scores: torch.Tensor, threshold: torch.Tensor, weights: torch.Tensor,
                 token_mask: torch.Tensor | None = None, frequency: str = "share") -> torch.Tensor | None:
    """L_Bal of one module in one layer (Eq. 14, smoe-dsal.md §4, A8).

    Args:
        scores: ``[N, N_e]`` raw expert scores ``s``; threshold: ``[N]`` raw ``α`` (both before Act).
        weights: ``[N, N_e]`` gates after Act (non-zero = activated).
        token_mask: ``[N]`` bool, tokens that count (None: all).
        frequency: ``share`` (``f_n = count_n / Σ count``, proposed) or ``per_token`` (``count_n / |B|``).

    Returns:
        ``-(1/N_e) Σ_n [1(f_n < 1/N_e) log p̂_n + 1(f_n ≥ 1/N_e) log(1 − p̂_n)]`` with ``p̂_n = σ(s̄_n − ᾱ)``, or None
        when no expert fires (or no token counts).
    """
    if token_mask is not None:
        scores, threshold, weights = scores[token_mask], threshold[token_mask], weights[token_mask]
    if scores.shape[0] == 0:
        return None
    counts = (weights > 0).float().sum(0)  # [N_e]
    if float(counts.sum()) == 0:
        return None
    n_e = scores.shape[1]
    f = counts / counts.sum() if frequency == "share" else counts / scores.shape[0]
    z = scores.float().mean(0) - threshold.float().mean()  # [N_e] s̄_n − ᾱ
    under = f < 1.0 / n_e
    # log σ(z) and log(1 − σ(z)) = log σ(−z), stable
    return -torch.where(under, F.logsigmoid(z), F.logsigmoid(-z)).sum() / n_e


def topk_loss(scores: torch.Tensor, threshold: torch.Tensor, weights: torch.Tensor, target: float,
              token_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """L_topk of one module in one layer (App. C): pushes the mean activated experts per token ``k`` to ``K``.

    Returns:
        ``-(1(k < K) log p̂ + 1(k > K) log(1 − p̂))`` with ``p̂ = σ(mean_n s̄_n − ᾱ)`` (0 when ``k = K``), or None
        without tokens.
    """
    if token_mask is not None:
        scores, threshold, weights = scores[token_mask], threshold[token_mask], weights[token_mask]
    if scores.shape[0] == 0:
        return None
    k = float((weights > 0).float().sum(-1).mean())
    z = scores.float().mean() - threshold.float().mean()
    if k < target:
        return -F.logsigmoid(z)
    if k > target:
        return -F.logsigmoid(-z)
    return z * 0.0
