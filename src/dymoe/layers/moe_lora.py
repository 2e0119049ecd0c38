"""``MoELoRALinear``: a frozen ``nn.Linear`` plus a growable bank of routed LoRA experts.

Experts come in **groups** (one per expansion, normally one per task). The layer keeps two banks:

- the **frozen bank** (``frozen_A``, ``frozen_B``, ``frozen_router``): every folded group, never trained again;
- the **trainable group** (``lora_A``, ``lora_B``, ``router``): at most one group, the one being learned.

Growth is the layer's API (the :class:`~dymoe.layers.base.ExpertLayer` protocol): :meth:`add_group` appends a
group (B = 0, so the output is unchanged; or initialised from existing experts), :meth:`fold` moves the trainable
group into the frozen bank at the end of a task (DyMoE's task-end fold, dymoe.md §3.4), :meth:`prune` deletes
experts by id. Per-expert metadata: ``expert_group`` (group id), ``expert_id`` (unique id, stable across folds),
``expert_rank`` and ``expert_trainable``.

Routing comes from one of three places:

- the layer's own router rows, one per expert, trainable with their group (the default);
- a :class:`~dymoe.layers.router_bank.RouterBank` (``router_bank=True``): per-task routers selected per sample
  (CMoE); the layer then has no rows of its own;
- the block's **leader** (``share=("follower", key)``): CMoE's gate_proj and up_proj see the same input and use the
  same gates ``w'``; the follower has no router and reuses the gates its leader computed in this forward.

The forward is :func:`dymoe.layers.functional.moe_lora_delta` over the concatenated bank: no Python loop over
experts. Router modes ``linear``, ``cosine`` and ``none`` (every allowed expert weight 1). Scores and the softmax are
fp32; the gates are cast to the activation dtype for the two GEMMs.

**Sparse inference** (option ``sparse``): with top-K of E experts only ``K·r`` of the ``E·r`` rank slots are live
per token. ``"auto"`` (default) computes only those (:func:`~dymoe.layers.functional.moe_lora_delta_sparse`) when
the layer is in eval mode, gradients are off, every expert has the same rank and few tokens come at once
(``N·K·SPARSE_AUTO_FACTOR <= E``: greedy decoding steps, not prefill); training always takes the dense path.
``"never"`` forces the dense path, ``"always"`` the sparse one whenever ranks are uniform (tests, benchmarks). The
two differ by floating-point summation order only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dymoe.layers.base import EXPERT_INITS, ExpertLayer
from dymoe.layers.context import RoutingContext, RoutingEvent
from dymoe.layers.functional import (
    ROUTER_MODES,
    moe_lora_delta,
    moe_lora_delta_sparse,
    route,
    router_scores,
    top_experts,
)
from dymoe.layers.router_bank import RouterBank

# parameter names, declared once: save/load and requires_grad filtering work on these (PEFT style)
TRAINABLE_NAMES = ("lora_A", "lora_B", "router")
FROZEN_NAMES = ("frozen_A", "frozen_B", "frozen_router")
META_NAMES = ("expert_group", "expert_id", "expert_rank", "expert_trainable")
INIT_MODES = ("kaiming", "normal")
SHARE_ROLES = ("leader", "follower")
SPARSE_MODES = ("auto", "always", "never")
# "auto" goes sparse when the gathered live slots are at most this fraction of the bank: N·K·factor <= E. The
# gathered copies cost about as much per element as the dense GEMMs do, so the sparse path must read several times
# less to win (benchmarks/RESULTS.md, "Sparse inference").
SPARSE_AUTO_FACTOR = 2


class MoELoRALinear(ExpertLayer):
    """A frozen linear layer with a routed, growable mixture of LoRA experts.

    ``h = W0 x + s · Σ_i w_i(x) B_i A_i dropout(x)`` with ``w`` the top-K softmax of the router scores at
    ``temperature`` and ``s = alpha / bank_rank``.

    Args:
        base: the wrapped linear layer (frozen in place; its weights are not copied).
        alpha: LoRA alpha.
        bank_rank: the rank that ``alpha`` is divided by (DyMoE: the per-task bank rank ``E_t · r``, dymoe.md §2.2).
        top_k: K, over all present experts; ``K >= E`` is a dense softmax.
        router: ``"linear"``, ``"cosine"`` or ``"none"``.
        temperature: softmax temperature of the routing (DyMoE: 0.01 with the cosine router).
        cos_scale: κ of the cosine router.
        dropout: dropout on the experts' input (the router sees the un-dropped input).
        init: ``"kaiming"`` (A kaiming-uniform a=√5 like PEFT / DyMoE) or ``"normal"`` (A ~ N(0, 0.01) like CoIN).
        param_dtype: dtype of the expert tensors; None = the base weight's. Keeping them in float32 under a bf16
            base (with autocast) gives fp32 master weights, as PEFT does.
        context: the shared :class:`RoutingContext` (one per model); a private one if None.
        stream: ``"text"`` (rows are samples) or ``"vision"`` (rows are images: a vision-tower projection).
        router_bank: route with a per-sample :class:`RouterBank` instead of rows tied to experts.
        share: ``("leader", key)`` or ``("follower", key)``: one router per block, the follower reusing the gates
            of the leader with the same ``key`` (they must hold the same experts).
        sparse: ``"auto"``, ``"always"`` or ``"never"``: when to compute only each token's live experts (see the
            module docstring).
    """

    kind = "moe_lora"
    size_name = "expert_rank"
    trainable_names = TRAINABLE_NAMES
    frozen_names = FROZEN_NAMES

    def __init__(
        self,
        base: nn.Linear,
        *,
        alpha: float = 128.0,
        bank_rank: int = 64,
        top_k: int = 16,
        router: str = "cosine",
        temperature: float = 0.01,
        cos_scale: float = 1.0,
        dropout: float = 0.05,
        init: str = "kaiming",
        param_dtype: torch.dtype | None = None,
        context: RoutingContext | None = None,
        stream: str = "text",
        router_bank: bool = False,
        share: tuple[str, str] | None = None,
        sparse: str = "auto",
    ):
        super().__init__()
        if router not in ROUTER_MODES:
            raise ValueError(f"router must be one of {ROUTER_MODES}, got {router!r}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if sparse not in SPARSE_MODES:
            raise ValueError(f"sparse must be one of {SPARSE_MODES}, got {sparse!r}")
        if share is not None and share[0] not in SHARE_ROLES:
            raise ValueError(f"share role must be one of {SHARE_ROLES}, got {share[0]!r}")
        if share is not None and share[0] == "follower" and router_bank:
            raise ValueError("a follower projection has no router of its own, so no router bank either")
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.alpha, self.bank_rank = float(alpha), int(bank_rank)
        self.scaling = self.alpha / self.bank_rank
        self.top_k, self.router_mode, self.temperature = int(top_k), router, float(temperature)
        self.cos_scale, self.init = float(cos_scale), init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.context = context if context is not None else RoutingContext()
        self.param_dtype = param_dtype
        self.route_role, self.route_key = share if share is not None else ("own", None)
        self.sparse = sparse
        self._b_t_cache: tuple | None = None  # (B, version, data_ptr, B^T contiguous): see _b_transposed
        self._unit_cache: tuple | None = None  # (U, version, data_ptr, normalised rows): see _unit_rows

        w = base.weight
        for name in FROZEN_NAMES + TRAINABLE_NAMES:
            self._set_param(name, self._empty(name, 0, self._pdtype(), w.device), trainable=name in TRAINABLE_NAMES)
        self._init_meta(w.device, stream)
        self.router_bank = RouterBank(self.in_features, dtype=self._pdtype(), device=w.device) if router_bank else None

    # ------------------------------------------------------------------ structure
    def _pdtype(self) -> torch.dtype:
        # once built, the bank's own dtype is the truth (model.to(dtype) converts it); at creation param_dtype
        if "frozen_router" in self._parameters:
            return self._parameters["frozen_router"].dtype
        return self.param_dtype or self.base.weight.dtype

    def _empty(self, name: str, rows: int, dtype, device) -> torch.Tensor:
        if name.endswith("_A") or name == "lora_A":
            return torch.zeros(rows, self.in_features, dtype=dtype, device=device)
        if name.endswith("_B") or name == "lora_B":
            return torch.zeros(self.out_features, rows, dtype=dtype, device=device)
        return torch.zeros(rows, self._router_width, dtype=dtype, device=device)  # router rows

    @property
    def _router_width(self) -> int:
        # router "none" scores nothing: its rows are [E, 0], so no unused trainable parameter exists (DDP would
        # wait for its gradient, and parameter counts would include it)
        return 0 if self.router_mode == "none" else self.in_features

    def _set_param(self, name: str, value: torch.Tensor, *, trainable: bool) -> None:
        # re-registering replaces the Parameter object: optimizers must be rebuilt after any growth step.
        # An empty trainable slot does not require grad, so "frozen model" checks stay simple.
        trainable = trainable and value.numel() > 0
        self._b_t_cache = self._unit_cache = None
        setattr(self, name, nn.Parameter(value.detach().clone() if trainable else value.detach(), requires_grad=trainable))

    @property
    def tied_router(self) -> bool:
        """True when each expert has its own router row (not a follower, no router bank)."""
        return self.route_role != "follower" and self.router_bank is None

    def _router_rows(self, num_experts: int) -> int:
        return num_experts if self.tied_router else 0

    def optional_tensor_names(self) -> tuple[str, ...]:
        return () if self.router_bank is None else tuple(f"router_bank.{n}" for n in RouterBank.tensor_names)

    def _slot_offsets(self) -> list[int]:
        offs = [0]
        for r in self._meta["expert_rank"]:
            offs.append(offs[-1] + r)
        return offs

    def expert_state(self, expert_ids: list[int]) -> dict[str, torch.Tensor]:
        """Copies of these experts' tensors: ``A [n, r, d_in]``, ``B [n, d_out, r]`` and (tied router) ``router
        [n, d_in]``; the experts must share one rank. Feed one entry to :meth:`add_group` ``init="copy"``."""
        pos = self.positions(list(expert_ids))
        ranks = {self._meta["expert_rank"][p] for p in pos}
        if len(ranks) != 1:
            raise ValueError(f"experts {list(expert_ids)} have ranks {sorted(ranks)}; expected one rank")
        offs = self._slot_offsets()
        a, b, u = (t.detach() for t in self.bank())
        out = {
            "A": torch.stack([a[offs[p] : offs[p + 1]] for p in pos]).clone(),
            "B": torch.stack([b[:, offs[p] : offs[p + 1]] for p in pos]).clone(),
        }
        if self.tied_router:
            out["router"] = u[pos].clone()
        return out

    def _init_from(self, init: str, source, rank: int) -> dict[str, torch.Tensor]:
        """One expert's ``A [r, d_in]``, ``B [d_out, r]`` (and ``router [d_in]``) from existing experts."""
        if init == "mean":
            pos = self.group_positions(None if source is None else list(source))
            if not pos:
                raise ValueError("init='mean' needs existing experts")
            state = self.expert_state([self._meta["expert_id"][p] for p in pos])
            mean = {k: v.float().mean(0) for k, v in state.items()}
        else:
            state = self.expert_state([int(source)]) if not isinstance(source, dict) else source
            mean = {k: (v[0] if v.dim() == (3 if k != "router" else 2) else v).float() for k, v in state.items()}
        if mean["A"].shape[0] != rank:
            raise ValueError(f"init={init!r}: the source experts have rank {mean['A'].shape[0]}, the new ones {rank}")
        return mean

    @torch.no_grad()
    def add_group(
        self,
        group_id: int,
        num_experts: int,
        rank: int,
        *,
        trainable: bool = True,
        init: str = "default",
        source=None,
        router_init: str = "default",
    ) -> list[int]:
        """Append a group of ``num_experts`` experts of rank ``rank``; returns their expert ids.

        A new trainable group has ``B = 0`` (the layer's output is unchanged), A initialised per the layer's
        ``init`` and router rows with the ``nn.Linear`` default (kaiming-uniform), dymoe.md §2.2 (router ``none``:
        rows of width 0; followers and router-bank layers: no rows). A frozen group
        (``trainable=False``) is appended to the frozen bank, e.g. when a checkpoint is rebuilt.

        ``init`` ``"mean"``: every new expert is the mean of the experts of groups ``source`` (a list of group ids;
        None = every present expert), CMoE's probes (cmoe.md §4.2); ``"copy"``: a copy of expert ``source`` (an
        expert id, or one entry of :meth:`expert_state`), CMoE's expansion (§4.4). ``router_init`` ``"source"``
        takes their router rows the same way (MoExtend); the default draws fresh rows (CMoE).
        """
        if init not in EXPERT_INITS:
            raise ValueError(f"init must be one of {EXPERT_INITS}, got {init!r}")
        self._check_new_group(group_id, num_experts, rank, trainable)
        w = self.base.weight
        dt = self._pdtype()
        a = torch.empty(num_experts * rank, self.in_features, dtype=torch.float32, device=w.device)
        if self.init == "kaiming":
            # PEFT's LoRA init; one fan-in per expert is the same as per row-block since fan_in = d_in
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        else:
            nn.init.normal_(a, std=0.01)
        b = torch.zeros(self.out_features, num_experts * rank, dtype=dt, device=w.device)
        u = torch.empty(num_experts, self.in_features, dtype=torch.float32, device=w.device)
        nn.init.kaiming_uniform_(u, a=math.sqrt(5))
        if init != "default":
            src = self._init_from(init, source, rank)
            a = src["A"].to(w.device).repeat(num_experts, 1)
            b = src["B"].to(w.device, dt).repeat(1, num_experts)
            if router_init == "source":
                if "router" not in src:
                    raise ValueError("router_init='source' needs source experts with router rows")
                u = src["router"].to(w.device).expand(num_experts, -1).clone()
        # router "none" keeps rows of width 0, followers and router-bank layers none at all; the draw above still
        # happens so that every later initialisation consumes the same random numbers as before (runs stay
        # comparable across versions and configurations)
        u = u[: self._router_rows(num_experts), : self._router_width]
        ids, meta = self._appended_meta(group_id, num_experts, rank, trainable)
        if trainable:
            self._set_param("lora_A", a.to(dt), trainable=True)
            self._set_param("lora_B", b, trainable=True)
            self._set_param("router", u.to(dt), trainable=True)
        else:
            # frozen experts go at the end of the frozen bank, before any trainable group
            self._set_param("frozen_A", torch.cat([self.frozen_A, a.to(dt)]), trainable=False)
            self._set_param("frozen_B", torch.cat([self.frozen_B, b], dim=1), trainable=False)
            self._set_param("frozen_router", torch.cat([self.frozen_router, u.to(dt)]), trainable=False)
        self._set_meta(meta, w.device)
        if self.router_bank is not None:
            self.router_bank.extend(ids)
        return ids

    @torch.no_grad()
    def fold(self) -> None:
        """Move the trainable group into the frozen bank (rows of A, columns of B, router rows); no-op if none.

        The output is unchanged: the concatenated bank is the same, only ``requires_grad`` changes. An open router
        of a router bank is closed too.
        """
        if self.router_bank is not None:
            self.router_bank.close()
        if not self.has_trainable_group:
            return
        self._set_param("frozen_A", torch.cat([self.frozen_A, self.lora_A.detach()]), trainable=False)
        self._set_param("frozen_B", torch.cat([self.frozen_B, self.lora_B.detach()], dim=1), trainable=False)
        self._set_param("frozen_router", torch.cat([self.frozen_router, self.router.detach()]), trainable=False)
        for name in TRAINABLE_NAMES:
            self._set_param(name, self._empty(name, 0, self.frozen_A.dtype, self.frozen_A.device), trainable=True)
        self._set_meta({**self._meta, "expert_trainable": [False] * self._n_experts}, self.expert_id.device)

    @torch.no_grad()
    def prune(self, expert_ids: list[int]) -> None:
        """Remove the experts with these ids (their A rows, B columns and router rows) from either bank."""
        keep = self._keep_after_prune(expert_ids)  # [E] host
        slot_keep = [k for k, r in zip(keep, self._meta["expert_rank"]) for _ in range(r)]  # [R] host
        nf = self._n_frozen
        nf_slots = sum(self._meta["expert_rank"][:nf])
        dev = self.frozen_A.device

        def mask(values: list[bool]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.bool, device=dev)

        fs, ts = mask(slot_keep[:nf_slots]), mask(slot_keep[nf_slots:])
        self._set_param("frozen_A", self.frozen_A[fs], trainable=False)
        self._set_param("frozen_B", self.frozen_B[:, fs], trainable=False)
        if self.tied_router:
            self._set_param("frozen_router", self.frozen_router[mask(keep[:nf])], trainable=False)
        if self.has_trainable_group:
            self._set_param("lora_A", self.lora_A.detach()[ts], trainable=True)
            self._set_param("lora_B", self.lora_B.detach()[:, ts], trainable=True)
            if self.tied_router:
                self._set_param("router", self.router.detach()[mask(keep[nf:])], trainable=True)
        if self.router_bank is not None:
            self.router_bank.prune([e for e, k in zip(self._meta["expert_id"], keep) if not k])
        self._set_meta({k: [v for v, kk in zip(vals, keep) if kk] for k, vals in self._meta.items()}, self.expert_id.device)

    def structure(self) -> dict:
        """JSON-serialisable description of the bank (enough to rebuild empty tensors of the right shapes)."""
        spec = self._meta_spec()
        if self.router_bank is not None:
            spec["router_bank"] = self.router_bank.structure()
        return spec

    @torch.no_grad()
    def load_structure(self, spec: dict) -> None:
        """Resize the banks to match :meth:`structure` output (contents zero; load the tensors afterwards)."""
        meta, n_frozen = self._read_meta_spec(spec)
        ranks = meta["expert_rank"]
        fr, tr = sum(ranks[:n_frozen]), sum(ranks[n_frozen:])
        n_train = len(ranks) - n_frozen
        w = self.base.weight
        dt = self._pdtype()
        for name, rows in (("frozen_A", fr), ("frozen_B", fr), ("frozen_router", self._router_rows(n_frozen))):
            self._set_param(name, self._empty(name, rows, dt, w.device), trainable=False)
        for name, rows in (("lora_A", tr), ("lora_B", tr), ("router", self._router_rows(n_train))):
            self._set_param(name, self._empty(name, rows, dt, w.device), trainable=True)
        if (self.router_bank is not None) != ("router_bank" in spec):
            raise ValueError("router_bank: the checkpoint and the layer disagree on having a router bank")
        if self.router_bank is not None:
            self.router_bank.load_structure(spec["router_bank"])
        self._next_expert_id = int(spec.get("next_expert_id", max(meta["expert_id"], default=-1) + 1))
        self._set_meta(meta, w.device)

    # ------------------------------------------------------------------ router bank
    def open_router(self, router_id: int, *, trainable: bool = True, copy_previous: bool = True) -> None:
        """Open router ``router_id`` of the router bank over every present expert (see :meth:`RouterBank.open`)."""
        if self.router_bank is None:
            raise ValueError("this layer has no router bank (adapter site option router_bank)")
        self.router_bank.open(router_id, self.expert_ids, trainable=trainable, copy_previous=copy_previous)

    # ------------------------------------------------------------------ accounting
    def parameter_counts(self) -> dict:
        """Learnable parameters: ``{"experts": {group: n}, "routers": {group: n}, "shared": n}``: each group's
        experts (``r·(d_in + d_out)`` each) and router rows; ``shared``: router-bank rows, which belong to routers
        rather than groups."""
        per_row = self._router_width if self.tied_router else 0
        experts: dict[int, int] = {}
        routers: dict[int, int] = {}
        for g, r in zip(self._meta["expert_group"], self._meta["expert_rank"]):
            experts[g] = experts.get(g, 0) + r * (self.in_features + self.out_features)
            routers[g] = routers.get(g, 0) + per_row
        shared = 0 if self.router_bank is None else sum(p.numel() for p in self.router_bank.parameters())
        return {"experts": experts, "routers": routers, "shared": shared}

    def activated_per_token(self, mean_active: float | None = None) -> float:
        """Parameters one token uses: ``mean_active`` experts of average size (None: the router's nominal count,
        ``min(top_k, E)``, or ``E`` for the ``none`` router) plus every router row that scores it."""
        e = self._n_experts
        if e == 0:
            return 0.0
        k = mean_active if mean_active is not None else (e if self.router_mode == "none" else min(self.top_k, e))
        per_expert = sum(self._meta["expert_rank"]) * (self.in_features + self.out_features) / e
        if self.tied_router:
            router = e * self._router_width
        elif self.router_bank is not None and self.router_bank.router_ids:
            router = len(self.router_bank.rows_of(self.router_bank.router_ids[-1])) * self.in_features
        else:
            router = 0
        return float(k * per_expert + (router if self.router_mode != "none" else 0))

    # ------------------------------------------------------------------ forward
    def bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole bank, frozen experts first: ``A [R, d_in]``, ``B [d_out, R]``, ``U [E, d_in]`` (``U`` has no
        rows when the layer has no router of its own)."""
        if not self.has_trainable_group:
            return self.frozen_A, self.frozen_B, self.frozen_router
        if self.num_frozen == 0:
            return self.lora_A, self.lora_B, self.router
        return (
            torch.cat([self.frozen_A, self.lora_A]),
            torch.cat([self.frozen_B, self.lora_B], dim=1),
            torch.cat([self.frozen_router, self.router]),
        )

    def _follower_gates(self, n_tokens: int) -> torch.Tensor:
        weights = self.context.shared_gates.get(self.route_key)
        if weights is None:
            raise RuntimeError(
                f"follower projection of block {self.route_key!r} ran before its leader in this forward"
            )
        if weights.shape != (n_tokens, self._n_experts):
            raise RuntimeError(
                f"block {self.route_key!r}: the leader's gates are {tuple(weights.shape)}, this follower needs "
                f"{(n_tokens, self._n_experts)} (leader and followers must hold the same experts)"
            )
        return weights

    def gate_weights(
        self, x2d: torch.Tensor, batch: int, seq: int, router: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingEvent | None]:
        """Routing for ``x2d [N, d_in]`` (``N = batch * seq``): returns weights ``[N, E]`` fp32 and the event.

        ``router`` ``[E, d_in]``: the bank's router rows if the caller already has them (saves a concatenation).
        """
        ctx = self.context
        if self.route_role == "follower":
            return self._follower_gates(x2d.shape[0]), None
        if self.router_bank is not None:
            rid = None if ctx.router_ids is None else ctx.per_row(ctx.router_ids, batch, self.stream, "router_ids")
            scores = self.router_bank.scores(
                x2d, self._meta["expert_id"], self.router_mode, self.cos_scale, rid, batch, seq
            )  # [N, E] fp32
        else:
            u = self.bank()[2] if router is None else router
            scores = router_scores(x2d, u, self.router_mode, self.cos_scale, unit_rows=self._unit_rows(u))  # [N, E]
        adjusted = scores
        if ctx.policy is not None:
            adjusted = ctx.policy(adjusted, self)
        allowed = ctx.allowed_experts(self.expert_group, batch, seq, max(self._groups), self.stream)
        if ctx.selector is not None or ctx.selections:
            chosen = ctx.selection(self, x2d.reshape(batch, seq, -1), batch, self.stream)  # [B] group ids
            if chosen is not None:
                picked = (self.expert_group[None, :] == chosen[:, None]).unsqueeze(1)  # [B, 1, E]
                picked = picked.expand(batch, seq, -1).reshape(batch * seq, -1)  # [N, E]
                allowed = picked if allowed is None else allowed & picked
        if allowed is not None:
            adjusted = adjusted.masked_fill(~allowed, float("-inf"))
        if self.router_mode == "none":
            weights = route(adjusted, self.top_k, self.temperature, dense_ones=True)
        else:
            weights = route(adjusted, self.top_k, self.temperature)
        event = None
        if ctx.recording and ctx.observers:
            event = RoutingEvent(
                self, scores, adjusted, weights, ctx.token_mask(batch, seq, self.stream),
                inputs=x2d if ctx.capture_inputs else None,
            )
        if self.route_role == "leader":
            ctx.shared_gates[self.route_key] = weights
        return weights, event

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_in]`` → ``[..., d_out]``; text rows ``[B, T, d_in]``, vision rows ``[images, patches, d_in]``."""
        out = self.base(x)
        if self._n_experts == 0 or self.context.bypass:
            return out
        lead = x.shape[:-1]
        batch, seq = (lead[0], math.prod(lead[1:])) if len(lead) >= 2 else (1, math.prod(lead))
        x2d = x.reshape(-1, self.in_features)  # [N, d_in]
        a, b, u = self.bank()  # concatenated once per forward (frozen + trainable)
        weights, event = self.gate_weights(x2d, batch, seq, u)
        if event is not None:
            self.context.emit(event)
        k_live = self._n_experts if self.router_mode == "none" else min(self.top_k, self._n_experts)
        if self._sparse_now(x2d.shape[0], k_live):
            top_w, top_idx = top_experts(weights, k_live)  # [N, K] each
            xs = self.dropout(x2d)
            if torch.is_autocast_enabled(x.device.type):
                xs = xs.to(torch.get_autocast_dtype(x.device.type))  # bmm runs in the autocast dtype, as the GEMMs do
            b_t = self._b_transposed(b, xs.dtype)
            delta = moe_lora_delta_sparse(xs, a, b_t, top_w, top_idx, self._size, self.scaling)
            return out + delta.reshape(*lead, self.out_features).to(out.dtype)
        ranks = self._size if self._size is not None else self.expert_rank
        # .to() is a no-op when dtypes agree; under autocast the GEMMs run in the autocast dtype anyway
        a, b = a.to(x.dtype), b.to(x.dtype)
        delta = moe_lora_delta(self.dropout(x2d), a, b, weights.to(x.dtype), ranks, self.scaling)  # [N, d_out]
        return out + delta.reshape(*lead, self.out_features).to(out.dtype)

    def _sparse_now(self, n_tokens: int, k_live: int) -> bool:
        """Whether this forward takes the sparse path (see the module docstring)."""
        if self.sparse == "never" or self._size is None:
            return False
        if self.sparse == "always":
            return True
        return (
            not self.training
            and not torch.is_grad_enabled()
            and k_live < self._n_experts
            and n_tokens * k_live * SPARSE_AUTO_FACTOR <= self._n_experts
        )

    def _unit_rows(self, u: torch.Tensor) -> torch.Tensor | None:
        """The cosine router's normalised rows ``[E, d_in]`` fp32, cached while ``u`` is an unchanged parameter and
        gradients are off (inference on a folded bank); None = let :func:`router_scores` normalise."""
        if self.router_mode != "cosine" or self.cos_scale <= 0 or not isinstance(u, nn.Parameter):
            return None
        if torch.is_grad_enabled():
            return None
        c = self._unit_cache
        if c is not None and c[0] is u and c[1] == u._version and c[2] == u.data_ptr() and c[3].device == u.device:
            return c[3]
        rows = torch.nn.functional.normalize(u.detach().float(), dim=-1)
        self._unit_cache = (u, u._version, u.data_ptr(), rows)
        return rows

    def _b_transposed(self, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``B^T [R, d_out]`` contiguous in the compute ``dtype``, cached while ``b`` is an unchanged parameter (a
        folded bank at inference: transposed once, not per decoding step). The cache holds one extra copy of B per
        layer in the compute dtype (7B, bf16: ~1.4 GB over all 224 projections of a 512-slot bank); it is dropped
        when the bank changes (growth, fold, prune, load) and rebuilt when B is updated in place."""
        if not isinstance(b, nn.Parameter) or torch.is_grad_enabled():
            return b.t().to(dtype).contiguous()  # a fresh concatenation (trainable group present) or with grads
        c = self._b_t_cache
        if (c is not None and c[0] is b and c[1] == b._version and c[2] == b.data_ptr()
                and c[3].device == b.device and c[3].dtype == dtype):
            return c[3]
        b_t = b.detach().t().to(dtype).contiguous()
        self._b_t_cache = (b, b._version, b.data_ptr(), b_t)
        return b_t

    def extra_repr(self) -> str:
        role = "" if self.route_role == "own" else f", {self.route_role} of {self.route_key}"
        bank = "" if self.router_bank is None else f", router bank {self.router_bank.router_ids}"
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts} "
            f"(frozen {self.num_frozen}), groups={self.groups}, router={self.router_mode}, top_k={self.top_k}, "
            f"T={self.temperature}, scaling={self.scaling:g}, stream={self.stream}{role}{bank}"
        )
