"""The expert layer: the fused op (``functional``), the growable layer (``moe_lora``), the routing context."""

from dymoe.layers.context import RoutingContext, RoutingEvent, RoutingPolicy
from dymoe.layers.functional import moe_lora_delta, moe_lora_delta_reference, route, router_scores
from dymoe.layers.moe_lora import MoELoRALinear

__all__ = [
    "MoELoRALinear",
    "RoutingContext",
    "RoutingEvent",
    "RoutingPolicy",
    "moe_lora_delta",
    "moe_lora_delta_reference",
    "route",
    "router_scores",
]
