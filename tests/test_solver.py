"""The plan solver: exact against brute force, infeasible budgets named, fast."""

from __future__ import annotations

import itertools
import random

import pytest

from edgeq.planning.solver import Choice, Infeasible, smallest_within, solve


def _random_problem(seed: int, layers: int):
    rng = random.Random(seed)
    options = {}
    for i in range(layers):
        size = rng.randint(10, 200)
        options[f"l{i}"] = [
            Choice("fp32", size * 8, 0.0),
            Choice("int8", size * 2 + 3, rng.random() * 0.01),
            Choice("int4-g32", size + 5, rng.random() * 0.1),
        ]
    return options


def _brute(options, budget):
    best = None
    names = list(options)
    for combo in itertools.product(*(options[n] for n in names)):
        b = sum(c.bytes for c in combo)
        e = sum(c.error for c in combo)
        if b <= budget and (best is None or e < best[0] - 1e-15):
            best = (e, b)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed):
    options = _random_problem(seed, 6)
    lo = sum(min(c.bytes for c in v) for v in options.values())
    hi = sum(max(c.bytes for c in v) for v in options.values())
    budget = random.Random(seed).randint(lo, hi)
    got = solve(options, budget, cells=hi + 1)  # a 1-byte grid: exact
    want = _brute(options, budget)
    assert got.bytes <= budget
    assert got.error == pytest.approx(want[0], abs=1e-12)


def test_infeasible_names_the_minimum():
    options = _random_problem(1, 5)
    lo = sum(min(c.bytes for c in v) for v in options.values())
    with pytest.raises(Infeasible) as info:
        solve(options, lo - 1)
    assert info.value.minimum_bytes == lo
    assert solve(options, lo).bytes == lo


def test_smallest_within_error():
    options = _random_problem(2, 6)
    hi = sum(max(c.bytes for c in v) for v in options.values())
    got = smallest_within(options, 0.05, cells=hi + 1)
    assert got.error <= 0.05
    # nothing smaller meets the error bound
    for combo in itertools.product(*options.values()):
        if sum(c.bytes for c in combo) < got.bytes:
            assert sum(c.error for c in combo) > 0.05


def test_deterministic_for_hundreds_of_layers():
    """Same problem, same plan (its speed is a benchmark figure: benchmarks/solver_speed.py)."""
    options = _random_problem(3, 500)
    budget = int(sum(c.bytes for v in options.values() for c in v) / 4)
    a = solve(options, budget)
    assert a.bytes <= budget
    assert solve(_random_problem(3, 500), budget) == a


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("only_some", [False, True])
def test_a_shared_head_matches_brute_force_with_the_head_free_at_its_tables_scheme(seed, only_some):
    """``edgeq.planning.shared``: a (table, head) pair whose head stores nothing when it takes the
    table's scheme (``only_some``: one the format shares, as ONNX shares 4-bit blocks only),
    against every plan enumerated with that rule."""
    from edgeq.planning.shared import solve_shared, total_bytes

    options = _random_problem(seed, 5)
    pair = ("l0", "l3")
    schemes = sorted({c.scheme for c in options[pair[0]]}, key=str)
    shares = frozenset(schemes[::2]) if only_some else None

    def cost(combo):
        picked = dict(zip(options, combo))
        free = picked[pair[1]].scheme == picked[pair[0]].scheme and (shares is None or picked[pair[0]].scheme in shares)
        return sum(c.bytes for n, c in picked.items() if not (free and n == pair[1])), sum(c.error for c in combo)

    lo = min(cost(c)[0] for c in itertools.product(*options.values()))
    hi = sum(max(c.bytes for c in v) for v in options.values())
    budget = random.Random(seed).randint(lo, hi)
    feasible = [cost(c) for c in itertools.product(*options.values()) if cost(c)[0] <= budget]
    got = solve_shared(solve, options, budget, [pair], shares, cells=hi + 1)
    assert list(got.schemes) == list(options)
    assert got.bytes == total_bytes(options, got.schemes, [pair], shares) <= budget
    assert got.error == pytest.approx(min(e for _, e in feasible), abs=1e-12)
    smallest = solve_shared(smallest_within, options, 1e9, [pair], shares, cells=hi + 1)
    assert smallest.bytes == lo
