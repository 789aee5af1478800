"""Fusions applied to an exported decoder LLM graph, so a decode step runs fewer kernels.

- ``fuse_rms_norms``: the exporter writes RMSNorm as seven nodes, ``Pow(x, 2) →
  ReduceMean(last axis) → Add(ε) → Sqrt → Reciprocal → Mul(x, ·) → Mul(γ, ·)``; ONNX
  Runtime's own SimplifiedLayerNormFusion does not match it (it expects a Div), so it is
  rewritten here as one ``SimplifiedLayerNormalization`` (ONNX Runtime's RMSNorm kernel,
  fp32 statistics).

- ``fuse_skip_norms``: each residual ``Add`` read by such a norm becomes one
  ``com.microsoft.SkipSimplifiedLayerNormalization`` that returns both the norm and the sum
  (its ``input_skip_bias_sum`` output keeps the Add's name for the next residual). ONNX
  Runtime's own fusion does not apply here: it needs the Add's shapes, which the graph does
  not carry after edgeq's rewrites (profiled on SmolLM2-135M: 60 Adds and 61 norms ran per
  decode step as separate kernels).

- ``fuse_rotary``: rotary position embedding, written per layer for q and for k as
  ``t·cos + concat(-t[..., h:], t[..., :h])·sin`` (seven nodes), becomes one
  ``com.microsoft.RotaryEmbedding`` reading cos / sin tables of ``max_context`` positions
  computed by the model's own rotary module and the position offset taken from the cache
  length. Only for rope types whose angles depend on the position alone (``ROPE_TYPES``).

A match must be exact (every intermediate read once, constant exponent 2, ε and γ
constants, the mean over the last axis only); anything else stays as exported, so an
architecture the pattern does not fit (GPT-2's LayerNorm, a norm whose γ is computed)
keeps its graph unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

from edgeq.backends.onnx.graph import use_contrib_domain


class _Constants(Mapping):
    """Name → numpy value of a graph's initializers and ``Constant`` nodes, converted when
    first read (a pattern reads a few scalars; converting every weight would copy the model)."""

    def __init__(self, graph: Any) -> None:
        self._tensors = {t.name: t for t in graph.initializer}
        for n in graph.node:  # scalars the exporter writes as Constant nodes
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self._tensors[n.output[0]] = n.attribute[0].t
        self._arrays: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._arrays:
            from onnx import numpy_helper

            self._arrays[name] = numpy_helper.to_array(self._tensors[name])
        return self._arrays[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def graph_index(graph: Any) -> tuple[Mapping[str, Any], dict[str, Any], dict[str, list[Any]]]:
    """What the fusions look up in ``graph``: its constant values by name, the node producing
    each value, and the nodes reading each value (in graph order)."""
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return _Constants(graph), producer, readers


def fuse_rms_norms(proto: Any) -> int:
    """Rewrite every exact RMSNorm pattern in ``proto`` (in place); returns how many."""
    import numpy as np
    from onnx import helper

    g = proto.graph
    consts, _, readers = graph_index(g)
    outputs = {o.name for o in g.output}

    def value(name: str) -> Any:
        return consts.get(name)

    def only_reader(name: str, op: str) -> Any:
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and r[0].domain in ("", "ai.onnx") \
            and name not in outputs else None

    drop: set[int] = set()
    fused: dict[int, Any] = {}  # id of the last node of a pattern → its replacement
    for pw in g.node:
        if pw.op_type != "Pow" or pw.domain not in ("", "ai.onnx"):
            continue
        x = pw.input[0]
        exponent = value(pw.input[1])
        mean = only_reader(pw.output[0], "ReduceMean")
        if exponent is None or exponent.size != 1 or float(exponent) != 2.0 or mean is None:
            continue
        if not _mean_over_last_axis(mean, value):
            continue
        add = only_reader(mean.output[0], "Add")
        eps = value(next((i for i in add.input if i != mean.output[0]), "")) if add is not None else None
        sqrt = only_reader(add.output[0], "Sqrt") if add is not None else None
        recip = only_reader(sqrt.output[0], "Reciprocal") if sqrt is not None else None
        scale = only_reader(recip.output[0], "Mul") if recip is not None else None
        if eps is None or eps.size != 1 or scale is None or set(scale.input) != {x, recip.output[0]}:
            continue
        gamma_mul = only_reader(scale.output[0], "Mul")
        gamma = next((i for i in gamma_mul.input if i != scale.output[0]), None) if gamma_mul is not None else None
        weight = value(gamma) if gamma is not None else None
        if weight is None or weight.ndim != 1 or weight.dtype != np.float32:
            continue
        chain = [pw, mean, add, sqrt, recip, scale, gamma_mul]
        drop |= {id(n) for n in chain[:-1]}
        fused[id(gamma_mul)] = helper.make_node(
            "SimplifiedLayerNormalization", [x, gamma], [gamma_mul.output[0]], name=f"{gamma_mul.name}/rms_norm",
            axis=-1, epsilon=float(eps), stash_type=1)
    if not fused:
        return 0
    nodes = [fused.get(id(n), n) for n in g.node if id(n) not in drop]
    g.ClearField("node")
    g.node.extend(nodes)
    drop_unread(proto)
    return len(fused)


def fuse_skip_norms(proto: Any) -> int:
    """Rewrite every ``SimplifiedLayerNormalization(Add(a, b))`` whose Add adds two computed
    tensors (a residual, not a constant bias) as ``SkipSimplifiedLayerNormalization(a, b)``;
    returns how many."""
    from onnx import helper

    g = proto.graph
    consts, producer, _ = graph_index(g)
    outputs = {o.name for o in g.output}
    replaced: dict[int, Any] = {}
    drop: set[int] = set()
    for norm in g.node:
        if norm.op_type != "SimplifiedLayerNormalization" or norm.domain not in ("", "ai.onnx"):
            continue
        add = producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx") or id(add) in replaced \
                or len(add.input) != 2 or any(i in consts for i in add.input) or add.output[0] in outputs:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in norm.attribute}
        if int(attrs.get("axis", -1)) != -1:
            continue
        # at the Add's place: its inputs are ready there, and so the graph stays in topological order
        replaced[id(add)] = helper.make_node(
            "SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], norm.input[1]],
            [norm.output[0], "", "", add.output[0]], name=f"{norm.name}/skip", domain="com.microsoft",
            epsilon=float(attrs.get("epsilon", 1e-5)))
        drop.add(id(norm))
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in g.node if id(n) not in drop]
    g.ClearField("node")
    g.node.extend(nodes)
    use_contrib_domain(proto)
    return len(replaced)


def _mean_over_last_axis(mean: Any, value: Any) -> bool:
    """``mean`` is ``ReduceMean(keepdims=1)`` over the last axis alone (axes as an input, opset ≥ 18,
    or as an attribute)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in mean.attribute}
    if int(attrs.get("keepdims", 1)) != 1:
        return False
    axes = attrs.get("axes")
    if axes is None and len(mean.input) > 1 and mean.input[1]:
        found = value(mean.input[1])
        axes = None if found is None else [int(a) for a in found.reshape(-1)]
    return list(axes or []) == [-1]


