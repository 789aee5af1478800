"""Budgeted per-layer plans for decoder LLMs: the planner's stages with an LLM's costs.

``edgeq export --budget / --memory-budget / --max-drop / --rule`` and ``edgeq plan`` on a
causal LM run the same stages as for any model (``edgeq.planning``: measured costs, then
a pure solve, then the budget-fitting loop after lowering), with three differences that
come from how an LLM is lowered and run:

- **Candidates** are the target's precision families that the format's LLM lowering
  ships (the backend's ``LM_PRECISIONS``; e.g. ExecuTorch offers no fp16 LLM layers).
  A family the target lists and the LLM path cannot take is named in a note, never
  applied.
- **Sensitivity** is the KL divergence of the next-token distributions, fp32 against the
  model with one layer at one scheme (``edgeq.planning.sensitivity`` with the causal-LM
  metric), on ``LM_CALIB_SAMPLES`` sequences of the calibration text — never the
  held-out text perplexity is measured on. Layers are stood in with the numerics the
  format's LLM lowering ships (a backend whose LLM numerics differ from its encoders'
  provides ``lm_numerics()``, a context the measurement runs in). The export's smoothing
  of int8 activations (``edgeq.algorithms.smooth``) depends on the plan and is not in
  the measurement: a layer's sensitivity is that of its unsmoothed input.
- **GPTQ candidates** (``int4-gN-gptq``) are calibrated on ``edgeq.algorithms.calibrated.LM_CALIB_SAMPLES`` sentences
  of the same calibration text (``edgeq.algorithms.calibrated``: one pass of the fp32
  model, Hessians from forward hooks on the linears); the export computes the same
  results (cached) and writes them into the artifact.
- **Memory** is the decoder's, not an encoder's: the peak of generating to the max
  context as ``edgeq.llm.memory`` predicts it (weights as the runtime holds them, the KV
  cache as the runtime holds it, activations, the runtime's and the LLM session's
  overhead; its per-runtime terms are measured). There is no fp32 probe lowering (for an
  LLM it is a full export): a runtime that plans its arena is first assumed to plan the
  KV cache plus the arena of a whole-context prefill (``edgeq.llm.costs``), and the
  arena a real lowering planned replaces that; the file's non-weight bytes start at 0 and
  the fitting loop (``edgeq.planning.fit``) corrects them from the lowered file.

A tied output head is a layer of its own in the plan (``lm_head``). Where the format
stores a head that takes its table's scheme as the table itself (the backend's
``tied_head_shares_table(scheme)``: GGUF at every scheme, ONNX at 4-bit and 8-bit blocks), the pair is planned jointly and that head costs nothing
(``edgeq.planning.shared``); elsewhere the storage cost counts it even when it would share
the embedding's fp32 table, so a plan with both at fp32 is predicted larger than it is,
never smaller.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from edgeq.planning.prepare import Prepared, prepare

# Calibration sequences the sensitivity of an LLM is measured on (each of the loaded
# model's seq_len tokens). Every (layer, scheme) pair costs one forward over all of them:
# SmolLM2-135M has ~200 layers x 4 schemes, so this is what bounds a cold plan's time.
LM_CALIB_SAMPLES = 4


@dataclass
class LMPrepared(Prepared):
    """``Prepared`` for a decoder LLM: nothing is folded by the KV-cache lowering (its
    lookups read runtime positions), and the probe is the decoder's estimate, not a lowering."""

    context: int = 0
    kv_dtype: str = "float32"
    decoder_lm = True

    @property
    def folded(self) -> dict[str, int]:
        return {}

    def probe(self, steps: Any, use_cache: bool = True) -> Any:
        from edgeq.backends import Probe

        return Probe(activation_bytes=decoder_activation_bytes(self.loaded.config, self.context, self.kv_dtype),
                     file_overhead_bytes=0)


def decoder_activation_bytes(config: dict[str, Any], context: int, kv_dtype: str = "float32") -> int:
    """The KV cache at ``context`` plus the arena of a prefill of ``context`` tokens."""
    from edgeq.llm.costs import LMShape, kv_cache_bytes, prefill_arena_bytes

    shape = LMShape.from_config(config)
    return kv_cache_bytes(shape, context, kv_dtype) + prefill_arena_bytes(shape, context)


def lm_precisions(fmt: str, tgt: Any, steps: Any) -> list[str]:
    """The target's precision families the format's LLM lowering ships; the others are
    named in a note."""
    from edgeq.errors import ConfigError
    from edgeq.llm.export import lm_backend

    offered = tuple(lm_backend(fmt).LM_PRECISIONS)
    families = [p for p in tgt.precisions if p in offered]
    dropped = [p for p in tgt.precisions if p not in offered]
    if not families:
        raise ConfigError(f"target '{tgt.name}' allows none of {', '.join(offered)}, the precisions edgeq's {fmt} "
                          "LLM export ships", "use a target whose precisions include int8 or int4")
    if dropped:
        steps.note(f"{', '.join(dropped)} layers are not offered for decoder LLMs in {fmt}: planned among "
                   f"{', '.join(families)}")
    return families


