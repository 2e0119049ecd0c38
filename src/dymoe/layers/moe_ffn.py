"""``MoEFFN``: a frozen MLP block plus growable domain modules of routed SwiGLU experts (smoe-dsal.md §1–§2).

A **group** here is one domain module: ``N_e`` SwiGLU experts of width ``d'`` and the group's own router. The
layer wraps the whole MLP module (its input is the FFN input ``ĥ``, after the post-attention norm) and returns

- router ``"at"`` (the AT-Router, Eqs. 5–6, 8, 11): ``ȟ = (1 + k) · (Σ_{n∈A} s̃_n E_n(ĥ) + α̃ · FFN(ĥ))``, where
  the group's router scores ``[α, s_1..s_Ne]``, ``A = {n : s_n > α}``, ``k = |A|`` and the softmax runs over
  ``{α} ∪ {s_n : n ∈ A}``. A token with ``k = 0`` gets exactly the base block's output;
- router ``"topk"`` (a standard sparse router, the paper's "w/o AT-Router" ablation and its SMoE/DMoE rows):
  ``ȟ = FFN(ĥ) + Σ_n w_n E_n(ĥ)`` with ``w`` the top-K softmax of the group's scores.

Each group's router is ``Linear(d, h) → SiLU → Linear(h, N_e + 1)`` (``h = router_hidden``; 0 = one linear layer);
the threshold ``α`` is its first output (AT only). Which group a sample uses: the selector's answer (DSAL,
cached per layer), else the newest group its ``group_mask`` row allows, else the trainable group (training) or the
newest group. All experts of the bank are stored concatenated and the gated sum is three GEMMs
(:func:`~dymoe.layers.functional.moe_ffn_delta`); when every token uses the same group (known on the host) only
that group's slice is computed. There is no Python loop over experts: per-sample groups use one block-diagonal
GEMM for all routers and gates that are zero outside each token's group.

Initialisation (smoe-dsal.md §8, proposed): ``W_gate``/``W_up`` the ``nn.Linear`` default, ``W_down = 0`` (the
block is unchanged at step 0), router weights ``N(0, 0.02)`` and zero biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dymoe.layers.base import EXPERT_INITS, ExpertLayer
from dymoe.layers.context import RoutingContext, RoutingEvent
from dymoe.layers.functional import at_combine, at_route, moe_ffn_delta, route

EXPERT_NAMES = ("w_gate", "w_up", "w_down")
ROUTER_NAMES = ("router_w1", "router_b1", "router_w2", "router_b2")
TRAINABLE_NAMES = EXPERT_NAMES + ROUTER_NAMES
FROZEN_NAMES = tuple(f"frozen_{n}" for n in TRAINABLE_NAMES)
FFN_ROUTERS = ("at", "topk")
DOWN_INITS = ("zero", "kaiming")


def mlp_dims(mlp: nn.Module) -> tuple[int, int, torch.Tensor]:
    """``(d_in, d_out, a weight)`` of an MLP block: its first linear's input and last linear's output size."""
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(mlp).__name__} has no nn.Linear: give d_model explicitly")
    return linears[0].in_features, linears[-1].out_features, linears[0].weight


class MoEFFN(ExpertLayer):
    """A frozen MLP block with routed, growable groups of SwiGLU experts (see the module docstring).

    Args:
        base: the wrapped MLP module (frozen in place), called as ``base(x)``.
        d_model, d_out: input / output size; None = the block's first linear's input / last linear's output.
        router: ``"at"`` (AT-Router) or ``"topk"``.
        router_hidden: hidden width ``h`` of each group's router MLP (0: a single linear layer).
        top_k, temperature: of the ``topk`` router.
        scale_by_count: Eq. 11's ``(1 + k)`` factor (ablation 5 turns it off).
        dropout: dropout on the experts' input (not on the router's or the base block's).
        down_init: ``"zero"`` (default: the block is unchanged at init) or ``"kaiming"`` (``nn.Linear`` default).
        router_init_std: std of the router weights' normal init.
        param_dtype: dtype of the expert tensors; None = the block's.
        context: the shared :class:`RoutingContext`; stream: ``"text"`` or ``"vision"``.
    """

    kind = "moe_ffn"
    size_name = "expert_width"
    trainable_names = TRAINABLE_NAMES
    frozen_names = FROZEN_NAMES

    def __init__(
        self,
        base: nn.Module,
        *,
        d_model: int | None = None,
        d_out: int | None = None,
        router: str = "at",
        router_hidden: int = 16,
        top_k: int = 1,
        temperature: float = 1.0,
        scale_by_count: bool = True,
        dropout: float = 0.0,
        down_init: str = "zero",
        router_init_std: float = 0.02,
        param_dtype: torch.dtype | None = None,
        context: RoutingContext | None = None,
        stream: str = "text",
    ):
        super().__init__()
        if router not in FFN_ROUTERS:
            raise ValueError(f"router must be one of {FFN_ROUTERS}, got {router!r}")
        if down_init not in DOWN_INITS:
            raise ValueError(f"down_init must be one of {DOWN_INITS}, got {down_init!r}")
        if router_hidden < 0 or top_k < 1 or temperature <= 0:
            raise ValueError(f"need router_hidden >= 0, top_k >= 1, temperature > 0; got {router_hidden}, {top_k}, "
                             f"{temperature}")
        d_in, d_o, w = mlp_dims(base) if d_model is None or d_out is None else (d_model, d_out, None)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        if w is None:
            w = next(base.parameters())
        self.d_model, self.d_out = int(d_model or d_in), int(d_out or d_o)
        self.router_mode, self.router_hidden = router, int(router_hidden)
        self.top_k, self.temperature, self.scale_by_count = int(top_k), float(temperature), bool(scale_by_count)
        self.down_init, self.router_init_std = down_init, float(router_init_std)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.context = context if context is not None else RoutingContext()
        self.param_dtype = param_dtype
        self._threshold_rows = 1 if router == "at" else 0
        dt = param_dtype or w.dtype
        for name in FROZEN_NAMES + TRAINABLE_NAMES:
            self._set_param(name, self._empty(name, 0, 0, 0, dt, w.device), trainable=name in TRAINABLE_NAMES)
        self._init_meta(w.device, stream)

    # ------------------------------------------------------------------ tensors
    def _pdtype(self) -> torch.dtype:
        return self._parameters["frozen_w_gate"].dtype

    def _empty(self, name: str, slots: int, groups: int, rows: int, dtype, device) -> torch.Tensor:
        """A zero tensor for ``name`` holding ``slots`` expert slots / ``groups`` routers with ``rows`` outputs."""
        base = name.removeprefix("frozen_")
        h = self.router_hidden
        shapes = {
            "w_gate": (slots, self.d_model),
            "w_up": (slots, self.d_model),
            "w_down": (self.d_out, slots),
            "router_w1": (groups * h, self.d_model),
            "router_b1": (groups * h,),
            "router_w2": (rows, h if h else self.d_model),
            "router_b2": (rows,),
        }
        return torch.zeros(shapes[base], dtype=dtype, device=device)

    def _set_param(self, name: str, value: torch.Tensor, *, trainable: bool) -> None:
        trainable = trainable and value.numel() > 0
        setattr(self, name, nn.Parameter(value.detach().clone() if trainable else value.detach(), requires_grad=trainable))

    def _cat(self, name: str, dim: int = 0) -> torch.Tensor:
        """Frozen bank + trainable group of tensor ``name`` (no copy when one side is empty)."""
        f, t = getattr(self, f"frozen_{name}"), getattr(self, name)
        if not t.numel():
            return f
        if not f.numel():
            return t
        return torch.cat([f, t], dim=dim)

    def _group_sizes(self) -> list[tuple[int, int]]:
        """``(group id, experts)`` in bank order."""
        counts: dict[int, int] = {}
        for g in self._meta["expert_group"]:
            counts[g] = counts.get(g, 0) + 1
        return list(counts.items())

    def _refresh(self) -> None:
        super()._refresh()
        # host layout per group (bank order), recomputed only when the bank changes: expert positions, expert
        # slots, router rows and hidden units of each group; frozen groups first
        widths = self._meta["expert_width"]
        lay: dict[str, list] = {"experts": [], "slots": [], "rows": [], "hidden": []}
        e0 = s0 = r0 = 0
        h = self.router_hidden
        for k, (_, n) in enumerate(self._group_sizes()):
            s1 = s0 + sum(widths[e0 : e0 + n])
            r1 = r0 + n + self._threshold_rows
            lay["experts"].append((e0, e0 + n))
            lay["slots"].append((s0, s1))
            lay["rows"].append((r0, r1))
            lay["hidden"].append((k * h, (k + 1) * h))
            e0, s0, r0 = e0 + n, s1, r1
        lay["frozen_groups"] = len({g for g, t in zip(self._meta["expert_group"], self._meta["expert_trainable"])
                                    if not t})
        lay["expert_rows"] = [r0 + self._threshold_rows + j for (e0, e1), (r0, _) in zip(lay["experts"], lay["rows"])
                              for j in range(e1 - e0)]
        lay["group_of"] = [k for k, (e0, e1) in enumerate(lay["experts"]) for _ in range(e1 - e0)]
        lay["threshold_rows"] = [r0 for r0, _ in lay["rows"]]
        self._lay = lay
        self._dev: dict = {}

    def _layout(self) -> dict:
        return self._lay

    def _host_tensor(self, key: str, values: list[int], device) -> torch.Tensor:
        """A cached long tensor of host layout values on ``device`` (rebuilt when the bank changes)."""
        k = (key, str(device))
        if k not in self._dev:
            self._dev[k] = torch.tensor(values, dtype=torch.long, device=device)
        return self._dev[k]

    def group_tensors(self, group_id: int) -> dict[str, torch.Tensor]:
        """A domain module's tensors, as differentiable views: ``w_gate``/``w_up`` ``[Σ d', d]``, ``w_down``
        ``[d_out, Σ d']`` (its experts concatenated) and its router's ``router_w1``, ``router_b1``, ``router_w2``,
        ``router_b2`` (e.g. DSAL's virtual expert averages the experts' weights)."""
        if group_id not in self._groups:
            raise ValueError(f"no group {group_id} in this layer (it has {self._groups})")
        return self._group_tensors(self._groups.index(group_id))

    def _group_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """Group ``k``'s (bank order) tensors: slices of the frozen bank, or the trainable tensors themselves."""
        lay = self._lay
        if k >= lay["frozen_groups"]:
            return {n: getattr(self, n) for n in TRAINABLE_NAMES}
        (s0, s1), (r0, r1), (h0, h1) = lay["slots"][k], lay["rows"][k], lay["hidden"][k]
        return {
            "w_gate": self.frozen_w_gate[s0:s1], "w_up": self.frozen_w_up[s0:s1],
            "w_down": self.frozen_w_down[:, s0:s1],
            "router_w1": self.frozen_router_w1[h0:h1], "router_b1": self.frozen_router_b1[h0:h1],
            "router_w2": self.frozen_router_w2[r0:r1], "router_b2": self.frozen_router_b2[r0:r1],
        }

    # ------------------------------------------------------------------ growth
    def _random_group(self, num_experts: int, width: int, device) -> dict[str, torch.Tensor]:
        n, h, t = num_experts, self.router_hidden, self._threshold_rows
        gate = torch.empty(n * width, self.d_model, dtype=torch.float32, device=device)
        up = torch.empty(n * width, self.d_model, dtype=torch.float32, device=device)
        nn.init.kaiming_uniform_(gate, a=math.sqrt(5))  # nn.Linear(d, d') per expert: fan_in = d for every row block
        nn.init.kaiming_uniform_(up, a=math.sqrt(5))
        down = torch.zeros(self.d_out, n * width, dtype=torch.float32, device=device)
        if self.down_init == "kaiming":
            bound = 1.0 / math.sqrt(width)  # nn.Linear(d', d): fan_in = d' per expert
            down.uniform_(-bound, bound)
        w1 = torch.empty(h, self.d_model, dtype=torch.float32, device=device).normal_(std=self.router_init_std)
        w2 = torch.empty(n + t, h if h else self.d_model, dtype=torch.float32, device=device)
        w2.normal_(std=self.router_init_std)
        return {
            "w_gate": gate, "w_up": up, "w_down": down,
            "router_w1": w1, "router_b1": torch.zeros(h, device=device),
            "router_w2": w2, "router_b2": torch.zeros(n + t, device=device),
        }

    def expert_state(self, expert_ids: list[int]) -> dict[str, torch.Tensor]:
        """Copies of these experts' tensors: ``w_gate``/``w_up`` ``[n, d', d]``, ``w_down`` ``[n, d_out, d']``
        (the experts must share one width)."""
        pos = self.positions(list(expert_ids))
        widths = {self._meta["expert_width"][p] for p in pos}
        if len(widths) != 1:
            raise ValueError(f"experts {list(expert_ids)} have widths {sorted(widths)}; expected one width")
        offs = [0]
        for w in self._meta["expert_width"]:
            offs.append(offs[-1] + w)
        g, u, d = (self._cat(n, dim=1 if n == "w_down" else 0).detach() for n in EXPERT_NAMES)
        return {
            "w_gate": torch.stack([g[offs[p] : offs[p + 1]] for p in pos]).clone(),
            "w_up": torch.stack([u[offs[p] : offs[p + 1]] for p in pos]).clone(),
            "w_down": torch.stack([d[:, offs[p] : offs[p + 1]] for p in pos]).clone(),
        }

    @torch.no_grad()
    def add_group(self, group_id: int, num_experts: int, width: int, *, trainable: bool = True,
                  init: str = "default", source=None) -> list[int]:
        """Append a domain module of ``num_experts`` experts of width ``width`` and its router; returns the ids.

        ``init`` ``"mean"`` / ``"copy"``: experts start as the mean of groups ``source`` (None = every expert) or a
        copy of expert ``source`` (an id, or one entry of :meth:`expert_state`); the router is always fresh.
        """
        if init not in EXPERT_INITS:
            raise ValueError(f"init must be one of {EXPERT_INITS}, got {init!r}")
        self._check_new_group(group_id, num_experts, width, trainable)
        dev, dt = self.frozen_w_gate.device, self._pdtype()
        new = self._random_group(num_experts, width, dev)
        if init != "default":
            if init == "mean":
                pos = self.group_positions(None if source is None else list(source))
                if not pos:
                    raise ValueError("init='mean' needs existing experts")
                state = {k: v.float().mean(0) for k, v in self.expert_state([self.expert_ids[p] for p in pos]).items()}
            else:
                state = self.expert_state([int(source)]) if not isinstance(source, dict) else source
                state = {k: (v[0] if v.dim() == 3 else v).float() for k, v in state.items()}
            if state["w_gate"].shape[0] != width:
                raise ValueError(f"init={init!r}: the source experts have width {state['w_gate'].shape[0]}, "
                                 f"the new ones {width}")
            new["w_gate"] = state["w_gate"].to(dev).repeat(num_experts, 1)
            new["w_up"] = state["w_up"].to(dev).repeat(num_experts, 1)
            new["w_down"] = state["w_down"].to(dev).repeat(1, num_experts)
        ids, meta = self._appended_meta(group_id, num_experts, width, trainable)
        for name, value in new.items():
            value = value.to(dt)
            if trainable:
                self._set_param(name, value, trainable=True)
            else:
                f = getattr(self, f"frozen_{name}")
                self._set_param(f"frozen_{name}", torch.cat([f, value], dim=1 if name == "w_down" else 0),
                                trainable=False)
        self._set_meta(meta, dev)
        return ids

    @torch.no_grad()
    def fold(self) -> None:
        """Move the trainable domain module (experts and router) into the frozen bank; no-op if none."""
        if not self.has_trainable_group:
            return
        dev, dt = self.frozen_w_gate.device, self._pdtype()
        for name in TRAINABLE_NAMES:
            self._set_param(f"frozen_{name}", self._cat(name, dim=1 if name == "w_down" else 0).detach(),
                            trainable=False)
            self._set_param(name, self._empty(name, 0, 0, 0, dt, dev), trainable=True)
        self._set_meta({**self._meta, "expert_trainable": [False] * self._n_experts}, dev)

    @torch.no_grad()
    def prune(self, expert_ids: list[int]) -> None:
        """Remove experts by id (their slots and router rows); a group left without experts loses its router."""
        keep = self._keep_after_prune(expert_ids)
        lay = self._layout()
        widths = self._meta["expert_width"]
        slot_keep = [k for k, w in zip(keep, widths) for _ in range(w)]
        row_keep: list[bool] = []
        hid_keep: list[bool] = []
        for (e0, e1), _ in zip(lay["experts"], lay["rows"]):
            alive = any(keep[e0:e1])
            row_keep += [alive] * self._threshold_rows + keep[e0:e1]
            hid_keep += [alive] * self.router_hidden
        n_frozen_groups = lay["frozen_groups"]
        nf_slots = sum(widths[: self._n_frozen])
        nf_rows = lay["rows"][n_frozen_groups - 1][1] if n_frozen_groups else 0
        nf_hid = n_frozen_groups * self.router_hidden
        dev = self.frozen_w_gate.device
        splits = {"slot": (slot_keep, nf_slots), "row": (row_keep, nf_rows), "hid": (hid_keep, nf_hid)}
        kinds = {"w_gate": "slot", "w_up": "slot", "w_down": "slot", "router_w1": "hid", "router_b1": "hid",
                 "router_w2": "row", "router_b2": "row"}
        for name, kind in kinds.items():
            values, cut = splits[kind]
            for prefix, part in (("frozen_", values[:cut]), ("", values[cut:])):
                t = getattr(self, prefix + name).detach()
                m = torch.tensor(part, dtype=torch.bool, device=dev)
                self._set_param(prefix + name, t[:, m] if name == "w_down" else t[m], trainable=not prefix)
        self._set_meta({k: [v for v, kk in zip(vals, keep) if kk] for k, vals in self._meta.items()}, dev)

    @torch.no_grad()
    def load_structure(self, spec: dict) -> None:
        """Resize the banks to match :meth:`structure` output (contents zero; load the tensors afterwards)."""
        meta, n_frozen = self._read_meta_spec(spec)
        self._next_expert_id = int(spec.get("next_expert_id", max(meta["expert_id"], default=-1) + 1))
        dev, dt = self.frozen_w_gate.device, self._pdtype()
        self._set_meta(meta, dev)
        lay = self._layout()
        groups = self._group_sizes()
        nfg = lay["frozen_groups"]
        parts = {
            "frozen_": (sum(meta["expert_width"][:n_frozen]), nfg, lay["rows"][nfg - 1][1] if nfg else 0),
        }
        total_rows = lay["rows"][-1][1] if groups else 0
        parts[""] = (sum(meta["expert_width"]) - parts["frozen_"][0], len(groups) - nfg, total_rows - parts["frozen_"][2])
        for prefix, (slots, ngroups, rows) in parts.items():
            for name in TRAINABLE_NAMES:
                self._set_param(prefix + name, self._empty(name, slots, ngroups, rows, dt, dev), trainable=not prefix)

    # ------------------------------------------------------------------ accounting
    def _router_params(self, n_experts: int) -> int:
        h, rows = self.router_hidden, n_experts + self._threshold_rows
        return (h * self.d_model + h + rows * h + rows) if h else rows * self.d_model + rows

    def parameter_counts(self) -> dict:
        """Learnable parameters: ``{"experts": {group: n}, "routers": {group: n}, "shared": 0}`` (experts
        ``d'·(2·d + d_out)`` each; each domain module's router)."""
        routers = {g: self._router_params(n) for g, n in self._group_sizes()}
        experts = {g: 0 for g in routers}
        for g, w in zip(self._meta["expert_group"], self._meta["expert_width"]):
            experts[g] += w * (2 * self.d_model + self.d_out)
        return {"experts": experts, "routers": routers, "shared": 0}

    def activated_per_token(self, mean_active: float | None = None) -> float:
        """Parameters one token uses: ``mean_active`` experts (None: every expert of a group for ``at``, the
        router's maximum; ``min(top_k, N_e)`` for ``topk``) of average size plus one group's router."""
        sizes = self._group_sizes()
        if not sizes:
            return 0.0
        n = max(c for _, c in sizes)
        k = mean_active if mean_active is not None else (n if self.router_mode == "at" else min(self.top_k, n))
        per_expert = sum(self._meta["expert_width"]) * (2 * self.d_model + self.d_out) / self._n_experts
        return float(k * per_expert + self._router_params(n))

    # ------------------------------------------------------------------ forward
    def _token_groups(self, x2d: torch.Tensor, batch: int, seq: int) -> tuple[int | None, torch.Tensor | None]:
        """``(k, None)`` when every token uses group ``k`` (bank-order index, known on the host), else
        ``(None, [N] long)`` per-token group index (-1: no group, the base block alone)."""
        ctx = self.context
        chosen = None
        if ctx.selector is not None or ctx.selections:
            ids = ctx.selection(self, x2d.reshape(batch, seq, -1), batch, self.stream)  # [B] group ids
            if ids is not None:
                table = self._host_tensor("groups", self._groups, ids.device)  # [G]
                match = ids[:, None] == table[None, :]  # [B, G]
                chosen = torch.where(match.any(-1), match.long().argmax(-1), -1)  # [B]
        if chosen is None and ctx.group_mask is not None:
            gm = ctx.per_row(ctx.group_mask, batch, self.stream, "group_mask")
            if max(self._groups) >= gm.shape[1]:
                raise ValueError(f"group_mask has {gm.shape[1]} columns; expert groups go up to {max(self._groups)}")
            allowed = gm[:, self._host_tensor("groups", self._groups, gm.device)]  # [B, G]
            last = allowed.shape[1] - 1 - allowed.flip(-1).long().argmax(-1)  # newest allowed group
            chosen = torch.where(allowed.any(-1), last, -1)
        if chosen is None:
            return len(self._groups) - 1, None  # the trainable group (bank's tail) or the newest
        return None, chosen[:, None].expand(batch, seq).reshape(-1)

    def _router_scores(self, x2d: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
        """Router outputs ``[N, rows]`` in fp32 (fp64 for fp64 inputs) of one group (or, with block-diagonal
        ``w2``, of several): thresholds and scores are compared, so they are not computed in bf16."""
        dt = torch.promote_types(x2d.dtype, torch.float32)
        with torch.autocast(x2d.device.type, enabled=False):
            xf = x2d.to(dt)
            hid = F.silu(xf @ w1.to(dt).T + b1.to(dt)) if self.router_hidden else xf
            return hid @ w2.to(dt).T + b2.to(dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d]`` (the FFN input) → ``[..., d_out]``."""
        ffn = self.base(x)
        ctx = self.context
        if self._n_experts == 0 or ctx.bypass:
            return ffn
        lead = x.shape[:-1]
        batch, seq = (lead[0], math.prod(lead[1:])) if len(lead) >= 2 else (1, math.prod(lead))
        x2d = x.reshape(-1, self.d_model)  # [N, d]
        ffn2d = ffn.reshape(-1, self.d_out)
        group, per_token = self._token_groups(x2d, batch, seq)
        lay = self._layout()
        t = self._threshold_rows
        if group is not None:
            # one group for every token: its slice of the bank only
            e0, e1 = lay["experts"][group]
            g = self._group_tensors(group)
            gate, up, down = g["w_gate"], g["w_up"], g["w_down"]
            scores = self._router_scores(x2d, g["router_w1"], g["router_b1"], g["router_w2"], g["router_b2"])
            thr, s = (scores[:, 0], scores[:, t:]) if t else (None, scores)
            valid, experts = None, slice(e0, e1)
        else:
            # per-sample groups: every router in one block-diagonal GEMM, gates zero outside each token's group
            gate, up, down = self._cat("w_gate"), self._cat("w_up"), self._cat("w_down", dim=1)
            w2 = self._cat("router_w2")
            if self.router_hidden:
                w2 = torch.block_diag(*(w2[r0:r1] for r0, r1 in lay["rows"]))  # [rows, G·h]
            scores = self._router_scores(x2d, self._cat("router_w1"), self._cat("router_b1"), w2,
                                         self._cat("router_b2"))  # [N, rows]
            s = scores[:, self._host_tensor("expert_rows", lay["expert_rows"], x.device)]  # [N, E]
            group_of = self._host_tensor("group_of", lay["group_of"], x.device)  # [E] group index of each expert
            valid = group_of[None, :] == per_token[:, None]  # [N, E]
            thr = None
            if t:
                thr_rows = self._host_tensor("threshold_rows", lay["threshold_rows"], x.device)  # [G]
                thr = scores.gather(1, thr_rows[per_token.clamp_min(0)][:, None]).squeeze(1)  # [N]
            experts = None
        size = self._size if self._size is not None else (
            self.expert_width if experts is None else self.expert_width[experts])
        if self.router_mode == "at":
            alpha_w, weights, k = at_route(torch.cat([thr[:, None], s], dim=-1), valid)
            adjusted = s.masked_fill(weights == 0, float("-inf"))
        else:
            adjusted = s if valid is None else s.masked_fill(~valid, float("-inf"))
            weights = route(adjusted, self.top_k, self.temperature)
        if ctx.recording and ctx.observers:
            ctx.emit(RoutingEvent(self, s, adjusted, weights, ctx.token_mask(batch, seq, self.stream),
                                  experts=experts, threshold=thr, inputs=x2d if ctx.capture_inputs else None))
        dt = x.dtype
        y = moe_ffn_delta(self.dropout(x2d), gate.to(dt), up.to(dt), down.to(dt), weights.to(dt), size)  # [N, d_out]
        if self.router_mode == "at":
            out = at_combine(ffn2d, y, alpha_w, k, self.scale_by_count).to(ffn.dtype)
        else:
            out = ffn2d + y.to(ffn.dtype)
        return out.reshape(*lead, self.d_out)

    def extra_repr(self) -> str:
        return (
            f"d={self.d_model}, d_out={self.d_out}, experts={self.num_experts} (frozen {self.num_frozen}), "
            f"groups={self.groups}, router={self.router_mode} (hidden {self.router_hidden}), stream={self.stream}"
        )
