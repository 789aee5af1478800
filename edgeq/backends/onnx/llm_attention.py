"""Each decoder layer's attention as one ``com.microsoft.GroupQueryAttention``.

After ``llm_fusion.fuse_rotary``, a layer's attention in the exported graph is: q, k, v
projections reshaped to heads and transposed, q and k through ``RotaryEmbedding``, the
cache concatenated (``present.i.key = Concat(past.i.key, k)``), k and v repeated to the
query heads, scaled scores, a causal mask, softmax, the weighted sum, transposed back.
That is ~30 nodes a layer; GroupQueryAttention does all of it in one kernel (rotary
inside, from the same cos / sin tables), reading the projections as they come out of
their MatMuls and writing ``present.i.key`` / ``present.i.value`` itself. When every layer
fused, ``share_kv_buffers`` then makes each layer's past and present one buffer of
``max_context`` positions (see there).

Anchored on the cache: for layer i, ``present.i.key`` / ``.value`` must be exactly
``Concat(past, RotaryEmbedding(Transpose(Reshape(k_proj))))`` / ``Concat(past,
Transpose(Reshape(v_proj)))``, the scores' MatMul must read the query's
``RotaryEmbedding`` and the key cache, and the output MatMul the value cache; a layer
that differs (q/k norms between the projection and the rotary, a sliding window shorter
than the context, logit soft-capping) keeps its exported attention. Head counts come from
the graph's reshapes (``-1``: the config's), the scale from the constants the graph
multiplies the scores by, so nothing is assumed that the graph does not show.
"""

from __future__ import annotations

from typing import Any


