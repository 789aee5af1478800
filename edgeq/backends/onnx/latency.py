"""What a layer costs in time at each scheme: its op alone, timed in ONNX Runtime here.

Each (layer shape, scheme) is lowered exactly as the artifact's lowering does it
(``lowering._apply_plan`` on a one-layer graph: MatMul (+ Add for a bias) or Gather) and
timed in sessions with the artifact's options (CPU provider, the target's intra-op
threads) on an input of the shape the layer sees in the model (captured by one forward
pass). The median over ``SESSIONS`` fresh sessions of each one's p50 (the least of
``ROUNDS`` round medians after ``WARMUP_RUNS``) less a run's fixed cost on that input (an
``Identity`` graph on it, timed the same way: ``fixed_cost_graph``) is its timing alone; the
exported artifact is timed the same way. Layers with the same shapes share one timing.

A layer costs more or less in the whole graph than alone: alone, its weights stay hot in
cache and no graph fusion is at stake; in the graph, a quantized linear breaks fusions its
fp32 MatMul takes part in (MiniLM at 2 threads, medians of 5 sessions: its 36 linears as
``MatMulInteger`` take 15.1 ms in the graph against 5.4 ms alone, fixed costs included, as
fp32 ``MatMul`` 24.2 against 19.2). So the whole export is timed once per scheme kind the
linears may take (the fp32 graph, and each uniform plan: every linear that has the scheme
as a candidate at it, the rest fp32), and each scheme gets an in-graph offset per linear
(``in_graph_offsets``) that makes the prediction of every uniform plan equal its
measurement. A linear's cost at a scheme is its timing alone plus its scheme's offset,
never below 0; the rest of the graph (attention, norms, activations; any layer kind this
module does not build, e.g. convolutions, at fp32) is what is left of the fp32 export's
p50, below 0 only where a graph runs faster than its layers' costs allow (a few µs on a
tiny model, in timing noise). The whole graphs are timed in turn, round after round
(``interleaved_ms``): their differences are the offsets, and a spell of a slower host
reaches them alike. The fp32 graph (``reference_graph``) is the prediction's reference,
timed again beside the artifact after export (``time_artifacts``). A plan's predicted latency is that remainder plus its
layers' costs at their schemes. Calibrated schemes (GPTQ, AWQ, HQQ) store their RTN
scheme's layout and share its timings.

For a device that is not this host's kind (``estimate_layer_latency``) the same one-layer
graphs (and the fp32 export) are costed by the emulator's per-op roofline for the device
profile (``edgeq.profiling.emulate``): an ESTIMATE, labelled so; each layer's figure
leaves out the per-run fixed cost, which the remainder keeps once.

Timings are cached on disk (``<cache>/latency``) keyed by what decides them: ONNX Runtime's
version, this CPU, the threads, the shapes and the scheme; the whole-model timing by the
model's weights and inputs (and, for a uniform plan, its scheme and layers) too. The
cache is bounded (``MAX_CACHE_ENTRIES`` per file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.backends.timing import (ROUNDS, SESSIONS, TIMED_RUNS, WARMUP_RUNS, LatencyCache, case_key,
                                   emulated_threads_and_clock, how_timed, input_shapes, interleaved_ms, layer_cases,
                                   model_key, uniform_key, with_in_graph_offsets)
from edgeq.backends.timing import p50_ms as _p50
from edgeq.schemes import FP32, parse


def p50_ms(session: Any, feeds: dict[str, Any], runs: int = TIMED_RUNS, warmup: int = WARMUP_RUNS,
           rounds: int = ROUNDS) -> float:
    """The p50 of ``session.run`` on ``feeds`` in ms (``edgeq.backends.timing.p50_ms``)."""
    return _p50(lambda: session.run(None, feeds), runs, warmup, rounds)


def sessions_p50_ms(model: Any, feeds: dict[str, Any], threads: int, sessions: int = SESSIONS) -> float:
    """The median over ``sessions`` fresh sessions of ``model`` of each one's p50 (ms).

    One session's p50 is one sample: the same MiniLM graph measured 23.6–29.0 ms in six
    sessions opened one after another on an idle 2-core host (where the session's buffers
    land, how its threads are scheduled), and predictions checked against single sessions
    missed by up to 28% where the medians of five agreed within 14%."""
    return interleaved_ms([session_sample(model, threads, lambda _s: feeds, sessions)], sessions)[0]


def session_sample(model: Any, threads: int, feeds: Any, sessions: int = SESSIONS) -> Any:
    """One sample of ``sessions_p50_ms``, as a callable: a fresh session of ``model`` and its
    p50 on ``feeds(session)``."""

    def sample() -> float:
        s = session(model, threads)
        return p50_ms(s, feeds(s), runs=max(ROUNDS, TIMED_RUNS // sessions))

    return sample


def session(model: Any, threads: int) -> Any:
    """An ONNX Runtime session as ``lowering.run`` opens the artifact (CPU provider, ``threads``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    data = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def layer_graph(kind: str, weight: Any, bias: Any, x_shape: tuple[int, ...]) -> tuple[Any, list[tuple[str, str]], Any]:
    """A one-layer fp32 ONNX model as the export writes the layer, its ``(node, op)`` list for
    ``_apply_plan``, and an input for it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "embedding":
        inits = [numpy_helper.from_array(weight, "W")]
        nodes = [helper.make_node("Gather", ["W", "x"], ["y"], name="gather")]
        x = rng.integers(0, weight.shape[0], size=x_shape).astype(np.int64)
        x_type, used = TensorProto.INT64, [("gather", "Gather")]
    else:
        inits = [numpy_helper.from_array(weight.T.copy(), "W")]
        nodes = [helper.make_node("MatMul", ["x", "W"], ["mm_out" if bias is not None else "y"], name="mm")]
        if bias is not None:
            inits.append(numpy_helper.from_array(bias, "b"))
            nodes.append(helper.make_node("Add", ["mm_out", "b"], ["y"], name="add"))
        x = rng.standard_normal(x_shape).astype(np.float32)
        x_type, used = TensorProto.FLOAT, [("mm", "MatMul")]
    graph = helper.make_graph(nodes, "one_layer", [helper.make_tensor_value_info("x", x_type, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return model, used, x


def fixed_cost_graph(kind: str, x_shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    """A one-node graph (``Identity``) on a layer's input: what a one-layer timing costs
    beyond its op (the run's fixed cost, the input in and an output out), and its feeds."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if kind == "embedding":
        x, x_type = rng.integers(0, 2, size=x_shape).astype(np.int64), TensorProto.INT64
    else:
        x, x_type = rng.standard_normal(x_shape).astype(np.float32), TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="identity")], "fixed_cost",
                              [helper.make_tensor_value_info("x", x_type, list(x_shape))],
                              [helper.make_tensor_value_info("y", x_type, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), {"x": x}


def layer_latency(module: Any, example_inputs: tuple[Any, ...], layers: list[Any], candidates: dict[str, list[Any]],
                  threads: int, use_cache: bool = True) -> tuple[dict[str, dict[str, float]], float, str]:
    """``({fqn: {scheme name: ms}}, whole fp32 model ms, how they were taken)`` on this host.

    Every layer in ``candidates`` is timed at each of its schemes and at fp32 (the
    remainder's reference); a layer kind not built here (convolutions) or never called
    gets 0 at every scheme and stays in the remainder at its fp32 time."""
    import numpy as np
    import onnxruntime as ort

    from edgeq.backends.onnx.lowering import _apply_plan

    cache = LatencyCache(f"layers-{ort.__version__}")
    out, cases = layer_cases(module, example_inputs, layers, candidates)
    fixed: dict[tuple[Any, ...], float] = {}
    for fqn, scheme, shape in cases:
        kind, weight_shape, has_bias, x_shape = shape
        if (kind, x_shape) not in fixed:  # a run's fixed cost on this input, which the graph pays once
            key = case_key(threads, (kind, (), False, x_shape), "fixed")
            if (found := cache.get(key) if use_cache else None) is None:
                found = sessions_p50_ms(*fixed_cost_graph(kind, x_shape), threads)
                cache.put(key, found)
            fixed[(kind, x_shape)] = found
        key = case_key(threads, shape, scheme.name)
        found = cache.get(key) if use_cache else None
        if found is None:
            weight = np.random.default_rng(1).standard_normal(weight_shape).astype(np.float32) * 0.05
            bias = np.zeros(weight.shape[0], np.float32) if has_bias else None
            proto, nodes, x = layer_graph(kind, weight, bias, x_shape)
            proto, _ = _apply_plan(proto, {fqn: scheme}, {fqn: nodes})
            found = sessions_p50_ms(proto, {"x": x}, threads)
            cache.put(key, found)
        out.setdefault(fqn, {})[scheme.name] = max(found - fixed[(kind, x_shape)], 0.0)
    cache.save()
    out, whole, note = with_in_graph_offsets(
        out, cases, candidates, lambda uniform: _whole_ms(module, example_inputs, threads, use_cache, uniform))
    return out, whole, how_timed(f"ONNX Runtime {ort.__version__}, CPU provider", threads) + note


def _whole_ms(module: Any, example_inputs: tuple[Any, ...], threads: int, use_cache: bool,
              uniform: dict[str, list[str]]) -> dict[str, float]:
    """``{scheme name: p50}`` of the whole export at fp32 (``reference_graph``) and at each of
    ``uniform``'s plans, lowered as the artifact's lowering does it. When any is not cached
    all are timed again, in turn (``interleaved_ms``): the in-graph offsets are their
    differences, and the fp32 graph's p50 is the reference a later timing of the artifact
    is set beside (``LatencyCosts.reference_ms``)."""
    import copy
    import tempfile

    import onnx
    import onnxruntime as ort

    from edgeq.backends.onnx.graph import called_layers, layer_nodes
    from edgeq.backends.onnx.lowering import _apply_plan, _strip_debug_metadata

    cache = LatencyCache(f"whole-{ort.__version__}")
    base_key = model_key(module, example_inputs, threads)

    def key(name: str) -> str:
        return uniform_key(base_key, name, uniform[name])

    found = {name: cache.get(key(name)) if use_cache else None for name in uniform}
    if all(v is not None for v in found.values()):
        return found  # type: ignore[return-value]
    base = reference_graph(module, example_inputs)
    with tempfile.TemporaryDirectory(prefix="edgeq-latency-") as tmp:
        files = []
        for name, fqns in uniform.items():  # written one at a time: one graph's copy in memory
            proto = copy.deepcopy(base)
            if name != FP32.name:  # the other layers stay fp32 (an all-fp16 plan alone converts the whole graph)
                nodes = layer_nodes(proto)
                plan = {f: FP32 for f in nodes} | {f: parse(name) for f in fqns}
                proto, _ = _apply_plan(proto, plan, nodes, called_layers(proto))
            _strip_debug_metadata(proto)
            files.append(Path(tmp) / f"{len(files)}.onnx")
            onnx.save(proto, str(files[-1]))
            del proto
        for name, ms in zip(uniform, time_artifacts(files, example_inputs, threads)):
            found[name] = ms
            cache.put(key(name), ms)
    cache.save()
    return found  # type: ignore[return-value]


def reference_graph(module: Any, example_inputs: tuple[Any, ...]) -> Any:
    """The whole model's fp32 graph as the artifact's lowering starts from it (exported, Gemm
    as MatMul, weight transposes folded): the graph whose p50 anchors a plan's predicted
    latency (``_whole_ms``)."""
    import tempfile

    from edgeq.backends.onnx.graph import fold_weight_transposes, gemm_to_matmul
    from edgeq.backends.onnx.lowering import _export

    class _Model:  # what _export reads of a LoadedModel
        def __init__(self) -> None:
            self.module, self.example_inputs = module, example_inputs
            self.input_names = [f"input_{i}" for i in range(len(example_inputs))]
            self.output_names = None

    with tempfile.TemporaryDirectory() as tmp:
        proto = _export(_Model(), Path(tmp))
    gemm_to_matmul(proto)
    fold_weight_transposes(proto, set())
    return proto


def write_reference(module: Any, example_inputs: tuple[Any, ...], path: Path) -> Path:
    """``reference_graph`` written to ``path`` as ``_whole_ms`` times it."""
    import onnx

    from edgeq.backends.onnx.lowering import _strip_debug_metadata

    proto = reference_graph(module, example_inputs)
    _strip_debug_metadata(proto)
    onnx.save(proto, str(path))
    return path


def time_artifacts(files: list[Path], inputs: tuple[Any, ...], threads: int, sessions: int = SESSIONS) -> list[float]:
    """Each file's ``sessions_p50_ms`` on ``inputs``, the files in turn within each round
    (``interleaved_ms``)."""

    def feeds(s: Any) -> dict[str, Any]:
        return {i.name: (t.numpy() if hasattr(t, "numpy") else t) for i, t in zip(s.get_inputs(), inputs)}

    return interleaved_ms([session_sample(Path(f), threads, feeds, sessions) for f in files], sessions)


def estimate_layer_latency(module: Any, example_inputs: tuple[Any, ...], layers: list[Any],
                           candidates: dict[str, list[Any]], threads: int, profile: Any,
                           delegates: list[str]) -> tuple[dict[str, dict[str, float]], float, str]:
    """``layer_latency``'s figures as the emulator ESTIMATES them for ``profile`` (no cache: a
    roofline over a few ops is milliseconds)."""
    import tempfile

    import numpy as np

    from edgeq.backends.onnx.graph import fold_weight_transposes, gemm_to_matmul
    from edgeq.backends.onnx.lowering import _apply_plan, _export, _strip_debug_metadata
    from edgeq.backends.onnx.ops import ops_from_onnx
    from edgeq.profiling.emulate import assign_units, predict

    used, scale = emulated_threads_and_clock(profile, threads)

    def estimate(path: Path, whole: bool) -> float:
        ops = ops_from_onnx(path)
        pred = predict(ops, assign_units(ops, "onnx", list(delegates), profile, []), "onnx", profile, used,
                       clock_scale=scale)
        return (pred.total_s - (0.0 if whole else pred.fixed_s)) * 1e3

    shapes = input_shapes(module, example_inputs, [x.fqn for x in layers])
    modules = dict(module.named_modules())
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeq-latency-") as tmp:
        path = Path(tmp) / "layer.onnx"
        for layer in layers:
            schemes = list(dict.fromkeys([FP32, *candidates.get(layer.fqn, [])]))
            if layer.kind not in ("linear", "embedding") or layer.fqn not in shapes:
                out[layer.fqn] = {s.name: 0.0 for s in schemes}
                continue
            mod = modules[layer.fqn]
            weight = np.random.default_rng(1).standard_normal(tuple(mod.weight.shape)).astype(np.float32) * 0.05
            bias = np.zeros(weight.shape[0], np.float32) if getattr(mod, "bias", None) is not None else None
            out[layer.fqn] = {}
            for scheme in schemes:
                proto, nodes, _x = layer_graph(layer.kind, weight, bias, shapes[layer.fqn])
                proto, _ = _apply_plan(proto, {layer.fqn: scheme}, {layer.fqn: nodes})
                path.write_bytes(proto.SerializeToString())
                out[layer.fqn][scheme.name] = estimate(path, whole=False)

        class _Model:  # what _export reads of a LoadedModel
            def __init__(self) -> None:
                self.module, self.example_inputs = module, example_inputs
                self.input_names = [f"input_{i}" for i in range(len(example_inputs))]
                self.output_names = None

        proto = _export(_Model(), Path(tmp))
        gemm_to_matmul(proto)
        fold_weight_transposes(proto, set())
        _strip_debug_metadata(proto)
        path.write_bytes(proto.SerializeToString())
        whole = estimate(path, whole=True)
    return out, whole, (f"ESTIMATE for {profile.name}: the emulator's per-op roofline "
                        f"({used} threads, {' → '.join(delegates)}), not a measurement")
