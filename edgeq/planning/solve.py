"""Stage 3, ``solve``: a plan from ``PlanCosts`` and ``Budgets``, as a pure function.

No model, no runtime, no file: the same costs and budgets give the same plan. Re-solving
with a reserve (file bytes a lowering showed the plan did not predict) or another arena is
cheap, which is what the budget-fitting loop after lowering (``edgeq.planning.fit``) does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.planning import latency_bound, solver
from edgeq.planning.shared import sharing, solve_shared, total_bytes
from edgeq.planning.inventory import LayerInfo
from edgeq.planning.plan import QuantPlan

# The memory-bound knapsack costs each layer by the bytes the runtime holds for it, but a
# plan's predicted peak also has terms that are not a sum over layers (the load-time copy
# of the largest weight being packed, a tied LM head's extra copies). When the solution
# is over anyway, the cap is lowered by the overshoot and the knapsack solved again:
MEMORY_REFITS = 16  # rounds; each is a DP solve of milliseconds, and MiniLM-sized plans settle in 1–2
MIN_TIGHTENING = 1024  # bytes: an overshoot below the solver's grid must still move the cap


class BudgetError(EdgeqError):
    """No plan fits the budget."""


@dataclass(frozen=True)
class Budgets:
    storage_bytes: int  # the artifact's size
    memory_bytes: int  # its predicted peak runtime memory
    sources: dict[str, str]  # storage/memory → "--budget" or "target NAME"
    max_drop: float | None = None  # with it: the smallest plan within this predicted error
    latency_ms: float | None = None  # the plan's predicted whole-model p50 (edgeq.planning.latency)
    objective: str = "accuracy"  # accuracy | balanced (without a latency budget: see solve)
    # the precision families the candidates come from (None: the target's precisions); see for_target
    families: tuple[str, ...] | None = None

    @classmethod
    def for_target(cls, tgt: Any, *, storage_bytes: int | None = None, memory_bytes: int | None = None,
                   max_drop: float | None = None, latency_ms: float | None = None,
                   rules: list[str] | None = None) -> "Budgets":
        """The user's budgets where given, else the target's.

        A balanced target's default export (no budget, drop, latency or rule given, none on the
        target) plans within its default precision: each layer keeps that precision and
        takes the fastest of its kernels and variants (ONNX int8: MatMulNBits, MatMulInteger,
        group-wise) within the balanced margin of the most accurate of them. Offering the
        other precisions there would turn "the target's int8, fast" into a mix the user did
        not ask for (wider floats are no faster on these kernels; narrower ones lose more)."""
        target_latency = tgt.budgets.latency_ms
        default_only = (tgt.objective == "balanced" and target_latency is None and latency_ms is None
                        and storage_bytes is None and memory_bytes is None and max_drop is None and not rules)
        return cls(
            storage_bytes=storage_bytes if storage_bytes is not None else int(tgt.budgets.storage_mb * 1e6),
            memory_bytes=memory_bytes if memory_bytes is not None else int(tgt.budgets.runtime_memory_mb * 1e6),
            sources={"storage": "--budget" if storage_bytes is not None else f"target {tgt.name}",
                     "memory": "--memory-budget" if memory_bytes is not None else f"target {tgt.name}",
                     "latency": "--latency-budget" if latency_ms is not None else f"target {tgt.name}"},
            max_drop=max_drop,
            latency_ms=latency_ms if latency_ms is not None else target_latency,
            objective=tgt.objective,
            families=(tgt.default_precision,) if default_only else None,
        )

    @property
    def wants_latency(self) -> bool:
        """Whether solving needs each (layer, scheme)'s time."""
        return self.latency_ms is not None or self.objective == "balanced"


