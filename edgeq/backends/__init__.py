"""Backends: one subpackage per artifact format, behind one protocol.

A backend owns everything that depends on its format, and nothing outside
``edgeq/backends/`` asks which format it is: the planner, the memory model, sensitivity
and export call the backend ``get_backend(target.format)`` returns. What a backend
provides (``Backend``):

- what it can take, as data: ``delegates`` a target may name, ``model_file``, the
  runtime package, whether its lowering folds constant-only lookups;
- costs (``<format>/costs.py``): ``stored_bytes`` / ``runtime_bytes`` / ``held_bytes`` per
  (layer, scheme), ``file_overhead`` and ``scheme_overhead``, the memory model's fitted
  terms (``MEMORY``: ``MemoryTerms``) and how its runtime holds an LLM's cache and
  activations (``LM_MEMORY``: ``LMMemoryTerms``);
- emulation (``<format>/ops.py``): the artifact's ops with their work, the runtimes its
  CPU ops run in (``CPU_RUNTIMES``), which unit each op runs on and the calls a delegate costs;
- ``fp32_probe``: what an fp32 lowering tells the planner (activation arena, file bytes);
- ``stand_in``: one layer with the numerics the runtime gives it, for sensitivity;
- ``lower`` (→ ``Lowered``) and ``run`` (the artifact in its real runtime);
- for decoder LLMs, ``check_lm`` (refuses, before any work, a model it cannot lower),
  ``lower_lm`` (→ ``edgeq.llm.session.LoweredLM``: a model with its KV
  cache) and ``open_lm`` (→ an ``LMSession`` over the artifact in its runtime).

Adding a format is adding a subpackage that provides these, and one line in ``_REGISTRY``
(its module, its artifact's model file name and the delegates a target may name).
Backends are imported lazily; importing this package imports no runtime.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeq.errors import ConfigError, did_you_mean

@dataclass(frozen=True)
class Registered:
    """A format's entry: the subpackage implementing it and, as data readable without
    importing it, its artifact's model file name and the delegates (or execution
    providers) a target may name for it."""

    module: str
    model_file: str
    delegates: tuple[str, ...]
    # the precision families a target may list (the format stores a scheme of each)
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")


_REGISTRY = {
    "executorch": Registered("edgeq.backends.executorch", "model.pte", ("qnn", "coreml", "vulkan", "xnnpack")),
    "onnx": Registered("edgeq.backends.onnx", "model.onnx",
                       ("qnn", "coreml", "nnapi", "xnnpack", "openvino", "dnnl", "cpu")),
    "gguf": Registered("edgeq.backends.gguf", "model.gguf", ("cpu", "metal", "vulkan", "cuda"),
                       ("fp32", "fp16", "int8", "int6", "int5", "int4", "int3", "int2")),
}
FORMATS: tuple[str, ...] = tuple(_REGISTRY)
MODEL_FILES: tuple[str, ...] = tuple(r.model_file for r in _REGISTRY.values())  # one per format, in FORMATS order


def model_file_for(fmt: str) -> str:
    """The model file name in an artifact of format ``fmt`` (no backend import)."""
    return _REGISTRY[fmt].model_file


def delegates_for(fmt: str) -> tuple[str, ...]:
    """What a target of format ``fmt`` may list under ``delegates:`` (no backend import)."""
    return _REGISTRY[fmt].delegates


def precisions_for(fmt: str) -> tuple[str, ...]:
    """What a target of format ``fmt`` may list under ``precisions:`` (no backend import)."""
    return _REGISTRY[fmt].precisions


def layers_not_timed(runtime: str) -> None:
    """The ``layer_latency`` of a backend that does not time layers yet: a latency budget or a
    balanced objective on its targets is refused (``ConfigError``)."""
    raise ConfigError(f"latency budgets and objective: balanced are not available for {runtime} targets yet "
                      "(edgeq times layers per scheme in ONNX Runtime only)",
                      "drop --latency-budget / budgets.latency_ms / objective: balanced, or use an ONNX target")


def check_stored(schemes: Any, backend: Any) -> None:
    """``ConfigError`` naming the first scheme in ``schemes`` that ``backend`` does not store
    (its ``SCHEMES`` and ``EXTRA_SCHEMES``, or a calibrated scheme or another kernel over one of
    them: whether the format has that kernel is its ``scheme_fits``' to say)."""
    from edgeq.schemes import default_kernel, rtn_of

    stored = set(backend.SCHEMES) | set(backend.EXTRA_SCHEMES)
    for s in schemes:
        if default_kernel(rtn_of(s)) not in stored:
            raise ConfigError(f"{backend.FORMAT} artifacts do not store {s.name}",
                              f"{backend.FORMAT} stores {', '.join(x.name for x in backend.SCHEMES)}")


@dataclass(frozen=True)
class MemoryTerms:
    """A runtime's fitted memory-model terms (see ``edgeq.planning.memory``; values and the
    measurements behind them live in each backend's ``costs.py``)."""

    act_wide: float  # x (tokens x widest linear output x 4 B)
    act_attn: float  # x (heads x tokens^2 x 4 B)
    overhead_bytes: int  # model-independent growth past the baseline
    baseline_bytes: int  # a Python process with the runtime imported (measured, not fitted)
    maps_embedding_tables: bool  # embedding tables read in place from the file: no load-time copy
    arena_at_load: bool  # the planned activation arena is allocated before weights are packed
    tied_head_quantized_copies: int  # extra fp32 copies of a tied LM head whose table is quantized


EVERY_POSITION, LAST_POSITION = "every position", "last position"  # LMMemoryTerms.program_logits
# how a runtime holds the KV cache between calls (LMMemoryTerms.kv_layout, the manifest's llm.kv_cache_layout):
# a past fed in and a longer present returned per call, or one buffer of max-context positions
# allocated when the session opens and written in place
KV_GROWN, KV_STATIC = "grown per call", "one buffer at max context"


@dataclass(frozen=True)
class LMMemoryTerms:
    """How one runtime holds a decoder LLM's cache and activations (measured; the values are
    each backend's ``LM_MEMORY``, in its ``costs.py``, read by ``edgeq.llm.memory``).

    ``kv_copies``: KV caches of ``context`` tokens alive at the peak beyond a planned arena;
    ``prefill_factor``: held bytes per byte of ``prefill_arena_bytes`` for a runtime without a
    planned arena; ``delegate_workspace``: bytes a delegate allocates beside a planned arena on its
    first run, per byte of the arena's activations (the delegate's own intermediates, planned
    like the arena for a prefill as long as the context);
    ``session_overhead_bytes``: what an LLM session holds beyond the runtime's encoder intercept
    (negative: short of it, when the intercept carries encoder workspace an LLM session lacks);
    ``program_logits``: the positions a call of the lowered program returns logits for
    (``"every position"`` or ``"last position"``: then neither the arena nor the caller holds
    the other positions' logits); ``kv_dtype``: the dtype the runtime holds the KV cache in
    by default (what planning counts before a lowering reports the real cache); ``kv_layout``:
    how a runtime without a planned arena holds the cache by default (``KV_GROWN`` / ``KV_STATIC``;
    an artifact's manifest says which its lowering wrote).
    """

    kv_copies: float
    prefill_factor: float
    delegate_workspace: float
    session_overhead_bytes: int = 0
    planned_arena: bool = False  # the runtime plans its arena (static cache + activations) ahead of time
    program_logits: str = EVERY_POSITION  # or LAST_POSITION
    kv_dtype: str = "float32"
    kv_layout: str = KV_GROWN
    # a tied head stored as its table's tensor is held once too (llama.cpp maps the one tensor;
    # ONNX Runtime folds the table's view into a copy and prepacks the head: two)
    tied_head_held_once: bool = False
    # the load converts weights beside their stored bytes, so it can be the peak
    # (edgeq.planning.memory.load_bytes; llama.cpp maps every tensor as stored)
    load_copy: bool = False


@dataclass(frozen=True)
class FileOverhead:
    """A format's file bytes beyond its weights (fitted per format, see its ``costs.py``):
    at fp32, per op and per placeholder of the captured program; plus, for each layer
    stored at another scheme, its scale tensors' and dequantizing ops' entries."""

    per_op: int
    per_placeholder: int
    per_quantized_layer: int
    per_quantized_conv: int

    def fp32(self, ops: int, placeholders: int) -> int:
        return self.per_op * ops + self.per_placeholder * placeholders

    def of_scheme(self, layer: Any, scheme: Any) -> int:
        if scheme.is_float and scheme.bits == 32:
            return 0
        return self.per_quantized_conv if layer.kind == "conv" else self.per_quantized_layer


@dataclass(frozen=True)
class Probe:
    """What the planner learns before planning: the activation arena the runtime plans
    (0 where the format has none to read) and the file's non-weight bytes."""

    activation_bytes: int
    file_overhead_bytes: int


@dataclass
class Lowered:
    model_file: Path
    delegates_used: list[str]  # delegates that took at least one op, in chain order
    delegation: dict[str, Any]  # delegated_ops, portable_op_count, portable_ops, ...
    layer_schemes: dict[str, str]  # fqn → name of the scheme actually applied ("unused": never called)
    runtime: str  # e.g. "ExecuTorch 1.5.1 pybindings"
    runnable_here: bool = True  # False when the delegate needs hardware/OS not present
    not_runnable_reason: str = ""
    reference_file: Path | None = None  # an equivalent artifact that does run here
    reference_runtime: str = ""
    planned_activation_bytes: int = 0  # the runtime's planned activation arena, where the format has one
    folded_layers: dict[str, int] = field(default_factory=dict)  # fqn → bytes of the constant stored instead
    extra_files: list[Path] = field(default_factory=list)  # shipped beside the model file (e.g. ops.json)
    algorithms: dict[str, dict[str, Any]] = field(default_factory=dict)  # fqn → calibrated algorithm and its data
    smoothing: dict[str, Any] | None = None  # edgeq.algorithms.smooth.smooth_encoder's record (None: not tried)


class Backend(Protocol):
    """What every format's subpackage provides (module-level names)."""

    FORMAT: str
    MODEL_FILE: str
    RUNTIME_PACKAGE: str  # the package whose version the manifest records
    RUNNER_MODULES: tuple[str, ...]  # what the standalone runner imports (checked on a board)
    DELEGATES: tuple[str, ...]
    FOLDS_CONSTANT_LOOKUPS: bool
    MEMORY: MemoryTerms
    EMULATION_RUNTIME: str  # whose per-run fixed costs the emulator adds
    CPU_RUNTIMES: tuple[str, ...]
    LM_MEMORY: LMMemoryTerms
    LM_DELEGATES: tuple[str, ...]  # the delegates its LLM lowering uses
    LM_PRECISIONS: tuple[str, ...]  # the precisions its LLM lowering ships
    LM_UNIFORM: dict[str, Any]  # precision → the scheme a uniform LLM plan takes, where not for_precision's
    LM_SMOOTHS: bool  # its LLM linears round their input to int8: edgeq.algorithms.smooth folds apply
    ENCODER_SMOOTHS: tuple[str, ...]  # schemes whose encoder linears take smooth.smooth_encoder's input folds
    LM_ROTATES: bool  # edgeq.algorithms.rotate applies: its LLM linears round their input and its head has its own copy
    SCHEMES: tuple[Any, ...]  # the RTN schemes its files store (calibrated ones: CALIBRATED_ALGORITHMS)
    LM_TOKENIZER_IN_MODEL: bool  # lower_lm writes the tokenizer into the model file (it takes tokenizer=)
    TAKES_ENCODERS: bool  # False: decoder LLMs only (an encoder is refused before any work)
    EXTRA_SCHEMES: tuple[Any, ...]  # schemes only this format stores, offered per layer by extra_schemes
    CALIBRATED_ALGORITHMS: tuple[str, ...]  # calibrated algorithms whose results the format stores
    ALGORITHMS_NOT_OFFERED: dict[str, str]  # algorithm → why the format does not offer it
    ANDROID_PACKAGE: str  # the runtime's Android library ("" = cannot be bundled)
    ANDROID_LOADS_FROM_PATH: bool
    ANDROID_RUNNER: str
    ANDROID_LOG_TAG: str

    def tied_head_shares_table(self, scheme: Any) -> bool:
        """Whether a tied LM head at ``scheme``, its table's scheme too, is stored as the table's
        tensor (one tensor in the file: ``edgeq.planning.shared`` plans the pair jointly)."""
        ...

    def stored_bytes(self, layer: Any, scheme: Any) -> int: ...
    def runtime_bytes(self, layer: Any, scheme: Any) -> int: ...
    # decoder_lm: the layer is lowered by lower_lm (whose kernels may hold another layout)
    def held_bytes(self, layer: Any, scheme: Any, bias: bool | None = None, decoder_lm: bool = False) -> int: ...
    def file_overhead(self, ops: int, placeholders: int) -> int: ...
    def scheme_overhead(self, layer: Any, scheme: Any) -> int: ...
    def fp32_probe(self, loaded: Any, resolved: Any, facts: Any, steps: Any, use_cache: bool) -> Probe: ...
    def stand_in(self, layer: Any, scheme: Any) -> Any: ...
    def lower(self, model: Any, target: Any, plan: Any, workdir: Path, steps: Any, strict: bool,
              profile: Any = None) -> Lowered: ...
    def run(self, model_file: Path, inputs: list[tuple[Any, ...]], threads: int = 0) -> list[Any]: ...
    def check_lm(self, config: Any) -> None: ...  # refuses, before any work, a model lower_lm cannot take
    # calibrated: {fqn: QuantizedWeight} (GPTQ layers); owned: model is a copy made for this
    # lowering alone, which it may change in place (a 1B model's fp32 copy is 5 GB)
    def lower_lm(self, model: Any, plan: Any, workdir: Path, max_context: int, steps: Any = None,
                 calibrated: Any = None, owned: bool = False) -> Any: ...
    def scheme_fits(self, layer: Any, scheme: Any) -> str: ...  # why layer cannot be stored at scheme ("": it can)
    # candidates beyond edgeq.schemes.SCHEMES: other kernels of a scheme, schemes only this format stores
    def extra_schemes(self, layer: Any, precisions: Any, decoder_lm: bool = False) -> list[Any]: ...
    TIMES_LAYERS: bool  # whether layer_latency times layers here (else it raises ConfigError)
    # per layer and scheme, its op's ms; the whole fp32 graph's ms; how they were taken (a ConfigError: not available)
    def layer_latency(self, module: Any, example_inputs: Any, layers: list[Any], candidates: dict[str, list[Any]],
                      threads: int, use_cache: bool = True, device: Any = None
                      ) -> tuple[dict[str, dict[str, float]], float, str]: ...  # device: (profile, delegates) to estimate for
    # each file's p50 ms here, the files timed in turn (edgeq.backends.timing.interleaved_ms)
    def time_artifacts(self, model_files: list[Path], inputs: tuple[Any, ...], threads: int) -> list[float]: ...
    # the fp32 graph whose p50 anchors a predicted latency (LatencyCosts.reference_ms), written into a directory
    def write_latency_reference(self, module: Any, example_inputs: Any, directory: Path) -> Path: ...
    def gptq_grid(self) -> Any: ...  # the 4-bit grid calibrated algorithms round onto (with CALIBRATED_ALGORITHMS)
    def open_lm(self, model_file: Path) -> Any: ...
    def lm_numerics(self) -> Any: ...  # a context in which stand_in gives the LLM lowering's numerics
    def delegation_key(self, delegate: str) -> str: ...
    def ops(self, model_file: Path, manifest: Any) -> Any: ...
    def op_units(self, ops: list[Any], delegates: list[str], accel_for: Any) -> Any: ...
    def accelerated_runtime(self, op: Any, unit: str) -> str: ...
    def delegate_calls(self, ops: list[Any], units: list[Any], cpu_runtime: Any) -> Any: ...
    def android_command(self, *args: Any, **kwargs: Any) -> Any: ...
    def android_output_complete(self, *args: Any, **kwargs: Any) -> Any: ...
    def parse_android_output(self, *args: Any, **kwargs: Any) -> Any: ...


def get_backend(fmt: str) -> Backend:
    """The backend for artifact format ``fmt``; an unknown format is an error."""
    if fmt not in _REGISTRY:
        raise ConfigError(f"unknown artifact format '{fmt}'{did_you_mean(str(fmt), FORMATS)}",
                          f"formats: {', '.join(FORMATS)}")
    return importlib.import_module(_REGISTRY[fmt].module)  # type: ignore[return-value]


@functools.cache
def cpu_runtimes() -> tuple[str, ...]:
    """Every format's CPU runtimes as the emulator names them (e.g. XNNPACK, ExecuTorch's
    portable kernels, ONNX Runtime's CPU provider): whose efficiency factors CPU ops use."""
    return tuple(r for fmt in FORMATS for r in get_backend(fmt).CPU_RUNTIMES)


def silence_native_stderr():
    """Hide what native runtimes print straight to fd 2 (e.g. XNNPACK's cpuinfo probing).

    Python-level errors still surface as exceptions; with ``EDGEQ_DEBUG=1`` (set by
    ``--debug``) nothing is hidden.
    """
    import contextlib
    import os
    import sys

    @contextlib.contextmanager
    def _silenced():
        if os.environ.get("EDGEQ_DEBUG") == "1":
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    return _silenced()
