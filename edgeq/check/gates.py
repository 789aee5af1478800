"""The in-process gates: integrity, fit, fidelity, delegation and latency.

Each gate takes what it needs (the artifact's ``ManifestView``, its limits, optional
fresh measurements) and returns a ``GateResult`` with the figure beside the limit and
the limit's source. Runtimes and source models are imported once per process, so
checking many artifacts shares one import (``SourceModels`` caches loaded models).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.check.limits import Limit, Limits
from edgeq.check.manifest_view import ManifestError, ManifestView, view
from edgeq.check.results import GateResult, fmt_bytes
from edgeq.errors import ArtifactError, EdgeqError, ModelLoadError

# Delegates whose artifacts need hardware or an SDK this host may not have.
_NOT_RUNNABLE_HERE = {"qnn", "coreml", "vulkan"}


def integrity(path: Path) -> tuple[GateResult, ManifestView | None, Path | None]:
    """Every file matches its sha256 and size, the manifest is well formed, the model loads."""
    from edgeq.profiling import check_artifact

    try:
        try:  # the manifest's shape first: a field of the wrong kind is named, not met deep in a reader
            raw = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            raw = None  # check_artifact says what is wrong with the file
        if isinstance(raw, dict) and raw.get("schema_version") in (1, 2):
            view(raw)
        manifest, model_file = check_artifact(path)
        mv = view(manifest)
    except ArtifactError as exc:
        return GateResult("integrity", "fail", exc.one_line(), figure="mismatch", limit="sha256 and size as recorded",
                          source="manifest files"), None, None
    except ManifestError as exc:
        return GateResult("integrity", "fail", f"{path}/manifest.json: {exc}", figure="invalid manifest",
                          limit="manifest schema v2", source="manifest"), None, None
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # a field of the wrong kind, met while reading
        return GateResult("integrity", "fail", f"{path}/manifest.json: a field has the wrong kind "
                          f"({type(exc).__name__}: {str(exc)[:120]})", figure="invalid manifest",
                          limit="manifest schema v2", source="manifest"), None, None
    if mv.model_file not in mv.files:
        return GateResult("integrity", "fail", f"{path}: the manifest records no sha256 for {mv.model_file}",
                          figure="unrecorded model file", limit="sha256 and size as recorded",
                          source="manifest files"), None, None
    from edgeq.backends import get_backend as backend

    if not set(mv.delegates_used) & _NOT_RUNNABLE_HERE:
        try:
            backend(mv.format).run(model_file, [], mv.threads)  # load only: no inputs
        except ArtifactError as exc:
            return GateResult("integrity", "fail", exc.one_line(), figure="does not load",
                              limit=f"loads in {mv.format}", source="runtime"), mv, model_file
        loaded = f"loads in {mv.format}"
    else:
        loaded = f"not loaded: {', '.join(mv.delegates_used)} cannot run here"
    n = len(mv.files)
    return GateResult("integrity", "pass", f"{n} file(s) match their sha256 and size; {loaded}",
                      figure=f"{n} files ok", limit="sha256 and size as recorded", source="manifest files",
                      details={"files": sorted(mv.files), "runtime_load": loaded}), mv, model_file


def fit(mv: ManifestView, model_file: Path, limits: Limits, measured: dict[str, Any] | None) -> GateResult:
    """Bytes on disk ≤ storage budget; predicted (and, measured, fresh-process) peak memory ≤ memory budget."""
    storage, memory = limits.storage_bytes, limits.memory_bytes
    size = model_file.stat().st_size
    parts: list[tuple[bool, str]] = [(size <= storage.value,
                                      f"file {fmt_bytes(size)} {'<=' if size <= storage.value else '>'} "
                                      f"{fmt_bytes(storage.value)} storage budget ({storage.source})")]
    details: dict[str, Any] = {"file_bytes": size, "storage_budget_bytes": storage.value,
                               "memory_budget_bytes": memory.value}
    if mv.is_llm:
        from edgeq.check import llm_gates

        predicted = llm_gates.predicted_peak(model_file.parent)
        scenario = f" generating to the {mv.llm_max_context}-token context"
    else:
        predicted = _predicted_peak(model_file.parent) if mv.has_layer_inventory else \
            "the manifest records no layer inventory; re-export with this edgeq"
        scenario = ""
    if isinstance(predicted, str):
        parts.append((True, f"predicted peak memory not available ({predicted})"))
    else:
        total, with_python = predicted
        details.update(predicted_peak_bytes=total, predicted_peak_rss_with_python_bytes=with_python)
        ok = total <= memory.value
        parts.append((ok, f"predicted peak memory{scenario} {fmt_bytes(total)} {'<=' if ok else '>'} "
                          f"{fmt_bytes(memory.value)} memory budget ({memory.source})"))
    if measured is not None:
        rss = int((measured.get("memory") or {}).get("peak_rss_bytes") or 0)
        details["measured_peak_rss_bytes"] = rss
        ok = rss <= memory.value
        beside = f" (predicted with the Python runtime: {fmt_bytes(details['predicted_peak_rss_with_python_bytes'])})" \
            if "predicted_peak_rss_with_python_bytes" in details else ""
        parts.append((ok, f"measured peak RSS of a fresh process {fmt_bytes(rss)} {'<=' if ok else '>'} "
                          f"{fmt_bytes(memory.value)}{beside}"))
    failed = [text for ok, text in parts if not ok]
    status = "fail" if failed else "pass"
    figure = fmt_bytes(size) + (f", peak {fmt_bytes(details['predicted_peak_bytes'])}"
                                if "predicted_peak_bytes" in details else "")
    return GateResult("fit", status, "; ".join(failed or [t for _, t in parts]), figure=figure,
                      limit=f"<= {fmt_bytes(storage.value)} / {fmt_bytes(memory.value)}",
                      source=f"{storage.source}; {memory.source}", details=details)


def _predicted_peak(root: Path) -> tuple[int, int] | str:
    # Only with the recorded layer inventory: without it the prediction would import the model source.
    from edgeq.planning.memory import predict_from_artifact

    try:
        est = predict_from_artifact(root)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"the manifest's memory fields are unreadable: {type(exc).__name__}"
    return int(est.total_bytes), int(est.peak_rss_bytes())


@dataclass
class SourceModels:
    """Source models loaded once per process and shared by every artifact that names them."""

    samples: int = 32
    _cache: dict[tuple[str, str, int | None], Any] = field(default_factory=dict)

    def reference(self, source: str, task: str, seq_len: int | None) -> tuple[Any, list, list]:
        """``(loaded, held-out inputs, eager FP32 outputs)`` for a source, computed once."""
        key = (source, task, seq_len)
        if key not in self._cache:
            import torch

            from edgeq.models import load_model

            loaded = load_model(source, task, seq_len=seq_len or 128)
            heldout = loaded.make_inputs("heldout", self.samples)
            with torch.no_grad():
                reference = [_first(loaded.eager(*row)).float().numpy() for row in heldout]
            self._cache[key] = (loaded, heldout, reference)
        return self._cache[key]


def _first(out: Any) -> Any:
    """The first tensor of a model's output (a tuple or list of outputs, nested or not)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def fidelity(mv: ManifestView, model_file: Path, limits: Limits, models: SourceModels,
             model_override: str | None) -> GateResult:
    """Re-measure the artifact against eager FP32 on held-out inputs, now, in its runtime."""
    from edgeq.models import METRICS

    if mv.is_llm:
        from edgeq.check import llm_gates

        why_not = "" if model_override is not None else _why_not_manifest_source(mv)
        return llm_gates.fidelity(mv, model_file, limits, model_override or mv.model_source, why_not)

    metric = METRICS.get(mv.task, "cosine")
    wanted = limits.fidelity_cosine if metric == "cosine" else limits.fidelity_top1
    if model_override is None:
        reason = _why_not_manifest_source(mv)
        if reason:
            return GateResult("fidelity", "skipped", reason, limit=_limit_text(metric, wanted), source=wanted.source)
    if set(mv.delegates_used) & _NOT_RUNNABLE_HERE:
        return GateResult("fidelity", "skipped", f"the artifact's delegates ({', '.join(mv.delegates_used)}) cannot run "
                          "on this machine, so its numerics cannot be re-measured here", source=wanted.source)
    source = model_override or mv.model_source
    try:
        loaded, heldout, reference = models.reference(source, mv.task, mv.seq_len)
    except ModelLoadError as exc:
        if model_override is not None:
            raise  # the user's own --model: bad input
        return GateResult("fidelity", "skipped", f"the source model {source} cannot be loaded ({exc.one_line()})",
                          limit=_limit_text(metric, wanted), source=wanted.source)
    from edgeq.backends import get_backend as backend
    from edgeq.numerics import compare

    try:
        outputs = backend(mv.format).run(model_file, heldout, mv.threads)
        numerics = compare(reference, outputs, with_top1=metric == "top1", inputs=loaded.inputs_description,
                           runtime=mv.format)
    except (EdgeqError, ValueError, RuntimeError) as exc:
        return GateResult("fidelity", "fail", f"the artifact does not run on the source model's held-out inputs "
                          f"({str(exc).splitlines()[0][:200]})", figure="does not run",
                          limit=_limit_text(metric, wanted), source=wanted.source)
    details = numerics.to_dict()
    checks: list[tuple[bool, str]] = []
    if metric == "cosine":
        v = numerics.cosine_min
        checks.append((v >= wanted.value, f"worst cosine {v:.6f} {'>=' if v >= wanted.value else '<'} "
                                          f"{wanted.value:g} ({wanted.source})"))
        figure = f"cosine min {v:.6f}"
    else:
        top1_checks, figure = logit_checks(numerics, limits)
        checks += top1_checks
    failed = [t for ok, t in checks if not ok]
    text = "; ".join(failed or [t for _, t in checks]) + f" over {numerics.samples} held-out inputs vs eager FP32"
    return GateResult("fidelity", "fail" if failed else "pass", text, figure=figure,
                      limit=_limit_text(metric, wanted), source=wanted.source, details=details)


