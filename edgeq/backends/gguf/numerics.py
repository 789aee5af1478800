"""One layer with the numerics llama.cpp's CPU backend gives it, written out in torch:
sensitivity's stand-in for GGUF (checked against llama.cpp on a tiny model in
tests/test_gguf_backend.py).

- weights: quantized to the scheme's GGUF type with llama.cpp's own bytes (gguf-py for the
  types of blocks of 32; ``kquants`` for the K-quants) and dequantized back by gguf-py;
- activations: llama.cpp's CPU matmul converts the input to the weight type's
  ``vec_dot_type`` first:
  - Q8_0 (for Q8_0, Q4_0, Q5_0 weights): blocks of 32 along the row (as ggml's AVX2
    ``quantize_row_q8_0``: ``q = round_half_even(x * 127 / amax)``, the scale ``amax / 127``
    stored as fp16, so ``x' = q * fp16(amax / 127)``);
  - Q8_1 (for Q4_1, Q5_1): the same values, plus each block's sum stored as
    ``fp16(amax / 127 * sum(q))``, which the dot product multiplies by the weight block's min
    instead of the exact ``sum(x')``: the stand-in adds ``min * (that - sum(x'))`` per block;
  - Q8_K (for the K-quants): blocks of 256, ``q = min(127, round(x * -127 / max))`` with
    ``max`` the signed element of largest magnitude, scale ``1 / (-127 / max)`` kept in fp32;
  - F16 weights: the input rounded to fp16; the products accumulate in fp32 (the output is
    not rounded);
- embeddings (``get_rows``): the dequantized table, no activation rounding.

Not a layer, so not stood in: llama.cpp's KV cache is f16 (K and V rounded to fp16, and the
query rounded to fp16 for the K·Q product).
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from typing import Any

from edgeq.schemes import Scheme


def lm_numerics() -> Any:
    """GGUF has one numerics for every model it takes (decoder LLMs only)."""
    return contextlib.nullcontext()


# (weights' content, type) → llama.cpp's bytes, newest last: a sensitivity pass stands a
# weight in at a type once but reads its bytes again (a Q4_1 / Q5_1 block's min; a tied
# head's table), and the export's fitting loop writes the same tensors at the same types in
# each round. Bounded: the oldest entries go beyond ``QUANTIZED_CACHE_BYTES``.
QUANTIZED_CACHE_BYTES = 512 << 20
_quantized: "OrderedDict[tuple[bytes, tuple[int, ...], str], Any]" = OrderedDict()


def quantized_bytes(array: Any, type_name: str) -> Any:
    """``array`` (rows x K, float32 numpy) as llama.cpp's bytes of ``type_name`` (a quantized
    type); the same weights at the same type are quantized once per process (a copy of the
    bytes is returned, so a caller may write into it)."""
    import hashlib

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float32)
    key = (hashlib.blake2b(array.data, digest_size=16).digest(), array.shape, type_name)
    if key in _quantized:
        _quantized.move_to_end(key)
        return _quantized[key].copy()
    raw = _quantize(array, type_name)
    _quantized[key] = raw.copy()
    while sum(v.nbytes for v in _quantized.values()) > QUANTIZED_CACHE_BYTES and len(_quantized) > 1:
        _quantized.popitem(last=False)
    return raw


def _quantize(array: Any, type_name: str) -> Any:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from edgeq.backends.gguf.kquants import QUANTIZERS, quantize_k

    if type_name in QUANTIZERS:
        return quantize_k(array, type_name)
    if type_name in ("Q4_0", "Q5_0"):
        # llama.cpp's scale is max / -8 (or -16) with max starting at +0: an all-zero block's
        # scale is -0.0 even when its first element is -0.0, where gguf-py would take that
        # element's sign; -0.0 + 0.0 = +0.0 changes no other byte of these symmetric types
        array = array + np.float32(0.0)
    raw = quantize(array, GGMLQuantizationType[type_name])
    if type_name in ("Q4_1", "Q5_1"):
        _first_min_max(np.asarray(array, dtype=np.float32), raw, 15 if type_name == "Q4_1" else 31)
    return raw


def _first_min_max(array: Any, raw: Any, levels: int) -> None:
    """Q4_1 / Q5_1 scale and min as llama.cpp writes them: its loops keep the first element
    equal to the block's min (and max), so a zero min has that element's sign, where numpy's
    min may return the other zero (the values, and so every other byte, are the same)."""
    import numpy as np

    blocks = array.reshape(-1, 32)
    mn = np.take_along_axis(blocks, (blocks == blocks.min(-1, keepdims=True)).argmax(-1)[:, None], -1)
    mx = np.take_along_axis(blocks, (blocks == blocks.max(-1, keepdims=True)).argmax(-1)[:, None], -1)
    out = raw.reshape(blocks.shape[0], -1)
    out[:, 0:2] = ((mx - mn) / np.float32(levels)).astype(np.float16).view(np.uint8)
    out[:, 2:4] = mn.astype(np.float16).view(np.uint8)


def dequantized(weight: Any, type_name: str) -> Any:
    """``weight`` (rows x K, torch) as llama.cpp reads it back from a ``type_name`` tensor."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    w = weight.detach().float().cpu().numpy()
    if type_name == "F32":
        return weight.detach().float().clone()
    if type_name == "F16":
        return torch.from_numpy(w.astype(np.float16).astype(np.float32))
    qtype = GGMLQuantizationType[type_name]
    return torch.from_numpy(np.ascontiguousarray(dequantize(quantized_bytes(w, type_name), qtype), dtype=np.float32))


