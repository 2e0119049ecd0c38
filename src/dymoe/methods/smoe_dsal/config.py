"""``smoe_dsal``'s options (smoe-dsal.md §4, §5, §8: the paper's settings; [P] = proposed where it is silent)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dymoe.errors import ConfigError
from dymoe.methods.smoe_dsal.functional import BALANCE_FREQUENCIES
from dymoe.methods.smoe_dsal.identify import EDI_FEATURES

#: how each layer's domain module is chosen at evaluation (smoe-dsal.md §3, §5)
SELECTIONS = ("dsal", "router", "edi", "plus", "oracle", "last")
ROUTERS = ("at", "topk")
BALANCE_TOKENS = ("all", "prompt")


@dataclass
class SMoEDSALOptions:
    """Options of ``smoe_dsal`` (defaults: the paper at LLaVA-1.5-7B, smoe-dsal.md §8).

    Attributes:
        num_experts: N_e SwiGLU experts per domain module and layer: 4.
        expert_width: d' of each expert: 128 (the paper at d = 4096; small backbones scale it down, e.g. the
            miniature's 16 at d = 64 keeps d'/d = 1/32 as 128/4096).
        router: ``at`` (the AT-Router) or ``topk`` (ablation 1, "w/o AT-Router": a standard top-1 softmax router,
            ``out = FFN + g · E_top1``).
        router_top_k: experts per token of the ``topk`` router: 1 (ablation 1 and Table 2's SMoE row); ``N_e``
            gives Table 2's dense DMoE row (every expert, softmax-weighted).
        router_hidden: the router MLP's hidden width (Linear(d, h) → SiLU → Linear(h, N_e + 1)): 16 [P].
        scale_by_count: Eq. 11's ``(1 + k_t)`` factor (ablation 5 turns it off): true.
        projector_dim: d_p of DSAL's projector P^{(l,i)} (Linear(d, d_p)): 32 [P] (fits Table 3's 208M).
        beta: weight of L2 = Σ_l L_DSAL^{(l)} (0 = ablation 3, "w/o DSAL"): 0.1.
        eta: weight of L3 = Σ_l L_Bal^{(l)} (0 = ablation 4, "w/o L3"): 0.1.
        topk_weight: weight of L4 (App. C; Table 10 uses 0.1): 0 = off.
        topk_target: K of L4: 2.
        balance_frequency: f_n in L_Bal (A8): ``share`` (count_n / Σ count) [P] or ``per_token`` (count_n / |B|).
        balance_tokens: tokens of L3: ``all`` non-pad tokens [P] or ``prompt`` tokens only.
        soft_label_temperature: τ of the soft labels softmax(H⁽⁰⁾ W_emᵀ / τ): 1 [P].
        dsal_chunk: positions per chunk of the logsumexp over the vocabulary (memory, not results): 256.
        dsal_detach_input: stop L2's gradient at the layer input (A9): false (earlier layers' modules get it).
        selection: the module choice at evaluation: ``dsal`` (Eq. 4, per layer and instance at prefill),
            ``router`` (ablation 3's rule: per layer the module maximising the prompt mean of max_n s_n − α),
            ``edi`` (ablation 2: the nearest domain prototype of the backbone's image/text representation picks
            the module of every layer; train it with ``beta: 0``, "experts trained without L2"), ``plus``
            ("Ours+", App. D: per layer the DSAL argmin plus every module whose DSAL on the input is below its mean
            DSAL on its own training data, their outputs averaged), ``oracle`` (the test set's own domain at every
            layer), ``last`` (the newest module).
        variants: extra evaluations with their own matrices, each a selection rule (e.g. ``[oracle]``: the
            single-domain upper bound of the same modules).
        edi_features: EDI's representation [P] (:mod:`.identify`): ``image_text`` (the vision tower's and the
            language model's pooled features, each L2-normalised, concatenated; the paper uses CLIP's image and
            text encoders) or ``image`` (the vision tower alone). The domain prototypes are always computed (a
            feature pass of the frozen backbone over each domain's training data, in its planning phase) and
            EDI's identification accuracy is reported beside the selection's at every evaluation.
        mean_dsal_fraction: share of each domain's training samples over which its modules' mean DSAL ``μ`` is
            measured after its training (what ``plus`` compares against): 1 = all (the paper), 0 = not measured
            (then ``plus`` is refused).
    """

    num_experts: int = 4
    expert_width: int = 128
    router: str = "at"
    router_top_k: int = 1
    router_hidden: int = 16
    scale_by_count: bool = True
    projector_dim: int = 32
    beta: float = 0.1
    eta: float = 0.1
    topk_weight: float = 0.0
    topk_target: float = 2.0
    balance_frequency: str = "share"
    balance_tokens: str = "all"
    soft_label_temperature: float = 1.0
    dsal_chunk: int = 256
    dsal_detach_input: bool = False
    selection: str = "dsal"
    variants: list[str] = field(default_factory=lambda: ["oracle"])
    edi_features: str = "image_text"
    mean_dsal_fraction: float = 1.0

    def __post_init__(self):
        choices = {"router": ROUTERS, "balance_frequency": BALANCE_FREQUENCIES, "balance_tokens": BALANCE_TOKENS,
                   "selection": SELECTIONS, "edi_features": EDI_FEATURES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        bad = [v for v in self.variants if v not in SELECTIONS]
        if bad:
            raise ConfigError(f"method.variants: {bad} are not selection rules; allowed: {list(SELECTIONS)}")
        if self.selection in self.variants:
            raise ConfigError(f"method.variants repeats the main selection {self.selection!r}")
        if not 1 <= int(self.router_top_k) <= int(self.num_experts):
            raise ConfigError(f"method.router_top_k must be in [1, num_experts = {self.num_experts}], got "
                              f"{self.router_top_k}")
        for key in ("num_experts", "expert_width", "projector_dim", "dsal_chunk"):
            if isinstance(getattr(self, key), bool) or int(getattr(self, key)) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if self.router_hidden < 0:
            raise ConfigError(f"method.router_hidden must be >= 0, got {self.router_hidden}")
        for key in ("beta", "eta", "topk_weight"):
            if float(getattr(self, key)) < 0:
                raise ConfigError(f"method.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= float(self.mean_dsal_fraction) <= 1:
            raise ConfigError(f"method.mean_dsal_fraction must be in [0, 1], got {self.mean_dsal_fraction}")
        if float(self.mean_dsal_fraction) == 0 and "plus" in [self.selection, *self.variants]:
            raise ConfigError("method.selection/variants 'plus' compares against each module's mean DSAL on its "
                              "training data: method.mean_dsal_fraction must be > 0")
        if self.soft_label_temperature <= 0:
            raise ConfigError(f"method.soft_label_temperature must be > 0, got {self.soft_label_temperature}")
