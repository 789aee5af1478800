"""SmoothQuant for a BERT-style encoder's per-tensor int8 linears (ONNX Runtime's
``MatMulInteger``: one uint8 scale for a linear's whole input, which an outlier channel spends).

Its linears read what no op can take the division exactly: q/k/v and intermediate.dense read
a post-norm LayerNorm's output, which the residual also reads, and output.dense reads GELU's.
Its folds (``kind="input"``, ``encoder_folds``) divide the input explicitly: one ``Div`` by
a constant vector before the linears of a fold (q/k/v share it: the ONNX lowering merges
their equal divisions, ``graph.merge_equal_scalings``, so one DynamicQuantizeLinear still
serves the three); a vector division costs a fraction of a percent of the linear it
precedes. The scale is searched as for a decoder (``edgeq.algorithms.smooth.choose_scale``),
per fold and kernel (``encoder_scales``): the planner measures each candidate with it
(``scaled_stand_in``) and the export applies it (``smooth_encoder``).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeq.algorithms.smooth import (CANDIDATES, REVISION, SMOOTHQUANT, Fold, _choice, _fold_scale, choose_scale,
                                    fold_error, fold_references, statistics)

ENCODER_SAMPLES = 64  # calibration inputs an encoder's input folds are measured on
# Outlier channels a fold may compute beside its int8 linears in fp32 (searched; 0: none).
SPLITS = (4, 8, 16)
SPLIT_SHARE = 16  # a split takes at most 1/16 of a linear's input channels: a few outliers, not a second linear
# The split channels' divisor is their scale times this power of two: ``x / 2^64`` and the
# side weight's ``W·s·2^64`` are exact in fp32, and values that small leave the per-tensor
# int8 input range as the other channels set it (their main-path columns are zero).
SPLIT_SHIFT = 2.0 ** 64
OUTLIERS = "edgeq_outliers"  # the child linear computing a split's channels (its MatMul stays fp32)
OUTLIER_INDEX = "edgeq_outlier_index"


def encoder_folds(module: Any) -> list[Fold]:
    """A BERT-style encoder's folds (``kind="input"``): per layer the q/k/v of its
    ``attention.self`` (one shared scale), ``intermediate.dense`` and ``output.dense``.
    Each fold's ``source`` names where the division sits (the attention block, or the
    linear itself)."""
    from torch import nn

    modules = dict(module.named_modules())
    out: list[Fold] = []
    for name in modules:
        if not name.endswith(".attention.self"):
            continue
        qkv = tuple(f"{name}.{p}" for p in ("query", "key", "value"))
        if not all(isinstance(modules.get(f), nn.Linear) for f in qkv):
            continue
        out.append(Fold(name, "input", qkv))
        layer = name.removesuffix(".attention.self")
        for f in (f"{layer}.intermediate.dense", f"{layer}.output.dense"):
            if isinstance(modules.get(f), nn.Linear):
                out.append(Fold(f, "input", (f,)))
    return out


INPUT_DIVISOR = "edgeq_input_divisor"  # the buffer an "input" fold's linear divides its input by


def scale_columns(linear: Any, s: Any) -> None:
    """``linear``'s weight columns (input channels) times ``s``."""
    import torch

    linear.weight = torch.nn.Parameter(linear.weight.detach() * s.to(linear.weight.dtype), requires_grad=False)


def divide_input(linear: Any, s: Any) -> None:
    """``linear`` divides its input by ``s`` (per input channel) before its own computation: a
    buffer and a forward pre-hook, which the exporters trace as one ``Div`` (hooks survive
    ``copy.deepcopy``)."""
    linear.register_buffer(INPUT_DIVISOR, s.detach().clone().to(linear.weight.dtype))
    linear.register_forward_pre_hook(_divided, prepend=True)


def _divided(m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0] / getattr(m, INPUT_DIVISOR),) + tuple(args[1:])


def split_columns(linear: Any, s: Any, idx: Any) -> Any:
    """``linear``'s weight columns times ``s`` (``scale_columns``); with ``idx`` (outlier input
    channels) those columns zeroed, and returned times ``SPLIT_SHIFT`` (the side weight)."""
    import torch

    scale_columns(linear, s)
    if idx is None:
        return None
    side = linear.weight.detach()[:, idx] * SPLIT_SHIFT
    weight = linear.weight.detach().clone()
    weight[:, idx] = 0
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    return side


