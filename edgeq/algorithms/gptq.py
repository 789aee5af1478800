"""GPTQ (Frantar et al., 2022) on the CPU: one linear's weight rounded column by column
onto a format's 4-bit grid, each column's rounding error spread over the columns not yet
rounded through the inverse Hessian of the layer's calibration inputs.

- ``H = 2/n · Σ xᵀx`` over the layer's ``n`` calibration input rows (``HessianSum``,
  float64); columns no input ever reaches (zero diagonal) get weight 0.
- Damping: ``1%`` of the mean diagonal added to it; ``Hinv = cholesky(H⁻¹)ᵀ`` (upper).
- Groups of ``group`` columns along the reduction dim: each group's scale (and zero point)
  is chosen by the grid from the group's values *as they are when GPTQ reaches the group*
  (after the error of earlier columns was propagated into them). With ``act_order``
  columns are processed by decreasing ``diag(H)``; groups stay contiguous in the weight
  (the formats store one scale per run of ``group`` columns), so their scales are chosen
  up front from the original weight ("static groups").
- With ``H = I`` no error propagates and GPTQ is the grid's round-to-nearest, bit for bit.

>>> import torch
>>> from edgeq.algorithms.grids import SymmetricInt4
>>> w = torch.randn(8, 64); x = torch.randn(256, 64)
>>> h = HessianSum(64); h.add(x)
>>> q = gptq(w, h.matrix(), SymmetricInt4(), group=32)
>>> q.ints.shape, q.scales.shape
(torch.Size([8, 64]), torch.Size([8, 2]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DAMPING = 0.01  # of the mean diagonal of H (the paper's default)
BLOCK = 128  # columns per lazy-batch update; a multiple of every group size edgeq offers


@dataclass(frozen=True)
class QuantizedWeight:
    """A linear's weight on a 4-bit grid: ``ints`` [out, in] (int16 holding the grid's
    integers), ``scales`` and ``zeros`` [out, in / group] (float32, int16)."""

    ints: Any
    scales: Any
    zeros: Any
    group: int
    grid: Any
    # AWQ: the per-input-channel scale s the integers are of W·diag(s) with (the layer's
    # input is divided by s: folded into the op before it); None for every other algorithm
    input_scale: Any = None

    def dequantized(self) -> Any:
        """The float32 weight the runtime computes with."""
        rows, cols = self.ints.shape
        q = self.ints.view(rows, cols // self.group, self.group)
        scale, zero = self.scales[..., None], self.zeros[..., None]
        return self.grid.dequantize(q.flatten(0, 1), scale.flatten(0, 1)[:, 0], zero.flatten(0, 1)[:, 0]).view(rows, cols)


class HessianSum:
    """``2/n · Σ xᵀx`` over input rows, accumulated in float64."""

    def __init__(self, columns: int) -> None:
        import torch

        self.sum = torch.zeros(columns, columns, dtype=torch.float64)
        self.abs_sum = torch.zeros(columns, dtype=torch.float64)  # AWQ's per-channel mean |x|
        self.rows = 0

    def add(self, x: Any) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.sum += x.T @ x
        self.abs_sum += x.abs().sum(0)
        self.rows += x.shape[0]

    def absmean(self) -> Any:
        return self.abs_sum / max(self.rows, 1)

    def matrix(self) -> Any:
        return self.sum * (2.0 / max(self.rows, 1))


def rtn(weight: Any, grid: Any, group: int) -> QuantizedWeight:
    """The grid's own round-to-nearest of ``weight``, group by group (GPTQ's starting point)."""
    import torch

    w = weight.detach().float()
    rows, cols = w.shape
    wb = w.view(rows, cols // group, group)
    scale, zero = grid.params(wb.flatten(0, 1))
    ints = grid.quantize(wb.flatten(0, 1), scale, zero).view(rows, cols)
    return QuantizedWeight(ints, scale.view(rows, -1), zero.view(rows, -1).to(torch.int16), group, grid)


def gptq(weight: Any, hessian: Any, grid: Any, group: int, *, act_order: bool = False,
         damping: float = DAMPING) -> QuantizedWeight:
    """``weight`` ([out, in]) rounded onto ``grid`` in groups of ``group`` input columns,
    minimizing ``‖XWᵀ − XQᵀ‖²`` for the inputs ``hessian`` (``HessianSum.matrix()``) sums."""
    import torch

    w0 = weight.detach().float()
    rows, cols = w0.shape
    if cols % group:
        raise ValueError(f"{cols} input columns are not a multiple of the group size {group}")
    W = w0.double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = None
    if act_order:
        static = grid.params(W.view(rows, cols // group, group).permute(1, 0, 2).reshape(-1, group).float())
        static = (static[0].view(cols // group, rows), static[1].view(cols // group, rows))
        perm = torch.argsort(torch.diagonal(H), descending=True)
    else:
        perm = torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damping * torch.mean(torch.diagonal(H)) * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    ints = torch.zeros(rows, cols, dtype=torch.int16)
    scales = torch.zeros(cols // group, rows, dtype=torch.float32)
    zeros = torch.zeros(cols // group, rows, dtype=torch.int16)
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // group
            if static is not None:
                scale, zero = static[0][g], static[1][g]
            else:
                if col % group == 0:  # the group starts here: its scale from its current values
                    scales[g], zeros[g] = grid.params(W1[:, i:i + group].float())
                scale, zero = scales[g], zeros[g]
            w = W1[:, i]
            q = grid.quantize(w, scale, zero)
            ints[:, col] = q
            err = (w - grid.dequantize(q, scale, zero).double()) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ Hinv[i1:i2, i2:]
    if static is not None:
        scales, zeros = static
    return QuantizedWeight(ints, scales.T.contiguous(), zeros.T.contiguous(), group, grid)


def reconstruction_error(weight: Any, quantized: Any, inputs: Any) -> float:
    """``‖X Wᵀ − X Qᵀ‖_F`` for input rows ``inputs`` and a dequantized weight ``quantized``."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    return float((x @ (weight.double() - quantized.double()).T).norm())
