"""Apply a quantization plan to a PyTorch module before ExecuTorch lowering.

- Linear: torchao ``Int8DynamicActivationIntxWeightConfig`` (int8 per-channel or int4
  group-wise weights, int8 dynamic activations: XNNPACK's qd8 kernels), or
  ``IntxWeightOnlyConfig`` when the delegate wants weight-only (Core ML, Vulkan int8).
- Linear at int4-g32-asym (llama.cpp's Q4_1 grid: a scale and an offset per block of 32):
  the 8da4w linear of ``d * (q - 8)`` (``offset_terms``) plus the input's block means times
  32 × the offsets, an int8 linear of ``K / 32`` inputs (``_add_block_offsets``): XNNPACK's
  4-bit weights are symmetric, so the offset is a term of its own.
- Embedding: ``IntxWeightOnlyConfig``; ``to_executorch`` fuses dequantize + embedding
  into ``quantized_decomposed.embedding_byte/4bit`` (needs ``padding_idx`` cleared,
  which only matters for training).
- Conv: static int8 per-channel through PT2E with XNNPACK's quantizer, calibrated on
  the calibration inputs (XNNPACK has no dynamic-activation conv with int8 weights).
- fp16: the whole model in half precision with LayerNorm kept in fp32 (the portable
  fp16 layer_norm kernel in this ExecuTorch build returns NaN), fp32 in and out. In a
  mixed plan, each fp16 layer alone: fp16 weights, its input cast to fp16 and its output
  back to fp32 (XNNPACK runs fp16 linears; the casts are two cheap ops per layer).
"""

from __future__ import annotations

import copy
from typing import Any

from edgeq.schemes import FP16, FP32, INT8, Scheme

WEIGHT_ONLY_DELEGATES = {"coreml"}


def quantized_module(module: Any, schemes: dict[str, Scheme], delegate: str, *, xnnpack_reference: bool = False,
                     calibrated: dict[str, Any] | None = None, in_place: bool = False) -> Any:
    """A quantized deep copy of ``module`` (the original stays FP32 for reference), or with
    ``in_place`` ``module`` itself quantized (a copy its caller made for this alone).

    ``calibrated``: ``{fqn: edgeq.algorithms.gptq.QuantizedWeight}`` for the layers at a
    calibrated scheme (GPTQ): torchao quantizes them as their RTN scheme's layout, then
    their integers and scales are replaced with the algorithm's (same tensors, same
    lowering to XNNPACK).

    With ``xnnpack_reference``, weight-only linears (Core ML, Vulkan int8) get their
    dequantized weights as plain fp32 instead: the same numbers, in a form XNNPACK
    computes correctly (its delegated weight-only int8 linear returns garbage in
    executorch 1.5.1; measured max-abs error 1e6 on a 2-layer MLP).
    """
    from torch import nn

    model = module if in_place else copy.deepcopy(module)
    if set(schemes.values()) == {FP16}:
        return _Fp16(model)
    modules = dict(model.named_modules())
    groups: dict[tuple[str, str], set[str]] = {}
    for fqn, scheme in schemes.items():
        mod = modules.get(fqn)
        if mod is None or scheme == FP32:
            continue
        if scheme == FP16:
            _HalfLayer(mod)
            continue
        kind = "embedding" if isinstance(mod, nn.Embedding) else "conv" if isinstance(mod, nn.Conv2d | nn.Conv1d) else "linear"
        if kind == "embedding":
            mod.padding_idx = None
        groups.setdefault((kind, scheme), set()).add(fqn)

    for (kind, scheme), fqns in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1].name)):
        if kind == "conv":
            continue  # PT2E, after capture: see quantize_convs
        weight_only = kind == "embedding" or delegate in WEIGHT_ONLY_DELEGATES or (delegate == "vulkan" and scheme == INT8)
        if not scheme.symmetric:
            _quantize_offset_blocks(model, scheme, sorted(fqns), weight_only)
            continue
        quantize(model, torchao_config(scheme, weight_only), lambda m, fqn, names=fqns: fqn in names)
        if scheme.algorithm != "rtn":
            for fqn in fqns:
                _write_calibrated(model.get_submodule(fqn), (calibrated or {}).get(fqn), scheme, fqn)
        if xnnpack_reference and weight_only and kind == "linear":
            for fqn in fqns:
                layer = model.get_submodule(fqn)
                layer.weight = nn.Parameter(layer.weight.dequantize().detach(), requires_grad=False)
    return model


def quantize(model: Any, config: Any, filter_fn: Any = None) -> None:
    """torchao's ``quantize_`` of ``model`` in place, without the reference cycle it leaves:
    it gives each module it quantizes an ``extra_repr`` bound to the module itself, so a
    dropped module (a stand-in, a quantized copy) is freed only when Python's cycle
    collector next runs. Tensor-heavy work allocates few Python objects, so that can be
    phases later: GBs of dropped stand-ins on a 1B model. The repr falls back to the class's."""
    from torchao.quantization import quantize_

    if filter_fn is None:
        quantize_(model, config)
    else:
        quantize_(model, config, filter_fn=filter_fn)
    for mod in model.modules():
        mod.__dict__.pop("extra_repr", None)


