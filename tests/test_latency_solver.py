"""Solving with a latency budget and the balanced objective, on hand-made costs: the plan
is checked against brute-force enumeration of every plan (least error within storage,
memory and latency; fastest within the balanced margin), infeasible budgets are named."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from edgeq.planning.costs import PlanCosts
from edgeq.planning.inventory import LayerInfo
from edgeq.planning.latency import LatencyCosts
from edgeq.planning.latency_bound import BALANCED_MARGIN, BALANCED_MS_PER_MB
from edgeq.planning.solve import BudgetError, Budgets, solve
from edgeq.planning.solver import Choice
from edgeq.schemes import FP32, INT4, INT8, parse

SCHEMES = [FP32, INT8, parse("int8@matmulinteger"), INT4[32]]


def _problem(seed: int, layers: int = 5):
    """Random per-layer bytes, held bytes, errors and times (integer µs: the grid is exact)."""
    rng = random.Random(seed)
    stored, held, timings = {}, {}, {}
    for i in range(layers):
        size = rng.randint(50, 400)
        fqn = f"l{i}"
        bytes_ = {"fp32": size * 8, "int8": size * 2 + 16, "int8@matmulinteger": size * 2 + 8, "int4-g32": size + 20}
        errors = {"fp32": 0.0, "int8": rng.random() * 0.002, "int8@matmulinteger": rng.random() * 0.01,
                  "int4-g32": rng.random() * 0.05}
        fp32_us = rng.randint(200, 2000)
        times = {"fp32": fp32_us, "int8": int(fp32_us * rng.uniform(0.6, 1.1)),
                 "int8@matmulinteger": int(fp32_us * rng.uniform(0.25, 0.5)), "int4-g32": int(fp32_us * rng.uniform(0.9, 1.3))}
        stored[fqn] = [Choice(s, bytes_[s.name], errors[s.name]) for s in SCHEMES]
        held[fqn] = [Choice(s, int(bytes_[s.name] * 1.5), errors[s.name]) for s in SCHEMES]
        timings[fqn] = {s: us / 1000 for s, us in times.items()}
    return stored, held, LatencyCosts(timings, remainder_ms=rng.randint(100, 900) / 1000, source="hand-made")


def _costs(stored, held, timings, overhead=1000):
    layers = [LayerInfo(f, "linear", (8, 8), 64) for f in stored]

    def memory(schemes, activation_bytes):
        total = overhead + sum(next(c.bytes for c in held[f] if c.scheme == s) for f, s in schemes.items())
        return SimpleNamespace(total_bytes=total, runtime_overhead_bytes=overhead, activation_bytes=0,
                               weights_bytes=total - overhead)

    return PlanCosts(layers=layers, sensitivity={}, stored=stored, held=held,
                     layer_bytes={f: {c.scheme.name: c.bytes for c in v} for f, v in stored.items()},
                     other_bytes=0, file_base_bytes=0, activation_bytes=0, pinned={}, reasons={}, excluded={},
                     unused=frozenset(), folded={}, fmt="hand-made", memory_model=memory, latency=timings)


def _plans(stored, held, timings, overhead=1000):
    """Every plan: (error, stored bytes, held bytes + overhead, ms, schemes)."""
    names = list(stored)
    for combo in itertools.product(*(range(len(stored[n])) for n in names)):
        picks = {n: stored[n][k] for n, k in zip(names, combo)}
        schemes = {n: c.scheme for n, c in picks.items()}
        yield (sum(c.error for c in picks.values()), sum(c.bytes for c in picks.values()),
               overhead + sum(held[n][k].bytes for n, k in zip(names, combo)), timings.predict(schemes), schemes)


def _budgets(storage, memory, latency, objective="accuracy"):
    return Budgets(storage_bytes=storage, memory_bytes=memory, latency_ms=latency, objective=objective,
                   sources={"storage": "--budget", "memory": "--memory-budget", "latency": "--latency-budget"})


@pytest.mark.parametrize("seed", range(16))
def test_latency_budget_matches_brute_force(seed):
    """Only latency binding (storage and memory ample): the latency knapsack is exact, so the
    plan's error equals the best enumerated plan's within the budget."""
    stored, held, timings = _problem(seed)
    plans = list(_plans(stored, held, timings))
    times = sorted(p[3] for p in plans)
    budget = times[len(times) // 4] + 1e-6  # a budget a quarter of plans meet
    result = solve(_costs(stored, held, timings), _budgets(10**9, 10**9, budget))
    best = min(p[0] for p in plans if p[3] <= budget)
    assert result.predicted_latency_ms <= budget + 1e-9
    assert result.predicted_error == pytest.approx(best, abs=1e-12)
    assert result.latency_gap == 0.0 and result.binding == "latency"


@pytest.mark.parametrize("seed", range(16))
def test_latency_and_storage_binding_stay_within_the_reported_gap(seed):
    """Storage and latency both binding: the plan meets every budget, and its error is at
    least the enumerated optimum and at most that plus the Lagrangian bound it reports."""
    stored, held, timings = _problem(seed)
    plans = list(_plans(stored, held, timings))
    rng = random.Random(seed)
    for _ in range(2000):  # budgets under which the latency-only and storage-only optima both break the other limit
        storage = rng.randint(min(p[1] for p in plans), max(p[1] for p in plans))
        latency = rng.uniform(min(p[3] for p in plans), max(p[3] for p in plans))
        feasible = [p for p in plans if p[1] <= storage and p[3] <= latency]
        by_storage = min((p for p in plans if p[1] <= storage), key=lambda p: (p[0], p[1]))
        by_latency = min((p for p in plans if p[3] <= latency), key=lambda p: (p[0], p[1]), default=None)
        if feasible and by_storage[3] > latency and by_latency[1] > storage:
            break
    else:
        pytest.skip("no budgets where both limits bind")
    best = min(p[0] for p in feasible)
    result = solve(_costs(stored, held, timings), _budgets(storage, 10**9, latency))
    chosen = result.plan.schemes
    assert sum(next(c.bytes for c in stored[f] if c.scheme == s) for f, s in chosen.items()) <= storage
    assert timings.predict(chosen) <= latency + 1e-9
    assert best - 1e-12 <= result.predicted_error <= best + result.latency_gap + 1e-9
    assert result.binding == "latency + storage/memory"


def test_latency_budget_below_the_fastest_plan_names_it():
    stored, held, timings = _problem(3)
    fastest = min(p[3] for p in _plans(stored, held, timings))
    with pytest.raises(BudgetError) as info:
        solve(_costs(stored, held, timings), _budgets(10**9, 10**9, fastest * 0.9))
    assert f"{fastest:.2f} ms" in str(info.value) and "--latency-budget" in str(info.value)
    assert solve(_costs(stored, held, timings), _budgets(10**9, 10**9, fastest + 1e-6)).predicted_latency_ms <= fastest + 1e-6


@pytest.mark.parametrize("seed", range(12))
def test_balanced_is_the_fastest_plan_within_the_margin(seed):
    """objective: balanced without a latency budget: the enumerated fastest plan whose error
    is within BALANCED_MARGIN of the most accurate plan that fits storage and memory."""
    stored, held, timings = _problem(seed)
    plans = list(_plans(stored, held, timings))
    storage = sorted(p[1] for p in plans)[len(plans) // 2]  # the most accurate plan is held back by storage
    fits = [p for p in plans if p[1] <= storage]
    accurate = min(p[0] for p in fits)
    def cost(p):  # time with the bytes counted as time, in whole µs per layer as the knapsack rounds it
        return sum(round((timings.layers[f][s.name] + next(c.bytes for c in stored[f] if c.scheme == s) / 1e6
                          * BALANCED_MS_PER_MB) * 1000 + 0.5 - 1e-9) for f, s in p[4].items())

    within = [p for p in plans if p[0] <= accurate + BALANCED_MARGIN + 1e-15]
    want = min(cost(p) for p in within if p[1] <= storage)
    result = solve(_costs(stored, held, timings), _budgets(storage, 10**9, None, "balanced"))
    assert result.predicted_error <= accurate + BALANCED_MARGIN + 1e-12
    assert result.predicted_bytes <= storage
    got = cost((0, 0, 0, 0, result.plan.schemes))
    # exact when the latency knapsack's plan fits storage; otherwise the Lagrangian plan, never cheaper than exact
    assert got >= want
    if min(cost(p) for p in within) == want:
        assert got == want


def test_no_latency_budget_leaves_the_plan_as_before():
    stored, held, timings = _problem(5)
    with_timings = solve(_costs(stored, held, timings), _budgets(10**9, 10**9, None))
    without = solve(_costs(stored, held, None), _budgets(10**9, 10**9, None))
    assert with_timings.plan.schemes == without.plan.schemes
    assert without.predicted_latency_ms is None