def split_input(m: Any, s: Any, idx: Any, side: Any) -> None:
    """``m`` divides its input by ``s`` (``divide_input``); with ``idx``, those channels by
    ``s·SPLIT_SHIFT`` instead and a child linear (``OUTLIERS``, weight ``side``) adds their
    product to ``m``'s output: they are computed in fp32 beside it."""
    import torch

    if idx is None:
        divide_input(m, s)
        return
    divisor = s.detach().clone()
    divisor[idx] = divisor[idx] * SPLIT_SHIFT
    divide_input(m, divisor)
    child = torch.nn.Linear(int(idx.numel()), int(side.shape[0]), bias=False)
    child.weight = torch.nn.Parameter(side.to(child.weight.dtype), requires_grad=False)
    m.add_module(OUTLIERS, child)
    m.register_buffer(OUTLIER_INDEX, idx.detach().clone().to(torch.int64))
    m.register_forward_hook(_with_outliers)


def _with_outliers(m: Any, args: tuple[Any, ...], out: Any) -> Any:
    return out + getattr(m, OUTLIERS)(args[0].index_select(-1, getattr(m, OUTLIER_INDEX)))


@dataclass
class EncoderScales:
    """An encoder's input-fold scales per scheme that takes them: ``scales[(linear fqn,
    scheme name)] = (fold source, (method, α), s, idx)`` (``idx``: the input channels computed
    in fp32 beside the linear, or None); a fold without an entry for a scheme is better
    unscaled and unsplit at it."""

    scales: dict[tuple[str, str], tuple[str, tuple[str, float], Any, Any]]  # + outlier channels (or None)
    source: str  # the calibration data
    tokens: int
    digest: str  # of the calibration rows and the choices: what a sensitivity cache entry is keyed by
    methods: tuple[str, ...]
    side: dict[tuple[str, str], int] = field(default_factory=dict)  # (fqn, scheme) → a split's fp32 side bytes

    def side_bytes(self, fqn: str, scheme: str) -> int:
        """The fp32 side weight a split adds to ``fqn`` at ``scheme`` (0 without a split)."""
        return self.side.get((fqn, scheme), 0)


_ENCODER_SCALES: Any = None  # module → {(schemes, methods): EncoderScales}: planning and lowering search once


def encoder_scales(loaded: Any, schemes: list[Any], backend: Any,
                   methods: tuple[str, ...] = (SMOOTHQUANT,)) -> EncoderScales | None:
    """For each of the encoder's ``"input"`` folds and each scheme of ``schemes`` that
    ``backend.ENCODER_SMOOTHS`` names (round-to-nearest), the scale ``choose_scale`` finds
    with every linear of the fold at that scheme (through the backend's stand-in; none wins
    ties), on the calibration rows as the artifact runs them (padding included). A linear's
    scale at a scheme so depends on nothing the plan chooses for other layers: the planner
    measures each candidate with it, and the lowering applies it per linear. None when
    nothing applies (no fold, no such scheme, no ``methods``, no calibration data)."""
    import weakref

    import torch

    from edgeq.algorithms.calibrated import calibration_source

    global _ENCODER_SCALES
    module = loaded.module
    wanted = sorted({sch.name: sch for sch in schemes if sch.name in backend.ENCODER_SMOOTHS
                     and sch.algorithm == "rtn"}.items())
    folds_ = encoder_folds(module)
    source = calibration_source(loaded)
    if not folds_ or not wanted or not methods or source is None:
        return None
    if _ENCODER_SCALES is None:
        _ENCODER_SCALES = weakref.WeakKeyDictionary()
    memo = _ENCODER_SCALES.setdefault(module, {})
    key = (tuple(name for name, _ in wanted), methods)
    if key in memo:
        return memo[key]
    linears = sorted({x for f in folds_ for x in f.linears})
    stats = statistics(module, linears, loaded.make_inputs("calib", ENCODER_SAMPLES), trim=False)
    modules = dict(module.named_modules())
    scales: dict[tuple[str, str], tuple[str, tuple[str, float], Any, Any]] = {}
    side: dict[tuple[str, str], int] = {}
    digest = hashlib.sha256(f"{REVISION}|{SPLITS}|{stats.digest}|{methods}".encode())
    for name, scheme in wanted:
        def quantize(linear: Any, fqn: str, scheme: Any = scheme) -> Any:
            return backend.stand_in(linear, scheme)

        for fold in folds_:
            choice = choose_scale(fold, stats, modules, quantize, module, methods)
            sc = (_fold_scale(module, fold, stats, modules, choice) if choice is not None
                  else torch.ones_like(stats.absmax[fold.linears[0]]))
            idx = _choose_split(fold, stats, modules, backend.stand_in, scheme, sc)
            digest.update(f"|{name}|{fold.source}|{choice}|{None if idx is None else idx.tolist()}".encode())
            if choice is None and idx is None:
                continue
            for f in fold.linears:
                scales[(f, name)] = (fold.source, _choice(choice) if choice else ("none", 0.0), sc, idx)
                if idx is not None:
                    side[(f, name)] = int(idx.numel()) * int(modules[f].weight.shape[0]) * 4
    memo[key] = EncoderScales(scales, source, stats.tokens, digest.hexdigest()[:16], methods, side)
    return memo[key]


