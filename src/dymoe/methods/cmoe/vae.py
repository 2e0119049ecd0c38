"""PTL's task-wise VAE (cmoe.md §5.2-§5.4): a light encoder/decoder over the frozen backbone's last-token feature,
scored by the log-space reconstruction probability (An & Cho 2015) instead of the paper's raw density.

``log p(F|z) = −½ Σ_k [(F_k − μ_k)² / σ_k² + 2 log σ_k + log 2π]`` (a diagonal Gaussian), and
``log p_rec(F) = logsumexp_j log p(F|z_j) − log N_rep`` over ``z_j ~ N(μ_lat, σ_lat²)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def diag_gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``log N(x; μ, diag σ²)`` summed over the last dim: ``x``, ``mu``, ``sigma`` ``[..., d]`` → ``[...]``."""
    return -0.5 * (((x - mu) / sigma) ** 2 + 2 * sigma.log() + math.log(2 * math.pi)).sum(-1)


def log_mean_exp(log_p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log (1/N Σ_j exp(log_p_j))`` along ``dim`` (the Monte-Carlo p_rec of Eq. 4, in log space)."""
    return torch.logsumexp(log_p, dim=dim) - math.log(log_p.shape[dim])


def kl_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, σ²) || N(0, I)) = ½ Σ_k (μ_k² + σ_k² − 1 − log σ_k²)``: ``[..., d_z]`` → ``[...]``."""
    return 0.5 * (mu ** 2 + sigma ** 2 - 1 - 2 * sigma.log()).sum(-1)


class TaskVAE(nn.Module):
    """One task's VAE (cmoe.md §5.2): ``down``: Linear(d, h) → GELU → heads (μ_lat, Softplus σ_lat) of size d_z;
    ``up``: Linear(d_z, h) → GELU → heads (μ_rec, Softplus σ_rec) of size d; ``eps`` added to every Softplus."""

    def __init__(self, d: int, hidden: int = 512, latent: int = 64, eps: float = 1e-4):
        super().__init__()
        self.d, self.latent, self.eps = d, latent, eps
        self.down = nn.Linear(d, hidden)
        self.mu_lat = nn.Linear(hidden, latent)
        self.sigma_lat = nn.Linear(hidden, latent)
        self.up = nn.Linear(latent, hidden)
        self.mu_rec = nn.Linear(hidden, d)
        self.sigma_rec = nn.Linear(hidden, d)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, d]`` → ``(μ_lat, σ_lat)`` ``[B, d_z]`` (Eq. 3)."""
        h = F.gelu(self.down(x))
        return self.mu_lat(h), F.softplus(self.sigma_lat(h)) + self.eps

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [..., d_z]`` → ``(μ_rec, σ_rec)`` ``[..., d]``."""
        h = F.gelu(self.up(z))
        return self.mu_rec(h), F.softplus(self.sigma_rec(h)) + self.eps

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, d]`` (fp32), ``noise [B, N_rep, d_z]`` or ``[N_rep, d_z]`` (shared by every row: a sample's
        score then does not depend on its batch) → ``log_p [B, N_rep]`` (log p(F|z_j)), ``log_p_rec [B]``,
        ``kl [B]``."""
        mu, sigma = self.encode(x)  # [B, d_z]
        z = mu[:, None] + sigma[:, None] * noise  # [B, N_rep, d_z], reparameterised
        mu_x, sigma_x = self.decode(z)  # [B, N_rep, d]
        log_p = diag_gaussian_log_prob(x[:, None], mu_x, sigma_x)  # [B, N_rep]
        return {"log_p": log_p, "log_p_rec": log_mean_exp(log_p), "kl": kl_standard_normal(mu, sigma)}

    @torch.no_grad()
    def score(self, x: torch.Tensor, n_rep: int, seed: int = 0) -> torch.Tensor:
        """``log p_rec`` ``[B]`` with fixed noise (seeded, shared by every row): the locator's score."""
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(n_rep, self.latent, generator=g).to(x.device)
        return self(x.float(), noise)["log_p_rec"]


def train_vae(vae: TaskVAE, feats: torch.Tensor, *, epochs: float, batch_size: int, lr: float, n_rep: int,
              kl_weight: float, rec_weight: float, seed: int) -> tuple[list[float], list[int]]:
    """Train ``vae`` on cached features ``feats [N, d]`` (on the VAE's device) with AdamW (no weight decay):
    ``kl_weight · KL + rec_weight · (−mean_j log p(F|z_j))`` per sample, batch mean (cmoe.md §5.4, the ELBO form
    of L_rec). Returns the per-step losses and the sample order of the final epoch (its last T samples give the
    primitive stats)."""
    n = feats.shape[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    steps = max(1, math.ceil(epochs * math.ceil(n / batch_size)))
    losses: list[float] = []
    order: list[int] = []
    pos = n  # start a new epoch at once
    vae.train()
    for _ in range(steps):
        if pos >= n:
            order, pos = torch.randperm(n, generator=g).tolist(), 0
        idx = order[pos: pos + batch_size]
        pos += batch_size
        x = feats[idx].float()
        noise = torch.randn(len(idx), n_rep, vae.latent, generator=g).to(x.device)
        out = vae(x, noise)
        loss = (kl_weight * out["kl"] - rec_weight * out["log_p"].mean(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    vae.eval()
    return losses, order[:pos]
