"""llama.cpp's K-quant tensor types (Q2_K … Q6_K) written in numpy, byte for byte as
llama.cpp's own quantizer writes them without an importance matrix (``ggml_quantize_chunk``
→ ``quantize_row_qN_K_ref`` in ``ggml/src/ggml-quants.c``; gguf-py has no K-quant
quantizer). Checked bit for bit against llama.cpp's exported functions in
tests/test_gguf_kquants.py.

A K-quant stores super-blocks of 256 weights along each row: sub-blocks of 16 or 32 weights,
each with its own scale (and min, for the asymmetric types) quantized to 4, 6 or 8 bits
against one or two fp16 super-scales. The sub-block fits are llama.cpp's searches
(``make_qkx2_quants``: weighted least squares over 16-21 trial scales, with a min;
``make_qx_quants``: symmetric, 18 trial scales; ``make_q3_quants``: symmetric with
coordinate descent). Every arithmetic step is float32 in llama.cpp's order, vectorized
over sub-blocks; sums run element by element (not numpy's pairwise sum) and rounding is
to nearest even, so the results are the same bits.
"""

from __future__ import annotations

from typing import Any, Callable

QK_K = 256
GROUP_MAX_EPS = 1e-15


def _f(v: float) -> Any:
    import numpy as np

    return np.float32(v)


def _seq_sum(a: Any) -> Any:
    """Sum along the last axis one element after another in float32 (as the C loops do)."""
    import numpy as np

    out = np.zeros(a.shape[:-1], dtype=np.float32)
    for i in range(a.shape[-1]):
        out = out + a[..., i]
    return out


def _rint(v: Any) -> Any:
    """llama.cpp's ``nearest_int``: round half to even."""
    import numpy as np

    return np.rint(np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.int32)


def _fp16(v: Any) -> Any:
    """(fp16 bits as uint16, their fp32 value): ``GGML_FP32_TO_FP16`` and back."""
    import numpy as np

    h = np.asarray(v, dtype=np.float32).astype(np.float16)
    return h.view(np.uint16), h.astype(np.float32)


def _abs_max_signed(x: Any) -> tuple[Any, Any]:
    """(largest |x| along the last axis, the first element reaching it, with its sign)."""
    import numpy as np

    idx = np.abs(x).argmax(-1)
    signed = np.take_along_axis(x, idx[..., None], -1)[..., 0]
    return np.abs(signed), signed


def _positive_max(v: Any) -> Any:
    """The largest value above 0 along the last axis, else +0 (llama.cpp's ``if (s > max) max = s``)."""
    import numpy as np

    m = v.max(-1)
    return np.where(m > 0, m, _f(0.0)).astype(np.float32)


