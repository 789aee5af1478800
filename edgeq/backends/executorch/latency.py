"""What a layer costs in time at each scheme in ExecuTorch: its op alone, timed here.

Each (layer shape, scheme) is quantized and lowered exactly as the artifact's lowering does
it (``quant.quantized_module`` on a one-layer module, captured and lowered with the
XNNPACK partitioner: the delegate that runs on this host's CPU) and timed in the ExecuTorch
runtime (the pybindings the artifact is verified with, XNNPACK's threadpool at the
target's threads) on an input of the shape the layer sees in the model. The p50 is taken
as for every backend (``edgeq.backends.timing``): the programs not yet cached and the whole
fp32 program are timed in turn, round after round (``interleaved_ms``), so that a spell of a
slower host reaches the layers' figures and the fp32 program (the prediction's reference,
timed again beside the artifact after export) alike; the exported artifact is timed the
same way. Layers with the same shapes share one timing; a calibrated scheme (GPTQ, AWQ) stores
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

from edgeq.backends.timing import (ROUNDS, SESSIONS, TIMED_RUNS, LatencyCache, case_key, emulated_threads_and_clock,
                                   how_timed, interleaved_ms, layer_cases, model_key, p50_ms)

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
    keys: dict[tuple[str, str], str] = {}  # (fqn, scheme name) → its timing's key
    figures: dict[str, float] = {}  # key → ms
    missing: dict[str, _LazyProgram] = {}  # key → the program to time

    def record(fqn: str, name: str, key: str, program: "_LazyProgram") -> float:
        keys[(fqn, name)] = key
        if (found := cache.get(key) if use_cache else None) is not None:
            figures[key] = found
        else:
            missing.setdefault(key, program)
        return 0.0

    out = _each_layer(module, example_inputs, layers, candidates, threads, record)
    whole_cache = LatencyCache(f"executorch-whole-{_version()}")
    whole_key = model_key(module, example_inputs, threads)
    whole = whole_cache.get(whole_key) if use_cache else None
    if missing or whole is None:
        # the untimed one-layer programs and (when not cached) the whole fp32 program, timed in turn
        # (interleaved_ms): the layers' figures and the reference they are set against see the same
        # spells of the host. A cached whole stays: it was timed in turn with the fp32 layers' figures
        # it is set against (the remainder), and a new timing of it beside other programs would not be.
        with tempfile.TemporaryDirectory(prefix="edgeq-latency-") as tmp:
            files, inputs = [], []
            for program in missing.values():  # one program in memory at a time
                files.append(Path(tmp) / f"{len(files)}.pte")
                files[-1].write_bytes(program.build())
                inputs.append((program.x,))
                program.release()
            if whole is None:
                files.append(write_reference(module, example_inputs, Path(tmp) / "fp32.pte"))
                inputs.append(tuple(example_inputs))
            timed = _time_in_turn(files, inputs)
        if whole is None:
            whole = timed.pop()
            whole_cache.put(whole_key, whole)
            whole_cache.save()
        for key, ms in zip(missing, timed):
            figures[key] = ms
            cache.put(key, ms)
        cache.save()
    for (fqn, name), key in keys.items():
        out[fqn][name] = figures[key]
    return out, whole, how_timed(f"ExecuTorch {_version()} pybindings, XNNPACK", threads)


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

    def cost(_fqn: str, _name: str, key: str, program: "_LazyProgram") -> float:
        if key not in seen:
            seen[key] = estimate(program.build(), whole=False)
        return seen[key]

    out = _each_layer(module, example_inputs, layers, candidates, threads, cost, keep_manager=True)
    whole = estimate(_lowered(_fp32_program(module, example_inputs), "fp32"), whole=True)
    return out, whole, (f"ESTIMATE for {profile.name}: the emulator's per-op roofline "
                        f"({used} threads, {' → '.join(delegates)}), not a measurement")


def time_artifacts(model_files: list[Path], inputs: tuple[Any, ...], threads: int) -> list[float]:
    """Each artifact's p50 (ms) on ``inputs`` in the ExecuTorch pybindings here, timed as
    layers are (``_time_in_turn``)."""
    set_threads(threads)
    return _time_in_turn(model_files, [inputs] * len(model_files))


def _time_in_turn(files: list[Path], inputs: list[tuple[Any, ...]]) -> list[float]:
    """Each program's p50 (ms) on its inputs: ``SESSIONS`` rounds, each loading every file in
    turn and taking its p50; the median of each file's rounds (``interleaved_ms``)."""
    from executorch.runtime import Runtime

    def measure(path: Path, feeds: tuple[Any, ...]) -> Any:
        return lambda: p50_ms(_executor(Runtime.get().load_program(str(path)), feeds),
                              runs=max(ROUNDS, TIMED_RUNS // SESSIONS))

    return interleaved_ms([measure(f, x) for f, x in zip(files, inputs)], SESSIONS)


def write_reference(module: Any, example_inputs: tuple[Any, ...], path: Path) -> Path:
    """The fp32 program ``layer_latency`` times (the reference of a predicted latency),
    lowered with XNNPACK, written to ``path``."""
    path.write_bytes(_lowered(_fp32_program(module, example_inputs), "fp32").buffer)
    return path


def set_threads(threads: int) -> None:
    """XNNPACK's threadpool at ``threads`` (0: leave the runtime's default, one per core)."""
    from executorch.extension.pybindings import portable_lib

    from edgeq.backends import silence_native_stderr

    if threads:
        with silence_native_stderr():  # the runtime logs each reset
            portable_lib._unsafe_reset_threadpool(int(threads))


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
    """``{fqn: {scheme name: cost(fqn, scheme name, key, program)}}`` over each layer's one-layer program at
    each scheme: ``program.build()`` is the serialized .pte (or, with ``keep_manager``, the
    lowering's manager), built only when ``cost`` asks for it; ``program.x`` its input."""
    from edgeq.schemes import rtn_of

    out, cases = layer_cases(module, example_inputs, layers, candidates, TIMED_KINDS)
    for fqn, scheme, shape in cases:
        stored = rtn_of(scheme)  # an algorithm changes the values, not the kernel
        out.setdefault(fqn, {})[scheme.name] = cost(fqn, scheme.name, case_key(threads, shape, stored.name),
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

    def release(self) -> None:
        """Drop the built program (its input stays)."""
        self._built = None


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
