"""One layer with the numerics ExecuTorch gives it, in eager PyTorch: sensitivity's stand-in.

Weights are quantized with the same torchao configs the lowering uses and stored
dequantized, so the forward is a plain fp32 op (torchao's eager subclass dispatch is ~5×
slower); linears also round their input per token to int8, as XNNPACK's dynamic
quantization does; an int4-g32-asym linear adds its offsets' term, an int8 linear of the
input's block means (``quant.offset_terms``, ``quant.offset_linear``). Checked against the
lowered artifacts (tests/test_plan.py).
"""

from __future__ import annotations

import copy
from typing import Any

from edgeq.backends.standins import dequantized_weight, fp16_layer, with_input_scale
from edgeq.schemes import Scheme


def stand_in(layer: Any, scheme: Scheme, weights: Any = None) -> Any:
    """``weights``: for a calibrated scheme (GPTQ), its integers and bf16-exact scales
    (``edgeq.algorithms.gptq.QuantizedWeight``), which the lowering writes unchanged."""
    import torch

    from edgeq.backends.executorch.quant import quantize, torchao_config

    if scheme.is_float:
        return fp16_layer(layer) if scheme.bits == 16 else copy.deepcopy(layer)
    q = copy.deepcopy(layer)
    if isinstance(q, torch.nn.Embedding):
        quantize(q, torchao_config(scheme, True), lambda m, fqn: isinstance(m, torch.nn.Embedding))
        q.weight = torch.nn.Parameter(dequantized_weight(q), requires_grad=False)
        return q
    if isinstance(q, torch.nn.Linear) and not scheme.symmetric:  # int4-g32-asym: 8da4w plus offsets
        from edgeq.backends.executorch.quant import offset_terms

        ints, scales, offsets = offset_terms(q.weight, scheme.group)
        q.weight = torch.nn.Parameter((ints.float().unflatten(-1, (-1, scheme.group)) * scales[..., None]).flatten(-2),
                                      requires_grad=False)
        return _WithBlockOffsets(_DynamicInt8Input(q), offsets, scheme.group)
    if isinstance(q, torch.nn.Linear) and scheme.algorithm != "rtn":
        if weights is None:
            raise ValueError(f"the {scheme} stand-in needs the layer's calibrated weights")
        q.weight = torch.nn.Parameter(weights.dequantized().to(q.weight.dtype), requires_grad=False)
        return with_input_scale(_DynamicInt8Input(q), weights)
    if isinstance(q, torch.nn.Linear):
        quantize(q, torchao_config(scheme, True))
        if scheme.bits == 4 and scheme.group is not None:
            # XNNPACK stores blockwise 4-bit scales in bf16 (executorch's lowering casts them)
            q.weight.scale = q.weight.scale.to(torch.bfloat16).float()
        return _DynamicInt8Input(_DequantizedOnUse(q))
    # conv: static int8 per-channel weights (activation scales are calibrated; not simulated)
    w = q.weight.detach()
    scale = w.abs().flatten(1).amax(1).clamp(min=1e-12) / 127
    shape = (-1,) + (1,) * (w.dim() - 1)
    q.weight = torch.nn.Parameter((w / scale.view(shape)).round().clamp(-127, 127) * scale.view(shape))
    return q


def _DequantizedOnUse(linear: Any) -> Any:
    import torch

    class DequantizedOnUse(torch.nn.Module):
        """A linear whose weight stays torchao's integers and scales (about a byte a weight, not
        four: rotation's measurement holds a stand-in of every quantized layer at once) and
        is dequantized at each call, to the fp32 values ``dequantized_weight`` gives."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, dequantized_weight(self.inner), self.inner.bias)

    return DequantizedOnUse(linear)


def _DynamicInt8Input(linear: Any) -> Any:
    import torch

    class DynamicInt8Input(torch.nn.Module):
        """XNNPACK's qd8: the input rounded to asymmetric int8 per token."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
            hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
            scale = ((hi - lo) / 255).clamp(min=1e-12)
            zero = (-128 - lo / scale).round()
            xq = ((x / scale).round() + zero).clamp(-128, 127)
            return self.inner((xq - zero) * scale)

    return DynamicInt8Input(linear)


def _WithBlockOffsets(inner: Any, offsets: Any, group: int) -> Any:
    import torch

    from edgeq.backends.executorch.quant import offset_linear

    term = offset_linear(offsets, group, weight_only=True)
    term.weight = torch.nn.Parameter(dequantized_weight(term), requires_grad=False)

    class WithBlockOffsets(torch.nn.Module):
        """``inner``'s output plus the input's block means times ``group * offsets`` rounded to
        int8 per row, the means rounded per token as XNNPACK's qd8 does (the lowering's term of
        int4-g32-asym, ``quant._add_block_offsets``). The modules are arguments, not closure
        variables: a class made per call is freed by the cycle collector alone, and must not
        keep a dropped stand-in's weights alive until it runs."""

        def __init__(self, inner: torch.nn.Module, term: torch.nn.Module, group: int) -> None:
            super().__init__()
            self.inner, self.group = inner, group
            self.block_offsets = _DynamicInt8Input(term)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            means = x.unflatten(-1, (-1, self.group)).mean(-1)
            return self.inner(x) + self.block_offsets(means)

        def effective_weight(self) -> torch.Tensor:
            """The 4-bit term's weight plus each block's (int8-rounded) offset."""
            offsets = dequantized_weight(self.block_offsets) / self.group
            return (dequantized_weight(self.inner).unflatten(-1, (-1, self.group)) + offsets[..., None]).flatten(-2)

    return WithBlockOffsets(inner, term, group)