def fuse_group_query_attention(proto: Any, config: Any, max_context: int, layers: int) -> int:
    """Rewrite each layer's attention in ``proto`` (in place); returns how many layers."""
    import numpy as np
    from onnx import helper, numpy_helper

    if getattr(config, "attn_logit_softcapping", None) or _sliding_window(config, max_context):
        return 0
    q_heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // q_heads if q_heads else None)
    from edgeq.backends.onnx.llm_fusion import graph_index

    g = proto.graph
    consts, producer, readers = graph_index(g)

    def made_by(name: str, op: str) -> Any:
        n = producer.get(name)
        return n if n is not None and n.op_type == op else None

    def heads_of(t: str, config_heads: Any) -> tuple[str, int, int] | None:
        """``t = Transpose(0,2,1,3)(Reshape(x, [.., .., heads, dim]))`` → ``(x, heads, dim)``;
        a ``-1`` head count (``view(*shape, -1, head_dim)``) is the config's."""
        tr = made_by(t, "Transpose")
        perm = [a.ints for a in tr.attribute if a.name == "perm"] if tr is not None else []
        rs = made_by(tr.input[0], "Reshape") if tr is not None else None
        shape = consts.get(rs.input[1]) if rs is not None else None
        if not perm or list(perm[0]) != [0, 2, 1, 3] or shape is None or shape.size != 4 or shape[3] < 1:
            return None
        heads = int(shape[2]) if shape[2] != -1 else config_heads
        if not isinstance(heads, int) or heads < 1 or shape[3] != head_dim:
            return None
        return rs.input[0], heads, int(shape[3])

    def downstream(start: str, op: str, limit: int = 12) -> list[Any]:
        """Nodes of type ``op`` reached from ``start`` within ``limit`` steps."""
        found, frontier, seen = [], [start], set()
        for _ in range(limit):
            nxt = []
            for name in frontier:
                for r in readers.get(name, []):
                    if id(r) in seen:
                        continue
                    seen.add(id(r))
                    if r.op_type == op:
                        found.append(r)
                    else:
                        nxt.extend(r.output)
            frontier = nxt
        return found

    fused = []
    for i in range(layers):
        cat_k, cat_v = made_by(f"present.{i}.key", "Concat"), made_by(f"present.{i}.value", "Concat")
        if cat_k is None or cat_v is None or list(cat_k.input)[:1] != [f"past.{i}.key"] \
                or list(cat_v.input)[:1] != [f"past.{i}.value"] or len(cat_k.input) != 2 or len(cat_v.input) != 2:
            continue
        k_rot = made_by(cat_k.input[1], "RotaryEmbedding")
        k = heads_of(k_rot.input[0], kv_heads) if k_rot is not None else None
        v = heads_of(cat_v.input[1], kv_heads)
        if k is None or v is None or k[1:] != v[1:]:
            continue
        scores = downstream(f"present.{i}.key", "MatMul")
        if len(scores) != 1:
            continue
        q_rot = next((made_by(x, "RotaryEmbedding") for x in _ancestors(scores[0], producer, 4)
                      if made_by(x, "RotaryEmbedding") is not None and x != cat_k.input[1]), None)
        q = heads_of(q_rot.input[0], q_heads) if q_rot is not None else None
        if q is None or q[2] != k[2] or q[1] % k[1] or list(q_rot.input[1:]) != list(k_rot.input[1:]):
            continue
        scale = _score_scale(scores[0], q_rot.output[0], f"present.{i}.key", producer, consts)
        after = _scale_after(scores[0], readers, consts)
        scale = scale * after if scale is not None and after is not None else None
        weighted = downstream(f"present.{i}.value", "MatMul")
        if scale is None or len(weighted) != 1 or downstream(scores[0].output[0], "MatMul") != weighted:
            continue
        heads_out = weighted[0].output[0]
        same = readers.get(heads_out, [])  # a reshape to the same [batch, heads, seq, dim] may come first
        shape = consts.get(same[0].input[1]) if len(same) == 1 and same[0].op_type == "Reshape" else None
        if shape is not None and shape.size == 4 and int(shape[1]) == q[1] and int(shape[3]) == q[2]:
            heads_out = same[0].output[0]
        tr = readers.get(heads_out, [])
        rs = readers.get(tr[0].output[0], []) if len(tr) == 1 and tr[0].op_type == "Transpose" else []
        if len(rs) != 1 or rs[0].op_type != "Reshape" or [list(a.ints) for a in tr[0].attribute] != [[0, 2, 1, 3]]:
            continue
        fused.append((i, q, k, v, q_rot, scale, rs[0], cat_k, cat_v))
    if not fused:
        return 0
    offset, cos, sin = fused[0][4].input[1], fused[0][4].input[2], fused[0][4].input[3]
    prefix = "edgeq_gqa"
    new = [
        helper.make_node("Shape", ["input_ids"], [f"{prefix}.seq"], name=f"{prefix}/seq", start=1, end=2),
        helper.make_node("Add", [offset, f"{prefix}.seq"], [f"{prefix}.total64"], name=f"{prefix}/total"),
        helper.make_node("Cast", [f"{prefix}.total64"], [f"{prefix}.total"], name=f"{prefix}/total32", to=6),
        helper.make_node("Sub", [f"{prefix}.total", f"{prefix}.one"], [f"{prefix}.seqlens_k"], name=f"{prefix}/seqlens"),
        helper.make_node("Squeeze", [f"{prefix}.total"], [f"{prefix}.total_len"], name=f"{prefix}/total_len"),
    ]
    g.initializer.append(numpy_helper.from_array(np.ones(1, dtype=np.int32), f"{prefix}.one"))
    replaced: dict[int, Any] = {}
    drop: set[int] = set()
    for i, q, k, v, q_rot, scale, out, cat_k, cat_v in fused:
        replaced[id(out)] = helper.make_node(
            "GroupQueryAttention",
            [q[0], k[0], v[0], f"past.{i}.key", f"past.{i}.value", f"{prefix}.seqlens_k", f"{prefix}.total_len",
             cos, sin],
            [out.output[0], f"present.{i}.key", f"present.{i}.value"], name=f"{prefix}/layer{i}",
            domain="com.microsoft", num_heads=q[1], kv_num_heads=k[1], scale=float(scale), do_rotary=1,
            rotary_interleaved=0)
        drop |= {id(cat_k), id(cat_v)}
    nodes = new + [replaced.get(id(n), n) for n in g.node if id(n) not in drop]
    g.ClearField("node")
    g.node.extend(nodes)
    from edgeq.backends.onnx.llm_fusion import drop_unread

    drop_unread(proto)
    return len(fused)


def _sliding_window(config: Any, max_context: int) -> bool:
    window = getattr(config, "sliding_window", None)
    used = getattr(config, "use_sliding_window", True)
    return bool(used) and isinstance(window, int) and 0 < window < max_context


