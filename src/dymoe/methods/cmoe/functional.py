"""LLaVA-CMoE's math as pure functions (cmoe.md): PGKE's activation statistics, threshold and selection (§4.3-§4.4),
the probe-data split (§4.1) and PTL's z-scored task choice (§5.3). No module state, no training loop.
"""

from __future__ import annotations

import random

import torch

ACT_STATISTICS = ("frequency", "probability", "logit")
THRESHOLD_SCOPES = ("layer", "global")
COPY_SOURCES = ("most_activated", "probe")


def activation_sums(scores: torch.Tensor, weights: torch.Tensor, token_mask: torch.Tensor | None,
                    statistic: str = "frequency") -> tuple[torch.Tensor, torch.Tensor]:
    """One forward's contribution to Act (cmoe.md §4.3, Eq. 2) of one routing layer.

    Args:
        scores: ``[N, E]`` raw router scores (logits); weights: ``[N, E]`` the gates (0 outside the top-k);
        token_mask: ``[N]`` bool (non-pad tokens) or None (every row a token); statistic: ``frequency`` (top-k
        selections), ``probability`` (router softmax) or ``logit`` (raw score).

    Returns:
        ``(sums [E] fp64, tokens [] fp64)``: Act = sums / tokens after summing over forwards (and processes).
    """
    if statistic not in ACT_STATISTICS:
        raise ValueError(f"activation statistic must be one of {ACT_STATISTICS}, got {statistic!r}")
    if statistic == "frequency":
        per_token = (weights > 0).double()  # [N, E] 1 where e is in the token's top-k
    elif statistic == "probability":
        per_token = torch.softmax(scores.double(), dim=-1)
    else:
        per_token = scores.double()
    m = torch.ones(per_token.shape[0], dtype=torch.float64, device=per_token.device) if token_mask is None \
        else token_mask.reshape(-1).double()
    return (per_token * m[:, None]).sum(0), m.sum()


def layer_thresholds(acts: list[torch.Tensor], n_probes: int, alpha: float = 0.8, scope: str = "layer") -> torch.Tensor:
    """Threshold^l = mean(Act^l) − α·std(Act^l), population std (ddof 0), per layer (Eq. 2).

    Args:
        acts: one ``[E_l + P]`` Act vector per routing layer (old experts first, the ``P`` probes last);
        n_probes: P; alpha: α; scope: ``layer`` (over each layer's experts, the paper's reading) or ``global``
            (one threshold over every layer's probe Act values, cmoe.md §4.3's alternative).

    Returns:
        ``[L]`` fp64 thresholds.
    """
    if scope not in THRESHOLD_SCOPES:
        raise ValueError(f"threshold scope must be one of {THRESHOLD_SCOPES}, got {scope!r}")
    if scope == "global":
        probes = torch.cat([a.double()[-n_probes:] for a in acts])
        thr = probes.mean() - alpha * probes.std(unbiased=False)
        return thr.repeat(len(acts))
    return torch.stack([a.double().mean() - alpha * a.double().std(unbiased=False) for a in acts])


def select_expansion(acts: list[torch.Tensor], n_probes: int, alpha: float = 0.8, scope: str = "layer",
                     per_layer: int | None = None, copy_source: str = "most_activated") -> dict[str, torch.Tensor]:
    """PGKE's decision from the probed model's Act table (cmoe.md §4.3-§4.4).

    ``N_s^l`` = the probes whose Act is above the layer's threshold; a layer grows iff ``N_s^l ≥ 1``, by ``N_s^l``
    experts (``per_layer`` None) or by ``per_layer`` (M); each new expert copies the expert with the highest Act
    (over old experts and probes, ``most_activated``) or the most activated passing probe (``probe``).

    Returns:
        ``{"threshold": [L] fp64, "n_s": [L] long, "n_new": [L] long, "source": [L] long}``; ``source`` is a
        bank position of the probed layer (``>= E_l`` is probe ``source - E_l``).
    """
    if copy_source not in COPY_SOURCES:
        raise ValueError(f"copy source must be one of {COPY_SOURCES}, got {copy_source!r}")
    if n_probes < 1:
        raise ValueError(f"PGKE needs at least one probe, got {n_probes}")
    thr = layer_thresholds(acts, n_probes, alpha, scope)
    n_s, n_new, source = [], [], []
    for a, t in zip(acts, thr):
        a = a.double()
        probes = a[-n_probes:]
        passing = probes > t
        k = int(passing.sum())
        n_s.append(k)
        n_new.append(0 if k == 0 else (k if per_layer is None else int(per_layer)))
        if copy_source == "probe" and k > 0:
            best = int(torch.where(passing, probes, torch.full_like(probes, -torch.inf)).argmax())
            source.append(a.numel() - n_probes + best)
        else:
            source.append(int(a.argmax()))
    long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return {"threshold": thr, "n_s": long(n_s), "n_new": long(n_new), "source": long(source)}


def probe_split(n: int, fraction: float, eval_fraction: float, eval_max: int, seed: int) -> tuple[list[int], list[int]]:
    """PGKE's data (cmoe.md §4.1): a seeded ``fraction`` of ``range(n)``, split into non-overlapping probe-train and
    probe-eval index lists (``eval_fraction`` of the subset, at least 1, at most ``eval_max``; both sorted)."""
    if not 0 < fraction <= 1 or not 0 < eval_fraction < 1:
        raise ValueError(f"probe fractions must be in (0, 1] and (0, 1), got {fraction}, {eval_fraction}")
    rng = random.Random(seed)
    k = min(n, max(2, round(fraction * n)))
    if k < 2:
        raise ValueError(f"PGKE needs at least 2 samples (probe-train and probe-eval), the task has {n}")
    chosen = rng.sample(range(n), k)
    n_eval = min(max(1, round(eval_fraction * k)), eval_max, k - 1)
    return sorted(chosen[n_eval:]), sorted(chosen[:n_eval])


def zscore_argmax(log_p: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PTL's choice (cmoe.md §5.3): ``p̂^(i) = (log p_rec^(i) − m_i) / s_i``, ``i* = argmax_i p̂^(i)``.

    Args:
        log_p: ``[B, T]`` each sample's log p_rec under every task's VAE; means, stds: ``[T]`` primitives.

    Returns:
        ``(i* [B] long, p̂ [B, T])``.
    """
    z = (log_p - means.to(log_p)) / stds.to(log_p)
    return z.argmax(dim=-1), z
