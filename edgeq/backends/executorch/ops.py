"""The ops of an ExecuTorch artifact, costed for emulation (see ``edgeq.profiling.opgraph``).

The exporter writes ``ops.json`` into the artifact (``executorch_ops``), because
delegated subgraphs are opaque blobs inside the .pte: every node of the final program,
with the nodes of each delegated subgraph taken from the lowered module's original graph
(op, argument references, output shapes and dtypes, which delegate runs it).
``ops_from_executorch`` turns that into costed ops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeq.errors import ArtifactError
from edgeq.profiling.opgraph import _FLOAT, _FLOPS_PER_ELEMENT, _ITEMSIZE, Op, _nbytes, _numel

OPS_FILE = "ops.json"
OPS_FORMAT_VERSION = 1


EMULATION_RUNTIME = "portable"  # the per-run costs of a method call
CPU_RUNTIMES: tuple[str, ...] = ("xnnpack", "portable")  # the runtimes of ops that run on the CPU


def op_units(ops: list[Op], delegates: list[str], accel_for: Any) -> tuple[list[tuple[str | None, str]], list[str]]:
    """Each op runs where its delegate put it: (accelerator unit or None for the CPU, delegate)."""
    return [(accel_for(op.runtime), op.runtime) for op in ops], []


def accelerated_runtime(op: Op, unit: str) -> str:
    """The efficiency table an op on an accelerator uses: its delegate's."""
    return op.runtime


def delegate_calls(ops: list[Op], units: list[str], cpu_runtime: Any) -> dict[tuple[str, str], int]:
    """One call per delegated subgraph, keyed by (runtime, unit)."""
    calls: dict[tuple[str, str], int] = {}
    seen: set[int] = set()
    for op, unit in zip(ops, units):
        if op.subgraph >= 0 and op.subgraph not in seen:
            seen.add(op.subgraph)
            key = (cpu_runtime(op.runtime) if unit == "cpu" else op.runtime, unit)
            calls[key] = calls.get(key, 0) + 1
    return calls


def ops(model_file: Path, manifest: Any) -> list[Op]:
    """The ops recorded in the artifact's ops.json (``manifest``: its ``edgeq.manifest.Manifest``)."""
    from edgeq.artifact import member

    if OPS_FILE not in manifest.files:
        raise ArtifactError(f"{model_file.parent} has no {OPS_FILE} (the per-op graph emulated profiling needs)",
                            "re-export with this edgeq: 'edgeq export' writes it into ExecuTorch artifacts")
    path = member(model_file.parent, OPS_FILE)  # listed, hashed, a regular file inside the artifact
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path} is corrupt ({type(exc).__name__})", "re-export with this edgeq") from None
    if not isinstance(data, dict) or data.get("format_version") != OPS_FORMAT_VERSION:
        raise ArtifactError(f"{path} has an unknown format version", "re-export with this edgeq")
    try:
        return ops_from_executorch(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ArtifactError(f"{path} is malformed ({type(exc).__name__}: {str(exc)[:80]})",
                            "re-export with this edgeq") from None


def executorch_ops(program: Any) -> dict[str, Any]:
    """The ``ops.json`` content of a final ExecuTorch program (after ``to_executorch``).

    Top-level nodes run on the portable CPU kernels; the nodes of each delegated
    subgraph come from its lowered module's original graph, prefixed ``d<i>/``.
    """
    from edgeq.backends.executorch.delegates import BACKEND_IDS

    names = {v: k for k, v in BACKEND_IDS.items()}
    gm = program.graph_module
    nodes: list[dict[str, Any]] = []
    subgraphs: list[dict[str, Any]] = []
    _graph_nodes(program, "", "portable", -1, nodes)
    for node in gm.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "executorch_call_delegate":
            lowered = getattr(gm, node.args[0].target)
            delegate = names.get(lowered.backend_id, lowered.backend_id)
            index = len(subgraphs)
            subgraphs.append({"index": index, "delegate": delegate, "node": node.name})
            _graph_nodes(lowered.original_module, f"d{index}/", delegate, index, nodes)
    return {"format_version": OPS_FORMAT_VERSION,
            "source": "ExecuTorch program after to_executorch; delegated subgraphs from each lowered module's "
                      "original graph",
            "subgraphs": subgraphs, "nodes": nodes}


def _graph_nodes(program: Any, prefix: str, runtime: str, subgraph: int, out: list[dict[str, Any]]) -> None:
    import torch

    sig = program.graph_signature
    consts = set(sig.inputs_to_parameters) | set(sig.inputs_to_buffers) | set(sig.inputs_to_lifted_tensor_constants)

    def encode(value: Any) -> Any:
        if isinstance(value, torch.fx.Node):
            return {"ref": prefix + value.name}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, torch.dtype):
            return str(value).removeprefix("torch.")
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)

    def outputs(val: Any) -> list[dict[str, Any]]:
        vals = val if isinstance(val, (list, tuple)) else [val]
        return [{"shape": [int(d) for d in v.shape], "dtype": str(v.dtype).removeprefix("torch.")}
                if isinstance(v, torch.Tensor) else {} for v in vals]

    for node in program.graph_module.graph.nodes:
        if node.op == "output":
            continue
        if node.op == "call_function":
            target = getattr(node.target, "__name__", "")
            if target in ("alloc", "executorch_call_delegate"):
                continue
            op = _op_name(node.target)
        elif node.op in ("placeholder", "get_attr"):
            op = "const" if (node.op == "get_attr" or node.name in consts) else "input"
        else:
            continue
        entry = {"name": prefix + node.name, "op": op, "runtime": runtime, "subgraph": subgraph,
                 "out": outputs(node.meta.get("val"))}
        if node.op == "call_function":
            entry["args"] = encode(list(node.args))
            kwargs = {k: encode(v) for k, v in node.kwargs.items() if k != "out"}
            if kwargs:
                entry["kwargs"] = kwargs
        out.append(entry)


