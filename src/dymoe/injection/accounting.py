"""Parameter accounting: learnable parameters per group, stream, site and layer kind, and parameters activated per
token, so that methods are compared at equal budgets (SMoE: 208M learnable / 42M activated, smoe-dsal.md §7;
D-MoLE: 48 rank-8 slots, dmole.md §2; CMoE: 43.96M per task, cmoe.md §6.3).

"Activated per token" counts, per layer, the router parameters that score a token plus the experts it uses: the
router's nominal count (top-K, or every expert of a ``none`` router / of an AT-Router's group) unless measured
counts are given, e.g. from an :class:`ActiveExpertMeter` over real batches (the AT-Router's 0.81).
"""

from __future__ import annotations

import torch

from dymoe.layers.context import RoutingEvent


def parameter_report(adapter, mean_active: dict[str, float] | None = None) -> dict:
    """Accounting of ``adapter``'s parameters.

    Args:
        adapter: the model's :class:`~dymoe.injection.adapter.ExpertAdapter`.
        mean_active: measured experts per token by module name (missing modules use the nominal count).

    Returns:
        ``{"total", "trainable", "by_group": {group: n}, "experts_by_group", "routers_by_group", "shared",
        "by_stream": {stream: n}, "by_site": {site: n}, "by_kind": {kind: n}, "activated_per_token",
        "activated_by_stream": {stream: x}}``; ``by_group`` = experts + their routers (papers often count experts
        alone: CMoE's 43.96M, SMoE's 201M); ``shared`` counts router-bank rows, which belong to routers rather than
        to groups. ``total`` equals ``adapter.num_parameters()``.
    """
    mean_active = mean_active or {}
    by_group: dict[int, int] = {}
    experts: dict[int, int] = {}
    routers: dict[int, int] = {}
    by_stream: dict[str, int] = {}
    by_site: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    act_stream: dict[str, float] = {}
    shared = 0
    for name, layer in adapter.modules.items():
        counts = layer.parameter_counts()
        n = sum(counts["experts"].values()) + sum(counts["routers"].values()) + counts["shared"]
        shared += counts["shared"]
        for g, v in counts["experts"].items():
            experts[g] = experts.get(g, 0) + v
            by_group[g] = by_group.get(g, 0) + v
        for g, v in counts["routers"].items():
            routers[g] = routers.get(g, 0) + v
            by_group[g] = by_group.get(g, 0) + v
        by_stream[layer.stream] = by_stream.get(layer.stream, 0) + n
        site = adapter.site_of[name]
        by_site[site] = by_site.get(site, 0) + n
        by_kind[layer.kind] = by_kind.get(layer.kind, 0) + n
        act = layer.activated_per_token(mean_active.get(name))
        act_stream[layer.stream] = act_stream.get(layer.stream, 0.0) + act
    return {
        "total": sum(by_group.values()) + shared,
        "trainable": adapter.num_parameters(trainable_only=True),
        "by_group": dict(sorted(by_group.items())),
        "experts_by_group": dict(sorted(experts.items())),
        "routers_by_group": dict(sorted(routers.items())),
        "shared": shared,
        "by_stream": by_stream,
        "by_site": by_site,
        "by_kind": by_kind,
        "activated_per_token": sum(act_stream.values()),
        "activated_by_stream": act_stream,
    }


class ActiveExpertMeter:
    """Observer: the mean number of experts with a non-zero gate per real token, per module.

    Append it to ``adapter.context.observers`` (it counts while the context is recording), run batches, then read
    :meth:`mean_active`. Counts stay on the device until read.
    """

    def __init__(self, adapter):
        # adapter: the ExpertAdapter whose layers are counted
        self._names = {id(m): n for n, m in adapter.modules.items()}
        self.active: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, event: RoutingEvent) -> None:
        name = self._names.get(id(event.layer))
        if name is None:
            return
        per_token = (event.weights > 0).sum(-1).float()  # [N]
        if event.token_mask is not None:
            m = event.token_mask.to(per_token.device).float()
            active, tokens = (per_token * m).sum(), m.sum()
        else:
            active, tokens = per_token.sum(), per_token.new_tensor(float(per_token.numel()))
        self.active[name] = self.active[name] + active if name in self.active else active
        self.tokens[name] = self.tokens[name] + tokens if name in self.tokens else tokens

    def mean_active(self) -> dict[str, float]:
        """``{module: experts per token}`` over everything counted."""
        return {n: float(self.active[n] / self.tokens[n].clamp_min(1.0)) for n in self.active}
