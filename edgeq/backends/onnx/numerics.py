"""One layer with the numerics edgeq's ONNX artifacts get in ONNX Runtime, written out in
torch: sensitivity's stand-in. Checked against the exported artifacts for all five kinds
(tests/test_export_onnx.py):

- int8 linear: 8-bit MatMulNBits, symmetric blocks of 128 along K (zero-padded; the
  block's extreme maps to -128), and ``accuracy_level=4``: the input is rounded to int8
  per row and block of 128 as MLAS does; int8-g32: the same at blocks of 32;
- int8@matmulinteger linear: ``quantize_dynamic(per_channel=True)``'s MatMulInteger:
  symmetric int8 weights, one absmax / 127 scale per output channel; the input rounded to
  uint8 with one dynamic scale and zero point per tensor (DynamicQuantizeLinear), taken
  per sample (the artifact runs one input at a time); on an AVX2 host without VNNI the
  products summed in pairs with int16 saturation (``host_u8s8_exact``);
  int8@matmulinteger7: the same with ``reduce_range``: one absmax / 64 scale, codes in [-64, 64];
- int4-gN linear / embedding: MatMulNBits / GatherBlockQuantized, asymmetric per group of
  N along the reduction dim, the range stretched to include 0 (MLAS's RTN). Encoders'
  int4 linears compute in fp32 (weight-only); a decoder LLM's (inside ``lm_numerics()``)
  run with ``accuracy_level=4``: the input rounded to int8 per row and block of N, one
  absmax / 127 scale a block, as MLAS's CompInt8 kernels quantize A (checked against ORT
  on one layer in tests/test_llm_onnx_numerics.py);
- int4-g32-asym linear: llama.cpp's Q4_1 grid (per block of 32 along K: ``d = (max - min) / 15``,
  offset ``min``, ``q = min(15, floor((w - min) / d + 0.5))``), scale and offset in fp32, run
  as a zero-point-free 4-bit ``MatMulNBits`` of ``d * (q - 8)`` plus the input's block sums
  times ``min + 8 d`` in fp32 (``blockquant.asym_blocks``): in a decoder LLM only the first
  term rounds its input to int8 per block of 32;
- int8 embedding: ``quantize_dynamic``'s Gather, the table as uint8 with one scale and zero point;
  int8-g32 embedding: ``GatherBlockQuantized`` 8-bit, the rows in MLAS's symmetric blocks of 32;
- int8 conv: ConvInteger, symmetric int8 weights with one scale (absmax / 127), the input
  rounded to uint8 with one dynamic scale and zero point;
- fp16: weights, inputs and output rounded to fp16.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from typing import Any, Iterator

from edgeq.backends.onnx.costs import INT8_BLOCK, MATMUL_INTEGER, MATMUL_INTEGER_KERNELS
from edgeq.backends.standins import fp16_layer, with_input_scale
from edgeq.schemes import Scheme

# Set while the LLM planner measures a decoder's sensitivity: its int4 linears compute
# with int8 dynamic activations (the LLM lowering's accuracy_level=4), an encoder's do not.
_DECODER_LM = contextvars.ContextVar("edgeq_onnx_decoder_lm", default=False)


@contextlib.contextmanager
def lm_numerics() -> Iterator[None]:
    """Within this block ``stand_in`` gives a decoder LLM's numerics (``llm.lower_lm``):
    int4 linears also round their input to int8 per block of the group size."""
    token = _DECODER_LM.set(True)
    try:
        yield
    finally:
        _DECODER_LM.reset(token)


def stand_in(layer: Any, scheme: Scheme, weights: Any = None) -> Any:
    """``weights``: for a calibrated scheme (GPTQ), its integers, scales and zero points
    (``edgeq.algorithms.gptq.QuantizedWeight``), which the lowering writes unchanged."""
    import torch

    if scheme.is_float:
        return fp16_layer(layer) if scheme.bits == 16 else copy.deepcopy(layer)
    q = copy.deepcopy(layer)
    w = q.weight.detach().float()
    if isinstance(q, torch.nn.Conv1d | torch.nn.Conv2d):
        q.weight = torch.nn.Parameter(_symmetric(w.reshape(1, -1), w.numel()).view_as(w), requires_grad=False)
        q.register_forward_pre_hook(lambda _m, args: (_uint8_tensor(args[0]),) + tuple(args[1:]))
        return q
    if scheme.bits == 8 and isinstance(q, torch.nn.Embedding):
        table = _mlas_symmetric8(w, scheme.group) if scheme.group else _uint8_tensor(w)
        q.weight = torch.nn.Parameter(table, requires_grad=False)
        return q
    if scheme.bits == 8 and scheme.kernel in MATMUL_INTEGER_KERNELS:
        top = 127 if scheme.kernel == MATMUL_INTEGER else 64  # matmulinteger7 (reduce_range): [-64, 64]
        scale = (w.abs().amax(-1, keepdim=True) / top).clamp(min=1e-12)
        q.weight = torch.nn.Parameter((w / scale).round().clamp(-top, top) * scale, requires_grad=False)
        if not host_u8s8_exact():
            return _pair_saturating(q, (w / scale).round().clamp(-top, top), scale.reshape(-1))
        q.register_forward_pre_hook(lambda _m, args: (_uint8_per_sample(args[0]),) + tuple(args[1:]))
        return q
    if scheme.bits == 8:
        block = scheme.group or INT8_BLOCK
        q.weight = torch.nn.Parameter(_mlas_symmetric8(w, block), requires_grad=False)
        q.register_forward_pre_hook(lambda _m, args: (_symmetric(args[0], block),) + tuple(args[1:]))
        return q
    if not scheme.symmetric and scheme.bits == 4 and isinstance(q, torch.nn.Linear):
        return _offset_linear(q, w, scheme.group)
    if scheme.algorithm != "rtn":
        if weights is None:
            raise ValueError(f"the {scheme} stand-in needs the layer's calibrated weights")
        q.weight = torch.nn.Parameter(weights.dequantized(), requires_grad=False)
    else:
        q.weight = torch.nn.Parameter(_asymmetric4(w, scheme.group), requires_grad=False)
    if _DECODER_LM.get() and isinstance(q, torch.nn.Linear):
        block = scheme.group
        q.register_forward_pre_hook(lambda _m, args: (_symmetric(args[0], block),) + tuple(args[1:]))
    return with_input_scale(q, weights)


def _symmetric(x: Any, block: int) -> Any:
    """Round ``x`` (…, K) to int8 with one absmax scale per ``block`` along the last dim."""
    import torch

    k = x.shape[-1]
    pad = (-k) % block
    xb = torch.nn.functional.pad(x, (0, pad)).unflatten(-1, (-1, block))
    scale = (xb.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
    return ((xb / scale).round().clamp(-127, 127) * scale).flatten(-2)[..., :k]


def _mlas_symmetric8(w: Any, block: int) -> Any:
    """MLAS's symmetric 8-bit blocks: the block's largest-magnitude value m maps exactly to
    -128 (scale = -m / 128), the rest round to [-128, 127]; K zero-padded to whole blocks."""
    import torch

    k = w.shape[-1]
    wb = torch.nn.functional.pad(w, (0, (-k) % block)).unflatten(-1, (-1, block))
    idx = wb.abs().argmax(-1, keepdim=True)
    m = wb.gather(-1, idx)
    scale = torch.where(m == 0, torch.ones_like(m), -m / 128)
    return ((wb / scale).round().clamp(-128, 127) * scale).flatten(-2)[..., :k]


def _asymmetric4(w: Any, group: int) -> Any:
    wb = w.unflatten(-1, (-1, group))
    lo, hi = wb.amin(-1, keepdim=True).clamp(max=0), wb.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    zero = (-lo / scale).round().clamp(0, 15)
    return (((wb / scale).round() + zero).clamp(0, 15) - zero).mul(scale).flatten(-2)


def _offset_linear(linear: Any, w: Any, group: int) -> Any:
    """An int4-g32-asym linear as the lowering runs it: ``x' @ (d * (q - 8))ᵀ`` (``x'``: the
    input rounded to int8 per block in a decoder LLM, else ``x``) plus ``blocksums(x) @ (m + 8 d)ᵀ``."""
    import torch

    from edgeq.algorithms.grids import offset_blocks

    q, d, m = offset_blocks(w, group)
    main = ((q - 8) * d[..., None]).flatten(-2)
    offset = m + 8 * d  # [N, K / group]
    rounded = _DECODER_LM.get()
    linear.weight = torch.nn.Parameter((q * d[..., None] + m[..., None]).flatten(-2), requires_grad=False)

    def output(mod: Any, args: tuple[Any, ...], _out: Any) -> Any:
        x = args[0]
        xm = _symmetric(x, group) if rounded else x
        sums = x.unflatten(-1, (-1, group)).sum(-1)
        y = xm @ main.to(x.dtype).T + sums @ offset.to(x.dtype).T
        return y if mod.bias is None else y + mod.bias

    linear.register_forward_hook(output)
    return linear


def _uint8_codes(x: Any) -> tuple[Any, Any, Any]:
    """DynamicQuantizeLinear of ``x``: its uint8 codes (as floats), scale and zero point."""
    lo, hi = x.amin().clamp(max=0), x.amax().clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-12)
    zero = (-lo / scale).round()
    return ((x / scale).round() + zero).clamp(0, 255), scale, zero


def _uint8_tensor(x: Any) -> Any:
    codes, scale, zero = _uint8_codes(x)
    return (codes - zero) * scale


def host_u8s8_exact() -> bool:
    """Whether this x86 host's ONNX Runtime computes MatMulInteger (uint8 × int8) exactly: with
    VNNI (or AMX) it accumulates in int32; with AVX2 alone MLAS uses ``pmaddubsw``, which sums
    each adjacent pair of products in int16 with saturation. Non-x86 hosts: True."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return True
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}) or "avx2" not in flags