def _ancestors(node: Any, producer: dict[str, Any], depth: int) -> list[str]:
    """Tensor names feeding ``node`` within ``depth`` steps."""
    names, frontier = [], list(node.input)
    for _ in range(depth):
        names.extend(frontier)
        frontier = [i for name in frontier if name in producer for i in producer[name].input]
    return names


def _scale_after(scores: Any, readers: dict[str, list[Any]], consts: dict[str, Any]) -> float | None:
    """The constant factor applied to the scores between their MatMul and the Softmax (an eager
    attention's ``Mul(scores, scaling)``; a mask ``Add`` passes); None for anything else."""
    scale, name = 1.0, scores.output[0]
    for _ in range(6):
        nxt = readers.get(name, [])
        if len(nxt) != 1:
            return None
        n = nxt[0]
        if n.op_type == "Softmax":
            return scale
        c = next((consts[i] for i in n.input if i in consts), None)
        if n.op_type in ("Mul", "Div") and c is not None and c.size == 1 and list(n.input).index(name) == 0 \
                or n.op_type == "Mul" and c is not None and c.size == 1:
            factor = float(c.reshape(-1)[0])
            scale = scale / factor if n.op_type == "Div" else scale * factor
        elif n.op_type != "Add" or c is not None:  # a mask is computed in the graph, not a constant
            return None
        name = n.output[0]
    return None


def _score_scale(scores: Any, q: str, key_cache: str, producer: dict[str, Any], consts: dict[str, Any]) -> float | None:
    """The scale the exported scores apply: the product of the constant ``Mul`` factors on the
    query and on the key side of the scores' MatMul (the exporter splits 1/sqrt(d) as a square
    root on each); None when the two sides are not plain chains of reshapes and scalings."""
    scale = 1.0
    for side, source in zip(scores.input, (q, key_cache)):
        name, hops = side, 0
        while name != source and hops < 12:
            n = producer.get(name)
            if n is None:
                return None
            if n.op_type == "Mul":
                c = next((consts[i] for i in n.input if i in consts), None)
                if c is None or c.size != 1:
                    return None
                scale *= float(c.reshape(-1)[0])
                name = next(i for i in n.input if i not in consts)
            elif n.op_type in ("Reshape", "Transpose", "Expand", "Unsqueeze"):
                name = n.input[0]
            else:
                return None
            hops += 1
        if name != source:
            return None
    return scale


# Graph inputs of a model whose KV cache is one buffer per layer shared by past and present:
# GroupQueryAttention's own ``seqlens_k`` (tokens in the cache after this call, minus one)
# and ``total_sequence_length`` (tokens after this call), fed by the session.
SEQLENS_K, TOTAL_LENGTH = "seqlens_k", "total_sequence_length"


def share_kv_buffers(proto: Any, layers: int, max_context: int) -> bool:
    """Give every layer one KV buffer of ``max_context`` positions, read as ``past.i.*`` and
    written as ``present.i.*`` by its GroupQueryAttention (ONNX Runtime shares them when both
    are bound to the same memory: the kernel writes the new positions in place instead of
    copying the whole cache into a new present at every call). The cache length then no
    longer comes from the past's shape: the session feeds ``seqlens_k`` and
    ``total_sequence_length``. Only when every layer's attention was fused and nothing else
    reads the cache; returns whether the graph was rewritten."""
    from onnx import TensorProto, helper

    from edgeq.backends.onnx.llm_fusion import drop_unread, graph_index

    g = proto.graph
    _, producer, readers = graph_index(g)
    gqa = [n for n in g.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
    if len(gqa) != layers:
        return False
    total = producer.get("edgeq_gqa.total64")
    offset = producer.get(total.input[0]) if total is not None else None
    if offset is None or offset.op_type != "Shape" or list(offset.input) != ["past.0.key"]:
        return False
    derived = {"edgeq_gqa.seq", "edgeq_gqa.total64", "edgeq_gqa.total", "edgeq_gqa.seqlens_k", "edgeq_gqa.total_len"}
    for i in range(layers):
        for kv in ("key", "value"):
            allowed = {id(gqa[i]), id(offset)} if (i, kv) == (0, "key") else {id(gqa[i])}
            if any(id(r) not in allowed for r in readers.get(f"past.{i}.{kv}", [])):
                return False
    # the offset and what is computed from it are read by the attentions' length inputs alone
    for name in [offset.output[0], *derived]:
        if any(r.op_type != "GroupQueryAttention" and not (r.output and r.output[0] in derived)
               for r in readers.get(name, [])):
            return False
    rename = {"edgeq_gqa.seqlens_k": SEQLENS_K, "edgeq_gqa.total_len": TOTAL_LENGTH}
    for n in gqa:
        n.input[5], n.input[6] = rename.get(n.input[5], n.input[5]), rename.get(n.input[6], n.input[6])
        if (n.input[5], n.input[6]) != (SEQLENS_K, TOTAL_LENGTH):
            return False
    inputs = list(g.input)
    new_inputs = [helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, [1]),
                  helper.make_tensor_value_info(TOTAL_LENGTH, TensorProto.INT32, [])]
    g.ClearField("input")
    g.input.extend(inputs[:1] + new_inputs + inputs[1:])
    for value in list(g.input) + list(g.output):
        if value.name.startswith(("past.", "present.")):
            dims = value.type.tensor_type.shape.dim
            dims[2].ClearField("dim_param")
            dims[2].dim_value = max_context
    drop_unread(proto)
    return True


