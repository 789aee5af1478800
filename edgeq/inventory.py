"""Layer inventory: every quantizable weight, its shape, and the schemes it can take."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Scheme names used everywhere (plans, manifests): fp32, fp16, int8, int4-g32/64/128.
INT4_GROUPS = (32, 64, 128)


@dataclass(frozen=True)
class LayerInfo:
    fqn: str
    kind: str  # linear | conv | embedding
    shape: tuple[int, ...]
    params: int
    bias: bool = False  # a linear/conv with a bias (ONNX Runtime then runs it as Gemm / Conv+bias)
    tied: str = ""  # an LM head sharing this embedding's weight (fqn of the embedding): its own layer

    @property
    def fp32_bytes(self) -> int:
        return self.params * 4

    def fits(self, scheme: str) -> bool:
        """Whether this layer's shape can take ``scheme`` (int4 groups must divide rows)."""
        if scheme.startswith("int4-g"):
            group = int(scheme.removeprefix("int4-g"))
            reduce_dim = self.shape[1] if self.kind != "conv" else _prod(self.shape[1:])
            return self.kind in ("linear", "embedding") and reduce_dim % group == 0
        return True


def stored_bytes(layer: LayerInfo, scheme: str, fmt: str) -> int:
    """Bytes ``layer``'s weight takes in an artifact of format ``fmt`` under ``scheme``.

    Measured on single-layer exports (Linear 512→1024, Embedding 4096×256), exact to
    the byte for the weight payload: ExecuTorch stores int8 per-channel with fp32 scales,
    XNNPACK int4 linears with 2-byte group scales and embedding_4bit with fp32 ones; ONNX
    Runtime's 8-bit MatMulNBits keeps an fp32 scale per 128-block (K padded to whole blocks), its asymmetric 4-bit
    MatMulNBits / GatherBlockQuantized an fp32 scale and a 4-bit zero point per group,
    and quantize_dynamic's Gather one per-tensor uint8 scale.
    """
    p = layer.params
    rows = layer.shape[0]
    reduce_dim = p // rows
    if scheme == "fp32":
        return p * 4
    if scheme == "fp16":
        return p * 2
    if scheme == "int8":
        if fmt == "onnx" and layer.kind == "linear":  # blocks of 128 along K, the last one zero-padded
            blocks = rows * math.ceil(reduce_dim / 128)
            return blocks * 128 + blocks * 4
        if fmt == "onnx" and layer.kind == "embedding":
            return p + 8
        return p + rows * 4
    group = int(scheme.removeprefix("int4-g"))
    groups = rows * math.ceil(reduce_dim / group)
    packed = rows * math.ceil(reduce_dim / 2)
    if fmt == "onnx":
        return packed + groups * 4 + math.ceil(groups / 2)
    return packed + groups * (2 if layer.kind == "linear" else 4)


# --- file overhead: what an artifact holds beyond its weights (graph, tensor metadata, names)
# Measured (2026-11-22) as file size − stored weight bytes on 7 models (tiny text/MLP/conv
# modules, random tiny BERT/Llama/ViT, all-MiniLM-L6-v2) at fp32, int8 and int4, after edgeq
# strips ONNX's per-node debug metadata. At fp32 it grows with the captured program's ops and
# placeholders (ONNX: node protos and initializer names; ExecuTorch: flatbuffer tensor and
# instruction tables): fitted through MiniLM and the Llama, it over-predicts the others by at
# most 9 KB (ONNX ViT) and under-predicts the tiny MLP by 0.2 KB. Each layer at a non-fp32
# scheme adds its scale tensors' and dequantizing ops' entries (median per layer over the 7).
FILE_OVERHEAD_PER_OP = {"executorch": 153, "onnx": 50}
FILE_OVERHEAD_PER_PLACEHOLDER = {"executorch": 434, "onnx": 268}
FILE_OVERHEAD_PER_QUANTIZED_LAYER = {"executorch": 400, "onnx": 230}
FILE_OVERHEAD_PER_QUANTIZED_CONV = {"executorch": 780, "onnx": 650}


def file_overhead(fmt: str, ops: int, placeholders: int) -> int:
    """Estimated bytes of an fp32 artifact beyond its weights, from the captured program's size."""
    return FILE_OVERHEAD_PER_OP[fmt] * ops + FILE_OVERHEAD_PER_PLACEHOLDER[fmt] * placeholders


def scheme_overhead(layer: LayerInfo, scheme: str, fmt: str) -> int:
    """Estimated extra file bytes (beyond the weight) of ``layer`` at a non-fp32 ``scheme``."""
    if scheme in ("fp32", "unused"):
        return 0
    table = FILE_OVERHEAD_PER_QUANTIZED_CONV if layer.kind == "conv" else FILE_OVERHEAD_PER_QUANTIZED_LAYER
    return table[fmt]


def layer_inventory(module: Any) -> list[LayerInfo]:
    """Quantizable layers of ``module`` in definition order (shared weights counted once)."""
    import torch

    kinds = (
        (torch.nn.Linear, "linear"),
        (torch.nn.Embedding, "embedding"),
        (torch.nn.Conv1d, "conv"),
        (torch.nn.Conv2d, "conv"),
    )
    seen: dict[int, LayerInfo] = {}
    layers = []
    for fqn, sub in module.named_modules():
        for cls, kind in kinds:
            if type(sub) is cls:
                weight = sub.weight
                bias = getattr(sub, "bias", None) is not None
                first = seen.get(id(weight))
                if first is not None:
                    # An LM head sharing the embedding's table: the runtimes hold it as a
                    # second tensor (the GEMM's matrix), so it is planned as a layer of its own.
                    if kind == "linear" and first.kind == "embedding" and not first.tied:
                        layers.append(LayerInfo(fqn=fqn, kind=kind, shape=tuple(weight.shape),
                                                params=weight.numel(), bias=bias, tied=first.fqn))
                    break
                layer = LayerInfo(fqn=fqn, kind=kind, shape=tuple(weight.shape), params=weight.numel(), bias=bias)
                seen[id(weight)] = layer
                layers.append(layer)
                break
    return layers


def nonlayer_bytes(total_fp32_bytes: int, layers: list[LayerInfo]) -> int:
    """fp32 bytes of the constants outside the planned layers, given all parameters' and
    buffers' fp32 bytes with shared tensors once (``fp32_bytes``): a tied head is not among them."""
    return total_fp32_bytes - sum(x.fp32_bytes for x in layers if not x.tied)


def layers_to_json(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    """The inventory as the manifest records it (so memory can be predicted from an artifact alone)."""
    return [{"fqn": x.fqn, "kind": x.kind, "shape": list(x.shape), "params": x.params, "bias": x.bias,
             **({"tied": x.tied} if x.tied else {})} for x in layers]


def layers_from_json(rows: list[dict[str, Any]]) -> list[LayerInfo]:
    return [LayerInfo(r["fqn"], r["kind"], tuple(r["shape"]), int(r["params"]), bool(r.get("bias", False)),
                      str(r.get("tied", ""))) for r in rows]


def fp32_bytes(module: Any) -> int:
    """Bytes of all parameters and buffers if held in FP32 (shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen and t.is_floating_point():
            seen.add(id(t))
            total += t.numel() * 4
    return total


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out
