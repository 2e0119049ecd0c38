"""``cmoe``: LLaVA-CMoE (Zhao, Wang, Sun et al.; cmoe.md) as a method plugin.

Layer (§2): MoE-LoRA on the FFN, one linear router per block shared by its projections (an adapter site with
``share_router: block`` and ``router_bank: true``: the block's leader holds the per-task router bank, §3).

Per task ``k`` (0-based; §11):

1. **planning phase** (:meth:`CMoE.plan`), task ``k >= 1``: **PGKE** (§4) adds ``P`` probes per layer (the mean
   of the old experts) and a probe router (router_{k-1}'s rows plus random rows), trains them at their own learning
   rate on probe-train (everything else frozen), measures Act on probe-eval, decides N_s and the copy source per
   layer (:func:`~dymoe.methods.cmoe.functional.select_expansion`) and discards the probes (snapshot / restore).
   Every task: a **feature pass** (frozen backbone, last prompt token after the final norm) trains task ``k``'s
   **VAE** (§5) on the cached features and computes its primitive ``(m_k, s_k)``.
2. :meth:`CMoE.before_task`: the initial experts on task 1 (A1 fallback), else ``N_s^l`` (or M) copies of the
   source expert in each selected layer; router ``k`` opened in every layer (``G_k = [G_{k-1}; random]``, all rows
   trainable; frozen at once in layers that do not grow unless ``train_static_routers``).

With ``initial_data`` a training file, the initial experts and router R_0 are trained before task 1 in the runner's
**initial phase** (:meth:`CMoE.initial_phase`), PGKE runs from task 1 on, and task ``k``'s group and router have id
``k + 1`` (:attr:`CMoE.offset`; the locator's task ``i`` routes with router ``i + 1``).
3. training: CE + κ·Switch load balancing; 4. :meth:`CMoE.after_task`: fold (experts and router ``k`` frozen).

Evaluation (§5.3, §7): per sample, PTL's z-scored argmax over the VAEs picks ``router_{i*}`` once for the whole
generation (``router_ids``); variants ``oracle`` (the true task's router: "Immediate"), ``last_router`` and
``random_router`` (the PTL ablations). The math is in :mod:`~dymoe.methods.cmoe.functional` and
:mod:`~dymoe.methods.cmoe.vae`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dymoe.errors import ConfigError, DymoeError
from dymoe.layers.context import RoutingEvent
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.methods.base import BatchInfo, Method, StepInfo, TaskInfo
from dymoe.methods.cmoe.config import FIRST_TASK, TARGETS, CMoEOptions
from dymoe.methods.cmoe.functional import activation_sums, probe_split, select_expansion, zscore_argmax
from dymoe.methods.cmoe.vae import TaskVAE, train_vae
from dymoe.methods.dymoe.functional import load_balance_loss

PROBE_GROUP = 10_000  # group id of the probe experts (never a task's)


@torch.no_grad()
def last_prompt_features(model: torch.nn.Module, batch: dict, *, left_padded: bool) -> torch.Tensor:
    """``[B, d]`` fp32: the final hidden state (after the final norm, ``hidden_states[-1]``) at each sample's last
    prompt token (cmoe.md §5.1), whatever the expert layers do (call it with ``context.bypass`` for the frozen
    backbone).

    Training batches (right padding, ``labels``): the position before the first answer token (the model is
    causal, so the answer does not change it). Generation batches (``left_padded``): the last column, with
    position ids counting real tokens only.
    """
    am = batch["attention_mask"]  # [B, T]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if left_padded:
        inputs["position_ids"] = (am.long().cumsum(-1) - 1).clamp_min(0)
    out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # [B, T, d]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if left_padded:
        return hidden[:, -1].float()
    last_real = am.long().cumsum(1).argmax(1)  # [B] the last non-pad position (right padding)
    labels = batch.get("labels")
    if labels is None:
        return hidden[rows, last_real].float()
    answer = (labels != -100) & am.bool()  # [B, T]
    first = torch.where(answer.any(1), answer.long().argmax(1), last_real + 1)  # [B]
    return hidden[rows, (first - 1).clamp_min(0)].float()


class CMoE(Method):
    name = "cmoe"
    Options = CMoEOptions
    locator_name = "ptl"

    def __init__(self, options: CMoEOptions | None = None):
        super().__init__(options)
        opts = self.options
        self.evaluation_variants = tuple(opts.variants)
        self.immediate_variant = "oracle" if "oracle" in opts.variants else None
        self.locator_name = opts.locator if opts.locator != "ptl" else "ptl"
        #: id of task k's group and router minus k: 0 (fallback: task 1 trains the initial experts, group 0), or
        #: 1 (an initial phase owns group / router 0)
        self.offset = 0 if opts.initial_data == FIRST_TASK else 1
        self.primitives = torch.zeros(0, 2, dtype=torch.float64)  # [tasks, (m_i, s_i)]
        self.grown: list[list[int]] = []  # per task: experts added per routing layer
        self.plan_out: dict[str, torch.Tensor] = {}
        self.blocks: list[tuple[str, list[str]]] = []  # (routing layer, [its projections])
        self.phase = "train"
        self._events: list[RoutingEvent] = []
        self._act: dict[str, list[torch.Tensor]] | None = None  # routing layer -> [sums, tokens]
        self._names: dict[int, str] = {}

    # ------------------------------------------------------------------ layer
    def configure_adapter(self, config):
        """One site on the FFN projections of :attr:`CMoEOptions.targets`: one linear router per block holding the
        per-task router bank, top-k, ``alpha / rank`` scaling per expert (cmoe.md §2)."""
        if config.sites:
            raise ConfigError("method cmoe builds its own adapter site (method.targets); remove adapter.sites")
        opts = self.options
        site = {"name": "ffn", "targets": TARGETS[opts.targets], "share_router": "block", "router_bank": True,
                "router": "linear", "temperature": 1.0, "top_k": opts.top_k, "experts_per_group": opts.initial_experts,
                "bank_rank": config.expert_rank}
        return dataclasses.replace(config, sites=[site])

    def setup(self, model, adapter) -> None:
        super().setup(model, adapter)
        blocks: dict[str, list[str]] = {}
        lead: dict[str, str] = {}
        for name, layer in adapter.modules.items():
            if not isinstance(layer, MoELoRALinear):
                raise DymoeError(f"cmoe: {name} is not a LoRA expert layer")
            key = layer.route_key or name
            blocks.setdefault(key, []).append(name)
            if layer.router_bank is not None:
                lead[key] = name
        missing = [k for k in blocks if k not in lead]
        if missing:
            raise DymoeError(f"cmoe: blocks without a router bank: {missing[:3]}")
        self.blocks = [(lead[k], [lead[k]] + [n for n in v if n != lead[k]]) for k, v in blocks.items()]
        self._names = {id(adapter.modules[r]): r for r, _ in self.blocks}
        if self._observe not in adapter.context.observers:
            adapter.context.observers.append(self._observe)

    def _hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    def _vae(self, k: int) -> TaskVAE:
        name = f"vae_{k}"
        if name not in self.owned_modules:
            o = self.options
            vae = TaskVAE(self._hidden_size(), o.vae_hidden, o.vae_latent, o.vae_eps).float()
            vae.requires_grad_(False)  # trained in the planning phase, never by the task's optimizer
            self.register_module(name, vae)
        return self.owned_modules[name]

    # ------------------------------------------------------------------ planning phase
    # ------------------------------------------------------------------ initial phase (A1)
    def initial_data(self) -> dict | None:
        o = self.options
        if o.initial_data == FIRST_TASK:
            return None
        root = o.initial_image_root
        if root is None:
            from pathlib import Path

            root = str(Path(o.initial_data).parent)
        return {"train": o.initial_data, "image_root": root}

    def _routers(self) -> list[str]:
        return [lead for lead, _ in self.blocks]

    def _open_initial(self) -> None:
        self.adapter.add_group(0, num_experts=self.options.initial_experts)
        self.adapter.open_router(0, modules=self._routers())

    def initial_phase(self, task: TaskInfo, planner) -> None:
        """The initial experts (8 per layer) and router R_0 trained on the initial data set (CE + κ·aux, the run's
        schedule), then frozen (cmoe.md A1)."""
        o, cfg = self.options, planner.run.cfg.training
        self._open_initial()
        planner.train(lr=o.initial_lr or cfg.lr, params=self.adapter.trainable_parameters(),
                      epochs=o.initial_epochs or cfg.epochs, seed=0, schedule=cfg.schedule,
                      warmup_ratio=cfg.warmup_ratio)
        self.adapter.fold()
        planner.log["initial_experts"] = o.initial_experts

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self.adapter.named_tensors()}

    def load_initial_state(self, state: dict[str, torch.Tensor]) -> None:
        self._open_initial()
        self.adapter.fold()
        mine = dict(self.adapter.named_tensors())
        if set(mine) != set(state) or any(mine[n].shape != state[n].shape for n in mine):
            raise DymoeError("cmoe: the saved initial phase does not match this adapter (method.initial_experts or "
                             "the adapter changed?); delete checkpoints/initial.plan to train it again")
        with torch.no_grad():
            for n, t in mine.items():
                t.copy_(state[n])

    # ------------------------------------------------------------------ planning phase
    def plan(self, task: TaskInfo, planner) -> None:
        self.plan_out = {}
        if task.index + self.offset >= 1:  # old experts exist: PGKE
            self.plan_out.update(self._pgke(task, planner))
        self._train_locator(task, planner)

    def _pgke(self, task: TaskInfo, planner) -> dict[str, torch.Tensor]:
        """PGKE (cmoe.md §4): probes, their training, Act on probe-eval, the decision; the probes are discarded."""
        o, adapter = self.options, self.adapter
        train_idx, eval_idx = probe_split(len(planner.samples), o.probe_fraction, o.probe_eval_fraction,
                                          o.probe_eval_max, seed=task.index)
        snap = adapter.snapshot()
        names = [n for _, members in self.blocks for n in members]
        adapter.add_group(PROBE_GROUP, num_experts=o.probes, modules=names, init="mean")  # mean of the old group
        adapter.open_router(task.index + self.offset)  # the previous router's rows, random probe rows: trainable
        try:
            planner.train(lr=o.probe_lr, params=adapter.trainable_parameters(), epochs=o.probe_epochs,
                          indices=train_idx, seed=task.index)
            acts = self._measure_act(planner, eval_idx)
            decision = select_expansion(acts, o.probes, o.threshold_alpha, o.threshold_scope,
                                        o.experts_per_selected_layer, o.copy_source)
            out = {f"pgke.{k}": v for k, v in decision.items()}
            for b, (lead, members) in enumerate(self.blocks):
                out[f"act.{b}"] = acts[b].float()
                n_old = adapter.modules[lead].num_experts - o.probes
                src = int(decision["source"][b])
                if int(decision["n_new"][b]) > 0 and src >= n_old:  # a probe: keep its tensors before discarding
                    for m in members:
                        layer = adapter.modules[m]
                        state = layer.expert_state([layer.expert_ids[src]])
                        out[f"copy.{m}.A"], out[f"copy.{m}.B"] = state["A"], state["B"]
        finally:
            adapter.restore(snap)  # the probes and the probe router leave no trace
        grown = int((decision["n_new"] > 0).sum())
        planner.log["pgke"] = {"probe_train": len(train_idx), "probe_eval": len(eval_idx), "layers_grown": grown,
                               "experts_added": int(decision["n_new"].sum()), "layers": len(self.blocks),
                               # Table 2 right: the task's added parameters over an every-layer expansion
                               "param_ratio": grown / max(len(self.blocks), 1)}
        return out

    @torch.no_grad()
    def _measure_act(self, planner, indices: list[int]) -> list[torch.Tensor]:
        """Act (``act_statistic``) of every routing layer's experts over the probe-eval tokens, summed over the
        processes: one ``[E_l + P]`` vector per block."""
        ctx, model = self.adapter.context, self.model
        was_training, old_rec = model.training, ctx.recording
        model.eval()
        self._act = {}
        ctx.recording = True
        try:
            for batch, info in planner.batches(indices, phase="plan"):
                with planner.routed(batch, info):
                    model(**{k: v for k, v in batch.items() if k != "labels"})
        finally:
            ctx.recording = old_rec
            model.train(was_training)
            acc, self._act = self._act, None
        acts = []
        for lead, _ in self.blocks:
            # a process without probe-eval batches (fewer batches than processes) contributes zeros
            n = self.adapter.modules[lead].num_experts
            sums, tokens = acc.get(lead, (torch.zeros(n, dtype=torch.float64), torch.zeros((), dtype=torch.float64)))
            total = planner.all_reduce(torch.cat([sums.cpu(), tokens.reshape(1).cpu()]))
            if float(total[-1]) == 0:
                raise DymoeError(f"cmoe: no probe-eval token reached {lead}; raise method.probe_fraction")
            acts.append(total[:-1] / total[-1])
        return acts

    def _train_locator(self, task: TaskInfo, planner) -> None:
        """PTL (cmoe.md §5): task ``k``'s VAE on the frozen backbone's last-prompt-token features, and (m_k, s_k)."""
        o = self.options
        feats = planner.features(lambda batch, info: last_prompt_features(self.model, batch, left_padded=False))
        vae = self._vae(task.index)
        device = next(vae.parameters()).device
        feats = feats.to(device)
        vae.requires_grad_(True)
        try:
            # None: the task's own epochs (per-task epochs of the benchmark, else training.epochs)
            epochs = o.vae_epochs if o.vae_epochs is not None else float(task.epochs or 1.0)
            bs = o.vae_batch_size or int(planner.run.cfg.training.batch_size)
            losses, last_order = train_vae(vae, feats, epochs=epochs, batch_size=bs, lr=o.vae_lr, n_rep=o.vae_n_rep,
                                           kl_weight=o.vae_kl_weight, rec_weight=o.vae_rec_weight,
                                           seed=1000 + task.index)
        finally:
            vae.requires_grad_(False)
        t = min(o.primitive_samples, feats.shape[0])
        if o.primitive_subset == "last" and len(last_order) >= t:
            idx = last_order[-t:]
        else:
            g = torch.Generator().manual_seed(2000 + task.index)
            idx = torch.randperm(feats.shape[0], generator=g)[:t].tolist()
        scores = vae.score(feats[idx], o.vae_n_rep, o.locator_seed).double().cpu()  # [T]
        prim = torch.tensor([[float(scores.mean()), max(float(scores.std(unbiased=False)), 1e-6)]], dtype=torch.float64)
        self.primitives = torch.cat([self.primitives[: task.index], prim])
        planner.log["vae"] = {"features": list(feats.shape), "steps": len(losses), "first_loss": losses[0],
                              "final_loss": losses[-1], "primitive": prim[0].tolist(), "T": t}

    def plan_state(self) -> dict[str, torch.Tensor]:
        k = self.primitives.shape[0] - 1
        vae = {f"vae.{n}": t for n, t in self._vae(k).state_dict().items()}
        return {**self.plan_out, **vae, "primitives": self.primitives.clone()}

    def load_plan_state(self, state: dict[str, torch.Tensor], task: TaskInfo) -> None:
        self.primitives = state["primitives"].double().clone()
        vae = self._vae(task.index)
        vae.load_state_dict({k.removeprefix("vae."): v for k, v in state.items() if k.startswith("vae.")})
        self.plan_out = {k: v for k, v in state.items() if not k.startswith("vae.") and k != "primitives"}

    # ------------------------------------------------------------------ growth
    def before_task(self, task: TaskInfo) -> None:
        adapter, o = self.adapter, self.options
        routers = self._routers()
        rid = task.index + self.offset  # the task's group and router id
        if rid == 0:
            self._open_initial()  # the initial experts, trained on task 1 (A1 fallback)
            self.grown = [[o.initial_experts] * len(self.blocks)]
            return
        if "pgke.n_new" not in self.plan_out:
            raise DymoeError(f"cmoe: task {task.name!r} has no PGKE decision (planning phase missing)")
        n_new = self.plan_out["pgke.n_new"].tolist()
        source = self.plan_out["pgke.source"].tolist()
        grown_layers = []
        for b, (lead, members) in enumerate(self.blocks):
            if n_new[b] == 0:
                continue
            grown_layers.append(lead)
            sources = {}
            for m in members:
                layer = adapter.modules[m]
                if f"copy.{m}.A" in self.plan_out:  # a probe was the source
                    sources[m] = {"A": self.plan_out[f"copy.{m}.A"], "B": self.plan_out[f"copy.{m}.B"]}
                else:
                    sources[m] = layer.expert_ids[source[b]]
            adapter.add_group(rid, num_experts=n_new[b], modules=members, init="copy", sources=sources)
        static = [r for r in routers if r not in grown_layers]
        if grown_layers:
            adapter.open_router(rid, modules=grown_layers)
        if static:
            adapter.open_router(rid, modules=static, trainable=o.train_static_routers)
        self.grown = self.grown[: task.index] + [n_new]
        if not adapter.trainable_parameters():
            raise DymoeError(f"cmoe: PGKE grew no layer for task {task.name!r} and method.train_static_routers is "
                             "off: nothing to train")

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        self.adapter.fold()  # the task's experts and router_k frozen
        self._events.clear()

    # ------------------------------------------------------------------ routing
    def batch_routing(self, batch: dict, info: BatchInfo) -> dict | None:
        self.phase = info.phase
        if info.phase != "eval":
            return None  # training / probing: the open router
        n_trained = self.primitives.shape[0]
        rows = batch["input_ids"].shape[0]
        mode = info.variant or self.options.locator
        if mode == "oracle":
            chosen = torch.full((rows,), info.task_index, dtype=torch.long)
        elif mode == "last_router":
            chosen = torch.full((rows,), info.stage - 1, dtype=torch.long)
        elif mode == "random_router":
            g = torch.Generator().manual_seed(self.options.locator_seed * 100003 + info.stage * 1009 + info.task_index)
            ids = torch.randint(0, info.stage, (max(info.indices, default=0) + 1,), generator=g)
            chosen = ids[torch.tensor(info.indices, dtype=torch.long)] if info.indices else ids[:rows]
        else:
            chosen = self.locate(batch)
        if n_trained == 0:
            return None
        return {"router_ids": (chosen + self.offset).to(batch["input_ids"].device), "predicted_task": chosen}

    @torch.no_grad()
    def locate(self, batch: dict) -> torch.Tensor:
        """PTL (cmoe.md §5.3): ``[B]`` argmax over the trained tasks of the z-scored log p_rec of each sample's
        frozen-backbone feature (generation batches: left padded)."""
        ctx = self.adapter.context
        with ctx.backbone_only():
            feats = last_prompt_features(self.model, batch, left_padded=True)  # [B, d]
        return self.locate_features(feats)

    @torch.no_grad()
    def locate_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B]`` task per feature row ``[B, d]`` (see :meth:`locate`)."""
        n = self.primitives.shape[0]
        o = self.options
        log_p = torch.stack([self._vae(i).score(feats, o.vae_n_rep, o.locator_seed) for i in range(n)], dim=1)
        chosen, _ = zscore_argmax(log_p.double().cpu(), self.primitives[:, 0], self.primitives[:, 1])
        return chosen

    # ------------------------------------------------------------------ losses
    def on_forward_start(self) -> None:
        self._events.clear()

    def _observe(self, event: RoutingEvent) -> None:
        name = self._names.get(id(event.layer))
        if name is None:
            return
        if self._act is not None:
            sums, tokens = activation_sums(event.scores.detach(), event.weights.detach(), event.token_mask,
                                           self.options.act_statistic)
            if name in self._act:
                self._act[name][0] += sums
                self._act[name][1] += tokens
            else:
                self._act[name] = [sums, tokens]
            return
        if torch.is_grad_enabled() and self.options.aux_weight > 0:
            self._events.append(event)

    def loss_terms(self, batch: dict, outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """``aux``: κ · the Switch load balancing ``E · Σ_e f_e P_e`` of every routing layer, averaged (cmoe.md §5.4)."""
        events, self._events = self._events, []
        if self.options.aux_weight <= 0:
            return {}
        if not events:  # the same keys on every process and step
            return {"aux": torch.zeros((), device=outputs.loss.device if getattr(outputs, "loss", None) is not None
                                       else None)}
        total = sum(load_balance_loss(ev.scores, 0, ev.token_mask, ev.layer.top_k, ev.layer.temperature, "switch")
                    for ev in events)
        return {"aux": self.options.aux_weight * total / len(events)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"primitives": self.primitives.contiguous()}
        if self.grown:
            state["grown"] = torch.tensor(self.grown, dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.primitives = state.get("primitives", torch.zeros(0, 2)).double().clone()
        self.grown = state["grown"].tolist() if "grown" in state else []
        for k in range(self.primitives.shape[0]):
            self._vae(k)  # registered before the module tensors are loaded

    def describe(self) -> dict:
        out = super().describe()
        o = self.options
        out["initial_experts_trained_on"] = ("task 1 (small-scale fallback, cmoe.md A1)" if self.offset == 0 else
                                             f"initial data {o.initial_data} (an initial phase before task 1)")
        return out
