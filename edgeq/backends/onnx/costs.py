"""What an ONNX artifact costs: bytes per (layer, scheme) in the file and in ONNX
Runtime, the file's own bytes, and the memory model's fitted terms for ONNX Runtime.

Stored bytes (single-layer exports, exact to the byte for the weight payload): 8-bit
``MatMulNBits`` keeps an fp32 scale per 128-block along K (K zero-padded to whole
blocks); asymmetric 4-bit ``MatMulNBits`` / ``GatherBlockQuantized`` an fp32 scale and a
4-bit zero point per group; int4-g32-asym an fp32 scale and an fp32 offset per group (plus
one ``[K, K / 32]`` fp32 block-indicator matrix per distinct K in the graph, shared by all
such layers and not counted per layer: 336 KB for SmolLM2's K of 576 and 1536); ``quantize_dynamic``'s Gather one uint8 scale and zero point.

Held bytes: ONNX Runtime's CPU provider has no fp16 GEMM (a Cast and constant folding turn
fp16 linears into fp32), and MLAS keeps a prepacked copy of linears beside the original
initializer (which ORT frees but glibc mostly keeps): ``LINEAR_HELD`` bytes held per byte
loaded, fitted with the rest of the memory model (``edgeq.planning.memory``). Linears with a bias
(fused to Gemm) and MatMulNBits keep ~0.6x more; fp32 MatMul without bias kept almost
nothing (measured +3%). The peak is bimodal: which malloc arena each of ORT's threads gets
decides whether the freed initializers go back to the system (~1 fresh process in 9 on a
quiet host, 10 of 11 inside the test suite, every one with MALLOC_ARENA_MAX=1 lands in the
low mode without that excess); these factors describe the high mode, the one a budget must
hold. Weak term
"fp32-bias": held-out ViT-base fp32 keeps only ~0.26x (+29% predicted); with glibc's
dynamic mmap threshold off the excess vanishes and 1.0 fits MiniLM, BERT and ViT within ±7%.
"""

from __future__ import annotations

import math
from typing import Any

from edgeq.backends import KV_STATIC, FileOverhead, LMMemoryTerms, MemoryTerms
from edgeq.backends.onnx.llm_tied import shares_table
from edgeq.schemes import FP32, Scheme, rtn_of

