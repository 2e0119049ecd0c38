"""Routing statistics DyMoE collects while it trains: token types (drift analysis) and expert activations (pruning,
the expert-activation view). Counts stay on the device (no host sync per layer); read them with the helpers.
"""

from __future__ import annotations

from collections import deque

import torch

TOKEN_TYPES = ("new", "old", "ambiguous")


class TokenTypeStats:
    """Per-module counts of new / old / ambiguous tokens (TAG's typing, dymoe.md §11) over non-pad tokens.

    ``step[name]`` holds the counts of the current forward (reset by :meth:`start_step`), ``total[name]`` the counts
    since :meth:`reset`; each is a ``[3]`` int64 tensor in :data:`TOKEN_TYPES` order.
    """

    def __init__(self) -> None:
        self.step: dict[str, torch.Tensor] = {}
        self.total: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget everything."""
        self.step.clear()
        self.total.clear()

    def start_step(self) -> None:
        """Start a new forward: clear the per-step counts."""
        self.step.clear()

    @torch.no_grad()
    def update(self, name: str, use_new: torch.Tensor, ambiguous: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        """Add one layer's typing: ``use_new [N]``, ``ambiguous [N]`` bool, ``token_mask [N]`` bool or None."""
        valid = torch.ones_like(use_new) if token_mask is None else token_mask.to(use_new.device)
        old = ~use_new & ~ambiguous
        counts = torch.stack([(t & valid).sum() for t in (use_new, old, ambiguous)])  # [3]
        self.step[name] = self.step[name] + counts if name in self.step else counts
        self.total[name] = self.total[name] + counts if name in self.total else counts

    def fractions(self, which: str = "total") -> dict[str, dict[str, float]]:
        """``{module: {"new": f, "old": f, "ambiguous": f}}`` for ``which`` in ``"step"``/``"total"``."""
        src = self.step if which == "step" else self.total
        out = {}
        for name, counts in src.items():
            c = counts.tolist()
            n = max(sum(c), 1)
            out[name] = {t: v / n for t, v in zip(TOKEN_TYPES, c)}
        return out


class ExpertActivationStats:
    """Per-module expert activations: top-K hits (``w > 0``) and summed routing weights, over non-pad tokens.

    ``hits[name]`` and ``weight_sum[name]`` are ``[E]`` tensors aligned with the layer's bank at the time of
    counting (``expert_ids[name]``); ``tokens[name]`` counts the non-pad tokens. ``window`` > 0 additionally keeps
    the hit counts of the last ``window`` forwards (:meth:`recent_frequency`), which pruning uses.
    """

    def __init__(self, window: int = 0) -> None:
        self.window = int(window)
        self.reset()

    def reset(self) -> None:
        """Forget everything (the bank may have changed)."""
        self.expert_ids: dict[str, torch.Tensor] = {}
        self.hits: dict[str, torch.Tensor] = {}
        self.weight_sum: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, torch.Tensor] = {}
        self.recent: dict[str, deque] = {}

    @torch.no_grad()
    def update(self, name: str, expert_ids: torch.Tensor, weights: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        """Add one layer's routing: ``expert_ids [E]``, gate ``weights [N, E]``, ``token_mask [N]`` bool or None."""
        m = torch.ones(weights.shape[0], device=weights.device) if token_mask is None else token_mask.float()
        hits = ((weights > 0).float() * m[:, None]).sum(0)  # [E]
        wsum = (weights.float() * m[:, None]).sum(0)  # [E]
        ntok = m.sum()
        if name not in self.hits or self.hits[name].shape != hits.shape:
            # first time, or the bank changed (growth / pruning): restart this module's counts
            self.expert_ids[name] = expert_ids.detach().clone()
            self.hits[name], self.weight_sum[name], self.tokens[name] = hits, wsum, ntok
            self.recent[name] = deque(maxlen=self.window or None)
        else:
            self.hits[name] = self.hits[name] + hits
            self.weight_sum[name] = self.weight_sum[name] + wsum
            self.tokens[name] = self.tokens[name] + ntok
        if self.window:
            self.recent[name].append((hits, ntok))

    def frequency(self, name: str) -> torch.Tensor:
        """``[E]`` fraction of counted tokens for which each expert was in the top-K with ``w > 0``."""
        return self.hits[name] / self.tokens[name].clamp_min(1.0)

    def recent_counts(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hits [E], tokens [])`` over the last ``window`` forwards (all counted ones if ``window`` is 0)."""
        if not self.window or not self.recent.get(name):
            return self.hits[name], self.tokens[name]
        hits = torch.stack([h for h, _ in self.recent[name]]).sum(0)
        ntok = torch.stack([n for _, n in self.recent[name]]).sum()
        return hits, ntok

    def recent_frequency(self, name: str) -> torch.Tensor:
        """Like :meth:`frequency`, over the last ``window`` forwards only (all counted ones if ``window`` is 0)."""
        hits, ntok = self.recent_counts(name)
        return hits / ntok.clamp_min(1.0)
