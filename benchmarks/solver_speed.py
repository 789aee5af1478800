"""The plan solver's speed and optimality beside an exact MILP solver, on random problems.

edgeq's solver (``edgeq.planning.solver.solve``: a multiple-choice knapsack by dynamic
programming on a byte grid) against SciPy's ``milp`` (HiGHS branch and bound, exact on
integer bytes) on the same problems: layers with fp32 / int8 / int4 choices whose bytes
follow their shapes and whose errors are random. Printed: time of each, and edgeq's
error relative to the MILP optimum (edgeq rounds costs up to its grid, so it may give up
a little error, never exceed the budget).

    python benchmarks/solver_speed.py [--layers 100 500 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edgeq.planning.solver import Choice, solve  # noqa: E402


def problem(seed: int, layers: int) -> dict[str, list[Choice]]:
    rng = random.Random(seed)
    out = {}
    for i in range(layers):
        params = rng.choice([64, 128, 256, 384, 768, 1024, 3072]) * rng.choice([64, 128, 384, 768, 1024])
        out[f"l{i}"] = [Choice("fp32", 4 * params, 0.0),
                        Choice("int8", params + params // 32, rng.random() * 1e-3),
                        Choice("int4-g32", params // 2 + params // 16, rng.random() * 1e-2)]
    return out


def milp_optimum(options: dict[str, list[Choice]], budget: int) -> tuple[float, float]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    flat = [c for cs in options.values() for c in cs]
    n, k = len(flat), len(options)
    cost = np.array([c.error for c in flat])
    size = np.array([c.bytes for c in flat], dtype=float)
    pick = np.zeros((k, n))
    j = 0
    for i, cs in enumerate(options.values()):
        pick[i, j:j + len(cs)] = 1
        j += len(cs)
    start = time.perf_counter()
    res = milp(cost, integrality=np.ones(n), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(pick, 1, 1), LinearConstraint(size[None, :], 0, budget)])
    elapsed = time.perf_counter() - start
    if not res.success:
        raise SystemExit(f"milp failed: {res.message}")
    return float(res.fun), elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[100, 500, 2000])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(f"{'layers':>7} {'seed':>4} {'edgeq s':>9} {'milp s':>9} {'edgeq error':>12} {'milp error':>12} {'gap':>8}")
    for layers in args.layers:
        for seed in range(args.seeds):
            options = problem(seed, layers)
            budget = int(sum(c.bytes for cs in options.values() for c in cs) / 6)
            start = time.perf_counter()
            ours = solve(options, budget)
            t_ours = time.perf_counter() - start
            assert ours.bytes <= budget
            best, t_milp = milp_optimum(options, budget)
            gap = (ours.error - best) / best if best else 0.0
            print(f"{layers:>7} {seed:>4} {t_ours:>9.3f} {t_milp:>9.3f} {ours.error:>12.6g} {best:>12.6g} {gap:>8.2%}")


if __name__ == "__main__":
    main()
