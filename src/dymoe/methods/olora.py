"""``olora``: IncLoRA plus an orthogonality penalty between the new LoRA's A and every earlier A (coin-protocol.md §7.4).

Loss terms, summed over the wrapped modules:

- ``olora_orth`` = λ1 · Σ_modules Σ |A_old · A_newᵀ| (A_old = the frozen bank's rows, detached), λ1 = 0.05 as in
  MCITlib's LLaVA O-LoRA (Prism uses 0.5, after the original text-only O-LoRA);
- ``olora_l2`` = λ2 · Σ_modules (‖A_new‖_F + ‖B_new‖_F), only when λ2 > 0 (default 0: MCITlib has no L2 term).

The penalty depends on parameters only, so it is computed from the layers' tensors after the forward and is
unaffected by gradient checkpointing.

Scale note: the L1 sum has ``r_old × r_new`` entries per module and its gradient on each entry of A_new sums over the
``r_old`` earlier rows, so at the default rank (64 per task, the DyMoE budget) the same λ1 pushes harder than in
MCITlib (16 per task); on ``configs/smoke.yaml`` the term is ≈1.4 on task 2 and ≈2.7 on task 3 (it grows with the
number of earlier tasks). λ1 stays 0.05 as specified; lower it with ``method.lambda1`` if it dominates the CE loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dymoe.errors import ConfigError
from dymoe.methods.base import StepInfo
from dymoe.methods.inclora import IncLoRA, IncLoRAOptions
from dymoe.methods.penalties import lora_l2, orthogonality_l1


@dataclass
class OLoRAOptions(IncLoRAOptions):
    """Attributes:
    rank, projector_lr: as IncLoRA.
    lambda1: weight of the orthogonality term: 0.05 (MCITlib ``loss + 0.05 * orthogonal_loss``); O-LoRA's own
        paper and Prism use 0.5 (``dymoe reproduce main-table --budget paper``).
    lambda2: weight of the L2 term on the new LoRA: 0 (original O-LoRA's optional ``l2_loss``).
    """

    lambda1: float = 0.05
    lambda2: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        for key in ("lambda1", "lambda2"):
            if float(getattr(self, key)) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")


class OLoRA(IncLoRA):
    """IncLoRA whose new A is pushed orthogonal to the frozen A's (``olora_orth``, optional ``olora_l2``)."""

    name = "olora"
    Options = OLoRAOptions

    def loss_terms(self, batch: dict[str, torch.Tensor], outputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        orth, l2 = [], []
        for m in self.adapter.modules.values():
            if not m.has_trainable_group:
                continue
            if m.num_frozen > 0:
                orth.append(orthogonality_l1(m.frozen_A, m.lora_A))  # [r_old, d_in] vs [r_new, d_in]
            if self.options.lambda2 > 0:
                l2.append(lora_l2(m.lora_A, m.lora_B))
        zero = torch.zeros((), device=next(iter(self.adapter.modules.values())).base.weight.device)
        terms = {**super().loss_terms(batch, outputs, step),
                 "olora_orth": self.options.lambda1 * torch.stack(orth).sum() if orth else zero}
        if self.options.lambda2 > 0:
            terms["olora_l2"] = self.options.lambda2 * torch.stack(l2).sum() if l2 else zero
        return terms

    def describe(self) -> dict:
        return {**super().describe(), "loss_terms": ["olora_orth"] + (["olora_l2"] if self.options.lambda2 > 0 else [])}
