"""What a GGUF artifact costs: one typed table from edgeq's schemes to GGUF tensor types,
the bytes each type stores per row, and the memory terms of llama.cpp's CPU backend.

``GGUF_TYPES`` is the only place a scheme becomes a GGUF type (``gguf_type``); a scheme it
does not list (int4 at groups of 64 or 128, or an algorithm other than round-to-nearest)
has no GGUF type and is refused. Block bytes come from gguf-py's own ``GGML_QUANT_SIZES``
(llama.cpp's table): Q8_0 34 B per 32 weights (an fp16 scale + 32 int8), Q4_0 18 B per 32
(an fp16 scale + 16 bytes of nibbles), Q4_1 20 B (a scale and a min), Q5_0 22 B, Q5_1 24 B;
the K-quants per super-block of 256: Q2_K 84 B, Q3_K 110 B, Q4_K 144 B, Q5_K 176 B, Q6_K
210 B. GGUF quantizes along each row (the reduction dim of a linear, the hidden dim of an
embedding), so a quantized type needs rows that are whole blocks: ``fits`` says which (a
K-quant takes rows that are multiples of 256 only).

Held bytes: llama.cpp mmaps the file and reads the tensors in place, so a weight is held
once at its stored size, except the types its CPU backend repacks at load into
interleaved blocks (``REPACKED_AT_LOAD``), which are held twice at the peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeq.backends import FileOverhead, LMMemoryTerms, MemoryTerms, LAST_POSITION
from edgeq.schemes import FP16, FP32, INT4, INT4_G32_ASYM, INT5_G32, INT5_G32_ASYM, INT8, K_QUANTS, Scheme


@dataclass(frozen=True)
class GgufType:
    """A GGUF tensor type edgeq writes: its gguf-py name, block size in weights, bytes per block,
    and what llama.cpp's CPU matmul quantizes the activations to for it (``vec_dot_type``)."""

    name: str  # GGMLQuantizationType member: F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K … Q6_K
    block: int
    block_bytes: int
    activations: str  # "F32" | "F16" | "Q8_0" | "Q8_1" | "Q8_K" (llama.cpp's vec_dot_type for this weight type)

    @property
    def quantized(self) -> bool:
        return self.block > 1


