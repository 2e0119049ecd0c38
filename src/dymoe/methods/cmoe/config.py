"""``cmoe``'s options (cmoe.md §6 and §10: the paper's settings; [PROPOSED] values are options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dymoe.errors import ConfigError
from dymoe.methods.cmoe.functional import ACT_STATISTICS, COPY_SOURCES, THRESHOLD_SCOPES

#: which FFN projections each expert wraps (A5); the first of a block leads (holds the router bank)
TARGETS = {
    "up_proj": ["up_proj"],
    "gate_proj+up_proj": ["gate_proj", "up_proj"],
    "up_proj+down_proj": ["up_proj", "down_proj"],
}
LOCATORS = ("ptl", "oracle", "last_router", "random_router")
VARIANTS = ("oracle", "last_router", "random_router")
#: method.initial_data's fallback (A1): the initial experts trained on task 1
FIRST_TASK = "first_task"
PRIMITIVE_SUBSETS = ("last", "random")


@dataclass
class CMoEOptions:
    """Options of ``cmoe`` (defaults: the paper, cmoe.md §6; [P] = proposed where the paper is silent).

    Attributes:
        targets: FFN projections each expert wraps with one router per block (A5): ``gate_proj+up_proj`` [P],
            ``up_proj``, ``up_proj+down_proj``. Rank / alpha / dropout / init come from ``adapter``.
        top_k: experts per token (A3): 2 [P].
        initial_experts: experts per layer before PGKE starts: 8.
        initial_data: where the initial experts are trained (A1). ``first_task``: the small-scale fallback, they
            are trained on task 1 and PGKE starts at task 2 (recorded in the run's metadata). Otherwise a training
            file (LLaVA conversation rows, JSON list or JSONL; relative to the benchmark's data root) trained in an
            initial phase of its own before task 1 (``checkpoints/initial.plan``); PGKE then starts at task 1, and
            the initial experts have router 0 and task ``k``'s router is ``k + 1`` (cmoe.md §3's R_0).
        initial_image_root: the folder the initial file's images are relative to (relative to the data root);
            None: the file's folder.
        initial_epochs, initial_lr: the initial phase's epochs and learning rate; None: ``training.epochs`` /
            ``training.lr`` (its schedule and warmup are ``training``'s).
        probes: P probe experts per layer (A3): 1.
        probe_fraction: share of each task's training data used by PGKE: 0.1; split into probe-train / probe-eval.
        probe_eval_fraction: share of that subset used as probe-eval: 0.1 [P]; probe_eval_max: its cap, 10k [P].
        probe_lr: 3e-4; probe_epochs: 1 [P].
        act_statistic: Act per expert over probe-eval tokens: ``frequency`` (top-k selections) [P],
            ``probability``, ``logit``.
        threshold_alpha: α of mean − α·std: 0.8; threshold_scope: ``layer`` (per layer) or ``global``.
        experts_per_selected_layer: None = N_s^l (the paper's main setting) or M (Table 4: 1, 4, 8).
        copy_source: ``most_activated`` (argmax Act over old experts and probes, A6) or ``probe``.
        train_static_routers: routers of layers that do not grow are trained for the task too (A4): true.
        aux_weight: Switch load balancing κ: 1e-3 (over every routing layer, averaged).
        vae_hidden, vae_latent, vae_eps, vae_n_rep: the VAE (A7): 512, 64, 1e-4, 8.
        vae_kl_weight, vae_rec_weight: λ, η: 1e-3 each.
        vae_lr: the VAE's AdamW learning rate: 2e-4 (the paper's); vae_epochs: None = the task's epochs
            (``TaskInfo.epochs``: the benchmark's per-task epochs, else ``training.epochs``);
            vae_batch_size: None = training.batch_size.
        primitive_samples: T: 1000 (min with the task's size); primitive_subset: ``last`` (the last T samples of
            the final epoch) or ``random``.
        locator: routing of the main evaluation: ``ptl`` (the paper), ``oracle``, ``last_router``, ``random_router``.
        variants: extra evaluations with their own matrices: ``oracle`` (Immediate as the paper reports it; CMoE's
            BWT takes its Immediate from it), ``last_router``, ``random_router`` (the PTL ablations).
        locator_seed: the seed of the VAE scoring noise and of the random-router ablation.
    """

    targets: str = "gate_proj+up_proj"
    top_k: int = 2
    initial_experts: int = 8
    initial_data: str = "first_task"
    initial_image_root: str | None = None
    initial_epochs: float | None = None
    initial_lr: float | None = None
    probes: int = 1
    probe_fraction: float = 0.1
    probe_eval_fraction: float = 0.1
    probe_eval_max: int = 10000
    probe_lr: float = 3e-4
    probe_epochs: float = 1.0
    act_statistic: str = "frequency"
    threshold_alpha: float = 0.8
    threshold_scope: str = "layer"
    experts_per_selected_layer: int | None = None
    copy_source: str = "most_activated"
    train_static_routers: bool = True
    aux_weight: float = 1e-3
    vae_hidden: int = 512
    vae_latent: int = 64
    vae_eps: float = 1e-4
    vae_n_rep: int = 8
    vae_kl_weight: float = 1e-3
    vae_rec_weight: float = 1e-3
    vae_lr: float = 2e-4
    vae_epochs: float | None = None
    vae_batch_size: int | None = None
    primitive_samples: int = 1000
    primitive_subset: str = "last"
    locator: str = "ptl"
    variants: list[str] = field(default_factory=lambda: ["oracle"])
    locator_seed: int = 0

    def __post_init__(self):
        if not isinstance(self.initial_data, str) or not self.initial_data:
            raise ConfigError(f"method.initial_data must be 'first_task' or a training file, got {self.initial_data!r}")
        for key in ("initial_epochs", "initial_lr"):
            if getattr(self, key) is not None and not float(getattr(self, key)) > 0:
                raise ConfigError(f"method.{key} must be > 0 or null, got {getattr(self, key)}")
        choices = {"targets": list(TARGETS), "act_statistic": ACT_STATISTICS,
                   "threshold_scope": THRESHOLD_SCOPES, "copy_source": COPY_SOURCES,
                   "primitive_subset": PRIMITIVE_SUBSETS, "locator": LOCATORS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(f"method.variants: {bad} are not CMoE variants; allowed: {list(VARIANTS)}")
        for key in ("top_k", "initial_experts", "probes", "probe_eval_max", "vae_hidden", "vae_latent", "vae_n_rep",
                    "primitive_samples"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if self.experts_per_selected_layer is not None and self.experts_per_selected_layer < 1:
            raise ConfigError(f"method.experts_per_selected_layer must be >= 1 or null (N_s), got "
                              f"{self.experts_per_selected_layer}")
        if not 0 < self.probe_fraction <= 1 or not 0 < self.probe_eval_fraction < 1:
            raise ConfigError("method.probe_fraction must be in (0, 1] and method.probe_eval_fraction in (0, 1), got "
                              f"{self.probe_fraction}, {self.probe_eval_fraction}")
