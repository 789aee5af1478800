"""What a layer costs in time at each scheme: its op alone, timed in ONNX Runtime here.

Each (layer shape, scheme) is lowered exactly as the artifact's lowering does it
(``lowering._apply_plan`` on a one-layer graph: MatMul (+ Add for a bias) or Gather) and
timed in a session with the artifact's options (CPU provider, the target's intra-op
threads) on an input of the shape the layer sees in the model (captured by one forward
pass). The p50 of ``TIMED_RUNS`` runs after ``WARMUP_RUNS`` (the least of ``ROUNDS``
round medians) is its cost; the exported artifact is timed the same way. Layers with the
same shapes share one timing. The rest of the graph (attention, norms, activations; any
layer kind this module does not build, e.g. convolutions, at fp32) is the fp32 export's own
p50 minus its layers' fp32 timings: a plan's predicted latency is that remainder plus its
layers' timings at their schemes.

For a device that is not this host's kind (``estimate_layer_latency``) the same one-layer
graphs (and the fp32 export) are costed by the emulator's per-op roofline for the device
profile (``edgeq.profiling.emulate``): an ESTIMATE, labelled so; each layer's figure
leaves out the per-run fixed cost, which the remainder keeps once.

Timings are cached on disk (``<cache>/latency``) keyed by what decides them: ONNX Runtime's
version, this CPU, the threads, the shapes and the scheme; the whole-model timing by the
model's weights and inputs too. The cache is bounded (``MAX_CACHE_ENTRIES`` per file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.backends.timing import (ROUNDS, TIMED_RUNS, WARMUP_RUNS, LatencyCache, case_key,
                                   emulated_threads_and_clock, how_timed, input_shapes, layer_cases, model_key)
from edgeq.backends.timing import p50_ms as _p50


def p50_ms(session: Any, feeds: dict[str, Any], runs: int = TIMED_RUNS, warmup: int = WARMUP_RUNS,
           rounds: int = ROUNDS) -> float:
    """The p50 of ``session.run`` on ``feeds`` in ms (``edgeq.backends.timing.p50_ms``)."""
    return _p50(lambda: session.run(None, feeds), runs, warmup, rounds)


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
    for fqn, scheme, shape in cases:
        key = case_key(threads, shape, scheme.name)
        found = cache.get(key) if use_cache else None
        if found is None:
            kind, weight_shape, has_bias, x_shape = shape
            weight = np.random.default_rng(1).standard_normal(weight_shape).astype(np.float32) * 0.05
            bias = np.zeros(weight.shape[0], np.float32) if has_bias else None
            proto, nodes, x = layer_graph(kind, weight, bias, x_shape)
            proto, _ = _apply_plan(proto, {fqn: scheme}, {fqn: nodes})
            found = p50_ms(session(proto, threads), {"x": x})
            cache.put(key, found)
        out.setdefault(fqn, {})[scheme.name] = found
    cache.save()
    return out, _whole_fp32_ms(module, example_inputs, threads, use_cache), how_timed(
        f"ONNX Runtime {ort.__version__}, CPU provider", threads)


def _whole_fp32_ms(module: Any, example_inputs: tuple[Any, ...], threads: int, use_cache: bool) -> float:
    """The fp32 export's p50 (the graph before quantization, with the artifact's rewrites)."""
    import tempfile

    import onnxruntime as ort

    from edgeq.backends.onnx.graph import fold_weight_transposes, gemm_to_matmul
    from edgeq.backends.onnx.lowering import _export, _strip_debug_metadata

    cache = LatencyCache(f"whole-{ort.__version__}")
    key = model_key(module, example_inputs, threads)
    if use_cache and (found := cache.get(key)) is not None:
        return found

    class _Model:  # what _export reads of a LoadedModel
        def __init__(self) -> None:
            self.module, self.example_inputs = module, example_inputs
            self.input_names = [f"input_{i}" for i in range(len(example_inputs))]
            self.output_names = None

    with tempfile.TemporaryDirectory() as tmp:
        proto = _export(_Model(), Path(tmp))
    gemm_to_matmul(proto)
    fold_weight_transposes(proto, set())
    _strip_debug_metadata(proto)
    sess = session(proto, threads)
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: t.numpy() for n, t in zip(names, example_inputs)}
    found = p50_ms(sess, feeds)
    cache.put(key, found)
    cache.save()
    return found


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
    from edgeq.schemes import FP32

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
