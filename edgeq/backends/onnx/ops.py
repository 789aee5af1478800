"""ONNX models' ops with their work, as ONNX Runtime's CPU provider runs them.

The graph is optimized by ONNX Runtime first (``extended`` level: host-independent
fusions), then every value's shape is inferred in one pass — ONNX's per-node inference
for standard ops, the rules in ``_contrib_shape`` for ONNX Runtime's contrib ops
(MatMulNBits, SkipLayerNormalization, ...) — and each node is costed like
``edgeq.backends.executorch.ops`` costs ExecuTorch ops (shared tables in ``edgeq.profiling.opgraph``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from edgeq.errors import ArtifactError, describe
from edgeq.profiling.opgraph import _FLOAT, _FLOPS_PER_ELEMENT, _ITEMSIZE, Op, _nbytes, _numel

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16", 21: "uint4", 22: "int4"}
_CODES = {v: k for k, v in _ONNX_DTYPES.items()}
_ONNX_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
               "ConstantOfShape", "Dropout"}
_ONNX_COPY = {"Transpose", "Expand", "Concat", "Slice", "Split", "Tile", "Pad", "Cast", "Gather", "GatherND",
              "GatherElements", "GatherBlockQuantized", "ScatterND", "Range", "Trilu", "CastLike"}
_ONNX_GATHERS = {"Gather", "GatherND", "GatherElements", "GatherBlockQuantized"}
_ONNX_GEMM = {"MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "MatMulInteger", "MatMulIntegerToFloat",
              "DynamicQuantizeMatMul", "FusedGemm", "Conv", "FusedConv", "ConvInteger", "QLinearConv",
              "QLinearMatMul", "Attention", "MultiHeadAttention", "GroupQueryAttention", "ConvTranspose"}
_ONNX_QUANT = {"DynamicQuantizeLinear", "QuantizeLinear"}


EMULATION_RUNTIME = "onnx"  # the per-run costs of a session run
CPU_RUNTIMES: tuple[str, ...] = ("onnx",)  # the CPU provider's ops
# ONNX Runtime contrib ops that are CPU-provider fusions of standard ops: another provider
# runs the standard ops instead, at about the same cost. Quantized contrib ops
# (MatMulNBits, GatherBlockQuantized, ...) have no kernels outside the CPU provider.
_FUSIONS = {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "BiasGelu",
            "FastGelu", "Gelu", "QuickGelu", "FusedMatMul", "BiasSoftmax", "BiasAdd", "FusedGemm", "FusedConv"}


def op_units(ops: list[Op], chain: list[str], accel_for: Any) -> tuple[list[tuple[str | None, str]], list[str]]:
    """ONNX Runtime places nodes on the device: assumed, the first provider in the chain with
    a unit takes every standard-domain node (and fusions of them); the rest stay on the CPU."""
    out: list[tuple[str | None, str]] = []
    for op in ops:
        unit = None
        if op.domain in ("", "ai.onnx") or op.op in _FUSIONS:
            unit = next((u for u in (accel_for(d) for d in chain) if u), None)
        provider = next((d for d in chain if accel_for(d) == unit), "") if unit else ""
        out.append((unit, provider))
    notes = [] if not chain else [
        "ONNX Runtime assigns nodes to providers on the device; assumed: "
        f"{', '.join(chain)} take every standard-domain node they can place on their unit, quantized contrib "
        "ops (MatMulNBits, ...) stay on the CPU provider"]
    return out, notes


def accelerated_runtime(op: Op, unit: str) -> str:
    """The efficiency table an op on an accelerator uses: ONNX Runtime's provider for that unit."""
    return f"onnx-{unit}"


def delegate_calls(ops: list[Op], units: list[str], cpu_runtime: Any) -> dict[tuple[str, str], int]:
    """A provider hand-off per run of consecutive nodes on one accelerator."""
    calls: dict[tuple[str, str], int] = {}
    previous = "cpu"
    for unit in units:
        if unit != "cpu" and unit != previous:
            calls[(f"onnx-{unit}", unit)] = calls.get((f"onnx-{unit}", unit), 0) + 1
        previous = unit
    return calls


def ops(model_file: Path, manifest: Any) -> list[Op]:
    """Costed ops of an artifact's ONNX model; cached per file (optimizing a large graph takes
    seconds, and estimates for several devices share it)."""
    st = model_file.stat()
    return list(_ops_cached(str(model_file.resolve()), st.st_mtime_ns, st.st_size))


