"""One layer with the numerics llama.cpp's CPU backend gives it, written out in torch:
sensitivity's stand-in for GGUF (checked against llama.cpp on a tiny model in
tests/test_gguf_backend.py).

- weights: quantized to the scheme's GGUF type with gguf-py (llama.cpp's own block layout:
  Q8_0 and Q4_0 blocks of 32 along each row, one fp16 scale each) and dequantized back;
- activations: llama.cpp's CPU matmul converts the input to the weight type's
  ``vec_dot_type`` first: for Q8_0 and Q4_0 weights, Q8_0 blocks of 32 along the row (as
  ggml's AVX2 ``quantize_row_q8_0``: ``q = round_half_even(x * 127 / amax)``, the scale
  ``amax / 127`` stored as fp16, so ``x' = q * fp16(amax / 127)``); for F16 weights the input
  rounded to fp16; the products accumulate in fp32 (the output is not rounded);
- embeddings (``get_rows``): the dequantized table, no activation rounding.

Not a layer, so not stood in: llama.cpp's KV cache is f16 (K and V rounded to fp16, and the
query rounded to fp16 for the K·Q product).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from edgeq.schemes import Scheme


def lm_numerics() -> Any:
    """GGUF has one numerics for every model it takes (decoder LLMs only)."""
    return contextlib.nullcontext()


def dequantized(weight: Any, type_name: str) -> Any:
    """``weight`` (rows x K, torch) as llama.cpp reads it back from a ``type_name`` tensor."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    w = weight.detach().float().cpu().numpy()
    if type_name == "F32":
        return weight.detach().float().clone()
    if type_name == "F16":
        return torch.from_numpy(w.astype(np.float16).astype(np.float32))
    qtype = GGMLQuantizationType[type_name]
    return torch.from_numpy(np.ascontiguousarray(dequantize(quantize(w, qtype), qtype), dtype=np.float32))


def q8_0_activations(x: Any, block: int = 32) -> Any:
    """``x`` (…, K) rounded to Q8_0 blocks along the last dim, as llama.cpp quantizes a matmul's input."""
    import torch

    xb = x.float().unflatten(-1, (-1, block))
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv)  # round half to even, as _mm256_round_ps(_MM_ROUND_NEAREST)
    d = (amax / 127.0).to(torch.float16).float()
    return (q * d).flatten(-2)


def stand_in(layer: Any, scheme: Scheme) -> Any:
    import torch

    from edgeq.backends.gguf.costs import gguf_type

    t = gguf_type(scheme, type(layer).__name__)
    q = copy.deepcopy(layer)
    if t.name == "F32":
        return q
    q.weight = torch.nn.Parameter(dequantized(q.weight, t.name).view_as(q.weight), requires_grad=False)
    if isinstance(q, torch.nn.Embedding):
        return q
    if t.activations == "F16":
        q.register_forward_pre_hook(lambda _m, args: (args[0].half().float(),) + tuple(args[1:]))
    elif t.activations == "Q8_0":
        q.register_forward_pre_hook(lambda _m, args: (q8_0_activations(args[0]),) + tuple(args[1:]))
    return q