def lm_costs(loaded: Any, resolved: Any, context: int, *, rules: list[str] | None = None, proxy: str | None = None,
             calib_samples: int = LM_CALIB_SAMPLES, use_cache: bool = True, steps: Any = None,
             algorithms: list[str] | None = None) -> Any:
    """``edgeq.planning.costs.PlanCosts`` of the causal LM ``loaded`` for ``resolved``'s
    format at ``context`` positions (layer names are the loaded wrapper's: ``model.…``)."""
    from edgeq.llm.export import lm_backend
    from edgeq.planning.costs import measure_costs
    from edgeq.progress import Steps

    from edgeq.llm.export import causal_lm_of

    steps = steps or Steps()
    lm_backend(resolved.target.format).check_lm(causal_lm_of(loaded).config.get_text_config())
    families = lm_precisions(resolved.target.format, resolved.target, steps)
    base = prepare(loaded, resolved)
    values = {f.name: getattr(base, f.name) for f in fields(Prepared)}
    values.update(tokens=0, attention_heads=0)  # the decoder's activations are the probe's, not fitted terms
    prepared = LMPrepared(**values, context=context, kv_dtype=lm_backend(resolved.target.format).LM_MEMORY.kv_dtype)
    # the backend's stand-ins with the numerics its LLM lowering ships (e.g. ONNX's int4
    # linears compute with int8 dynamic activations in an LLM, weight-only in an encoder)
    with lm_backend(resolved.target.format).lm_numerics():
        costs = measure_costs(prepared, rules=rules, proxy=proxy, calib_samples=calib_samples, use_cache=use_cache,
                              steps=steps, precisions=families, algorithms=algorithms)
    return replace(costs, memory_model=_memory_model(costs, loaded.config, context))


def _memory_model(costs: Any, config: dict[str, Any], context: int) -> Any:
    """Predicted peak of generating to ``context`` (``edgeq.llm.memory``, measured per runtime)
    as the solver reads it: the KV cache and the arena count as activations."""
    from edgeq.llm.costs import LMShape
    from edgeq.llm.memory import plans_arena, predict_lm_memory, scenario_prompt
    from edgeq.planning.memory import MemoryEstimate

    shape, fmt = LMShape.from_config(config), costs.fmt
    layers = [x for x in costs.layers if x.fqn not in costs.unused]

    def predict(schemes: dict[str, Any], activation_bytes: int) -> Any:
        est = predict_lm_memory(fmt, layers, {x.fqn: schemes[x.fqn].name for x in layers}, shape, context=context,
                                prompt_tokens=scenario_prompt(context),
                                planned_activation_bytes=activation_bytes if plans_arena(fmt) else 0,
                                nonlayer_bytes=costs.other_bytes)
        # the load as MemoryEstimate counts it, before its overhead: the same total as est's
        return MemoryEstimate(fmt, est.weights_bytes, est.kv_cache_bytes + est.activation_bytes,
                              max(0, est.load_bytes - est.runtime_overhead_bytes), est.runtime_overhead_bytes)

    return predict


def plan_lm(loaded: Any, resolved: Any, budgets: Any, context: int, *, rules: list[str] | None = None,
            proxy: str | None = None, calib_samples: int = LM_CALIB_SAMPLES, use_cache: bool = True,
            steps: Any = None, algorithms: list[str] | None = None) -> tuple[Any, Any]:
    """Costs and the solved plan (``PlanResult``) for a causal LM within ``budgets``."""
    from edgeq.planning.planner import solve_step
    from edgeq.progress import Steps

    steps = steps or Steps()
    costs = lm_costs(loaded, resolved, context, rules=rules, proxy=proxy, calib_samples=calib_samples,
                     use_cache=use_cache, steps=steps, algorithms=algorithms)
    return costs, solve_step(costs, budgets, steps)


def predicted_memory(costs: Any, schemes: dict[str, Any], lowered: Any) -> Any:
    """The plan's predicted peak (``MemoryEstimate``) with what the lowering showed: the
    runtime's planned arena where the format plans one (it holds the static KV cache and
    the activations), else the decoder estimate the costs carry."""
    arena = int((getattr(lowered, "delegation", None) or {}).get("planned_activation_bytes") or 0)
    return (costs.with_activation_bytes(arena) if arena else costs).predict(schemes)