def logit_checks(numerics: Any, limits: Limits, what: str = "top-1 agreement") -> tuple[list[tuple[bool, str]], str]:
    """(ok, text) for top-1 agreement ≥ the limit and, when both are known, mean KL ≤ its
    limit; and the gate's figure."""
    wanted, kl = limits.fidelity_top1, limits.fidelity_kl
    v = numerics.top1_agreement or 0.0
    checks = [(v >= wanted.value, f"{what} {v:.2%} {'>=' if v >= wanted.value else '<'} "
                                  f"{wanted.value:.2%} ({wanted.source})")]
    figure = f"top-1 {v:.2%}"
    if kl is not None and numerics.kl_mean is not None:
        ok = numerics.kl_mean <= kl.value
        checks.append((ok, f"mean KL {numerics.kl_mean:.4g} {'<=' if ok else '>'} {kl.value:g} ({kl.source})"))
        figure += f", KL {numerics.kl_mean:.4g}"
    return checks, figure


def fidelity_figure(result: GateResult) -> float | None:
    """The gate's main metric (worst cosine, or top-1 agreement) for baselines."""
    d = result.details
    if not d:
        return None
    return d.get("top1_agreement") if d.get("top1_agreement") is not None else d.get("cosine_min")


def _why_not_manifest_source(mv: ManifestView) -> str:
    if not mv.model_source:
        return "the manifest records no model source (pass --model to re-measure fidelity)"
    if mv.model_source_kind in ("factory", "hub"):
        # A factory is code: a manifest (untrusted input) must not make edgeq import it.
        # A hub id needs the network, which CI runners may not have.
        what = "a Python factory, which edgeq does not import on a manifest's word" if mv.model_source_kind == "factory" \
            else "a Hugging Face Hub id"
        return f"the manifest's model source {mv.model_source} is {what} (pass --model to re-measure fidelity)"
    if not Path(mv.model_source).exists():
        return f"the manifest's model source {mv.model_source} is not on this machine (pass --model to re-measure fidelity)"
    return ""


