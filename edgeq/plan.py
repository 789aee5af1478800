"""A quantization plan is a value: layer name → scheme, saved and loaded as YAML."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgeq.inventory import LayerInfo

SCHEMES = ("fp32", "fp16", "int8", "int4-g32", "int4-g64", "int4-g128")


@dataclass(frozen=True)
class QuantPlan:
    """``schemes`` maps each quantizable layer's fully-qualified name to its scheme."""

    schemes: dict[str, str]
    reasons: dict[str, str] = field(default_factory=dict)  # why a layer differs from the request


def uniform_plan(layers: list[LayerInfo], precision: str, *, int4_group: int, keep_fp32: list[str]) -> QuantPlan:
    """Every layer at ``precision``; where a layer's shape cannot take it, say so per layer."""
    wanted = f"int4-g{int4_group}" if precision == "int4" else precision
    keep = [re.compile(p) for p in keep_fp32]
    schemes, reasons = {}, {}
    for layer in layers:
        if any(p.search(layer.fqn) for p in keep):
            schemes[layer.fqn] = "fp32"
            reasons[layer.fqn] = "kept fp32 by the target's quantization.keep_fp32"
        elif precision == "int4" and layer.kind == "conv":
            schemes[layer.fqn] = "int8"
            reasons[layer.fqn] = "convolutions have no int4 kernel in the backends; int8 instead"
        elif not layer.fits(wanted):
            schemes[layer.fqn] = "int8"
            reasons[layer.fqn] = f"reduction dim {layer.shape[1]} is not a multiple of the int4 group {int4_group}; int8 instead"
        else:
            schemes[layer.fqn] = wanted
    return QuantPlan(schemes=schemes, reasons=reasons)
