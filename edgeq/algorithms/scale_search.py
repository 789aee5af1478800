"""The scale of one fold of activation-aware scaling (``edgeq.algorithms.smooth``): its
formulas (SmoothQuant's and AWQ's) and the search among ``CANDIDATES`` through the format's
own stand-ins, shared by the decoder's folds and an encoder's (``smooth_encoder``)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from edgeq.algorithms.smooth import Fold, Statistics

ALPHAS = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9)  # SmoothQuant's migration strength, searched per fold
AWQ_ALPHAS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)  # AWQ's exponent of mean|x|, searched per fold beside them
SMOOTHQUANT, AWQ = "smoothquant", "awq"
METHODS = (SMOOTHQUANT, AWQ)  # what ``--algorithms`` names to offer each
CANDIDATES: tuple[tuple[str, float], ...] = (*((SMOOTHQUANT, a) for a in ALPHAS), *((AWQ, a) for a in AWQ_ALPHAS))


def choose_scale(fold: Fold, stats: Statistics, linears: dict[str, Any], quantize: Callable[[Any, str], Any],
                 module: Any, methods: tuple[str, ...] = METHODS) -> tuple[str, float] | None:
    """The scale of ``CANDIDATES`` (a method and its exponent; None: no scaling) whose quantized
    linears reproduce the fp32 outputs of the fold's sampled calibration inputs best:
    ``quantize(linear, fqn)`` is the format's stand-in of that linear at its planned scheme
    (its weight and activation rounding). None wins ties, so a fold is made only where it
    measurably helps. ``methods``: the forms searched (``METHODS``).

    A linear of more than ``SAMPLED_WEIGHTS`` weights is judged on evenly spaced output rows
    (``sampled_rows``): every scheme rounds each output row on its own (per-row scales, groups
    along the row) and the activations' rounding does not depend on the rows, so those rows'
    outputs are exactly the whole stand-in's (tests/test_smooth.py checks this per format);
    the scale ``s`` multiplies columns, which every row keeps."""
    import torch

    x = stats.samples[fold.linears[0]]
    parts = {f: part(linears[f], sampled_rows(linears[f].weight.shape)) for f in fold.linears}
    with torch.no_grad():
        refs = {f: torch.nn.functional.linear(x, lin.weight.float()) for f, lin in parts.items()}

    def error(s: Any | None) -> float:
        total = 0.0
        for f, lin in parts.items():
            q = quantize(lin if s is None else part(lin, None, s), f)
            y = q(x if s is None else x / s)
            if getattr(lin, "bias", None) is not None:
                y = y - lin.bias.detach()
            total += float((y - refs[f]).pow(2).sum() / refs[f].pow(2).sum().clamp(min=1e-30))
        return total

    with torch.no_grad():
        best, best_error = None, error(None)
        for choice in (c for c in CANDIDATES if c[0] in methods):
            e = error(fold_scale(module, fold, stats, linears, choice))
            if e < best_error:
                best, best_error = choice, e
    return best


SAMPLED_WEIGHTS = 1 << 21  # a larger linear's candidates are judged on a sample of its output rows


def sampled_rows(shape: Any, budget: int = SAMPLED_WEIGHTS) -> Any:
    """Evenly spaced output rows of a ``(rows, columns)`` weight holding about ``budget``
    weights (at least 256 rows), or None: all of them."""
    import torch

    rows, columns = int(shape[0]), int(shape[1])
    if rows * columns <= budget:
        return None
    n = max(256, budget // max(columns, 1))
    return None if n >= rows else torch.linspace(0, rows - 1, n).round().long().unique()


def part(linear: Any, rows: Any, scale: Any = None) -> Any:
    """A copy of ``linear`` (its class and settings) with only output ``rows`` (None: all) and
    its weight's columns multiplied by ``scale`` (None: as they are, shared); only the rows
    taken are copied, so a 128k-row head is never duplicated whole per candidate."""
    import torch

    out = copy.copy(linear)
    out._parameters = dict(linear._parameters)
    out._buffers, out._modules = dict(linear._buffers), dict(linear._modules)
    w = linear.weight.detach()
    w = w if rows is None else w[rows]
    if scale is not None:
        w = w * scale.to(w.dtype)
    out.weight = torch.nn.Parameter(w, requires_grad=False)  # the stand-ins copy what they keep
    if getattr(linear, "bias", None) is not None and rows is not None:
        out.bias = torch.nn.Parameter(linear.bias.detach()[rows], requires_grad=False)
    if hasattr(out, "out_features"):
        out.out_features = int(w.shape[0])
    return out


def as_choice(choice: tuple[str, float] | float) -> tuple[str, float]:
    return (SMOOTHQUANT, float(choice)) if isinstance(choice, int | float) else (choice[0], float(choice[1]))


def fold_scale(module: Any, fold: Fold, stats: Statistics, linears: dict[str, Any],
                choice: tuple[str, float] | float) -> Any:
    """The fold's per-input-channel scale ``s`` (the linears' columns are multiplied by it):
    SmoothQuant's ``max|x|^α / max|W|^(1-α)``, or AWQ's ``mean|x|^α`` over the geometric mean
    of its extremes."""
    import torch

    method, alpha = as_choice(choice)
    if method == AWQ:
        x = torch.stack([stats.absmean[f] for f in fold.linears]).amax(0)
        if fold.kind == "value":
            kv, group, dim = _value_layout(module, fold)
            x = x.view(kv, group, dim).mean(1)[:, None, :].expand(kv, group, dim).reshape(-1)
        s = x.clamp(min=1e-5).pow(alpha)
        return (s / (s.max() * s.min()).sqrt()).clamp(min=1e-4, max=1e4)
    x = torch.stack([stats.absmax[f] for f in fold.linears]).amax(0)
    w = torch.stack([linears[f].weight.detach().abs().amax(0).float() for f in fold.linears]).amax(0)
    return _value_scale(module, fold, x, w, alpha) if fold.kind == "value" else _scale(x, w, alpha)


def _scale(x: Any, w: Any, alpha: float) -> Any:
    s = x.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-4, max=1e4)


def _value_scale(module: Any, fold: Fold, x: Any, w: Any, alpha: float) -> Any:
    """o_proj's scale, one value per value channel: o_proj's input channel (head h, dim d) is
    the attention-weighted value channel (h // group, d), so the heads of one group share it."""
    kv, group, dim = _value_layout(module, fold)
    per = _scale(x.view(kv, group, dim).amax(1), w.view(kv, group, dim).amax(1), alpha)
    return per[:, None, :].expand(kv, group, dim).reshape(-1)


def per_row(module: Any, fold: Fold, s: Any) -> Any:
    """The scale as the fold's source divides its output: per channel (norm, up_proj rows),
    or per value channel (v_proj rows)."""
    if fold.kind != "value":
        return s
    kv, group, dim = _value_layout(module, fold)
    return s.view(kv, group, dim)[:, 0, :].reshape(-1)


def _value_layout(module: Any, fold: Fold) -> tuple[int, int, int]:
    config = module.config.get_text_config() if hasattr(module.config, "get_text_config") else module.config
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    o = dict(module.named_modules())[fold.linears[0]]
    return kv, heads // kv, o.in_features // heads
