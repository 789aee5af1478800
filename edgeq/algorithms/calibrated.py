"""Calibrated weights for a plan or for sensitivity: each planned linear's Hessian from its
calibration inputs, then GPTQ onto the backend's grid, cached on disk per (weight,
Hessian, grid, group); HQQ (``edgeq.algorithms.hqq``, no data) cached per (weight, grid,
group); both under ``calibrated/`` beside the sensitivity cache. Linears with equal
Hessians (they read one tensor: q/k/v) and every group size asked of them share one GPTQ
factorization and sweep (``edgeq.algorithms.gptq.gptq_many``).

The Hessians come from one pass of the fp32 model over the calibration rows (forward
hooks on the linears): every layer's inputs are the fp32 model's, not those of a model
whose earlier layers are already quantized. That keeps a layer's GPTQ result independent
of what the plan chooses for the others, so it is one candidate the planner measures and
caches per layer; sequential GPTQ would make each candidate depend on the whole plan.

Calibration data is what the model's ``make_inputs("calib", n)`` draws: ``--calib`` data
when given (``edgeq.models.calib``), else a text model's built-in calibration sentences.
Synthetic inputs (random tensors, random token ids) are not calibration data: calibrated
schemes are then not offered, and asking for one is a ``ConfigError``. Each row is run
alone with its right padding trimmed (padding positions are not inputs the layer sees in
use). Cache files are ``.npz`` read with ``allow_pickle=False`` and checked on read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from edgeq.algorithms.gptq import QuantizedWeight
from edgeq.errors import ConfigError

CALIB_SAMPLES = 128  # samples GPTQ calibrates an encoder on (sentences, for text)
# Sentences of the calibration text a decoder LLM's GPTQ calibrates on (never the held-out
# perplexity text): one forward each, so many more than its sensitivity's LM_CALIB_SAMPLES.
LM_CALIB_SAMPLES = 128
CACHE_REVISION = 3  # raised whenever a cached result would change for the same inputs (3: act-order)
HESSIAN_BYTES = 512 * 2**20  # float64 Hessians accumulated in one calibration pass
# act-order (columns by decreasing Hessian diagonal, static groups): on MiniLM's x86 plans at 15 / 17%
# of FP32 it lifted held-out min cosine 0.9828 -> 0.9858 and 0.9898 -> 0.9921 (benchmarks/README.md)
ACT_ORDER = True
# The planner measures sensitivity on the first calibration rows (32 by default for encoders,
# 4 sentences for decoder LLMs): GPTQ calibrates on the rows after these, so a GPTQ candidate
# is not scored on the rows it was fitted to (which made it look better than RTN where it was
# not). Data too small to leave MIN_APART_ROWS after them is used whole, and the record says so.
SENSITIVITY_ROWS = 32
MIN_APART_ROWS = 16


@dataclass(frozen=True)
class Calibration:
    """Which data calibrated the weights, as the manifest records it."""

    description: str
    sha256: str  # of the calibration rows' bytes, as run
    samples: int
    tokens: int  # input rows the Hessians sum (tokens, for text)
    first_sample: int = 0  # index of the first calibration sample used (0: sensitivity's rows included)

    def to_dict(self, algorithm: str) -> dict[str, Any]:
        return {"algorithm": algorithm, "calibration": self.description, "calibration_sha256": self.sha256,
                "samples": self.samples, "first_sample": self.first_sample, "rows": self.tokens,
                "apart_from_sensitivity_rows": self.first_sample > 0, "act_order": ACT_ORDER,
                "hessians": "one pass of the fp32 model"}


def calibration_source(loaded: Any) -> str | None:
    """What the model's calibration split is, or None when it is synthetic (no data)."""
    user = (loaded.config or {}).get("calibration")
    if user:
        return f"--calib {user}"
    if getattr(loaded, "encode_text", None) is not None:
        return loaded.inputs_description or "the built-in calibration text"
    return None


def no_data_reason(loaded: Any) -> str:
    return (f"needs calibration data; {loaded.name}'s built-in inputs are "
            f"{loaded.inputs_description or 'synthetic'}: pass --calib")