def offset_terms(weight: Any, group: int) -> tuple[Any, Any, Any]:
    """``weight`` ([N, K]) on llama.cpp's Q4_1 grid (``edgeq.algorithms.grids.offset_blocks``:
    ``d * q + m`` per block of ``group``) as XNNPACK runs it: ``(ints, scales, offsets)``, the
    8da4w term's integers ``q - 8`` ([N, K], int8 in [-8, 7]) and scales (``d`` rounded to
    bf16, as XNNPACK stores 4-bit group scales; [N, K / group]), and each block's fp32 offset
    ([N, K / group]): ``m + 8 d`` plus what the bf16 rounding of ``d`` moves the block's mean
    by, so the weight is ``scales * ints + offsets`` within ``|d - bf16(d)| * |q - mean q|``."""
    import torch

    from edgeq.algorithms.grids import offset_blocks

    q, d, m = offset_blocks(weight.detach().float(), group)
    scales = d.to(torch.bfloat16).float()
    offsets = m + 8 * d + (d - scales) * (q.mean(-1) - 8)
    return (q - 8).to(torch.int8).flatten(-2), scales, offsets


def _quantize_offset_blocks(model: Any, scheme: Scheme, fqns: list[str], weight_only: bool) -> None:
    """The ``fqns`` linears at ``scheme`` (int4-g32-asym): torchao's 8da4w layout at the
    scheme's group, its integers and scales replaced by ``offset_terms``', the offsets added
    as a term of their own (``_add_block_offsets``)."""
    if weight_only:
        from edgeq.errors import ConfigError

        raise ConfigError(f"{scheme.name} ({fqns[0]}) needs int8 dynamic activations (XNNPACK's 8da4w), and this "
                          "target's delegate quantizes linears weight-only", "plan int4-g32 for it, or use XNNPACK")
    terms = {f: offset_terms(model.get_submodule(f).weight, scheme.group) for f in fqns}
    quantize(model, torchao_config(Scheme("int", 4, scheme.group), False, minmax=True),
             lambda m, fqn, names=set(fqns): fqn in names)
    for fqn, (ints, scales, offsets) in terms.items():
        layer = model.get_submodule(fqn)
        _write_ints(layer, ints, scales, f"{fqn}: {scheme.name} terms")
        _add_block_offsets(layer, offsets, scheme.group)


def _add_block_offsets(layer: Any, offsets: Any, group: int) -> None:
    """``layer``'s output plus the blocks' offsets: ``blocksums(x) @ offsetsᵀ``, with ``x`` the
    layer's input summed per block of ``group`` along K, computed as the blocks' means times
    ``group * offsets`` (times 32 is exact in fp32 and saves the delegate a multiply).

    The term is a linear of its own, ``block_offsets`` (``K / group`` inputs), at int8 with
    dynamic int8 inputs (XNNPACK's qd8, as an int8 layer): one byte an offset and an fp32 scale
    a row, against four bytes an offset in fp32 (5.5 → about 4.8 bits a weight; Q4_1 stores
    5.0). fp16 offsets would store 5.0 but their casts run as portable kernels between delegate
    calls; XNNPACK's weight-only int8 linear drops its scales in this ExecuTorch.

    The means are a mean over a ``[1, rows * blocks, group, 1]`` view: XNNPACK takes a 4-D mean
    over its last two dims, where a ``sum`` is left to a portable kernel between two delegate
    calls (SmolLM2's 576→1536 linear at one token: 51 µs against 88 µs). In a captured LLM the
    reshape back names the symbolic sequence length, which XNNPACK refuses; the LLM lowering's
    pass (``passes.delegable_shapes``) spells it so the term runs in the linear's XNNPACK call."""
    layer.block_offsets = offset_linear(offsets, group, weight_only=False)

    def output(mod: Any, args: tuple[Any, ...], out: Any) -> Any:
        x = args[0]
        means = x.reshape(1, -1, group, 1).mean(dim=(-2, -1), keepdim=True).reshape(*x.shape[:-1], -1)
        return out + mod.block_offsets(means)

    layer.register_forward_hook(output)


def offset_linear(offsets: Any, group: int, weight_only: bool) -> Any:
    """The offsets' term as torchao quantizes it: a linear from the ``K / group`` block means to
    the ``N`` outputs, weight ``group * offsets`` at int8 per row (``weight_only``: the same
    integers and scales, for a stand-in that dequantizes them)."""
    import torch

    rows, blocks = offsets.shape
    term = torch.nn.Linear(blocks, rows, bias=False)
    with torch.no_grad():
        term.weight.copy_(offsets.float() * group)
    quantize(term, torchao_config(INT8, weight_only))
    return term


