"""What an ExecuTorch artifact costs: bytes per (layer, scheme) in the .pte and in the
runtime, the file's own bytes, and the memory model's fitted terms for ExecuTorch.

Stored bytes were measured on single-layer exports (Linear 512→1024, Embedding
4096×256), exact to the byte for the weight payload: int8 per output channel with fp32
scales; XNNPACK int4 linears with 2-byte group scales; ``embedding_4bit`` tables with fp32
ones. RSS holds each weight once (XNNPACK's packed copy replaces the delegate's bytes,
unmapped after packing; portable ops read embedding tables from the mmapped .pte), so the
bytes held are the bytes stored. The fits behind the constants are described in
``edgeq.planning.memory`` (the model) and ``benchmarks/memory_model.py`` (the measurements).
"""

from __future__ import annotations

import math
from typing import Any

from edgeq.backends import FileOverhead, LMMemoryTerms, MemoryTerms
from edgeq.schemes import Scheme


def stored_bytes(layer: Any, scheme: Scheme) -> int:
    p = layer.params
    rows = layer.shape[0]
    if scheme.is_float:
        return p * scheme.bits // 8
    if scheme.group is None:  # int8, one fp32 scale per output channel
        return p + rows * 4
    groups = rows * math.ceil(p // rows / scheme.group)
    packed = rows * math.ceil(p // rows / 2)
    return packed + groups * (2 if layer.kind == "linear" else 4)


def runtime_bytes(layer: Any, scheme: Scheme) -> int:
    return stored_bytes(layer, scheme)


def held_bytes(layer: Any, scheme: Scheme, bias: bool | None = None) -> int:
    return stored_bytes(layer, scheme)


# File overhead: the .pte's bytes beyond its weights (flatbuffer tensor and instruction
# tables). At fp32 the planner reads it from its fp32 lowering (fp32_probe); these fitted
# constants (2026-11-22: file size − stored weights on 7 models at fp32/int8/int4) estimate
# it from the captured program's size, and add each quantized layer's scale tensors and
# dequantizing ops (median per layer over the 7).
FILE_OVERHEAD = FileOverhead(per_op=153, per_placeholder=434, per_quantized_layer=400,
                             per_quantized_conv=780)


def file_overhead(ops: int, placeholders: int) -> int:
    return FILE_OVERHEAD.fp32(ops, placeholders)


def scheme_overhead(layer: Any, scheme: Scheme) -> int:
    return FILE_OVERHEAD.of_scheme(layer, scheme)


# act_wide / act_attn / overhead: fitted (see edgeq.planning.memory's notes); baseline: measured here,
# a Python process with the pybindings imported (they import torch; a C++ app's is far smaller).
MEMORY = MemoryTerms(act_wide=2.27, act_attn=0.94, overhead_bytes=int(3.72 * 2**20),
                     baseline_bytes=int(355.6 * 2**20), maps_embedding_tables=True, arena_at_load=True,
                     tied_head_quantized_copies=0)


# Measured 2026-12-01 on a random 4-layer Llama (hidden 256, 8 heads, 8 KV heads, vocab 256,
# fp32, context 2048: KV cache 16 MiB), one fresh process (edgeq.llm.measure), checked
# afterwards on a model it was not taken from (tests/test_llm_memory.py: 4 layers, hidden 128,
# context 512).
# ExecuTorch 1.5.1 pybindings (XNNPACK): the planned arena (323.5 MB, holding the static cache)
# is resident from the load on, whatever the prompt (8 to 1024 tokens measure the same peak);
# the first run adds 137 MiB beside it: ~1 score matrix at the full context (128 MiB), the
# XNNPACK workspace of a delegate planned for the maximum sequence. Beyond those terms, the
# weights and the encoder intercept, the same model measures +6.9 MiB at context 2048 and
# +5.4 MiB at 1024 (re-exported): their mean, 6.2 MiB, is the LLM session's own overhead
# (its extra methods, the logits handed to Python, the generation loop's buffers); the
# held-out model had measured -11% without this term.
LM_MEMORY = LMMemoryTerms(kv_copies=0.0, prefill_factor=0.0, delegate_scores=1.0,
                          session_overhead_bytes=int(6.2 * 2**20), planned_arena=True)
