"""ONNX graph surgery edgeq needs around ONNX Runtime's quantizers.

- ``gemm_to_matmul``: ORT's 4-bit MatMulNBits quantizer ignores Gemm (torch exports a
  linear on 2-D input as Gemm), so Gemms with constant weights become MatMul + Add.
- ``layer_nodes``: map weight-bearing nodes back to PyTorch module names through the
  ``pkg.torch.onnx.name_scopes`` metadata the dynamo exporter writes (quantized nodes
  lose it, so the map is built from the FP32 graph).
- ``fold_weight_transposes``: a tied LM head reads ``Transpose(embedding table)``; a head
  planned below fp32 gets the transposed table as its own initializer to quantize.
- ``dedupe_nodes``: the float16 converter can emit the same Cast twice.
- ``merge_equal_scalings``: an encoder's smoothed q/k/v each divide the same input by an
  equal constant (``edgeq.algorithms.smooth``); one Div serves the three, so one
  DynamicQuantizeLinear does too.
- ``reader_counts`` / ``use_contrib_domain``: how many nodes read each value; declare the
  ``com.microsoft`` domain for the contrib ops a rewrite added.
"""

from __future__ import annotations

import ast
from typing import Any

WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Gather": 0, "Conv": 1}  # op → index of its weight input


def gemm_to_matmul(model: Any) -> list[str]:
    """Rewrite ``Gemm(A, B_const, C)`` as ``MatMul(A, B') [+ Add(C')]`` in place.

    The MatMul keeps the Gemm's name and metadata, so name-based node lists still apply.
    Returns the names of the rewritten nodes.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    taken = set(inits) | {i.name for i in g.input} | {o for n in g.node for o in n.output} | {n.name for n in g.node}

    def unique(name: str) -> str:
        base, i = name, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    new_nodes, new_inits, done = [], [], []
    for n in g.node:
        if n.op_type != "Gemm" or n.domain not in ("", "ai.onnx") or n.input[1] not in inits:
            new_nodes.append(n)
            continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
        b = numpy_helper.to_array(inits[n.input[1]])
        if int(at.get("transB", 0)):
            b = b.T
        if alpha != 1.0:
            b = b * np.asarray(alpha, dtype=b.dtype)
        b_name = unique(n.input[1] + "_matmul_b")
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(b), b_name))
        a_name, pre, post = n.input[0], [], []
        if int(at.get("transA", 0)):
            t_out = unique(n.name + "_transA_out")
            pre.append(helper.make_node("Transpose", [a_name], [t_out], name=unique(n.name + "/transA"), perm=[1, 0]))
            a_name = t_out
        has_c = len(n.input) > 2 and n.input[2] != ""
        mm_out = unique(n.output[0] + "_matmul") if has_c else n.output[0]
        mm = helper.make_node("MatMul", [a_name, b_name], [mm_out], name=n.name)
        if has_c:
            c_name = n.input[2]
            if beta != 1.0:
                if c_name in inits:
                    c = numpy_helper.to_array(inits[c_name]) * np.asarray(beta, dtype=b.dtype)
                    c_name = unique(n.input[2] + "_beta")
                    new_inits.append(numpy_helper.from_array(c, c_name))
                else:
                    beta_name = unique(n.name + "_beta")
                    new_inits.append(numpy_helper.from_array(np.asarray(beta, dtype=b.dtype), beta_name))
                    scaled = unique(n.name + "_beta_c")
                    post.append(helper.make_node("Mul", [c_name, beta_name], [scaled], name=unique(n.name + "/beta")))
                    c_name = scaled
            post.append(helper.make_node("Add", [mm_out, c_name], [n.output[0]], name=unique(n.name + "/bias_add")))
        for node in pre + [mm] + post:
            for p in n.metadata_props:
                node.metadata_props.add(key=p.key, value=p.value)
        new_nodes.extend(pre + [mm] + post)
        done.append(n.name)
    g.ClearField("node")
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)
    g.ClearField("value_info")  # stale shapes after the rewrite break ORT's shape inference
    return done


def fold_weight_transposes(model: Any, layers: set[str]) -> list[str]:
    """For MatMuls of ``layers`` whose weight is ``Transpose(initializer)`` (a tied LM head
    reading the embedding table), store the transposed weight as an initializer of its own,
    so the quantizers see a constant weight. Returns the MatMuls' names."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    done, drop = [], set()
    for n in g.node:
        if n.op_type != "MatMul" or len(n.input) < 2 or _scope(n) not in layers:
            continue
        t = producer.get(n.input[1])
        if t is None or t.op_type != "Transpose" or t.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[t.input[0]])
        perm = {a.name: helper.get_attribute_value(a) for a in t.attribute}.get("perm") or list(range(w.ndim))[::-1]
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(perm)), t.output[0]))
        if readers.get(t.output[0], 0) == 1:
            drop.add(t.name)
        done.append(n.name)
    if drop:
        keep = [n for n in g.node if n.name not in drop]
        g.ClearField("node")
        g.node.extend(keep)
    return done


