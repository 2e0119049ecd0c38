"""``smoe_dsal``: domain-specific SMoE modules with the AT-Router and DSAL (Zhang et al., ACL 2025; smoe-dsal.md).

Layer (§1–§2): an ``mlp`` adapter site (:class:`~dymoe.layers.moe_ffn.MoEFFN`) on every FFN of the language
model; one group per domain = N_e SwiGLU experts of width d' and its AT-Router, the frozen FFN kept in the sum
(Eq. 11; k_t = 0 is the base model exactly). Each domain also owns one DSAL projector per layer
(:class:`DSALProjectors`, a registered module ``proj_<domain>``).

Per domain ``k`` (0-based):

1. :meth:`SMoEDSAL.before_task`: group ``k`` in every layer and projector ``k``, both trainable; everything older
   frozen;
2. training: every layer routes through module ``k`` (the layer's default: its trainable group). The forward's
   routing events carry each layer's input (``capture_inputs``); a pre-hook on the first decoder layer keeps the
   input sequence ``H⁽⁰⁾``. After the forward, :meth:`SMoEDSAL.loss_terms` returns ``dsal`` = β Σ_l L_DSAL (the
   virtual expert + projector on the prompt tokens, soft labels from ``H⁽⁰⁾``), ``balance`` = η Σ_l L_Bal and
   optionally ``topk`` (L4);
3. :meth:`SMoEDSAL.after_task`: fold (experts and router frozen), projector frozen.

Evaluation (§3, §5): per batch, one prefill pass over the prompt with a selector that, in each layer, scores every
learned module's DSAL on the layer's input and takes the argmin per sample (Eq. 4; the layer then runs with the
module chosen, so deeper layers see the chosen modules' outputs). The choices are handed to the generation as a
fixed per-layer lookup: set once at prefill, reused at every decoding step. The instance's predicted domain (the
majority over layers) goes to the runner's locator report; the per-(instance, layer) accuracy, the mean activated
experts per prompt token and the activated parameters are in :meth:`SMoEDSAL.evaluation_metrics`.
Other selection rules (``router``, ``edi``, ``plus``, ``oracle``, ``last``) serve the ablations and the variants:

- ``edi`` (ablation 2, :mod:`.identify`): each domain's planning phase averages the frozen backbone's image/text
  representation of its training samples into a prototype (method state, saved with the run); at evaluation the
  nearest prototype picks the module of every layer. EDI's identification accuracy is reported beside the
  selection's at every evaluation, whatever the rule;
- ``plus`` ("Ours+", App. D): after each domain's training, its modules' mean DSAL over its training samples
  (``μ``, per layer) is measured; at evaluation each layer runs the DSAL argmin and every module whose DSAL on the
  input is below its ``μ``, and outputs their mean (a forward hook on the layer, fixed at prefill like the
  selection).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

import torch
import torch.nn as nn

from dymoe.errors import ConfigError, DymoeError
from dymoe.injection.targets import vision_tower_scope
from dymoe.layers.context import RoutingEvent
from dymoe.layers.moe_ffn import MoEFFN
from dymoe.methods.base import BatchInfo, Method, StepInfo, TaskInfo
from dymoe.methods.smoe_dsal.config import SMoEDSALOptions
from dymoe.methods.smoe_dsal.functional import balance_loss, dsal_loss, expected_embeddings, topk_loss
from dymoe.methods.smoe_dsal.identify import edi_features, nearest_prototype, plus_modules
from dymoe.models.pooled import prompt_token_ids


class DSALProjectors(nn.Module):
    """One domain's DSAL projectors ``P^{(l,i)}(x) = x Aᵀ + b`` for every layer: ``weight [L, d_p, d]``,
    ``bias [L, d_p]`` (``nn.Linear(d, d_p)``'s default init per layer)."""

    def __init__(self, layers: int, d_model: int, d_proj: int):
        super().__init__()
        bound = 1.0 / d_model ** 0.5
        self.weight = nn.Parameter(torch.empty(layers, d_proj, d_model).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(layers, d_proj).uniform_(-bound, bound))


class LayerLookup:
    """A fixed per-layer selection (a routing-context ``selector``): ``{id(layer): [B] group ids}``."""

    def __init__(self, chosen: dict[int, torch.Tensor]):
        self.chosen = chosen

    def __call__(self, layer: nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        return self.chosen[id(layer)].to(x.device)


class SMoEDSAL(Method):
    name = "smoe_dsal"
    Options = SMoEDSALOptions
    locator_name = "dsal"

    def __init__(self, options: SMoEDSALOptions | None = None):
        super().__init__(options)
        self.evaluation_variants = tuple(self.options.variants)
        self.domains = 0  # domains learned (modules folded)
        self.layers: list[MoEFFN] = []
        self.layer_names: list[str] = []
        self._index: dict[int, int] = {}
        self._events: list[RoutingEvent] = []
        self._h0: torch.Tensor | None = None
        self._mode = "off"  # "train": stash events for the losses; "select": count activations of the pre-pass
        self._e_bar: torch.Tensor | None = None
        self._prompt: torch.Tensor | None = None
        self._picks: dict[int, torch.Tensor] = {}
        self._stats = self._fresh_stats()
        self._counting = True  # selection passes count activated experts (batch_routing: scored sets only)
        self.prototypes: dict[int, torch.Tensor] = {}  # EDI: domain -> [D] mean representation of its training data
        self.mean_dsal: dict[int, torch.Tensor] = {}  # Ours+: domain -> [L] μ, its modules' mean DSAL on its data
        self._vision: nn.Module | None = None
        self._vision_dim = 0
        self._mix: dict[int, tuple[list[int], torch.Tensor]] = {}  # Ours+: id(layer) -> (groups, [B, G] bool sets)
        self._mixing = False
        self._measured: dict[int, torch.Tensor] = {}
        self._measure_group = -1

    @staticmethod
    def _fresh_stats() -> dict:
        return {"pairs": 0, "pairs_right": 0, "instances": 0, "instances_right": 0, "active": 0.0, "tokens": 0.0,
                "per_layer_right": None, "edi_instances": 0, "edi_right": 0, "plus_modules": 0, "plus_pairs": 0}

    # ------------------------------------------------------------------ layer
    def configure_adapter(self, config):
        """One ``mlp`` site on the language model's FFNs with the options' N_e, d', router (smoe-dsal.md §1–§2)."""
        if config.sites:
            raise ConfigError("method smoe_dsal builds its own adapter site (method.num_experts, method.expert_width, "
                              "method.router ...); remove adapter.sites")
        o = self.options
        site = {"name": "smoe", "kind": "mlp", "targets": ["mlp"], "experts_per_group": o.num_experts,
                "expert_width": o.expert_width, "router": o.router, "router_hidden": o.router_hidden,
                "top_k": o.router_top_k, "temperature": 1.0, "dropout": 0.0, "scale_by_count": o.scale_by_count}
        return dataclasses.replace(config, sites=[site])

    def setup(self, model, adapter) -> None:
        super().setup(model, adapter)
        self.layer_names = [n for n, m in adapter.modules.items() if isinstance(m, MoEFFN)]
        if not self.layer_names or len(self.layer_names) != len(adapter.modules):
            raise DymoeError("smoe_dsal: every expert layer must be an FFN expert layer (MoEFFN)")
        self.layers = [adapter.modules[n] for n in self.layer_names]
        self._index = {id(m): k for k, m in enumerate(self.layers)}
        for layer in self.layers:
            layer.register_forward_hook(self._mix_hook)  # Ours+ (a no-op unless ``plus`` set module sets)
        try:  # EDI's image half: the backbone's own vision tower (CLIP's image encoder in LLaVA)
            self._vision = model.get_submodule(vision_tower_scope(model))
        except ConfigError:
            self._vision = None
        vc = getattr(model.config, "vision_config", None)
        self._vision_dim = int(getattr(vc, "hidden_size", 0) or 0) if self._vision is not None else 0
        # H⁽⁰⁾: the input of the decoder layer holding the first FFN (the LM's input sequence, image rows included)
        first = model.get_submodule(self.layer_names[0].rsplit(".", 1)[0])
        first.register_forward_pre_hook(self._keep_h0, with_kwargs=True)
        if self._observe not in adapter.context.observers:
            adapter.context.observers.append(self._observe)
        for k in range(self.domains):
            self._projectors(k)

    def _keep_h0(self, module, args, kwargs):
        if self._mode != "off":
            h = kwargs.get("hidden_states", args[0] if args else None)
            self._h0 = None if h is None else h.detach()

    def _projectors(self, k: int) -> DSALProjectors:
        name = f"proj_{k}"
        if name not in self.owned_modules:
            d = self.layers[0].d_model
            g = torch.Generator().manual_seed(7919 + k)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
                proj = DSALProjectors(len(self.layers), d, self.options.projector_dim)
            proj.requires_grad_(False)
            self.register_module(name, proj)
        return self.owned_modules[name]

    def _w_em(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach()

    # ------------------------------------------------------------------ growth
    def before_task(self, task: TaskInfo) -> None:
        self.adapter.add_group(task.index)  # N_e experts of width d' and an AT-Router in every FFN
        for k in range(task.index):
            self._projectors(k).requires_grad_(False)
        self._projectors(task.index).requires_grad_(True)

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        self.adapter.fold()
        self._projectors(task.index).requires_grad_(False)
        self.domains = task.index + 1
        self._events.clear()
        if trainer is not None and self.options.mean_dsal_fraction > 0:
            self.mean_dsal[task.index] = self.measure_mean_dsal(task.index, trainer)

    # ------------------------------------------------------------------ EDI prototypes (planning phase)
    def plan(self, task: TaskInfo, planner) -> None:
        """EDI's prototype of ``task``'s domain: the mean of the frozen backbone's representation of its training
        samples (:func:`~.identify.edi_features`; one feature pass, every expert bypassed)."""
        feats = planner.features(lambda batch, info: self.edi_representation(batch, info.image_sample))  # [N, D]
        self.prototypes[task.index] = feats.mean(0)
        planner.log["edi"] = {"samples": int(feats.shape[0]), "dim": int(feats.shape[1]),
                              "features": self.options.edi_features}

    def plan_state(self) -> dict[str, torch.Tensor]:
        k = max(self.prototypes) if self.prototypes else None
        return {} if k is None else {"edi_prototype": self.prototypes[k].contiguous()}

    def load_plan_state(self, state: dict[str, torch.Tensor], task: TaskInfo) -> None:
        if "edi_prototype" in state:
            self.prototypes[task.index] = state["edi_prototype"].float()

    @torch.no_grad()
    def edi_representation(self, batch: dict, image_sample: list[int]) -> torch.Tensor:
        """``[B, D]`` EDI's representation of a batch by the frozen backbone (every expert layer bypassed)."""
        ctx = self.adapter.context
        pad, image_token = prompt_token_ids(self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            with ctx.backbone_only():
                return edi_features(self.model, self._vision, batch, image_sample, kind=self.options.edi_features,
                                    vision_dim=self._vision_dim, image_token_id=image_token,
                                    pad_token_id=pad).float()
        finally:
            self.model.train(was_training)

    def edi_pick(self, batch: dict, image_sample: list[int]) -> torch.Tensor:
        """``[B]`` the learned domain of the nearest prototype (ablation 2's identifier)."""
        missing = [k for k in range(self.domains) if k not in self.prototypes]
        if missing:
            raise DymoeError(f"smoe_dsal: no EDI prototype for domains {missing} (a run made before prototypes were "
                             "computed); train again to use selection 'edi'")
        protos = torch.stack([self.prototypes[k] for k in range(self.domains)])  # [G, D]
        return nearest_prototype(self.edi_representation(batch, image_sample), protos).cpu()

    # ------------------------------------------------------------------ Ours+ (App. D)
    @torch.no_grad()
    def measure_mean_dsal(self, group: int, trainer: Any) -> torch.Tensor:
        """``[L]`` μ of module ``group``: its mean DSAL per layer over (a share ``mean_dsal_fraction`` of) its
        domain's training samples, every layer routed through it as in training (prompt tokens only). Several
        processes share the batches (batch ``b`` on process ``b mod P``) and add up their sums (float64)."""
        n = len(trainer.samples)
        bs = trainer.cfg.batch_size
        batches = max(1, math.ceil(n * self.options.mean_dsal_fraction / bs))
        total, count = torch.zeros(len(self.layers), dtype=torch.float64), 0
        for batch in trainer.iter_batches(batches, batch_size=bs, seed=group, shard=True):
            prompt = batch["attention_mask"].bool() & (batch["labels"] == -100)
            # a measuring pass is not an evaluation: it counts no activated experts
            self._measure_group, self._measured, self._counting = group, {}, False
            try:
                self.select(batch, "measure", prompt=prompt)
                total += torch.stack([self._measured[li].double().sum().cpu() for li in range(len(self.layers))])
            finally:
                self._measure_group, self._measured, self._counting = -1, {}, True
            count += int(batch["input_ids"].shape[0])
        *sums, count = trainer.all_sum([*total.tolist(), float(count)])  # every process's share (one: as it is)
        return (torch.tensor(sums, dtype=torch.float64) / max(count, 1)).float()

    def _mix_hook(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Ours+: the layer's output replaced by the mean of ``ȟ`` over each sample's module set (samples with one
        module keep the layer's own output)."""
        entry = self._mix.get(id(layer)) if self._mix else None
        ctx = self.adapter.context
        if entry is None or self._mixing or ctx.bypass:
            return None
        groups, sets = entry  # [B, G]
        x = args[0]
        if sets.shape[0] != x.shape[0]:
            raise DymoeError(f"smoe_dsal (plus): module sets for {sets.shape[0]} samples, the layer sees {x.shape[0]}")
        size = sets.sum(1)  # [B]
        if not bool((size > 1).any()):
            return None
        view = (-1,) + (1,) * (output.dim() - 1)
        total = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
        self._mixing = True
        try:
            with ctx.isolated():
                ctx.recording, ctx.group_mask = False, None
                for c, g in enumerate(groups):
                    if not bool(sets[:, c].any()):
                        continue
                    # the layer's cached choice (prefill or decoding step alike): group g for every sample
                    ctx.selections = {id(layer): torch.full((x.shape[0],), g, dtype=torch.long, device=x.device)}
                    total += sets[:, c].to(torch.float32).view(view) * layer(x).float()  # [B, T, d]
        finally:
            self._mixing = False
        mixed = (total / size.to(torch.float32).view(view)).to(output.dtype)
        return torch.where((size > 1).view(view), mixed, output)

    # ------------------------------------------------------------------ routing
    def batch_routing(self, batch: dict, info: BatchInfo) -> dict | None:
        self._mix = {}
        if info.phase == "train":
            return {"capture_inputs": True}  # the module being learned routes every layer (its trainable group)
        if info.phase != "eval" or not self.domains:
            return None
        rule = info.variant or self.options.selection
        rows = batch["input_ids"].shape[0]
        dev = batch["input_ids"].device
        scored = not info.variant and info.task_index >= 0 and info.eval_set is not None  # a benchmark set
        edi = None
        if rule == "edi" or (scored and all(k in self.prototypes for k in range(self.domains))):
            edi = self.edi_pick(batch, info.image_sample)  # [B]
            if scored:
                self._stats["edi_instances"] += rows
                self._stats["edi_right"] += int((edi == info.task_index).sum())
        if rule in ("oracle", "last"):
            k = info.task_index if rule == "oracle" else self.domains - 1
            k = min(max(k, 0), self.domains - 1)
            picks = torch.full((rows, len(self.layers)), k, dtype=torch.long)
        elif rule == "edi":
            picks = edi[:, None].expand(rows, len(self.layers)).clone()
        else:
            # a benchmark set of the main evaluation (not a variant, nor the cost / format probes) is scored, and
            # only its passes count activated experts
            self._counting = scored
            try:
                picks = self.select(batch, rule)  # [B, L]; ``plus`` also leaves the module sets in ``self._mix``
            finally:
                self._counting = True
            if scored:
                self._score(picks, info.task_index)
            if rule == "plus" and info.task_index >= 0 and info.eval_set is not None:  # main or variant
                self._stats["plus_modules"] += sum(int(sets.sum()) for _, sets in self._mix.values())
                self._stats["plus_pairs"] += rows * len(self._mix)
        chosen = {id(m): picks[:, li].to(dev) for li, m in enumerate(self.layers)}
        return {"selector": LayerLookup(chosen), "predicted_task": self.majority(picks)}

    @staticmethod
    def majority(picks: torch.Tensor) -> torch.Tensor:
        """``[B]`` each instance's most frequent module over layers ``picks [B, L]`` (ties: the lowest domain)."""
        counts = torch.nn.functional.one_hot(picks, int(picks.max()) + 1).sum(1)  # [B, domains]
        return counts.argmax(-1)

    @torch.no_grad()
    def select(self, batch: dict, rule: str = "dsal", prompt: torch.Tensor | None = None) -> torch.Tensor:
        """The module of every layer per sample, ``[B, L]`` group ids, from one prefill pass over the prompt
        (left padded: position ids count real tokens, as generation's prefill does). ``rule``: ``dsal`` (Eq. 4),
        ``router`` (ablation 3), ``plus`` (Ours+: the DSAL argmin, and each layer's module set kept in
        ``self._mix`` and applied in this pass already) or ``measure`` (every layer on ``self._measure_group``, its
        per-sample DSAL kept in ``self._measured``). ``prompt`` ``[B, T]``: the DSAL tokens (default: every real
        token of the batch)."""
        ctx = self.adapter.context
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        am = inputs["attention_mask"]
        inputs["position_ids"] = (am.long().cumsum(-1) - 1).clamp_min(0)
        self._picks, self._rule = {}, rule
        self._prompt = am.bool() if prompt is None else prompt.bool()
        if rule == "plus":
            self._mix = {}
        was_training = self.model.training
        self.model.eval()
        with ctx.isolated():
            ctx.selector, ctx.recording, ctx.capture_inputs, ctx.bypass = self._select_layer, True, False, False
            ctx.group_mask, ctx.router_ids, ctx.policy = None, None, None
            self._mode, self._e_bar = "select", None
            try:
                self.model(**inputs)
            finally:
                self._mode = "off"
                self.model.train(was_training)
        missing = [self.layer_names[li] for li in range(len(self.layers)) if li not in self._picks]
        if missing:
            raise DymoeError(f"smoe_dsal: the prefill pass reached no selection in {missing[:3]}")
        picks = torch.stack([self._picks[li] for li in range(len(self.layers))], dim=1).cpu()
        self._picks, self._e_bar, self._h0, self._prompt = {}, None, None, None
        return picks

    def _soft_labels(self, like: torch.Tensor) -> torch.Tensor:
        """``ē [B, T, d]`` of the current forward (computed once, shared by every layer and module)."""
        if self._e_bar is None:
            h0, mask = self._h0, self._prompt
            if h0 is None or h0.shape[:2] != mask.shape:
                raise DymoeError("smoe_dsal: the input sequence H0 was not captured for this forward (does the first "
                                 "decoder layer take hidden_states?)")
            e = torch.zeros(h0.shape, dtype=torch.float32, device=h0.device)
            e[mask], _ = expected_embeddings(h0[mask], self._w_em(), self.options.soft_label_temperature)
            self._e_bar = e
        return self._e_bar

    def _select_layer(self, layer: nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        li = self._index[id(layer)]
        groups = [g for g in layer.groups if g < self.domains]
        mask = self._prompt if token_mask is None or self._rule == "measure" else token_mask
        if self._rule == "measure":
            g = self._measure_group
            self._measured[li] = self.module_losses(layer, x, mask, groups=[g])[:, 0]  # [B]
            chosen = torch.full((x.shape[0],), g, dtype=torch.long, device=x.device)
            self._picks[li] = chosen
            return chosen
        if self._rule in ("dsal", "plus"):
            scores = self.module_losses(layer, x, mask)  # [B, G]
            pick = scores.argmin(-1)
            if self._rule == "plus":
                missing = [g for g in groups if g not in self.mean_dsal]
                if missing:
                    raise DymoeError(f"smoe_dsal: no mean DSAL for domains {missing} (measured after each domain's "
                                     "training with method.mean_dsal_fraction > 0); selection 'plus' needs it")
                mu = torch.stack([self.mean_dsal[g][li] for g in groups]).to(scores.device)  # [G]
                self._mix[id(layer)] = (groups, plus_modules(scores, mu))
        else:
            scores = torch.stack([self.router_margin(layer, g, x, mask) for g in groups], dim=1)  # [B, G]
            pick = scores.argmax(-1)
        chosen = torch.tensor(groups, device=x.device)[pick]
        self._picks[li] = chosen
        return chosen

    def module_losses(self, layer: MoEFFN, x: torch.Tensor, prompt_mask: torch.Tensor,
                      groups: list[int] | None = None) -> torch.Tensor:
        """``[B, G]`` L_DSAL^{(l,i)} of every learned module ``i`` of ``layer`` (or of ``groups``) on its input
        ``x [B, T, d]``."""
        li = self._index[id(layer)]
        e_bar = self._soft_labels(x)
        out = []
        for g in [g for g in layer.groups if g < self.domains] if groups is None else groups:
            proj = self._projectors(g)
            out.append(dsal_loss(x, e_bar, prompt_mask, self._w_em(), layer.group_tensors(g), self.options.num_experts,
                                 proj.weight[li], proj.bias[li], chunk=self.options.dsal_chunk))
        return torch.stack(out, dim=1)

    @staticmethod
    def router_margin(layer: MoEFFN, group: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B]`` ablation 3's selection score: the prompt mean of ``max_n s_n − α`` of module ``group``'s
        router (top-k routers: ``max_n s_n``)."""
        t = layer.group_tensors(group)
        s = layer._router_scores(x.reshape(-1, x.shape[-1]), t["router_w1"], t["router_b1"], t["router_w2"],
                                 t["router_b2"]).reshape(*x.shape[:2], -1)  # [B, T, rows]
        margin = s[..., 1:].max(-1).values - s[..., 0] if layer.router_mode == "at" else s.max(-1).values
        m = mask.float()
        return (margin * m).sum(1) / m.sum(1).clamp_min(1)

    def _score(self, picks: torch.Tensor, true: int) -> None:
        st = self._stats
        right = picks == true  # [B, L]
        st["pairs"] += right.numel()
        st["pairs_right"] += int(right.sum())
        st["instances"] += picks.shape[0]
        st["instances_right"] += int((self.majority(picks) == true).sum())
        per = right.sum(0).tolist()
        st["per_layer_right"] = per if st["per_layer_right"] is None else [a + b for a, b in
                                                                          zip(st["per_layer_right"], per)]

    def evaluation_metrics(self) -> dict:
        """DSAL identification accuracy per (instance, layer) and per instance (majority over layers), per layer,
        and the mean activated experts per prompt token of the selection passes, since the last call; summed over
        the processes of a distributed run (each scored its own shard; every process must call this)."""
        st, self._stats = self._stats, self._fresh_stats()
        st = self._all_processes(st)
        plus = {"plus": {"mean_modules": round(st["plus_modules"] / st["plus_pairs"], 4),
                         "pairs": st["plus_pairs"]}} if st["plus_pairs"] else {}
        if not st["instances"] and not st["edi_instances"]:
            return plus  # a ``plus`` variant: the mean number of modules averaged per (instance, layer)
        if not st["instances"]:  # selection ``edi`` (or oracle/last): EDI's accuracy only
            return {"edi": {"features": self.options.edi_features, "instances": st["edi_instances"],
                            "accuracy_instance": round(100.0 * st["edi_right"] / st["edi_instances"], 2)}}
        mean_active = st["active"] / max(st["tokens"], 1.0)
        rep = self.adapter.parameter_report({n: mean_active for n in self.layer_names})
        out = {"dsal": {
            "rule": self.options.selection,
            "accuracy_instance_layer": round(100.0 * st["pairs_right"] / st["pairs"], 2),
            "accuracy_instance": round(100.0 * st["instances_right"] / st["instances"], 2),
            "accuracy_per_layer": [round(100.0 * r / st["instances"], 2) for r in st["per_layer_right"]],
            "instances": st["instances"],
            "mean_active_experts": round(mean_active, 4),
            "activated_parameters_per_token": rep["activated_per_token"],
        }}
        out.update(plus)
        if st["edi_instances"]:
            out["edi"] = {"features": self.options.edi_features, "instances": st["edi_instances"],
                          "accuracy_instance": round(100.0 * st["edi_right"] / st["edi_instances"], 2)}
        return out

    def _all_processes(self, st: dict) -> dict:
        """``st`` (:meth:`_fresh_stats`' counts: every number, and ``per_layer_right``) summed over every process
        (float64: exact for counts below 2⁵³); itself with one process."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return st
        keys = sorted(k for k, v in st.items() if isinstance(v, int | float))  # the same keys on every process
        per = st["per_layer_right"] or [0] * len(self.layers)  # None: this process scored nothing
        dev = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else torch.device("cpu")
        flat = torch.tensor([float(st[k]) for k in keys] + [float(v) for v in per], dtype=torch.float64, device=dev)
        dist.all_reduce(flat)
        vals = flat.cpu().tolist()
        out = {**st, **{k: (v if isinstance(st[k], float) else int(v)) for k, v in zip(keys, vals)}}
        out["per_layer_right"] = [int(v) for v in vals[len(keys):]]
        return out

    # ------------------------------------------------------------------ losses
    def on_forward_start(self) -> None:
        self._events.clear()
        self._mode = "train"
        self._h0 = None

    def _observe(self, event: RoutingEvent) -> None:
        if id(event.layer) not in self._index:
            return
        if self._mode == "select":
            if not self._counting:
                return
            with torch.no_grad():
                per = (event.weights > 0).float().sum(-1)  # [N]
                m = event.token_mask
                if m is not None:
                    per = per[m.to(per.device)]
                self._stats["active"] += float(per.sum())
                self._stats["tokens"] += float(per.numel())
            return
        if self._mode == "train" and torch.is_grad_enabled():
            self._events.append(event)

    def loss_terms(self, batch: dict, outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """:meth:`_loss_terms`, with the trainable DSAL projector kept in the loss of every micro-step (as DDP
        requires): the projector is reached by L_DSAL only, and a zero-weight micro-step (routing not recorded: no
        events) or β = 0 leaves it out of the graph, so that process would skip the gradient all-reduce the others
        run (two gloo processes crashed in their first step). Then ``dsal`` (β > 0; else ``dsal_idle``) is
        0 · Σ projector weights: its value and gradient are zero."""
        recorded = bool(self._events)
        terms = self._loss_terms(batch, outputs, step)
        params = [p for n, m in self.owned_modules.items() if n.startswith("proj_") for p in m.parameters()
                  if p.requires_grad]
        if params and (not recorded or self.options.beta == 0):
            key = "dsal" if self.options.beta > 0 else "dsal_idle"
            terms[key] = terms.get(key, 0.0) + sum(p.sum() for p in params) * 0.0
        return terms

    def _loss_terms(self, batch: dict, outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """``dsal`` = β Σ_l L_DSAL, ``balance`` = η Σ_l L_Bal, ``topk`` = w Σ_l L4 of the module being learned
        (smoe-dsal.md §4); the same keys on every step."""
        events, self._events = self._events, []
        h0, self._h0 = self._h0, None
        self._mode = "off"
        o = self.options
        dev = batch["input_ids"].device
        zero = torch.zeros((), device=dev)
        terms = {}
        if not events:
            return {k: zero for k, w in (("dsal", o.beta), ("balance", o.eta), ("topk", o.topk_weight)) if w > 0}
        bsz, seq = batch["input_ids"].shape
        am = batch["attention_mask"].bool()
        labels = batch.get("labels")
        prompt = am & (labels == -100) if labels is not None else am  # [B, T]
        if o.beta > 0:
            if h0 is None or h0.shape[:2] != (bsz, seq):
                raise DymoeError(f"smoe_dsal: the captured input sequence has shape "
                                 f"{None if h0 is None else tuple(h0.shape)}, the batch {(bsz, seq)}")
            e_bar = torch.zeros(h0.shape, dtype=torch.float32, device=h0.device)
            e_bar[prompt], _ = expected_embeddings(h0[prompt], self._w_em(), o.soft_label_temperature)
            total = zero
            for ev in events:
                layer, li = ev.layer, self._index[id(ev.layer)]
                x = ev.inputs
                if x is None or x.shape[0] != bsz * seq:
                    raise DymoeError("smoe_dsal: routing events carry no layer input of the batch's shape")
                x = x.reshape(bsz, seq, -1)
                if o.dsal_detach_input:
                    x = x.detach()
                proj = self._projectors(layer.groups[-1])
                per = dsal_loss(x, e_bar, prompt, self._w_em(), layer.group_tensors(layer.groups[-1]), o.num_experts,
                                proj.weight[li], proj.bias[li], chunk=o.dsal_chunk)
                total = total + per.mean()
            terms["dsal"] = o.beta * total
        if (o.eta > 0 or o.topk_weight > 0) and o.router == "at":
            tok = (prompt if o.balance_tokens == "prompt" else am).reshape(-1)
            bal, top = zero, zero
            for ev in events:
                if o.eta > 0:
                    v = balance_loss(ev.scores, ev.threshold, ev.weights, tok.to(ev.scores.device), o.balance_frequency)
                    bal = bal + (v if v is not None else 0.0)
                if o.topk_weight > 0:
                    v = topk_loss(ev.scores, ev.threshold, ev.weights, o.topk_target, tok.to(ev.scores.device))
                    top = top + (v if v is not None else 0.0)
            if o.eta > 0:
                terms["balance"] = o.eta * bal
            if o.topk_weight > 0:
                terms["topk"] = o.topk_weight * top
        return terms

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The domains learned, EDI's prototypes ``edi_prototype.<k>`` ``[D]`` and Ours+'s ``mean_dsal.<k>``
        ``[L]``."""
        out = {"domains": torch.tensor([self.domains], dtype=torch.long)}
        out.update({f"edi_prototype.{k}": v.contiguous() for k, v in sorted(self.prototypes.items())})
        out.update({f"mean_dsal.{k}": v.contiguous() for k, v in sorted(self.mean_dsal.items())})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.domains = int(state["domains"][0]) if "domains" in state else 0
        for key, value in state.items():
            head, _, k = key.partition(".")
            if head in ("edi_prototype", "mean_dsal") and k.isdigit():
                (self.prototypes if head == "edi_prototype" else self.mean_dsal)[int(k)] = value.float()
        if self.layers:
            for k in range(self.domains):
                self._projectors(k)

    def describe(self) -> dict:
        out = super().describe()
        if self.layers:
            d, p = self.layers[0].d_model, self.options.projector_dim
            out["projector_parameters_per_domain"] = len(self.layers) * (d * p + p)
        return out


def activation_histogram(picks: torch.Tensor) -> dict[int, int]:
    """``{domain: layers chosen}`` over a ``[B, L]`` selection (diagnostics)."""
    return dict(Counter(picks.reshape(-1).tolist()))
