"""Which modules of a model get experts.

Targets are matched on the last component of a module's name (``q_proj``, ``mlp``) or, with a ``re:`` prefix, by a
regular expression on the full name. Matching is scoped to the language model: CLIP's attention also has
``q_proj/k_proj/v_proj`` (coin-protocol.md §9.3), so the vision tower and the projector are never wrapped unless the
scope says so (``scope: vision`` is the vision tower, :func:`vision_tower_scope`).
"""

from __future__ import annotations

import re

import torch.nn as nn

from dymoe.errors import ConfigError, DymoeError

# LLaVA's find_all_linear_names on a LLaMA/Vicuna LM: every projection of every decoder layer
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# path segments that are never part of the language model
NON_LM_SEGMENTS = ("vision_tower", "vision_model", "visual", "multi_modal_projector", "mm_projector", "vision_resampler")
VISION_SEGMENTS = ("vision_tower", "vision_model", "visual")


# names a VLM gives its language model (LLaVA/Qwen-VL/PaliGemma/Gemma3/Mllama: language_model; Idefics3: text_model)
LM_NAMES = ("language_model", "text_model")


def language_model_prefix(model: nn.Module) -> str:
    """Dotted module path of the language-model decoder inside ``model`` (the one function injection and loading use).

    ``"model.language_model"`` for LLaVA, LLaVA-NeXT/OneVision, Qwen2/2.5/3-VL, InternVL, PaliGemma, Gemma3 and
    Mllama in transformers 5.x; ``"model.text_model"`` for Idefics3/SmolVLM; ``"model"`` for a plain
    ``*ForCausalLM``; ``""`` for a bare decoder. Found by the model's own ``get_decoder()``, else the shallowest
    module called ``language_model`` or ``text_model``, else a ``model`` child with ``layers``. Adapter targets are
    matched below this prefix so the vision tower (CLIP attention also has ``q_proj``/``k_proj``/``v_proj``) and
    the projector are never wrapped. ``lm_head`` is outside the prefix.

    Raises:
        DymoeError: no decoder can be found.
    """
    names = {id(m): name for name, m in model.named_modules()}
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError):
            decoder = None
        if decoder is not None and id(decoder) in names:
            return names[id(decoder)]
    candidates = [n for n in names.values() if n.split(".")[-1] in LM_NAMES]
    if candidates:
        return min(candidates, key=lambda n: (n.count("."), n))
    if "model" in names.values() and hasattr(model.get_submodule("model"), "layers"):
        return "model"
    if hasattr(model, "layers"):
        return ""
    raise DymoeError(f"cannot find the language model inside {type(model).__name__}")


def language_model_scope(model: nn.Module) -> str:
    """Deprecated name of :func:`language_model_prefix` ("" when no decoder is found: the whole model)."""
    try:
        return language_model_prefix(model)
    except DymoeError:
        return ""


def vision_tower_scope(model: nn.Module) -> str:
    """Module path of the vision encoder (``model.vision_tower`` for HF LLaVA); ConfigError if there is none."""
    names = [n for n, _ in model.named_modules() if n and n.split(".")[-1] in VISION_SEGMENTS]
    if not names:
        raise ConfigError("adapter scope 'vision': the model has no vision tower (no vision_tower / vision_model)")
    return min(names, key=len)


def find_target_linears(
    model: nn.Module, targets: tuple[str, ...] | list[str], scope: str | None = None
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules to wrap, by full name, in model order.

    Args:
        model: any torch module (a Hugging Face VLM or causal LM).
        targets: module-name suffixes (``"q_proj"``) and/or ``"re:<regex>"`` full-name patterns.
        scope: only modules under this path; ``None`` → :func:`language_model_prefix`, ``"vision"`` →
            :func:`vision_tower_scope`, ``""`` → the whole model (modules under the vision tower / projector are
            then still skipped unless a regex names them).
    """
    return find_target_modules(model, targets, scope, lambda m: isinstance(m, nn.Linear), "nn.Linear")


def find_target_modules(
    model: nn.Module, targets: tuple[str, ...] | list[str], scope: str | None, accept, what: str = "module"
) -> dict[str, nn.Module]:
    """The modules ``accept(module)`` is true for whose name matches ``targets`` under ``scope`` (see
    :func:`find_target_linears`), by full name, in model order."""
    vision = scope == "vision"
    if scope is None:
        try:
            scope = language_model_prefix(model)
        except DymoeError:  # no decoder found: the whole model (vision / projector segments are still skipped)
            scope = ""
    elif vision:
        scope = vision_tower_scope(model)
    suffixes = {t for t in targets if not t.startswith("re:")}
    patterns = [re.compile(t[3:]) for t in targets if t.startswith("re:")]
    prefix = scope + "." if scope else ""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not accept(module) or not name.startswith(prefix):
            continue
        if any(p.fullmatch(name) for p in patterns):
            found[name] = module
        elif name.split(".")[-1] in suffixes and (
            vision or not any(seg in name.split(".") for seg in NON_LM_SEGMENTS)
        ):
            found[name] = module
    if not found:
        raise ConfigError(
            f"adapter.targets {list(targets)} matched no {what} under {scope or 'the model'!r}; "
            "check the module names with `print(model)`"
        )
    return found