@dataclass
class PlanResult:
    plan: QuantPlan
    layers: list[LayerInfo]
    sensitivity: dict[str, dict[str, float]]
    layer_bytes: dict[str, int]  # bytes of each layer's weight under its chosen scheme
    other_bytes: int  # constants outside the planned layers (biases, norms), fp32
    file_overhead_bytes: int  # the file's non-weight bytes (graph, metadata): an estimate, see edgeq.planning.inventory
    budget_bytes: int | None  # storage budget (artifact bytes); None with --max-drop
    predicted_error: float
    target: str
    model: str
    fmt: str
    pinned: dict[str, Any] = field(default_factory=dict)
    reserve_bytes: float = 0  # held back from the budget for file overhead (after a measured overshoot)
    memory_budget_bytes: int | None = None  # runtime-memory budget (predicted peak)
    memory: Any = None  # edgeq.planning.memory.MemoryEstimate of the plan
    binding: str = ""  # which limit decided the plan: storage | memory | max-drop | none
    budget_sources: dict[str, str] = field(default_factory=dict)  # storage/memory → "--budget" or "target NAME"
    excluded: dict[str, dict[str, str]] = field(default_factory=dict)  # fqn → {scheme: why it cannot take it}
    not_measured: dict[str, str] = field(default_factory=dict)  # algorithm → why its schemes were not candidates
    latency_budget_ms: float | None = None
    predicted_latency_ms: float | None = None  # whole-model p50 of the plan (edgeq.planning.latency)
    latency: Any = None  # edgeq.planning.latency.LatencyCosts the prediction came from
    objective: str = "accuracy"
    families: tuple[str, ...] | None = None  # Budgets.families: candidates from these precisions only
    latency_gap: float = 0.0  # bound on how much less error a plan within the latency budget could have

    @property
    def predicted_bytes(self) -> int:
        """The artifact's predicted file size: weights, other constants and file overhead."""
        return sum(self.layer_bytes.values()) + self.other_bytes + self.file_overhead_bytes

    def document(self) -> Any:
        """The plan file for this plan (``edgeq.planning.planfile.PlanDocument``)."""
        from edgeq.planning.planfile import PlanDocument, PlanPrediction

        return PlanDocument(
            model=self.model, target=self.target, format=self.fmt, budget_bytes=self.budget_bytes,
            memory_budget_bytes=self.memory_budget_bytes, binding=self.binding,
            latency_budget_ms=self.latency_budget_ms,
            objective=self.objective if self.objective != "accuracy" else None,
            predicted=PlanPrediction(bytes=self.predicted_bytes, error=round(self.predicted_error, 8),
                                     peak_memory_bytes=self.memory.total_bytes if self.memory else None,
                                     file_overhead_bytes=self.file_overhead_bytes,
                                     latency_ms=None if self.predicted_latency_ms is None
                                     else round(self.predicted_latency_ms, 3),
                                     latency_source=self.latency.source if self.latency else None),
            layers=self.plan.names(),
            notes={f: r for f, r in self.plan.reasons.items() if f not in self.pinned},
            cannot_take=self.excluded,
            not_measured=self.not_measured,
        )

    def to_yaml(self) -> str:
        return self.document().to_yaml()


def solve(costs: Any, budgets: Budgets, *, reserve_bytes: float = 0) -> PlanResult:
    """Least predicted error within ``budgets`` (or, with ``max_drop``, the fewest bytes
    within it), holding ``reserve_bytes`` of the storage budget back for file bytes the
    costs do not predict."""
    other, file_base = costs.other_bytes, costs.file_base_bytes
    timings = costs.latency
    if budgets.wants_latency and timings is None:
        raise ValueError("a latency budget or a balanced objective needs costs measured with latency=True")
    gap = 0.0
    if budgets.max_drop is not None:
        try:
            solution = solve_shared(solver.smallest_within, costs.stored, budgets.max_drop, costs.shared_heads,
                                    costs.shared_schemes)
        except ValueError as exc:
            raise BudgetError(str(exc), "raise --max-drop or allow more precisions") from None
        binding = "max-drop"
        _check_fits(solution, costs.predict(solution.schemes), other + file_base, budgets)
        if budgets.latency_ms is not None:
            _check_latency(timings, solution.schemes, budgets)
    else:
        storage_cap, reserve = budgets.storage_bytes - other - file_base - reserve_bytes, file_base + reserve_bytes
        solution, binding = _solve_budgets(costs, budgets, storage_cap, reserve)
        if budgets.latency_ms is not None and timings.predict(solution.schemes) > budgets.latency_ms:
            solution, binding, gap = latency_bound.solve_within(costs, budgets, storage_cap, reserve, _solve_budgets)
        elif budgets.latency_ms is None and budgets.objective == "balanced":
            solution = latency_bound.balanced(costs, budgets, solution, storage_cap, reserve, _solve_budgets)
            binding = f"{binding}, balanced"
    schemes = solution.schemes
    free = sharing(schemes, costs.shared_heads, costs.shared_schemes)  # tied heads stored as their table's tensor
    layer_bytes = {x.fqn: 0 if x.fqn in free else costs.layer_bytes[x.fqn][schemes[x.fqn].name] for x in costs.layers}
    stored = {x.fqn: 0 if x.fqn in free else next(c.bytes for c in costs.stored[x.fqn] if c.scheme == schemes[x.fqn])
              for x in costs.layers}
    return PlanResult(
        plan=QuantPlan(schemes=schemes, reasons=dict(costs.reasons)),
        layers=costs.layers,
        sensitivity=costs.sensitivity,
        layer_bytes=layer_bytes,
        other_bytes=other,
        file_overhead_bytes=file_base + sum(stored[f] - layer_bytes[f] for f in stored),
        budget_bytes=budgets.storage_bytes if budgets.max_drop is None else None,
        predicted_error=solution.error,
        target=costs.target,
        model=costs.model,
        fmt=costs.fmt,
        pinned=costs.pinned,
        reserve_bytes=reserve_bytes,
        memory_budget_bytes=budgets.memory_bytes,
        memory=costs.predict(schemes),
        excluded=costs.excluded,
        not_measured=costs.not_measured,
        binding=binding,
        budget_sources=budgets.sources,
        latency_budget_ms=budgets.latency_ms,
        predicted_latency_ms=timings.predict(schemes) if timings else None,
        latency=timings,
        objective=budgets.objective,
        families=budgets.families,
        latency_gap=gap,
    )


