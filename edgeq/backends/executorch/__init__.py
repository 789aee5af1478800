"""ExecuTorch backend: ``.pte`` artifacts, lowered with the target's delegate chain
(XNNPACK, Core ML, Vulkan, QNN) and run in the ExecuTorch pybindings.

Modules: ``delegates`` (which delegate can lower / run here, partitioners), ``quant``
(the plan applied with torchao / PT2E), ``lowering`` (capture, lower, serialize, run),
``costs`` (bytes and memory terms), ``numerics`` (sensitivity's stand-in), ``probe``
(the fp32 lowering the planner reads the activation arena from). May import edgeq's
core modules; nothing outside ``edgeq.backends`` imports these modules directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq import schemes
from edgeq.backends import delegates_for, model_file_for
from edgeq.backends.executorch.android import (  # noqa: F401  a device runner's command line and output
    ANDROID_LOG_TAG,
    ANDROID_RUNNER,
    android_command,
    android_output_complete,
    parse_android_output,
)
from edgeq.backends.executorch.ops import (  # noqa: F401  emulation
    CPU_RUNTIMES,
    EMULATION_RUNTIME,
    accelerated_runtime,
    delegate_calls,
    op_units,
)
from edgeq.backends.executorch.costs import (  # noqa: F401  the backend's cost table
    LM_MEMORY,
    MEMORY,
    file_overhead,
    held_bytes,
    runtime_bytes,
    scheme_overhead,
    stored_bytes,
)
from edgeq.backends.executorch.probe import fp32_probe  # noqa: F401

FORMAT = "executorch"
MODEL_FILE = model_file_for(FORMAT)
# what edgeq's standalone runner imports on a board (checked before profiling over ssh)
RUNNER_MODULES: tuple[str, ...] = ("numpy", "torch", "executorch.runtime", "executorch.kernels.quantized")
RUNTIME_PACKAGE = "executorch"
DELEGATES: tuple[str, ...] = delegates_for(FORMAT)
# to_executorch's constant propagation stores constant-only lookups as their fp32 results
FOLDS_CONSTANT_LOOKUPS = True

# In an app: the Maven package of the runtime, and whether it loads the model from a file
# path (ExecuTorch's Module.load takes one, so the app copies the asset to filesDir once).
ANDROID_PACKAGE = "org.pytorch:executorch-android"
ANDROID_LOADS_FROM_PATH = True


# the schemes this format stores (block types only GGUF stores, edgeq.schemes.BLOCK_SCHEMES, are not)
SCHEMES: tuple[Any, ...] = schemes.SCHEMES
# Q4_1's grid, a scale and an offset per block of 32 (a decoder LLM's untied linears):
# 8da4w plus the input's block means times the int8 offsets (quant.offset_terms), by extra_schemes
EXTRA_SCHEMES: tuple[Any, ...] = (schemes.INT4_G32_ASYM,)


def scheme_fits(layer: Any, scheme: Any) -> str:
    """Why ``layer`` cannot take ``scheme`` here ("" when it can): one kernel per scheme, and
    only the schemes of ``SCHEMES``, plus int4-g32-asym for linears with a weight of their
    own (shape limits are the planner's)."""
    from edgeq.schemes import INT4_G32_ASYM, rtn_of

    if scheme.kernel:
        return f"ExecuTorch has one kernel per scheme here: no '{scheme.kernel}' kernel (use {scheme.name.split('@')[0]})"
    if scheme == INT4_G32_ASYM:
        if layer.kind != "linear" or getattr(layer, "tied", ""):
            return f"{scheme.name} is stored for linears with a weight of their own only (not tables or tied heads)"
        return ""
    return "" if rtn_of(scheme) in SCHEMES else f"executorch does not store {scheme.name}"


TIMES_LAYERS = True  # layer_latency times each (layer, scheme) in the runtime here


def layer_latency(module: Any, example_inputs: Any, layers: list[Any], candidates: dict[str, list[Any]],
                  threads: int, use_cache: bool = True, device: Any = None
                  ) -> tuple[dict[str, dict[str, float]], float, str]:
    """Each layer's op lowered alone with XNNPACK and timed in the ExecuTorch runtime at each
    candidate scheme, the whole fp32 program's p50, and how they were taken
    (``edgeq.backends.executorch.latency``); ``device``: ``(profile, delegates)`` of a device
    to ESTIMATE them for with the emulator instead."""
    from edgeq.backends.executorch import latency

    if device is not None:
        return latency.estimate_layer_latency(module, example_inputs, layers, candidates, threads, *device)
    return latency.layer_latency(module, example_inputs, layers, candidates, threads, use_cache)


def time_artifacts(model_files: list[Path], inputs: tuple[Any, ...], threads: int) -> list[float]:
    """Each artifact's p50 (ms) on ``inputs`` in the ExecuTorch runtime here, timed as layers
    are, the files in turn round after round (``edgeq.backends.timing.interleaved_ms``)."""
    from edgeq.backends.executorch.latency import time_artifacts as timed

    return timed([Path(f) for f in model_files], inputs, threads)


def write_latency_reference(module: Any, example_inputs: tuple[Any, ...], directory: Path) -> Path:
    """The fp32 program whose p50 anchors a plan's predicted latency (``LatencyCosts.reference_ms``),
    written into ``directory`` for ``time_artifacts``."""
    from edgeq.backends.executorch.latency import write_reference

    return write_reference(module, example_inputs, Path(directory) / "latency-reference.pte")


def extra_schemes(layer: Any, precisions: Any, decoder_lm: bool = False) -> list[Any]:
    """A decoder LLM's untied linears also take Q4_1's 4-bit grid with an offset per block
    of 32 (``int4-g32-asym``: 8da4w plus an int8 term, about 0.3 bit more a weight than
    int4-g32, whose symmetric grid cannot sit where the block's values lie). Nothing else
    beyond ``edgeq.schemes.SCHEMES``: XNNPACK's weight-only int8/int4 linears compute wrong
    numbers in executorch 1.5.1, so only the dynamic-activation kernel is offered for each."""
    from edgeq.schemes import INT4_G32_ASYM

    if decoder_lm and "int4" in precisions and not scheme_fits(layer, INT4_G32_ASYM) and layer.fits(INT4_G32_ASYM):
        return [INT4_G32_ASYM]
    return []


def delegation_key(delegate: str) -> str:
    """The name the manifest's delegation summary counts ``delegate``'s ops under."""
    return delegate


def stand_in(layer: Any, scheme: Any, weights: Any = None) -> Any:
    """``layer`` with this runtime's numerics at ``scheme``; ``weights``: a calibrated
    scheme's ``edgeq.algorithms.gptq.QuantizedWeight`` for it."""
    from edgeq.backends.executorch.numerics import stand_in as make

    return make(layer, scheme, weights)


# Calibrated algorithms (edgeq.algorithms) whose results this format stores unchanged, and
# the 4-bit grid it stores them on (the runtime's own scales, zero points and rounding).
CALIBRATED_ALGORITHMS: tuple[str, ...] = ("gptq", "awq")
# Its RTN int4 already chooses scales with torchao's scale-only HQQ (quant.torchao_config):
# the same values, bit for bit (checked in tests/test_hqq.py).
ALGORITHMS_NOT_OFFERED: dict[str, str] = {
    "hqq": "ExecuTorch's int4-gN already chooses its scales with HQQ (torchao's hqq_scale_only)"}


def gptq_grid() -> Any:
    from edgeq.algorithms.grids import SymmetricInt4

    return SymmetricInt4(bf16_scales=True, rtn="hqq_scale_only")  # quant.torchao_config's RTN int4


def lower(model: Any, target: Any, plan: Any, workdir: Path, steps: Any, strict: bool, profile: Any = None) -> Any:
    from edgeq.backends.executorch.lowering import lower as run_lowering

    return run_lowering(model, target, plan, workdir, steps, strict, profile)


def run(model_file: Path, inputs: list[tuple[Any, ...]], threads: int = 0) -> list[Any]:
    from edgeq.backends.executorch.lowering import run as run_program

    return run_program(model_file, inputs, threads)


def ops(model_file: Path, manifest: Any) -> list[Any]:
    """The artifact's ops costed for emulation (``edgeq.profiling.opgraph.Op``)."""
    from edgeq.backends.executorch.ops import ops as read_ops

    return read_ops(model_file, manifest)

# Decoder LLMs with a KV cache (edgeq.llm.session's contract); the modules import no runtime.
from edgeq.backends.executorch.llm import check_lm, lower_lm, open_lm  # noqa: E402,F401

LM_DELEGATES: tuple[str, ...] = ("xnnpack",)  # the only delegate lower_lm uses
# Precision families the LLM lowering ships (fp16 layers are not offered for decoder LLMs).
LM_PRECISIONS: tuple[str, ...] = ("fp32", "int8", "int4")
LM_UNIFORM: dict[str, Any] = {}  # a uniform --precision means edgeq.schemes.for_precision's scheme
LM_SMOOTHS = True  # 8da8w / 8da4w: XNNPACK rounds each token's input to int8
LM_ROTATES = True  # the head holds its own copy of a tied table: a rotated head costs no bytes
LM_TOKENIZER_IN_MODEL = False  # the tokenizer ships beside the model file
ENCODER_SMOOTHS: tuple[str, ...] = ()  # 8da8w rounds per token: no encoder folds offered
TAKES_ENCODERS = True


def tied_head_shares_table(scheme: Any) -> bool:
    """Never: a tied head is a tensor of its own (its own layout or a transposed copy)."""
    return False


def lm_numerics() -> Any:
    """The context the LLM planner measures in: ExecuTorch's stand-ins already compute
    integer linears with int8 dynamic activations, as its LLM lowering ships them."""
    import contextlib

    return contextlib.nullcontext()