def _pair_saturating_int(xq: Any, wq: Any) -> Any:
    """``xq @ wq.T`` (uint8 × int8 as floats) with each adjacent pair of products along K
    summed in int16 with saturation, as ``pmaddubsw`` does, then accumulated exactly.

    The exact product, corrected where a pair saturates: with ``xq`` in [0, 255] a pair of
    weights can only saturate when ``|w_a| + |w_b| > 128``, so only those pairs are formed."""
    import torch

    k = xq.shape[-1]
    if k % 2:
        xq, wq = torch.nn.functional.pad(xq, (0, 1)), torch.nn.functional.pad(wq, (0, 1))
    w2 = wq.reshape(wq.shape[0], -1, 2).double()
    rows, pairs = torch.nonzero(w2.abs().sum(-1) > 128, as_tuple=True)
    if rows.numel() > w2.shape[0] * w2.shape[1] // 4:  # most pairs may saturate: form them all
        x4 = xq.reshape(*xq.shape[:-1], 1, -1, 2).float()  # float32 holds each product and pair exactly
        return torch.cat([(x4 * w2[lo:lo + 64].float()).sum(-1).clamp_(-32768, 32767).sum(-1, dtype=torch.float64)
                          for lo in range(0, w2.shape[0], 64)], -1)
    out = xq.double() @ wq.double().T
    x2 = xq.reshape(*xq.shape[:-1], -1, 2).double()
    for lo in range(0, rows.numel(), 1 << 14):
        r, c = rows[lo:lo + (1 << 14)], pairs[lo:lo + (1 << 14)]
        p = x2[..., c, 0] * w2[r, c, 0] + x2[..., c, 1] * w2[r, c, 1]
        out.index_add_(-1, r, p.clamp(-32768, 32767) - p)
    return out


def _pair_saturating(linear: Any, wq: Any, w_scale: Any) -> Any:
    """A MatMulInteger linear as ONNX Runtime computes it on an x86 host without VNNI: the
    input as DynamicQuantizeLinear's codes per sample, the pairs summed as ``pmaddubsw`` does."""
    import torch

    def output(m: Any, args: tuple[Any, ...], _out: Any) -> Any:
        x = args[0]
        outs = []
        for row in (x.unsqueeze(0) if x.dim() < 3 else x):
            xq, scale, zero = _uint8_codes(row)
            acc = _pair_saturating_int(xq, wq) - zero.double() * wq.double().sum(-1)
            outs.append((acc * scale.double() * w_scale.double()).to(x.dtype))
        y = torch.stack(outs)
        y = y[0] if x.dim() < 3 else y
        return y if m.bias is None else y + m.bias

    linear.register_forward_hook(output)  # the module's own output is replaced (a hook survives deepcopy)
    return linear


def _uint8_per_sample(x: Any) -> Any:
    """DynamicQuantizeLinear on each sample of a batch (the whole tensor when 2-D)."""
    import torch

    if x.dim() < 3:
        return _uint8_tensor(x)
    return torch.stack([_uint8_tensor(row) for row in x])