@lru_cache(maxsize=8)
def _ops_cached(path: str, mtime_ns: int, size: int) -> tuple[Op, ...]:
    return tuple(ops_from_onnx(path))


def ops_from_onnx(model_file: str | Path) -> list[Op]:
    """Costed ops of an ONNX model, as ONNX Runtime's CPU provider runs it.

    The graph is first optimized by ONNX Runtime at the ``extended`` level (fusions such
    as LayerNorm + residual, bias + GELU, bias into MatMulNBits; no host-specific layouts),
    so the op count and memory passes are the ones a session runs.
    """
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="edgeq-ops-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _ort_optimize(Path(model_file), optimized)
        model = onnx.load(str(optimized), load_external_data=False)
    shapes = _onnx_shapes(model)
    return _onnx_costs(model, shapes)


def _ort_optimize(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    # Weights go to a side file that is never read back: only their shapes are needed.
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"ONNX Runtime cannot load {src}: {describe(exc, 200)}",
                            "the file is corrupt or not an ONNX model; re-run 'edgeq export'") from None


def _onnx_shapes(model: Any) -> dict[str, tuple[list[int], str]]:
    """name → (shape, dtype) for every value, in one pass over the (topologically sorted)
    graph: ONNX's per-node shape inference for standard ops, the rules in
    ``_contrib_shape`` for ONNX Runtime's contrib ops. Unknown values are left out."""
    import onnx
    from onnx import helper, numpy_helper

    known: dict[str, tuple[list[int], str]] = {}
    data: dict[str, Any] = {}  # small constant tensors (shapes, axes) for Reshape and friends
    for t in model.graph.initializer:
        known[t.name] = (list(t.dims), _ONNX_DTYPES.get(t.data_type, "float32"))
        if t.data_type == 7 and t.HasField("raw_data") or (t.data_type == 7 and len(t.int64_data)):
            data[t.name] = t
    for v in model.graph.input:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if None not in dims:
            known[v.name] = (dims, _ONNX_DTYPES.get(tt.elem_type, "float32"))
    opsets = list(model.opset_import)
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    known[node.output[0]] = (list(value.dims), _ONNX_DTYPES.get(value.data_type, "float32"))
                    data[node.output[0]] = value
                continue
            if node.op_type == "Shape" and node.input[0] in known:
                arr = numpy_helper.from_array(__import__("numpy").array(known[node.input[0]][0], dtype="int64"))
                known[node.output[0]] = ([len(known[node.input[0]][0])], "int64")
                data[node.output[0]] = arr
                continue
            if any(i and i not in known for i in node.input):
                continue
            try:
                version = max(o.version for o in opsets if o.domain in ("", "ai.onnx"))
                schema = onnx.defs.get_schema(node.op_type, version)
                types = {i: helper.make_tensor_type_proto(_CODES[known[i][1]], known[i][0]) for i in node.input if i}
                outs = onnx.shape_inference.infer_node_outputs(
                    schema, node, types, {i: data[i] for i in node.input if i in data}, opset_imports=opsets)
            except Exception:  # noqa: BLE001 - an op ONNX cannot infer here: its outputs stay unknown
                continue
            for name, tp in outs.items():
                tt = tp.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                if tt.HasField("shape") and None not in dims:
                    known[name] = (dims, _ONNX_DTYPES.get(tt.elem_type, "float32"))
        else:
            known.update({k: v for k, v in _contrib_shape(node, known).items() if k})
    return known