def _op_name(target: Any) -> str:
    import re

    name = getattr(target, "_name", None) or getattr(target, "__name__", None) or str(target)
    name = name.replace("::", ".")
    return re.sub(r"\.(out|default|Tensor_out|int_out|Tensor|Scalar_out|Scalar|self_out|IntList_out|dim)$", "", name)


# No work at all (tuple access, memory-planned views, scale computation fused into quantize).
_ET_FREE = {
    "getitem", "executorch_prim.et_view", "aten.sym_size", "aten.lift_fresh_copy", "aten.choose_qparams_affine",
    "torchao.choose_qparams_affine", "quantized_decomposed.choose_qparams",
    "quantized_decomposed.choose_qparams_per_token_asymmetric",
}
# Reshapes: inside a delegate an op with no data movement (XNNPACK's static reshape), a
# copy when a portable kernel runs them.
_ET_VIEWS = {"aten.view_copy", "aten.view", "aten.squeeze_copy", "aten.unsqueeze_copy", "aten.squeeze",
             "aten.unsqueeze", "aten.alias_copy", "aten.detach_copy", "aten._unsafe_view"}
_ET_DEQUANT = {
    "torchao.dequantize_affine", "quantized_decomposed.dequantize_per_tensor",
    "quantized_decomposed.dequantize_per_channel", "quantized_decomposed.dequantize_per_token",
    "quantized_decomposed.dequantize_per_channel_group", "quantized_decomposed.dequantize_per_tensor.tensor",
}
_ET_QUANT = {
    "torchao.quantize_affine", "quantized_decomposed.quantize_per_tensor", "quantized_decomposed.quantize_per_token",
    "quantized_decomposed.quantize_per_channel", "quantized_decomposed.quantize_per_tensor.tensor",
}
_ET_GEMM = {"aten.linear", "aten.mm", "aten.bmm", "aten.addmm", "aten.matmul", "aten.convolution",
            "aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu"}
