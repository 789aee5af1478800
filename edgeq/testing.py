"""Test helpers for users' own CI: ``assert_fits`` turns ``edgeq check`` into a pytest assertion.

>>> from edgeq.testing import assert_fits
>>> assert_fits("dist/my-model-rpi5", "rpi5", model="./my-model")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from edgeq.check import CheckOptions, CheckResult, check_artifacts


def assert_fits(artifact: str | Path, target: str | Path | None = None, *, model: str | None = None,
                baseline: str | Path | None = None, measure: bool = False,
                latency_budget_ms: float | None = None, allow_skipped: bool = True) -> CheckResult:
    """Run every ``edgeq check`` gate on ``artifact`` for ``target`` (default: the target it
    was exported for); raise ``AssertionError`` listing each failing gate with its figure,
    limit and the limit's source. With ``allow_skipped=False`` a skipped gate fails too
    (e.g. fidelity skipped because the source model was not given). Returns the result.
    """
    opts = CheckOptions(target=str(target) if target is not None else None, model=model,
                        baseline=Path(baseline) if baseline is not None else None, measure=measure,
                        latency_budget_ms=latency_budget_ms)
    [result] = check_artifacts([artifact], opts)
    bad = [g for g in result.gates if g.failed or (not allow_skipped and g.status == "skipped")]
    if bad:
        lines = [f"{artifact} does not pass edgeq check for target {result.target}:"]
        lines += [f"  {g.gate} {g.status}: {g.message}" for g in bad]
        raise AssertionError("\n".join(lines))
    return result
