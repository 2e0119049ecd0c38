"""Folding a plain-LoRA adapter into one LoRA, and writing it as a PEFT adapter or merged into the base weights.

For LoRA, EWC, LwF, IncLoRA and O-LoRA every wrapped module computes, at inference,
``h = W0 x + s · Σ_t B_t A_t x`` (router ``none``: every LoRA of the bank has weight 1, and no group mask). The
sum of LoRAs of ranks ``r_t`` is one LoRA of rank ``R = Σ r_t`` with the concatenated bank::

    A = [A_1; …; A_T]  [R, d_in]        B = [B_1 … B_T]  [d_out, R]        s = alpha / bank_rank

which is exactly what :meth:`MoELoRALinear.bank` stores. PEFT scales by ``lora_alpha / r``, so the adapter is
written with ``r = R`` and ``lora_alpha = s · R``; the tensors are dymoe's own (bit for bit).

:func:`plain_lora_kind` says whether a loaded method/adapter is such a plain LoRA; otherwise it names what it is
(``token-routed`` mixtures, ``task-routed`` methods), so the caller can explain why no LoRA server can run it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dymoe.errors import DymoeError

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


class NotALoRA(DymoeError):
    """The run's adapter is not one LoRA once folded (a routed mixture): it cannot be written for LoRA servers."""


def plain_lora_kind(method, adapter) -> str:
    """``"lora"`` when the adapter at inference is a sum of LoRAs with weight 1; else ``"token-routed"`` (the
    experts' weights depend on each token) or ``"task-routed"`` (a per-sample choice of groups)."""
    from dymoe.layers.moe_lora import MoELoRALinear
    from dymoe.methods.base import Method

    layers = list(adapter.modules.values())
    if not all(isinstance(m, MoELoRALinear) for m in layers) or {m.router_mode for m in layers} != {"none"}:
        return "token-routed"  # routed LoRA experts, or routed FFN experts (MoEFFN)
    if method.routing_policy("eval") is not None or type(method).group_mask is not Method.group_mask:
        return "task-routed"
    return "lora"


def explain_not_lora(kind: str, method_name: str) -> str:
    """The message for a run that has no single-LoRA export."""
    if kind == "token-routed":
        return (f"method {method_name!r} is a token-routed mixture of LoRA experts: every token mixes experts with "
                "weights computed from its own hidden state, which no LoRA server (PEFT, vLLM multi-LoRA, TGI "
                "LoRAX) can run, and which is not one LoRA. Export it with --format merged (the full model with "
                "the experts kept as dymoe modules, loaded by dymoe) or --format hub")
    return (f"method {method_name!r} routes each sample to task groups (task-routed); per-task PEFT adapters with "
            "a routing.json manifest are written for methods whose per-task model is a LoRA, and this one is not "
            "(yet). Export it with --format merged or --format hub")


def folded_lora(adapter) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{module name: (A [R, d_in], B [d_out, R], s)}``: each wrapped module's whole bank as one LoRA."""
    out = {}
    for name, m in adapter.modules.items():
        if m.num_experts == 0:
            continue
        a, b, _ = m.bank()
        out[name] = (a.detach().contiguous().cpu(), b.detach().contiguous().cpu(), float(m.scaling))
    if not out:
        raise DymoeError("the adapter has no experts yet: nothing to export")
    return out


def _alpha(s: float, r: int) -> float | int:
    alpha = s * r
    return int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha


def write_peft(adapter, output: str | Path, *, base_model: str | None, dtype: torch.dtype | None = None) -> Path:
    """Write the folded LoRA of ``adapter`` as a PEFT LoRA folder (``adapter_config.json`` as PEFT's
    ``LoraConfig.save_pretrained`` writes it, ``adapter_model.safetensors`` with PEFT's key names).

    Modules are targeted by their full names (only the language model's linears dymoe wrapped; the vision
    tower's ``q_proj``s stay untouched). A module whose rank differs from the most common one gets
    ``rank_pattern`` / ``alpha_pattern`` entries.
    """
    try:
        from peft import LoraConfig
    except ImportError:
        raise DymoeError("--format peft needs the peft package: pip install 'dymoe[export]'") from None
    lora = folded_lora(adapter)
    ranks = {n: a.shape[0] for n, (a, _, _) in lora.items()}
    scales = {n: s for n, (_, _, s) in lora.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    s0 = Counter(scales[n] for n in lora if ranks[n] == r).most_common(1)[0][0]
    alpha = _alpha(s0, r)
    rank_pattern = {n: ranks[n] for n in lora if ranks[n] != r}
    alpha_pattern = {n: _alpha(scales[n], ranks[n]) for n in lora if _alpha(scales[n], ranks[n]) != alpha or n in rank_pattern}
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=sorted(lora),
        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, base_model_name_or_path=base_model,
        init_lora_weights=True,
    )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(output))
    tensors = {}
    for name, (a, b, _) in lora.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(dtype) if dtype else a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(dtype) if dtype else b
    save_file(tensors, str(output / PEFT_WEIGHTS), metadata={"format": "pt"})
    return output


def merge_into_base(model, adapter) -> None:
    """Replace every wrapped module by its base linear with ``W ← W + s · B A`` (in place; fp32 product)."""
    lora = folded_lora(adapter)
    with torch.no_grad():
        for name, m in list(adapter.modules.items()):
            base = m.base
            if name in lora:
                a, b, s = lora[name]
                delta = (b.float() @ a.float()) * s  # [d_out, d_in]
                base.weight.copy_((base.weight.float() + delta.to(base.weight.device)).to(base.weight.dtype))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, base)
    model._dymoe_adapter = None


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")
