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


def uniform_plan(layers: list[LayerInfo], precision: str, *, int4_group: int, keep_fp32: list[str],
                 excluded: list[str] | tuple[str, ...] = (), scheme: Scheme | None = None) -> QuantPlan:
    """Every layer at ``precision``; where a layer's shape cannot take it, say so per layer.
    ``excluded``: the target's ``quantization.exclude_schemes`` — a precision whose scheme
    it excludes is refused, not written anyway. ``scheme``: the precision's scheme where the
    format means another than ``for_precision``'s (a backend's ``LM_UNIFORM``)."""
    wanted = scheme or for_precision(precision, int4_group)
    if wanted.name in excluded:
        from edgeq.errors import ConfigError

        raise ConfigError(f"--precision {precision} is {wanted.name}, which the target excludes "
                          "(quantization.exclude_schemes)",
                          "pick another --precision, or remove it from the target's exclude_schemes")
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
            instead = FP32 if INT8.name in excluded else INT8
            schemes[layer.fqn] = instead
            reasons[layer.fqn] = (f"reduction dim {layer.shape[1]} is not a multiple of {wanted.name}'s group of "
                                  f"{wanted.group}; {instead.name} instead")
        else:
            schemes[layer.fqn] = wanted
    return QuantPlan(schemes=schemes, reasons=reasons)
