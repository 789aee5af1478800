"""Calibrated weights (``edgeq.algorithms``) written into ONNX Runtime's ``MatMulNBits``.

ORT's ``MatMulNBitsQuantizer`` lays out a 4-bit linear first (so the node, its attributes
and its initializers' names and shapes are the runtime's own); then the node's packed
weight ``B`` ([N, K / block, block / 2] uint8, two values a byte, the even index in the
low nibble), ``scales`` ([N, K / block] float32) and ``zero_points`` ([N, ceil(blocks / 2)]
uint8, packed the same way) are replaced with the algorithm's integers, scales and zero
points, which are on the same grid (``edgeq.algorithms.grids.AsymmetricUint4``).
"""

from __future__ import annotations

from typing import Any

from edgeq.backends.onnx.blockquant import pack_nibbles
from edgeq.errors import ExportError


def write_calibrated(proto: Any, nodes: dict[str, list[tuple[str, str]]], calibrated: dict[str, Any]) -> None:
    """Replace the initializers of each calibrated layer's ``MatMulNBits`` (``nodes``: the
    fp32 graph's ``{fqn: [(node name, op)]}``; ORT names the quantized node ``<name>_Q4``)."""
    import numpy as np
    from onnx import numpy_helper

    by_name = {n.name: n for n in proto.graph.node if n.op_type == "MatMulNBits"}
    inits = {t.name: t for t in proto.graph.initializer}
    for fqn, weights in calibrated.items():
        matmuls = [name for name, op in nodes.get(fqn, []) if op == "MatMul"]
        found = [by_name[f"{name}_Q4"] for name in matmuls if f"{name}_Q4" in by_name]
        if len(found) != 1 or len(found[0].input) < 4:
            raise ExportError(f"{fqn}: no single 4-bit MatMulNBits with zero points to write its calibrated weights into",
                              "re-run with --debug and report it")
        node = found[0]
        b, scales, zeros = (inits[node.input[i]] for i in (1, 2, 3))
        ints = weights.ints.numpy().astype(np.uint8)
        rows, cols = ints.shape
        blocks = cols // weights.group
        packed = pack_nibbles(ints).reshape(rows, blocks, weights.group // 2)
        z = weights.zeros.numpy().astype(np.uint8)
        if blocks % 2:
            z = np.concatenate([z, np.zeros((rows, 1), np.uint8)], axis=1)
        zpacked = pack_nibbles(z)
        s = weights.scales.numpy().astype(np.float32)
        for old, new in ((b, packed), (scales, s), (zeros, zpacked)):
            current = numpy_helper.to_array(old)
            if current.size != new.size or current.dtype != new.dtype:
                raise ExportError(f"{fqn}: calibrated weights do not match ONNX Runtime's layout ({old.name}: "
                                  f"{current.shape} {current.dtype}, calibrated {new.shape} {new.dtype})",
                                  "re-run with --debug and report it")
            old.CopyFrom(numpy_helper.from_array(new.reshape(current.shape), old.name))
