"""Block-quantized rewrites edgeq writes itself, beside ONNX Runtime's ``MatMulNBitsQuantizer``:

- ``block8_tables``: an embedding table as 8-bit ``GatherBlockQuantized`` in the blocks 8-bit
  ``MatMulNBits`` stores (``block8``), so a tied head can share it (``llm_tied``);
- ``asym_blocks``: int4-g32-asym linears (Q4_1's grid: a scale and an offset a block) as a
  4-bit ``MatMulNBits`` plus the input's block sums times the offsets;
- ``pack_nibbles``: 4-bit values two a byte as ``MatMulNBits`` reads them.
"""

from __future__ import annotations

from typing import Any

from edgeq.backends.onnx.graph import reader_counts, use_contrib_domain
from edgeq.errors import ExportError


def pack_nibbles(values: Any) -> Any:
    """``values`` (uint8 0..15, last axis even) two a byte along the last axis, the even
    index in the low nibble, as ``MatMulNBits`` packs its weights and zero points."""
    import numpy as np

    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def asym_blocks(proto: Any, include: list[str], block: int) -> None:
    """The ``include`` MatMuls (constant weight ``[K, N]``) at int4-g32-asym, in place: per block
    of ``block`` along K the weight is ``d * q + m`` on llama.cpp's Q4_1 grid
    (``edgeq.algorithms.grids.offset_blocks``), with fp32 ``d`` and ``m``. MatMulNBits' zero points are
    integers (a float zero point falls back to a dequantizing kernel, ~10x slower measured on
    SmolLM2's shapes), so the node becomes a zero-point-free 4-bit ``MatMulNBits`` of
    ``d * (q - 8)`` plus ``blocksums(A) @ (m + 8 d)ᵀ``: one fp32 ``MatMul`` of the input by a
    ``[K, K / block]`` block-indicator matrix (one per K, its result shared by every such node
    reading the same input), one by the ``[K / block, N]`` offsets, and an ``Add``."""
    import numpy as np
    import torch
    from onnx import helper, numpy_helper

    from edgeq.algorithms.grids import offset_blocks

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    readers = reader_counts(g)
    wanted = set(include)
    sums: dict[str, str] = {}  # input → its block sums
    indicators: set[int] = set()
    nodes = []
    for n in g.node:
        if n.name not in wanted:
            nodes.append(n)
            continue
        if n.op_type != "MatMul" or n.input[1] not in inits:
            raise ExportError(f"{n.name}: int4-g32-asym needs a MatMul with a constant weight", "re-run with --debug and report it")
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        k, cols = w.shape
        if k % block:
            raise ExportError(f"{n.name}: K = {k} is not a multiple of {block} (int4-g32-asym)", "plan another scheme for it")
        q, d, m = (t.numpy() for t in offset_blocks(torch.from_numpy(np.ascontiguousarray(w.T)), block))
        packed = pack_nibbles(q.astype(np.uint8))
        base = n.name
        if readers.get(n.input[1], 0) == 1:
            g.initializer.remove(inits[n.input[1]])
        g.initializer.extend([numpy_helper.from_array(packed, f"{base}_Q4A_B"),
                              numpy_helper.from_array(d.reshape(-1).astype(np.float32), f"{base}_Q4A_scales"),
                              numpy_helper.from_array(np.ascontiguousarray((m + 8 * d).T.astype(np.float32)),
                                                      f"{base}_Q4A_offsets")])
        if k not in indicators:
            ind = np.zeros((k, k // block), np.float32)
            ind[np.arange(k), np.arange(k) // block] = 1.0
            g.initializer.append(numpy_helper.from_array(ind, f"edgeq_block{block}_sums_{k}"))
            indicators.add(k)
        a, out = n.input[0], n.output[0]
        if a not in sums:
            sums[a] = f"{base}_Q4A_blocksums"
            nodes.append(helper.make_node("MatMul", [a, f"edgeq_block{block}_sums_{k}"], [sums[a]], name=sums[a]))
        nodes.append(helper.make_node("MatMulNBits", [a, f"{base}_Q4A_B", f"{base}_Q4A_scales"], [f"{base}_Q4A_main"],
                                      name=f"{base}_Q4A", domain="com.microsoft", K=k, N=cols, bits=4, block_size=block))
        nodes.append(helper.make_node("MatMul", [sums[a], f"{base}_Q4A_offsets"], [f"{base}_Q4A_offset"],
                                      name=f"{base}_Q4A_offset"))
        nodes.append(helper.make_node("Add", [f"{base}_Q4A_main", f"{base}_Q4A_offset"], [out], name=f"{base}_Q4A_add"))
    g.ClearField("node")
    g.node.extend(nodes)
    use_contrib_domain(proto)


def block8_tables(proto: Any, include: list[str], block: int) -> None:
    """Each ``include`` Gather (axis 0 of a ``[rows, hidden]`` fp32 table) becomes a
    ``GatherBlockQuantized`` with ``bits=8``: the table's rows in symmetric 8-bit blocks of
    ``block`` along ``hidden``, by the rule 8-bit ``MatMulNBits`` stores its weights with (the
    block's largest-magnitude value maps to -128; uint8 with the implicit zero point 128), so
    a tied head at the same scheme holds the same values (``llm_tied``). In place."""
    from onnx import helper, numpy_helper

    from edgeq.backends.onnx.llm_fusion import drop_unread

    inits = {t.name: t for t in proto.graph.initializer}
    keep = set(include)
    for node in proto.graph.node:
        if node.name not in keep:
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        table = inits.get(node.input[0])
        if table is None or len(table.dims) != 2 or axis != 0 or table.dims[1] % block:
            raise ExportError(f"{node.name} does not gather rows of a [rows, hidden] table with hidden a multiple "
                              f"of {block}: it cannot take 8-bit blocks of {block}", "plan it at int8 or int4-g32")
        values, scales = block8(numpy_helper.to_array(table), block)
        name = f"{node.input[0]}_{node.name}_b{block}".replace("/", "_")
        proto.graph.initializer.extend([numpy_helper.from_array(values, f"{name}_q8"),
                                        numpy_helper.from_array(scales, f"{name}_scales")])
        indices = node.input[1]
        del node.input[:]
        node.input.extend([f"{name}_q8", indices, f"{name}_scales"])
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("gather_axis", 0), helper.make_attribute("quantize_axis", 1),
                               helper.make_attribute("block_size", block), helper.make_attribute("bits", 8)])
        node.op_type, node.domain = "GatherBlockQuantized", "com.microsoft"
    use_contrib_domain(proto)
    drop_unread(proto)


def block8(table: Any, block: int) -> tuple[Any, Any]:
    """``table`` ``[rows, hidden]`` as 8-bit ``MatMulNBits`` stores a weight (``hidden`` along
    K): per block of ``block`` along a row, the largest-magnitude value ``m`` maps to -128
    (scale ``-m / 128``; 1 for an all-zero block), the rest round half to even into
    [-128, 127]; the values as uint8 with the implicit zero point 128. Returns
    ``(values uint8 [rows, hidden], scales fp32 [rows, hidden / block])``."""
    import numpy as np

    rows, hidden = table.shape
    w = np.asarray(table, dtype=np.float32).reshape(rows, hidden // block, block)
    m = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)
    scale = np.where(m == 0, np.float32(1), -m / np.float32(128)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -128, 127) + 128
    return q.astype(np.uint8).reshape(rows, hidden), scale.reshape(rows, hidden // block)
