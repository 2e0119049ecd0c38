"""``ewc``: LoRA + elastic weight consolidation on the adapter's parameters (coin-protocol.md §7.5, Prism).

After each task: a diagonal Fisher ``F = mean over fisher_batches batches of (∂CE/∂θ)²`` (micro-batch 1, model in
eval mode, as Prism), summed into the Fisher of earlier tasks, and a snapshot θ* of the adapter. While training
later tasks the loss term ``ewc`` = (λ/2) Σ F (θ − θ*)² is returned (Prism injects its gradient λ·F·(θ − θ*) after
backward instead, which is the same update; adding it to the loss lets the runner log it).

λ: Prism uses ``ewc_lambda = 5000`` for LLaVA-1.5-7B with a rank-64 LoRA. Its Fisher has exactly the definition used
here (per-sample gradients of the token-mean CE loss, averaged over batches) and its injected gradient equals the
gradient of this loss term under the runner's loss normalisation (mean CE per optimizer step; gradient accumulation
divides both by the number of micro-batches), so λ means the same thing in both code bases and 5000 is the default.
It is also sensible at the scale of the small backbones: under Adam what matters is the penalty's pull
``λ F_i (θ_i − θ*_i)`` against the CE gradient (of the order of ``√F_i``). On ``configs/smoke.yaml`` (tiny LLaVA,
mini-CoIN) the Fisher entries average 1.6e-4 (max 3.5e-2), so λ = 5000 gives ``λF ≈ 0.8`` and the pull equals the
CE gradient (≈ 1e-2) once a weight has drifted by about 1e-2: active, not freezing. Set ``method.lam`` to change it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from dymoe.errors import ConfigError
from dymoe.methods.base import StepInfo, TaskInfo
from dymoe.methods.lora import LoRA, LoRAOptions
from dymoe.methods.lwf import side_forward
from dymoe.methods.penalties import add_squared_grads, ewc_penalty, merge_fisher

log = logging.getLogger(__name__)


@dataclass
class EWCOptions(LoRAOptions):
    """Attributes:
    rank, projector_lr: as ``lora``.
    lam: λ of the penalty (λ/2) Σ F (θ − θ*)²: 5000 (Prism's ``ewc_lambda``; see the module docstring).
    fisher_batches: batches of the finished task's training data averaged into its Fisher: 20 (the equal-budget
        default); Prism's ``ewc_fisher_batches`` is 50 (``dymoe reproduce main-table --budget paper``).
    batch_size: samples per Fisher batch: 1 (Prism's micro-batch; the Fisher is a mean of per-batch grad²).
    """

    lam: float = 5000.0
    fisher_batches: int = 20
    batch_size: int = 1

    def __post_init__(self):
        super().__post_init__()
        if float(self.lam) < 0:
            raise ConfigError(f"lam must be >= 0, got {self.lam}")
        for key in ("fisher_batches", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")


class EWC(LoRA):
    """LoRA with a quadratic pull towards the previous tasks' solution, weighted by the diagonal Fisher."""

    name = "ewc"
    Options = EWCOptions

    def __init__(self, options: EWCOptions | None = None):
        super().__init__(options)
        self.fisher: dict[str, torch.Tensor] | None = None  # Σ over finished tasks, fp32, by parameter name
        self.anchor: dict[str, torch.Tensor] | None = None  # θ* after the last finished task

    # ------------------------------------------------------------------ training
    def loss_terms(self, batch: dict[str, torch.Tensor], outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        params = self.trainable_tensors()
        base = super().loss_terms(batch, outputs, step)
        if self.fisher is None:
            return {**base, "ewc": torch.zeros((), device=next(iter(params.values())).device)}
        self._to_device(params)
        return {**base, "ewc": ewc_penalty(params, self.fisher, self.anchor, self.options.lam)}

    def _to_device(self, params: dict[str, torch.Tensor]) -> None:
        # state restored from a checkpoint lies on the CPU
        for store in (self.fisher, self.anchor):
            for k, v in store.items():
                if v.device != params[k].device:
                    store[k] = v.to(params[k].device)

    # ------------------------------------------------------------------ task end
    def estimate_fisher(self, trainer: Any, seed: int = 0) -> dict[str, torch.Tensor]:
        """Diagonal Fisher ``{name: E[g²]}`` (fp32, θ's shapes) over ``fisher_batches`` batches of the current task.

        Each batch is one forward in eval mode (routing recording off) and ``torch.autograd.grad`` of its LM loss,
        so the optimizer's ``.grad`` buffers are untouched. Batches without answer tokens (non-finite loss) are
        skipped.
        """
        params = self.trainable_tensors()
        names = list(params)
        running = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
        used = 0
        ctx = self.adapter.context
        batches = trainer.iter_batches(self.options.fisher_batches, batch_size=self.options.batch_size, seed=seed)
        with side_forward(self.model, ctx), torch.enable_grad():
            for batch in tqdm(batches, total=self.options.fisher_batches, desc="ewc fisher", leave=False, disable=None):
                ctx.policy, ctx.group_mask = self.routing_policy("train"), self.group_mask(batch, "train")
                loss = self.model(**batch, use_cache=False).loss
                if not torch.isfinite(loss.detach()):
                    continue
                grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
                running = add_squared_grads(running, dict(zip(names, grads)))
                used += 1
        if used == 0:
            log.warning("ewc: no batch with answer tokens for the Fisher; this task adds no penalty")
        return {k: v / max(used, 1) for k, v in running.items()}

    def after_task(self, task: TaskInfo, trainer: Any = None) -> None:
        if trainer is None:
            raise ValueError("ewc needs the trainer at after_task (its Fisher is a pass over the task's data)")
        fisher = self.estimate_fisher(trainer, seed=task.index)
        self.fisher = merge_fisher(self.fisher, fisher)
        self.anchor = {k: p.detach().float().clone() for k, p in self.trainable_tensors().items()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.fisher is None:
            return {}
        return {**{f"fisher.{k}": v for k, v in self.fisher.items()}, **{f"anchor.{k}": v for k, v in self.anchor.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        fisher = {k.removeprefix("fisher."): v for k, v in state.items() if k.startswith("fisher.")}
        anchor = {k.removeprefix("anchor."): v for k, v in state.items() if k.startswith("anchor.")}
        bad = [k for k in state if not k.startswith(("fisher.", "anchor."))]
        if bad or set(fisher) != set(anchor):
            raise ValueError(f"method 'ewc' state must hold matching fisher.*/anchor.* tensors; got {sorted(state)[:4]}")
        self.fisher, self.anchor = (fisher, anchor) if fisher else (None, None)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "budget": "the same LoRA as 'lora' (rank r: r·(d_in + d_out) per module, trained through all tasks); "
            "EWC state: a Fisher and an anchor of that size (not trainable)",
        }
