"""Format-independent pieces of the numerics stand-ins backends give sensitivity: a layer
computing in fp16 inside an fp32 model, and a stand-in's effective fp32 weight."""

from __future__ import annotations

import copy
from typing import Any


def fp16_layer(layer: Any) -> Any:
    """A copy of ``layer`` with fp16-rounded weights whose float inputs and output are
    rounded to fp16, as an fp16 layer sees them (hooks, so the module keeps its type and
    attributes: a ViT reads its patch conv's weight)."""
    import torch

    q = copy.deepcopy(layer)
    q.weight = torch.nn.Parameter(q.weight.detach().half().float(), requires_grad=False)
    if getattr(q, "bias", None) is not None:
        q.bias = torch.nn.Parameter(q.bias.detach().half().float(), requires_grad=False)
    q.register_forward_pre_hook(
        lambda _m, args: tuple(a.half().float() if a.is_floating_point() else a for a in args))
    q.register_forward_hook(lambda _m, _args, out: out.half().float())
    return q


def dequantized_weight(layer: Any) -> Any:
    """The fp32 weight a stand-in computes with (through its input/output wrappers; a stand-in
    whose weight is the sum of terms, e.g. ExecuTorch's int4-g32-asym, says it with
    ``effective_weight()``)."""
    if hasattr(layer, "effective_weight"):
        return layer.effective_weight()
    scale = getattr(layer, "edgeq_input_scale", None)
    while hasattr(layer, "inner"):
        layer = layer.inner
    w = layer.weight
    w = (w.dequantize() if hasattr(w, "dequantize") else w).detach().float()
    return w if scale is None else w / scale[None, :]


def with_input_scale(stand_in: Any, weights: Any) -> Any:
    """An AWQ stand-in: its input divided by ``weights.input_scale`` before anything else the
    runtime does to it (the division the artifact folds into the op before the layer)."""
    scale = getattr(weights, "input_scale", None)
    if scale is None:
        return stand_in
    stand_in.edgeq_input_scale = scale
    stand_in.register_forward_pre_hook(lambda _m, args: (args[0] / scale,) + tuple(args[1:]), prepend=True)
    return stand_in
