"""AWQ (Lin et al., 2023) onto a format's 4-bit grid: a per-input-channel scale ``s`` searched
on the layer's calibration activations, the weight scaled by ``s`` and rounded onto the
grid, and ``1 / s`` folded into the op before the layer, so no extra op ships.

- ``s = mean|x|^α / sqrt(max · min)`` over the layer's calibration input rows, for α on a
  grid of ``ALPHAS`` (α = 0 is plain RTN); the α whose ``Q(W·diag(s))·diag(1/s)`` has the
  least output error ``tr(ΔW H ΔWᵀ)`` on the calibration inputs (``H`` as GPTQ sums it) wins.
- The fold: the layer then sees ``x / s``. That is free only where the producer of ``x``
  is a linear whose output rows reach this layer's input channels one to one and nothing
  else reads them: ``predecessor`` names it (BERT: ``attention.output.dense`` ← ``value``
  through the attention mix; Llama: ``down_proj`` ← ``up_proj`` through ``act(gate) · up``,
  ``o_proj`` ← ``v_proj`` when every head has its own value head). Scaling a linear's
  output rows leaves its own quantization error unchanged up to the same row factor (its
  scales are per row), so its candidates' errors do not depend on the fold: the planner's
  per-layer independence holds. Refused, with the reason ``predecessor`` gives:
  - a post-norm LayerNorm (BERT's q/k/v and intermediate.dense): it also feeds the residual;
  - an activation (after GELU, BERT's output.dense): not a linear map;
  - a norm shared by several linears (Llama's q/k/v, gate/up): they would have to share
    ``s`` and each take it, which couples their candidates (not expressed per layer yet);
  - grouped-query attention (``o_proj`` ← ``v_proj`` with fewer value heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALPHAS = tuple(i / 20 for i in range(21))  # AWQ's grid (n_grid = 20)


@dataclass(frozen=True)
class Fold:
    """Where a layer's AWQ input scale goes: ``1 / s`` on ``predecessor``'s output rows."""

    predecessor: str


def predecessor(module: Any, fqn: str) -> tuple[Fold | None, str]:
    """The linear whose output rows take ``1 / s`` for ``fqn``'s AWQ, or None and why not."""
    from torch import nn

    modules = dict(module.named_modules())
    parent, _, name = fqn.rpartition(".")
    config = getattr(module, "config", None) or getattr(getattr(module, "model", None), "config", None)
    if name == "dense" and parent.endswith(".attention.output"):
        value = parent.removesuffix(".output") + ".self.value"
        if isinstance(modules.get(value), nn.Linear):
            return Fold(value), ""
    if name == "o_proj":
        value = f"{parent}.v_proj"
        heads = getattr(config, "num_attention_heads", None)
        kv = getattr(config, "num_key_value_heads", heads)
        if isinstance(modules.get(value), nn.Linear):
            if heads is not None and kv == heads:
                return Fold(value), ""
            return None, "grouped-query attention: a value head feeds several heads' channels of o_proj"
    if name == "down_proj" and isinstance(modules.get(f"{parent}.up_proj"), nn.Linear):
        return Fold(f"{parent}.up_proj"), ""
    if name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
        return None, "its norm feeds several linears, which would have to share the scale (not planned per layer yet)"
    if name in ("query", "key", "value") or (name == "dense" and parent.endswith(".intermediate")):
        return None, "its input is a post-norm LayerNorm's output, which also feeds the residual"
    if name == "dense" and parent.endswith(".output"):
        return None, "its input comes through an activation (GELU), which a scale does not pass"
    return None, "no preceding linear edgeq knows how to fold the scale into"


def search(weight: Any, hessian: Any, absmean: Any, grid: Any, group: int) -> tuple[Any, Any, float]:
    """AWQ's scale for ``weight`` ([out, in]): ``(quantized W·diag(s), s, α)``. ``hessian``:
    ``HessianSum.matrix()`` of the layer's calibration inputs; ``absmean``: their mean |x| per
    input channel. The quantized weight is the format's own RTN of ``W·diag(s)`` (what ships;
    ``format_rtn``: HQQ scales on ExecuTorch), so α = 0 is exactly the format's int4-gN and
    the chosen α is never worse than it on the calibration inputs."""
    from edgeq.algorithms.gptq import one_thread

    with one_thread():
        return _search(weight, hessian, absmean, grid, group)


def _search(weight: Any, hessian: Any, absmean: Any, grid: Any, group: int) -> tuple[Any, Any, float]:
    import torch

    from edgeq.algorithms.gptq import format_rtn

    w = weight.detach().float()
    h = hessian.double()
    mag = absmean.double().clamp(min=1e-8)
    best = None
    for alpha in ALPHAS:
        s = mag.pow(alpha)
        s = (s / (s.max() * s.min()).sqrt()).float()
        q = format_rtn(w * s[None, :], grid, group)
        delta = (w.double() - q.dequantized().double() / s[None, :].double())
        loss = float(torch.einsum("oi,ij,oj->", delta, h, delta))
        if best is None or loss < best[0]:
            best = (loss, q, s, alpha)
    assert best is not None
    return best[1], best[2], best[3]


def fold(module: Any, fqn: str, scale: Any) -> None:
    """Fold ``fqn``'s AWQ input scale into ``module``: its weight's columns times ``scale``,
    its predecessor's output rows (weight and bias) divided by it (the function is unchanged)."""
    import torch

    found, why = predecessor(module, fqn)
    if found is None:
        raise ValueError(f"{fqn}: AWQ's scale cannot be folded: {why}")
    layer, before = module.get_submodule(fqn), module.get_submodule(found.predecessor)
    with torch.no_grad():
        layer.weight.mul_(scale.to(layer.weight.dtype)[None, :])
        before.weight.div_(scale.to(before.weight.dtype)[:, None])
        if before.bias is not None:
            before.bias.div_(scale.to(before.bias.dtype))
