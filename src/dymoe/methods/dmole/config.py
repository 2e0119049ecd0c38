"""``dmole``'s options (dmole.md §10 and §14: the paper's settings; open values are documented options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dymoe.errors import ConfigError
from dymoe.methods.dmole.allocation import MODALITIES, MODALITY_SCORES, SPLITS
from dymoe.methods.dmole.router import AE_RECIPES, EVAL_ROUTINGS, THRESHOLD_RULES

#: which linears form each slot kind, by name suffix: HF LLaMA/Qwen2 (q/k/v_proj, o_proj), CLIP (out_proj), HF InternVL
#: vision (projection_layer), and the remote-code InternViT (attn.qkv, attn.proj) / InternLM2 (attention.wqkv, wo)
QKV_NAMES = ["q_proj", "k_proj", "v_proj", "qkv", "wqkv"]
OUT_NAMES = ["o_proj", "out_proj", "projection_layer", "proj", "wo"]


@dataclass
class DMoLEOptions:
    """Options of ``dmole`` (defaults: the paper and its official code as dmole.md resolves them).

    Attributes:
        rank: LoRA rank of each expert: 8; alpha: None = 2 × rank (scale 2, the code's 16 / 8); dropout: 0.05 on the
            experts' input (the code; the paper is silent).
        modalities: where experts may go: ``[llm, vision]`` (the paper); ``[llm]`` / ``[vision]`` are ablations v1 / v2.
        llm_qkv, llm_out, vision_qkv, vision_out: linear-name suffixes of each slot kind (q, k and v of one block are
            one slot, like InternLM2's fused ``wqkv``).
        rho: budget ratio ρ: B = round_half_up(ρ · |C|) slots per task (0.5: 48 of 96 on InternVL2-2B).
        min_vision_frac: the code's vision floor: B_vis >= floor(0.25 · B); 0 disables it.
        modality_score: Score_M (Eq. 13): ``sum`` of per-slot norms (the code) or ``l2_concat`` (the paper's formula).
        split: ``gradient`` (Eq. 14–15), ``equal`` (B/2 each: ablation v3) or ``joint`` (one ranking over all slots).
        proxy_fraction: share of the task's training samples in the zero-cost proxy's subset: 0.01 (at least one).
        proxy_batch_size: None = training.batch_size.
        proxy_bias: add the bias gradient's norm to a slot's score (the code sums every parameter's grad norm).
        ae_hidden: autoencoder width: 128. ae_samples: features per task the autoencoder is trained on: at most
            11,264 (the code's 11 batches × 1024; the paper says the 1 % subset).
        ae_recipe: ``paper`` (Adam, ``ae_lr`` 1e-3, ``ae_epochs`` 100) or ``code`` (cosine from ``ae_lr`` to 1e-3,
            early stop after 10 flat epochs; set ae_lr 5e-3, ae_epochs 1000 for the official values).
        ae_batch_size: 1024. normalize_features: L2-normalise z (the code).
        threshold_rule: τ_k = ``threshold_multiplier`` × (``max`` of the in-task losses | their ``threshold_quantile``);
            default 1.2 × max (the official threshold file is written by nothing).
        eval_routing: ``per_sample`` (Eq. 10–12: top ``eval_top_k`` = 2 under threshold per sample) or
            ``batch_vote`` (the code: one vote per batch, the second task when it holds ``vote_support`` = 0.3).
        train_routing: ``per_sample`` (the most relevant prior task under threshold, per sample) or ``batch_vote``.
        train_prior: switch on the most relevant prior task's (frozen) experts during training: true (the paper).
    """

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.05
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    llm_qkv: list[str] = field(default_factory=lambda: list(QKV_NAMES))
    llm_out: list[str] = field(default_factory=lambda: list(OUT_NAMES))
    vision_qkv: list[str] = field(default_factory=lambda: list(QKV_NAMES))
    vision_out: list[str] = field(default_factory=lambda: list(OUT_NAMES))
    rho: float = 0.5
    min_vision_frac: float = 0.25
    modality_score: str = "sum"
    split: str = "gradient"
    proxy_fraction: float = 0.01
    proxy_batch_size: int | None = None
    proxy_bias: bool = True
    ae_hidden: int = 128
    ae_samples: int = 11264
    ae_recipe: str = "paper"
    ae_lr: float = 1e-3
    ae_epochs: int = 100
    ae_batch_size: int = 1024
    normalize_features: bool = True
    threshold_rule: str = "max"
    threshold_multiplier: float = 1.2
    threshold_quantile: float = 0.95
    eval_routing: str = "per_sample"
    eval_top_k: int = 2
    vote_support: float = 0.3
    train_routing: str = "per_sample"
    train_prior: bool = True

    def __post_init__(self):
        choices = {"modality_score": MODALITY_SCORES, "split": SPLITS, "ae_recipe": AE_RECIPES,
                   "threshold_rule": THRESHOLD_RULES, "eval_routing": EVAL_ROUTINGS, "train_routing": EVAL_ROUTINGS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"method.modalities must be a non-empty subset of {list(MODALITIES)}, got "
                              f"{self.modalities}")
        for key in ("rank", "ae_hidden", "ae_samples", "ae_epochs", "ae_batch_size", "eval_top_k"):
            if isinstance(getattr(self, key), bool) or int(getattr(self, key)) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.rho <= 1:
            raise ConfigError(f"method.rho must be in (0, 1], got {self.rho}")
        if not 0 <= self.min_vision_frac <= 1:
            raise ConfigError(f"method.min_vision_frac must be in [0, 1], got {self.min_vision_frac}")
        if not 0 < self.proxy_fraction <= 1:
            raise ConfigError(f"method.proxy_fraction must be in (0, 1], got {self.proxy_fraction}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"method.alpha must be > 0 or null (2 × rank), got {self.alpha}")
        if self.threshold_multiplier <= 0 or not 0 < self.threshold_quantile <= 1:
            raise ConfigError("method.threshold_multiplier must be > 0 and method.threshold_quantile in (0, 1]")

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank
