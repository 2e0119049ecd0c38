"""How experts are attached: :class:`AdapterConfig` (the flat fields: one site of LoRA experts on the language
model's linears, LLaVA-DyMoE's defaults) and :class:`SiteConfig` (one injection site: a target kind, where, its
sizes and its router).

An adapter may have several sites (``adapter.sites``), each a mapping of overrides:

- ``kind: linear`` (default): routed LoRA experts (:class:`~dymoe.layers.moe_lora.MoELoRALinear`) on the matched
  ``nn.Linear`` modules; unspecified fields come from the flat fields. ``scope: vision`` puts them in the vision
  tower (D-MoLE, dmole.md §2). ``share_router: block`` gives the projections of one parent module (``mlp``) one
  router: the first is the leader, the others follow (CMoE's gate_proj + up_proj, cmoe.md §2).
  ``router_bank: true`` routes with per-task routers selected per sample (CMoE, cmoe.md §3); with
  ``share_router: block`` the leader holds the block's router bank and its followers reuse its gates;
- ``kind: mlp``: routed SwiGLU experts beside whole MLP modules (:class:`~dymoe.layers.moe_ffn.MoEFFN`, SMoE,
  smoe-dsal.md §1–§2); unspecified fields come from :data:`MLP_DEFAULTS` (the paper's N_e = 4, d' = 128,
  AT-Router).

Without ``sites`` the flat fields are the one (default) site, exactly as before sites existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dymoe.errors import ConfigError
from dymoe.injection.targets import DEFAULT_TARGETS
from dymoe.layers.context import STREAMS
from dymoe.layers.functional import ROUTER_MODES
from dymoe.layers.moe_ffn import DOWN_INITS, FFN_ROUTERS
from dymoe.layers.moe_lora import INIT_MODES, SPARSE_MODES

SITE_KINDS = ("linear", "mlp")
SHARE_MODES = ("none", "block")
# an ``mlp`` site's defaults (smoe-dsal.md §1, §8): 4 SwiGLU experts of width 128 per domain, the AT-Router
MLP_DEFAULTS: dict[str, Any] = {
    "targets": ["mlp"],
    "experts_per_group": 4,
    "expert_width": 128,
    "router": "at",
    "router_hidden": 16,
    "top_k": 1,
    "temperature": 1.0,
    "dropout": 0.0,
}


@dataclass
class ExpertSiteFields:
    """The fields every site has and the flat :class:`AdapterConfig` fields are (documented there)."""

    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    scope: str | None = None
    experts_per_group: int = 16
    expert_rank: int = 4
    alpha: float | None = None
    bank_rank: int | None = None
    top_k: int = 16
    router: str = "cosine"
    temperature: float = 0.01
    cos_scale: float = 1.0
    dropout: float = 0.05
    init: str = "kaiming"
    sparse: str = "auto"

    @property
    def effective_bank_rank(self) -> int:
        return int(self.bank_rank or self.experts_per_group * self.expert_rank)

    @property
    def effective_alpha(self) -> float:
        """``alpha``, or ``2 × effective_bank_rank`` when it is None (tied, A6)."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.effective_bank_rank