def _limit_text(metric: str, limit: Limit) -> str:
    return f"cosine min >= {limit.value:g}" if metric == "cosine" else f"top-1 >= {limit.value:.0%}"


def delegation(mv: ManifestView, limits: Limits) -> GateResult:
    """Share of ops on the intended delegate ≥ limit; portable ops listed; skipped delegates named."""
    from edgeq.backends import get_backend

    intended = limits.delegate
    key = get_backend(mv.format).delegation_key(intended)
    on_delegate = mv.delegated_ops.get(key, 0)
    total = sum(mv.delegated_ops.values()) + sum(mv.portable_ops.values())
    share = on_delegate / total if total else 0.0
    floor = limits.delegate_share
    ok = share >= floor.value
    portable = ", ".join(f"{op} ×{n}" for op, n in sorted(mv.portable_ops.items(), key=lambda kv: -kv[1]))
    skipped = [d for d in mv.delegates if d not in mv.delegates_used and d != mv.delegates[-1]]
    reasons = {d: next((n.split(":", 1)[1].strip() for n in mv.notes if n.startswith(f"{d} skipped:")), "not used")
               for d in skipped}
    text = (f"{share:.1%} of ops ({on_delegate}/{total}) on {intended} {'>=' if ok else '<'} {floor.value:.0%} "
            f"({floor.source})")
    if portable:
        text += f"; portable CPU ops: {portable}"
    if skipped:
        text += "; skipped delegates: " + ", ".join(f"{d} ({r})" for d, r in reasons.items())
    return GateResult("delegation", "pass" if ok else "fail", text, figure=f"{share:.1%} on {intended}",
                      limit=f">= {floor.value:.0%}", source=floor.source,
                      details={"delegate": intended, "share": share, "ops_on_delegate": on_delegate, "ops": total,
                               "portable_ops": mv.portable_ops, "skipped_delegates": reasons})


