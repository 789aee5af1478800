"""Latency as a third limit on a plan, and the balanced objective (used by ``solve``).

Least predicted error within storage, memory and a latency budget. Each layer's time at
each scheme is additive (``edgeq.planning.latency``: the rest of the graph is a constant),
so this is a multiple-choice knapsack with two resources. Method:

1. The storage/memory plan first: if its predicted latency fits, it is the answer (a
   limit it already meets cannot improve it).
2. Otherwise the **latency knapsack**, exact on a grid (``solver.solve`` with each
   layer's time in µs as its cost, rounded *up*, so a returned plan always fits): the
   least error within the latency budget. If that plan also fits storage and memory it
   is optimal for all three limits (up to the grid, as ``edgeq.planning.solver`` says).
3. Otherwise (two limits bind at once) a **Lagrangian relaxation** of latency: the
   storage/memory solve with each choice's error raised by λ × its time, λ bisected to
   the smallest that meets the latency budget. Not exact, with a known bound: the plan
   found minimises error + λ·time, so no plan at most as slow has less error, and one
   within the budget can have at most λ × (budget − its time) less — reported as
   ``latency_gap`` on the result (0 when steps 1 or 2 decide).

The balanced objective (no latency budget): the fastest plan whose predicted error is
within ``BALANCED_MARGIN`` of the most accurate plan's, its bytes counted as time
(``BALANCED_MS_PER_MB``) — the same latency knapsack turned round
(``solver.smallest_within``: fewest µs within an error), exact on the grid when it fits
storage and memory, else the Lagrangian plan with the largest λ within the margin.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

from edgeq.planning import solver
from edgeq.planning.solver import Choice, Solution

UNIT_MS = 1e-3  # the latency knapsack's unit: 1 µs (the solver refines its grid from there)
LAMBDA_STEPS = 40  # bisection steps on the multiplier (each one storage/memory solve, milliseconds)
# Predicted error (1 − cosine for embeddings, KL in nats for logits, summed over layers)
# a balanced plan may add to the most accurate plan's. 0.001: MiniLM's held-out mean cosine
# at uniform int8 in ONNX Runtime is 0.998–0.999, so the margin is of the order int8 itself
# costs — a plan within it is about as accurate as an int8 one.
BALANCED_MARGIN = 1e-3
# A balanced plan also pays for its bytes: each stored MB counts as this many ms. Every
# weight byte is read from memory at each run; single-op timings, repeated on a warm cache,
# do not see that, so without it a layer whose fp32 lookup is a few µs faster than its int8
# one (an embedding table) would stay fp32 at 4x the bytes. 0.01 ms/MB = streaming a MB at
# 100 GB/s, the order of a laptop's memory bandwidth.
BALANCED_MS_PER_MB = 0.01

SolveBudgets = Callable[[Any, Any, float, float], "tuple[Solution, str]"]


def time_options(costs: Any, ms_per_mb: float = 0.0) -> dict[str, list[Choice]]:
    """Each layer's choices costed in µs of its op (``costs.stored``'s schemes and errors),
    plus ``ms_per_mb`` for each MB it stores."""
    timings = costs.latency.layers

    def units(f: str, c: Choice) -> int:
        return math.ceil((timings.get(f, {}).get(str(c.scheme), 0.0) + c.bytes / 1e6 * ms_per_mb) / UNIT_MS - 1e-9)

    return {f: [Choice(c.scheme, units(f, c), c.error) for c in choices] for f, choices in costs.stored.items()}


def solve_within(costs: Any, budgets: Any, storage_cap: float, reserve: float,
                 solve_budgets: SolveBudgets) -> tuple[Solution, str, float]:
    """``(solution, binding, gap)``: least error within storage, memory and ``budgets.latency_ms``
    (steps 2 and 3 of the module doc); ``BudgetError`` naming the fastest plan when none fits."""
    from edgeq.planning.solve import BudgetError

    timings, budget = costs.latency, budgets.latency_ms
    fastest = timings.fastest_ms()
    label = "estimated" if timings.estimate else "predicted"
    if fastest > budget:
        raise BudgetError(f"latency budget {budget:g} ms ({budgets.sources['latency']}) is below the fastest "
                          f"achievable plan ({fastest:.2f} ms {label}: every layer at its fastest kernel)",
                          f"raise the latency budget to at least {math.ceil(fastest * 100) / 100:g} ms")
    try:
        plan = solver.solve(time_options(costs), int((budget - timings.remainder_ms) / UNIT_MS))
        plan = _true(costs, plan.schemes)
        if _fits(costs, budgets, plan, storage_cap):
            return plan, "latency", 0.0
    except solver.Infeasible:
        pass  # the grid's rounding: the relaxation below works in ms
    hi = _feasible_multiplier(costs, budgets, storage_cap, reserve, solve_budgets)
    lo = 0.0
    best = _penalised(costs, budgets, storage_cap, reserve, solve_budgets, hi)
    for _ in range(LAMBDA_STEPS):
        mid = (lo + hi) / 2
        plan = _penalised(costs, budgets, storage_cap, reserve, solve_budgets, mid)
        if timings.predict(plan.schemes) <= budget:
            hi, best = mid, plan
        else:
            lo = mid
    return best, "latency + storage/memory", hi * max(budget - timings.predict(best.schemes), 0.0)


def balanced(costs: Any, budgets: Any, accurate: Solution, storage_cap: float, reserve: float,
             solve_budgets: SolveBudgets) -> Solution:
    """The fastest plan whose predicted error is within ``BALANCED_MARGIN`` of ``accurate``'s."""
    limit = accurate.error + BALANCED_MARGIN
    plan = _true(costs, solver.smallest_within(time_options(costs, BALANCED_MS_PER_MB), limit).schemes)
    if _fits(costs, budgets, plan, storage_cap):
        return plan
    lo, hi, best = 0.0, 1.0, accurate
    for _ in range(60):  # grow λ until the plan leaves the margin
        plan = _penalised(costs, budgets, storage_cap, reserve, solve_budgets, hi, BALANCED_MS_PER_MB)
        if plan.error > limit:
            break
        best, lo, hi = plan, hi, hi * 4
    for _ in range(LAMBDA_STEPS):
        mid = (lo + hi) / 2
        plan = _penalised(costs, budgets, storage_cap, reserve, solve_budgets, mid, BALANCED_MS_PER_MB)
        if plan.error <= limit:
            lo, best = mid, plan
        else:
            hi = mid
    return best


