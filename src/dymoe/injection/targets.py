"""Which linears of a model get experts.

Targets are matched on the last component of a module's name (``q_proj``) or, with a ``re:`` prefix, by a regular
expression on the full name. Matching is scoped to the language model: CLIP's attention also has
``q_proj/k_proj/v_proj`` (coin-protocol.md §9.3), so the vision tower and the projector are never wrapped unless the
scope is set explicitly.
"""

from __future__ import annotations

import re

import torch.nn as nn

from dymoe.errors import ConfigError

# LLaVA's find_all_linear_names on a LLaMA/Vicuna LM: every projection of every decoder layer
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# path segments that are never part of the language model
NON_LM_SEGMENTS = ("vision_tower", "vision_model", "visual", "multi_modal_projector", "mm_projector", "vision_resampler")


def language_model_scope(model: nn.Module) -> str:
    """Module path of the language model inside ``model``: ``model.language_model`` for HF LLaVA (transformers 5),
    ``language_model`` for older layouts, ``model`` for a plain causal LM, ``""`` if nothing better is found."""
    names = [n for n, _ in model.named_modules()]
    lm = [n for n in names if n.split(".")[-1] == "language_model"]
    if lm:
        return min(lm, key=len)
    if "model" in names and hasattr(model.get_submodule("model"), "layers"):
        return "model"
    return ""


def find_target_linears(
    model: nn.Module, targets: tuple[str, ...] | list[str], scope: str | None = None
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules to wrap, by full name, in model order.

    Args:
        model: any torch module (a Hugging Face VLM or causal LM).
        targets: module-name suffixes (``"q_proj"``) and/or ``"re:<regex>"`` full-name patterns.
        scope: only modules under this path; ``None`` → :func:`language_model_scope`, ``""`` → the whole model
            (modules under the vision tower / projector are then still skipped unless a regex names them).
    """
    if scope is None:
        scope = language_model_scope(model)
    suffixes = {t for t in targets if not t.startswith("re:")}
    patterns = [re.compile(t[3:]) for t in targets if t.startswith("re:")]
    prefix = scope + "." if scope else ""
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not name.startswith(prefix):
            continue
        if any(p.fullmatch(name) for p in patterns):
            found[name] = module
        elif name.split(".")[-1] in suffixes and not any(seg in name.split(".") for seg in NON_LM_SEGMENTS):
            found[name] = module
    if not found:
        raise ConfigError(
            f"adapter.targets {list(targets)} matched no nn.Linear under {scope or 'the model'!r}; "
            "check the module names with `print(model)`"
        )
    return found
