"""A test method package exercising every runner hook the peer systems need (not registered for users).

``test-planner`` is IncMoELoRA (a group of experts per task) plus:

* a **planning phase** per task (:meth:`PlannerMethod.plan`): a linear probe (a registered module) trained with its
  own learning rate on a seeded 50 % subset of the task's samples, then a **feature pass** over every sample with the
  frozen backbone (expert layers bypassed): the last non-pad token's final hidden state; the task's prototype is
  their mean. The prototypes and the probe are the plan state (saved, loaded on resume);
* a **per-batch routing hook** (:meth:`PlannerMethod.batch_routing`): in evaluation a task locator (the nearest
  prototype of the batch's bypassed features) restricts each sample to its predicted task's group of experts and
  reports ``predicted_task``; the **oracle** variant routes every sample to its true task's group instead (CMoE's
  "Immediate"); in training it checks that the batch's sample indices are those of the samples the collator kept;
* evaluation **variants** (``oracle``) and a **locator report**.

Register it with :func:`register`; ``python -m planner_method`` (with ``tests/methods`` on ``PYTHONPATH``) runs the
dymoe CLI with it registered, so ``dymoe run`` launches it like a built-in method.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from dymoe.methods.base import BatchInfo, TaskInfo
from dymoe.methods.incmoelora import IncMoELoRA

PROBE_LR = 5e-3
PROBE_FRACTION = 0.5
# kill this process (SIGKILL) right after the planning phase of task K was saved: "K:marker-file" (the marker is
# created first, so the resumed run does not kill itself again)
KILL_ENV = "DYMOE_TEST_KILL_AFTER_PLAN"


@torch.no_grad()
def last_token_features(model, batch: dict, info: BatchInfo | None = None) -> torch.Tensor:
    """``[B, d]`` final hidden state at each row's last non-pad token (right padding: training batches)."""
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # [B, T, d]
    am = batch["attention_mask"]  # [B, T]
    last = am.long().cumsum(1).argmax(1)  # index of the last 1 (right padding)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()


def probe_input(model, batch: dict) -> torch.Tensor:
    """``[B, d]`` mean input embedding over the non-pad tokens (the probe's input)."""
    emb = model.get_input_embeddings()(batch["input_ids"]).detach().float()  # [B, T, d]
    am = batch["attention_mask"].unsqueeze(-1).float()
    return (emb * am).sum(1) / am.sum(1).clamp_min(1.0)