def latency(mv: ManifestView, model_file: Path, limits: Limits, measured: dict[str, Any] | None) -> GateResult:
    """Emulated p50 on the target's device (or measured here with --measure) ≤ the latency budget."""
    budget = limits.latency_ms
    if budget is None:
        return GateResult("latency", "skipped", "no latency budget (set budgets.latency_ms in the target, or pass "
                          "--latency-budget)")
    if mv.is_llm:
        from edgeq.check import llm_gates

        found = llm_gates.decode_ms(model_file.parent, limits.device, measured)
        if isinstance(found, str):
            return GateResult("latency", "skipped", found, source=budget.source)
        ms, how = found
        ok = ms <= budget.value
        return GateResult("latency", "pass" if ok else "fail",
                          f"{how} {ms:.3f} ms {'<=' if ok else '>'} {budget.value:g} ms budget ({budget.source})",
                          figure=f"{ms:.3f} ms/token", limit=f"<= {budget.value:g} ms", source=budget.source,
                          details={"decode_ms_per_token": ms, "measured": measured is not None})
    if measured is not None:
        from edgeq.profiling import p50_ms

        p50 = float(p50_ms(measured) or 0.0)
        how = "measured p50 on this host"
    else:
        from edgeq.profiling.emulate import estimate
        from edgeq.targets import load_profile

        try:
            p50 = float(estimate(model_file.parent, load_profile(limits.device))["latency_ms"])
        except (EdgeqError, OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
            return GateResult("latency", "skipped", f"no emulated estimate for {limits.device} "
                              f"({str(exc).splitlines()[0][:160]}); pass --measure", source=budget.source)
        how = f"emulated p50 on {limits.device} (ESTIMATE)"
    ok = p50 <= budget.value
    return GateResult("latency", "pass" if ok else "fail",
                      f"{how} {p50:.3f} ms {'<=' if ok else '>'} {budget.value:g} ms budget ({budget.source})",
                      figure=f"{p50:.3f} ms", limit=f"<= {budget.value:g} ms", source=budget.source,
                      details={"p50_ms": p50, "measured": measured is not None})
