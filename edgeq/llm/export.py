"""``export_lm``: a Hugging Face causal LM to a decoder artifact with a KV cache.

``edgeq export`` calls it for task causal-lm when the target's format has an LLM path
(``lower_lm`` / ``open_lm`` in its backend). The flow: plan (uniform precision or a plan
file), lower with a static KV cache of ``max_context`` positions, check the artifact's
greedy tokens and next-token logits against eager transformers in the real runtime,
bundle the tokenizer, chat template and generation config, and write the directory
atomically with a manifest whose ``llm`` block describes the cache and the tokenizer.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError, ModelLoadError

DEFAULT_MAX_CONTEXT = 1024  # when neither --max-context nor the target's runtime.max_context says
VERIFY_PROMPTS = 4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "vocab.txt", "chat_template.jinja", "chat_template.json")


def lm_backend(fmt: str) -> Any:
    """The backend module for ``fmt`` if it exports decoder LLMs with a KV cache."""
    from edgeq.backends import get_backend

    try:
        be = get_backend(fmt)
    except ImportError:
        be = None
    if be is None or not hasattr(be, "lower_lm") or not hasattr(be, "open_lm"):
        raise ConfigError(f"this edgeq has no {fmt} export for decoder LLMs with a KV cache",
                          "use a target of format executorch")
    return be


def resolve_max_context(requested: int | None, tgt: Any, config: dict[str, Any], steps: Any) -> int:
    """``--max-context``, else the target's ``runtime.max_context``, else the default
    (capped at the model's positions, with a note); never above the model's positions."""
    from edgeq.models.hf_checks import max_positions

    positions = max_positions(config)
    target_value = getattr(tgt.runtime, "max_context", None)
    if requested is not None:
        value, source = requested, "--max-context"
    elif target_value is not None:
        value, source = target_value, f"target '{tgt.name}' runtime.max_context"
    else:
        value = min(DEFAULT_MAX_CONTEXT, positions or DEFAULT_MAX_CONTEXT)
        steps.note(f"max context {value} tokens (edgeq's default; set --max-context or the target's "
                   "runtime.max_context)")
        return value
    if value < 2:
        raise ConfigError(f"max context {value} ({source}) is too small", "give at least 2 positions")
    if positions is not None and value > positions:
        raise ConfigError(f"max context {value} ({source}) is above the model's {positions} positions "
                          "(max_position_embeddings)", f"pass --max-context {positions} or less")
    return value


def export_lm(loaded: Any, resolved: Any, *, precision: str, plan_input: Any, out_dir: Path, force: bool,
              protected: list[Path], max_context: int | None, steps: Any, strict: bool = False,
              budgets: Any = None, rules: list[str] | None = None, algorithms: list[str] | None = None,
              eval_text: Any = None, eval_tokens: int | None = None) -> Any:
    """Lower ``loaded`` (an edgeq ``LoadedModel`` of task causal-lm) for ``resolved``'s
    target, verify it and write the artifact; returns an ``edgeq.export.ExportResult``.

    ``budgets`` (``edgeq.planning.solve.Budgets``): plan per layer within them
    (``edgeq.llm.plan``) and fit the lowered file to them; else ``plan_input`` (a plan
    file) or one ``precision``. ``eval_text`` (``edgeq.llm.perplexity.read_eval_text``, else
    edgeq's held-out text) is scored up to ``eval_tokens`` tokens (0: not scored)."""
    from edgeq.artifact import clean_stale_staging, staged_dir, write_manifest
    from edgeq.export import ExportResult
    from edgeq.llm.perplexity import EVAL_TOKENS, export_windows, score_artifact
    from edgeq.manifest import Manifest
    from edgeq.profiling.runner import settle

    tgt = resolved.target
    be = lm_backend(tgt.format)
    model = causal_lm_of(loaded)
    be.check_lm(model.config.get_text_config())
    from edgeq.planning.costs import check_algorithm_names

    check_algorithm_names(algorithms or [], decoder_lm=True)
    context = resolve_max_context(max_context, tgt, loaded.config, steps)
    _check_delegates(be, tgt, steps, strict)
    tokenizer = source_tokenizer(loaded)
    # before any lowering work: a text that cannot be scored fails fast
    scoring = export_windows(tokenizer, eval_text, context, EVAL_TOKENS if eval_tokens is None else eval_tokens)
    if scoring is None and eval_tokens != 0:
        steps.note("no perplexity on held-out text: the model ships no tokenizer (or its context is too short)")
    costs = solved = None
    if budgets is not None:
        from edgeq.llm.plan import plan_lm

        costs, solved = plan_lm(loaded, resolved, budgets, context, rules=rules, steps=steps, algorithms=algorithms)
        plan, requested = _stripped(solved.plan, steps), "planned"
    else:
        plan, requested = _plan(loaded, tgt, precision, plan_input, steps)
    from edgeq.algorithms.calibrated import check_algorithms
    from edgeq.backends import check_stored

    check_stored(plan.schemes.values(), be)  # e.g. a GGUF-only int4-k in a plan for a .pte
    check_algorithms(loaded, plan.schemes.values(), be, tgt.format)  # before any lowering work
    # a format that writes the tokenizer into its model file (GGUF) takes it at lowering
    extra = {"tokenizer": tokenizer} if be.LM_TOKENIZER_IN_MODEL else {}
    for line in clean_stale_staging(out_dir):
        steps.note(line)
    smoothings: dict[int, Any] | None = None  # id of the module lowered from → its PlanSmoothing
    if be.LM_SMOOTHS:
        from edgeq.algorithms.smooth import PlanSmoothing, methods_offered

        methods = methods_offered(algorithms)
        if methods:
            smoothings = {}
        else:
            steps.note("no activation-aware scaling: --algorithms offers neither smoothquant nor awq")
    rotation = None
    if be.LM_ROTATES and (algorithms is None or "rotation" in algorithms):
        from edgeq.algorithms.rotate import PlanRotation
        from edgeq.llm.perplexity import next_token_kl

        rotation = PlanRotation(loaded, model, be, steps, next_token_kl)
    with staged_dir(out_dir, force, protected) as work:
        scratch = work / ".work"

        def lower(plan: Any, last: bool = False) -> Any:
            """``last``: no other plan is lowered, so the copies made for this one are its own."""
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            calibrated, record = _calibrated(loaded, model, be, plan, steps)
            # the rotated and smoothed copies compute the model's function; GPTQ layers keep their input
            base, turned = rotation.apply(plan, last) if rotation is not None else (model, None)
            mine = last and base is not model  # a rotated copy no other plan reads: scaled in place
            lm, smoothed = base, None
            if smoothings is not None:
                if id(base) not in smoothings:
                    smoothings[id(base)] = PlanSmoothing(loaded, base, be, steps, methods, in_place=mine)
                lm, smoothed = smoothings[id(base)].apply(plan)
            owned = lm is not base or mine  # a copy this lowering alone reads: quantized in place
            settle()  # what the measurements dropped goes back before the lowering's copies
            if not calibrated:
                lowered = be.lower_lm(lm, plan, scratch, context, steps, owned=owned, **extra)
            else:
                lowered = be.lower_lm(lm, plan, scratch, context, steps, calibrated=calibrated, owned=owned, **extra)
                lowered.algorithms = {f: r for f, r in record.items()
                                      if lowered.layer_schemes.get(f) == plan.schemes[f].name}
            lowered.smoothing, lowered.rotation = smoothed, turned
            return lowered

        if solved is not None:
            lowered, solved = _fit(costs, budgets, solved, lower, steps)
            plan = _stripped(solved.plan)
        else:
            lowered = lower(plan, last=True)
        rotation = smoothings = None  # their copies of the model (GBs for a 1B model) are done with
        settle()
        session = be.open_lm(lowered.model_file)
        try:
            from edgeq.llm import verify

            prompts, described = verify.verification_prompts(tokenizer, session.vocab_size, context, VERIFY_PROMPTS)
            with steps.step(f"Verifying greedy tokens ({len(prompts)} prompts)") as info:
                greedy, numerics = verify.check(model, session, prompts, described)
                info.detail = (f"{greedy.identical_prompts}/{greedy.prompts} identical, prefix match "
                               f"{greedy.prefix_match:.1%}; {numerics.short()}")
            if solved is not None:
                _check_verified(solved.predicted_error, numerics)
            held = None
            if scoring is not None:
                with steps.step(f"Perplexity on held-out text ({sum(len(w) - 1 for w in scoring[0])} tokens)") as info:
                    held = score_artifact(session, model, *scoring)
                    info.detail = (f"{held['perplexity']:.3f}, {held['reference_perplexity']:.3f} in transformers "
                                   f"({held['increase']:+.2%})")
        finally:
            session.close()
        model_file = work / lowered.model_file.name
        shutil.move(str(lowered.model_file), model_file)
        for extra in lowered.extra_files:
            shutil.move(str(extra), work / extra.name)
        shutil.rmtree(scratch)
        tokenizer_files = _bundle(loaded, model, work)
        manifest = _manifest(loaded, resolved, requested, plan, lowered, numerics, greedy, model, model_file,
                             work, tokenizer_files, steps)
        manifest["llm"]["perplexity"] = held
        manifest["llm"]["smoothing"] = lowered.smoothing
        manifest["llm"]["rotation"] = lowered.rotation
        manifest["llm"]["predicted_memory"] = _predicted_memory(Manifest.model_validate(manifest), model, steps)
        if solved is not None:
            manifest["plan"] = _plan_block(solved, costs, lowered, numerics)
        typed = Manifest.model_validate(manifest)
        write_manifest(work, typed)
    return ExportResult(artifact_dir=out_dir, manifest=typed)


# ------------------------------------------------------------------------- internals


def _calibrated(loaded: Any, model: Any, be: Any, plan: Any, steps: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """GPTQ results for the plan's calibrated layers (HF names), from the calibration text
    run through the fp32 model (cached: the planner computed the same ones)."""
    from edgeq.algorithms.calibrated import for_plan

    if not any(s.algorithm != "rtn" for s in plan.schemes.values()):
        return {}, {}
    awq = sorted(f for f, s in plan.schemes.items() if s.algorithm == "awq")
    if awq:
        from edgeq.errors import ConfigError

        raise ConfigError(f"{awq[0]}: a decoder LLM's AWQ is not planned per layer (its scale is searched "
                          "per fold at export, recorded in llm.smoothing)",
                          "plan it at int4-gN (AWQ scaling applies to it unless --algorithms leaves out awq)")
    with steps.step("GPTQ on the calibration text") as info:
        calibrated, record = for_plan(loaded, plan.schemes, be.gptq_grid(), module=model)
        first = next(iter(record.values()), {})
        info.detail = f"{len(calibrated)} linears, {first.get('samples', 0)} samples ({first.get('rows', 0)} tokens)"
    return calibrated, record


def _predicted_memory(manifest: Any, model: Any, steps: Any) -> dict[str, Any] | None:
    """Peak memory of generating up to the max context (``edgeq.llm.memory``), or None with a note."""
    from edgeq.errors import ArtifactError
    from edgeq.llm.memory import predict_lm_peak

    try:
        return predict_lm_peak(manifest, config=model.config.get_text_config().to_dict()).to_dict()
    except (ArtifactError, ConfigError) as exc:
        steps.note(f"no peak-memory prediction for this LLM ({exc})")
        return None


def causal_lm_of(loaded: Any) -> Any:
    """The transformers causal LM inside ``loaded``; ``ModelLoadError`` when it has no LM head."""
    inner = getattr(loaded.module, "model", None)
    if loaded.task != "causal-lm" or inner is None or not hasattr(inner, "get_output_embeddings") \
            or inner.get_output_embeddings() is None:
        raise ModelLoadError(f"{loaded.name} has no causal-LM head (task {loaded.task})",
                             "export a model whose architecture ends in ForCausalLM or LMHeadModel")
    return inner


def _check_delegates(be: Any, tgt: Any, steps: Any, strict: bool = False) -> None:
    """The backend's ``LM_DELEGATES`` (when it declares them) are the only ones its LLM
    path uses: one must be in the target's chain, and the others are named in a note
    (with ``--strict``, an error: the target asked for them)."""
    usable = tuple(be.LM_DELEGATES)
    if not usable:
        return
    if not any(d in usable for d in tgt.delegates):
        raise ConfigError(f"target '{tgt.name}' lists none of {', '.join(usable)}, which edgeq lowers decoder LLMs "
                          f"to for {tgt.format}", f"use a target whose delegates include {usable[0]}")
    others = [d for d in tgt.delegates if d not in usable]
    if others and strict:
        raise ConfigError(f"--strict: target '{tgt.name}' asks for {', '.join(others)}, which edgeq does not lower "
                          f"decoder LLMs to (only {', '.join(usable)})", "drop --strict to lower to "
                          f"{', '.join(usable)} alone, or use a target without {', '.join(others)}")
    if others:
        steps.note(f"decoder LLMs are lowered to {', '.join(usable)} only; the target's {', '.join(others)} "
                   "delegate(s) are not used")


def _plan(loaded: Any, tgt: Any, precision: str, plan_input: Any, steps: Any) -> tuple[Any, str]:
    """The plan on the Hugging Face model's layer names (the wrapper's minus ``model.``)."""
    from edgeq.planning.inventory import layer_inventory
    from edgeq.planning.plan import uniform_plan

    from edgeq.backends import get_backend

    layers = layer_inventory(loaded.module)
    be = get_backend(tgt.format)
    if plan_input is not None:
        from edgeq.planning.planfile import plan_from_file

        def cannot(layer: Any, scheme: Any) -> str:  # decoder LLMs' lowerings ship one kernel per scheme
            if scheme.kernel:
                return "decoder LLM lowerings ship one kernel per scheme: no kernel may be named"
            return be.scheme_fits(layer, scheme)

        wrapped, requested = plan_from_file(_on_wrapper_names(plan_input, layers), layers, cannot), "planned"
    else:
        scheme = be.LM_UNIFORM.get(precision)
        if scheme is not None:
            steps.note(f"--precision {precision} of a decoder LLM in {tgt.format} is {scheme.name} "
                       "for every layer that takes it")
        wrapped, requested = uniform_plan(layers, precision, int4_group=tgt.quantization.int4_group_size,
                                          keep_fp32=tgt.quantization.keep_fp32,
                                          excluded=tgt.quantization.exclude_schemes, scheme=scheme), precision
    return _stripped(wrapped, steps), requested


def _on_wrapper_names(plan_input: Any, layers: list[Any]) -> Any:
    """``plan_input`` with each layer on the loaded wrapper's name: a plan file may name
    layers as the manifest and the export's notes do (the Hugging Face model's names,
    ``model.layers.0.mlp.up_proj``) or as ``edgeq plan`` writes them (``model.model.…``)."""
    import dataclasses

    known = {x.fqn for x in layers}
    schemes: dict[str, Any] = {}
    lines: dict[Any, int] = {k: v for k, v in plan_input.lines.items() if not (isinstance(k, tuple) and k[:1] == ("layers",))}
    for fqn, scheme in plan_input.schemes.items():
        name = f"model.{fqn}" if fqn not in known and f"model.{fqn}" in known else fqn
        line = plan_input.lines.get(("layers", fqn), 1)
        if name in schemes:
            raise ConfigError(f"{plan_input.path}:{line}: layer '{fqn}' is planned twice (as "
                              f"'{name.removeprefix('model.')}' and '{name}')", "keep one of the two entries")
        schemes[name], lines[("layers", name)] = scheme, line
    return dataclasses.replace(plan_input, schemes=schemes, lines=lines)


def _stripped(wrapped: Any, steps: Any = None) -> Any:
    """A plan on the loaded wrapper's layer names (``model.…``) on the Hugging Face
    model's own names, its reasons shown as notes when ``steps`` is given."""
    from edgeq.planning.plan import QuantPlan

    strip = lambda fqn: fqn.removeprefix("model.")  # noqa: E731
    if steps is not None:
        for fqn, why in wrapped.reasons.items():
            steps.note(f"{strip(fqn)}: {why}")
    return QuantPlan(schemes={strip(f): s for f, s in wrapped.schemes.items()},
                     reasons={strip(f): r for f, r in wrapped.reasons.items()})


def _fit(costs: Any, budgets: Any, solved: Any, lower: Any, steps: Any) -> tuple[Any, Any]:
    """Lower the solved plan inside the budget-fitting loop (``edgeq.planning.fit``), then
    hold the result to the budgets: over them after the loop is an error, not a note."""
    from edgeq.errors import ExportError
    from edgeq.llm.plan import predicted_memory
    from edgeq.planning.fit import fit_to_budgets

    class _Fitted:  # what the loop reads of a lowering: its file and its planned arena
        def __init__(self, lowered: Any) -> None:
            self.lowered, self.model_file = lowered, lowered.model_file
            self.planned_activation_bytes = int(lowered.delegation.get("planned_activation_bytes") or 0) \
                or costs.activation_bytes

    def measure(fitted: Any) -> tuple[int, int]:
        return fitted.model_file.stat().st_size, predicted_memory(costs, current[0], fitted.lowered).total_bytes

    current = [solved.plan.schemes]

    def lower_wrapped(plan: Any) -> Any:
        current[0] = plan.schemes
        return _Fitted(lower(_stripped(plan)))

    fitted, solved = fit_to_budgets(costs, budgets, solved, lower_wrapped, measure, steps)
    size = fitted.model_file.stat().st_size
    if budgets.max_drop is None and size > budgets.storage_bytes:
        raise ExportError(f"the planned LLM artifact is {size / 1e6:.2f} MB, over the "
                          f"{budgets.storage_bytes / 1e6:g} MB budget ({budgets.sources['storage']}) after "
                          "re-planning", "raise --budget, or allow int4 on the target")
    peak = predicted_memory(costs, solved.plan.schemes, fitted.lowered).total_bytes
    if peak > budgets.memory_bytes:
        raise ExportError(f"the planned LLM's predicted peak memory is {peak / 1e6:.1f} MB, over the "
                          f"{budgets.memory_bytes / 1e6:g} MB memory budget ({budgets.sources['memory']})",
                          "raise --memory-budget, or lower --max-context")
    return fitted.lowered, solved


# A planned artifact whose verified KL is this far above the plan's prediction does not compute
# what the plan's stand-ins computed: a lowering defect, not a quantization loss.
VERIFIED_FACTOR, VERIFIED_SLACK_NATS = 10.0, 1.0


def _check_verified(predicted: float | None, numerics: Any) -> None:
    from edgeq.errors import ExportError

    verified = numerics.error("top1") if numerics else None
    if predicted is None or verified is None or verified <= VERIFIED_FACTOR * predicted + VERIFIED_SLACK_NATS:
        return
    raise ExportError(f"the planned artifact's next-token KL is {verified:.3f} nats against the {predicted:.4f} its plan "
                      f"predicted (top-1 agreement {numerics.top1_agreement:.0%}): it does not compute what the plan's "
                      "stand-ins did, so nothing was written",
                      "this is an edgeq defect: report it with the plan (edgeq plan -o FILE) and --debug output; "
                      "a uniform --precision avoids the mix meanwhile")


def _plan_block(solved: Any, costs: Any, lowered: Any, numerics: Any) -> dict[str, Any]:
    """The manifest's ``plan`` entry: what the plan was solved for and what it predicted."""
    from edgeq.llm.plan import predicted_memory

    return {
        "budget_bytes": solved.budget_bytes,
        "memory_budget_bytes": solved.memory_budget_bytes,
        "binding": solved.binding,
        "predicted_bytes": solved.predicted_bytes,
        "predicted_peak_memory_bytes": predicted_memory(costs, solved.plan.schemes, lowered).total_bytes,
        "predicted_error": solved.predicted_error,
        "verified_error": numerics.error("top1") if numerics else None,
        "error_metric": "KL(fp32 || artifact)",
    }


def source_tokenizer(loaded: Any) -> Any:
    """The source model's tokenizer (None when it ships none)."""
    if not any(rel in loaded.support_files for rel in ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")):
        return None
    from edgeq.models.hf import _load_tokenizer

    found = next(rel for rel in TOKENIZER_FILES if rel in loaded.support_files)
    return _load_tokenizer(loaded.support_files[found].parent)


def _bundle(loaded: Any, model: Any, work: Path) -> list[str]:
    """Copy the tokenizer, chat template, config and generation config into the artifact;
    write ``generation_config.json`` from the model when its directory has none."""
    for rel, src in loaded.support_files.items():
        dst = work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    if not (work / "generation_config.json").exists() and model.generation_config is not None:
        gen = model.generation_config.to_dict()
        gen.pop("cache_implementation", None)  # an export detail, not the user's generation setting
        import json

        (work / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    return sorted(rel for rel in TOKENIZER_FILES if (work / rel).exists())


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in (eos or [])]


def _has_chat_template(work: Path) -> bool:
    if (work / "chat_template.jinja").exists() or (work / "chat_template.json").exists():
        return True
    config = work / "tokenizer_config.json"
    if not config.exists():
        return False
    from edgeq.jsonio import read_json

    try:
        data = read_json(config)
    except Exception:  # a broken tokenizer config fails loudly in 'edgeq run'; here it just has no template
        return False
    return isinstance(data, dict) and bool(data.get("chat_template"))


def _manifest(loaded: Any, resolved: Any, requested: str, plan: Any, lowered: Any, numerics: Any, greedy: Any,
              model: Any, model_file: Path, work: Path, tokenizer_files: list[str], steps: Any) -> dict[str, Any]:
    from edgeq.artifact import file_table
    from edgeq.backends import EVERY_POSITION
    from edgeq.export import _versions
    from edgeq.planning.inventory import fp32_bytes, layer_inventory, layers_to_json
    from edgeq.manifest import MANIFEST_SCHEMA_VERSION

    tgt, profile = resolved.target, resolved.profile
    delegation = dict(lowered.delegation)
    head = delegation.pop("head", {})
    prefill = delegation.pop("prefill", "whole prompt in one call")
    logits = delegation.pop("logits", EVERY_POSITION)
    kv_layout = delegation.pop("kv_cache_layout", None)
    arena = int(delegation.pop("planned_activation_bytes", 0))
    counts: dict[str, int] = {}
    for s in lowered.layer_schemes.values():
        counts[s] = counts.get(s, 0) + 1
    fp32_size = fp32_bytes(model)
    size = model_file.stat().st_size
    cfg = model.config.get_text_config()
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_file": model_file.name,
        "target": {"name": tgt.name, "device": profile.name, "device_name": profile.display_name,
                   "format": tgt.format, "delegates": tgt.delegates, "threads": tgt.runtime.threads},
        "model": {
            "name": loaded.name, "source": loaded.source, "source_kind": loaded.source_kind, "task": loaded.task,
            "inputs": [{"name": "input_ids", "shape": [1, lowered.max_context], "dtype": "int64"},
                       {"name": "cache_position", "shape": [lowered.max_context], "dtype": "int64"}],
            "outputs": ["logits"],
        },
        "precision": {"requested": requested, "layer_counts": counts, "layers": lowered.layer_schemes,
                      "notes": plan.reasons, "inventory": layers_to_json(layer_inventory(model)),
                      "algorithms": getattr(lowered, "algorithms", None) or None},
        "sizes": {"fp32_weight_bytes": fp32_size, "artifact_bytes": size,
                  "ratio_to_fp32": round(size / fp32_size, 4) if fp32_size else None},
        "budgets": tgt.budgets.model_dump(),
        "delegation": {"used": lowered.delegates_used, **delegation},
        "memory": {"planned_activation_bytes": arena, "tokens": lowered.max_context, "attention_heads": None,
                   "folded_layers": {}, "budget_bytes": int(tgt.budgets.runtime_memory_mb * 1e6), "predicted": None},
        "numerics": numerics.to_dict(),
        "numerics_skipped": "",
        "files": file_table(work),
        "versions": _versions(),
        "timings_s": steps.timings,
        "notes": steps.notes,
        "llm": {
            "max_context": lowered.max_context, "kv_cache_dtype": lowered.kv_cache_dtype,
            "kv_cache_bytes": lowered.kv_cache_bytes, "vocab_size": int(cfg.vocab_size),
            "eos_token_ids": _eos_ids(model),
            "bos_token_id": int(cfg.bos_token_id) if getattr(cfg, "bos_token_id", None) is not None else None,
            "tokenizer_files": tokenizer_files, "chat_template": _has_chat_template(work),
            "prefill": prefill, "logits": logits, "kv_cache_layout": kv_layout, "head": head, "verification": greedy.to_dict(),
            "linear_compute": dict(getattr(lowered, "linear_compute", None) or {}) or None,
        },
    }
