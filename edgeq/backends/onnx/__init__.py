"""ONNX backend: ``.onnx`` artifacts exported with torch.onnx (dynamo), quantized per
layer with ONNX Runtime's quantizers, and run in ONNX Runtime.

Modules: ``graph`` (the exported graph: layer ↔ node mapping, rewrites), ``lowering``
(export, quantize, check, run), ``costs`` (bytes and memory terms), ``numerics``
(sensitivity's stand-in), ``llm`` / ``llm_session`` (decoder LLMs with a KV cache and
their ONNX Runtime session), ``llm_fusion`` / ``llm_attention`` (the LLM graph's fusions). Nothing outside ``edgeq.backends`` imports these modules directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq import schemes
from edgeq.backends import Probe
from edgeq.backends.onnx.costs import (  # noqa: F401  the backend's cost table
    LM_MEMORY,
    MEMORY,
    file_overhead,
    held_bytes,
    runtime_bytes,
    scheme_overhead,
    stored_bytes,
)
from edgeq.backends import delegates_for, model_file_for
from edgeq.backends.onnx.android import (  # noqa: F401  a device runner's command line and output
    ANDROID_LOG_TAG,
    ANDROID_RUNNER,
    android_command,
    android_output_complete,
    parse_android_output,
)
from edgeq.backends.onnx.ops import (  # noqa: F401  emulation
    CPU_RUNTIMES,
    EMULATION_RUNTIME,
    accelerated_runtime,
    delegate_calls,
    op_units,
)

FORMAT = "onnx"
MODEL_FILE = model_file_for(FORMAT)
# what edgeq's standalone runner imports on a board (checked before profiling over ssh)
RUNNER_MODULES: tuple[str, ...] = ("numpy", "onnxruntime")
RUNTIME_PACKAGE = "onnxruntime"
DELEGATES: tuple[str, ...] = delegates_for(FORMAT)  # execution providers, short names (costs.EXECUTION_PROVIDERS)
FOLDS_CONSTANT_LOOKUPS = False  # the export keeps constant lookups as they are

# In an app: the Maven package of the runtime; ONNX Runtime reads the model from bytes.
ANDROID_PACKAGE = "com.microsoft.onnxruntime:onnxruntime-android"
ANDROID_LOADS_FROM_PATH = False


# the schemes this format stores (block types only GGUF stores, edgeq.schemes.BLOCK_SCHEMES, are not)
SCHEMES: tuple[Any, ...] = schemes.SCHEMES
# 8-bit MatMulNBits at blocks of 32 (linears, tables); Q4_1's grid, a scale and an offset per
# block of 32 (a decoder LLM's untied linears): offered per layer by extra_schemes
EXTRA_SCHEMES: tuple[Any, ...] = (schemes.INT8_G32, schemes.INT4_G32_ASYM)


def scheme_fits(layer: Any, scheme: Any) -> str:
    """Why ``layer`` cannot take ``scheme`` here ("" when it can): the schemes of ``SCHEMES``,
    plus the kernel choice for linears and int8-g32 for linears and embeddings (shape limits
    are the planner's)."""
    from edgeq.backends.onnx.costs import MATMUL_INTEGER_KERNELS
    from edgeq.schemes import INT4_G32_ASYM, INT8_G32, default_kernel, rtn_of

    if scheme.kernel and (scheme.kernel not in MATMUL_INTEGER_KERNELS or scheme.bits != 8 or scheme.group
                          or scheme.algorithm != "rtn"):
        kernels = " and ".join(f"int8@{k}" for k in MATMUL_INTEGER_KERNELS)
        return f"ONNX Runtime has no '{scheme.kernel}' kernel for {scheme.name.split('@')[0]} ({kernels} are)"
    if scheme.kernel and layer.kind != "linear":
        return f"{scheme.name} is a kernel for linears (MatMul) only"
    if scheme == INT8_G32 and layer.kind not in ("linear", "embedding"):
        return f"{scheme.name} is stored for linears (MatMulNBits) and embeddings (GatherBlockQuantized) only"
    if scheme == INT4_G32_ASYM:
        if layer.kind != "linear" or getattr(layer, "tied", ""):
            return f"{scheme.name} is stored for linears with a weight of their own only (not tables or tied heads)"
        return ""
    if scheme != INT8_G32 and rtn_of(default_kernel(scheme)) not in SCHEMES:
        return f"onnx does not store {scheme.name}"
    return ""


def extra_schemes(layer: Any, precisions: Any, decoder_lm: bool = False) -> list[Any]:
    """Candidates beyond ``edgeq.schemes.SCHEMES`` for ``layer``: an encoder's int8 linears
    may also run as ``quantize_dynamic``'s per-channel ``MatMulInteger`` (faster, less
    accurate; with 8-bit or, ``reduce_range``, 7-bit weight codes) or as 8-bit ``MatMulNBits``
    at blocks of 32 (more accurate). A decoder LLM's
    linears and embedding table take 8-bit blocks of 32 (``int8-g32``, its ``LM_UNIFORM``
    int8), not ``MatMulInteger`` (its lowering ships one kernel per scheme), and its untied
    linears also Q4_1's 4-bit grid with an fp32 offset per block of 32 (``int4-g32-asym``: a
    fraction of a bit more a weight than int4-g32, whose integer zero point cannot put the grid
    where the block's minimum is)."""
    from edgeq.backends.onnx.costs import MATMUL_INTEGER_KERNELS
    from edgeq.schemes import INT4_G32_ASYM, INT8_G32, Scheme

    if decoder_lm:
        wanted = ([INT8_G32] if "int8" in precisions and layer.kind in ("linear", "embedding") else []) + \
            ([INT4_G32_ASYM] if "int4" in precisions and not scheme_fits(layer, INT4_G32_ASYM) else [])
        return [s for s in wanted if layer.fits(s)]
    if "int8" not in precisions:
        return []
    if layer.kind == "embedding":  # GatherBlockQuantized at blocks of 32 (int8's is one uint8 scale a table)
        return [INT8_G32] if layer.fits(INT8_G32) else []
    if layer.kind != "linear":
        return []
    return [s for s in (*(Scheme("int", 8, kernel=k) for k in MATMUL_INTEGER_KERNELS), INT8_G32) if layer.fits(s)]


def delegation_key(delegate: str) -> str:
    """The name the manifest's delegation summary counts ``delegate``'s ops under (the EP's)."""
    from edgeq.backends.onnx.costs import EXECUTION_PROVIDERS

    return EXECUTION_PROVIDERS.get(delegate, delegate)


def fp32_probe(loaded: Any, resolved: Any, facts: Any, fp32_weight_bytes: int, steps: Any,
               use_cache: bool = True) -> Probe:
    """No lowering needed: ONNX Runtime plans its arena at run time (the fitted terms
    cover it) and the file's own bytes are estimated from the captured program's size."""
    return Probe(activation_bytes=0, file_overhead_bytes=file_overhead(facts.ops, facts.placeholders))


def stand_in(layer: Any, scheme: Any, weights: Any = None) -> Any:
    """``layer`` with this runtime's numerics at ``scheme``; ``weights``: a calibrated
    scheme's ``edgeq.algorithms.gptq.QuantizedWeight`` for it."""
    from edgeq.backends.onnx.numerics import stand_in as make

    return make(layer, scheme, weights)


TIMES_LAYERS = True  # layer_latency times each (layer, scheme) in the runtime here


def layer_latency(module: Any, example_inputs: Any, layers: list[Any], candidates: dict[str, list[Any]],
                  threads: int, use_cache: bool = True, device: Any = None
                  ) -> tuple[dict[str, dict[str, float]], float, str]:
    """Each layer's op timed alone in ONNX Runtime at each candidate scheme, the whole fp32
    graph's p50, and how they were taken (``edgeq.backends.onnx.latency``); ``device``:
    ``(profile, delegates)`` of a device to ESTIMATE them for with the emulator instead."""
    from edgeq.backends.onnx import latency

    if device is not None:
        return latency.estimate_layer_latency(module, example_inputs, layers, candidates, threads, *device)
    return latency.layer_latency(module, example_inputs, layers, candidates, threads, use_cache)


def time_artifacts(model_files: list[Path], inputs: tuple[Any, ...], threads: int) -> list[float]:
    """Each artifact's p50 (ms) on ``inputs`` in ONNX Runtime here, timed as layers are, the
    files in turn round after round (``edgeq.backends.timing.interleaved_ms``)."""
    from edgeq.backends.onnx.latency import time_artifacts as timed

    return timed([Path(f) for f in model_files], inputs, threads)


def write_latency_reference(module: Any, example_inputs: tuple[Any, ...], directory: Path) -> Path:
    """The fp32 graph whose p50 anchors a plan's predicted latency (``LatencyCosts.reference_ms``),
    written into ``directory`` for ``time_artifacts``."""
    from edgeq.backends.onnx.latency import write_reference

    return write_reference(module, example_inputs, Path(directory) / "latency-reference.onnx")


# Calibrated algorithms (edgeq.algorithms) whose results this format stores unchanged, and
# the 4-bit grid it stores them on (the runtime's own scales, zero points and rounding).
CALIBRATED_ALGORITHMS: tuple[str, ...] = ("gptq", "hqq", "awq")
ALGORITHMS_NOT_OFFERED: dict[str, str] = {}


def gptq_grid() -> Any:
    from edgeq.algorithms.grids import AsymmetricUint4

    return AsymmetricUint4()


def lm_numerics() -> Any:
    """A context in which ``stand_in`` gives decoder-LLM numerics (int4 linears with int8
    dynamic activations, as ``lower_lm`` ships them); the LLM planner measures inside it."""
    from edgeq.backends.onnx.numerics import lm_numerics as make

    return make()


def lower(model: Any, target: Any, plan: Any, workdir: Path, steps: Any, strict: bool, profile: Any = None) -> Any:
    from edgeq.backends.onnx.lowering import lower as run_lowering

    return run_lowering(model, target, plan, workdir, steps, strict, profile)


def run(model_file: Path, inputs: list[tuple[Any, ...]], threads: int = 0) -> list[Any]:
    from edgeq.backends.onnx.lowering import run as run_session

    return run_session(model_file, inputs, threads)


def ops(model_file: Path, manifest: Any) -> list[Any]:
    """The artifact's ops costed for emulation (``edgeq.profiling.opgraph.Op``)."""
    from edgeq.backends.onnx.ops import ops as read_ops

    return read_ops(model_file, manifest)


LM_DELEGATES: tuple[str, ...] = ("cpu",)  # decoder LLMs run on ONNX Runtime's CPU provider
# Precision families the LLM lowering ships (fp16 layers are not offered for decoder LLMs).
LM_PRECISIONS: tuple[str, ...] = ("fp32", "int8", "int4")
# What a uniform --precision means for a decoder LLM where it is not edgeq.schemes.for_precision's:
# int8 is 8-bit blocks of 32 (linears, head and table), as llama.cpp's Q8_0 stores it. Its
# linears compute with int8 activations per block of the same size, and at 32 the activations'
# rounding costs SmolLM2-135M a third of what it costs at int8's blocks of 128 (eager
# stand-ins on the held-out text: perplexity +0.59% vs +1.22% for the linears alone).
LM_UNIFORM: dict[str, Any] = {"int8": schemes.INT8_G32}
LM_SMOOTHS = True  # a decoder's quantized MatMulNBits round their input to int8 (accuracy_level=4)
LM_ROTATES = False  # a tied head shares the table's tensor: rotation would store the matrix twice
LM_TOKENIZER_IN_MODEL = False  # the tokenizer ships beside the model file
ENCODER_SMOOTHS = ("int8@matmulinteger", "int8@matmulinteger7")  # per-tensor uint8 inputs: an encoder's "input" folds apply
TAKES_ENCODERS = True


def tied_head_shares_table(scheme: Any) -> bool:
    """4-bit or 8-bit blocks (round to nearest): the table's GatherBlockQuantized reads the
    head's MatMulNBits tensor (``llm_tied``). Other schemes: a tensor of its own (a transposed copy)."""
    from edgeq.backends.onnx.llm_tied import shares_table

    return shares_table(scheme)


def check_lm(config: Any) -> None:
    """Nothing to refuse ahead: the ONNX export takes any attention torch.onnx captures (the
    fused contrib ops replace only the patterns they match)."""


def lower_lm(model: Any, plan: Any, workdir: Path, max_context: int, steps: Any = None,
             calibrated: dict[str, Any] | None = None, owned: bool = False) -> Any:
    """A causal LM exported with its KV cache (``edgeq.llm.session.LoweredLM``);
    ``calibrated``: ``{fqn: QuantizedWeight}`` of the plan's calibrated (GPTQ) layers
    (``owned`` changes nothing: the ONNX export quantizes the graph, not the module)."""
    from edgeq.backends.onnx.llm import lower_lm as run_lowering

    return run_lowering(model, plan, workdir, max_context, steps, calibrated)


def open_lm(artifact_dir: Path, model_file: Any = None, threads: int = 0) -> Any:
    """An ``edgeq.llm.session.LMSession`` on an LLM artifact in ONNX Runtime."""
    from edgeq.backends.onnx.llm_session import open_lm as open_session

    return open_session(artifact_dir, model_file, threads=threads)