def block_mins(weight: Any, type_name: str) -> Any:
    """The min (offset) of each block of 32 of a Q4_1 / Q5_1 ``weight``: (rows, K / 32) torch,
    read from the bytes (an fp16 after the block's fp16 scale)."""
    import numpy as np
    import torch

    raw = quantized_bytes(weight.detach().float().cpu().numpy(), type_name)
    per_block = raw.reshape(raw.shape[0], weight.shape[1] // 32, -1)
    return torch.from_numpy(np.ascontiguousarray(per_block[..., 2:4]).view(np.float16)[..., 0].astype(np.float32))


def q8_0_activations(x: Any, block: int = 32) -> Any:
    """``x`` (…, K) rounded to Q8_0 blocks along the last dim, as llama.cpp quantizes a matmul's input."""
    return _q8_blocks(x, block)[0]


def _q8_blocks(x: Any, block: int = 32) -> tuple[Any, Any]:
    """(x' as Q8_0 / Q8_1 values, Q8_1's stored block sum minus the exact sum of x' per block)."""
    import torch

    xb = x.float().unflatten(-1, (-1, block))
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv)  # round half to even, as _mm256_round_ps(_MM_ROUND_NEAREST)
    d = amax / 127.0
    d16 = d.to(torch.float16).float()
    xq = q * d16
    stored_sum = (d * q.sum(-1, keepdim=True)).to(torch.float16).float()
    return xq.flatten(-2), (stored_sum - xq.sum(-1, keepdim=True))[..., 0]


def q8_k_activations(x: Any) -> Any:
    """``x`` (…, K) rounded to Q8_K super-blocks of 256 (llama.cpp's ``quantize_row_q8_K``)."""
    import torch

    xb = x.float().unflatten(-1, (-1, 256))
    idx = xb.abs().argmax(-1, keepdim=True)
    mx = torch.gather(xb, -1, idx)
    nonzero = mx != 0
    iscale = torch.where(nonzero, -127.0 / torch.where(nonzero, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    q = torch.clamp(torch.round(iscale * xb), max=127)
    d = torch.where(nonzero, 1.0 / torch.where(nonzero, iscale, torch.ones_like(iscale)), torch.zeros_like(iscale))
    return (q * d).flatten(-2)


def stand_in(layer: Any, scheme: Scheme) -> Any:
    import torch

    from edgeq.backends.gguf.costs import gguf_type

    t = gguf_type(scheme, type(layer).__name__)
    q = copy.deepcopy(layer)
    if t.name == "F32":
        return q
    original = q.weight.detach()
    q.weight = torch.nn.Parameter(dequantized(original, t.name).view_as(q.weight), requires_grad=False)
    if isinstance(q, torch.nn.Embedding):
        return q
    if t.activations == "F16":
        q.register_forward_pre_hook(lambda _m, args: (args[0].half().float(),) + tuple(args[1:]))
    elif t.activations == "Q8_0":
        q.register_forward_pre_hook(lambda _m, args: (q8_0_activations(args[0]),) + tuple(args[1:]))
    elif t.activations == "Q8_K":
        q.register_forward_pre_hook(lambda _m, args: (q8_k_activations(args[0]),) + tuple(args[1:]))
    elif t.activations == "Q8_1":
        mins = block_mins(original, t.name)
        pending: list[Any] = []

        def quantize_input(_m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            xq, sum_error = _q8_blocks(args[0])
            pending.append(sum_error)
            return (xq,) + tuple(args[1:])

        def add_sum_error(_m: Any, _args: Any, out: Any) -> Any:
            return out + pending.pop() @ mins.t()

        q.register_forward_pre_hook(quantize_input)
        q.register_forward_hook(add_sum_error)
    return q
