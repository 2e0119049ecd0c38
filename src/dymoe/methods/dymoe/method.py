"""``dymoe``: LLaVA-DyMoE (Zhao et al., CVPR 2026; dymoe.md) = IncMoELoRA + TAG + RSR + load balancing.

Per task (group id = task index) a new group of experts and router rows is trained while older groups stay frozen
and reachable (:class:`~dymoe.methods.incmoelora.IncMoELoRA`). On tasks ≥ 2, during training only:

- **TAG** (§4): a routing policy that, in every wrapped module, keeps old-dominant and ambiguous tokens off the new
  group and (two-sided, upstream) new-dominant tokens off the old group;
- **RSR** (§5): exclusivity and specialization losses on the unmasked scores, weighted by the ramp ρ(p) (§7).

On every task: the load-balancing loss ``aux`` (§6; default the layer's Switch loss with top-K over all experts,
which only the trainable group can move: constant on task 1 at top-16 of 16, live from task 2). Per-module losses
are averaged over the wrapped modules. Options the paper leaves open come in two presets (``port``, the default,
and ``paper``; :data:`PRESETS`). Inference routes top-K over all experts with no constraint (unless the task
router of §12.1 is on). With ``tag=False``, both RSR weights 0 and ``aux_type="none"`` this is exactly IncMoELoRA.

The math lives in :mod:`dymoe.methods.dymoe.functional`; this file only wires it to the expert layers. The layer reports
each forward's routing through an observer; losses are computed after the forward (gradient checkpointing safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from dymoe.errors import CheckpointError, ConfigError, DymoeError
from dymoe.layers.context import RoutingEvent
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.methods.base import StepInfo, TaskInfo
from dymoe.methods.dymoe.functional import (
    ANALYSIS_MODES,
    AUX_TYPES,
    analysis_mask,
    least_activated,
    load_balance_loss,
    rsr_losses,
    rsr_ramp,
    tag_decision,
)
from dymoe.methods.dymoe.stats import ExpertActivationStats, TokenTypeStats
from dymoe.methods.dymoe.task_router import (
    FEATURE_MODES,
    ROUTER_MODES,
    nearest_prototype,
    task_features,
    task_group_mask,
)
from dymoe.methods.incmoelora import IncMoELoRA

PROTOTYPES_KEY = "task_prototypes"


#: Values of the options that the paper leaves open and that come from a third-party port of the official code
#: (dymoe.md [PORT]: "LLaVA-DyMoE ported to the TRACE LLM contract", unverified against upstream), and the plain
#: reading of the paper's prose. ``method.preset`` picks one set; an option given explicitly wins over its preset.
PRESETS: dict[str, dict[str, Any]] = {
    # [PORT]: two-sided TAG (A2), RSR off for the first half of each task then a linear ramp (A7), T_rsr = 0.1
    "port": {"tag_two_sided": True, "rsr_start": 0.5, "rsr_temperature": 0.1},
    # the paper's prose: TAG keeps old/ambiguous tokens off the new group and says nothing of the reverse (A2);
    # "the weights of the load balancing, exclusivity and specialization losses [are set] to 1e-3" from the first
    # step (no schedule, A7); RSR's "routing weights" are the router's own, i.e. at the routing temperature [INF]
    "paper": {"tag_two_sided": False, "rsr_start": 0.0, "rsr_temperature": "route"},
}


@dataclass
class DyMoEOptions:
    """Options of ``dymoe`` (dymoe.md §8 and §14). Where the paper is silent the default says where it comes from.

    Attributes:
        preset: ``port`` (default) or ``paper``: the values of ``tag_two_sided``, ``rsr_start`` and
            ``rsr_temperature`` left unset (see :data:`PRESETS`). ``port`` takes them from a third-party port of the
            official code (two-sided TAG, RSR switched on after half of each task with a linear ramp, T_rsr 0.1);
            ``paper`` is the plain reading of the paper's prose (one-sided TAG, RSR from the first step at its
            weight, RSR weights at the routing temperature).
        tau: TAG threshold τ on D_rel: 0.2 (the paper's τ table; the port's default too).
        tag: Token Assignment Guidance on tasks ≥ 2 (training only).
        tag_two_sided: also mask the old group for new-dominant tokens, so each token routes within exactly one
            group (A2). Preset ``port``: true (the port's TAG function, said to be verbatim upstream); ``paper``:
            false (the paper only describes keeping old and ambiguous tokens off the new group).
        tag_scope: tokens TAG (or the analysis mask) applies to: ``all`` (upstream) or ``answer`` (label ≠ −100), A4.
        rsr_exc: weight of the exclusivity loss L_exc: 1e-3 (the paper).
        rsr_spe: weight of the specialization loss L_spe: 1e-3 (the paper).
        rsr_temperature: softmax temperature T_rsr of RSR's top-K weights, or ``route`` for the layer's routing
            temperature. Preset ``port``: 0.1 (the port's ``dymoe_rsr_temperature``; not in the paper);
            ``paper``: ``route``.
        rsr_start: fraction of each task before RSR starts ramping linearly to 1 at the task's end (A7); 0 = the
            full weight from the first step. Preset ``port``: 0.5 (the port's trainer; not in the paper);
            ``paper``: 0.
        aux_type: the reading of the load-balancing loss L_aux (the paper does not give its form; all readings in
            :func:`~dymoe.methods.dymoe.functional.load_balance_loss`). Default ``switch_all``: the Switch loss
            ``E·Σ f·P`` of the whole layer, with ``f`` from top-K over **all** experts, which only the trainable
            group can move. It is live whenever ``K < E`` (tasks ≥ 2 at the papers' 16 of 16t): measured on
            mini-CoIN, its gradient on the new router rows is non-zero from the first step of task 2 and it
            changes the trained router (``benchmarks/aux_loss_probe.py``, RESULTS.md "Load balancing"). The
            former reading ``switch_local`` (softmax and top-K inside the new group only) is the constant 1 with
            no gradient whenever ``K ≥ E_new`` (16 of 16): "+ L_aux" was then IncMoELoRA bit for bit. Also
            ``switch_new`` (the same terms summed over the new group only), ``group`` (balance across the task
            groups: old ones and the new one), ``cv2`` (importance CV² over the new group), ``none`` (upstream
            parity: the port says upstream never adds L_aux). ``switch`` = ``switch_local``.
        aux_weight: weight λ of the load-balancing loss: 1e-3 (the paper).
        reg_token_scope: tokens the RSR/aux means run over: ``all`` non-pad tokens (upstream) or ``answer`` tokens.
        token_mask_mode: training mask of tasks ≥ 2: ``tag`` (TAG, if ``tag``), or a drift-analysis condition
            (§11) that replaces it: ``none`` (free routing), ``only_new``, ``mask_old``, ``only_ambiguous``.
        prune_fraction: after each task, before folding, remove this fraction of the new group's least-activated
            experts per module (§12.3: 0, 1/8, 1/4).
        prune_stat_batches: activation frequency for pruning = over the last this-many training forwards (or, if
            none were recorded, a no-grad pass over this many training batches of the task).
        task_router: §12.1: per-sample nearest task prototype restricts routing at eval.
        task_router_mode: ``cumulative`` (groups of tasks ≤ predicted) or ``only`` (the predicted task's group).
        task_router_features: what a sample's prototype feature is made of: ``image_text`` (default, §12.1: the
            mean of the frozen backbone's image features beside the mean of its text embeddings) or ``text`` (the
            text embeddings only; tasks sharing a prompt look alike). Text means run over the prompt's tokens (a
            training sample's answer is left out, as inference has none). Measured on mini-CoIN, whose questions
            follow a few templates per task, ``text`` identifies the task more often (96.9 % vs 90.3 % of test
            samples; RESULTS.md "Issue 14 measurements"): the default follows the spec, not that measurement.
        task_router_batches: training batches averaged into each task's prototype.
    """

    preset: Literal["port", "paper"] = "port"
    tau: float = 0.2
    tag: bool = True
    tag_two_sided: bool | None = None
    tag_scope: Literal["all", "answer"] = "all"
    rsr_exc: float = 1e-3
    rsr_spe: float = 1e-3
    rsr_temperature: float | Literal["route"] | None = None
    rsr_start: float | None = None
    aux_type: Literal["switch_all", "switch_new", "group", "switch_local", "switch", "cv2", "none"] = "switch_all"
    aux_weight: float = 1e-3
    reg_token_scope: Literal["all", "answer"] = "all"
    token_mask_mode: Literal["none", "only_new", "mask_old", "only_ambiguous", "tag"] = "tag"
    prune_fraction: float = 0.0
    prune_stat_batches: int = 64
    task_router: bool = False
    task_router_mode: Literal["cumulative", "only"] = "cumulative"
    task_router_features: Literal["image_text", "text"] = "image_text"
    task_router_batches: int = 64

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ConfigError(f"method.preset must be one of {list(PRESETS)}, got {self.preset!r}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        choices = {
            "tag_scope": ("all", "answer"),
            "reg_token_scope": ("all", "answer"),
            "aux_type": AUX_TYPES,
            "token_mask_mode": ANALYSIS_MODES,
            "task_router_mode": ROUTER_MODES,
            "task_router_features": FEATURE_MODES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if self.rsr_temperature != "route" and not (
            isinstance(self.rsr_temperature, (int, float)) and self.rsr_temperature > 0
        ):
            raise ConfigError(f"method.rsr_temperature must be > 0 or 'route', got {self.rsr_temperature!r}")
        ranges = [
            ("tau", self.tau >= 0, ">= 0"),
            ("rsr_exc", self.rsr_exc >= 0, ">= 0"),
            ("rsr_spe", self.rsr_spe >= 0, ">= 0"),
            ("aux_weight", self.aux_weight >= 0, ">= 0"),
            ("rsr_start", 0 <= self.rsr_start < 1, "in [0, 1)"),
            ("prune_fraction", 0 <= self.prune_fraction < 1, "in [0, 1)"),
            ("prune_stat_batches", self.prune_stat_batches >= 1, ">= 1"),
            ("task_router_batches", self.task_router_batches >= 1, ">= 1"),
        ]
        for key, ok, allowed in ranges:
            if not ok:
                raise ConfigError(f"method.{key} must be {allowed}, got {getattr(self, key)!r}")

    @property
    def train_mask_mode(self) -> str:
        """The effective training mask: ``token_mask_mode`` with ``tag`` turned into ``none`` when TAG is off."""
        return "none" if self.token_mask_mode == "tag" and not self.tag else self.token_mask_mode


def task_groups(layer: MoELoRALinear) -> torch.Tensor:
    """``[E, G]`` bool: which of the layer's groups (one per task, in bank order) each expert belongs to."""
    ids = torch.tensor(layer.groups, device=layer.expert_group.device)  # [G], from the host-side list: no sync
    return layer.expert_group[:, None] == ids[None, :]


def newest_group_mask(layer: MoELoRALinear) -> torch.Tensor | None:
    """``[E]`` bool of the "new" experts for token typing: the trainable group while a task trains, else (after
    the fold, e.g. when analysing a checkpoint) the last group in the bank; None with fewer than two groups."""
    if layer.has_trainable_group:
        return layer.trainable_mask if layer.num_frozen else None
    groups = layer.groups
    if len(groups) < 2:
        return None
    return layer.expert_group == groups[-1]


class DyMoE(IncMoELoRA):
    """LLaVA-DyMoE (see the module docstring).

    Attributes read by analysis tools:
        token_stats: :class:`TokenTypeStats`: new/old/ambiguous token counts per module (per step and since
            the task started), recorded while the routing context is recording and a layer has two groups or
            more (the newest group, trainable or last folded, against the older ones; see ``newest_group_mask``).
        activation_stats: :class:`ExpertActivationStats`: per-expert top-K hits and summed weights per module
            since the task started (pruning, the expert-activation view).
        prototypes: ``[T, d]`` task prototypes of the task router (None until one is computed).
    """

    name = "dymoe"
    Options = DyMoEOptions

    def __init__(self, options: DyMoEOptions | None = None):
        super().__init__(options)
        self.token_stats = TokenTypeStats()
        self.activation_stats = ExpertActivationStats(window=self.options.prune_stat_batches)
        # statistics cost a few ops per module and step: collected only when something reads them
        self.track_token_types = False  # set by the routing-drift analysis
        self.track_activations = self.options.prune_fraction > 0
        self.prototypes: torch.Tensor | None = None
        self.task_index = 0
        self._events: list[RoutingEvent] = []
        self._names: dict[int, str] = {}
        self._answer_mask: torch.Tensor | None = None  # [B*T] of the current training batch
        self._eval_task: tuple[int, str] | None = None  # (index, name) of the test set being evaluated
        self._router_counts: dict[int, tuple[str, torch.Tensor]] = {}  # task index -> (name, [P] predictions)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, model: torch.nn.Module, adapter) -> None:
        super().setup(model, adapter)
        self._names = {id(m): n for n, m in adapter.modules.items()}
        if self._observe not in adapter.context.observers:
            adapter.context.observers.append(self._observe)

    def before_task(self, task: TaskInfo) -> None:
        super().before_task(task)  # the new group (id = task index)
        self.task_index = task.index
        self.token_stats.reset()
        self.activation_stats.reset()
        self._events.clear()

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        if self.options.prune_fraction > 0:
            self.prune_new_group(trainer)
        if self.options.task_router:
            self.update_prototype(task, trainer)
        self._events.clear()
        super().after_task(task, trainer)  # fold

    # ------------------------------------------------------------------ routing
    @property
    def _regularised(self) -> bool:
        # TAG and RSR need an old group: tasks >= 2 (index >= 1)
        return self.task_index >= 1

    def routing_policy(self, phase: str):
        if phase != "train":
            # nothing at inference (dymoe.md §3.6); the task router acts through group_mask(batch, "eval")
            return self._check_task_router if self.options.task_router and self.prototypes is not None else None
        if not self._regularised or self.options.train_mask_mode == "none":
            return None
        return self._train_policy

    def _check_task_router(self, scores: torch.Tensor, layer: MoELoRALinear) -> torch.Tensor:
        """Eval policy with the task router on: scores unchanged, but refuse to route without the group mask."""
        if layer.context.group_mask is None:
            raise DymoeError(
                "method.task_router is on but no group mask was set for this evaluation forward: the caller must set "
                "context.group_mask = method.group_mask(batch, 'eval') for each batch"
            )
        return scores

    def _train_policy(self, scores: torch.Tensor, layer: MoELoRALinear) -> torch.Tensor:
        """TAG (or the analysis mask) on ``scores [N, E]`` of a layer with both an old and a new group."""
        if layer.num_frozen == 0 or not layer.has_trainable_group:
            return scores
        opts = self.options
        # the trainable group is the bank's tail: pass its start as an int (column slices, no device sync)
        adjusted = analysis_mask(scores, layer.num_frozen, opts.tau, opts.train_mask_mode, opts.tag_two_sided)
        if opts.tag_scope == "answer":
            scope = self._scope_mask(scores.shape[0], "tag_scope")
            adjusted = torch.where(scope[:, None].to(scores.device), adjusted, scores)
        return adjusted

    def _scope_mask(self, n_tokens: int, key: str) -> torch.Tensor:
        am = self._answer_mask
        if am is None:
            raise DymoeError(f"method.{key}=answer needs `labels` in the training batch")
        if am.numel() != n_tokens:
            raise DymoeError(
                f"method.{key}=answer: labels cover {am.numel()} positions but the layer routed {n_tokens} tokens"
            )
        return am

    def group_mask(self, batch: dict[str, torch.Tensor], phase: str) -> torch.Tensor | None:
        """Training: None (it records the batch's answer mask for the ``answer`` scopes). Eval: the task router."""
        if phase == "train":
            labels = batch.get("labels")
            self._answer_mask = None if labels is None else (labels != -100).reshape(-1)
            return None
        if not self.options.task_router or self.prototypes is None or self.model is None:
            return None
        predicted = self.predict_task(batch)  # [B]
        self._record_prediction(predicted)
        groups = self.adapter.groups() if self.adapter is not None else []
        num_groups = max([self.prototypes.shape[0], *(g + 1 for g in groups)])
        return task_group_mask(predicted, num_groups, self.options.task_router_mode)

    # ------------------------------------------------------------------ observer and losses
    def on_forward_start(self) -> None:
        self._events.clear()
        self.token_stats.start_step()

    def _losses_on(self) -> tuple[bool, bool]:
        opts = self.options
        aux = opts.aux_type != "none" and opts.aux_weight > 0
        rsr = self._regularised and (opts.rsr_exc > 0 or opts.rsr_spe > 0)
        return aux, rsr

    def _observe(self, event: RoutingEvent) -> None:
        """Observer: statistics now (no grad), loss inputs stashed for :meth:`loss_terms`."""
        name = self._names.get(id(event.layer))
        if name is None:
            return
        layer = event.layer
        with torch.no_grad():
            if self.track_activations:
                self.activation_stats.update(name, layer.expert_id, event.weights, event.token_mask)
            new_mask = newest_group_mask(layer) if self.track_token_types else None
            if new_mask is not None:
                use_new, ambiguous, _ = tag_decision(event.scores.detach(), new_mask, self.options.tau)
                self.token_stats.update(name, use_new, ambiguous, event.token_mask)
        if torch.is_grad_enabled() and any(self._losses_on()) and layer.has_trainable_group:
            self._events.append(event)

    def _reg_mask(self, event: RoutingEvent) -> torch.Tensor | None:
        mask = event.token_mask
        if self.options.reg_token_scope == "answer":
            scope = self._scope_mask(event.scores.shape[0], "reg_token_scope").to(event.scores.device)
            mask = scope if mask is None else mask & scope
        return mask

    def loss_terms(self, batch: dict[str, torch.Tensor], outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """``aux`` (every task), ``rsr_exc`` and ``rsr_spe`` (tasks ≥ 2, ramped), weighted and averaged over modules.

        A term whose weight is 0 (or ``aux_type="none"``) is left out; RSR on task 1 or before the ramp is 0.
        """
        events, self._events = self._events, []
        aux_on, rsr_on = self._losses_on()
        opts = self.options
        n_mod = max(len(self.adapter.modules), 1) if self.adapter is not None else 1
        device = outputs.loss.device if getattr(outputs, "loss", None) is not None else None
        zero = torch.zeros((), device=device)
        terms: dict[str, torch.Tensor] = {}
        if aux_on:
            total = zero
            for ev in events:
                layer = ev.layer
                groups = task_groups(layer) if opts.aux_type == "group" else None
                total = total + load_balance_loss(
                    ev.scores, layer.num_frozen, self._reg_mask(ev), layer.top_k, layer.temperature, opts.aux_type,
                    groups,
                )
            terms["aux"] = opts.aux_weight * total / n_mod
        rsr_weights = {"rsr_exc": opts.rsr_exc, "rsr_spe": opts.rsr_spe}
        rsr_weights = {k: w for k, w in rsr_weights.items() if w > 0}
        if rsr_weights:
            ramp = rsr_ramp(step.progress, opts.rsr_start) if rsr_on else 0.0
            exc, spe = zero, zero
            if ramp > 0:
                for ev in events:
                    layer = ev.layer
                    if layer.num_frozen == 0:
                        continue
                    t_rsr = layer.temperature if opts.rsr_temperature == "route" else opts.rsr_temperature
                    l_exc, l_spe = rsr_losses(ev.scores, layer.num_frozen, self._reg_mask(ev), layer.top_k, t_rsr)
                    exc, spe = exc + l_exc, spe + l_spe
            values = {"rsr_exc": exc, "rsr_spe": spe}
            for key, weight in rsr_weights.items():
                terms[key] = weight * ramp * values[key] / n_mod
        return terms

    # ------------------------------------------------------------------ pruning (§12.3)
    @torch.no_grad()
    def measure_activations(self, trainer: Any, num_batches: int) -> None:
        """Fill :attr:`activation_stats` with a no-grad pass over ``num_batches`` training batches (training routing)."""
        if trainer is None or not hasattr(trainer, "iter_batches"):
            raise DymoeError("dymoe needs the trainer (iter_batches) to measure expert activations after a task")
        ctx = self.adapter.context
        saved = (ctx.policy, ctx.group_mask, ctx.recording)
        was_training = self.model.training
        self.model.eval()  # no dropout: the routing the experts would see at their best
        self.activation_stats.reset()
        try:
            for batch in trainer.iter_batches(num_batches):
                ctx.policy = self.routing_policy("train")
                ctx.group_mask = self.group_mask(batch, "train")
                ctx.recording = True
                self.model(**{k: v for k, v in batch.items() if k != "labels"})
        finally:
            ctx.policy, ctx.group_mask, ctx.recording = saved
            self.model.train(was_training)

    def _has_current_stats(self, name: str, layer: MoELoRALinear) -> bool:
        ids = self.activation_stats.expert_ids.get(name)
        return ids is not None and ids.shape == layer.expert_id.shape and bool(torch.equal(ids, layer.expert_id))

    def _global_frequencies(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Recent activation frequencies ``{module: [E]}``, summed over every process of a distributed run.

        Each process counted its own data shard; without the all-reduce the processes would prune different
        experts and their models would diverge.
        """
        counts = [self.activation_stats.recent_counts(n) for n in names]
        if not counts:
            return {}
        sizes = [h.numel() for h, _ in counts]
        flat = torch.cat([torch.cat([h.float(), t.float().reshape(1)]) for h, t in counts])  # [Σ (E + 1)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flat)
        out, offset = {}, 0
        for name, e in zip(names, sizes):
            hits, ntok = flat[offset : offset + e], flat[offset + e]
            out[name] = hits / ntok.clamp_min(1.0)
            offset += e + 1
        return out

    def prune_new_group(self, trainer: Any = None) -> dict[str, list[int]]:
        """Remove ``prune_fraction`` of each module's least-activated new experts; returns the pruned expert ids."""
        mods = {n: m for n, m in self.adapter.modules.items() if m.has_trainable_group}
        if not all(self._has_current_stats(n, m) for n, m in mods.items()):
            self.measure_activations(trainer, self.options.prune_stat_batches)
        freqs = self._global_frequencies(list(mods))
        pruned: dict[str, list[int]] = {}
        for name, layer in mods.items():
            freq = freqs[name]  # [E]
            new_pos = layer.trainable_mask.nonzero().squeeze(-1)  # [E_new]
            drop = least_activated(freq[new_pos], self.options.prune_fraction)
            if drop.numel():
                pruned[name] = layer.expert_id[new_pos[drop.to(new_pos.device)]].tolist()
        self.adapter.prune(pruned)
        self.activation_stats.reset()
        return pruned

    # ------------------------------------------------------------------ task router (§12.1)
    def _image_token_id(self) -> int | None:
        from dymoe.models.llava import image_token_id

        try:
            return image_token_id(self.model)
        except DymoeError:
            return None

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Task-router feature ``[B, d]`` of a batch (``task_router_features``, see :mod:`.task_router`)."""
        return task_features(self.model, batch, self._image_token_id(), self.options.task_router_features)

    def predict_task(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B]`` index of the nearest task prototype (needs :attr:`prototypes`)."""
        feats = self.features(batch)
        if feats.shape[1] != self.prototypes.shape[1]:
            raise DymoeError(
                f"task-router features have {feats.shape[1]} dimensions but the stored prototypes {self.prototypes.shape[1]}: "
                f"they were computed with another method.task_router_features than {self.options.task_router_features!r}"
            )
        return nearest_prototype(feats, self.prototypes.to(feats.device))

    # ------------------------------------------------------------------ task-router accuracy at evaluation
    def begin_evaluation(self, index: int, name: str) -> None:
        """The evaluation batches that follow come from task ``index``'s test set (the router's true label)."""
        self._eval_task = (index, name)
        if self.options.task_router and self.prototypes is not None and index not in self._router_counts:
            # an entry even if this process gets no batch of the task, so the processes' tables line up
            self._router_counts[index] = (name, torch.zeros(self.prototypes.shape[0], dtype=torch.long))

    def _record_prediction(self, predicted: torch.Tensor) -> None:
        if self._eval_task is None:
            return
        index, name = self._eval_task
        p = self.prototypes.shape[0]
        counts = torch.bincount(predicted.detach().cpu(), minlength=p)  # [P]
        prev = self._router_counts.get(index)
        if prev is not None and prev[1].numel() == p:
            counts = counts + prev[1]
        self._router_counts[index] = (name, counts)

    def evaluation_metrics(self) -> dict:
        """The task router's accuracy on the test sets evaluated since the last call (then reset); {} when off.

        ``{"task_router": {"accuracy": {task: %}, "mean": %, "samples": {task: n}, "predicted": {task: [counts per
        prototype]}}}``, summed over the processes of a distributed run (every process must call this).
        """
        counts, self._router_counts, self._eval_task = self._router_counts, {}, None
        if not self.options.task_router or self.prototypes is None:
            return {}
        p = self.prototypes.shape[0]
        indices = sorted(counts)
        table = torch.stack([counts[i][1] if counts[i][1].numel() == p else torch.zeros(p, dtype=torch.long)
                             for i in indices]) if indices else torch.zeros(0, p, dtype=torch.long)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
            # every process evaluated the same tasks (the runner's loop), so the tables line up
            table = table.to(dev)
            torch.distributed.all_reduce(table)
            table = table.cpu()
        if not indices:
            return {}
        acc, samples, predicted = {}, {}, {}
        for row, i in zip(table.tolist(), indices):
            name, n = counts[i][0], sum(row)
            samples[name] = n
            predicted[name] = row
            acc[name] = round(100.0 * row[i] / n, 2) if n and i < p else 0.0
        return {"task_router": {"accuracy": acc, "mean": round(sum(acc.values()) / len(acc), 2), "samples": samples,
                                "predicted": predicted}}

    @torch.no_grad()
    def update_prototype(self, task: TaskInfo, trainer: Any) -> torch.Tensor:
        """Compute task ``task.index``'s prototype from ``task_router_batches`` training batches; returns it ``[d]``."""
        if trainer is None or not hasattr(trainer, "iter_batches"):
            raise DymoeError("method.task_router needs the trainer (iter_batches) to compute task prototypes")
        feats = [self.features(b) for b in trainer.iter_batches(self.options.task_router_batches)]
        if not feats:
            raise DymoeError(f"task {task.name!r} has no training batches to compute its task-router prototype")
        proto = torch.cat(feats).mean(0).cpu()  # [d]
        rows = self.prototypes if self.prototypes is not None else proto.new_zeros(0, proto.shape[0])
        if rows.shape[0] <= task.index:
            rows = torch.cat([rows, rows.new_zeros(task.index + 1 - rows.shape[0], proto.shape[0])])
        rows = rows.clone()
        rows[task.index] = proto
        self.prototypes = rows
        return proto

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.prototypes is None else {PROTOTYPES_KEY: self.prototypes.detach().cpu().contiguous()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unknown = sorted(set(state) - {PROTOTYPES_KEY})
        if unknown:
            raise CheckpointError(f"method 'dymoe' state has unknown keys {unknown[:3]}; expected only {PROTOTYPES_KEY!r}")
        proto = state.get(PROTOTYPES_KEY)
        if proto is not None and proto.dim() != 2:
            raise CheckpointError(f"{PROTOTYPES_KEY} must be [tasks, dim], got shape {tuple(proto.shape)}")
        self.prototypes = None if proto is None else proto.float().clone()

    def describe(self) -> dict:
        info = super().describe()
        if self.prototypes is not None:
            info["task_prototypes"] = int(self.prototypes.shape[0])
        return info
