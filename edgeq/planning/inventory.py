"""Layer inventory: every quantizable weight, its shape, and the schemes it can take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeq.schemes import Scheme



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

    def fits(self, scheme: Scheme) -> bool:
        """Whether this layer's shape can take ``scheme`` (groups must divide the reduction dim)."""
        if scheme.algorithm != "rtn" and self.kind != "linear":
            return False  # calibrated algorithms (edgeq.algorithms) reconstruct a linear's outputs
        if scheme.group:
            reduce_dim = self.shape[1] if self.kind != "conv" else _prod(self.shape[1:])
            return self.kind in ("linear", "embedding") and reduce_dim % scheme.group == 0
        return True


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
    # nn.MultiheadAttention hands its out_proj's weight to a fused function: that linear's
    # forward never runs (edgeq.models.attention splits such modules when loading)
    fused = tuple(f"{fqn}." if fqn else "" for fqn, sub in module.named_modules()
                  if isinstance(sub, torch.nn.MultiheadAttention))
    for fqn, sub in module.named_modules():
        if fused and fqn.startswith(fused):
            continue
        for cls, kind in kinds:
            if isinstance(sub, cls) and computes_as(sub, cls):
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


def computes_as(sub: Any, cls: type) -> bool:
    """Whether ``sub`` (an instance of ``cls``) computes ``cls``'s op on its weight, so that
    quantizing the weight is quantizing the layer: its class is ``cls`` or a subclass whose
    forward is ``cls``'s (``nn.MultiheadAttention``'s ``out_proj``), or, for a linear or an
    embedding, whose output is ``cls``'s output times one constant (Gemma's embedding, scaled
    by sqrt(hidden)) -- checked on a probe input. Any other subclass computes something else
    and is not planned (its weight stays as the model has it)."""
    import torch

    if type(sub).forward is cls.forward:
        return True
    if cls is torch.nn.Embedding:
        probe: Any = torch.arange(min(sub.num_embeddings, 16))
    elif cls is torch.nn.Linear:
        probe = torch.randn(3, sub.in_features, generator=torch.Generator().manual_seed(0))
    else:
        return False
    try:
        with torch.no_grad():
            weight = sub.weight
            probe = probe if cls is torch.nn.Embedding else probe.to(weight.dtype)
            out, ref = sub(probe), cls.forward(sub, probe)
    except Exception:  # noqa: BLE001 - a forward that cannot run on a plain input is not the parent's op
        return False
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape or out.dtype != ref.dtype:
        return False
    out, ref = out.double(), ref.double()
    big = ref.abs() > ref.abs().amax() * 1e-3
    if not bool(big.any()):
        return False
    ratio = out[big] / ref[big]
    c = ratio.median()
    return bool(torch.isfinite(c)) and float(c) != 0 and bool(
        torch.allclose(out, ref * c, rtol=1e-3, atol=float(ref.abs().amax()) * abs(float(c)) * 1e-5))


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