@dataclass
class SiteConfig(ExpertSiteFields):
    """One injection site (see the module docstring).

    Attributes:
        name: unique name of the site (``default`` for the flat one).
        kind: ``linear`` (LoRA experts on linears) or ``mlp`` (SwiGLU experts beside MLP modules).
        stream: ``text`` or ``vision``; None = ``vision`` for ``scope: vision``, else ``text``.
        targets: linear-module (``linear``) or MLP-module (``mlp``) name suffixes, or ``re:<regex>`` on full names.
        scope: module path to search under; None = the language model; ``vision`` = the vision tower.
        experts_per_group: experts added per expansion.
        expert_rank: LoRA rank of each expert (``linear``).
        expert_width: hidden width d' of each SwiGLU expert (``mlp``).
        alpha, bank_rank, cos_scale, init: LoRA scaling and init (``linear``, as the flat fields).
        top_k, temperature: top-K routing (``linear``; ``mlp`` with ``router: topk``).
        router: ``cosine``/``linear``/``none`` (``linear``), ``at``/``topk`` (``mlp``).
        dropout: dropout on the experts' input.
        share_router: ``none`` or ``block`` (``linear``: one router per parent module, leader + followers).
        router_bank: per-sample router bank instead of per-expert router rows (``linear``; with
            ``share_router: block``, one bank per block, held by the leader).
        router_hidden: hidden width of each domain module's router MLP, 0 = linear (``mlp``).
        scale_by_count: Eq. 11's ``(1 + k)`` factor (``mlp``, AT-Router).
        down_init: ``zero`` or ``kaiming`` init of the experts' down projection (``mlp``).
        router_init_std: std of the router weights' normal init (``mlp``).
        sparse: ``auto``/``never``/``always``: the sparse inference path of LoRA experts (``linear``, see
            :class:`AdapterConfig`).
    """

    name: str = "default"
    kind: str = "linear"
    stream: str | None = None
    expert_width: int = 128
    share_router: str = "none"
    router_bank: bool = False
    router_hidden: int = 16
    scale_by_count: bool = True
    down_init: str = "zero"
    router_init_std: float = 0.02

    def __post_init__(self):
        where = f"adapter site {self.name!r}"
        if self.kind not in SITE_KINDS:
            raise ConfigError(f"{where}: kind must be one of {list(SITE_KINDS)}, got {self.kind!r}")
        if self.stream is None:
            self.stream = "vision" if self.scope == "vision" else "text"
        if self.stream not in STREAMS:
            raise ConfigError(f"{where}: stream must be one of {list(STREAMS)}, got {self.stream!r}")
        routers = ROUTER_MODES if self.kind == "linear" else FFN_ROUTERS
        if self.router not in routers:
            raise ConfigError(f"{where}: router must be one of {list(routers)} for kind {self.kind!r}, got {self.router!r}")
        if self.init not in INIT_MODES:
            raise ConfigError(f"{where}: init must be one of {list(INIT_MODES)}, got {self.init!r}")
        if self.sparse not in SPARSE_MODES:
            raise ConfigError(f"{where}: sparse must be one of {list(SPARSE_MODES)}, got {self.sparse!r}")
        if self.share_router not in SHARE_MODES:
            raise ConfigError(f"{where}: share_router must be one of {list(SHARE_MODES)}, got {self.share_router!r}")
        if self.down_init not in DOWN_INITS:
            raise ConfigError(f"{where}: down_init must be one of {list(DOWN_INITS)}, got {self.down_init!r}")
        for key in ("experts_per_group", "expert_rank", "expert_width", "top_k"):
            if isinstance(getattr(self, key), bool) or int(getattr(self, key)) < 1:
                raise ConfigError(f"{where}: {key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ConfigError(f"{where}: temperature must be > 0, got {self.temperature}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"{where}: alpha must be > 0 or null (2 × the bank rank), got {self.alpha}")
        if self.router_hidden < 0:
            raise ConfigError(f"{where}: router_hidden must be >= 0, got {self.router_hidden}")
        if not self.targets:
            raise ConfigError(f"{where}: targets must name at least one module")
        if self.kind == "mlp" and (self.share_router != "none" or self.router_bank):
            raise ConfigError(f"{where}: share_router and router_bank apply to kind 'linear' only")

    @property
    def expert_size(self) -> int:
        """The per-expert size ``add_group`` takes: the LoRA rank or the FFN width."""
        return int(self.expert_rank if self.kind == "linear" else self.expert_width)


# fields of the flat AdapterConfig that a linear site inherits
_INHERITED = tuple(f.name for f in fields(ExpertSiteFields))