def _solve_budgets(costs: Any, budgets: Budgets, storage_cap: float, reserve: float) -> tuple[Any, str]:
    """Least predicted error within both limits.

    Exact when one limit binds: first the storage knapsack (layer costs = stored bytes);
    if that plan's predicted peak memory fits, it is optimal. Otherwise the memory
    knapsack (costs = bytes as the runtime holds them; the cap = budget − activations −
    runtime overhead − other constants); if that plan also fits storage, it is optimal.
    Should the load-time peak (stored weights + one transient copy) or storage still be
    over, the memory cap is tightened by the overshoot and the knapsack re-solved
    (``MEMORY_REFITS`` rounds at most).
    """
    stored, held, other, pairs = costs.stored, costs.held, costs.other_bytes, costs.shared_heads
    shares = costs.shared_schemes
    memory_budget, sources = budgets.memory_bytes, budgets.sources
    try:
        solution = solve_shared(solver.solve, stored, int(storage_cap), pairs, shares)
    except solver.Infeasible as exc:
        held_back = f" with {reserve / 1e3:.0f} KB for the file's non-weight bytes" if reserve else ""
        raise BudgetError(
            f"storage budget {(storage_cap + other + reserve) / 1e6:.3f} MB ({sources['storage']}){held_back} is below "
            f"the smallest achievable plan ({(exc.minimum_bytes + other + reserve) / 1e6:.3f} MB)",
            "raise --budget, or allow int4 on the target",
        ) from None
    estimate = costs.predict(solution.schemes)
    if estimate.total_bytes <= memory_budget:
        return solution, "storage" if _tight(stored, solution) else "none"
    cap = memory_budget - estimate.runtime_overhead_bytes - estimate.activation_bytes - other
    for _ in range(MEMORY_REFITS):
        try:
            solution = solve_shared(solver.solve, held, int(cap), pairs, shares)
        except solver.Infeasible:
            smallest = costs.predict({fqn: min(c, key=lambda x: x.bytes).scheme for fqn, c in held.items()})
            raise BudgetError(
                f"memory budget {memory_budget / 1e6:.1f} MB ({sources['memory']}) is below the smallest achievable "
                f"predicted peak memory ({describe_memory(smallest)})",
                "raise --memory-budget (or the target's budgets.runtime_memory_mb), or shorten "
                + ("--max-context" if costs.task == "causal-lm" else "--seq-len"),
            ) from None
        estimate = costs.predict(solution.schemes)
        stored_total = total_bytes(stored, solution.schemes, pairs, shares)
        over = max(estimate.total_bytes - memory_budget, stored_total - storage_cap)
        if over <= 0:
            return solution, "memory"
        cap -= max(over, MIN_TIGHTENING)
    raise BudgetError("no plan found that fits both the storage and the memory budget",
                      "raise --budget or --memory-budget")


def _tight(options: dict, solution: Any) -> bool:
    """Whether the plan is held back by the cap (not every layer at its most accurate scheme)."""
    return any(min(c, key=lambda x: (x.error, x.bytes)).scheme != solution.schemes[f] for f, c in options.items())


def _check_fits(solution: Any, estimate: Any, other: int, budgets: Budgets) -> None:
    if solution.bytes + other > budgets.storage_bytes:
        raise BudgetError(f"the smallest plan within --max-drop is {(solution.bytes + other) / 1e6:.2f} MB, over the "
                          f"storage budget of {budgets.storage_bytes / 1e6:g} MB ({budgets.sources['storage']})",
                          "raise --max-drop or --budget")
    if estimate.total_bytes > budgets.memory_bytes:
        raise BudgetError(f"the smallest plan within --max-drop needs {describe_memory(estimate)}, over the memory "
                          f"budget of {budgets.memory_bytes / 1e6:g} MB ({budgets.sources['memory']})",
                          "raise --max-drop or --memory-budget")


def _check_latency(timings: Any, schemes: dict[str, Any], budgets: Budgets) -> None:
    predicted = timings.predict(schemes)
    if predicted > budgets.latency_ms:
        raise BudgetError(f"the smallest plan within --max-drop is predicted at {predicted:.2f} ms, over the latency "
                          f"budget of {budgets.latency_ms:g} ms ({budgets.sources['latency']})",
                          "raise --max-drop or the latency budget")


def describe_memory(estimate: Any) -> str:
    return (f"{estimate.total_bytes / 1e6:.1f} MB: weights {estimate.weights_bytes / 1e6:.1f} + activations "
            f"{estimate.activation_bytes / 1e6:.1f} + runtime {estimate.runtime_overhead_bytes / 1e6:.1f}")