def _scope(node: Any) -> str | None:
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        names = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", ""))
    except (ValueError, SyntaxError):
        return None
    return names[-2] if len(names) >= 2 else None


def called_layers(model: Any) -> set[str]:
    """Module names with a node in the graph (whatever feeds their weight)."""
    return {scope for n in model.graph.node if (scope := _scope(n)) is not None}


def layer_nodes(model: Any) -> dict[str, list[tuple[str, str]]]:
    """``{module fqn: [(node name, op type), ...]}`` for nodes whose weight is a constant."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, list[tuple[str, str]]] = {}
    for n in model.graph.node:
        idx = WEIGHT_OPS.get(n.op_type)
        if idx is None or len(n.input) <= idx or n.input[idx] not in inits:
            continue
        scope = _scope(n)
        if scope is not None:
            out.setdefault(scope, []).append((n.name, n.op_type))
    return out


def dedupe_nodes(model: Any) -> None:
    """Drop exact duplicate nodes (same op, inputs, outputs, attributes)."""
    seen, keep = set(), []
    for n in model.graph.node:
        key = (n.op_type, tuple(n.input), tuple(n.output), tuple(a.SerializeToString() for a in n.attribute))
        if key not in seen:
            seen.add(key)
            keep.append(n)
    model.graph.ClearField("node")
    model.graph.node.extend(keep)


def merge_equal_scalings(model: Any) -> int:
    """Merge ``Div`` / ``Mul`` nodes that read the same value and an equal constant
    (initializer): the first keeps its output, the others' readers read it. Returns how many
    nodes were dropped."""
    import hashlib

    from onnx import AttributeProto, numpy_helper

    g = model.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return 0  # a subgraph may read a merged value by name: left as it is
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    first: dict[tuple[Any, ...], str] = {}
    renamed: dict[str, str] = {}
    keep = []
    for n in g.node:
        const = n.input[1] if len(n.input) == 2 and n.input[1] in inits else None
        if n.op_type not in ("Div", "Mul") or n.domain not in ("", "ai.onnx") or const is None \
                or n.output[0] in outputs:
            keep.append(n)
            continue
        t = inits[const]
        key = (n.op_type, renamed.get(n.input[0], n.input[0]), t.data_type, tuple(t.dims),
               hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest())
        if key in first:
            renamed[n.output[0]] = first[key]
            continue
        first[key] = n.output[0]
        keep.append(n)
    if not renamed:
        return 0
    for n in keep:
        for i, name in enumerate(n.input):
            if name in renamed:
                n.input[i] = renamed[name]
    g.ClearField("node")
    g.node.extend(keep)
    read = {i for n in g.node for i in n.input}
    unused = [t for t in g.initializer if t.name not in read]
    for t in unused:
        g.initializer.remove(t)
    return len(renamed)


def op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def reader_counts(graph: Any) -> dict[str, int]:
    """How many node inputs of ``graph`` read each value name."""
    counts: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def use_contrib_domain(model: Any) -> None:
    """Declare ONNX Runtime's ``com.microsoft`` domain (version 1) unless ``model`` already does."""
    from onnx import helper

    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
