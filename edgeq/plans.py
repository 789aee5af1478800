"""``plan_model``: the per-layer plan ``edgeq export`` would lower, without lowering it.

What ``edgeq plan`` runs. A model is loaded once; a decoder LLM is planned with its
KV-cache costs at the max context its export would use (``edgeq.llm.plan``), any other
model by ``edgeq.planning.planner``. The layer names in the result (and in a plan file
written from it) are the ones ``edgeq export --plan`` reads back for the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError
from edgeq.progress import Steps


def plan_model(model: Any, target: Any, *, budget_bytes: int | None = None, memory_budget_bytes: int | None = None,
               max_drop: float | None = None, rules: list[str] | None = None, proxy: str | None = None,
               calib_samples: int | None = None, use_cache: bool = True, steps: Steps | None = None,
               seq_len: int | None = None, calib: str | Path | None = None,
               max_context: int | None = None, algorithms: list[str] | None = None,
               latency_budget_ms: float | None = None) -> Any:
    """``edgeq.planning.solve.PlanResult`` for ``model`` (a source or ``LoadedModel``) on
    ``target``. ``calib_samples``: calibration inputs for sensitivity (default 32, or
    ``edgeq.llm.plan.LM_CALIB_SAMPLES`` sequences for a decoder LLM); ``max_context``:
    a decoder LLM's cache length (default: as ``export`` resolves it); ``algorithms``: the
    calibrated algorithms offered besides RTN (default: every one the format stores)."""
    from edgeq.planning.planner import load_for_planning
    from edgeq.planning.solve import Budgets

    steps = steps or Steps()
    loaded, resolved = load_for_planning(model, target, rules=rules, seq_len=seq_len, calib=calib, steps=steps)
    tgt = resolved.target
    budgets = Budgets.for_target(tgt, storage_bytes=budget_bytes, memory_bytes=memory_budget_bytes, max_drop=max_drop,
                                 latency_ms=latency_budget_ms)
    if loaded.task == "causal-lm":
        budgets = lm_budgets(budgets, tgt, steps)
        from edgeq.llm.export import resolve_max_context
        from edgeq.llm.plan import LM_CALIB_SAMPLES, plan_lm

        context = resolve_max_context(max_context, tgt, loaded.config, steps)
        return plan_lm(loaded, resolved, budgets, context, rules=rules, proxy=proxy,
                       calib_samples=calib_samples or LM_CALIB_SAMPLES, use_cache=use_cache, steps=steps,
                       algorithms=algorithms)[1]
    if max_context is not None:
        raise ConfigError("--max-context applies to causal LMs only", f"drop it for this {loaded.task} model")
    from edgeq.planning.planner import plan

    return plan(loaded, resolved, budget_bytes=budget_bytes, memory_budget_bytes=memory_budget_bytes,
                max_drop=max_drop, rules=rules, proxy=proxy, calib_samples=calib_samples or 32,
                use_cache=use_cache, steps=steps, algorithms=algorithms, latency_budget_ms=latency_budget_ms)


def lm_budgets(budgets: Any, tgt: Any, steps: Steps) -> Any:
    """A decoder LLM's budgets: ``--latency-budget`` is refused (layers are not timed for
    LLMs yet); a target's own latency budget or ``objective: balanced`` is noted and
    planning stays most-accurate."""
    from dataclasses import replace

    if budgets.latency_ms is not None and budgets.sources.get("latency") == "--latency-budget":
        raise ConfigError("--latency-budget is not available for causal LMs yet (their layers are not timed)",
                          "drop --latency-budget")
    if budgets.objective == "balanced" or budgets.latency_ms is not None:
        steps.note(f"target {tgt.name}'s latency budget / balanced objective applies to encoders; this causal LM is "
                   "planned for accuracy ('edgeq check' gates its latency)")
        return replace(budgets, objective="accuracy", latency_ms=None, families=None)
    return budgets
