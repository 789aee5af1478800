"""``plan``: the planning stages in order, for ``edgeq plan`` and the library.

``prepare`` (layers, graph facts, workload) → ``measure_costs`` (candidates, measured
sensitivity, bytes, the backend's fp32 probe) → ``solve`` (least predicted error within
the budgets; pure). Export runs the same stages and then fits the lowered artifact to the
budgets (``edgeq.planning.fit``).

>>> from edgeq.planning.planner import plan  # doctest: +SKIP
>>> result = plan("path/to/model", "rpi5", budget_bytes=20_000_000)  # doctest: +SKIP
>>> result.plan.schemes["model.encoder.layer.0.attention.self.query"].name  # doctest: +SKIP
'int4-g32'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError
from edgeq.planning.costs import measure_costs
from edgeq.planning.prepare import prepare
from edgeq.planning.rules import check_rules
from edgeq.planning.solve import Budgets, BudgetError, PlanResult, solve
from edgeq.progress import Steps

__all__ = ["plan", "BudgetError", "PlanResult"]


def load_for_planning(model: Any, target: Any, *, rules: list[str] | None = None, seq_len: int | None = None,
                      calib: str | Path | None = None, steps: Steps | None = None) -> tuple[Any, Any]:
    """``(LoadedModel, ResolvedTarget)``: the rules and the calibration path checked before
    the (slow) model load, the user's calibration data applied after it; what loading did to
    the model (``LoadedModel.notes``) is told on ``steps``."""
    from edgeq.models import LoadedModel, load_model
    from edgeq.targets import ResolvedTarget, load_target

    resolved = target if isinstance(target, ResolvedTarget) else load_target(target)
    check_rules(rules or [])
    if calib is not None and not Path(calib).exists():
        raise ConfigError(f"--calib {calib}: no such file or directory", "pass a .txt, .npz or a directory of them / images")
    if not isinstance(model, LoadedModel):
        model = load_model(model, seq_len=seq_len or resolved.target.seq_len)
        if steps is not None:
            for line in model.notes:
                steps.note(line)
    loaded = model
    if calib is not None:
        from edgeq.models.calib import with_calibration

        loaded = with_calibration(loaded, calib)
    return loaded, resolved


def plan(
    model: Any,
    target: Any,
    *,
    budget_bytes: int | None = None,
    memory_budget_bytes: int | None = None,
    max_drop: float | None = None,
    rules: list[str] | None = None,
    proxy: str | None = None,
    calib_samples: int = 32,
    use_cache: bool = True,
    steps: Steps | None = None,
    planned_activation_bytes: int | None = None,
    seq_len: int | None = None,
    calib: str | Path | None = None,
    algorithms: list[str] | None = None,
    latency_budget_ms: float | None = None,
) -> PlanResult:
    """Choose a scheme per layer for ``model`` (a LoadedModel or source) on ``target``.

    Two limits apply, each the target's unless overridden: the artifact's size
    (``budget_bytes``, else ``budgets.storage_mb``) and its predicted peak runtime memory
    (``memory_budget_bytes``, else ``budgets.runtime_memory_mb``; ``edgeq.planning.memory``'s
    model: weights as the runtime holds them + activations + runtime overhead). With
    ``max_drop`` the plan is the smallest whose predicted error stays within it, and must
    still fit both. ``planned_activation_bytes``: the runtime's activation arena if known
    (else the backend's fp32 probe plans it, cached). ``calib``: the user's calibration
    data (see ``edgeq.models.calib``) instead of the built-in split. ``algorithms``: the
    calibrated algorithms offered besides RTN (default: all the format stores; see
    ``edgeq.planning.costs.measure_costs``). ``latency_budget_ms`` (else the target's
    ``budgets.latency_ms``): the plan's predicted whole-model p50 must stay within it
    (``edgeq.planning.latency_bound``); each (layer, scheme) is then timed on this host.
    """
    steps = steps or Steps()
    loaded, resolved = load_for_planning(model, target, rules=rules, seq_len=seq_len, calib=calib, steps=steps)
    tgt = resolved.target
    budgets = Budgets.for_target(tgt, storage_bytes=budget_bytes, memory_bytes=memory_budget_bytes, max_drop=max_drop,
                                 latency_ms=latency_budget_ms, rules=rules)
    from edgeq.planning.latency import applicable

    prepared = prepare(loaded, resolved)
    budgets = applicable(budgets, prepared, steps)
    costs = measure_costs(prepared, rules=rules, proxy=proxy, calib_samples=calib_samples,
                          use_cache=use_cache, steps=steps, algorithms=algorithms, latency=budgets.wants_latency,
                          precisions=budgets.families)
    if planned_activation_bytes is not None:
        costs = costs.with_activation_bytes(planned_activation_bytes)
    return solve_step(costs, budgets, steps)


def solve_step(costs: Any, budgets: Budgets, steps: Steps, reserve_bytes: float = 0) -> PlanResult:
    """``solve``, shown as a step with what it chose."""
    with steps.step("Solving the plan") as info:
        result = solve(costs, budgets, reserve_bytes=reserve_bytes)
        layer_total = sum(result.layer_bytes.values())
        info.detail = (f"{layer_total / 1e6:.2f} MB of layers, predicted peak memory "
                       f"{result.memory.total_bytes / 1e6:.1f} MB, predicted error {result.predicted_error:.4g}"
                       + (f", predicted latency {result.predicted_latency_ms:.2f} ms"
                          if result.predicted_latency_ms is not None else ""))
    return result
