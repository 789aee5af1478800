"""``check_artifacts``: run every gate on each artifact and collect ``CheckResult``s.

In-process gates (integrity, fit, delegation, fidelity, emulated latency) share one
runtime import and one loaded source model across artifacts; fresh-process measurements
(``measure=True``, regression latency rounds) are per artifact by design.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.artifact import MANIFEST, MODEL_FILES
from edgeq.check import gates
from edgeq.check.limits import resolve
from edgeq.check.manifest_view import ManifestError
from edgeq.check.results import GATES, CheckResult, GateResult
from edgeq.errors import ConfigError


@dataclass
class CheckOptions:
    """What ``edgeq check`` was asked to do, beyond the artifact paths."""

    target: str | None = None
    model: str | None = None
    baseline: Path | None = None
    update_baseline: Path | None = None
    measure: bool = False
    latency_budget_ms: float | None = None
    samples: int = 32
    runs: int = 20
    rounds: int = 8  # fresh-process rounds per artifact for the latency regression rule
    regression_runs: int = 50  # timed runs per regression process (1 thread)
    extra: dict[str, Any] = field(default_factory=dict)


def check_artifacts(paths: list[str | Path], options: CheckOptions | None = None, **kwargs: Any) -> list[CheckResult]:
    """Run every gate on each artifact directory; raises ``EdgeqError`` for bad input.

    >>> results = check_artifacts(["dist/tiny-rpi5"], target="rpi5")  # doctest: +SKIP
    >>> [(g.gate, g.status) for g in results[0].gates]  # doctest: +SKIP
    """
    opts = options or CheckOptions(**kwargs)
    if not paths:
        raise ConfigError("no artifacts to check", "pass one or more artifact directories, e.g. dist/*")
    roots = []
    for p in paths:
        root = Path(p)
        if root.is_file() and root.name in (*MODEL_FILES, MANIFEST):
            root = root.parent
        if not root.is_dir():
            raise ConfigError(f"{p} is not an artifact directory", "pass directories written by 'edgeq export'")
        roots.append(root)
    target = None
    if opts.target is not None:
        from edgeq.targets import load_target

        target = load_target(opts.target).target
    baseline = None
    if opts.baseline is not None:
        from edgeq.check.baseline import read_baseline

        baseline = read_baseline(opts.baseline)
    if opts.update_baseline is not None:
        from edgeq.check.baseline import check_writable

        check_writable(opts.update_baseline)
    models = gates.SourceModels(samples=opts.samples)
    results = [_check_one(root, target, opts, models, baseline) for root in roots]
    if opts.update_baseline is not None:
        from edgeq.check.baseline import write_baseline

        write_baseline(opts.update_baseline, results, roots, opts)
    return results


def _check_one(root: Path, target: Any, opts: CheckOptions, models: gates.SourceModels,
               baseline: Any) -> CheckResult:
    t0 = time.perf_counter()
    integrity, mv, model_file = gates.integrity(root)
    results = [integrity]
    if integrity.failed or mv is None or model_file is None:
        results += [_skipped(g, "integrity failed") for g in GATES[1:]]
        return CheckResult(str(root), mv.target_name if mv else "?", results, time.perf_counter() - t0)
    if target is not None and target.format != mv.format:
        raise ConfigError(f"{root} is an {mv.format} artifact, but target {target.name} is for {target.format}",
                          f"check it against a {mv.format} target, or leave out --target to use the one it was "
                          "exported for")
    resolved = target if target is not None else _builtin_target(mv.target_name)
    try:
        limits = resolve(mv, resolved, latency_budget_ms=opts.latency_budget_ms)
    except ManifestError as exc:
        results[0] = GateResult("integrity", "fail", f"{root}/manifest.json: {exc}", figure="invalid manifest",
                                limit="manifest schema v2", source="manifest")
        results += [_skipped(g, "integrity failed") for g in GATES[1:]]
        return CheckResult(str(root), mv.target_name, results, time.perf_counter() - t0)
    measured, failed_measure = None, None
    if opts.measure:
        from edgeq.errors import BackendUnavailableError, EdgeqError
        from edgeq.profiling import profile_host

        try:
            if mv.is_llm:
                from edgeq.check import llm_gates

                measured = llm_gates.measure(root, mv.llm_max_context)
            else:
                measured = profile_host(root, runs=opts.runs, warmup=3, ops=False)
        except BackendUnavailableError:
            raise  # this machine lacks the runtime: bad environment, not a bad artifact
        except EdgeqError as exc:
            failed_measure = f"the fresh-process measurement failed: {exc.one_line()}"
    if failed_measure:
        results.append(GateResult("fit", "fail", failed_measure, figure="not measurable", source="--measure"))
    else:
        results.append(gates.fit(mv, model_file, limits, measured))
    results.append(gates.fidelity(mv, model_file, limits, models, opts.model))
    results.append(gates.delegation(mv, limits))
    if failed_measure:
        results.append(GateResult("latency", "fail", failed_measure, figure="not measurable", source="--measure"))
    else:
        results.append(gates.latency(mv, model_file, limits, measured))
    if baseline is not None:
        from edgeq.check.baseline import regression

        results.append(regression(root, mv, results, limits, baseline, opts))
    else:
        results.append(_skipped("regression", "no baseline (pass --baseline FILE; write one with --update-baseline)"))
    return CheckResult(str(root), limits.target_name, results, time.perf_counter() - t0)


def _builtin_target(name: str) -> Any | None:
    """The built-in target the artifact was exported for, if it is one; else None (the
    budgets recorded in the manifest are used)."""
    from edgeq.targets import builtin_names, load_target

    if name in builtin_names("targets"):
        return load_target(name).target
    return None


def _skipped(gate: str, why: str) -> GateResult:
    return GateResult(gate, "skipped", why)
