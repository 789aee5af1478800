"""Choose a scheme per layer: least total predicted error within a byte budget.

A multiple-choice knapsack solved exactly on a byte grid by dynamic programming: each
layer's cost is rounded *up* to the grid, so a returned plan always fits; with the default
20,000 cells the plan is optimal up to one cell (budget / 20,000) of slack. Errors are
assumed additive across layers (the usual first-order model of quantization noise).
Deterministic: ties go to the cheaper scheme, then to the earlier one in the input.

>>> from edgeq.planning.solver import Choice, solve
>>> options = {"a": [Choice("int4", 10, 0.3), Choice("int8", 20, 0.1)],
...            "b": [Choice("int4", 10, 0.05), Choice("int8", 20, 0.01)]}
>>> solve(options, budget=30).schemes
{'a': 'int8', 'b': 'int4'}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Choice:
    scheme: str
    bytes: int
    error: float


@dataclass(frozen=True)
class Solution:
    schemes: dict[str, str]
    bytes: int
    error: float


class Infeasible(Exception):
    def __init__(self, minimum_bytes: int) -> None:
        super().__init__(f"needs at least {minimum_bytes} bytes")
        self.minimum_bytes = minimum_bytes


def minimum_bytes(options: dict[str, list[Choice]]) -> int:
    return sum(min(c.bytes for c in choices) for choices in options.values())


def solve(options: dict[str, list[Choice]], budget: int, cells: int = 20_000) -> Solution:
    """Least total error with total bytes ≤ ``budget``; raises ``Infeasible``."""
    least = minimum_bytes(options)
    if least > budget:
        raise Infeasible(least)
    # Rounding each layer up to the grid can overshoot a budget that is only just above
    # the minimum; refine the grid before giving up.
    for grid in (cells, cells * 8, cells * 64):
        table = _table(options, budget, max(grid, 50 * len(options)))
        if np.isfinite(table.errors[-1][-1]):
            return table.backtrack(int(np.argmin(table.errors[-1])))
    raise Infeasible(least)


def smallest_within(options: dict[str, list[Choice]], max_error: float, cells: int = 20_000) -> Solution:
    """The fewest bytes whose total predicted error stays ≤ ``max_error``."""
    ceiling = sum(max(c.bytes for c in choices) for choices in options.values())
    table = _table(options, ceiling, max(cells, 50 * len(options)))
    ok = np.nonzero(table.errors[-1] <= max_error + 1e-12)[0]
    if ok.size == 0:
        best_error = float(np.min(table.errors[-1]))
        raise ValueError(f"no plan keeps the predicted error within {max_error:g} (best possible: {best_error:.4g})")
    return table.backtrack(int(ok[0]))


class _Table:
    def __init__(self, names: list[str], options: dict[str, list[Choice]], unit: float,
                 errors: list[np.ndarray], picks: list[np.ndarray]) -> None:
        self.names, self.options, self.unit, self.errors, self.picks = names, options, unit, errors, picks

    def backtrack(self, cell: int) -> Solution:
        schemes: dict[str, str] = {}
        for i in range(len(self.names) - 1, -1, -1):
            name = self.names[i]
            choice = self.options[name][int(self.picks[i][cell])]
            schemes[name] = choice.scheme
            cell -= _cells(choice.bytes, self.unit)
        ordered = {n: schemes[n] for n in self.names}
        chosen = [next(c for c in self.options[n] if c.scheme == s) for n, s in ordered.items()]
        return Solution(ordered, sum(c.bytes for c in chosen), sum(c.error for c in chosen))


def _cells(nbytes: int, unit: float) -> int:
    return int(math.ceil(nbytes / unit - 1e-9))


def _table(options: dict[str, list[Choice]], budget: int, cells: int) -> _Table:
    names = list(options)
    for n in names:  # cheaper first: argmin keeps the first of equal errors
        options[n] = sorted(options[n], key=lambda c: c.bytes)
    unit = max(1.0, budget / cells)
    size = int(budget // unit) + 1
    inf = np.inf
    current = np.zeros(size)  # min error using 0 layers at capacity ≤ cell
    errors, picks = [], []
    for name in names:
        best = np.full(size, inf)
        pick = np.zeros(size, dtype=np.int16)
        for k, choice in enumerate(options[name]):
            c = _cells(choice.bytes, unit)
            if c >= size:
                continue
            candidate = np.full(size, inf)
            candidate[c:] = current[: size - c] + choice.error
            better = candidate < best
            best[better] = candidate[better]
            pick[better] = k
        errors.append(best)
        picks.append(pick)
        current = best
    return _Table(names, options, unit, errors, picks)
