"""Layer inventory: every quantizable weight, its shape, and the schemes it can take."""

from __future__ import annotations

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


def layer_inventory(module: Any) -> list[LayerInfo]:
    """Quantizable layers of ``module`` in definition order (shared weights counted once)."""
    import torch

    kinds = (
        (torch.nn.Linear, "linear"),
        (torch.nn.Embedding, "embedding"),
        (torch.nn.Conv1d, "conv"),
        (torch.nn.Conv2d, "conv"),
    )
    seen: set[int] = set()
    layers = []
    for fqn, sub in module.named_modules():
        for cls, kind in kinds:
            if type(sub) is cls:
                weight = sub.weight
                if id(weight) in seen:  # tied weights (e.g. an LM head sharing embeddings)
                    break
                seen.add(id(weight))
                layers.append(LayerInfo(fqn=fqn, kind=kind, shape=tuple(weight.shape), params=weight.numel()))
                break
    return layers


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