_ET_COPY = {"aten.permute_copy", "aten.permute", "aten.transpose_copy", "aten.t_copy", "aten.clone",
            "dim_order_ops._clone_dim_order", "aten.expand_copy", "aten.cat", "aten.slice_copy",
            "aten.select_copy", "aten.index", "aten.embedding", "quantized_decomposed.embedding_byte",
            "quantized_decomposed.embedding_4bit", "quantized_decomposed.embedding_2bit", "aten.repeat",
            "aten.constant_pad_nd", "aten.split_with_sizes_copy", "aten.split_copy", "aten.full", "aten.arange",
            "aten.scalar_tensor", "aten.zeros", "aten.ones", "aten.full_like", "aten.index_select", "aten.gather",
            "dim_order_ops._to_dim_order_copy", "aten._to_copy", "aten.pixel_shuffle", "aten.unbind_copy"}
_ET_GATHERS = {"aten.embedding", "quantized_decomposed.embedding_byte", "quantized_decomposed.embedding_4bit",
               "quantized_decomposed.embedding_2bit", "aten.index", "aten.index_select", "aten.gather"}


def ops_from_executorch(data: dict[str, Any]) -> list[Op]:
    """Costed ops from the content of an artifact's ``ops.json``."""
    nodes = {n["name"]: n for n in data["nodes"]}
    consumers: dict[str, list[dict[str, Any]]] = {}
    for n in data["nodes"]:
        for ref in _refs(n.get("args", [])) + _refs(list(n.get("kwargs", {}).values())):
            consumers.setdefault(ref, []).append(n)

    def val(ref: str) -> dict[str, Any]:
        outs = nodes.get(ref, {}).get("out", [])
        return outs[0] if outs else {}

    def weight_of(ref: str) -> tuple[str, float] | None:
        """(stored dtype, stored bytes incl. scales) if ``ref`` is a constant or a dequantized one."""
        node = nodes.get(ref)
        if node is None:
            return None
        if node["op"] == "const":
            v = val(ref)
            return (_FLOAT.get(v.get("dtype", ""), v.get("dtype", "")), _nbytes(v.get("shape", []), v.get("dtype", "")))
        if node["op"] in _ET_DEQUANT:
            args = node["args"]
            src = args[0]["ref"] if isinstance(args[0], dict) else None
            if src is None or nodes.get(src, {}).get("op") != "const":
                return None
            stored = "int4" if _qrange(node) == (-8, 7) else "int8"
            v = val(src)
            total = _numel(v.get("shape", [])) * (0.5 if stored == "int4" else 1)
            for a in args[1:]:
                if isinstance(a, dict) and nodes.get(a["ref"], {}).get("op") == "const":
                    sv = val(a["ref"])
                    total += _nbytes(sv.get("shape", []), sv.get("dtype", ""))
            return stored, total
        return None

    def quantized_activation(ref: str) -> bool:
        node = nodes.get(ref, {})
        if node.get("op") not in _ET_DEQUANT:
            return False
        src = node["args"][0]
        return isinstance(src, dict) and nodes.get(src["ref"], {}).get("op") in _ET_QUANT

    def _quant_source_op(ref: str) -> str:
        """The op of the quantize node behind the activation dequantize ``ref``."""
        args = nodes.get(ref, {}).get("args", [])
        return nodes.get(args[0]["ref"], {}).get("op", "") if args and isinstance(args[0], dict) else ""

    def tensor_bytes(ref: str) -> float:
        v = val(ref)
        return _nbytes(v.get("shape", []), v.get("dtype", "float32")) if v else 0.0

    ops: list[Op] = []
    for n in data["nodes"]:
        op = n["op"]
        if op in ("const", "input") or op in _ET_FREE:
            continue
        if op in _ET_DEQUANT and (weight_of(n["name"]) is not None or _feeds_only_compute(n, consumers)):
            continue  # folded into the consumer
        refs = _refs(n.get("args", []))
        outs = [o for o in n.get("out", []) if o]
        out_bytes = sum(_nbytes(o["shape"], o["dtype"]) for o in outs)
        out_elems = _numel(outs[0]["shape"]) if outs else 0
        out_dtype = outs[0]["dtype"] if outs else "float32"
        dtype = _FLOAT.get(out_dtype, "fp32")
        if op in _ET_VIEWS and n["subgraph"] >= 0:
            ops.append(_et_op(n, "view", dtype, "", 0.0, 0.0, 0.0, out_elems))
            continue
        if op in _ET_QUANT:
            if _static_requant(n, nodes):
                continue  # requantization at the output of a static int8 op: fused into it
            if n["runtime"] == "xnnpack" and not op.startswith("quantized_decomposed.quantize_per_tensor"):
                continue  # XNNPACK's dynamically quantized GEMMs quantize their input themselves
            ops.append(_et_op(n, "quantize", "fp32", "", 0.0, tensor_bytes(refs[0]) + out_bytes, 0.0, out_elems))
            continue
        if op in _ET_GEMM:
            users = consumers.get(n["name"], [])
            if len(users) == 1 and _static_requant(users[0], nodes):
                out_bytes = out_elems  # a static int8 op writes int8
            ops.append(_et_gemm(n, op, refs, val, weight_of, quantized_activation, tensor_bytes, out_bytes, dtype,
                                _quant_source_op))
            continue
        if op in _ET_COPY:
            if op in _ET_GATHERS:
                # A gather reads the rows it picks, not the whole table.
                table = weight_of(refs[0]) if refs else None
                packed = {"embedding_byte": ("int8", 1.0), "embedding_4bit": ("int4", 0.5),
                          "embedding_2bit": ("int2", 0.25)}.get(op.split(".")[-1])
                stored, per = packed or (table[0] if table else "", _ITEMSIZE.get(out_dtype, 4))
                if table is not None and not packed and table[0] in ("int8", "int4"):
                    per = 1.0 if table[0] == "int8" else 0.5
                index_bytes = sum(tensor_bytes(r) for r in refs[1:] if weight_of(r) is None)
                ops.append(_et_op(n, "copy", dtype, stored if table else "", 0.0,
                                  out_elems * per + index_bytes + out_bytes, 0.0, out_elems))
            else:
                moved = sum(tensor_bytes(r) for r in refs) if op not in ("aten.full", "aten.arange", "aten.zeros",
                                                                        "aten.ones", "aten.scalar_tensor") else 0
                ops.append(_et_op(n, "copy", dtype, "", 0.0, moved + out_bytes, 0.0, out_elems))
            continue
        short = op.split(".")[-1]
        if short in _FUSED_ACTIVATIONS and refs and _after_gemm(refs[0], nodes, consumers):
            continue  # runtimes fuse an activation into the matrix product before it
        in_bytes = sum(tensor_bytes(r) for r in refs)
        elems = max([out_elems] + [_numel(val(r).get("shape", [])) for r in refs])  # reductions read more
        flops = elems * _FLOPS_PER_ELEMENT.get(short, 1)
        ops.append(_et_op(n, "elementwise", dtype, "", flops, in_bytes + out_bytes, 0.0, out_elems))
    return ops