def make_qkx2_quants(x: Any, weights: Any, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[Any, Any, Any]:
    """Asymmetric sub-block fit (rows of ``x``): (levels 0..nmax, scale, -min) per row."""
    import numpy as np

    x = x.astype(np.float32)
    w = weights.astype(np.float32)
    mn, mx = x.min(-1), x.max(-1)
    sum_w, sum_x = _seq_sum(w), _seq_sum(w * x)
    mn = np.where(mn > 0, _f(0.0), mn).astype(np.float32)
    flat = mx == mn
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rng = np.where(flat, _f(1.0), mx - mn)
        iscale = _f(nmax) / rng
        scale = _f(1.0) / iscale

        def err(s: Any, m: Any, levels: Any) -> Any:
            diff = s[:, None] * levels.astype(np.float32) + m[:, None] - x
            return _seq_sum(w * (np.abs(diff) if use_mad else diff * diff))

        levels = np.clip(_rint(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        best = err(scale, mn, levels)
        for step in range(nstep + 1):
            iscale = (_f(rmin) + _f(rdelta) * _f(step) + _f(nmax)) / np.where(flat, _f(1.0), mx - mn)
            trial = np.clip(_rint(iscale[:, None] * (x - mn[:, None])), 0, nmax)
            lf = trial.astype(np.float32)
            sum_l, sum_l2, sum_xl = _seq_sum(w * lf), _seq_sum(w * lf * lf), _seq_sum(w * lf * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clamp = this_min > 0
            this_min = np.where(clamp, _f(0.0), this_min).astype(np.float32)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale).astype(np.float32)
            cur = err(this_scale, this_min, trial)
            better = (det > 0) & (cur < best) & ~flat
            levels = np.where(better[:, None], trial, levels)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    levels = np.where(flat[:, None], 0, levels)
    scale = np.where(flat, _f(0.0), scale).astype(np.float32)
    return levels, scale, (-mn).astype(np.float32)


def make_qx_quants(x: Any, nmax: int) -> tuple[Any, Any]:
    """Symmetric sub-block fit weighted by x² (``rmse_type`` 1, no importance): (levels 0..2·nmax-1, scale)."""
    import numpy as np

    x = x.astype(np.float32)
    amax, mx = _abs_max_signed(x)
    zero = amax < _f(GROUP_MAX_EPS)
    w = x * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        safe = np.where(zero, _f(1.0), mx)

        def fit(iscale: Any) -> tuple[Any, Any, Any]:
            lev = np.clip(_rint(iscale[:, None] * x), -nmax, nmax - 1)
            lf = lev.astype(np.float32)
            return lev, _seq_sum(w * x * lf), _seq_sum(w * lf * lf)

        lev, sumlx, suml2 = fit(_f(-nmax) / safe)
        levels = lev + nmax
        scale = np.where(suml2 != 0, sumlx / suml2, _f(0.0)).astype(np.float32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            lev, sumlx, suml2 = fit(-(_f(nmax) + _f(0.1) * _f(step)) / safe)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            levels = np.where(better[:, None], lev + nmax, levels)
            scale = np.where(better, sumlx / suml2, scale).astype(np.float32)
            best = np.where(better, scale * sumlx, best).astype(np.float32)
    return np.where(zero[:, None], 0, levels), np.where(zero, _f(0.0), scale).astype(np.float32)


def make_q3_quants(x: Any, nmax: int) -> tuple[Any, Any]:
    """Symmetric sub-block fit with llama.cpp's coordinate descent (``do_rmse``): (levels, scale)."""
    import numpy as np

    x = x.astype(np.float32)
    amax, mx = _abs_max_signed(x)
    zero = amax < _f(GROUP_MAX_EPS)
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lev = np.clip(_rint((_f(-nmax) / np.where(zero, _f(1.0), mx))[:, None] * x), -nmax, nmax - 1)
        lf = lev.astype(np.float32)
        sumlx, suml2 = _seq_sum(wx * lf), _seq_sum(w * lf * lf)
        active = ~zero
        for _ in range(5):
            changed = np.zeros_like(active)
            for i in range(x.shape[1]):
                li = lev[:, i].astype(np.float32)
                slx = sumlx - wx[:, i] * li
                sl2 = suml2 - w[:, i] * li * li
                can = active & (slx > 0)
                new = np.clip(_rint(np.where(can, x[:, i] * sl2 / np.where(can, slx, _f(1.0)), _f(0.0))),
                              -nmax, nmax - 1)
                nf = new.astype(np.float32)
                slx2, sl22 = slx + wx[:, i] * nf, sl2 + w[:, i] * nf * nf
                take = can & (new != lev[:, i]) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                lev[:, i] = np.where(take, new, lev[:, i])
                sumlx = np.where(take, slx2, sumlx).astype(np.float32)
                suml2 = np.where(take, sl22, suml2).astype(np.float32)
                changed |= take
            active &= changed
            if not active.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, _f(0.0)).astype(np.float32)
    return np.where(zero[:, None], 0, lev + nmax), np.where(zero, _f(0.0), scale).astype(np.float32)


def _requantize(x: Any, d: Any, offset: Any, levels: Any, lo: int, hi: int) -> Any:
    """Levels of each sub-block against its stored scale ``d`` (and ``offset`` = dmin·m);
    sub-blocks whose stored scale is 0 keep the fit's levels (llama.cpp's ``if (!d) continue``)."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(d == 0, _f(1.0), d)
        new = np.clip(_rint((x + offset[..., None]) / safe[..., None]), lo, hi)
    return np.where((d == 0)[..., None], levels, new)


def _pack_k4_scales(ls: Any, lm: Any) -> Any:
    """8 six-bit scales and mins → llama.cpp's 12-byte ``scales`` (``get_scale_min_k4``'s inverse)."""
    import numpy as np

    out = np.zeros(ls.shape[:-1] + (12,), dtype=np.uint8)
    out[..., 0:4] = ls[..., 0:4] | ((ls[..., 4:8] >> 4) << 6)
    out[..., 4:8] = lm[..., 0:4] | ((lm[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (ls[..., 4:8] & 0xF) | ((lm[..., 4:8] & 0xF) << 4)
    return out


def _scales_mins(x: Any, nmax: int, rmin: float, nstep: int) -> tuple[Any, ...]:
    """Q4_K / Q5_K: sub-blocks of 32 fit with weights ``sqrt(mean x²) + |x|``, their scales and
    mins to 6 bits against fp16 ``d`` / ``dmin``; the levels re-fit to the stored scales."""
    import numpy as np

    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32)
    av = np.sqrt(_seq_sum(sub * sub) / _f(32))
    levels, scales, mins = make_qkx2_quants(sub, av[:, None] + np.abs(sub), nmax, rmin, 0.1, nstep, False)
    scales, mins, levels = scales.reshape(nb, 8), mins.reshape(nb, 8), levels.reshape(nb, 8, 32)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, _f(63.0) / max_scale, _f(0.0)).astype(np.float32)
        inv_min = np.where(max_min > 0, _f(63.0) / max_min, _f(0.0)).astype(np.float32)
    ls = np.minimum(_rint(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_rint(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d_bits, d = _fp16(max_scale / _f(63.0))
    dmin_bits, dmin = _fp16(max_min / _f(63.0))
    sub_d = d[:, None] * ls.astype(np.float32)
    sub_m = dmin[:, None] * lm.astype(np.float32)
    levels = _requantize(x.reshape(nb, 8, 32), sub_d, sub_m, levels, 0, nmax)
    return d_bits, dmin_bits, _pack_k4_scales(ls, lm), levels.reshape(nb, QK_K).astype(np.uint8)


def _q4_k(x: Any) -> Any:
    import numpy as np

    d, dmin, scales, L = _scales_mins(x, 15, -1.0, 20)
    qs = (L.reshape(-1, 4, 2, 32)[:, :, 0] | (L.reshape(-1, 4, 2, 32)[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), scales, qs], axis=1)


def _q5_k(x: Any) -> Any:
    import numpy as np

    d, dmin, scales, L = _scales_mins(x, 31, -0.5, 15)
    pairs = L.reshape(-1, 4, 2, 32)  # (block, n/64, low/high half, 32)
    high = (pairs >> 4) & 1
    shifts = (np.arange(4)[:, None] * 2 + np.arange(2)[None, :]).astype(np.uint8)  # m1 = 1 << 2n, m2 = 2 << 2n
    qh = (high << shifts[None, :, :, None]).sum(axis=(1, 2)).astype(np.uint8)
    low = pairs & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)
    return np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), scales, qh, qs], axis=1)


def _q6_k(x: Any) -> Any:
    import numpy as np

    nb = x.shape[0]
    levels, scales = make_qx_quants(x.reshape(nb * 16, 16), 32)
    scales, levels = scales.reshape(nb, 16), levels.reshape(nb, 16, 16)
    max_abs, max_scale = _abs_max_signed(scales)
    zero = max_abs < _f(GROUP_MAX_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(zero, _f(0.0), _f(-128.0) / np.where(zero, _f(1.0), max_scale)).astype(np.float32)
        d_bits, d = _fp16(np.where(zero, _f(0.0), _f(1.0) / np.where(zero, _f(1.0), iscale)))
    sc = np.minimum(_rint(iscale[:, None] * scales), 127).astype(np.int8)
    sub_d = d[:, None] * sc.astype(np.float32)
    L = _requantize(x.reshape(nb, 16, 16), sub_d, np.zeros_like(sub_d), levels - 32, -32, 31) + 32
    L = L.reshape(nb, 2, 4, 32).astype(np.uint8)  # (block, j/128, quarter, l)
    ql = np.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4), L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)],
                        axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6))
    out = np.concatenate([ql, qh.reshape(nb, 64).astype(np.uint8), sc.view(np.uint8), d_bits[:, None].view(np.uint8)],
                         axis=1)
    out[zero] = 0
    return out


def _pack_2bit(L: Any) -> Any:
    """Levels 0..3 → llama.cpp's Q2_K / Q3_K ``qs``: four levels 32 apart in one byte, per 128."""
    q = L.reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _q3_k(x: Any) -> Any:
    import numpy as np

    nb = x.shape[0]
    levels, scales = make_q3_quants(x.reshape(nb * 16, 16), 4)
    scales, levels = scales.reshape(nb, 16), levels.reshape(nb, 16, 16)
    _, max_scale = _abs_max_signed(scales)
    some = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(some, _f(-32.0) / np.where(some, max_scale, _f(1.0)), _f(0.0)).astype(np.float32)
        d_bits, d = _fp16(np.where(some, _f(1.0) / np.where(some, iscale, _f(1.0)), _f(0.0)))
    l6 = (np.clip(_rint(iscale[:, None] * scales).astype(np.int8), -32, 31) + 32).astype(np.uint8)
    l6 = np.where(some[:, None], l6, 0).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    high = (l6 >> 4).reshape(nb, 4, 4)  # (block, j/4, j%4)
    packed[:, 8:12] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    sub_d = d[:, None] * (l6.astype(np.int32) - 32).astype(np.float32)
    L = (_requantize(x.reshape(nb, 16, 16), sub_d, np.zeros_like(sub_d), levels - 4, -4, 3) + 4).reshape(nb, QK_K)
    L = L.astype(np.uint8)
    over = L > 3
    hbits = over.reshape(nb, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    hmask = hbits.sum(axis=1).astype(np.uint8)
    L = np.where(over, L - 4, L).astype(np.uint8)
    return np.concatenate([hmask, _pack_2bit(L), packed, d_bits[:, None].view(np.uint8)], axis=1)


def _q2_k(x: Any) -> Any:
    import numpy as np

    nb = x.shape[0]
    sub = x.reshape(nb * 16, 16)
    levels, scales, mins = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, True)
    scales, mins, levels = scales.reshape(nb, 16), mins.reshape(nb, 16), levels.reshape(nb, 16, 16)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_int = np.where((max_scale > 0)[:, None], _rint((_f(15.0) / max_scale)[:, None] * scales), 0)
        m_int = np.where((max_min > 0)[:, None], _rint((_f(15.0) / max_min)[:, None] * mins), 0)
    packed = ((s_int & 0xFF) | ((m_int << 4) & 0xFF)).astype(np.uint8)
    d_bits, d = _fp16(np.where(max_scale > 0, max_scale / _f(15.0), _f(0.0)))
    dmin_bits, dmin = _fp16(np.where(max_min > 0, max_min / _f(15.0), _f(0.0)))
    sub_d = d[:, None] * (packed & 0xF).astype(np.float32)
    sub_m = dmin[:, None] * (packed >> 4).astype(np.float32)
    L = _requantize(x.reshape(nb, 16, 16), sub_d, sub_m, levels, 0, 3).reshape(nb, QK_K).astype(np.uint8)
    return np.concatenate([packed, _pack_2bit(L), d_bits[:, None].view(np.uint8), dmin_bits[:, None].view(np.uint8)],
                          axis=1)


QUANTIZERS: dict[str, Callable[[Any], Any]] = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k,
                                                "Q6_K": _q6_k}


def quantize_k(array: Any, type_name: str) -> Any:
    """``array`` (…, K; K a multiple of 256) as ``type_name`` blocks: uint8 (…, K / 256 · block bytes),
    the layout gguf-py's ``quantize`` returns for the other types."""
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.float32)
    if a.shape[-1] % QK_K:
        raise ValueError(f"rows of {a.shape[-1]} are not whole {type_name} super-blocks of {QK_K}")
    blocks = QUANTIZERS[type_name](a.reshape(-1, QK_K))
    return np.ascontiguousarray(blocks.reshape(*a.shape[:-1], -1), dtype=np.uint8)