def pack_qkv(proto: Any) -> int:
    """Each GroupQueryAttention whose q, k and v come from three ``MatMulNBits`` of one input
    with the same bits, block and accuracy (each read by that attention alone) reads one
    ``MatMulNBits`` of the three weights stacked along N instead (GroupQueryAttention's packed
    QKV input, key and value left empty). Per-row blocks, scales and zero points stack row by
    row, so every output value is what the three computed (the int8 activation blocks are the
    same input's); a decode step then runs one small kernel instead of three (SmolLM2: k and v
    have N = 192, a kernel's fixed cost is most of their time). Returns how many were packed."""
    import numpy as np
    from onnx import helper, numpy_helper

    from edgeq.backends.onnx.llm_fusion import drop_unread, graph_index

    g = proto.graph
    _, producer, readers = graph_index(g)
    inits = {t.name: t for t in g.initializer}

    def attrs(n: Any) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in n.attribute}

    replaced: dict[int, list[Any]] = {}
    drop: set[int] = set()
    for gqa in [n for n in g.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]:
        mms = [producer.get(name) for name in gqa.input[:3]]
        if any(m is None or m.op_type != "MatMulNBits" or m.domain != "com.microsoft" for m in mms):
            continue
        if len({m.input[0] for m in mms}) != 1 or any(len(readers.get(m.output[0], [])) != 1 for m in mms):
            continue
        a = [attrs(m) for m in mms]
        same = [{k: v for k, v in x.items() if k != "N"} for x in a]
        zero = {len(m.input) > 3 and bool(m.input[3]) for m in mms}
        if same[0] != same[1] or same[0] != same[2] or len(zero) != 1 or any(len(m.input) > 4 and any(m.input[4:])
                                                                              for m in mms):
            continue
        names = [[m.input[i] for m in mms] for i in range(1, 4 if zero == {True} else 3)]
        if any(n not in inits or len(readers.get(n, [])) != 1 for group in names for n in group):
            continue
        stacked = []
        for group in names:
            arrays = [numpy_helper.to_array(inits[n]) for n in group]
            if len({x.ndim for x in arrays}) != 1 or len({x.shape[1:] for x in arrays}) != 1:
                break
            stacked.append(numpy_helper.from_array(np.concatenate(arrays, axis=0), f"{group[0]}.qkv"))
        if len(stacked) != len(names):
            continue
        g.initializer.extend(stacked)
        out = f"{mms[0].output[0]}.qkv"
        fused = helper.make_node("MatMulNBits", [mms[0].input[0], *[t.name for t in stacked]], [out],
                                 name=f"{mms[0].name}/qkv", domain="com.microsoft",
                                 **{**a[0], "N": int(sum(x["N"] for x in a))})
        replaced[id(mms[0])] = [fused]
        drop |= {id(mms[1]), id(mms[2])}
        gqa.input[0], gqa.input[1], gqa.input[2] = out, "", ""
    if not replaced:
        return 0
    nodes = [x for n in g.node if id(n) not in drop for x in replaced.get(id(n), [n])]
    g.ClearField("node")
    g.node.extend(nodes)
    drop_unread(proto)
    return len(replaced)
