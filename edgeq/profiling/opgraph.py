"""The ops an artifact runs, with the work each does: FLOPs, bytes moved, dtype, runtime.

Each backend reads its own artifacts (``edgeq.backends.<format>.ops``; ExecuTorch from the
``ops.json`` its exporter writes, since delegated subgraphs are opaque inside a .pte; ONNX
from the .onnx file after ONNX Runtime's fusions); this module holds what they share: the
``Op`` value and the size and FLOP tables.

Costs are counted, not timed: a linear ``y = x W^T`` with ``x`` of M x K and ``W`` of
N x K is ``2 M N K`` FLOPs; a convolution ``2 x output elements x (C_in / groups) x
kernel area``; bytes are weights as stored (int8 / int4 plus their scales) plus the
activations read and written. Weight dequantization and activation dequantization are
folded into the op that consumes them (runtimes fuse them); dynamic activation
quantization is an op of its own (one pass over the activation).

>>> ops = ops_from_artifact("dist/all-MiniLM-L6-v2-x86")  # doctest: +SKIP
>>> sum(o.flops for o in ops) / 1e9  # doctest: +SKIP
2.9
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# kind: gemm (matrix products, convolutions, attention), elementwise, copy (layout
# changes, gathers), quantize (dynamic activation quantization), view (a reshape the
# runtime still dispatches as an op, moving no data).
KINDS = ("gemm", "elementwise", "copy", "quantize", "view")


@dataclass(frozen=True)
class Op:
    name: str
    op: str  # e.g. aten.linear, MatMulNBits
    kind: str  # one of KINDS
    dtype: str  # the dtype it computes in: fp32 | fp16 | int8
    weights: str  # dtype of its constant weights as stored: fp32 | fp16 | int8 | int4 | "" (none)
    runtime: str  # xnnpack | portable | coreml | vulkan | qnn (ExecuTorch); onnx (ONNX Runtime)
    flops: float
    bytes: float
    weight_bytes: float = 0.0
    subgraph: int = -1  # ExecuTorch delegate call it belongs to; -1 when not delegated
    domain: str = ""  # ONNX: op domain ("" standard, "com.microsoft" contrib)
    shaped: bool = True  # False: an output shape could not be inferred, so the cost is undercounted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ops_from_artifact(artifact_dir: str | Path) -> list[Op]:
    """The costed ops of an artifact directory (validated against its manifest), read by its backend."""
    from edgeq.artifact import read_artifact
    from edgeq.backends import get_backend

    manifest, model_file = read_artifact(Path(artifact_dir))
    return get_backend(manifest.target.format).ops(model_file, manifest)


# ------------------------------------------------------------------ sizes and dtypes

_ITEMSIZE = {
    "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8, "double": 8,
    "int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "long": 8, "bool": 1, "int4": 0.5, "uint4": 0.5,
}
_FLOAT = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "fp16"}


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _nbytes(shape: list[int], dtype: str) -> float:
    return _numel(shape) * _ITEMSIZE.get(dtype, 4)


# Elementwise ops with more than one FLOP per output element (transcendentals, norms).
_FLOPS_PER_ELEMENT = {
    "gelu": 8, "softmax": 5, "_softmax": 5, "log_softmax": 5, "layer_norm": 8, "native_layer_norm": 8,
    "exp": 4, "tanh": 4, "sigmoid": 4, "silu": 5, "erf": 4, "rsqrt": 2, "sqrt": 2, "pow": 2,
    "LayerNormalization": 8, "SkipLayerNormalization": 9, "SimplifiedLayerNormalization": 6,
    "SkipSimplifiedLayerNormalization": 7, "Softmax": 5, "Gelu": 8, "BiasGelu": 9, "FastGelu": 8,
    "QuickGelu": 5, "Sigmoid": 4, "Tanh": 4, "Exp": 4, "Erf": 4, "Sqrt": 2, "Pow": 2, "ReduceL2": 2,
}


# ------------------------------------------------------------ ExecuTorch: ops.json
