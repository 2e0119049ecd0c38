"""D-MoLE's autoencoder task router (dmole.md §7): one small autoencoder per task on the frozen backbone's feature
``z``, a threshold per task, and the gates as pure functions of the reconstruction losses.

Gates are ``[B, K]`` bool over the tasks trained so far: column ``k`` switches on task ``k``'s experts in every slot
that holds one (one gate vector per instruction, broadcast over slots, §6).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

AE_RECIPES = ("paper", "code")
THRESHOLD_RULES = ("max", "quantile")
EVAL_ROUTINGS = ("per_sample", "batch_vote")


class TaskAutoencoder(nn.Module):
    """``AE(z) = sigmoid(W_d · ReLU(W_e z + b_e) + b_d)`` (the official code's two-layer MLP, §7)."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.encoder = nn.Linear(dim, hidden)
        self.decoder = nn.Linear(hidden, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z [N, d]`` → reconstruction ``[N, d]`` in (0, 1)."""
        return torch.sigmoid(self.decoder(torch.relu(self.encoder(z))))

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """Per-sample reconstruction loss ``[N]``: ``(1/d) ‖AE(z) − z‖²`` (Eq. 9), fp32."""
        z = z.float()
        return (self(z) - z).pow(2).mean(-1)


def train_autoencoder(ae: TaskAutoencoder, feats: torch.Tensor, *, epochs: int = 100, lr: float = 1e-3,
                      batch_size: int = 1024, recipe: str = "paper", patience: int = 10, eta_min: float = 1e-3,
                      seed: int = 0) -> list[float]:
    """Train ``ae`` on ``feats [N, d]``; returns the epoch-mean losses.

    ``paper``: Adam at ``lr`` for ``epochs`` (100 ep, 1e-3). ``code``: the official recipe, Adam with a cosine schedule
    from ``lr`` (5e-3 there) to ``eta_min`` over ``epochs`` (up to 1000) and early stopping when the epoch-mean loss
    has not improved for ``patience`` epochs.
    """
    if recipe not in AE_RECIPES:
        raise ValueError(f"recipe must be one of {AE_RECIPES}, got {recipe!r}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=eta_min) if recipe == "code" else None
    losses: list[float] = []
    best, stale = math.inf, 0
    ae.train()
    for _ in range(int(epochs)):
        order = torch.randperm(feats.shape[0], generator=g)
        total = 0.0
        for k in range(0, feats.shape[0], batch_size):
            rows = feats[order[k: k + batch_size]]  # [b, d]
            loss = ae.loss(rows).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * rows.shape[0]
        losses.append(total / max(feats.shape[0], 1))
        if sched is not None:
            sched.step()
            if losses[-1] < best - 1e-12:
                best, stale = losses[-1], 0
            else:
                stale += 1
                if stale >= patience:
                    break
    ae.eval()
    return losses


def threshold(losses: torch.Tensor, rule: str = "max", multiplier: float = 1.2, quantile: float = 0.95) -> float:
    """τ_k from the in-task reconstruction losses ``[N]`` (App. G, dmole.md §14.5): ``max``: ``c · max`` (default
    c = 1.2, "set moderately above the observed loss range"); ``quantile``: ``c · Q_q``."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    base = losses.max() if rule == "max" else torch.quantile(losses.double(), quantile)
    return float(multiplier * float(base))


def eval_gates(losses: torch.Tensor, taus: torch.Tensor, top_k: int = 2) -> torch.Tensor:
    """Per-sample gates at evaluation (Eq. 10–12): the ``top_k`` tasks with the lowest loss among those with
    ``L_k ≤ τ_k``; none under threshold → no expert (the pretrained model).

    Args:
        losses: ``[B, K]`` reconstruction losses of each sample under each task's autoencoder.
        taus: ``[K]`` thresholds.
    Returns:
        ``[B, K]`` bool.
    """
    under = losses <= taus[None, :]  # [B, K]
    masked = losses.masked_fill(~under, math.inf)
    k = min(int(top_k), losses.shape[1])
    idx = masked.topk(k, dim=1, largest=False).indices  # [B, k] lowest losses first
    gates = torch.zeros_like(under).scatter(1, idx, True)
    return gates & under


def batch_vote_gates(losses: torch.Tensor, taus: torch.Tensor, min_support: float = 0.3) -> torch.Tensor:
    """The official code's per-batch routing (compatibility mode, dmole.md §7): each sample with a task under
    threshold votes for its lowest-loss one; the most voted task is on for the whole batch, and the second most
    voted too if it holds ``>= min_support`` of the valid votes; no valid vote → no expert. ``[B, K]`` bool, every
    row equal. Ties between vote counts go to the lower task id."""
    under = losses <= taus[None, :]
    valid = under.any(1)  # [B]
    gates = torch.zeros_like(under)
    if not bool(valid.any()):
        return gates
    votes = losses.masked_fill(~under, math.inf).argmin(1)[valid]  # [V]
    counts = torch.bincount(votes, minlength=losses.shape[1])  # [K]
    order = sorted(range(losses.shape[1]), key=lambda k: (-int(counts[k]), k))
    gates[:, order[0]] = True
    if len(order) > 1 and int(counts[order[1]]) > 0 and int(counts[order[1]]) >= min_support * int(valid.sum()):
        gates[:, order[1]] = True
    return gates


def train_gates(prior_losses: torch.Tensor, prior_taus: torch.Tensor, task: int, *, mode: str = "per_sample",
                min_support: float = 0.3) -> torch.Tensor:
    """Gates while training task ``task`` (0-based, §7): its own expert always on, plus the most relevant prior task
    ``k* = argmin_{k<t} L_k`` among those under their threshold (per sample; ``batch_vote``: the code's vote, the
    winner added when it holds ``>= min_support`` of the valid votes). ``prior_losses [B, t]`` → ``[B, t+1]`` bool."""
    b = prior_losses.shape[0]
    gates = torch.zeros(b, task + 1, dtype=torch.bool, device=prior_losses.device)
    gates[:, task] = True
    if task == 0:
        return gates
    if mode == "batch_vote":
        vote = batch_vote_gates(prior_losses, prior_taus, min_support=1.0)  # the winner only
        under = prior_losses <= prior_taus[None, :]
        if bool(vote.any()):
            winner = int(vote[0].nonzero()[0])
            votes = prior_losses.masked_fill(~under, math.inf).argmin(1)[under.any(1)]
            if int((votes == winner).sum()) >= min_support * max(int(under.any(1).sum()), 1):
                gates[:, winner] = True
        return gates
    gates[:, :task] = eval_gates(prior_losses, prior_taus, top_k=1)
    return gates
