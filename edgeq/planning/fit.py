"""The budget-fitting loop after lowering: the one place a plan is revisited.

A plan is solved on predictions: each layer's bytes from the backend's cost table, the
file's non-weight bytes from an fp32 probe, and (ExecuTorch) the activation arena of an
fp32 lowering. The lowered artifact is the measurement. Where it is over a budget the
plan was solved for, the plan is solved again from the same costs (never re-measured)
with what the lowering showed:

- **over the storage budget** by ``over`` bytes (per-op file entries the cost table does
  not predict): the layers are asked to shrink by ``over × OVERSHOOT_MARGIN``. The
  margin is a chosen allowance, not a fitted figure: the re-solved plan has different
  quantized layers, whose own unpredicted file entries differ from the first plan's, and
  asking for exactly the overshoot would leave no room for that difference;
- **over the memory budget**: the plan is re-solved with the same reserve;
- in both cases the arena the lowering really planned replaces the probe's.

At most ``FIT_ATTEMPTS`` lowerings in all (each is a full lowering: tens of seconds for
MiniLM); then export fails with the measured overshoot rather than loop. Plans solved
for ``--max-drop`` are not refitted: their bound is an error, not a size.
"""

from __future__ import annotations

from typing import Any, Callable

from edgeq.progress import Steps

FIT_ATTEMPTS = 3  # lowerings in all: the first, and up to two re-solves
OVERSHOOT_MARGIN = 1.05  # ask for 5% more than the measured storage overshoot


def fit_to_budgets(costs: Any, budgets: Any, result: Any, lower: Callable[[Any], Any],
                   measure: Callable[[Any], tuple[int, int]], steps: Steps) -> tuple[Any, Any]:
    """Lower ``result``'s plan; while the artifact is over a budget, re-solve and lower again.

    ``lower(plan) -> Lowered``; ``measure(lowered) -> (file bytes, predicted peak memory
    bytes)``. Returns the last lowering and the plan result it came from; the caller
    checks the budgets on it (and fails if still over).
    """
    from edgeq.planning.planner import solve_step

    lowered = lower(result.plan)
    for _ in range(FIT_ATTEMPTS - 1):
        if budgets.max_drop is not None:
            break
        size, peak = measure(lowered)
        over_size = size - budgets.storage_bytes
        over_memory = peak > budgets.memory_bytes
        if over_size <= 0 and not over_memory:
            break
        reserve = result.reserve_bytes
        if over_size > 0:
            steps.note(f"the planned artifact is {over_size / 1e3:.0f} KB over the {budgets.storage_bytes / 1e6:g} MB "
                       f"budget (file overhead the plan does not predict); re-planning with that much less")
            reserve = budgets.storage_bytes - (result.predicted_bytes - over_size * OVERSHOOT_MARGIN)
        if over_memory:
            steps.note(f"the lowered artifact's predicted peak memory ({peak / 1e6:.1f} MB) is over "
                       f"the {budgets.memory_bytes / 1e6:g} MB memory budget; re-planning with its activation arena")
        costs = costs.with_activation_bytes(lowered.planned_activation_bytes)
        result = solve_step(costs, budgets, steps, reserve_bytes=reserve)
        lowered = lower(result.plan)
    return lowered, result