_FUSED_ACTIVATIONS = {"relu", "hardtanh", "clamp", "relu6"}


def _after_gemm(ref: str, nodes: dict[str, dict[str, Any]], consumers: dict[str, list[dict[str, Any]]]) -> bool:
    """``ref`` is the only use of a matrix product's output (looking through static int8 q/dq)."""
    for _ in range(3):
        node = nodes.get(ref)
        if node is None or len(consumers.get(ref, [])) != 1:
            return False
        if node["op"] in _ET_GEMM:
            return True
        if node["op"] not in _ET_DEQUANT | _ET_QUANT:
            return False
        args = node.get("args", [])
        if not args or not isinstance(args[0], dict):
            return False
        ref = args[0]["ref"]
    return False


def _et_op(n: dict[str, Any], kind: str, dtype: str, weights: str, flops: float, nbytes: float,
           weight_bytes: float, _elems: int) -> Op:
    return Op(name=n["name"], op=n["op"], kind=kind, dtype=dtype, weights=weights, runtime=n["runtime"],
              flops=float(flops), bytes=float(nbytes), weight_bytes=float(weight_bytes), subgraph=n["subgraph"])


def _et_gemm(n, op, refs, val, weight_of, quantized_activation, tensor_bytes, out_bytes, dtype, nodes_op) -> Op:
    out = val(n["name"]) if n.get("out") else {}
    out_elems = _numel(out.get("shape", []))
    weights, wbytes, act_bytes, int8_act = "", 0.0, 0.0, False
    if op == "aten.convolution":
        w = val(refs[1])
        k = _numel(w.get("shape", [1, 1])[1:])
        flops = 2.0 * out_elems * k
        operands = refs[:2]
    elif op in ("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu"):
        q, kk = val(refs[0]).get("shape", []), val(refs[1]).get("shape", [])
        flops = 4.0 * _numel(q) * (kk[-2] if len(kk) >= 2 else 1)
        operands = refs[:3]
    elif op == "aten.addmm":  # addmm(bias, a, b)
        a = val(refs[1]).get("shape", [1])
        flops = 2.0 * out_elems * a[-1]
        operands = refs[1:3]
    else:  # linear(x, W[N, K], b), mm, bmm, matmul: K is the activation's last dim
        a = val(refs[0]).get("shape", [1])
        flops = 2.0 * out_elems * a[-1]
        operands = refs[:2]
    for r in refs:
        w = weight_of(r)
        if w is not None:
            if w[0] in ("int8", "int4") or not weights:
                weights = w[0]
            wbytes += w[1]
        elif r in operands:
            if quantized_activation(r):
                int8_act = True
                fused = n["runtime"] == "xnnpack" and "quantize_per_tensor" not in str(nodes_op(r))
                # XNNPACK reads the fp32 activation and quantizes it inside the GEMM
                act_bytes += tensor_bytes(r) / (1 if fused else _ITEMSIZE.get(val(r).get("dtype", "float32"), 4))
            else:
                act_bytes += tensor_bytes(r)
    compute = "int8" if int8_act else dtype
    return Op(name=n["name"], op=op, kind="gemm", dtype=compute, weights=weights, runtime=n["runtime"],
              flops=flops, bytes=wbytes + act_bytes + out_bytes, weight_bytes=wbytes, subgraph=n["subgraph"])


