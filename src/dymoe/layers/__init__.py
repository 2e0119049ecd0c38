"""The expert layers: the fused ops and loop oracles (``functional``), the protocol every layer satisfies
(``base``), routed LoRA experts on a linear (``moe_lora``), routed SwiGLU experts beside an MLP block (``moe_ffn``),
per-sample router banks (``router_bank``) and the per-forward routing context (``context``)."""

from dymoe.layers.base import ExpertLayer
from dymoe.layers.context import RoutingContext, RoutingEvent, RoutingPolicy, Selector
from dymoe.layers.functional import (
    at_route,
    moe_ffn_delta,
    moe_ffn_delta_reference,
    moe_lora_delta,
    moe_lora_delta_reference,
    moe_lora_delta_sparse,
    route,
    router_scores,
)
from dymoe.layers.moe_ffn import MoEFFN
from dymoe.layers.moe_lora import MoELoRALinear
from dymoe.layers.router_bank import RouterBank

__all__ = [
    "ExpertLayer",
    "MoEFFN",
    "MoELoRALinear",
    "RouterBank",
    "RoutingContext",
    "RoutingEvent",
    "RoutingPolicy",
    "Selector",
    "at_route",
    "moe_ffn_delta",
    "moe_ffn_delta_reference",
    "moe_lora_delta",
    "moe_lora_delta_reference",
    "moe_lora_delta_sparse",
    "route",
    "router_scores",
]