# Rope types whose cos / sin depend on the position alone (not on the sequence length), so a
# table of max_context positions computed once is what the graph computes at every length.
ROPE_TYPES = ("default", "linear", "llama3")


def fuse_rotary(proto: Any, module: Any, max_context: int) -> int:
    """Rewrite every rotary pattern of ``proto`` (in place) as ``RotaryEmbedding``; returns
    how many (0: the model has no rotary embedding edgeq can tabulate, or none matched)."""
    import numpy as np
    from onnx import helper, numpy_helper

    tables = _rotary_tables(module, max_context)
    if tables is None:
        return 0
    cos_table, sin_table = tables
    half = cos_table.shape[1]
    g = proto.graph
    consts, producer, readers = graph_index(g)

    def made_by(name: str, op: str) -> Any:
        n = producer.get(name)
        return n if n is not None and n.op_type == op and n.domain in ("", "ai.onnx") else None

    def half_slice(node: Any, t: str, upper: bool) -> bool:
        """``node`` is ``t[..., h:]`` (upper) or ``t[..., :h]`` on the last axis."""
        if node is None or node.input[0] != t or len(node.input) < 4:
            return False
        starts, ends, axes = (consts.get(i) for i in node.input[1:4])
        steps = consts.get(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1)
        if starts is None or ends is None or axes is None or steps.size != 1 or int(steps.reshape(-1)[0]) != 1:
            return False
        start, end, axis = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), int(axes.reshape(-1)[0])
        return axis in (-1, 3) and ((start, end >= 2 * half) == (half, True) if upper else (start, end) == (0, half))

    matches, angle_inputs = [], set()
    for add in g.node:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
            continue
        muls = [made_by(i, "Mul") for i in add.input]
        if None in muls or any(len(readers.get(m.output[0], [])) != 1 for m in muls):
            continue
        for cos_mul, sin_mul in (muls, muls[::-1]):
            rotated = next((made_by(i, "Concat") for i in sin_mul.input if made_by(i, "Concat")), None)
            if rotated is None or len(rotated.input) != 2:
                continue
            neg = made_by(rotated.input[0], "Neg")
            low = made_by(rotated.input[1], "Slice")
            t = low.input[0] if low is not None else None
            sin = next((i for i in sin_mul.input if i != rotated.output[0]), None)
            cos = next((i for i in cos_mul.input if i != t), None) if t in cos_mul.input else None
            if neg is None or cos is None or not half_slice(made_by(neg.input[0], "Slice"), t, True) \
                    or not half_slice(low, t, False):
                continue
            matches.append((add, t, [cos_mul, sin_mul, rotated, neg, producer[neg.input[0]], low]))
            angle_inputs |= {cos, sin}
            break
    if not matches or len(angle_inputs) != 2:  # one cos and one sin tensor shared by every layer
        return 0
    prefix = "edgeq_rotary"
    g.initializer.extend([numpy_helper.from_array(cos_table, f"{prefix}.cos_table"),
                          numpy_helper.from_array(sin_table, f"{prefix}.sin_table")])
    # position of the first token fed = the cache length (a 1-D offset: RotaryEmbedding adds 0..seq-1)
    offset = helper.make_node("Shape", ["past.0.key"], [f"{prefix}.offset"], name=f"{prefix}/offset", start=2, end=3)
    replaced: dict[int, Any] = {}
    drop: set[int] = set()
    for add, t, chain in matches:
        replaced[id(add)] = helper.make_node(
            "RotaryEmbedding", [t, offset.output[0], f"{prefix}.cos_table", f"{prefix}.sin_table"], [add.output[0]],
            name=f"{add.name}/rotary", domain="com.microsoft", interleaved=0)
        # the slices and the Neg may be shared by nothing else: drop them only when read once
        drop |= {id(n) for n in chain if all(len(readers.get(o, [])) <= 1 for o in n.output)}
    nodes = [offset] + [replaced.get(id(n), n) for n in g.node if id(n) not in drop]
    g.ClearField("node")
    g.node.extend(nodes)
    use_contrib_domain(proto)
    drop_unread(proto)
    return len(matches)


