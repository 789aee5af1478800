"""Layers that share one tensor when they take the same scheme: a tied LM head and its table.

A format that stores a tied head as the table itself when both take one scheme (GGUF:
llama.cpp reads ``token_embd`` for the output unless an ``output`` tensor is written; ONNX at
4-bit blocks: the table's GatherBlockQuantized reads the head's MatMulNBits tensor; the
backend's ``tied_head_shares_table(scheme)``) makes the head's bytes depend on the table's choice, which a
per-layer knapsack cannot see. ``solve_shared`` plans each such pair as one item whose
choices are every (table scheme, head scheme) combination, the head costing nothing when
its scheme is the table's, and splits the answer back: the same optimum as planning the
two layers jointly (errors stay additive; only bytes couple), exact within the solver's
grid as any other item.

>>> from edgeq.planning.solver import Choice, solve
>>> options = {"emb": [Choice("q8", 10, 0.1), Choice("q4", 5, 0.4)],
...            "head": [Choice("q8", 10, 0.2), Choice("q4", 5, 0.5)]}
>>> solve_shared(solve, options, 10, [("emb", "head")]).schemes   # both q8 share one q8 tensor
{'emb': 'q8', 'head': 'q8'}
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from edgeq.planning.solver import Choice, Solution

_JOIN = "\x00"  # joins a pair's names into the one item the solver sees: never in a module path


def _shared(table: Any, head: Any, shares: Any) -> bool:
    return head == table and (shares is None or table in shares)


def joined(options: dict[str, list[Choice]], pairs: Sequence[tuple[str, str]],
           shares: Any = None) -> dict[str, list[Choice]]:
    """``options`` with each (table, head) pair of ``pairs`` as one item of combined choices
    (``shares``: the schemes at which the pair is one tensor; None: every scheme)."""
    out = dict(options)
    for table, head in pairs:
        if table not in out or head not in out:
            continue
        a, b = out.pop(table), out.pop(head)
        out[table + _JOIN + head] = [
            Choice((x.scheme, y.scheme), x.bytes + (0 if _shared(x.scheme, y.scheme, shares) else y.bytes),
                   x.error + y.error)
            for x in a for y in b]
    return out


def split(solution: Solution, options: dict[str, list[Choice]]) -> Solution:
    """A solution over ``joined`` items as one scheme per layer, in ``options``' order."""
    schemes: dict[str, Any] = {}
    for name, scheme in solution.schemes.items():
        if _JOIN in name:
            table, head = name.split(_JOIN)
            schemes[table], schemes[head] = scheme
        else:
            schemes[name] = scheme
    return Solution({n: schemes[n] for n in options if n in schemes}, solution.bytes, solution.error)


def solve_shared(solve: Callable[..., Solution], options: dict[str, list[Choice]], limit: Any,
                 pairs: Sequence[tuple[str, str]], shares: Any = None, **kwargs: Any) -> Solution:
    """``solve(options, limit)`` (``edgeq.planning.solver.solve`` or ``smallest_within``) with
    ``pairs`` planned jointly (one tensor at the schemes in ``shares``; None: at every scheme)."""
    if not pairs:
        return solve(options, limit, **kwargs)
    return split(solve(joined(options, pairs, shares), limit, **kwargs), options)


def total_bytes(options: dict[str, list[Choice]], schemes: dict[str, Any], pairs: Sequence[tuple[str, str]],
                shares: Any = None) -> int:
    """The bytes of ``schemes`` under ``options``' costs, a head sharing its table's tensor counted once."""
    free = sharing(schemes, pairs, shares)
    return sum(next(c.bytes for c in options[f] if c.scheme == s) for f, s in schemes.items() if f not in free)


def sharing(schemes: dict[str, Any], pairs: Sequence[tuple[str, str]], shares: Any = None) -> set[str]:
    """The heads of ``pairs`` that take their table's scheme, one the format shares (``shares``;
    None: every scheme), and so store nothing of their own."""
    return {head for table, head in pairs if table in schemes and _shared(schemes[table], schemes.get(head), shares)}
