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
- Shared work: ``factor`` (damping, ``Hinv``) depends on the inputs only, and rows are
  independent given it, so ``gptq_many`` rounds every weight reading one input (q/k/v) at
  every group size as slices of one stacked matrix in one column sweep (GPTQ's lazy batch
  updates of ``BLOCK`` columns), on one torch thread (``one_thread``).

>>> import torch
>>> from edgeq.algorithms.grids import SymmetricInt4
>>> w = torch.randn(8, 64); x = torch.randn(256, 64)
>>> h = HessianSum(64); h.add(x)
>>> q = gptq(w, h.matrix(), SymmetricInt4(), group=32)
>>> q.ints.shape, q.scales.shape
(torch.Size([8, 64]), torch.Size([8, 2]))
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

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


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread: the column sweep is thousands of small ops, which two threads
    make slower, and on a machine shared with other work many times slower (measured on 2
    busy cores: a 384×1536 sweep 21 s on 2 threads, 1.9 s on 1; its factorization 8.2 s
    and 0.75 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Factor:
    """``Hinv`` (upper Cholesky factor of the damped ``H⁻¹``, columns in processing order),
    the columns no input reaches, and the processing order (``perm``)."""

    hinv: Any
    dead: Any
    perm: Any
    act_order: bool


def rtn(weight: Any, grid: Any, group: int) -> QuantizedWeight:
    """The grid's own round-to-nearest of ``weight``, group by group (GPTQ's starting point)."""
    import torch

    w = weight.detach().float()
    rows, cols = w.shape
    wb = w.view(rows, cols // group, group)
    scale, zero = grid.params(wb.flatten(0, 1))
    ints = grid.quantize(wb.flatten(0, 1), scale, zero).view(rows, cols)
    return QuantizedWeight(ints, scale.view(rows, -1), zero.view(rows, -1).to(torch.int16), group, grid)


def factor(hessian: Any, *, damping: float = DAMPING, act_order: bool = False) -> Factor:
    """The part of GPTQ that depends on the inputs only: computed once per Hessian and shared
    by every weight (q/k/v read the same inputs), group size and grid that rounds with it."""
    with one_thread():
        return _factor(hessian, damping, act_order)


def _factor(hessian: Any, damping: float, act_order: bool) -> Factor:
    import torch

    H = hessian.detach().double().clone()
    cols = H.shape[0]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(cols)
    H = H[perm][:, perm]
    H += damping * torch.mean(torch.diagonal(H)) * torch.eye(cols, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return Factor(hinv, dead, perm, act_order)


def format_rtn(weight: Any, grid: Any, group: int) -> QuantizedWeight:
    """The format's own RTN of ``weight``: ``rtn`` on a min-max grid; on a grid whose format
    chooses scales with torchao's scale-only HQQ (ExecuTorch), torchao's integers and scales
    (stored as the format stores them), bit for bit what that format's int4-gN ships."""
    if grid.rtn == "minmax":
        return rtn(weight, grid, group)
    if grid.rtn != "hqq_scale_only":
        raise ValueError(f"unknown RTN scale choice {grid.rtn!r}")
    import torch
    from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_scale_only_hqq

    w = weight.detach().float()
    rows, cols = w.shape
    q, s = _choose_qparams_and_quantize_scale_only_hqq(w, [1, group], grid.qmin, grid.qmax)
    scales = grid.stored_scale(s.float().reshape(rows, cols // group)).contiguous()
    return QuantizedWeight(q.to(torch.int16).reshape(rows, cols).contiguous(), scales,
                           torch.zeros(rows, cols // group, dtype=torch.int16), group, grid)


def output_error(weight: Any, quantized: QuantizedWeight, hessian: Any) -> Any:
    """Per output row, ``δ H δᵀ`` with ``δ`` the row's weight error: that row's share of the
    output error ``‖XWᵀ − XQᵀ‖²`` (times 2/n) on the inputs ``hessian`` sums."""
    delta = weight.detach().double() - quantized.dequantized().double()
    return ((delta @ hessian.double()) * delta).sum(1)


def best_rows(weight: Any, hessian: Any, candidates: list[QuantizedWeight]) -> QuantizedWeight:
    """Row by row, the candidate (same grid and group) with the least output error on
    ``hessian``: rows are independent (each has its own scales), so the result is never worse
    on those inputs than any candidate, row for row and in total."""
    import torch

    errors = torch.stack([output_error(weight, c, hessian) for c in candidates])
    pick = errors.argmin(0)

    def take(attr: str) -> Any:
        stacked = torch.stack([getattr(c, attr) for c in candidates])
        return stacked[pick, torch.arange(stacked.shape[1])].contiguous()

    first = candidates[0]
    return QuantizedWeight(take("ints"), take("scales"), take("zeros"), first.group, first.grid)


def gptq(weight: Any, hessian: Any, grid: Any, group: int, *, act_order: bool = False,
         damping: float = DAMPING) -> QuantizedWeight:
    """``weight`` ([out, in]) rounded onto ``grid`` in groups of ``group`` input columns,
    minimizing ``‖XWᵀ − XQᵀ‖²`` for the inputs ``hessian`` (``HessianSum.matrix()``) sums."""
    return gptq_many([weight], factor(hessian, damping=damping, act_order=act_order), grid, [group])[0][0]


def gptq_many(weights: list[Any], f: Factor, grid: Any, groups: list[int], *,
              seeds: list[list[Any]] | None = None) -> list[list[QuantizedWeight]]:
    """GPTQ of every weight (all [*, in] with the inputs ``f`` factors) at every group size,
    ``[weight][group]``, in one column sweep: rows are independent given ``Hinv``, so every
    (weight, group) is a slice of one stacked matrix and the sweep's per-column work is
    shared. ``seeds[w][g]``: fixed ``(scales, zeros)`` [out, in / group] to round onto instead
    of choosing each group's scale when the sweep reaches it (act-order uses the min-max
    scales of the original weight)."""
    with one_thread():
        return _sweep(weights, f, grid, groups, seeds)


def _sweep(weights: list[Any], f: Factor, grid: Any, groups: list[int], seeds: list[list[Any]] | None
           ) -> list[list[QuantizedWeight]]:
    import torch

    cols = f.hinv.shape[0]
    for g in groups:
        if cols % g or BLOCK % g:
            raise ValueError(f"{cols} input columns are not a multiple of the group size {g}")
    parts: list[tuple[int, int, int, Any]] = []  # (first row, rows, group, fixed scales or None)
    stacked = []
    at = 0
    for wi, w in enumerate(weights):
        w = w.detach().double().clone()
        w[:, f.dead] = 0.0
        for gi, g in enumerate(groups):
            fixed = seeds[wi][gi] if seeds is not None else None
            if fixed is None and f.act_order:  # static groups from the original weight
                s, z = grid.params(w.view(w.shape[0], cols // g, g).reshape(-1, g).float())
                fixed = (s.view(w.shape[0], -1), z.view(w.shape[0], -1))
            parts.append((at, w.shape[0], g, fixed))
            stacked.append(w)
            at += w.shape[0]
    W = torch.cat(stacked)[:, f.perm]
    perm = f.perm.tolist()
    scale = torch.zeros(at, dtype=torch.float32)
    zero = torch.zeros(at, dtype=torch.int16)
    ints = torch.zeros(at, cols, dtype=torch.int16)
    chosen = [torch.zeros(n, cols // g, dtype=torch.float32) for _, n, g, _ in parts]
    chosen_z = [torch.zeros(n, cols // g, dtype=torch.int16) for _, n, g, _ in parts]
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        Hinv1 = f.hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = perm[i1 + i]
            for k, (r0, n, g, fixed) in enumerate(parts):
                if fixed is not None:
                    if f.act_order or col % g == 0:
                        scale[r0:r0 + n], zero[r0:r0 + n] = fixed[0][:, col // g], fixed[1][:, col // g]
                elif col % g == 0:  # the group starts here: its scale from its current values
                    s, z = grid.params(W1[r0:r0 + n, i:i + g].float())
                    scale[r0:r0 + n], zero[r0:r0 + n] = s, z
                    chosen[k][:, col // g], chosen_z[k][:, col // g] = s, z
            w = W1[:, i]
            q = grid.quantize(w, scale, zero)
            ints[:, col] = q
            err = (w - grid.dequantize(q, scale, zero).double()) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ f.hinv[i1:i2, i2:]
    out: list[list[QuantizedWeight]] = [[] for _ in weights]
    for k, (r0, n, g, fixed) in enumerate(parts):
        s, z = (chosen[k], chosen_z[k]) if fixed is None else fixed
        out[k // len(groups)].append(QuantizedWeight(ints[r0:r0 + n].contiguous(), s.contiguous(),
                                                     z.to(torch.int16).contiguous(), g, grid))
    return out


def reconstruction_error(weight: Any, quantized: Any, inputs: Any) -> float:
    """``‖X Wᵀ − X Qᵀ‖_F`` for input rows ``inputs`` and a dequantized weight ``quantized``."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    return float((x @ (weight.double() - quantized.double()).T).norm())
