"""``dmole``: D-MoLE (Ge et al., ICML 2025; dmole.md) as a method plugin.

Layer (§2, §6): rank-8 LoRA experts (α = 2r, dropout 0.05) on the attention q/k/v and output projections of every
block of the language model (site ``llm``) and of the vision encoder (site ``vision``, scope ``vision``). A *slot*
is one (layer, qkv | o) pair; the q, k and v linears of a block form one slot. Router ``none`` with a per-sample
``group_mask``: binary gates, the active experts summed by the fused LoRA op (no loop over experts); group ``k`` is
task ``k``'s expert, present only in the slots allocated to it, and one gate vector per instruction is broadcast
over every slot (the vision tower's rows via ``context.image_rows``).

Per task ``t`` (0-based; §8):

1. planning phase (:meth:`DMoLE.plan`): the **zero-cost proxy** on the pretrained model (every expert bypassed):
   one forward/backward over a seeded ``proxy_fraction`` subset, ``S_m = ‖∂L/∂W_m^0‖`` per slot; the **budget
   split** and **allocation** (:mod:`~dymoe.methods.dmole.allocation`); a **feature pass** of the pretrained
   backbone gives ``z`` for up to ``ae_samples`` samples; task ``t``'s **autoencoder** and its threshold τ_t.
2. :meth:`DMoLE.before_task`: a new expert (group ``t``) in the allocated slots; the cumulative architecture grows.
3. training: gates = expert ``t`` + the most relevant prior task's (frozen) under threshold (§7).
4. :meth:`DMoLE.after_task`: fold (task ``t``'s experts frozen).

Evaluation: per sample the top-2 tasks whose autoencoder loss is under its threshold (none → the pretrained
model); ``batch_vote`` reproduces the official per-batch vote.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from dymoe.errors import ConfigError, DymoeError
from dymoe.injection.targets import vision_tower_scope
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.methods.base import BatchInfo, Method, TaskInfo
from dymoe.methods.dmole.allocation import allocate, extend_arch
from dymoe.methods.dmole.config import DMoLEOptions
from dymoe.methods.dmole.features import router_feature, slot_gradient_norms
from dymoe.methods.dmole.router import (
    TaskAutoencoder,
    batch_vote_gates,
    eval_gates,
    threshold,
    train_autoencoder,
    train_gates,
)
from dymoe.models.pooled import prompt_token_ids


def slot_of(name: str, qkv: list[str], out: list[str]) -> str:
    """The slot a wrapped linear belongs to: ``<parent module>.qkv`` or ``<parent module>.o``."""
    parent, _, leaf = name.rpartition(".")
    if leaf in qkv:
        return f"{parent}.qkv"
    if leaf in out:
        return f"{parent}.o"
    raise DymoeError(f"dmole: {name} is neither a q/k/v nor an output projection")


def _subset_seed(planner) -> int:
    """The seed of a task's random subsets (the proxy's 1 %, the autoencoder's samples): the run's seed and the task,
    so that another training seed draws other subsets (``training.seed * 1000 + task``)."""
    return int(planner.run.cfg.training.seed) * 1000 + planner.task.index


class DMoLE(Method):
    name = "dmole"
    Options = DMoLEOptions
    locator_name = "autoencoder_router"

    def __init__(self, options: DMoLEOptions | None = None):
        super().__init__(options)
        self.slots: dict[str, list[str]] = {}  # slot -> wrapped module names (model order)
        self.modality: dict[str, str] = {}  # slot -> "llm" | "vision"
        self.alloc = torch.zeros(0, 0, dtype=torch.bool)  # [tasks planned, slots]: I_m^k
        self.taus = torch.zeros(0, dtype=torch.float64)  # [tasks planned]
        self.feature_dim = 0
        self.vision_dim = 0
        self.trained = 0  # tasks whose experts are folded
        self.plan_out: dict[str, torch.Tensor] = {}
        self._train_feats: dict[int, torch.Tensor] = {}  # sample index -> z of the task being trained
        self._route_counts: list[int] = [0, 0, 0]  # eval samples with 0 / 1 / 2+ tasks active since the last report

    # ------------------------------------------------------------------ layer
    def configure_adapter(self, config):
        """Two sites of LoRA experts with binary gates (router ``none``): ``llm`` on the language model's
        attention projections and ``vision`` on the vision encoder's (dmole.md §2)."""
        if config.sites:
            raise ConfigError("method dmole builds its own adapter sites (method.llm_qkv, ...); remove adapter.sites")
        o = self.options
        common = {"kind": "linear", "router": "none", "experts_per_group": 1, "expert_rank": o.rank,
                  "bank_rank": o.rank, "alpha": o.effective_alpha, "dropout": o.dropout, "top_k": 1,
                  "sparse": "never"}
        sites = []
        if "llm" in o.modalities:
            sites.append({**common, "name": "llm", "targets": list(dict.fromkeys(o.llm_qkv + o.llm_out))})
        if "vision" in o.modalities:
            sites.append({**common, "name": "vision", "scope": "vision",
                          "targets": list(dict.fromkeys(o.vision_qkv + o.vision_out))})
        return dataclasses.replace(config, sites=sites)

    def setup(self, model, adapter) -> None:
        super().setup(model, adapter)
        o = self.options
        self.slots, self.modality = {}, {}
        for name, layer in adapter.modules.items():
            if not isinstance(layer, MoELoRALinear):
                raise DymoeError(f"dmole: {name} is not a LoRA expert layer")
            site = adapter.site_of[name]
            qkv, out = (o.llm_qkv, o.llm_out) if site == "llm" else (o.vision_qkv, o.vision_out)
            slot = slot_of(name, qkv, out)
            self.slots.setdefault(slot, []).append(name)
            self.modality[slot] = site
        try:  # the vision encoder whose last hidden state is half of the router's feature (§7)
            self._vision = model.get_submodule(vision_tower_scope(model))
        except ConfigError:
            self._vision = None
        vc = getattr(model.config, "vision_config", None)
        self.vision_dim = int(getattr(vc, "hidden_size", 0) or 0) if self._vision is not None else 0
        if self.alloc.shape[1] == 0:
            self.alloc = torch.zeros(self.alloc.shape[0], len(self.slots), dtype=torch.bool)

    def loss_terms(self, batch: dict, outputs, step) -> dict[str, torch.Tensor]:
        """The base's terms, plus ``vision_idle`` = 0 · Σ the trainable vision-tower expert weights, on every step
        (the same keys on every process): the vision experts then take part in each step's loss, as DDP requires
        (a text-only micro-batch on one process and an image batch on another would otherwise reduce different
        parameter sets). Its value and gradient are zero."""
        terms = super().loss_terms(batch, outputs, step)
        params = [p for n, layer in self.adapter.modules.items() if self.adapter.site_of[n] == "vision"
                  for p in layer.parameters() if p.requires_grad]
        if params:
            terms["vision_idle"] = sum(p.sum() for p in params) * 0.0
        return terms

    @property
    def slot_names(self) -> list[str]:
        return list(self.slots)

    def _ae(self, k: int) -> TaskAutoencoder:
        name = f"ae_{k}"
        if name not in self.owned_modules:
            ae = TaskAutoencoder(self.feature_dim, self.options.ae_hidden).float()
            ae.requires_grad_(False)  # trained in the planning phase, never by the task's optimizer
            self.register_module(name, ae)
        return self.owned_modules[name]

    # ------------------------------------------------------------------ the pretrained backbone's measurements
    def _features(self, batch: dict, image_sample: list[int]) -> torch.Tensor:
        """``z [B, d]`` of a batch with every expert bypassed (the pretrained backbone)."""
        ctx = self.adapter.context
        pad, image_token = prompt_token_ids(self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            with ctx.backbone_only():
                z = router_feature(self.model, self._vision, batch, image_sample, vision_dim=self.vision_dim,
                                   image_token_id=image_token, pad_token_id=pad,
                                   normalize=self.options.normalize_features)
        finally:
            self.model.train(was_training)
        return z

    def _proxy(self, planner) -> tuple[dict[str, float], dict]:
        """The zero-cost proxy (dmole.md §3): ``{slot: S_m}`` on a seeded subset, and its log."""
        o = self.options
        idx = planner.subset(o.proxy_fraction, seed=_subset_seed(planner))
        bases = {s: [self.adapter.modules[n].base for n in names] for s, names in self.slots.items()}
        params = [p for lins in bases.values() for lin in lins for p in (lin.weight, lin.bias) if p is not None]
        ctx, model = self.adapter.context, self.model
        start = time.perf_counter()
        for p in params:
            p.grad = None
            p.requires_grad_(True)
        loss_sum, n_batches = 0.0, 0
        try:
            with ctx.backbone_only():
                for batch, _info in planner.batches(idx, batch_size=o.proxy_batch_size, phase="plan"):
                    out = model(**batch)
                    out.loss.backward()  # gradients summed over the subset's batches (no optimizer step)
                    loss_sum += float(out.loss.detach())
                    n_batches += 1
            scores = slot_gradient_norms(bases, bias=o.proxy_bias, reduce=planner.all_reduce)
        finally:
            for p in params:
                p.grad = None
                p.requires_grad_(False)
        log = {"samples": len(idx), "batches": n_batches, "loss_sum": loss_sum,
               "seconds": round(time.perf_counter() - start, 4)}
        return scores, log

    # ------------------------------------------------------------------ planning phase
    def plan(self, task: TaskInfo, planner) -> None:
        o, t = self.options, task.index
        scores, proxy_log = self._proxy(planner)
        alloc = allocate(scores, self.modality, rho=o.rho, min_vision_frac=o.min_vision_frac,
                         mode=o.modality_score, split=o.split, modalities=o.modalities)
        if not alloc["chosen"]:
            raise DymoeError(f"dmole: no slot allocated to task {task.name!r}")
        chosen = torch.tensor([s in set(alloc["chosen"]) for s in self.slot_names], dtype=torch.bool)
        # the autoencoder router (§7): features of the pretrained backbone, one autoencoder per task
        start = time.perf_counter()
        ae_idx = planner.subset(min(1.0, o.ae_samples / max(len(planner.samples), 1)), seed=10_000 + _subset_seed(planner))
        feats = planner.features(lambda batch, info: self._features(batch, info.image_sample), ae_idx)
        if not self.feature_dim:
            self.feature_dim = int(feats.shape[1])
        self._train_feats = {i: feats[r] for r, i in enumerate(ae_idx)}
        ae = self._ae(t)
        feats = feats.to(next(ae.parameters()).device)
        ae.requires_grad_(True)
        try:
            losses = train_autoencoder(ae, feats, epochs=o.ae_epochs, lr=o.ae_lr, batch_size=o.ae_batch_size,
                                       recipe=o.ae_recipe, seed=20_000 + t)
        finally:
            ae.requires_grad_(False)
        with torch.no_grad():
            in_task = ae.loss(feats).cpu()
        tau = threshold(in_task, o.threshold_rule, o.threshold_multiplier, o.threshold_quantile)
        self._set_task_plan(t, chosen, tau)
        self.plan_out = {"scores": torch.tensor([scores[s] for s in self.slot_names], dtype=torch.float64),
                         "chosen": chosen, "tau": torch.tensor(tau, dtype=torch.float64),
                         "feature_dim": torch.tensor([self.feature_dim, self.vision_dim])}
        planner.log["proxy"] = proxy_log
        planner.log["allocation"] = {
            "budget": alloc["budget"], "budgets": alloc["budgets"], "ratios": alloc["ratios"],
            "modality_scores": alloc["modality_scores"], "chosen": alloc["chosen_by_modality"],
            "scores": {s: scores[s] for s in self.slot_names}}
        planner.log["autoencoder"] = {"features": list(feats.shape), "epochs": len(losses), "first_loss": losses[0],
                                      "final_loss": losses[-1], "tau": tau,
                                      "in_task_max": float(in_task.max()), "seconds": round(time.perf_counter() - start, 4)}

    def _set_task_plan(self, t: int, chosen: torch.Tensor, tau: float) -> None:
        alloc = torch.zeros(t + 1, len(self.slots), dtype=torch.bool)
        alloc[: min(t, self.alloc.shape[0])] = self.alloc[:t]
        alloc[t] = chosen
        taus = torch.zeros(t + 1, dtype=torch.float64)
        taus[: min(t, self.taus.shape[0])] = self.taus[:t]
        taus[t] = tau
        self.alloc, self.taus = alloc, taus

    def plan_state(self) -> dict[str, torch.Tensor]:
        t = self.taus.shape[0] - 1
        ae = {f"ae.{n}": v for n, v in self._ae(t).state_dict().items()}
        return {**self.plan_out, **ae}

    def load_plan_state(self, state: dict[str, torch.Tensor], task: TaskInfo) -> None:
        self.feature_dim, self.vision_dim = (int(x) for x in state["feature_dim"].tolist())
        self._set_task_plan(task.index, state["chosen"].bool(), float(state["tau"]))
        self._ae(task.index).load_state_dict({k.removeprefix("ae."): v for k, v in state.items()
                                              if k.startswith("ae.")})
        self.plan_out = {k: v for k, v in state.items() if not k.startswith("ae.")}
        self._train_feats = {}

    # ------------------------------------------------------------------ growth
    def before_task(self, task: TaskInfo) -> None:
        t = task.index
        if self.alloc.shape[0] <= t:
            raise DymoeError(f"dmole: task {task.name!r} has no allocation (planning phase missing)")
        modules = [n for s, on in zip(self.slot_names, self.alloc[t].tolist()) if on for n in self.slots[s]]
        self.adapter.add_group(t, num_experts=1, rank=self.options.rank, modules=modules)

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        self.adapter.fold()
        self.trained = task.index + 1
        self._train_feats = {}

    def architecture(self) -> dict[str, list[int]]:
        """The cumulative architecture ``{slot: [task ids]}`` of the tasks planned so far (the code's arch JSON)."""
        arch: dict[str, list[int]] = {}
        for k in range(self.alloc.shape[0]):
            arch = extend_arch(arch, [s for s, on in zip(self.slot_names, self.alloc[k].tolist()) if on], k)
        return arch

    # ------------------------------------------------------------------ routing
    def _losses(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """``[B, n]`` reconstruction losses of ``z`` under the autoencoders of tasks ``0..n-1`` (fp32, CPU)."""
        if n == 0:
            return torch.zeros(z.shape[0], 0)
        dev = next(self._ae(0).parameters()).device
        with torch.no_grad():
            return torch.stack([self._ae(k).loss(z.to(dev)) for k in range(n)], dim=1).float().cpu()

    def route(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """Evaluation gates ``[B, n]`` bool for features ``z [B, d]`` over the first ``n`` tasks (options'
        ``eval_routing``)."""
        losses, taus = self._losses(z, n), self.taus[:n].float()
        if self.options.eval_routing == "batch_vote":
            return batch_vote_gates(losses, taus, self.options.vote_support)
        return eval_gates(losses, taus, self.options.eval_top_k)

    def batch_routing(self, batch: dict, info: BatchInfo) -> dict | None:
        rows = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        if info.phase == "train":
            t = info.task_index
            if t == 0 or not self.options.train_prior:
                gates = torch.zeros(rows, t + 1, dtype=torch.bool)
                gates[:, t] = True
            else:
                missing = [r for r, i in enumerate(info.indices) if i not in self._train_feats]
                if missing or len(info.indices) != rows:
                    z = self._features(batch, info.image_sample).cpu()
                    for r, i in enumerate(info.indices):
                        self._train_feats[i] = z[r]
                else:
                    z = torch.stack([self._train_feats[i] for i in info.indices])
                losses = self._losses(z, t)
                gates = train_gates(losses, self.taus[:t].float(), t, mode=self.options.train_routing,
                                    min_support=self.options.vote_support)
            return {"group_mask": gates.to(device)}
        if info.phase != "eval":
            return None  # planning and feature passes bypass the experts
        n = min(self.trained, self.taus.shape[0])
        if n == 0:
            return {"group_mask": torch.zeros(rows, 1, dtype=torch.bool, device=device),
                    "predicted_task": torch.full((rows,), -1, dtype=torch.long)}
        z = self._features(batch, info.image_sample)
        losses = self._losses(z, n)
        gates = self.route(z, n)
        best = losses.masked_fill(~gates, float("inf")).argmin(1)
        predicted = torch.where(gates.any(1), best, torch.full_like(best, -1))
        active = gates.sum(1)
        for c in range(3):
            self._route_counts[c] += int((active.clamp(max=2) == c).sum())
        return {"group_mask": gates.to(device), "predicted_task": predicted}

    def evaluation_metrics(self) -> dict:
        """The cumulative architecture per task and modality (Fig. 6) and how many evaluated samples had 0 (the
        pretrained model), 1 or 2 tasks' experts on since the last call."""
        counts, self._route_counts = self._route_counts, [0, 0, 0]
        per_task = []
        for k in range(self.alloc.shape[0]):
            on = [s for s, x in zip(self.slot_names, self.alloc[k].tolist()) if x]
            per_task.append({m: sorted(s for s in on if self.modality[s] == m) for m in ("llm", "vision")})
        return {"dmole": {"slots": {m: sum(1 for s in self.slot_names if self.modality[s] == m)
                                    for m in ("llm", "vision")},
                          "allocation": per_task, "taus": self.taus.tolist(),
                          "active_tasks": {"none": counts[0], "one": counts[1], "two": counts[2]}}}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"alloc": self.alloc.contiguous(), "taus": self.taus.contiguous(),
                "dims": torch.tensor([self.feature_dim, self.vision_dim, self.trained])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.alloc = state["alloc"].bool().clone()
        self.taus = state["taus"].double().clone()
        self.feature_dim, self.vision_dim, self.trained = (int(x) for x in state["dims"].tolist())
        for k in range(self.taus.shape[0]):
            self._ae(k)  # registered before the module tensors are loaded

    def describe(self) -> dict:
        out = super().describe()
        out["slots"] = {m: sum(1 for s in self.modality.values() if s == m) for m in ("llm", "vision")}
        return out