def require_calibration(loaded: Any, schemes: Iterable[Any]) -> None:
    """``ConfigError`` when a calibrated scheme is asked for and there is no calibration data."""
    wanted = sorted({s.name for s in schemes if needs_data(s.algorithm)})
    if wanted and calibration_source(loaded) is None:
        raise ConfigError(f"{wanted[0]} {no_data_reason(loaded)}",
                          "pass --calib FILE (.txt sentences, .npz inputs or images), or use the RTN scheme "
                          f"{wanted[0].rsplit('-', 1)[0]}")


def needs_data(algorithm: str) -> bool:
    """Whether ``algorithm``'s schemes need calibration data (HQQ's come from the weight alone)."""
    from edgeq.schemes import DATA_FREE

    return algorithm != "rtn" and algorithm not in DATA_FREE


def check_algorithms(loaded: Any, schemes: Iterable[Any], backend: Any, fmt: str) -> None:
    """``ConfigError`` when a planned calibrated scheme cannot be built: the format does not
    store its algorithm's results, or there is no calibration data."""
    schemes = list(schemes)
    offered = backend.CALIBRATED_ALGORITHMS
    for s in schemes:
        if s.algorithm != "rtn" and s.algorithm not in offered:
            why = backend.ALGORITHMS_NOT_OFFERED.get(s.algorithm)
            raise ConfigError(f"{s} is not offered for {fmt} artifacts" + (f": {why}" if why else ""),
                              f"use {s.name.rsplit('-', 1)[0]}")
    require_calibration(loaded, schemes)


def solve(loaded: Any, wanted: dict[str, Iterable[Any]], grid: Any, *, samples: int = CALIB_SAMPLES,
          module: Any = None, use_cache: bool = True) -> tuple[dict[tuple[str, str], QuantizedWeight], Calibration | None]:
    """Calibrated results ``{(fqn, scheme name): QuantizedWeight}`` for the calibrated schemes
    in ``wanted`` (fqn → schemes; others are skipped): GPTQ on ``loaded``'s calibration rows
    (and what calibrated them; None when no scheme needed data), HQQ from the weights alone.
    ``module``: the module the fqns name (default ``loaded.module``)."""
    module = loaded.module if module is None else module
    modules = dict(module.named_modules())
    out = {(f, s.name): cached_hqq(modules[f].weight, grid, s.group, use_cache=use_cache)
           for f, ss in wanted.items() for s in ss if s.algorithm == "hqq"}
    wanted = {f: [s for s in ss if s.algorithm in ("gptq", "awq")] for f, ss in wanted.items()}
    wanted = {f: ss for f, ss in wanted.items() if ss}
    if not wanted:
        return out, None
    require_calibration(loaded, [s for ss in wanted.values() for s in ss])
    rows, first = gptq_rows(loaded, samples)
    calibration = None
    for chunk in _chunks(list(wanted), {f: modules[f].weight.shape[1] for f in wanted}):
        sums, calibration = hessians(module, chunk, rows, calibration_source(loaded) or "")
        calibration = replace(calibration, first_sample=first)
        for fqns in _same_inputs(chunk, sums):  # q/k/v read one input: one Hessian, one factor
            found = sums[fqns[0]]
            h = found.matrix()
            groups = {}
            for fqn in fqns:
                for scheme in wanted[fqn]:
                    if scheme.algorithm == "awq":
                        out[(fqn, scheme.name)] = awq_result(module, fqn, h, found.absmean(), grid, scheme.group)
                    else:
                        groups.setdefault(fqn, []).append(scheme.group)
            results = cached_gptq({f: modules[f].weight for f in groups}, groups, h, grid, use_cache=use_cache)
            for fqn in groups:
                for scheme in wanted[fqn]:
                    if scheme.algorithm != "awq":
                        out[(fqn, scheme.name)] = results[(fqn, scheme.group)]
        sums.clear()
    return out, calibration


