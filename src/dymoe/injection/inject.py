"""Model surgery: wrap each injection site's targets with expert layers and return the adapter over all of them.

``inject`` knows nothing about continual learning: it freezes the model, swaps modules (``nn.Linear`` →
:class:`~dymoe.layers.moe_lora.MoELoRALinear`, MLP blocks → :class:`~dymoe.layers.moe_ffn.MoEFFN`), installs the
forward pre-hook that feeds the routing context, and returns an :class:`~dymoe.injection.adapter.ExpertAdapter`
through which methods grow, freeze, fold and prune groups in every layer at once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dymoe.errors import ConfigError
from dymoe.injection.adapter import ExpertAdapter
from dymoe.injection.config import AdapterConfig, SiteConfig
from dymoe.injection.targets import find_target_modules
from dymoe.layers.base import ExpertLayer
from dymoe.layers.context import RoutingContext
from dymoe.layers.moe_ffn import MoEFFN
from dymoe.layers.moe_lora import MoELoRALinear

__all__ = ["AdapterConfig", "ExpertAdapter", "SiteConfig", "inject"]


def _cache_length(past) -> int:
    """Tokens already in a KV cache (0 for none / an empty cache)."""
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple of (key, value) per layer
        return int(past[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


def image_rows(input_ids: torch.Tensor, n_images: int, image_token_id: int) -> torch.Tensor | None:
    """``[n_images]`` the sample of each image, from the image placeholder tokens of ``input_ids [B, T]`` (every
    image expands to the same number of placeholders, in order); None if the counts do not divide evenly."""
    counts = (input_ids == image_token_id).sum(1)  # [B]
    total = int(counts.sum())
    if n_images <= 0 or total % n_images:
        return None
    per_image = total // n_images
    if per_image == 0 or bool((counts % per_image).any()):
        return None
    return torch.repeat_interleave(torch.arange(input_ids.shape[0], device=input_ids.device), counts // per_image)


def _forward_start(context: RoutingContext, image_token_id: int | None, vision: bool):
    """Pre-hook of the model: attention mask, phase (decode when the KV cache is not empty), per-forward reset,
    and the image → sample map when experts sit in the vision tower."""

    def hook(module, args, kwargs):
        am = kwargs.get("attention_mask")
        context.attention_mask = am if isinstance(am, torch.Tensor) and am.dim() == 2 else None
        # transformers 5 passes the KV cache as ``cache`` (older versions: ``past_key_values``)
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        decode = _cache_length(past) > 0
        context.phase = "decode" if decode else "prefill"
        if not decode:
            context.start_forward()
        if vision and not decode:
            pv, ids = kwargs.get("pixel_values"), kwargs.get("input_ids")
            if isinstance(pv, torch.Tensor) and isinstance(ids, torch.Tensor) and image_token_id is not None:
                context.image_rows = image_rows(ids, pv.shape[0], image_token_id)
            elif kwargs.get("mm_encoder_outputs") is None:
                context.image_rows = None
            # else: ``generate`` (transformers 5) encoded the images before this forward; the caller mapped them
            # (EvalRouting sets image_rows per batch), and decoding steps keep the map for the next generate call

    return hook


def image_token_id(model: nn.Module) -> int | None:
    """The image placeholder token id of ``model.config`` (``image_token_id`` or ``image_token_index``); None for a
    model without one."""
    cfg = getattr(model, "config", None)
    for key in ("image_token_id", "image_token_index"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return None


def _find(model: nn.Module, site: SiteConfig) -> dict[str, nn.Module]:
    if site.kind == "linear":
        return find_target_modules(model, site.targets, site.scope, lambda m: isinstance(m, nn.Linear), "nn.Linear")
    return find_target_modules(
        model, site.targets, site.scope,
        lambda m: not isinstance(m, nn.Linear) and any(isinstance(c, nn.Linear) for c in m.modules()),
        "MLP block (a module holding nn.Linear layers)",
    )


def _share_roles(names: list[str], site: SiteConfig) -> dict[str, tuple[str, str] | None]:
    """``share_router: block``: the first target of each parent module leads, the others follow it."""
    if site.share_router != "block":
        return {n: None for n in names}
    by_parent: dict[str, list[str]] = {}
    for n in names:
        by_parent.setdefault(n.rpartition(".")[0], []).append(n)
    roles: dict[str, tuple[str, str] | None] = {}
    for parent, members in by_parent.items():
        key = f"{site.name}:{parent}"
        for k, n in enumerate(members):
            roles[n] = None if len(members) == 1 else (("leader" if k == 0 else "follower"), key)
    return roles


def _build(site: SiteConfig, target: nn.Module, context: RoutingContext, param_dtype, share) -> ExpertLayer:
    if site.kind == "linear":
        return MoELoRALinear(
            target,
            alpha=site.effective_alpha,
            bank_rank=site.effective_bank_rank,
            top_k=site.top_k,
            router=site.router,
            temperature=site.temperature,
            cos_scale=site.cos_scale,
            dropout=site.dropout,
            init=site.init,
            param_dtype=param_dtype,
            context=context,
            stream=site.stream,
            # one router per block: the leader holds the block's router bank, followers reuse its gates
            router_bank=site.router_bank and (share is None or share[0] == "leader"),
            share=share,
            sparse=site.sparse,
        )
    return MoEFFN(
        target,
        router=site.router,
        router_hidden=site.router_hidden,
        top_k=site.top_k,
        temperature=site.temperature,
        scale_by_count=site.scale_by_count,
        dropout=site.dropout,
        down_init=site.down_init,
        router_init_std=site.router_init_std,
        param_dtype=param_dtype,
        context=context,
        stream=site.stream,
    )


def inject(model: nn.Module, config: AdapterConfig | None = None) -> ExpertAdapter:
    """Freeze ``model`` and wrap every site's targets with empty expert banks (add groups afterwards).

    Works for ``LlavaForConditionalGeneration`` and plain causal LMs (Llama, Qwen2, ...): targets are searched under
    the language model unless a site says otherwise, so the CLIP vision tower keeps its own ``q_proj``s untouched.
    A forward pre-hook on ``model`` stores each call's ``attention_mask`` ``[B, T]`` in the shared context, sets the
    phase (prefill / decode), clears the per-forward routing state at every new non-decoding forward and, when a
    site sits in the vision tower, maps images to samples (``context.image_rows``). It runs before any layer, so
    everything is also there when gradient checkpointing recomputes a layer.

    Returns:
        the :class:`ExpertAdapter` over the wrapped layers.
    """
    config = config or AdapterConfig()
    if getattr(model, "_dymoe_adapter", None) is not None:
        raise ValueError("this model already has dymoe experts injected")
    sites = config.resolved_sites()
    found: dict[str, tuple[SiteConfig, nn.Module]] = {}
    for site in sites:
        for name, target in _find(model, site).items():
            for other, (other_site, _) in found.items():
                if name == other or name.startswith(other + ".") or other.startswith(name + "."):
                    raise ConfigError(
                        f"adapter sites {other_site.name!r} and {site.name!r} both cover {name!r}"
                        + ("" if name == other else f" (nested in / around {other!r})")
                    )
            found[name] = (site, target)
    for p in model.parameters():
        p.requires_grad_(False)
    context = RoutingContext()
    param_dtype = torch.float32 if config.param_dtype == "float32" else None
    modules: dict[str, ExpertLayer] = {}
    site_of: dict[str, str] = {}
    for site in sites:
        names = [n for n, (s, _) in found.items() if s is site]
        roles = _share_roles(names, site)
        for name in names:
            wrapped = _build(site, found[name][1], context, param_dtype, roles[name])
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
            modules[name] = wrapped
            site_of[name] = site.name
    vision = any(s.stream == "vision" for s in sites)
    model.register_forward_pre_hook(_forward_start(context, image_token_id(model), vision), with_kwargs=True)
    adapter = ExpertAdapter(model, modules, context, config, site_of)
    model._dymoe_adapter = adapter
    return adapter