def scaled_stand_in(stand_in: Callable[[Any, Any], Any], layer: Any, scheme: Any, s: Any, idx: Any = None) -> Any:
    """``stand_in`` of ``layer`` at ``scheme`` with its weight's columns times ``s`` and its
    input divided by ``s`` before anything the runtime does to it, the ``idx`` channels (if
    any) computed beside it in fp32: the linear as an ``"input"`` fold ships it."""
    import torch

    scaled = copy.deepcopy(layer)
    with torch.no_grad():
        side = split_columns(scaled, s, idx)
    q = stand_in(scaled, scheme)
    split_input(q, s, idx, side)
    return q


def _choose_split(fold: Fold, stats: Any, modules: dict[str, Any], stand_in: Callable[[Any, Any], Any],
                  scheme: Any, s: Any) -> Any:
    """The outlier channels (the ``k`` of ``SPLITS`` with the largest calibration ``|x|``)
    whose fp32 split reproduces the fold's outputs best with ``s``; None (no split) wins ties."""
    import torch

    x = stats.samples[fold.linears[0]]
    refs = fold_references(fold, x, modules)

    def error(idx: Any) -> float:
        return fold_error(fold, x, refs, modules, lambda f: scaled_stand_in(stand_in, modules[f], scheme, s, idx))

    absmax = torch.stack([stats.absmax[f] for f in fold.linears]).amax(0)
    with torch.no_grad():
        best, best_error = None, error(None)
        for k in SPLITS:
            if k > absmax.numel() // SPLIT_SHARE:
                continue
            idx = torch.topk(absmax, k).indices.sort().values
            e = error(idx)
            if e < best_error:
                best, best_error = idx, e
    return best


def smooth_encoder(loaded: Any, schemes: dict[str, Any], backend: Any, steps: Any,
                   methods: tuple[str, ...] = (SMOOTHQUANT,)) -> tuple[Any, dict[str, Any] | None]:
    """``loaded`` with each linear at a scheme of ``backend.ENCODER_SMOOTHS`` scaled as
    ``encoder_scales`` found for it at that scheme (its weight's columns times ``s``, its
    input divided by ``s``: linears of a fold at the same scheme share one division), and the
    manifest's record (``precision.smoothing``); ``loaded`` and None when nothing applies."""
    from dataclasses import replace

    import torch

    from edgeq.algorithms.calibrated import calibration_source

    takes = [sch for sch in schemes.values() if sch.name in backend.ENCODER_SMOOTHS]
    folds = encoder_folds(loaded.module)
    if not takes or not methods:
        return loaded, None
    if folds and calibration_source(loaded) is None:
        steps.note("no smoothing of the per-tensor int8 linears' inputs: the model has no calibration data "
                   "(pass --calib)")
        return loaded, None
    with steps.step("Smoothing the inputs of the per-tensor int8 linears (calibration data)") as info:
        found = encoder_scales(loaded, takes, backend, methods)
        if found is None:
            return loaded, None
        module = copy.deepcopy(loaded.module)
        modules = dict(module.named_modules())
        made: dict[str, dict[str, Any]] = {}
        unscaled: dict[str, str] = {}
        in_folds = {x for f in folds for x in f.linears}
        with torch.no_grad():
            for fqn, scheme in sorted(schemes.items()):
                if scheme.name not in backend.ENCODER_SMOOTHS or scheme.algorithm != "rtn" or fqn not in in_folds:
                    continue
                entry = found.scales.get((fqn, scheme.name))
                if entry is None:
                    unscaled[fqn] = f"at {scheme.name}: no scale reproduced the calibration outputs better than none"
                    continue
                source, (method, alpha), sc, idx = entry
                split_input(modules[fqn], sc, idx, split_columns(modules[fqn], sc, idx))
                fold = made.setdefault(f"{source}@{scheme.name}", {
                    "linears": [], "scheme": scheme.name, "method": method, "alpha": alpha,
                    "scale_range": [round(float(sc.min()), 4), round(float(sc.max()), 4)],
                    "fp32_channels": [] if idx is None else [int(i) for i in idx]})
                fold["linears"].append(fqn)
        info.detail = f"{sum(len(f['linears']) for f in made.values())} linears in {len(made)} folds, " \
                      f"{found.tokens} tokens"
    record = {"method": "activation-aware scaling (explicit input division)", "revision": REVISION,
              "calibration": found.source, "tokens": found.tokens, "key": found.digest,
              "searched": {m: [a for c, a in CANDIDATES if c == m] for m in methods},
              "folds": made, "skipped": unscaled}
    return (replace(loaded, module=module) if made else loaded), record