def awq_result(module: Any, fqn: str, hessian: Any, absmean: Any, grid: Any, group: int) -> QuantizedWeight:
    """AWQ's quantized ``W·diag(s)`` with its ``s`` (``QuantizedWeight.input_scale``);
    ``ConfigError`` when the scale has nowhere to fold (``edgeq.algorithms.awq.predecessor``)."""
    from edgeq.algorithms.awq import predecessor, search

    fold, why = predecessor(module, fqn)
    if fold is None:
        raise ConfigError(f"{fqn} cannot take AWQ: {why}", "plan it at an int4-gN, -gptq or -hqq scheme")
    q, scale, _alpha = search(module.get_submodule(fqn).weight, hessian, absmean, grid, group)
    return replace(q, input_scale=scale)


def awq_unavailable(module: Any, fqn: str) -> str:
    """Why ``fqn`` is no AWQ candidate ("" when it is)."""
    from edgeq.algorithms.awq import predecessor

    return predecessor(module, fqn)[1]


def folded(loaded: Any, weights: dict[str, QuantizedWeight]) -> Any:
    """``loaded`` with a copy of its module in which each AWQ layer's input scale is folded
    (its weight's columns times s, the preceding linear's output rows divided by it): the
    same function, which the lowering quantizes and exports. ``loaded`` itself when none."""
    import copy

    from edgeq.algorithms.awq import fold

    scaled = {f: q.input_scale for f, q in weights.items() if q.input_scale is not None}
    if not scaled:
        return loaded
    module = copy.deepcopy(loaded.module)
    for fqn, scale in scaled.items():
        fold(module, fqn, scale)
    return replace(loaded, module=module)


def gptq_rows(loaded: Any, samples: int) -> tuple[list[tuple[Any, ...]], int]:
    """Up to ``samples`` calibration rows for GPTQ, after the rows sensitivity measures on when
    the data leaves at least ``MIN_APART_ROWS`` beyond them; and the index of the first."""
    everything = loaded.make_inputs("calib", SENSITIVITY_ROWS + samples)
    if len(everything) - SENSITIVITY_ROWS >= MIN_APART_ROWS:
        return everything[SENSITIVITY_ROWS:], SENSITIVITY_ROWS
    return everything[:samples], 0


def _same_inputs(fqns: list[str], sums: dict[str, Any]) -> list[list[str]]:
    """``fqns`` in runs that share one Hessian sum (linears that read the same tensor: ``hessians``)."""
    runs: dict[int, list[str]] = {}
    for f in fqns:
        runs.setdefault(id(sums[f]), []).append(f)
    return list(runs.values())


def _chunks(fqns: list[str], columns: dict[str, int]) -> list[list[str]]:
    """``fqns`` in runs whose float64 Hessians together stay within ``HESSIAN_BYTES`` (one
    calibration pass each): a 1B-parameter LLM's would otherwise hold gigabytes at once."""
    chunks: list[list[str]] = [[]]
    used = 0
    for f in fqns:
        size = 8 * columns[f] ** 2
        if chunks[-1] and used + size > HESSIAN_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(f)
        used += size
    return chunks


def samples_for(loaded: Any) -> int:
    """Calibration samples GPTQ uses for ``loaded`` (planning and lowering use the same)."""
    return LM_CALIB_SAMPLES if loaded.task == "causal-lm" else CALIB_SAMPLES


def for_plan(loaded: Any, schemes: dict[str, Any], grid: Any, *, module: Any = None,
             use_cache: bool = True) -> tuple[dict[str, QuantizedWeight], dict[str, dict[str, Any]]]:
    """A lowering's calibrated weights: ``{fqn: QuantizedWeight}`` for the plan's calibrated
    layers and the manifest's record of them (``{fqn: {algorithm, calibration, ...}}``),
    on the same calibration rows the planner measured them on."""
    solved, calibration = solve(loaded, {f: [s] for f, s in schemes.items()}, grid, module=module,
                                samples=samples_for(loaded), use_cache=use_cache)
    weights = {fqn: q for (fqn, _), q in solved.items()}
    record = {fqn: calibration.to_dict(schemes[fqn].algorithm) if needs_data(schemes[fqn].algorithm)
              else data_free_record(schemes[fqn].algorithm) for fqn in weights}
    for fqn, q in weights.items():
        if q.input_scale is not None:
            record[fqn] |= awq_record(q, fqn, loaded.module if module is None else module)
    return weights, record


