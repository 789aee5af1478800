"""HQQ-style scale (and zero point) optimization onto a format's 4-bit grid, data-free.

HQQ (Badri & Shaji, 2023) chooses each group's quantization parameters by minimizing the
weight's own reconstruction error, alternating "round with the current parameters" and
"solve for the parameters given the integers". torchao ships two forms:

- ``_choose_qparams_and_quantize_affine_hqq``: an lp (p = 0.7) proximal solver for a
  *float* zero point. MatMulNBits stores *integer* zero points (uint4): projecting that
  float zero onto the nearest integer undoes it (measured on MiniLM's linears: the
  projected result's error equals RTN's to 4 digits), so it does not fit the format.
- ``_choose_qparams_and_quantize_scale_only_hqq``: alternating least squares on the scale
  of a symmetric grid (zero fixed at 0). This is what ExecuTorch's RTN int4 already uses
  (``edgeq.backends.executorch.quant.torchao_config``: ``hqq_scale_only``), so an HQQ
  candidate there would equal today's ``int4-gN``.

``hqq`` here is torchao's scale-only iteration extended to an asymmetric grid with
integer zero points: with the integers fixed, the least-squares affine fit ``w ≈ s·q + b``
gives the zero point ``round(-b / s)`` (clamped to the grid) and then the least-squares
scale for that zero; the group is rounded again onto the grid's own quantizer, bit for
bit as the format's (``grid.quantize``). Each group keeps the best parameters seen, the
grid's RTN included, so no group's squared error is above RTN's. On a symmetric grid the
zero stays 0 and the iteration is torchao's scale-only HQQ (from the grid's own initial
scale).

>>> import torch
>>> from edgeq.algorithms.grids import AsymmetricUint4
>>> from edgeq.algorithms.gptq import rtn
>>> w = torch.randn(16, 64)
>>> q = hqq(w, AsymmetricUint4(), group=32)
>>> bool((w - q.dequantized()).norm() <= (w - rtn(w, AsymmetricUint4(), 32).dequantized()).norm())
True
"""

from __future__ import annotations

from typing import Any

from edgeq.algorithms.gptq import QuantizedWeight, rtn

ITERATIONS = 20  # torchao's default for both HQQ forms
REVISION = 1  # raised whenever a result would change for the same weight (cache keys)


def hqq(weight: Any, grid: Any, group: int, *, iterations: int = ITERATIONS) -> QuantizedWeight:
    """``weight`` ([out, in]) on ``grid`` in groups of ``group`` input columns, each group's
    scale and integer zero point chosen by alternating least squares (never worse than RTN)."""
    import torch

    w = weight.detach().float()
    rows, cols = w.shape
    if cols % group:
        raise ValueError(f"{cols} input columns are not a multiple of the group size {group}")
    start = rtn(w, grid, group)
    wb = w.view(-1, group)
    best_q = start.ints.view(-1, group)
    best_s, best_z = start.scales.flatten().clone(), start.zeros.flatten().clone()
    best_e = _sq_error(wb, grid, best_q, best_s, best_z)
    symmetric = getattr(grid, "qmin", 0) < 0  # a signed grid's zero point is 0
    lo, hi = getattr(grid, "qmin", 0), grid.qmax
    tiny = torch.finfo(torch.float32).smallest_normal
    s, z = best_s.clone(), best_z.clone()
    for _ in range(iterations):
        q = grid.quantize(wb, s, z).float()
        if not symmetric:
            qm, wm = q.mean(-1), wb.mean(-1)
            var = ((q - qm[:, None]) ** 2).sum(-1)
            slope = ((q - qm[:, None]) * (wb - wm[:, None])).sum(-1) / var.clamp(min=tiny)
            ok = (var > 0) & (slope > 0)
            zf = torch.where(ok, torch.round((slope * qm - wm) / torch.where(ok, slope, 1.0)), z.float())
            z = zf.clamp(lo, hi).to(torch.int16)
        d = q - z.float()[:, None]
        den = (d * d).sum(-1)
        s = torch.where(den > 0, (wb * d).sum(-1) / den.clamp(min=tiny), s).clamp(min=tiny)
        s = grid.stored_scale(s)
        ints = grid.quantize(wb, s, z)
        err = _sq_error(wb, grid, ints, s, z)
        better = err < best_e
        if not bool(better.any()):
            break
        best_e = torch.where(better, err, best_e)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        best_q = torch.where(better[:, None], ints, best_q)
    return QuantizedWeight(best_q.reshape(rows, cols).contiguous(), best_s.view(rows, -1).contiguous(),
                           best_z.view(rows, -1).contiguous(), group, grid)


def _sq_error(wb: Any, grid: Any, ints: Any, scale: Any, zero: Any) -> Any:
    return ((wb - grid.dequantize(ints, scale, zero)) ** 2).sum(-1)