@dataclass
class AdapterConfig(ExpertSiteFields):
    """How experts are attached (defaults: LLaVA-DyMoE, dymoe.md §2 and §8).

    Attributes:
        targets: linear-module name suffixes, or ``re:<regex>`` on full names.
        scope: module path to search under; None = the language model (the vision tower is never wrapped).
        experts_per_group: experts added per expansion (per task): 16.
        expert_rank: rank of each expert: 4.
        alpha: LoRA alpha; scaling = alpha / bank_rank. Not stated in the paper (A6): None (the default) ties it
            to 2 × the bank rank (scaling 2: LLaVA's 256 / 128, the port's 128 / 64), so changing the expert rank
            or count keeps the scaling; a number fixes it (e.g. 128, whatever the bank rank).
        bank_rank: divisor of alpha; None = experts_per_group × expert_rank (the per-task bank rank, 64).
        top_k: experts per token, over all present experts: 16.
        router: ``cosine`` (κ·cos, upstream DyMoE, A1), ``linear`` (CoIN MoELoRA) or ``none`` (IncLoRA/O-LoRA).
        temperature: routing softmax temperature: 0.01 for the cosine router; use 1.0 with ``linear``.
        cos_scale: κ of the cosine router: 1.0.
        dropout: LoRA dropout on the experts' input: 0.05 (A6).
        init: ``kaiming`` (PEFT/DyMoE) or ``normal`` (CoIN's N(0, 0.01)) for A; B starts at 0.
        sparse: when the LoRA experts compute only each token's top-K experts: ``auto`` (inference with few tokens
            at once, i.e. greedy decoding steps; training is always dense), ``never`` (always the dense path) or
            ``always`` (see :class:`~dymoe.layers.moe_lora.MoELoRALinear`). Same outputs up to round-off.
        param_dtype: ``float32`` keeps expert tensors in fp32 under a bf16/fp16 base (fp32 master weights with
            autocast, as PEFT does); ``base`` uses the base weights' dtype.
        sites: injection sites, each a mapping of :class:`SiteConfig` fields (see the module docstring); None =
            one site made of the flat fields above.
    """

    param_dtype: str = "float32"
    sites: list[dict[str, Any]] | None = None

    def __post_init__(self):
        if self.param_dtype not in ("float32", "base"):
            raise ConfigError(f"adapter.param_dtype must be 'float32' or 'base', got {self.param_dtype!r}")
        if self.router not in ROUTER_MODES:
            raise ConfigError(f"adapter.router must be one of {list(ROUTER_MODES)}, got {self.router!r}")
        if self.sparse not in SPARSE_MODES:
            raise ConfigError(f"adapter.sparse must be one of {list(SPARSE_MODES)}, got {self.sparse!r}")
        if self.init not in INIT_MODES:
            raise ConfigError(f"adapter.init must be one of {list(INIT_MODES)}, got {self.init!r}")
        for key in ("experts_per_group", "expert_rank", "top_k"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"adapter.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ConfigError(f"adapter.temperature must be > 0, got {self.temperature}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"adapter.alpha must be > 0 or null (2 × the bank rank), got {self.alpha}")
        if not self.targets:
            raise ConfigError("adapter.targets must name at least one module")
        self.resolved_sites()  # validate the sites now, with keys in the errors

    def resolved_sites(self) -> list[SiteConfig]:
        """The sites, with every field filled in (the flat fields alone when ``sites`` is None)."""
        flat = {k: getattr(self, k) for k in _INHERITED}
        if not self.sites:
            return [SiteConfig(name="default", kind="linear", **flat)]
        known = {f.name for f in fields(SiteConfig)}
        out, names = [], set()
        for i, raw in enumerate(self.sites):
            if not isinstance(raw, dict):
                raise ConfigError(f"adapter.sites[{i}]: expected a mapping, got {raw!r}")
            unknown = sorted(set(raw) - known)
            if unknown:
                raise ConfigError(f"adapter.sites[{i}]: unknown key {unknown[0]!r}; allowed: {sorted(known)}")
            kind = raw.get("kind", "linear")
            base = dict(flat) if kind == "linear" else dict(MLP_DEFAULTS)
            merged = {**base, "name": f"site{i}", **raw}
            try:
                site = SiteConfig(**merged)
            except TypeError as err:
                raise ConfigError(f"adapter.sites[{i}]: {err}") from None
            if site.name in names:
                raise ConfigError(f"adapter.sites[{i}]: the name {site.name!r} is used twice")
            names.add(site.name)
            out.append(site)
        return out

    def site(self, name: str) -> SiteConfig:
        for s in self.resolved_sites():
            if s.name == name:
                return s
        raise KeyError(f"no adapter site {name!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)

