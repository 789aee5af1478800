"""``export``: from a model source and a target to a verified artifact directory.

>>> from edgeq.export import export
>>> result = export("tests.tiny_models:tiny_mlp", "x86", output="dist/mlp-x86")  # doctest: +SKIP
>>> result.manifest.numerics.cosine_min > 0.99  # doctest: +SKIP
True
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq import __version__
from edgeq.artifact import (
    check_output,
    clean_stale_staging,
    file_table,
    staged_dir,
    write_manifest,
)
from edgeq.errors import ExportError
from edgeq.planning.inventory import layers_to_json
from edgeq.manifest import MANIFEST_SCHEMA_VERSION, Manifest
from edgeq.planning.solve import BudgetError
from edgeq.progress import Steps
from edgeq.targets.schema import PRECISIONS


@dataclass(frozen=True)
class ExportResult:
    artifact_dir: Path
    manifest: Manifest


def export(
    model: str | Path,
    target: str | Path,
    *,
    precision: str | None = None,
    output: str | Path | None = None,
    force: bool = False,
    task: str | None = None,
    strict: bool = False,
    seq_len: int | None = None,
    samples: int = 32,
    trust_remote_code: bool = False,
    show_progress: bool = False,
    plan_file: str | Path | None = None,
    budget_bytes: int | None = None,
    memory_budget_bytes: int | None = None,
    max_drop: float | None = None,
    rules: list[str] | None = None,
    calib: str | Path | None = None,
    max_context: int | None = None,
    algorithms: list[str] | None = None,
    latency_budget_ms: float | None = None,
    eval_text: str | Path | None = None,
    eval_tokens: int | None = None,
) -> ExportResult:
    """Quantize ``model`` for ``target``, lower it, verify it in its runtime, write the artifact.

    Precision comes from, in order: ``plan_file`` (a plan YAML), a planned mix when
    ``budget_bytes``, ``max_drop`` or ``rules`` are given, else ``precision`` (default:
    the target's) for every layer. A causal LM is exported with a KV cache of
    ``max_context`` positions by ``edgeq.llm.export.export_lm``. ``algorithms``: for a
    planned mix, the calibrated algorithms offered besides RTN (default: every one the
    format stores, e.g. GPTQ; ``["rtn"]``: RTN only). ``latency_budget_ms`` (else the
    target's ``budgets.latency_ms``) plans within a predicted whole-model p50; a target
    with ``objective: balanced`` plans (instead of one precision) when no precision is
    given. The artifact's p50 measured here is recorded beside the plan's prediction.
    A causal LM's perplexity on held-out text (``eval_text``, a UTF-8 file, else edgeq's
    own; its first ``eval_tokens`` tokens, 0: none) is recorded in the manifest.
    """
    from edgeq.targets import load_target

    steps = Steps(show=show_progress)
    resolved = load_target(target)
    tgt = resolved.target
    planned = (plan_file is not None or budget_bytes is not None or memory_budget_bytes is not None
               or max_drop is not None or bool(rules) or latency_budget_ms is not None)
    if planned and precision is not None:
        from edgeq.errors import ConfigError

        raise ConfigError("--precision cannot be combined with --plan, --budget, --memory-budget, --max-drop, "
                          "--latency-budget or --rule",
                          "use --precision for one precision everywhere, or the others for a per-layer plan")
    # A target's balanced objective makes its default export a plan (the fastest near the most accurate).
    by_target = not planned and precision is None and plan_file is None and tgt.objective == "balanced"
    # Else the target's default precision, and its quantization.default_rules on top (e.g. x86's kernels).
    by_rules = not planned and precision is None and not by_target and bool(tgt.quantization.default_rules)
    if tgt.quantization.default_rules:
        from edgeq.planning.rules import check_default_rules

        check_default_rules(tgt)  # the format's schemes and kernels, before the model loads
    planned = planned or by_target
    precision = "planned" if planned else _check_precision(precision, tgt)
    # Everything that can be checked without the model is checked before it loads.
    plan_input = None
    if plan_file is not None:
        from edgeq.planning.planfile import read_plan_file

        plan_input = read_plan_file(Path(plan_file), tgt)
    if rules:
        from edgeq.planning.rules import check_rules

        check_rules(rules)
    if algorithms:
        from edgeq.planning.costs import check_algorithm_names

        check_algorithm_names(algorithms, decoder_lm=True)  # the names, before any slow step
    if calib is not None and not Path(calib).exists():
        from edgeq.errors import ConfigError

        raise ConfigError(f"--calib {calib}: no such file or directory", "pass a .txt, .npz or a directory of them / images")
    held_text = None
    if eval_text is not None:
        from edgeq.llm.perplexity import read_eval_text

        held_text = read_eval_text(eval_text)
    protected = [Path(str(model)).expanduser()] if Path(str(model)).expanduser().exists() else []
    out_dir = Path(output) if output is not None else None
    if out_dir is not None:
        check_output(out_dir, force, protected)  # fail before the slow steps

    # Stage: load and prepare (layers, graph facts and the fp32 probe are taken once).
    loaded = _load(model, task, seq_len or tgt.seq_len, trust_remote_code, calib, steps)
    if out_dir is None:
        out_dir = Path("dist") / _safe_name(f"{loaded.name}-{tgt.name}")
        check_output(out_dir, force, protected)
    if loaded.task == "causal-lm":  # a decoder LLM: KV-cache export, generation-checked
        from edgeq.llm.export import export_lm
        from edgeq.planning.solve import Budgets
        from edgeq.plans import lm_budgets

        if by_target:  # a target's objective is for encoders; an LLM's default stays one precision
            planned, precision = False, _check_precision(None, tgt)
        if by_rules:
            steps.note(f"target {tgt.name}'s quantization.default_rules are for encoders; this causal LM is "
                       f"exported at {precision}")
        budgets = None
        if planned and plan_input is None:
            budgets = lm_budgets(Budgets.for_target(tgt, storage_bytes=budget_bytes, memory_bytes=memory_budget_bytes,
                                                    max_drop=max_drop, latency_ms=latency_budget_ms), tgt, steps)
        return export_lm(loaded, resolved, precision=precision, plan_input=plan_input, out_dir=out_dir, force=force,
                         protected=protected, max_context=max_context, steps=steps, strict=strict,
                         budgets=budgets, rules=rules, algorithms=algorithms, eval_text=held_text,
                         eval_tokens=eval_tokens)
    if algorithms:
        from edgeq.planning.costs import check_algorithm_names

        check_algorithm_names(algorithms, decoder_lm=False)
    for given, flag in ((max_context, "--max-context"), (eval_text, "--eval-text"), (eval_tokens, "--eval-tokens")):
        if given is not None:
            from edgeq.errors import ConfigError

            raise ConfigError(f"{flag} applies to causal LMs only", f"drop it for this {loaded.task} model")
    for line in clean_stale_staging(out_dir):
        steps.note(line)

    from edgeq.backends import get_backend
    from edgeq.planning.prepare import prepare
    from edgeq.planning.solve import Budgets

    prepared = prepare(loaded, resolved)
    budgets = Budgets.for_target(tgt, storage_bytes=budget_bytes, memory_bytes=memory_budget_bytes, max_drop=max_drop,
                                 latency_ms=latency_budget_ms, rules=rules)
    if planned and plan_input is None:
        from edgeq.planning.latency import applicable

        budgets = applicable(budgets, prepared, steps)
    # Stage: plan (measured costs, then a pure solve) — or the plan file, or one precision.
    costs = predicted = None
    if plan_input is not None:
        from edgeq.planning.planfile import plan_from_file

        plan = plan_from_file(plan_input, prepared.layers, get_backend(tgt.format).scheme_fits)
    elif planned:
        from edgeq.planning.costs import measure_costs
        from edgeq.planning.planner import solve_step

        costs = measure_costs(prepared, rules=rules, steps=steps, algorithms=algorithms, latency=budgets.wants_latency,
                              precisions=budgets.families)
        predicted = solve_step(costs, budgets, steps)
        plan = predicted.plan
    else:
        from edgeq.planning.plan import uniform_plan

        plan = uniform_plan(prepared.layers, precision, int4_group=tgt.quantization.int4_group_size,
                            keep_fp32=tgt.quantization.keep_fp32,
                            excluded=tgt.quantization.exclude_schemes)
        if by_rules:
            from edgeq.planning.rules import with_default_rules

            uniform = plan.schemes
            plan, notes = with_default_rules(plan, prepared.layers, tgt.quantization.default_rules, tgt.name,
                                             get_backend(tgt.format).scheme_fits, tgt.quantization.keep_fp32)
            for line in notes:
                steps.note(line)
            if plan.schemes != uniform:
                precision = "planned"  # per layer, as a plan file's export (the manifest lists each layer)
    for fqn, why in plan.reasons.items():
        steps.note(f"{fqn}: {why}")
    from edgeq.algorithms.calibrated import check_algorithms
    from edgeq.backends import check_stored

    check_stored(plan.schemes.values(), get_backend(tgt.format))  # e.g. a GGUF-only int4-k in a plan for a .pte
    check_algorithms(loaded, plan.schemes.values(), get_backend(tgt.format), tgt.format)  # before any lowering

    with steps.step("Preparing held-out inputs") as info:
        heldout = loaded.make_inputs("heldout", samples)
        reference = _eager_outputs(loaded, heldout)
        info.detail = f"{len(heldout)} × ({loaded.inputs_description})"

    be = get_backend(tgt.format)
    from edgeq.algorithms.smooth_encoder import encoder_methods, smooth_encoder

    methods = encoder_methods(algorithms)
    with staged_dir(out_dir, force, protected) as work:
        scratch = work / ".work"

        def lower(plan: Any) -> Any:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            # per-tensor int8 linears read their input divided by a searched scale (the same function)
            smoothed, record = smooth_encoder(loaded, plan.schemes, be, steps, methods)
            lowered = be.lower(smoothed, tgt, plan, scratch, steps, strict, resolved.profile)
            lowered.smoothing = record
            return lowered

        def measure(lowered: Any) -> tuple[int, int]:
            return lowered.model_file.stat().st_size, _predict_memory(prepared, lowered).total_bytes

        # Stage: lower — for a solved plan, inside the budget-fitting loop (edgeq.planning.fit).
        if predicted is not None:
            from edgeq.planning.fit import fit_to_budgets

            lowered, predicted = fit_to_budgets(costs, budgets, predicted, lower, measure, steps)
        else:
            lowered = lower(plan)
        estimate = _predict_memory(prepared, lowered)
        _check_budgets(lowered, estimate, budgets, predicted is not None, memory_budget_bytes is not None, tgt)
        # Stage: verify in the real runtime.
        numerics = _verify(be, lowered, heldout, reference, loaded, tgt, steps)
        # Stage: write.
        model_file = work / lowered.model_file.name
        shutil.move(str(lowered.model_file), model_file)
        for extra in lowered.extra_files:  # e.g. ops.json: the per-op graph emulated profiling reads
            shutil.move(str(extra), work / extra.name)
        shutil.rmtree(scratch)
        _copy_support_files(loaded, work)
        manifest = _manifest(loaded, resolved, precision, plan, lowered, numerics, prepared.fp32_weight_bytes,
                             model_file, work, steps)
        manifest["precision"]["inventory"] = layers_to_json(prepared.layers)
        manifest["memory"].update({
            "tokens": prepared.tokens, "attention_heads": prepared.attention_heads,
            "folded_layers": lowered.folded_layers,
            "budget_bytes": budgets.memory_bytes,
            "predicted": {**estimate.to_dict(), "estimate": True,
                          "peak_rss_with_python_runtime_bytes": estimate.peak_rss_bytes()},
        })
        if predicted is not None:
            manifest["plan"] = {
                "budget_bytes": predicted.budget_bytes,
                "memory_budget_bytes": predicted.memory_budget_bytes,
                "binding": predicted.binding,
                "predicted_bytes": predicted.predicted_bytes,
                "predicted_peak_memory_bytes": predicted.memory.total_bytes if predicted.memory else None,
                "predicted_error": predicted.predicted_error,
                "verified_error": numerics.error(loaded.metric) if numerics else None,
                "error_metric": "1 - cosine" if loaded.metric == "cosine" else "KL(fp32 || artifact)",
            }
            if predicted.predicted_latency_ms is not None:
                manifest["plan"].update(_latency_record(be, predicted, model_file, loaded, tgt, steps))
        # A field of the wrong type here is an edgeq bug; it fails before anything is written.
        typed = Manifest.model_validate(manifest)
        _check_storage_budget(typed, tgt)
        write_manifest(work, typed)
    return ExportResult(artifact_dir=out_dir, manifest=typed)


def _latency_record(be: Any, predicted: Any, model_file: Path, loaded: Any, tgt: Any, steps: Steps) -> dict[str, Any]:
    """The plan's predicted p50 beside the artifact's measured here, timed as its layers were.

    When the layers were timed here, the fp32 graph their figures anchor on
    (``LatencyCosts.reference_ms``) is timed again, in turn with the artifact: a shared
    host's speed moves by a quarter within minutes, and the ratio of the two reference
    timings says how far it moved since the layers were timed (the prediction at the
    host's speed now is the prediction times that ratio)."""
    import tempfile

    from edgeq.planning.latency import host_threads

    costs, predicted_ms = predicted.latency, predicted.predicted_latency_ms
    with steps.step("Timing the artifact") as info, tempfile.TemporaryDirectory(prefix="edgeq-reference-") as tmp:
        files = [model_file]
        if costs.reference_ms:
            files.append(be.write_latency_reference(loaded.module, loaded.example_inputs, Path(tmp)))
        measured, *reference_now = be.time_artifacts(files, loaded.example_inputs, host_threads(tgt.runtime.threads))
        info.detail = (f"p50 {measured:.2f} ms measured here, {predicted_ms:.2f} ms predicted "
                       f"({measured / predicted_ms - 1:+.0%})")
        if reference_now:
            now = predicted_ms * reference_now[0] / costs.reference_ms
            info.detail += (f"; the fp32 graph {costs.reference_ms:.2f} ms when the layers were timed, "
                            f"{reference_now[0]:.2f} ms now: {now:.2f} ms predicted at this speed "
                            f"({measured / now - 1:+.0%})")
    return {"objective": predicted.objective, "latency_budget_ms": predicted.latency_budget_ms,
            "predicted_latency_ms": round(predicted_ms, 4), "measured_latency_ms": round(measured, 4),
            "latency_source": costs.source,
            "latency_reference_ms": round(costs.reference_ms, 4) if costs.reference_ms else None,
            "latency_reference_now_ms": round(reference_now[0], 4) if reference_now else None}


def _load(model: str | Path, task: str | None, seq_len: int, trust_remote_code: bool, calib: Any,
          steps: Steps) -> Any:
    from edgeq.models import load_model

    with steps.step("Loading model") as info:
        loaded = load_model(model, task, seq_len=seq_len, trust_remote_code=trust_remote_code)
        info.detail = f"{loaded.name} ({loaded.task}, from {loaded.source_kind})"
        if calib is not None:
            from edgeq.models.calib import with_calibration

            loaded = with_calibration(loaded, calib)
            info.detail += f"; calibration: {loaded.config['calibration']}"
    for line in loaded.notes:
        steps.note(line)
    return loaded


def _check_budgets(lowered: Any, estimate: Any, budgets: Any, solved: bool, memory_from_flag: bool, tgt: Any) -> None:
    """The lowered artifact against the budgets it was planned for (and the memory budget
    always: a uniform precision can be over it too)."""
    size = lowered.model_file.stat().st_size
    if solved and budgets.max_drop is None and size > budgets.storage_bytes:
        raise ExportError(f"the artifact is {size / 1e6:.2f} MB, over the {budgets.storage_bytes / 1e6:g} MB budget",
                          "raise --budget a little; the smallest plan's size is printed by 'edgeq plan'")
    if estimate.total_bytes > budgets.memory_bytes:
        source = "--memory-budget" if memory_from_flag else f"target '{tgt.name}' budgets.runtime_memory_mb"
        raise BudgetError(
            f"predicted peak memory {estimate.total_bytes / 1e6:.1f} MB (weights {estimate.weights_bytes / 1e6:.1f} + "
            f"activations {estimate.activation_bytes / 1e6:.1f} + runtime {estimate.runtime_overhead_bytes / 1e6:.1f})"
            f" is over the {budgets.memory_bytes / 1e6:g} MB memory budget ({source})",
            "plan to the budget with --budget/--memory-budget (or a lower --precision), or shorten --seq-len",
        )


def _predict_memory(prepared: Any, lowered: Any) -> Any:
    """The memory model's prediction for the lowered artifact (its real schemes and arena)."""
    from edgeq.planning.memory import predict_peak, with_folded, with_tied_head
    from edgeq.schemes import applied

    loaded, fmt = prepared.loaded, prepared.fmt
    pairs = with_folded([(x, applied(lowered.layer_schemes.get(x.fqn, "fp32"))) for x in prepared.layers],
                        lowered.folded_layers)
    pairs = with_tied_head(fmt, pairs, loaded.config, loaded.task)
    return predict_peak(fmt, pairs, nonlayer_bytes=prepared.other_bytes, tokens=prepared.tokens,
                        attention_heads=prepared.attention_heads,
                        planned_activation_bytes=lowered.planned_activation_bytes)


def _check_precision(precision: str | None, tgt: Any) -> str:
    from edgeq.errors import ConfigError, did_you_mean

    if precision is None:
        return tgt.default_precision
    precision = precision.lower()  # INT8 means int8
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'{did_you_mean(precision, PRECISIONS)}",
                          f"choose one of: {', '.join(PRECISIONS)}")
    if precision not in tgt.precisions:
        raise ConfigError(
            f"target '{tgt.name}' does not allow precision {precision} (allowed: {', '.join(tgt.precisions)})",
            "pick an allowed precision, or a target that allows it",
        )
    return precision


def _safe_name(name: str) -> str:
    """A directory name from a model and target name (no path separators, no leading dot)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip(".-")[:120] or "artifact"


def _eager_outputs(loaded: Any, inputs: list[tuple[Any, ...]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [_first(loaded.eager(*row)).float().numpy() for row in inputs]


def _first(out: Any) -> Any:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _verify(be: Any, lowered: Any, heldout: list, reference: list, loaded: Any, tgt: Any, steps: Steps) -> Any:
    from edgeq.numerics import compare

    with_top1 = loaded.metric == "top1"
    if lowered.runnable_here:
        path, runtime = lowered.model_file, lowered.runtime
    elif lowered.reference_file is not None:
        path, runtime = lowered.reference_file, lowered.reference_runtime
        steps.note(f"{lowered.not_runnable_reason}; numerics were measured on {runtime}")
    else:
        steps.note(f"numerics not verified: {lowered.not_runnable_reason}")
        return None
    with steps.step(f"Verifying numerics ({len(heldout)} inputs)") as info:
        outputs = be.run(path, heldout, tgt.runtime.threads)
        result = compare(reference, outputs, with_top1=with_top1, inputs=loaded.inputs_description, runtime=runtime)
        info.detail = result.short()
    return result


def _copy_support_files(loaded: Any, work: Path) -> None:
    for rel, src in loaded.support_files.items():
        dst = work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _manifest(loaded: Any, resolved: Any, precision: str, plan: Any, lowered: Any, numerics: Any,
              fp32_size: int, model_file: Path, work: Path, steps: Steps) -> dict[str, Any]:
    """The manifest's fields in JSON order; ``export`` adds the inventory, memory and plan
    blocks and validates the whole as a ``Manifest``."""
    tgt, profile = resolved.target, resolved.profile
    files = file_table(work)
    counts: dict[str, int] = {}
    for s in lowered.layer_schemes.values():
        counts[s] = counts.get(s, 0) + 1
    artifact_bytes = model_file.stat().st_size
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_file": model_file.name,
        "target": {
            "name": tgt.name, "device": profile.name, "device_name": profile.display_name,
            "format": tgt.format, "delegates": tgt.delegates, "threads": tgt.runtime.threads,
        },
        "model": {
            "name": loaded.name, "source": loaded.source, "source_kind": loaded.source_kind, "task": loaded.task,
            "inputs": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                       for n, t in zip(loaded.input_names, loaded.example_inputs)],
            "outputs": loaded.output_names,
        },
        "precision": {
            "requested": precision,
            "layer_counts": counts,
            "layers": lowered.layer_schemes,
            "notes": plan.reasons,
            "algorithms": lowered.algorithms or None,
            "smoothing": lowered.smoothing,
        },
        "sizes": {
            "fp32_weight_bytes": fp32_size,
            "artifact_bytes": artifact_bytes,
            "ratio_to_fp32": round(artifact_bytes / fp32_size, 4) if fp32_size else None,
        },
        "budgets": tgt.budgets.model_dump(),
        "delegation": {"used": lowered.delegates_used, **lowered.delegation},
        "memory": {"planned_activation_bytes": lowered.planned_activation_bytes},
        "numerics": numerics.to_dict() if numerics else None,
        "numerics_skipped": "" if numerics else lowered.not_runnable_reason,
        "files": files,
        "versions": _versions(),
        "timings_s": steps.timings,
        "notes": steps.notes,
    }


def _check_storage_budget(manifest: Manifest, tgt: Any) -> None:
    size = manifest.sizes.artifact_bytes
    budget = tgt.budgets.storage_mb * 1e6
    if size > budget:
        raise ExportError(
            f"the artifact is {size / 1e6:.1f} MB, over target '{tgt.name}' storage budget of {tgt.budgets.storage_mb:g} MB",
            "choose a lower --precision, or a target (or 'extends:' override) with a larger budgets.storage_mb",
        )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"edgeq": __version__, "python": platform.python_version()}
    for pkg in ("torch", "executorch", "torchao", "onnx", "onnxruntime", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