class PlannerMethod(IncMoELoRA):
    name = "test-planner"
    evaluation_variants = ("oracle",)
    immediate_variant = "oracle"
    locator_name = "test_locator"

    def __init__(self, options=None):
        super().__init__(options)
        self.prototypes: torch.Tensor | None = None  # [tasks, d]
        self.phase = "train"
        self.checked_batches = 0

    def setup(self, model, adapter):
        super().setup(model, adapter)
        if "probe" not in self.owned_modules:
            d = model.get_input_embeddings().embedding_dim
            probe = torch.nn.Linear(d, 1)
            with torch.no_grad():
                probe.weight.copy_(torch.randn(1, d, generator=torch.Generator().manual_seed(7)) * 0.1)
                probe.bias.zero_()
            probe.requires_grad_(False)
            self.register_module("probe", probe)

    # ------------------------------------------------------------------ planning phase
    def plan(self, task: TaskInfo, planner) -> None:
        start = time.perf_counter()
        probe = self.owned_modules["probe"]
        probe.requires_grad_(True)
        try:
            planner.train(lr=PROBE_LR, params=list(probe.parameters()), epochs=1.0,
                          indices=planner.subset(PROBE_FRACTION, seed=task.index), seed=task.index)
        finally:
            probe.requires_grad_(False)
        feats = planner.features(lambda batch, info: last_token_features(self.model, batch, info))  # [N, d]
        proto = feats.mean(0)  # [d]
        rows = self.prototypes if self.prototypes is not None else proto.new_zeros(0, proto.shape[0])
        self.prototypes = torch.cat([rows[: task.index], proto[None]])
        planner.log["features"] = list(feats.shape)
        planner.log["epochs"] = task.epochs  # what the runner tells the planning phase
        planner.log["body_seconds"] = time.perf_counter() - start  # the runner's wall time must enclose this
        self._maybe_kill(task)

    def plan_state(self) -> dict[str, torch.Tensor]:
        probe = self.owned_modules["probe"]
        return {"prototypes": self.prototypes, "probe.weight": probe.weight.data, "probe.bias": probe.bias.data}

    def load_plan_state(self, state, task: TaskInfo) -> None:
        self.prototypes = state["prototypes"].float().clone()
        probe = self.owned_modules["probe"]
        with torch.no_grad():
            probe.weight.copy_(state["probe.weight"])
            probe.bias.copy_(state["probe.bias"])

    def _maybe_kill(self, task: TaskInfo) -> None:
        spec = os.environ.get(KILL_ENV)
        if not spec:
            return
        k, marker = spec.split(":", 1)
        if int(k) == task.index + 1 and not Path(marker).exists():
            Path(marker).write_text("killed\n")
            # the plan is saved by the runner after plan() returns: kill at the next hook (before_task)
            self._kill_next = True

    def before_task(self, task: TaskInfo) -> None:
        if getattr(self, "_kill_next", False):
            os.kill(os.getpid(), signal.SIGKILL)
        super().before_task(task)

    # ------------------------------------------------------------------ routing
    def batch_routing(self, batch, info: BatchInfo):
        self.phase = info.phase
        if info.phase in ("train", "plan"):
            assert len(info.indices) == batch["input_ids"].shape[0]
            self.checked_batches += 1
            return None
        if info.phase != "eval" or self.prototypes is None:
            return None
        if info.variant == "oracle":
            predicted = torch.full((batch["input_ids"].shape[0],), info.task_index, dtype=torch.long)
        else:
            predicted = self.locate(batch)
        groups = self.adapter.groups()
        mask = torch.zeros(predicted.shape[0], max(groups) + 1, dtype=torch.bool)
        known = predicted <= max(groups)
        mask[known, predicted[known]] = True
        mask[~known] = True  # an unseen task (evaluation.tasks=all): every trained group
        return {"group_mask": mask.to(batch["input_ids"].device), "predicted_task": predicted}

    @torch.no_grad()
    def locate(self, batch: dict) -> torch.Tensor:
        """``[B]`` nearest prototype of each sample's bypassed last-token feature (generation batches are left
        padded: the last position is the last prompt token)."""
        ctx = self.adapter.context
        old = ctx.bypass
        ctx.bypass = True
        am = batch["attention_mask"]
        positions = (am.long().cumsum(-1) - 1).clamp_min(0)  # left padding: positions count real tokens only
        try:
            out = self.model(**batch, position_ids=positions, output_hidden_states=True)
        finally:
            ctx.bypass = old
        feats = out.hidden_states[-1][:, -1].float()  # [B, d]
        d = torch.cdist(feats, self.prototypes.to(feats.device))  # [B, tasks]
        return d.argmin(1).cpu()

    def loss_terms(self, batch, outputs, step):
        terms = super().loss_terms(batch, outputs, step)
        if self.phase == "plan":
            probe = self.owned_modules["probe"]
            terms = {**terms, "probe": (probe(probe_input(self.model, batch)) - 1.0).pow(2).mean()}
        return terms

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return {} if self.prototypes is None else {"prototypes": self.prototypes.contiguous()}

    def load_state_dict(self, state):
        self.prototypes = state["prototypes"].float().clone() if "prototypes" in state else None


def register() -> None:
    """Register ``test-planner`` in :data:`dymoe.methods.METHODS` (idempotent)."""
    from dymoe.methods import METHODS

    if PlannerMethod.name not in METHODS.names():
        METHODS.add(PlannerMethod.name, PlannerMethod)
