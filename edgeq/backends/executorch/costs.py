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

from edgeq.backends import LAST_POSITION, FileOverhead, LMMemoryTerms, MemoryTerms
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
    if not scheme.symmetric:  # int4-g32-asym: a bf16 scale and an int8 offset a group, an fp32 scale a
        return packed + groups * (2 + 1) + rows * 4  # row for the offsets (quant._add_block_offsets)
    return packed + groups * (2 if layer.kind == "linear" else 4)


def runtime_bytes(layer: Any, scheme: Scheme) -> int:
    return stored_bytes(layer, scheme)


def held_bytes(layer: Any, scheme: Scheme, bias: bool | None = None, decoder_lm: bool = False) -> int:
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


# Measured 2026-12-01 (late) on a random 4-layer Llama (hidden 256, 8 heads, 8 KV heads, vocab 256,
# fp32) at contexts 2048 and 1024, one fresh process each (edgeq.llm.measure: a 64-token
# prompt, then decoding to the full context), with attention in ExecuTorch's LLM kernels
# (edgeq.backends.executorch.llm); checked afterwards on a model it was not taken from
# (tests/test_llm_memory.py: hidden 128, context 512).
# ExecuTorch 1.5.1 pybindings (XNNPACK): the planned arena (36.0 MiB at 2048: the 16 MiB
# static cache and 20 MiB of activations planned for a prefill as long as the context) is
# resident from the load on; beyond it, the weights and the runtime's intercept, the first
# run adds 17.4 MiB at 2048 and 8.0 MiB at 1024: XNNPACK's own workspace for the
# intermediates inside its partitions, planned for the same maximum sequence. It follows
# the arena's activations: 0.86 of them (least squares through both points; the held-out
# models measure +4.7% (hidden 128, context 512) and +4.2% (6 layers, hidden 192, 6 heads,
# context 1024) with it). The session overhead (6.2 MiB: extra methods, the logits
# handed to Python, the generation loop's buffers) was measured on the earlier programs
# (scores over the whole context) and still leaves both fit points within 1.6%.
# The workspace follows the activations inside XNNPACK's partitions, so the all-position
# logits at the program's boundary are not counted in it; the prompt's logits handed to the
# caller are (edgeq.llm.memory). Checked 2026-12-02 on SmolLM2-135M at int4, context 512
# (vocab 49152: 100.7 of the arena's 101.9 MB activations are logits): measured 240.5 /
# 262.6 / 289.6 / 340.5 MB above the baseline at prompts of 8 / 128 / 256 / 500 tokens,
# predicted 231.9 / 255.5 / 280.7 / 328.6 MB (-2.7% to -3.6%); with the logits inside the
# workspace term the prediction was 316.9 MB at every prompt (+20.8% at 128).
#
# The load (measured 2026-12-05, sampling /proc/PID/status every 3 ms while the program loads):
# XNNPACK packs each partition's weights while their bytes in the .pte are still mapped and
# unmaps them after, and the head is packed last, so the process peaks at the end of the load
# with the head twice: SmolLM2-135M's programs hold 108 / 27 / 15 MB (fp32 / int8 / int4-g32
# head) more mapped file pages then than once loaded, the Llama-3.2-1B shape at int4 141 MB,
# and generating does not reach that peak again (1B: 1027 MB above the baseline at the load,
# 918 after 64 decode steps). An fp32 tied head is therefore held twice (the table the
# embedding reads from the file, the head XNNPACK packs), three times at that moment; it was
# predicted as held twice throughout before the load was modelled.
LM_MEMORY = LMMemoryTerms(kv_copies=0.0, prefill_factor=0.0, delegate_workspace=0.86,
                          session_overhead_bytes=int(6.2 * 2**20), planned_arena=True,
                          program_logits=LAST_POSITION, load_copy=True)