def _rotary_tables(module: Any, max_context: int) -> tuple[Any, Any] | None:
    """``(cos, sin)`` of shape ``(max_context, head_dim / 2)`` from the model's rotary module,
    or None when it has none, its rope type's angles depend on more than the position, or
    its tables are not the half-split layout the pattern rotates with."""
    import numpy as np
    import torch

    inner = getattr(module, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    config = getattr(module, "config", None)
    if rotary is None or config is None:
        return None
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else None
    if rope_type not in ROPE_TYPES:
        return None
    positions = torch.arange(max_context, dtype=torch.long)[None]
    try:
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
    except Exception:  # a rotary module with another signature: keep the exported pattern
        return None
    cos, sin = cos[0].float().numpy(), sin[0].float().numpy()
    half = cos.shape[-1] // 2
    if cos.ndim != 2 or cos.shape[0] != max_context or not (np.array_equal(cos[:, :half], cos[:, half:])
                                                             and np.array_equal(sin[:, :half], sin[:, half:])):
        return None
    return np.ascontiguousarray(cos[:, :half]), np.ascontiguousarray(sin[:, :half])


def drop_unread(proto: Any) -> None:
    """Remove nodes whose outputs nothing reads (what a fused node replaced), then the
    initializers no node reads any more."""
    g = proto.graph
    keep_outputs = {o.name for o in g.output}
    while True:
        read = {i for n in g.node for i in n.input} | keep_outputs
        dead = [n for n in g.node if not any(o in read for o in n.output)]
        if not dead:
            inits = [t for t in g.initializer if t.name in read]
            if len(inits) < len(g.initializer):
                g.ClearField("initializer")
                g.initializer.extend(inits)
            return
        dead_ids = {id(n) for n in dead}
        nodes = [n for n in g.node if id(n) not in dead_ids]
        g.ClearField("node")
        g.node.extend(nodes)