def _sizes(name: str) -> tuple[int, int]:
    """(weights per block, bytes per block) from gguf-py's copy of llama.cpp's table."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[name]]


def _type(name: str, activations: str) -> GgufType:
    block, nbytes = _sizes(name)
    return GgufType(name, block, nbytes, activations)


# scheme → GGUF type (symmetric int4 in groups of 32 is Q4_0: one fp16 scale, no offset)
GGUF_TYPES: dict[Scheme, GgufType] = {
    FP32: _type("F32", "F32"),
    FP16: _type("F16", "F16"),
    INT8: _type("Q8_0", "Q8_0"),
    INT4[32]: _type("Q4_0", "Q8_0"),
    INT4_G32_ASYM: _type("Q4_1", "Q8_1"),
    INT5_G32: _type("Q5_0", "Q8_0"),
    INT5_G32_ASYM: _type("Q5_1", "Q8_1"),
    **{K_QUANTS[b]: _type(f"Q{b}_K", "Q8_K") for b in (2, 3, 4, 5, 6)},
}
# what a whole file is called after its most common type (llama.cpp's ``general.file_type``;
# LlamaFileType names a K-quant file by its mix: a mostly-Q4_K file is MOSTLY_Q4_K_M)
FILE_TYPES: dict[str, str] = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0",
                              "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1",
                              "Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M",
                              "Q5_K": "MOSTLY_Q5_K_M", "Q6_K": "MOSTLY_Q6_K"}


def gguf_type(scheme: Scheme, where: str = "") -> GgufType:
    """The GGUF type ``scheme`` is written as; ``ConfigError`` when GGUF has none."""
    from edgeq.errors import ConfigError

    found = GGUF_TYPES.get(scheme)
    if found is None:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}scheme {scheme.name} has no GGUF tensor type",
                          f"GGUF takes {', '.join(s.name for s in GGUF_TYPES)}")
    return found


def row_length(layer: Any) -> int:
    """Weights per row as GGUF stores the tensor (the reduction dim of a linear, the
    embedding dim of a table)."""
    return layer.params // layer.shape[0]


def fits(layer: Any, scheme: Scheme) -> bool:
    """Whether ``layer`` can be stored at ``scheme`` in GGUF: a type exists and rows are whole blocks."""
    t = GGUF_TYPES.get(scheme)
    return t is not None and row_length(layer) % t.block == 0


def stored_bytes(layer: Any, scheme: Scheme) -> int:
    """The tensor's bytes in the file (whole blocks per row; a scheme GGUF cannot store is refused)."""
    t = gguf_type(scheme, getattr(layer, "fqn", ""))
    rows, per_row = layer.shape[0], row_length(layer)
    if per_row % t.block:
        from edgeq.errors import ConfigError

        raise ConfigError(f"{layer.fqn}: rows of {per_row} weights are not whole {t.name} blocks of {t.block}",
                          "keep the layer at fp32 or fp16")
    return rows * (per_row // t.block) * t.block_bytes


def runtime_bytes(layer: Any, scheme: Scheme) -> int:
    return stored_bytes(layer, scheme)


# The types llama.cpp's CPU backend repacks at load (ggml-cpu/repack.cpp: a CPU_REPACK
# buffer of interleaved blocks, the same size as the stored tensor, filled after the mapped
# pages were read). Measured here (x86 AVX2, xllamacpp 2026.10.11549) from llama.cpp's own
# "CPU_REPACK model buffer size" on uniform files of every type edgeq writes: Q4_0 and Q4_K
# repacked to 99.6% of their linears' bytes (MiB rounding), F16, Q8_0, Q4_1, Q5_0, Q5_1,
# Q2_K, Q3_K, Q5_K and Q6_K not at all (tests/test_gguf_types.py checks it). ARM's repacks
# (e.g. Q8_0 with i8mm) are not measured here.
REPACKED_AT_LOAD = frozenset({"Q4_0", "Q4_K"})


def held_bytes(layer: Any, scheme: Scheme, bias: bool | None = None, decoder_lm: bool = False) -> int:
    """Mapped from the file at the stored size; a linear of a type llama.cpp repacks at load
    (``REPACKED_AT_LOAD``) is also held as its repacked copy: twice at the peak."""
    stored = runtime_bytes(layer, scheme)
    t = GGUF_TYPES.get(scheme)
    return 2 * stored if layer.kind == "linear" and t is not None and t.name in REPACKED_AT_LOAD else stored


# File overhead: every tensor's info (name, dims, type, offset) and its alignment padding
# to 32 bytes; the metadata (tokenizer) is counted by the fitting loop from the real file.
ALIGNMENT = 32
FILE_OVERHEAD = FileOverhead(per_op=0, per_placeholder=0, per_quantized_layer=0, per_quantized_conv=0)


def file_overhead(ops: int, placeholders: int) -> int:
    return 0


def scheme_overhead(layer: Any, scheme: Scheme) -> int:
    return 0


# llama.cpp has no encoder path in edgeq; these terms serve the LLM memory model
# (edgeq.llm.memory reads MEMORY.overhead_bytes and baseline_bytes). Measured 2026-12-02 in
# fresh processes (edgeq.llm.measure) generating after a prompt as long as the context minus
# 8 tokens, on random Llamas (hidden 128 / 3 layers / context 256 at Q4_0; hidden 256 / 4
# layers / context 512 at F32 and Q4_0): peak RSS beyond the baseline minus the mapped
# weights (held_bytes) and llama.cpp's own report of its KV, compute and logits buffers was
# 11.30, 10.29 and 10.77 MB: the server's threads and slot, the session's responses
# (overhead_bytes: their mean; checked on another shape in tests/test_gguf_backend.py).
# llama.cpp reserves its compute buffers for a batch as long as the context and touches
# them as far as a prompt reaches: after a prompt of a quarter of the context the same
# models measured 2-25% below the prediction (the prediction is for the longest prompt).
# baseline: a Python process with xllamacpp and numpy imported, 62.9-63.0 MB in the same runs.
# The other fields are encoder terms (GGUF takes no encoders).
MEMORY = MemoryTerms(act_wide=0.0, act_attn=0.0, overhead_bytes=int(10.79e6), baseline_bytes=int(62.9e6),
                     maps_embedding_tables=True, arena_at_load=True, tied_head_quantized_copies=0)

# llama.cpp allocates its KV cache (f16 by default: cache_type_k / cache_type_v, at its
# context rounded up to 256 cells), its compute buffers (planned for the largest batch: the
# artifact's context) and its logits buffer when it creates the context: a planned arena,
# whose bytes lower_lm records from llama.cpp's own report. Only the last position's logits
# are computed (n_outputs 1).
LM_MEMORY = LMMemoryTerms(tied_head_held_once=True, kv_copies=1.0, prefill_factor=0.0, delegate_workspace=0.0, planned_arena=True,
                          program_logits=LAST_POSITION, kv_dtype="float16")