def _true(costs: Any, schemes: dict[str, Any]) -> Solution:
    """A solution with its stored bytes and its true (unpenalised) predicted error."""
    chosen = [next(c for c in costs.stored[f] if c.scheme == s) for f, s in schemes.items()]
    return Solution(dict(schemes), sum(c.bytes for c in chosen), sum(c.error for c in chosen))


def _fits(costs: Any, budgets: Any, plan: Solution, storage_cap: float) -> bool:
    return plan.bytes <= storage_cap and costs.predict(plan.schemes).total_bytes <= budgets.memory_bytes


def _penalised(costs: Any, budgets: Any, storage_cap: float, reserve: float, solve_budgets: SolveBudgets,
               lam: float, ms_per_mb: float = 0.0) -> Solution:
    """The storage/memory plan minimising error + ``lam`` × (ms + ``ms_per_mb`` × stored MB),
    with its true error."""
    timings = costs.latency.layers
    stored = {f: {str(c.scheme): c.bytes for c in v} for f, v in costs.stored.items()}

    def raised(options: dict[str, list[Choice]]) -> dict[str, list[Choice]]:
        return {f: [Choice(c.scheme, c.bytes, c.error + lam * (timings.get(f, {}).get(str(c.scheme), 0.0)
                                                               + stored[f][str(c.scheme)] / 1e6 * ms_per_mb))
                    for c in choices] for f, choices in options.items()}

    plan, _ = solve_budgets(replace(costs, stored=raised(costs.stored), held=raised(costs.held)), budgets,
                            storage_cap, reserve)
    return _true(costs, plan.schemes)


def _feasible_multiplier(costs: Any, budgets: Any, storage_cap: float, reserve: float,
                         solve_budgets: SolveBudgets) -> float:
    """A λ whose plan meets the latency budget (``BudgetError`` when even time-first plans do not)."""
    from edgeq.planning.solve import BudgetError

    lam = 1e-6
    for _ in range(60):
        plan = _penalised(costs, budgets, storage_cap, reserve, solve_budgets, lam)
        if costs.latency.predict(plan.schemes) <= budgets.latency_ms:
            return lam
        lam *= 4
    raise BudgetError(f"no plan fits the latency budget of {budgets.latency_ms:g} ms together with the storage and "
                      "memory budgets (the fastest plans are too large)",
                      "raise the latency, storage or memory budget")
