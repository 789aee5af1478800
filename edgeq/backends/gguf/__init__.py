"""GGUF backend: decoder LLMs written as ``.gguf`` files with a per-tensor type from the plan,
run in llama.cpp (the prebuilt CPU wheel ``xllamacpp``).

Modules: ``costs`` (the scheme → GGUF type table, bytes, memory terms), ``writer`` (a
transformers decoder → GGUF: tensor names, metadata, tokenizer), ``numerics`` (sensitivity's
stand-in: llama.cpp's block quantization of weights and of a matmul's input), ``llm`` /
``llm_session`` (lowering and an ``LMSession`` over llama.cpp). GGUF holds decoder LLMs
only: an encoder is refused before any work (``TAKES_ENCODERS``). Nothing outside
``edgeq.backends`` imports these modules directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.backends import Probe, delegates_for, model_file_for
from edgeq.backends.gguf.costs import (  # noqa: F401  the backend's cost table
    GGUF_TYPES,
    LM_MEMORY,
    MEMORY,
    file_overhead,
    fits,
    held_bytes,
    runtime_bytes,
    scheme_overhead,
    stored_bytes,
)
from edgeq.errors import ArtifactError, ConfigError

FORMAT = "gguf"
MODEL_FILE = model_file_for(FORMAT)
RUNNER_MODULES: tuple[str, ...] = ("numpy", "xllamacpp")
RUNTIME_PACKAGE = "xllamacpp"
DELEGATES: tuple[str, ...] = delegates_for(FORMAT)  # llama.cpp's device backends
FOLDS_CONSTANT_LOOKUPS = False
ENCODER_SMOOTHS: tuple[str, ...] = ()  # no encoders
TAKES_ENCODERS = False  # GGUF / llama.cpp: decoder LLMs only
# llama.cpp reads token_embd for the output when the file has no output tensor: the writer
# writes one only when the head's scheme differs from the table's


def tied_head_shares_table(scheme: Any) -> bool:
    """Always: llama.cpp reads token_embd for the output when the file has no output tensor."""
    return True


LM_TOKENIZER_IN_MODEL = True  # lower_lm writes the tokenizer into the file (it takes tokenizer=)

EMULATION_RUNTIME = "gguf"
CPU_RUNTIMES: tuple[str, ...] = ()  # no per-op emulation of llama.cpp graphs (see ops)

ANDROID_PACKAGE = ""  # not bundled into the Android demo
ANDROID_LOADS_FROM_PATH = True
ANDROID_RUNNER = ""
ANDROID_LOG_TAG = ""

LM_DELEGATES: tuple[str, ...] = ("cpu",)  # edgeq runs and verifies GGUF on llama.cpp's CPU backend
LM_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int6", "int5", "int4", "int3", "int2")
LM_UNIFORM: dict[str, Any] = {}
# llama.cpp rounds a quantized matmul's input to Q8_0 blocks of 32; the GGUF writer maps tensors by
# their source names and keeps a tied table once, so edgeq does not fold scales into it (yet)
LM_SMOOTHS = False  # a uniform --precision means edgeq.schemes.for_precision's scheme
LM_ROTATES = False  # llama.cpp rounds activations by its own kernels: not measured here
SCHEMES: tuple[Any, ...] = tuple(GGUF_TYPES)  # the schemes with a GGUF tensor type (costs.GGUF_TYPES)
EXTRA_SCHEMES: tuple[Any, ...] = ()
CALIBRATED_ALGORITHMS: tuple[str, ...] = ()  # GPTQ values are not written into GGUF blocks (yet)
ALGORITHMS_NOT_OFFERED: dict[str, str] = {
    "gptq": "edgeq writes no calibrated values into GGUF blocks (yet)",
    "hqq": "edgeq writes no calibrated values into GGUF blocks (yet)",
    "awq": "edgeq writes no calibrated values into GGUF blocks (yet)"}


def gptq_grid() -> Any:
    raise ConfigError("edgeq writes no GPTQ results into GGUF files", "use an int4-g32 (Q4_0) scheme for gguf targets")

_ENCODERS = ("GGUF holds decoder LLMs only", "use an executorch or onnx target for this model")


TIMES_LAYERS = False  # layer_latency times each (layer, scheme) in the runtime here


def layer_latency(module: Any, example_inputs: Any, layers: list[Any], candidates: dict[str, list[Any]],
                  threads: int, use_cache: bool = True, device: Any = None
                  ) -> tuple[dict[str, dict[str, float]], float, str]:
    """Not built for GGUF yet: a latency budget or a balanced objective is refused."""
    from edgeq.backends import layers_not_timed

    layers_not_timed("GGUF")


def time_artifacts(model_files: list[Path], inputs: tuple[Any, ...], threads: int) -> list[float]:
    """Not built for GGUF yet (``edgeq profile`` times GGUF artifacts)."""
    raise NotImplementedError


def write_latency_reference(module: Any, example_inputs: tuple[Any, ...], directory: Path) -> Path:
    """Not built for GGUF yet: no GGUF plan predicts a latency (``TIMES_LAYERS`` False)."""
    raise NotImplementedError


def extra_schemes(layer: Any, precisions: Any, decoder_lm: bool = False) -> list[Any]:
    """No candidates beyond ``edgeq.schemes.SCHEMES`` (one kernel per GGUF type)."""
    return []


def scheme_fits(layer: Any, scheme: Any) -> str:
    """Why ``layer`` cannot be stored at ``scheme`` in GGUF ("" when it can): no GGUF type, or
    rows that are not whole blocks."""
    from edgeq.backends.gguf.costs import row_length

    if scheme.kernel:
        return f"llama.cpp has one kernel per GGUF type: no '{scheme.kernel}' kernel"
    t = GGUF_TYPES.get(scheme)
    if t is None:
        return f"{scheme.name} has no GGUF tensor type"
    if row_length(layer) % t.block:
        return f"rows of {row_length(layer)} are not whole {t.name} blocks of {t.block}"
    return ""


def delegation_key(delegate: str) -> str:
    return delegate


def refuse_encoder(task: str) -> None:
    raise ConfigError(f"{_ENCODERS[0]}; this model's task is {task}", _ENCODERS[1])


def fp32_probe(loaded: Any, resolved: Any, facts: Any, fp32_weight_bytes: int = 0, steps: Any = None,
               use_cache: bool = True) -> Probe:
    refuse_encoder(getattr(loaded, "task", "not causal-lm"))
    raise AssertionError  # unreachable


def stand_in(layer: Any, scheme: Any) -> Any:
    from edgeq.backends.gguf.numerics import stand_in as make

    return make(layer, scheme)


def lm_numerics() -> Any:
    from edgeq.backends.gguf.numerics import lm_numerics as make

    return make()


def lower(model: Any, target: Any, plan: Any, workdir: Path, steps: Any, strict: bool, profile: Any = None) -> Any:
    refuse_encoder(getattr(model, "task", "not causal-lm"))


def run(model_file: Path, inputs: list[tuple[Any, ...]], threads: int = 0) -> list[Any]:
    """With no inputs, load ``model_file`` in llama.cpp and run one step (the integrity check's
    "loads"); a GGUF artifact takes token ids through its ``LMSession``, not input tensors."""
    if inputs:
        raise ArtifactError("a GGUF artifact is a decoder LLM: run it with 'edgeq run ARTIFACT --prompt ...'",
                            "edgeq run ARTIFACT --prompt TEXT")
    open_lm(model_file, threads=threads).close()
    return []


def ops(model_file: Path, manifest: Any) -> list[Any]:
    raise ArtifactError("edgeq has no per-op emulation of llama.cpp graphs", "profile it on the host: edgeq profile ARTIFACT")


def op_units(*args: Any, **kwargs: Any) -> Any:
    raise ArtifactError("edgeq has no per-op emulation of llama.cpp graphs", "profile it on the host")


def accelerated_runtime(*args: Any, **kwargs: Any) -> str:
    raise ArtifactError("edgeq has no per-op emulation of llama.cpp graphs", "profile it on the host")


def delegate_calls(*args: Any, **kwargs: Any) -> Any:
    raise ArtifactError("edgeq has no per-op emulation of llama.cpp graphs", "profile it on the host")


def _no_android(*args: Any, **kwargs: Any) -> Any:
    raise ArtifactError("edgeq does not bundle GGUF artifacts into the Android demo", "use an executorch or onnx target")


android_command = android_output_complete = parse_android_output = _no_android

from edgeq.backends.gguf.llm import check_lm  # noqa: E402,F401


def lower_lm(model: Any, plan: Any, workdir: Path, max_context: int, steps: Any = None, tokenizer: Any = None,
             owned: bool = False) -> Any:  # the writer reads the module's weights: owned changes nothing
    from edgeq.backends.gguf.llm import lower_lm as run_lowering

    return run_lowering(model, plan, workdir, max_context, steps, tokenizer=tokenizer)


def open_lm(artifact_dir: Path, model_file: Any = None, threads: int = 0) -> Any:
    from edgeq.backends.gguf.llm_session import open_lm as open_session

    return open_session(artifact_dir, model_file, threads=threads)
