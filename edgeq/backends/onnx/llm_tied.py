"""A tied LM head and its embedding table stored once in an ONNX decoder LLM.

When the table and the head both take 4-bit (or 8-bit) blocks of one size (round to nearest), edgeq's
lowering first writes them as two tensors of the same matrix: the table a
``GatherBlockQuantized`` over a ``[vocab, hidden]`` uint4 tensor, the head a ``MatMulNBits``
over a transposed copy, ``[vocab, hidden / block, block / 2]`` packed bytes. Both quantize
each row in blocks along ``hidden`` with the same min/max rule, so their scales and zero
points are identical and their values differ only where a value rounds at a tie (0.3% of
SmolLM2-135M's table, by one step). ``share_tied_table`` keeps the head's tensor and reads
the table from it: ``GatherBlockQuantized`` with ``bits=4`` takes packed uint8 rows (low
nibble first, as ``MatMulNBits`` packs them) and the head's scales and zero points as they
are, through one ``Reshape`` of the weight to ``[vocab, hidden / 2]`` (onnxruntime-genai's
builder stores a tied embedding the same way). The file then holds the matrix once; ONNX
Runtime folds the Reshape into a copy at load and prepacks the head's weight for its
kernel, so the memory it holds is what it held for two tensors.

At 8 bits (``int8-g32``) the same holds with one byte a value: the head's ``[vocab, hidden /
block, block]`` uint8 tensor (symmetric, implicit zero point 128, which is also
``GatherBlockQuantized``'s default for 8-bit uint8 data) read as ``[vocab, hidden]``.
"""

from __future__ import annotations

from typing import Any


def shares_table(scheme: Any) -> bool:
    """Whether a tied head at ``scheme``, its table's scheme too, is stored as one tensor:
    4-bit or 8-bit blocks, round to nearest (a calibrated head's values are not the table's)."""
    return (scheme.kind == "int" and scheme.bits in (4, 8) and bool(scheme.group) and scheme.algorithm == "rtn"
            and scheme.symmetric
            and not scheme.superblock and not scheme.kernel)


def share_tied_table(proto: Any) -> bool:
    """Rewrite the graph's one ``GatherBlockQuantized`` table to read the ``MatMulNBits`` head
    of the same matrix (in place); False, and the graph unchanged, when there is not exactly
    one such pair with the same bits, block size and zero-point layout."""
    import numpy as np
    from onnx import helper, numpy_helper

    from edgeq.backends.onnx.llm_fusion import drop_unread

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    tables = [n for n in g.node if n.op_type == "GatherBlockQuantized" and n.domain == "com.microsoft"]
    if len(tables) != 1 or tables[0].input[0] not in inits or len(inits[tables[0].input[0]].dims) != 2:
        return False
    table = tables[0]
    vocab, hidden = (int(d) for d in inits[table.input[0]].dims)
    attrs = {a.name: helper.get_attribute_value(a) for a in table.attribute}
    block, bits = int(attrs.get("block_size", 128)), int(attrs.get("bits", 4))
    if int(attrs.get("gather_axis", 0)) != 0 or int(attrs.get("quantize_axis", 1)) not in (1, -1) \
            or bits not in (4, 8) or hidden % block:
        return False
    per_byte = 8 // bits

    def head_attrs(n: Any) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in n.attribute}

    heads = [n for n in g.node if n.op_type == "MatMulNBits" and n.domain == "com.microsoft"
             and (a := head_attrs(n)).get("N") == vocab and a.get("K") == hidden and a.get("bits") == bits
             and a.get("block_size") == block]
    if len(heads) != 1:
        return False
    head = heads[0]
    weight, scales = inits.get(head.input[1]), inits.get(head.input[2]) if len(head.input) > 2 else None
    zero = head.input[3] if len(head.input) > 3 and head.input[3] else ""
    table_zero = table.input[3] if len(table.input) > 3 and table.input[3] else ""
    blocks = hidden // block
    if weight is None or scales is None or list(weight.dims) != [vocab, blocks, block // per_byte] \
            or any(head.input[4:]) or bool(zero) != bool(table_zero) or (zero and zero not in inits):
        return False
    prefix = f"{head.input[1]}.as_table"
    nodes, inputs = [], []
    for name, shape in ((head.input[1], [vocab, hidden // per_byte]), (head.input[2], [vocab, blocks]),
                        (zero, [vocab, (blocks + per_byte - 1) // per_byte])):
        if not name:
            continue
        if [int(d) for d in inits[name].dims] == shape:
            inputs.append(name)
            continue
        if int(np.prod([int(d) for d in inits[name].dims])) != int(np.prod(shape)):
            return False
        g.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{name}.table_shape"))
        nodes.append(helper.make_node("Reshape", [name, f"{name}.table_shape"], [f"{name}.table"],
                                      name=f"{prefix}/{len(nodes)}"))
        inputs.append(nodes[-1].output[0])
    table.input[0], table.input[2] = inputs[0], inputs[1]
    if zero:
        table.input[3] = inputs[2]
    for a in list(table.attribute):
        if a.name == "bits":
            table.attribute.remove(a)
    table.attribute.append(helper.make_attribute("bits", bits))
    rest = list(g.node)
    g.ClearField("node")
    g.node.extend(nodes + rest)
    drop_unread(proto)
    return True
