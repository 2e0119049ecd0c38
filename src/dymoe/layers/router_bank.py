"""A bank of routers over one layer's experts, one selected per sample (LLaVA-CMoE, cmoe.md §3 and §5.3).

Router ``i`` has one row per expert that existed when it was opened (``G_i ∈ R^{|E_i| × d}``): experts added later
have no row in it, so a sample routed by ``router_i`` never reaches them. At most one router is *open* (trainable,
all its rows, including the ones copied from the previous router); :meth:`RouterBank.close` freezes it. Each row is
tied to an expert id, so pruning an expert drops its row from every router.

The layer asks for scores two ways, both without a Python loop over routers or experts:

- one router for every token (training, or no per-sample choice): the open router, else the newest one;
- ``router_ids [B]``: each sample's router, by id. The scores against every row of every router are one GEMM
  ``[N, R]``; a host-built table ``[routers, E]`` maps (router, expert) to a row (or -1) and a gather picks each
  token's columns. An id with no router of its own falls back to the newest router with a smaller id.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dymoe.layers.functional import router_scores


class RouterBank(nn.Module):
    """The routers of one layer (see the module docstring).

    Args:
        in_features: the routed input's size ``d``.
        dtype, device: of the router rows.

    Tensors: ``frozen [R_f, d]`` (every closed router's rows, router after router) and ``current [R_c, d]`` (the
    open router's rows). Host metadata: ``frozen_router`` / ``frozen_expert`` (router id and expert id of each
    frozen row), ``current_id`` and ``current_expert``.
    """

    tensor_names = ("frozen", "current")

    def __init__(self, in_features: int, *, dtype: torch.dtype, device=None):
        super().__init__()
        self.in_features = in_features
        self.frozen = nn.Parameter(torch.zeros(0, in_features, dtype=dtype, device=device), requires_grad=False)
        self.current = nn.Parameter(torch.zeros(0, in_features, dtype=dtype, device=device), requires_grad=False)
        self.frozen_router: list[int] = []
        self.frozen_expert: list[int] = []
        self.current_id: int | None = None
        self.current_expert: list[int] = []
        self._tables: dict = {}

    # ------------------------------------------------------------------ host views
    @property
    def router_ids(self) -> list[int]:
        """Ids of the routers in the bank (closed ones in order, then the open one)."""
        ids = list(dict.fromkeys(self.frozen_router))
        return ids + ([self.current_id] if self.current_id is not None else [])

    @property
    def is_open(self) -> bool:
        return self.current_id is not None

    def rows_of(self, router_id: int) -> list[tuple[int, int]]:
        """``(row in the concatenated bank, expert id)`` of every row of router ``router_id``."""
        if router_id == self.current_id:
            nf = len(self.frozen_router)
            return [(nf + k, e) for k, e in enumerate(self.current_expert)]
        return [(k, e) for k, (r, e) in enumerate(zip(self.frozen_router, self.frozen_expert)) if r == router_id]

    def _set(self, name: str, value: torch.Tensor, trainable: bool) -> None:
        trainable = trainable and value.numel() > 0
        setattr(self, name, nn.Parameter(value.detach().clone() if trainable else value.detach(), requires_grad=trainable))
        self._tables.clear()

    # ------------------------------------------------------------------ growth
    @torch.no_grad()
    def open(self, router_id: int, expert_ids: list[int], *, trainable: bool = True, copy_previous: bool = True) -> None:
        """Open router ``router_id`` over ``expert_ids`` (the layer's experts, bank order).

        Rows of experts the newest router covers are copied from it (``G_i = [G_{i-1}; random]``, cmoe.md §4.4) when
        ``copy_previous``; the other rows get the ``nn.Linear`` default init. ``trainable=False`` closes it at once.
        """
        if self.is_open:
            raise ValueError(f"router {self.current_id} is still open; close it first")
        if router_id in self.router_ids:
            raise ValueError(f"router {router_id} already exists in this layer")
        prev = {}
        if copy_previous and self.router_ids:
            prev = {e: row for row, e in self.rows_of(self.router_ids[-1])}
        rows = self._random_rows(len(expert_ids))
        if prev:
            bank = self.all_rows()
            have = [k for k, e in enumerate(expert_ids) if e in prev]
            if have:
                idx = torch.tensor([prev[expert_ids[k]] for k in have], device=bank.device)
                rows[torch.tensor(have, device=rows.device)] = bank.detach()[idx].to(rows.dtype)
        self.current_id, self.current_expert = int(router_id), list(expert_ids)
        self._set("current", rows, trainable=True)
        if not trainable:
            self.close()

    def _random_rows(self, n: int) -> torch.Tensor:
        u = torch.empty(n, self.in_features, dtype=torch.float32, device=self.frozen.device)
        nn.init.kaiming_uniform_(u, a=math.sqrt(5))  # the nn.Linear default, like the layer's own router rows
        return u.to(self.frozen.dtype)

    @torch.no_grad()
    def extend(self, expert_ids: list[int]) -> None:
        """Give the open router (if any) fresh rows for experts added while it is open."""
        if not self.is_open or not expert_ids:
            return
        rows = torch.cat([self.current.detach(), self._random_rows(len(expert_ids))])
        self.current_expert = self.current_expert + list(expert_ids)
        self._set("current", rows, trainable=True)

    @torch.no_grad()
    def close(self) -> None:
        """Freeze the open router (its rows join the frozen bank); no-op if none is open."""
        if not self.is_open:
            return
        self.frozen_router = self.frozen_router + [self.current_id] * len(self.current_expert)
        self.frozen_expert = self.frozen_expert + self.current_expert
        self._set("frozen", torch.cat([self.frozen.detach(), self.current.detach()]), trainable=False)
        self._set("current", self.current.detach()[:0], trainable=True)
        self.current_id, self.current_expert = None, []

    @torch.no_grad()
    def prune(self, expert_ids: list[int]) -> None:
        """Drop the rows of these experts from every router."""
        drop = set(expert_ids)
        fk = [e not in drop for e in self.frozen_expert]
        ck = [e not in drop for e in self.current_expert]
        dev = self.frozen.device
        self._set("frozen", self.frozen.detach()[torch.tensor(fk, dtype=torch.bool, device=dev)], trainable=False)
        self._set("current", self.current.detach()[torch.tensor(ck, dtype=torch.bool, device=dev)], trainable=True)
        self.frozen_router = [r for r, k in zip(self.frozen_router, fk) if k]
        self.frozen_expert = [e for e, k in zip(self.frozen_expert, fk) if k]
        self.current_expert = [e for e, k in zip(self.current_expert, ck) if k]

    def structure(self) -> dict:
        return {
            "frozen_router": list(self.frozen_router),
            "frozen_expert": list(self.frozen_expert),
            "current_id": self.current_id,
            "current_expert": list(self.current_expert),
        }

    @torch.no_grad()
    def load_structure(self, spec: dict) -> None:
        """Resize to a :meth:`structure` dict (contents zero; load the tensors afterwards)."""
        self.frozen_router = [int(r) for r in spec["frozen_router"]]
        self.frozen_expert = [int(e) for e in spec["frozen_expert"]]
        if len(self.frozen_router) != len(self.frozen_expert):
            raise ValueError("router bank: frozen_router and frozen_expert differ in length")
        cid = spec.get("current_id")
        self.current_id = None if cid is None else int(cid)
        self.current_expert = [int(e) for e in spec.get("current_expert", [])]
        if self.current_id is None and self.current_expert:
            raise ValueError("router bank: rows for an open router but no current_id")
        z = self.frozen.detach()
        self._set("frozen", z.new_zeros(len(self.frozen_router), self.in_features), trainable=False)
        self._set("current", z.new_zeros(len(self.current_expert), self.in_features), trainable=True)

    # ------------------------------------------------------------------ routing
    def all_rows(self) -> torch.Tensor:
        """``[R, d]`` every row, frozen routers first, then the open one."""
        if not self.current.numel():
            return self.frozen
        if not self.frozen.numel():
            return self.current
        return torch.cat([self.frozen, self.current])

    def _table(self, expert_ids: tuple[int, ...], device) -> tuple[torch.Tensor, int]:
        """``[max router id + 1, E]`` long: the row of (router, expert), -1 where the router has none."""
        key = (expert_ids, str(device))
        if key not in self._tables:
            ids = self.router_ids
            if not ids:
                raise ValueError("the router bank is empty: open a router first")
            top = max(ids)
            pos = {e: k for k, e in enumerate(expert_ids)}
            table = [[-1] * len(expert_ids) for _ in range(top + 1)]
            newest_so_far = None
            for rid in range(top + 1):
                src = rid if rid in ids else newest_so_far
                if src is not None:
                    for row, e in self.rows_of(src):
                        if e in pos:
                            table[rid][pos[e]] = row
                if rid in ids:
                    newest_so_far = rid
            self._tables[key] = (torch.tensor(table, dtype=torch.long, device=device), top)
        return self._tables[key]

    def scores(
        self, x2d: torch.Tensor, expert_ids: list[int], mode: str, cos_scale: float,
        router_ids: torch.Tensor | None, batch: int, seq: int,
    ) -> torch.Tensor:
        """Raw scores ``[N, E]`` fp32 of ``x2d [N, d]`` against the experts ``expert_ids`` (bank order); ``-inf``
        for experts the chosen router has no row for. ``router_ids [batch]``: per-sample routers; None: the open
        router, else the newest."""
        table, top = self._table(tuple(expert_ids), x2d.device)
        rows = self.all_rows()
        if router_ids is None:
            cols = table[self.router_ids[-1]]  # [E]
            scores = router_scores(x2d, rows[cols.clamp_min(0)], mode, cos_scale)  # [N, E]
            return scores.masked_fill(cols < 0, float("-inf"))
        per_sample = table[router_ids.to(x2d.device).long().clamp(0, top)]  # [B, E]
        cols = per_sample.unsqueeze(1).expand(batch, seq, -1).reshape(batch * seq, -1)  # [N, E]
        every = router_scores(x2d, rows, mode, cos_scale)  # [N, R]: one GEMM over all routers
        return every.gather(1, cols.clamp_min(0)).masked_fill(cols < 0, float("-inf"))
