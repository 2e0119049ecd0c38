"""The regularisers of the continual-learning baselines, as pure functions (coin-protocol.md §7).

Nothing here knows about models, adapters or tasks: tensors in, tensors out, so every formula is unit-tested against
hand computations. The method plugins (:mod:`dymoe.methods.ewc`, :mod:`.lwf`, :mod:`.olora`) gather the tensors and
call these.

- EWC (§7.5): :func:`ewc_penalty` ``(λ/2) Σ F (θ − θ*)²``, its gradient :func:`ewc_penalty_grad`, and the diagonal
  Fisher bookkeeping :func:`add_squared_grads` / :func:`merge_fisher`;
- LwF (§7.6): :func:`distillation_kl`, ``T² · KL(softmax(z_old/T) ‖ softmax(z/T))`` over answer tokens with the
  causal shift;
- O-LoRA (§7.4): :func:`orthogonality_l1` ``Σ |A_old · A_newᵀ|`` and :func:`lora_l2` ``‖A‖_F + ‖B‖_F``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------- EWC
def ewc_penalty(
    params: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor],
    lam: float,
) -> torch.Tensor:
    """Elastic weight consolidation: ``(λ/2) Σ_k Σ_j F_kj (θ_kj − θ*_kj)²``.

    Args:
        params: current tensors θ by name (any shapes; differentiable).
        fisher: diagonal Fisher F by name, same shapes as ``params`` (accumulated over past tasks).
        anchor: θ* by name (the values after the last task), same shapes.
        lam: λ.

    Returns:
        a scalar in ``float32`` on the device of the first parameter (0 if ``params`` is empty). Its gradient with
        respect to θ is :func:`ewc_penalty_grad`. Names missing from ``fisher``/``anchor`` are a ``KeyError``.
    """
    total = None
    for name, theta in params.items():
        diff = theta.float() - anchor[name].to(theta.device, torch.float32)  # same shape as θ
        term = (fisher[name].to(theta.device, torch.float32) * diff.square()).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def ewc_penalty_grad(
    params: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor],
    lam: float,
) -> dict[str, torch.Tensor]:
    """Analytic gradient of :func:`ewc_penalty`: ``λ · F · (θ − θ*)`` per tensor (float32, θ's shape).

    This is also what Prism injects into ``.grad`` after backward instead of adding the penalty to the loss.
    """
    return {
        name: lam * fisher[name].to(theta.device, torch.float32)
        * (theta.detach().float() - anchor[name].to(theta.device, torch.float32))
        for name, theta in params.items()
    }


def add_squared_grads(
    running: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor | None]
) -> dict[str, torch.Tensor]:
    """One Fisher sample: ``running + g²`` per name (float32). A ``None`` gradient (unused tensor) adds nothing.

    Dividing the sum by the number of samples afterwards gives the empirical diagonal Fisher ``E[g²]``.
    """
    out = {}
    for name, acc in running.items():
        g = grads.get(name)
        out[name] = acc if g is None else acc + g.detach().float().square()
    return out


def merge_fisher(
    total: Mapping[str, torch.Tensor] | None, new: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fisher accumulated over tasks: the element-wise sum ``F_1 + … + F_t`` (``total`` None on the first task).

    Tensors whose shape changed (a grown adapter) cannot be summed: that is a ``ValueError``.
    """
    if total is None:
        return {k: v.detach().float().clone() for k, v in new.items()}
    out = {k: v.clone() for k, v in total.items()}
    for name, f in new.items():
        if name in out:
            if out[name].shape != f.shape:
                raise ValueError(f"Fisher of {name!r} changed shape {tuple(out[name].shape)} -> {tuple(f.shape)}")
            out[name] = out[name] + f.detach().float().to(out[name].device)
        else:
            out[name] = f.detach().float().clone()
    return out


# ---------------------------------------------------------------------------------------------------------- LwF
def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal shift: logits at position ``t`` predict ``labels[t + 1]``.

    Args:
        labels: ``[B, T]`` with ``-100`` outside the answers.

    Returns:
        ``(batch_idx, pos_idx)``, each ``[M]``: the logit positions whose next label is an answer token.
    """
    target = labels[:, 1:]  # [B, T-1]: label predicted by logits[:, :-1]
    return (target != IGNORE_INDEX).nonzero(as_tuple=True)


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
) -> torch.Tensor:
    """LwF distillation ``T² · mean_answer_tokens KL(softmax(z_old/T) ‖ softmax(z/T))``.

    Args:
        student_logits: ``z`` ``[B, T, V]`` (differentiable).
        teacher_logits: ``z_old`` ``[B, T, V]`` (treated as constants).
        labels: ``[B, T]``, ``-100`` except on answer tokens. Position ``t`` of the logits is scored iff
            ``labels[t + 1] != -100`` (the same shift as the LM loss).
        temperature: T > 0; the ``T²`` factor keeps the gradient scale independent of T (Hinton et al.).

    Returns:
        a float32 scalar; 0 when there are no answer tokens.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b_idx, t_idx = answer_positions(labels)
    if b_idx.numel() == 0:
        return student_logits.float().sum() * 0.0  # keeps the graph (and device) without NaN
    z = student_logits[b_idx, t_idx].float() / temperature  # [M, V]
    z_old = teacher_logits[b_idx, t_idx].detach().float() / temperature  # [M, V]
    log_p = F.log_softmax(z, dim=-1)  # [M, V]
    log_q = F.log_softmax(z_old, dim=-1)  # [M, V] teacher
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # [M]: KL(teacher ‖ student) per token
    return temperature**2 * kl.mean()


# ------------------------------------------------------------------------------------------------------- O-LoRA
def orthogonality_l1(a_old: torch.Tensor, a_new: torch.Tensor) -> torch.Tensor:
    """O-LoRA's orthogonality loss for one module: ``Σ_ij |(A_old · A_newᵀ)_ij|``.

    Args:
        a_old: ``[r_old, d_in]``, every earlier task's A concatenated (detached: only the new A is pushed away).
        a_new: ``[r_new, d_in]``, the current task's A.

    Returns:
        a float32 scalar (0 when ``r_old == 0``).
    """
    overlap = a_old.detach().float() @ a_new.float().T  # [r_old, r_new]
    return overlap.abs().sum()


def lora_l2(a_new: torch.Tensor, b_new: torch.Tensor) -> torch.Tensor:
    """O-LoRA's optional L2 term for one module: ``‖A_new‖_F + ‖B_new‖_F`` (norms, not squared), float32."""
    return torch.linalg.vector_norm(a_new.float()) + torch.linalg.vector_norm(b_new.float())
