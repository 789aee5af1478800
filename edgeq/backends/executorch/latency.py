"""What a layer costs in time at each scheme in ExecuTorch: its op alone, timed here.

Each (layer shape, scheme) is quantized and lowered exactly as the artifact's lowering does
it (``quant.quantized_module`` on a one-layer module, captured and lowered with the
XNNPACK partitioner: the delegate that runs on this host's CPU) and timed in the ExecuTorch
runtime (the pybindings the artifact is verified with, XNNPACK's threadpool at the
target's threads) on an input of the shape the layer sees in the model. The p50 is taken
as for every backend (``edgeq.backends.timing``); the exported artifact is timed the same
way. Layers with the same shapes share one timing; a calibrated scheme (GPTQ, AWQ) stores
its RTN scheme's layout, so it is timed as that scheme. The rest of the graph (attention,
norms, activations; layer kinds not built here, e.g. convolutions, at fp32) is the fp32
program's own p50 minus its layers' fp32 timings.

For a device that is not this host's kind (``estimate_layer_latency``) the same one-layer
programs (and the fp32 program) are costed by the emulator's per-op roofline for the device
profile and its delegate chain: an ESTIMATE, labelled so.

Timings are cached (``<cache>/latency``) keyed by ExecuTorch's version, this CPU, the
threads, the shapes and the scheme; the whole-model timing by the weights and inputs too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeq.backends.timing import (LatencyCache, case_key, emulated_threads_and_clock, how_timed, layer_cases,
                                   model_key, p50_ms)

TIMED_KINDS = ("linear", "embedding")


def layer_latency(module: Any, example_inputs: tuple[Any, ...], layers: list[Any], candidates: dict[str, list[Any]],
                  threads: int, use_cache: bool = True) -> tuple[dict[str, dict[str, float]], float, str]:
    """``({fqn: {scheme name: ms}}, whole fp32 program ms, how they were taken)`` on this host.

    Every layer in ``candidates`` is timed at each of its schemes and at fp32 (the
    remainder's reference); a layer kind not built here or never called gets 0 at every
    scheme and stays in the remainder at its fp32 time."""
    from edgeq.backends.executorch.lowering import _version

    set_threads(threads)
    cache = LatencyCache(f"executorch-layers-{_version()}")
    timed: dict[str, float] = {}

    def cost(key: str, program: "_LazyProgram") -> float:
        found = cache.get(key) if use_cache else timed.get(key)
        if found is None:
            found = time_program(program.build(), (program.x,))
            timed[key] = found
            cache.put(key, found)
        return found

    out = _each_layer(module, example_inputs, layers, candidates, threads, cost)
    cache.save()
    return out, _whole_fp32(module, example_inputs, threads, use_cache), how_timed(
        f"ExecuTorch {_version()} pybindings, XNNPACK", threads)


def estimate_layer_latency(module: Any, example_inputs: tuple[Any, ...], layers: list[Any],
                           candidates: dict[str, list[Any]], threads: int, profile: Any,
                           delegates: list[str]) -> tuple[dict[str, dict[str, float]], float, str]:
    """``layer_latency``'s figures as the emulator ESTIMATES them for ``profile`` with its
    delegate chain (the one-layer programs are lowered here with XNNPACK; the emulator
    assigns their ops to the device's units)."""
    from edgeq.backends.executorch.ops import executorch_ops, ops_from_executorch
    from edgeq.profiling.emulate import assign_units, predict

    used, scale = emulated_threads_and_clock(profile, threads)
    seen: dict[str, float] = {}

    def estimate(manager: Any, whole: bool) -> float:
        ops = ops_from_executorch(executorch_ops(manager.exported_program()))
        pred = predict(ops, assign_units(ops, "executorch", list(delegates), profile, []), "executorch", profile,
                       used, clock_scale=scale)
        return (pred.total_s - (0.0 if whole else pred.fixed_s)) * 1e3

    def cost(key: str, program: "_LazyProgram") -> float:
        if key not in seen:
            seen[key] = estimate(program.build(), whole=False)
        return seen[key]

    out = _each_layer(module, example_inputs, layers, candidates, threads, cost, keep_manager=True)
    whole = estimate(_lowered(_fp32_program(module, example_inputs), "fp32"), whole=True)
    return out, whole, (f"ESTIMATE for {profile.name}: the emulator's per-op roofline "
                        f"({used} threads, {' → '.join(delegates)}), not a measurement")


def time_artifact(model_file: Path, inputs: tuple[Any, ...], threads: int) -> float:
    """The artifact's p50 (ms) on ``inputs`` in the ExecuTorch pybindings here, timed as layers are."""
    from executorch.runtime import Runtime

    set_threads(threads)
    return p50_ms(_executor(Runtime.get().load_program(str(model_file)), inputs))


def set_threads(threads: int) -> None:
    """XNNPACK's threadpool at ``threads`` (0: leave the runtime's default, one per core)."""
    from executorch.extension.pybindings import portable_lib

    from edgeq.backends import silence_native_stderr

    if threads:
        with silence_native_stderr():  # the runtime logs each reset
            portable_lib._unsafe_reset_threadpool(int(threads))


def time_program(pte: bytes, inputs: tuple[Any, ...]) -> float:
    """The p50 (ms) of a serialized program's ``forward`` on ``inputs``."""
    from executorch.runtime import Runtime

    return p50_ms(_executor(Runtime.get().load_program(pte), inputs))


# ------------------------------------------------------------------------- internals


def _executor(program: Any, inputs: tuple[Any, ...]) -> Any:
    import executorch.kernels.quantized  # noqa: F401  registers quantized embedding kernels

    from edgeq.backends import silence_native_stderr

    with silence_native_stderr():
        method = program.load_method("forward")
    feeds = list(inputs)
    return lambda: method.execute(feeds)


def _each_layer(module: Any, example_inputs: tuple[Any, ...], layers: list[Any], candidates: dict[str, list[Any]],
                threads: int, cost: Any, keep_manager: bool = False) -> dict[str, dict[str, float]]:
    """``{fqn: {scheme name: cost(key, program)}}`` over each layer's one-layer program at
    each scheme: ``program.build()`` is the serialized .pte (or, with ``keep_manager``, the
    lowering's manager), built only when ``cost`` asks for it; ``program.x`` its input."""
    from edgeq.schemes import rtn_of

    out, cases = layer_cases(module, example_inputs, layers, candidates, TIMED_KINDS)
    for fqn, scheme, shape in cases:
        stored = rtn_of(scheme)  # an algorithm changes the values, not the kernel
        out.setdefault(fqn, {})[scheme.name] = cost(case_key(threads, shape, stored.name),
                                                    _LazyProgram(shape, stored, keep_manager))
    return out


class _LazyProgram:
    """A one-layer program, lowered on first use (a cached timing never lowers it)."""

    def __init__(self, shape: tuple[Any, ...], scheme: Any, keep_manager: bool) -> None:
        self.shape, self.scheme, self.keep_manager = shape, scheme, keep_manager
        self._built: Any = None
        self._x: Any = None

    @property
    def x(self) -> Any:
        if self._x is None:
            self._x = _one_layer(*self.shape)[1]
        return self._x

    def build(self) -> Any:
        if self._built is None:
            from edgeq.backends.executorch.lowering import _uniform
            from edgeq.backends.executorch.quant import quantized_module
            from edgeq.models.capture import capture

            one, self._x = _one_layer(*self.shape)
            q = quantized_module(one, {"layer": self.scheme}, "xnnpack")
            manager = _lowered(capture(q, (self.x,), "a one-layer program"), _uniform({"layer": self.scheme}))
            self._built = manager if self.keep_manager else manager.buffer
        return self._built


def _lowered(program: Any, precision: str) -> Any:
    from edgeq.backends.executorch.delegates import partitioner
    from edgeq.backends.executorch.lowering import _lower

    with tempfile.TemporaryDirectory(prefix="edgeq-latency-") as tmp:
        manager, _ = _lower(program, [partitioner("xnnpack", precision)], Path(tmp) / "layer.pte")
    return manager


def _one_layer(kind: str, shape: tuple[int, ...], has_bias: bool, x_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """A module holding one layer of ``shape`` (random weights: time does not depend on the
    values) under the name ``layer``, and an input of ``x_shape`` for it."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(1)
    if kind == "embedding":
        layer: nn.Module = nn.Embedding(*shape)
        x = torch.randint(0, shape[0], x_shape, generator=gen)
    else:
        layer = nn.Linear(shape[1], shape[0], bias=has_bias)
        x = torch.randn(x_shape, generator=gen)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(shape, generator=gen) * 0.05)
    return _One(layer).eval(), x


def _fp32_program(module: Any, example_inputs: tuple[Any, ...]) -> Any:
    from edgeq.models.capture import capture

    program = capture(module, example_inputs)
    program.graph.eliminate_dead_code()
    return program


def _whole_fp32(module: Any, example_inputs: tuple[Any, ...], threads: int, use_cache: bool) -> float:
    """The fp32 program's p50, lowered as the artifact's is (XNNPACK)."""
    from edgeq.backends.executorch.lowering import _version

    cache = LatencyCache(f"executorch-whole-{_version()}")
    key = model_key(module, example_inputs, threads)
    if use_cache and (found := cache.get(key)) is not None:
        return found
    found = time_program(_lowered(_fp32_program(module, example_inputs), "fp32").buffer, tuple(example_inputs))
    cache.put(key, found)
    cache.save()
    return found


def _module_class() -> Any:
    from torch import nn

    class One(nn.Module):
        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Any) -> Any:
            return self.layer(x)

    return One


def _One(layer: Any) -> Any:  # noqa: N802 - a class built on first use (torch is imported lazily)
    return _module_class()(layer)