def _contrib_shape(node: Any, known: dict[str, tuple[list[int], str]]) -> dict[str, tuple[list[int], str]]:
    """Output shapes of ONNX Runtime contrib ops from their inputs' shapes and attributes."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    ins = [known.get(i) for i in node.input]
    if not ins or ins[0] is None:
        return {}
    shape, dtype = ins[0]
    op = node.op_type
    if op == "MatMulNBits":
        return {node.output[0]: (shape[:-1] + [int(attrs["N"])], dtype)}
    if op == "FusedConv":  # Conv + activation: a Conv's output shape
        keep = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
        conv = onnx.helper.make_node("Conv", list(node.input[:3]), [node.output[0]],
                                     **{k: v for k, v in attrs.items() if k in keep})
        types = {i: onnx.helper.make_tensor_type_proto(_CODES[known[i][1]], known[i][0])
                 for i in conv.input if i in known}
        try:
            out = onnx.shape_inference.infer_node_outputs(onnx.defs.get_schema("Conv", 21), conv, types)
        except Exception:  # noqa: BLE001 - unknown: the caller leaves it unknown
            return {}
        dims = [d.dim_value for d in out[node.output[0]].tensor_type.shape.dim]
        return {node.output[0]: (dims, dtype)} if dims and all(dims) else {}
    if op == "FusedGemm" and len(ins) > 1 and ins[1]:
        a, b = list(shape), list(ins[1][0])
        m = a[1] if attrs.get("transA") else a[0]
        n = b[0] if attrs.get("transB") else b[1]
        return {node.output[0]: ([m, n], dtype)}
    if op in ("FusedMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul") and len(ins) > 1 and ins[1]:
        a, b = list(shape), list(ins[1][0])
        if attrs.get("transA"):
            a[-2:] = a[-2:][::-1]
        if attrs.get("transB"):
            b[-2:] = b[-2:][::-1]
        batch = a[:-2] if len(a) >= len(b) else b[:-2]
        out_dtype = "float32" if op != "FusedMatMul" else dtype
        return {node.output[0]: (batch + [a[-2], b[-1]], out_dtype)}
    if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu", "FastGelu", "QuickGelu",
              "Gelu", "BiasAdd", "BiasSoftmax", "LayerNormalization", "SimplifiedLayerNormalization",
              "RotaryEmbedding"):
        out = {node.output[0]: (shape, dtype)}
        if op.startswith("Skip") and len(node.output) > 3 and node.output[3]:
            out[node.output[3]] = (shape, dtype)  # input + skip (+ bias), kept for the next residual
        return out
    if op == "GatherBlockQuantized" and len(ins) > 1 and ins[1]:
        data, idx = list(shape), ins[1][0]
        axis = int(attrs.get("gather_axis", 0))
        bits = int(attrs.get("bits", 4))
        if dtype == "uint8":  # packed: two 4-bit values per byte along the last axis
            data[-1] = data[-1] * (8 // bits)
        out_dtype = known.get(node.input[2], (None, "float32"))[1] if len(node.input) > 2 else "float32"
        return {node.output[0]: (data[:axis] + list(idx) + data[axis + 1:], out_dtype)}
    if op == "DynamicQuantizeLinear":
        return {node.output[0]: (shape, "uint8"), node.output[1]: ([], "float32"), node.output[2]: ([], "uint8")}
    if op in ("Attention", "MultiHeadAttention"):
        return {node.output[0]: (shape, dtype)}
    if op == "GroupQueryAttention":  # present = past + the new tokens, on the sequence axis
        out = {node.output[0]: (shape, dtype)}
        past = known.get(node.input[3]) if len(node.input) > 3 else None
        if past is not None and len(past[0]) == 4 and len(shape) == 3:
            present = [past[0][0], past[0][1], past[0][2] + shape[1], past[0][3]]
            out.update({o: (present, past[1]) for o in node.output[1:3] if o})
        return out
    return {}


def _onnx_costs(model: Any, shapes: dict[str, tuple[list[int], str]]) -> list[Op]:
    import onnx

    inits = {t.name for t in model.graph.initializer}
    ops: list[Op] = []

    def nbytes(name: str) -> float:
        if not name or name not in shapes:
            return 0.0
        s, d = shapes[name]
        return _nbytes(s, d)

    for i, node in enumerate(model.graph.node):
        op = node.op_type
        if op == "Constant":
            continue
        if op in _ONNX_VIEWS:  # ONNX Runtime still runs a kernel (often aliasing its input)
            ops.append(Op(node.name or f"{op}_{i}", op, "view", "fp32", "", "onnx", 0.0, 0.0, domain=node.domain))
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        name = node.name or f"{op}_{i}"
        outs = [shapes.get(o) for o in node.output if o]
        shaped = bool(outs) and outs[0] is not None
        out_shape, out_dtype = outs[0] if outs and outs[0] else ([], "float32")
        out_elems = _numel(out_shape)
        out_bytes = sum(_nbytes(s, d) for s, d in (o for o in outs if o))
        weight_bytes = sum(nbytes(x) for x in node.input if x in inits)
        act_bytes = sum(nbytes(x) for x in node.input if x and x not in inits)
        dtype = _FLOAT.get(out_dtype, "fp32")
        weights = ""
        if op in _ONNX_GEMM:
            a = shapes.get(node.input[0], ([1], "float32"))[0]
            if op == "MatMulNBits":
                k = int(attrs["K"])
                flops = 2.0 * out_elems * k
                weights = f"int{int(attrs.get('bits', 4))}"
                # accuracy_level 4: activations quantized to int8 per block, int8 dot products.
                dtype = "int8" if int(attrs.get("accuracy_level", 0)) == 4 else dtype
            elif op in ("Conv", "FusedConv", "ConvInteger", "QLinearConv", "ConvTranspose"):
                w_in = node.input[3] if op == "QLinearConv" else node.input[1]
                w = shapes.get(w_in, ([1, 1], "float32"))[0]
                flops = 2.0 * out_elems * _numel(w[1:]) if op != "ConvTranspose" else 2.0 * _numel(a) * _numel(w[1:])
                weights = _FLOAT.get(shapes.get(w_in, ([], ""))[1], "int8") if w_in in inits else ""
                dtype = "int8" if op in ("ConvInteger", "QLinearConv") else dtype
            elif op in ("Attention", "MultiHeadAttention", "GroupQueryAttention"):
                seq, hidden = (a[-2], a[-1]) if len(a) >= 2 else (1, 1)
                if op == "GroupQueryAttention" and len(node.output) > 1 and node.output[1] in shapes:
                    seq = shapes[node.output[1]][0][2]  # the queries attend to the whole cache
                flops = 4.0 * _numel(a[:-1]) * seq * hidden
                if op == "Attention" and len(node.input) > 1:
                    w = shapes.get(node.input[1], ([hidden, hidden], ""))[0]
                    flops += 2.0 * _numel(a[:-1]) * _numel(w)
            else:
                if attrs.get("transA") and len(a) >= 2:
                    a = a[:-2] + a[-2:][::-1]
                flops = 2.0 * out_elems * (a[-1] if a else 1)
                if op in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul"):
                    dtype = "int8"
                weights = next((_FLOAT.get(shapes[x][1], "int8") for x in node.input[1:2] if x in inits), "")
            ops.append(Op(name, op, "gemm", dtype, weights, "onnx", flops, weight_bytes + act_bytes + out_bytes,
                          weight_bytes, domain=node.domain, shaped=shaped))
        elif op in _ONNX_QUANT:
            ops.append(Op(name, op, "quantize", "fp32", "", "onnx", float(out_elems), act_bytes + out_bytes,
                          domain=node.domain, shaped=shaped))
        elif op in _ONNX_GATHERS:
            data = shapes.get(node.input[0], ([], "float32"))
            per = _ITEMSIZE.get(data[1], 4) * (0.5 if op == "GatherBlockQuantized" and attrs.get("bits", 4) == 4 else 1)
            if op == "GatherBlockQuantized" and data[1] == "uint8":
                per = 0.5 if int(attrs.get("bits", 4)) == 4 else 1
            idx = sum(nbytes(x) for x in node.input[1:2])
            stored = ""
            if node.input[0] in inits:
                stored = f"int{int(attrs.get('bits', 4))}" if op == "GatherBlockQuantized" else _FLOAT.get(data[1], data[1])
            ops.append(Op(name, op, "copy", dtype, stored, "onnx", 0.0, out_elems * per + idx + out_bytes,
                          domain=node.domain, shaped=shaped))
        elif op in _ONNX_COPY:
            moved = act_bytes + (weight_bytes if op not in ("Expand", "Range") else 0)
            ops.append(Op(name, op, "copy", dtype, "", "onnx", 0.0, moved + out_bytes, domain=node.domain,
                          shaped=shaped))
        else:
            elems = max([out_elems] + [_numel(shapes[x][0]) for x in node.input if x in shapes])
            flops = elems * _FLOPS_PER_ELEMENT.get(op, 1)
            stored = ""
            if op == "DequantizeLinear" and node.input[0] in inits:
                stored = _FLOAT.get(shapes.get(node.input[0], ([], "int8"))[1], "int8")
            ops.append(Op(name, op, "elementwise", dtype, stored, "onnx", float(flops),
                          act_bytes + weight_bytes + out_bytes, weight_bytes, domain=node.domain, shaped=shaped))
    return ops
