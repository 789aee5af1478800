"""A quantization plan is a value: layer name → scheme, saved and loaded as YAML."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgeq.planning.inventory import LayerInfo
from edgeq.schemes import FP32, INT8, Scheme, for_precision


@dataclass(frozen=True)
class QuantPlan:
    """``schemes`` maps each quantizable layer's fully-qualified name to its scheme."""

    schemes: dict[str, Scheme]
    reasons: dict[str, str] = field(default_factory=dict)  # why a layer differs from the request

    def names(self) -> dict[str, str]:
        """``{fqn: scheme name}``, as plan files and manifests write it."""
        return {fqn: s.name for fqn, s in self.schemes.items()}


def uniform_plan(layers: list[LayerInfo], precision: str, *, int4_group: int, keep_fp32: list[str]) -> QuantPlan:
    """Every layer at ``precision``; where a layer's shape cannot take it, say so per layer."""
    wanted = for_precision(precision, int4_group)
    keep = [re.compile(p) for p in keep_fp32]
    schemes, reasons = {}, {}
    for layer in layers:
        if any(p.search(layer.fqn) for p in keep):
            schemes[layer.fqn] = FP32
            reasons[layer.fqn] = "kept fp32 by the target's quantization.keep_fp32"
        elif wanted.bits == 4 and layer.kind == "conv":
            schemes[layer.fqn] = INT8
            reasons[layer.fqn] = "convolutions have no int4 kernel in the backends; int8 instead"
        elif not layer.fits(wanted):
            schemes[layer.fqn] = INT8
            reasons[layer.fqn] = (f"reduction dim {layer.shape[1]} is not a multiple of {wanted.name}'s group of "
                                  f"{wanted.group}; int8 instead")
        else:
            schemes[layer.fqn] = wanted
    return QuantPlan(schemes=schemes, reasons=reasons)