def _write_calibrated(layer: Any, weights: Any, scheme: Scheme, fqn: str) -> None:
    """Put a calibrated scheme's integers and scales into torchao's quantized weight."""
    if weights is None:
        raise ValueError(f"{fqn} is planned as {scheme} but has no calibrated weights")
    _write_ints(layer, weights.ints, weights.scales, f"{fqn}: calibrated weights")


def _write_ints(layer: Any, ints: Any, scales: Any, what: str) -> None:
    """Put ``ints`` and ``scales`` (zero points 0) into ``layer``'s torchao quantized weight."""
    import torch

    w = layer.weight
    if tuple(w.qdata.shape) != tuple(ints.shape) or tuple(w.scale.shape) != tuple(scales.shape):
        raise ValueError(f"{what} {tuple(ints.shape)} / {tuple(scales.shape)} do not match "
                         f"torchao's layout {tuple(w.qdata.shape)} / {tuple(w.scale.shape)}")
    w.qdata = ints.to(w.qdata.dtype).contiguous()
    w.scale = scales.to(w.scale.dtype).contiguous()
    w.zero_point = torch.zeros_like(w.zero_point)


def torchao_config(scheme: Scheme, weight_only: bool, minmax: bool = False) -> Any:
    """The torchao config for an int scheme. int4 scales are chosen with HQQ (scale only),
    which measured +0.006 mean cosine over plain min-max on MiniLM at the same size; a
    calibrated scheme's layout (or with ``minmax``) is plain min-max (its values are
    replaced afterwards)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    dtype = torch.int8 if scheme.bits == 8 else torch.int4
    if not scheme.symmetric:
        raise ValueError(f"{scheme.name} is not a torchao scheme (quantized_module stores it as 8da4w plus offsets)")
    granularity = PerAxis(0) if scheme.group is None else PerGroup(scheme.group)
    hqq = scheme.bits == 4 and scheme.algorithm == "rtn" and not minmax
    algorithm = {"intx_choose_qparams_algorithm": "hqq_scale_only"} if hqq else {}
    if weight_only:
        return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity, **algorithm)
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity, **algorithm)


def conv_layers(schemes: dict[str, Scheme], module: Any) -> list[str]:
    from torch import nn

    modules = dict(module.named_modules())
    return [f for f, s in schemes.items() if s == INT8 and isinstance(modules.get(f), nn.Conv1d | nn.Conv2d)]


def quantize_convs(program: Any, convs: list[str], calib: list[tuple[Any, ...]]) -> Any:
    """Static int8 PT2E quantization of the named conv layers of a captured program."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    wanted = set(convs)

    def in_wanted_conv(node: Any) -> bool:
        # The quantizer checks every node of a pattern (conv → relu, weights as get_attr
        # nodes without module metadata), so reject only ops inside other weighted layers.
        stack = list(node.meta.get("nn_module_stack", {}).values())
        if node.op != "call_function" or not stack:
            return True
        path, kind = stack[-1]
        kind = str(kind)
        if "Conv" in kind:
            return path.removeprefix("L['self'].") in wanted
        return not ("Linear" in kind or "Embedding" in kind)

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    quantizer.set_filter_function(in_wanted_conv)
    prepared = prepare_pt2e(program.module(), quantizer)
    for row in calib:
        prepared(*row)
    return convert_pt2e(prepared)


def _Fp16(model: Any) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class FP32LayerNorm(nn.Module):
        def __init__(self, ln: nn.LayerNorm):
            super().__init__()
            self.shape, self.eps = ln.normalized_shape, ln.eps
            self.weight = nn.Parameter(ln.weight.detach().float()) if ln.weight is not None else None
            self.bias = nn.Parameter(ln.bias.detach().float()) if ln.bias is not None else None

        def forward(self, x):
            return F.layer_norm(x.float(), self.shape, self.weight, self.bias, self.eps).to(x.dtype)

    class Half(nn.Module):
        """fp16 inside, fp32 at the boundary (float inputs cast in, outputs cast out)."""

        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            args = tuple(a.half() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
            out = self.inner(*args)
            return out.float() if torch.is_tensor(out) else out

    model = model.half()
    for name, sub in list(model.named_modules()):
        if isinstance(sub, nn.LayerNorm):
            model.set_submodule(name, FP32LayerNorm(sub)) if name else None
    return Half(model).eval()


def _HalfLayer(layer: Any) -> Any:
    """``layer`` in fp16 inside an fp32 model (same module, same parameter names): float
    inputs are cast to fp16 on the way in, the output back to fp32 on the way out."""
    from torch import nn

    if isinstance(layer, nn.Embedding):
        layer.padding_idx = None
    # A tied LM head shares its weight with the embedding: half a copy, not the shared tensor.
    layer.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
    layer.half()
    layer.register_forward_pre_hook(
        lambda _m, args: tuple(a.half() if a.is_floating_point() else a for a in args))
    layer.register_forward_hook(lambda _m, _args, out: out.float())
    return layer
