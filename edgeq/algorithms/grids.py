"""The 4-bit grids calibrated algorithms round onto: exactly the runtime formats' own.

A grid chooses one group's scale (and zero point) from the group's values and rounds
values onto it, bit for bit as the format's real quantizer does, so an algorithm that
picks different integers changes values, never the format. Which grid a format stores
is its backend's choice (``GPTQ_GRID`` in the backend module); nothing here names one.

- ``SymmetricInt4``: torchao's ``choose_qparams_affine`` / ``quantize_affine`` with
  ``MappingType.SYMMETRIC`` as ExecuTorch's 8da4w uses them: ``scale = max|w| / 7.5``
  (clamped to float32's smallest normal), ``q = clamp(round(w * (1 / scale)), -8, 7)``,
  zero point 0. ``bf16_scales``: the scale is rounded to bfloat16 first, as XNNPACK
  stores 4-bit group scales (the values are then rounded onto the scale it computes with).
- ``AsymmetricUint4``: MLAS's blockwise quantizer behind ONNX Runtime's
  ``MatMulNBitsQuantizer`` (``quantize_matmul_4bits``, ``is_symmetric=False``): the range
  stretched to include 0, ``scale = (max - min) / 15``, ``zp = roundf(-min / scale)``
  clamped to [0, 15], ``q = clamp(roundf(w * (1 / scale) + zp), 0, 15)`` with C's
  round-half-away-from-zero, in float32.
- ``offset_blocks``: llama.cpp's Q4_1 grid (a scale and an offset per block, no zero point:
  ``int4-g32-asym``), which ONNX and ExecuTorch store as a symmetric 4-bit term plus the
  input's block sums times the offsets.

A grid also names how the format's own RTN chooses its scales (``rtn``): min-max, or for
ExecuTorch torchao's scale-only HQQ (``hqq_scale_only``), which calibrated algorithms then
start from and are compared against.

Checked bit for bit against torchao and ONNX Runtime in ``tests/test_gptq.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SymmetricInt4:
    bf16_scales: bool = True
    qmin: int = -8
    qmax: int = 7
    name: str = "int4-symmetric"
    # How the format's own RTN chooses scales: "minmax" (``params``) or "hqq_scale_only"
    # (torchao's scale-only HQQ, as ExecuTorch's int4-gN): what calibrated algorithms start
    # from and must not do worse than (``edgeq.algorithms.gptq.format_rtn``).
    rtn: str = "minmax"

    @property
    def key(self) -> str:
        return f"{self.name}{'-bf16' if self.bf16_scales else ''}{'' if self.rtn == 'minmax' else '-' + self.rtn}"

    def params(self, group: Any) -> tuple[Any, Any]:
        """``(scale, zero)`` per row of ``group`` ([rows, g]), float32 and int16."""
        import torch

        g = group.float()
        amax = torch.maximum(-g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0))
        scale = (amax / ((self.qmax - self.qmin) / 2)).clamp(min=torch.finfo(torch.float32).smallest_normal)
        return self.stored_scale(scale), torch.zeros_like(scale, dtype=torch.int16)

    def stored_scale(self, scale: Any) -> Any:
        """``scale`` as the format stores it (bf16-rounded with ``bf16_scales``)."""
        import torch

        return scale.to(torch.bfloat16).float() if self.bf16_scales else scale

    def quantize(self, w: Any, scale: Any, zero: Any) -> Any:
        """Integers of ``w`` ([rows] or [rows, n]) on the grid of ``scale`` / ``zero`` ([rows])."""
        import torch

        s = scale if w.dim() == 1 else scale[:, None]
        return torch.clamp(torch.round(w.float() * (1.0 / s)), self.qmin, self.qmax).to(torch.int16)

    def dequantize(self, q: Any, scale: Any, zero: Any) -> Any:
        s = scale if q.dim() == 1 else scale[:, None]
        return q.float() * s


@dataclass(frozen=True)
class AsymmetricUint4:
    qmax: int = 15
    name: str = "uint4-asymmetric"
    rtn: str = "minmax"  # MatMulNBits' quantizer: min-max scales

    @property
    def key(self) -> str:
        return self.name

    def params(self, group: Any) -> tuple[Any, Any]:
        import torch

        g = group.float()
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        scale = (hi - lo) / float(self.qmax)
        zero_fp = torch.where(scale != 0, 0.0 - lo / torch.where(scale != 0, scale, 1.0), lo)
        zero = _round_away(zero_fp).clamp(0, self.qmax)
        return scale, zero.to(torch.int16)

    def stored_scale(self, scale: Any) -> Any:
        return scale  # float32, as ONNX Runtime's scales initializer

    def quantize(self, w: Any, scale: Any, zero: Any) -> Any:
        import torch

        s = scale if w.dim() == 1 else scale[:, None]
        z = zero if w.dim() == 1 else zero[:, None]
        recip = torch.where(s != 0, 1.0 / torch.where(s != 0, s, 1.0), torch.zeros_like(s))
        return _round_away(w.float() * recip + z.float()).clamp(0, self.qmax).to(torch.int16)

    def dequantize(self, q: Any, scale: Any, zero: Any) -> Any:
        s = scale if q.dim() == 1 else scale[:, None]
        z = zero if q.dim() == 1 else zero[:, None]
        return (q.float() - z.float()) * s


def _round_away(x: Any) -> Any:
    """C's roundf: halves away from zero (torch.round rounds them to even)."""
    import torch

    x = x.double()  # |x| + 0.5 is exact in float64 for a float32 x (no spurious carry)
    return (torch.sign(x) * torch.floor(x.abs() + 0.5)).float()


def offset_blocks(w: Any, group: int) -> tuple[Any, Any, Any]:
    """``w`` ([N, K]) on llama.cpp's Q4_1 grid per block of ``group`` along K, in float32:
    the integers ``q`` ([N, K / group, group], 0..15), scales ``d`` and offsets ``m``
    ([N, K / group]), so that ``w ≈ d * q + m``."""
    import torch

    wb = w.float().unflatten(-1, (-1, group))
    lo, hi = wb.amin(-1), wb.amax(-1)
    d = (hi - lo) / 15
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, 1.0), torch.zeros_like(d))
    q = torch.floor((wb - lo[..., None]) * inv[..., None] + 0.5).clamp(0, 15)
    return q, d, lo