def _refs(args: Any) -> list[str]:
    found: list[str] = []
    if isinstance(args, dict) and "ref" in args:
        found.append(args["ref"])
    elif isinstance(args, (list, tuple)):
        for a in args:
            found.extend(_refs(a))
    return found


def _qrange(node: dict[str, Any]) -> tuple[Any, Any]:
    """(quant_min, quant_max) of a (de)quantize node, from its positional args or kwargs."""
    args, kwargs = node.get("args", []), node.get("kwargs", {})
    ints = [a for a in args[2:] if isinstance(a, int) and not isinstance(a, bool)]
    if "quant_min" in kwargs:
        return kwargs.get("quant_min"), kwargs.get("quant_max")
    if any(isinstance(a, str) and a == "int4" for a in args):
        return (-8, 7)
    return (ints[-2], ints[-1]) if len(ints) >= 2 else (None, None)


def _feeds_only_compute(node: dict[str, Any], consumers: dict[str, list[dict[str, Any]]]) -> bool:
    """An activation dequantize whose consumers are all compute ops: fused into them."""
    users = consumers.get(node["name"], [])
    return bool(users) and all(u["op"] in _ET_GEMM or u["op"] not in _ET_COPY for u in users)


def _static_requant(node: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> bool:
    """A static (PT2E, constant scale) quantize of an op's output: the int8 op writes int8 itself.
    Quantizing a graph input is a real conversion pass and is kept."""
    args = node.get("args", [])
    if not node["op"].startswith("quantized_decomposed.quantize_per_tensor") or len(args) < 2:
        return False
    if not isinstance(args[1], float):
        return False
    src = nodes.get(args[0]["ref"]) if isinstance(args[0], dict) else None
    return src is not None and src["op"] not in ("input", "const")