def awq_record(weights: QuantizedWeight, fqn: str, module: Any) -> dict[str, Any]:
    from edgeq.algorithms.awq import predecessor

    fold, _ = predecessor(module, fqn)
    return {"scale_folded_into": fold.predecessor if fold else None,
            "input_scale_range": [round(float(weights.input_scale.min()), 4), round(float(weights.input_scale.max()), 4)]}


def data_free_record(algorithm: str) -> dict[str, Any]:
    """The manifest's record of a layer whose algorithm used no calibration data (HQQ)."""
    return {"algorithm": algorithm, "calibration": None, "samples": 0,
            "data": "none: scales and zero points from the weight alone"}


def hessians(module: Any, fqns: list[str], rows: list[tuple[Any, ...]], description: str) -> tuple[dict[str, Any], Calibration]:
    """A ``HessianSum`` of each named linear's inputs over ``rows`` (each trimmed of right padding)."""
    import torch

    from edgeq.algorithms.gptq import HessianSum

    modules = dict(module.named_modules())
    sums = {f: HessianSum(modules[f].weight.shape[1]) for f in fqns}
    # Linears that read the same tensor (q/k/v, gate/up) share one sum: the first to see it in a
    # forward accumulates, the others take its sum (the sharing is the same in every forward).
    seen: dict[int, tuple[Any, Any]] = {}

    def take(name: str, x: Any) -> None:
        hit = seen.get(id(x))
        if hit is not None and hit[0] is x:
            sums[name] = hit[1]
            return
        sums[name].add(x)
        seen[id(x)] = (x, sums[name])

    hooks = [modules[f].register_forward_pre_hook(lambda _m, args, f=f: take(f, args[0])) for f in fqns]
    digest = hashlib.sha256()
    try:
        with torch.no_grad():
            for row in rows:
                row = _trimmed(row)
                for t in row:
                    digest.update(t.contiguous().numpy().tobytes())
                seen.clear()
                module(*row)
    finally:
        for h in hooks:
            h.remove()
    tokens = next(iter(sums.values())).rows if sums else 0
    return sums, Calibration(description, digest.hexdigest(), len(rows), tokens)


