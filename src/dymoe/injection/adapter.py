"""``ExpertAdapter``: every expert layer of one model, with bank operations applied to each of them.

The adapter talks to its layers only through the :class:`~dymoe.layers.base.ExpertLayer` protocol (groups,
add/fold/prune, structure, declared tensor names, trainable parameters, stream tag), so LoRA banks on linears and
SwiGLU banks beside MLP blocks, in the language model or the vision tower, are grown, frozen, saved and counted the
same way. Sizes default to each module's injection site (:class:`~dymoe.injection.config.SiteConfig`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from dymoe.injection.accounting import parameter_report
from dymoe.injection.config import AdapterConfig, SiteConfig
from dymoe.layers.base import ExpertLayer
from dymoe.layers.context import RoutingContext


@dataclass
class AdapterSnapshot:
    """A copy of an adapter's banks: each module's structure and tensors (see :meth:`ExpertAdapter.snapshot`)."""

    structure: dict[str, dict]
    tensors: dict[str, torch.Tensor]


class ExpertAdapter:
    """All expert layers of one model (see the module docstring).

    Attributes:
        modules: ``{module name: expert layer}``, site after site, each in model order.
        context: the :class:`RoutingContext` shared by every layer.
        config: the :class:`AdapterConfig` used to build them.
        site_of: ``{module name: site name}``.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: dict[str, ExpertLayer],
        context: RoutingContext,
        config: AdapterConfig,
        site_of: dict[str, str] | None = None,
    ):
        self.model = model
        self.modules = modules
        self.context = context
        self.config = config
        self.sites: dict[str, SiteConfig] = {s.name: s for s in config.resolved_sites()}
        self.site_of = site_of if site_of is not None else {name: "default" for name in modules}

    def site(self, module: str) -> SiteConfig:
        """The injection site of a wrapped module."""
        return self.sites[self.site_of[module]]

    def select(self, modules: Iterable[str] | None = None, site: str | None = None) -> list[str]:
        """Module names: ``modules`` (checked), else every module of ``site``, else every module."""
        if modules is not None:
            names = list(modules)
            for name in names:
                if name not in self.modules:
                    raise KeyError(f"{name!r} is not a wrapped module")
            return names
        if site is not None:
            if site not in self.sites:
                raise KeyError(f"no adapter site {site!r}; sites: {sorted(self.sites)}")
            return [n for n in self.modules if self.site_of[n] == site]
        return list(self.modules)

    # growth ----------------------------------------------------------------
    def add_group(
        self,
        group_id: int,
        *,
        num_experts: int | None = None,
        rank: int | None = None,
        modules: Iterable[str] | None = None,
        site: str | None = None,
        trainable: bool = True,
        init: str = "default",
        source=None,
        sources: dict | None = None,
    ) -> dict[str, list[int]]:
        """Add a group in every layer (or only in ``modules`` / the modules of ``site``: groups present in some
        layers, e.g. CMoE's expanded layers); returns the new expert ids per module.

        ``num_experts`` / ``rank`` (the LoRA rank or FFN width) default to each module's site. ``init``: see the
        layers' ``add_group``, with ``source`` for every module or ``sources[module]`` per module (CMoE copies
        each layer's most-activated expert).
        """
        out = {}
        for name in self.select(modules, site):
            s = self.site(name)
            extra = {}
            if init != "default":
                extra = {"init": init, "source": sources[name] if sources is not None else source}
            out[name] = self.modules[name].add_group(
                group_id, num_experts or s.experts_per_group, rank or s.expert_size, trainable=trainable, **extra
            )
        return out

    def fold(self) -> None:
        """Fold every layer's trainable group into its frozen bank (end of a task)."""
        for m in self.modules.values():
            m.fold()

    def prune(self, expert_ids: dict[str, list[int]]) -> None:
        """Remove experts by id, per module: ``{module name: [expert ids]}``."""
        for name, ids in expert_ids.items():
            self.modules[name].prune(ids)

    def open_router(self, router_id: int, *, modules: Iterable[str] | None = None, site: str | None = None,
                    trainable: bool = True, copy_previous: bool = True) -> None:
        """Open router ``router_id`` in the router bank of every layer that has one (CMoE's ``router_i``)."""
        names = [n for n in self.select(modules, site) if getattr(self.modules[n], "router_bank", None) is not None]
        if not names:
            raise ValueError("no wrapped module has a router bank (adapter site option router_bank: true)")
        for name in names:
            self.modules[name].open_router(router_id, trainable=trainable, copy_previous=copy_previous)

    # parameters ------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trainable groups that are non-empty (what the optimizer gets)."""
        return [p for m in self.modules.values() for p in m.trainable_parameters()]

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(module.name, tensor)`` for every adapter tensor, frozen and trainable (the checkpoint content)."""
        for mname, m in self.modules.items():
            for n, t in m.named_tensors():
                yield f"{mname}.{n}", t

    def num_parameters(self, trainable_only: bool = False) -> int:
        if trainable_only:
            return sum(p.numel() for p in self.trainable_parameters())
        return sum(t.numel() for _, t in self.named_tensors())

    def parameter_report(self, mean_active: dict[str, float] | None = None) -> dict:
        """Parameter accounting per group, stream, site and kind, and activated per token (see
        :func:`dymoe.injection.accounting.parameter_report`)."""
        return parameter_report(self, mean_active)

    def groups(self) -> list[int]:
        """Every group id present in at least one layer, sorted."""
        return sorted({g for m in self.modules.values() for g in m.groups})

    def structure(self) -> dict[str, dict]:
        return {name: m.structure() for name, m in self.modules.items()}

    # snapshots -------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self) -> AdapterSnapshot:
        """A copy of every bank (structure and tensors, on their devices): :meth:`restore` brings it back, e.g.
        after CMoE trained and measured its probe experts (cmoe.md §4.4)."""
        return AdapterSnapshot(self.structure(), {k: t.detach().clone() for k, t in self.named_tensors()})

    @torch.no_grad()
    def restore(self, snap: AdapterSnapshot) -> None:
        """Put every bank back as it was at :meth:`snapshot` (trainable flags included). Expert ids handed out
        since are not reused. Parameter objects are replaced: rebuild the optimizer afterwards."""
        if set(snap.structure) != set(self.modules):
            raise ValueError("the snapshot was taken of a different set of modules")
        for name, m in self.modules.items():
            next_id = m._next_expert_id
            m.load_structure(snap.structure[name])
            m._next_expert_id = max(next_id, m._next_expert_id)
        for key, t in self.named_tensors():
            t.copy_(snap.tensors[key])

    def __repr__(self) -> str:
        return (
            f"ExpertAdapter({len(self.modules)} layers, groups={self.groups()}, "
            f"params={self.num_parameters():,} (trainable {self.num_parameters(True):,}))"
        )