INT8_BLOCK = 128  # int8's default kernel: 8-bit MatMulNBits at blocks of 128 (int8-g32: at 32)
MATMUL_INTEGER = "matmulinteger"  # int8@matmulinteger: quantize_dynamic's per-channel MatMulInteger
# int8@matmulinteger7: the same with reduce_range (weight codes in [-64, 64], scale absmax / 64):
# an AVX2 host without VNNI sums pairs of uint8 × int8 products in int16 with saturation, which
# such codes never reach
MATMUL_INTEGER7 = "matmulinteger7"
MATMUL_INTEGER_KERNELS = (MATMUL_INTEGER, MATMUL_INTEGER7)
# short names targets use → ONNX Runtime's execution provider names
EXECUTION_PROVIDERS = {
    "qnn": "QNNExecutionProvider", "coreml": "CoreMLExecutionProvider", "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider", "openvino": "OpenVINOExecutionProvider", "dnnl": "DnnlExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
LINEAR_HELD = {"fp32": 1.00, "fp32-bias": 1.61, "int8": 1.71, "int4": 1.64}
# A decoder LLM's weights as ONNX Runtime holds them, per stored byte, in the high mode of its
# bimodal footprint (the one a budget must hold): its quantized linears compute with int8
# activations (accuracy_level=4), for which MLAS prepacks another layout beside the copy it
# made of the initializer; SmolLM2's hundreds of sub-MB tensors leave their freed copies with
# malloc (one 4096x8192 layer alone returns them to the system, so single large layers measure
# other factors). Fitted by benchmarks/fit_onnx_lm_held.py on whole SmolLM2-135M-sized models
# (fit rows: the full model and its first 15 blocks at uniform and mixed schemes, the highest
# of 10 fresh processes each; held out: edgeq's budgeted plan, +6.3%), results/onnx_lm_held.json.
# Calibrated schemes (GPTQ, HQQ) store the RTN scheme's layout and take its factor.
# int4-g128 and int8 (blocks of 128) have no fit row: they take int4-g64's and int8-g32's factors
# (g64 fitted 2.11 beside g32's 2.05).
LM_LINEAR_HELD = {"int8-g32": 2.12, "int8": 2.12, "int4-g32": 2.05, "int4-g64": 2.11, "int4-g128": 2.11,
                  "int4-g32-asym": 1.81}
# A tied head: at a quantized scheme its table shares (llm_tied), the head's MatMulNBits reads
# the table's tensor and ONNX Runtime holds the head's prepacked copy and a copy for the
# table's Reshape; at fp32 the head's Transpose folds into a copy MLAS packs again. Held
# beside the table's own 1x, per stored byte of the table, by the head's precision.
LM_TIED_HEAD_HELD = {"int8": 1.77, "int4": 1.61, "fp32": 1.93}


def stored_bytes(layer: Any, scheme: Scheme) -> int:
    p = layer.params
    rows = layer.shape[0]
    reduce_dim = p // rows
    if scheme.is_float:
        return p * scheme.bits // 8
    if scheme.bits == 8:
        if layer.kind == "linear" and scheme.kernel in MATMUL_INTEGER_KERNELS:  # int8 values, fp32 scale + int8 zero a row
            return p + rows * 5
        if layer.kind == "linear" or scheme.group:  # blocks along K (a table's row), the last one zero-padded; an fp32 scale each
            block = scheme.group or INT8_BLOCK
            blocks = rows * math.ceil(reduce_dim / block)
            return blocks * block + blocks * 4
        if layer.kind == "embedding":
            return p + 8
        return p + rows * 4
    groups = rows * math.ceil(reduce_dim / scheme.group)
    packed = rows * math.ceil(reduce_dim / 2)
    if not scheme.symmetric:  # int4-g32-asym: an fp32 scale and an fp32 offset a block, no zero points
        return packed + groups * 8
    return packed + groups * 4 + math.ceil(groups / 2)


def runtime_bytes(layer: Any, scheme: Scheme) -> int:
    if scheme.is_float and scheme.bits == 16 and layer.kind != "embedding":
        return 4 * layer.params  # no fp16 GEMM on the CPU provider: held as fp32
    return stored_bytes(layer, scheme)


def held_bytes(layer: Any, scheme: Scheme, bias: bool | None = None, decoder_lm: bool = False) -> int:
    held = runtime_bytes(layer, scheme)
    if layer.kind == "embedding":
        return held
    if decoder_lm and layer.kind == "linear":
        if getattr(layer, "tied", "") and (scheme == FP32 or shares_table(scheme)):
            return int(held * LM_TIED_HEAD_HELD[scheme.precision])
        factor = LM_LINEAR_HELD.get(rtn_of(scheme).name) if scheme.is_quantized else None
        if factor is not None:
            return int(held * factor)
    key = "fp32" if scheme.is_float else f"int{scheme.bits}"
    if key == "fp32" and (getattr(layer, "bias", True) if bias is None else bias):
        key = "fp32-bias"
    return int(held * LINEAR_HELD[key])


# File overhead (2026-11-22, 7 models at fp32/int8/int4, after edgeq strips the exporter's
# per-node debug metadata): node protos and initializer names grow with the captured
# program's ops and placeholders; each quantized layer adds its scale / zero-point tensors.
FILE_OVERHEAD = FileOverhead(per_op=50, per_placeholder=268, per_quantized_layer=230,
                             per_quantized_conv=650)


def file_overhead(ops: int, placeholders: int) -> int:
    return FILE_OVERHEAD.fp32(ops, placeholders)


def scheme_overhead(layer: Any, scheme: Scheme) -> int:
    return FILE_OVERHEAD.of_scheme(layer, scheme)


# act_wide / act_attn / overhead: fitted (see edgeq.planning.memory's notes); a 40 KB model measures
# 10.3 MiB, the rest of the intercept is run-time workspace the other terms miss. baseline:
# measured, a Python process with onnxruntime imported. A tied LM head whose table is
# quantized costs a second fp32 copy: the table cannot feed the head's Transpose (int8
# dequantizes it at every run; int4 keeps an fp32 original beside the 4-bit table).
MEMORY = MemoryTerms(act_wide=1.75, act_attn=5.86, overhead_bytes=int(18.7 * 2**20),
                     baseline_bytes=int(45.5 * 2**20), maps_embedding_tables=False, arena_at_load=False,
                     tied_head_quantized_copies=1)


# Measured 2026-12-01 on a random 4-layer Llama (hidden 256, 8 heads, 8 KV heads, vocab 256,
# fp32, context 2048: KV cache 16 MiB), one fresh process (edgeq.llm.measure), checked
# afterwards on a model it was not taken from (tests/test_llm_memory.py: 4 layers, hidden 128,
# context 512).
# ONNX Runtime 1.31 (CPU EP): decoding to a full context measures 2.6 KV caches over the
# loaded model (the past fed in and the present returned are both alive during a step, and
# glibc keeps part of the previous, smaller step's arrays); a 1024-token prefill holds 1.41x
# prefill_arena_bytes (ORT keeps the scaled scores, the mask-added scores and the softmax).
# A graph whose every attention is one GroupQueryAttention (Llama, Qwen2, Phi-3, Gemma...)
# holds its cache as one buffer of max-context positions per layer, shared by past and present
# (``llm_attention.share_kv_buffers``): planning counts that layout; an artifact whose manifest
# says "grown per call" (GPT-2, Qwen3, sliding windows: attention left unfused) is predicted
# with the 2.6 copies above.
# An LLM session holds less than the encoder intercept above (which carries encoder workspace
# the activation terms miss): fitted 2026-12-02 (benchmarks/fit_lm_memory.py) as the median of
# the overhead left after weights, KV cache and activations over 14 fresh-process generations
# to a full context (two runs of 7 fp32 models: Llama with the shared buffer at 2-16 layers,
# hidden 128-256, contexts 512-2048, and GPT-2 with its grown cache; loads 1.5 and 4): 13.76
# MiB (11.2-20.0: glibc's malloc arenas under load). The held-out model of
# tests/test_llm_memory.py then predicts 56.7 MiB against 55.8-56.8 measured (was 61.7: +9%).
LM_MEMORY = LMMemoryTerms(kv_copies=2.6, prefill_factor=1.41, delegate_workspace=0.0, kv_layout=KV_STATIC,
                          session_overhead_bytes=int((13.76 - 18.7) * 2**20))