def _trimmed(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """``(ids, mask)`` of one sample cut to its real tokens when the mask is ones then zeros."""
    import torch

    if len(row) == 2 and row[1].dtype in (torch.int64, torch.int32) and row[1].dim() == 2 and row[1].shape[0] == 1 \
            and row[0].shape == row[1].shape:
        length = int(row[1].sum())
        if 0 < length and bool(row[1][:, :length].all()):
            return row[0][:, :length], row[1][:, :length]
    return row


def cache_dir() -> Path:
    from edgeq.planning.sensitivity import cache_dir as sensitivity_dir

    return sensitivity_dir().parent / "calibrated"  # GPTQ, AWQ and HQQ results


def results_key(calibration: Calibration | None, solved: dict[Any, Any]) -> str:
    """What the calibrated candidates' results depend on besides the weights (part of the
    sensitivity cache key): the calibration rows' digest and the algorithms' revisions and
    settings."""
    from edgeq.algorithms.hqq import REVISION as HQQ_REVISION

    if not solved:
        return ""
    return f"{calibration.sha256 if calibration else ''}|gptq{gptq_settings()}|hqq{HQQ_REVISION}"


def gptq_settings() -> str:
    """What a GPTQ result depends on besides its weight, grid, group and Hessian: the code's
    revision and the column order (one definition for both keys that name GPTQ results)."""
    return f"{CACHE_REVISION}|{ACT_ORDER}"


def cached_gptq(weights: dict[str, Any], groups: dict[str, list[int]], hessian: Any, grid: Any, *,
                use_cache: bool = True) -> dict[tuple[str, int], QuantizedWeight]:
    """GPTQ of each named weight at each of its group sizes, all on ``hessian`` (the inputs
    they share), read from / written to the cache: the missing ones in one sweep sharing one
    factorization of ``hessian`` (``edgeq.algorithms.gptq.gptq_many``). Each output row is
    the best on ``hessian`` of GPTQ choosing group scales as it goes, GPTQ on the format
    RTN's scales (where they are not min-max: ExecuTorch's HQQ) and the format's RTN itself
    (``best_rows``), so a GPTQ candidate is never worse than RTN on the calibration inputs."""
    from edgeq.algorithms.gptq import best_rows, factor, format_rtn, gptq_many

    out: dict[tuple[str, int], QuantizedWeight] = {}
    keys: dict[tuple[str, int], str] = {}
    for fqn, w in weights.items():
        w = w.detach().float().contiguous()
        for g in groups[fqn]:
            h = hashlib.sha256(f"{gptq_settings()}|{grid.key}|{g}|{tuple(w.shape)}".encode())
            h.update(w.numpy().tobytes())
            h.update(hessian.contiguous().numpy().tobytes())
            keys[(fqn, g)] = key = h.hexdigest()[:32]
            if (found := _read(key, w.shape, grid, g) if use_cache else None) is not None:
                out[(fqn, g)] = found
    missing = [k for k in keys if k not in out]
    if not missing:
        return out
    names = sorted({f for f, _ in missing})
    sizes = sorted({g for _, g in missing})
    ws = [weights[f] for f in names]
    rtns = [[format_rtn(w, grid, g) for g in sizes] for w in ws]
    # Where the format's RTN does not choose min-max scales (ExecuTorch: HQQ's), GPTQ also
    # runs rounding onto the RTN's scales, in the same sweep
    seeded = grid.rtn != "minmax"
    seeds = [[None] * len(sizes) for _ in ws] + ([[(r.scales, r.zeros) for r in row] for row in rtns] if seeded else [])
    solved = gptq_many(ws + (ws if seeded else []), factor(hessian, act_order=ACT_ORDER), grid, sizes, seeds=seeds)
    for i, f in enumerate(names):
        for j, g in enumerate(sizes):
            if (f, g) in keys and (f, g) not in out:
                tried = [solved[i][j]] + ([solved[len(ws) + i][j]] if seeded else []) + [rtns[i][j]]
                out[(f, g)] = q = best_rows(ws[i], hessian, tried)
                if use_cache:
                    _write(keys[(f, g)], q)
    return out


def cached_hqq(weight: Any, grid: Any, group: int, *, use_cache: bool = True) -> QuantizedWeight:
    """``hqq(weight, grid, group)``, read from / written to the cache."""
    from edgeq.algorithms.hqq import REVISION, hqq

    w = weight.detach().float().contiguous()
    h = hashlib.sha256(f"hqq{REVISION}|{grid.key}|{group}|{tuple(w.shape)}".encode())
    h.update(w.numpy().tobytes())
    return _cached(h.hexdigest()[:32], w.shape, grid, group, lambda: hqq(w, grid, group), use_cache)


def _cached(key: str, shape: Any, grid: Any, group: int, compute: Any, use_cache: bool) -> QuantizedWeight:
    found = _read(key, shape, grid, group) if use_cache else None
    if found is not None:
        return found
    result = compute()
    if use_cache:
        _write(key, result)
    return result


def _read(key: str, shape: Any, grid: Any, group: int) -> QuantizedWeight | None:
    import numpy as np
    import torch

    path = cache_dir() / f"{key}.npz"
    rows, cols = shape
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            ints, scales, zeros = data["ints"], data["scales"], data["zeros"]
        if ints.shape == (rows, cols) and scales.shape == zeros.shape == (rows, cols // group) \
                and ints.dtype == np.int16 and scales.dtype == np.float32 and zeros.dtype == np.int16:
            return QuantizedWeight(torch.from_numpy(ints), torch.from_numpy(scales), torch.from_numpy(zeros),
                                   group, grid)
    except (OSError, ValueError, KeyError, EOFError):
        pass  # a damaged cache entry is measured again and replaced
    return None


def _write(key: str, result: QuantizedWeight) -> None:
    import tempfile

    import numpy as np

    path = cache_dir() / f"{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, ints=result.ints.numpy(), scales=result.scales.numpy(), zeros=result.zeros.numpy())
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)  # the cache is an optimisation; the result stands
