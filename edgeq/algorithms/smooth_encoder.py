"""SmoothQuant for a BERT-style encoder's per-tensor int8 linears (ONNX Runtime's
``MatMulInteger``: one uint8 scale for a linear's whole input, which an outlier channel spends).

Its linears read what no op can take the division exactly: q/k/v and intermediate.dense read
a post-norm LayerNorm's output, which the residual also reads, and output.dense reads GELU's.
Its folds (``kind="input"``, ``encoder_folds``) divide the input explicitly: one ``Div`` by
a constant vector before the linears of a fold (q/k/v share it: the ONNX lowering merges
their equal divisions, ``graph.merge_equal_scalings``, so one DynamicQuantizeLinear still
serves the three); a vector division costs a fraction of a percent of the linear it
precedes. The scale is searched as for a decoder (``edgeq.algorithms.scale_search.choose_scale``),
per fold and kernel (``encoder_scales``): the planner measures each candidate with it
(``scaled_stand_in``) and the export applies it (``smooth_encoder``).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from edgeq.algorithms.scale_search import CANDIDATES, SMOOTHQUANT, as_choice, choose_scale, fold_scale
from edgeq.algorithms.smooth import REVISION, Fold, methods_offered, statistics

ENCODER_SAMPLES = 64  # calibration inputs an encoder's input folds are measured on


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


def encoder_methods(algorithms: list[str] | None) -> tuple[str, ...]:
    """The scale forms an encoder's export searches: SmoothQuant's, unless ``--algorithms``
    leaves it out (AWQ's mean-based scale is the decoders')."""
    return tuple(m for m in methods_offered(algorithms) if m == SMOOTHQUANT)


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


@dataclass
class EncoderScales:
    """An encoder's input-fold scales per scheme that takes them: ``scales[(linear fqn,
    scheme name)] = (fold source, (method, α), s)``; a fold without an entry for a scheme is
    better unscaled at it."""

    scales: dict[tuple[str, str], tuple[str, tuple[str, float], Any]]
    source: str  # the calibration data
    tokens: int
    digest: str  # of the calibration rows and the choices: what a sensitivity cache entry is keyed by
    methods: tuple[str, ...]


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
    scales: dict[tuple[str, str], tuple[str, tuple[str, float], Any]] = {}
    digest = hashlib.sha256(f"{REVISION}|{stats.digest}|{methods}".encode())
    for name, scheme in wanted:
        def quantize(linear: Any, fqn: str, scheme: Any = scheme) -> Any:
            return backend.stand_in(linear, scheme)

        for fold in folds_:
            choice = choose_scale(fold, stats, modules, quantize, module, methods)
            digest.update(f"|{name}|{fold.source}|{choice}".encode())
            if choice is None:
                continue
            sc = fold_scale(module, fold, stats, modules, choice)
            for f in fold.linears:
                scales[(f, name)] = (fold.source, as_choice(choice), sc)
    memo[key] = EncoderScales(scales, source, stats.tokens, digest.hexdigest()[:16], methods)
    return memo[key]


def scaled_stand_in(stand_in: Callable[[Any, Any], Any], layer: Any, scheme: Any, s: Any) -> Any:
    """``stand_in`` of ``layer`` at ``scheme`` with its weight's columns times ``s`` and its
    input divided by ``s`` before anything the runtime does to it: the linear as an
    ``"input"`` fold ships it."""
    import torch

    scaled = copy.deepcopy(layer)
    with torch.no_grad():
        scale_columns(scaled, s)
    q = stand_in(scaled, scheme)
    divide_input(q, s)
    return q


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
                source, (method, alpha), sc = entry
                scale_columns(modules[fqn], sc)
                divide_input(modules[fqn], sc)
                fold = made.setdefault(f"{source}@{scheme.name}", {
                    "linears": [], "scheme": scheme.name, "method": method, "alpha": alpha,
                    "scale_range": [round(float(sc.min()), 4), round(float(sc.max()), 4)]})
                fold["linears"].append(fqn)
        info.detail = f"{sum(len(f['linears']) for f in made.values())} linears in {len(made)} folds, " \
                      f"{found.tokens} tokens"
    record = {"method": "activation-aware scaling (explicit input division)", "revision": REVISION,
              "calibration": found.source, "tokens": found.tokens, "key": found.digest,
              "searched": {m: [a for c, a in CANDIDATES if c == m] for m in methods},
              "folds": made, "skipped": unscaled}
    return (replace(loaded, module=module) if made else loaded), record
