"""Baseline files (``--update-baseline`` writes one, ``--baseline`` reads it) and the
regression gate that compares an artifact with its baseline entry.

A baseline file is versioned JSON, one entry per artifact (keyed by directory name):
the model file's sha256 and bytes, predicted and measured peak memory, the fidelity
figure, and — when written with ``--measure`` — the latency of ``rounds`` fresh processes
(per-process medians and raw samples), the host class they were measured on and the
baseline artifact's path. ``edgeq check --baseline`` then compares paired rounds
against that artifact when it is still on disk with the recorded sha256, else the
stored samples (see ``edgeq.check.latency_rule``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeq.check.latency_rule import (RatioEstimate, alternating_rounds, decide, host_class, paired_ratio,
                                      process_median, unpaired_ratio)
from edgeq.check.results import GateResult, fmt_bytes
from edgeq.errors import ConfigError, OutputError

BASELINE_VERSION = 1
MAX_BASELINE_BYTES = 32 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencySamples(_Strict):
    runs: int = Field(gt=0)
    threads: int = Field(default=1, gt=0)
    process_medians_ms: list[float] = Field(min_length=2, max_length=1000)
    samples_ms: list[list[float]] = Field(default_factory=list, max_length=1000)
    host: dict[str, Any]


class BaselineEntry(_Strict):
    artifact: str  # absolute path of the baseline artifact when it was recorded
    model_sha256: str
    target: str
    file_bytes: int = Field(ge=0)
    predicted_peak_bytes: int | None = None
    measured_peak_rss_bytes: int | None = None
    fidelity: float | None = None
    fidelity_metric: str | None = None
    latency: LatencySamples | None = None


class BaselineFile(_Strict):
    edgeq_baseline_version: Literal[1]
    created: str
    artifacts: dict[str, BaselineEntry]


def read_baseline(path: Path) -> BaselineFile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"baseline {path} not found", "write one with 'edgeq check ... --update-baseline FILE'")
    if path.stat().st_size > MAX_BASELINE_BYTES:
        raise ConfigError(f"baseline {path} is over {MAX_BASELINE_BYTES // 2**20} MB", "pass a baseline written by edgeq")
    try:
        return BaselineFile.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"baseline {path} is not JSON ({exc})", "re-write it with --update-baseline") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"baseline {path}: {where}: {err['msg']}", "re-write it with --update-baseline") from None


def check_writable(path: Path, flag: str = "--update-baseline") -> None:
    """Fail before any work if ``path`` (given with ``flag``) cannot be written as a file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise OutputError(f"{flag} {path} is not a file", "choose a file path")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {path}: {parent} is not a directory", "choose another path")


def write_baseline(path: Path, results: list[Any], roots: list[Path], opts: Any) -> None:
    """Record each artifact that passed integrity; entries of other artifacts in an existing file are kept."""
    from edgeq.check.gates import fidelity_figure
    from edgeq.atomic import write_text_atomic

    entries: dict[str, BaselineEntry] = {}
    if Path(path).is_file():
        try:
            entries = dict(read_baseline(path).artifacts)
        except ConfigError:
            entries = {}  # replaced wholesale below: the user asked for a new baseline
    for result, root in zip(results, roots):
        if result.gate("integrity").failed:
            continue
        from edgeq.artifact import read_artifact
        from edgeq.check.manifest_view import view

        mv = view(read_artifact(root, verify_hashes=False)[0])
        model_file = root / mv.model_file
        fit, fid = result.gate("fit").details, result.gate("fidelity")
        latency = None
        if opts.measure and not mv.is_llm:  # the rule's fresh-process rounds time encoder runs
            medians, samples = [], []
            for _ in range(opts.rounds):
                median, raw = process_median(root, opts.regression_runs)
                medians.append(median)
                samples.append(raw)
            latency = LatencySamples(runs=opts.regression_runs, process_medians_ms=medians, samples_ms=samples, host=host_class())
        entries[root.name] = BaselineEntry(
            artifact=str(root.resolve()), model_sha256=mv.model_sha256,
            target=result.target, file_bytes=model_file.stat().st_size,
            predicted_peak_bytes=fit.get("predicted_peak_bytes"), measured_peak_rss_bytes=fit.get("measured_peak_rss_bytes"),
            fidelity=fidelity_figure(fid), fidelity_metric=_metric_name(fid.details), latency=latency)
    doc = BaselineFile(edgeq_baseline_version=BASELINE_VERSION, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       artifacts=entries)
    write_text_atomic(Path(path), json.dumps(doc.model_dump(), indent=2) + "\n")


def _metric_name(details: dict[str, Any]) -> str | None:
    if not details:
        return None
    return "top1_agreement" if details.get("top1_agreement") is not None else "cosine_min"


def regression(root: Path, mv: Any, gates: list[GateResult], limits: Any, baseline: BaselineFile,
               opts: Any) -> GateResult:
    """Size, memory, fidelity and latency against the baseline entry, each within its tolerance."""
    from edgeq.check.gates import fidelity_figure

    entry = baseline.artifacts.get(root.name)
    if entry is None:
        return GateResult("regression", "skipped", f"the baseline has no entry for {root.name}",
                          source=f"baseline {opts.baseline}")
    by_name = {g.gate: g for g in gates}
    tol = limits.regression
    rows: list[tuple[bool | None, str]] = []  # (ok, text); ok None = not compared
    fit = by_name["fit"].details

    def pct(name: str, now: float | None, before: float | None, limit: Any, show: Any) -> None:
        if now is None or before is None or before <= 0:
            return
        change = (now - before) / before * 100
        ok = change <= limit.value
        rows.append((ok, f"{name} {show(before)} → {show(now)} ({change:+.1f}% {'<=' if ok else '>'} "
                         f"+{limit.value:g}%, {limit.source})"))

    pct("size", fit.get("file_bytes"), entry.file_bytes, tol["size_pct"], fmt_bytes)
    pct("predicted peak memory", fit.get("predicted_peak_bytes"), entry.predicted_peak_bytes, tol["memory_pct"], fmt_bytes)
    pct("measured peak RSS", fit.get("measured_peak_rss_bytes"), entry.measured_peak_rss_bytes, tol["memory_pct"],
        fmt_bytes)
    now_fid = fidelity_figure(by_name["fidelity"])
    if now_fid is not None and entry.fidelity is not None:
        drop = entry.fidelity - now_fid
        limit = tol["fidelity_drop"]
        ok = drop <= limit.value
        rows.append((ok, f"fidelity {entry.fidelity_metric} {entry.fidelity:.6f} → {now_fid:.6f} (drop {drop:.6f} "
                         f"{'<=' if ok else '>'} {limit.value:g}, {limit.source})"))
    elif entry.fidelity is not None:
        rows.append((None, "fidelity not compared (not re-measured now)"))
    if mv.is_llm:
        rows.append((None, "latency not compared (the regression rule times encoder runs; an LLM's decode time "
                           "per token is held to the latency gate)"))
    else:
        rows.append(_latency_row(root, entry, tol["latency_pct"], opts))
    failed = [t for ok, t in rows if ok is False]
    compared = [t for ok, t in rows if ok is not None]
    not_compared = [t for ok, t in rows if ok is None]
    status = "fail" if failed else "pass"
    text = "; ".join(failed or compared or ["nothing to compare"])
    if not_compared and not failed:
        text += "; " + "; ".join(not_compared)
    return GateResult("regression", status, text, figure=f"{len(failed)} of {len(compared)} regressed",
                      limit="within tolerance of the baseline", source=f"baseline {opts.baseline}",
                      details={"compared": compared, "failed": failed, "not_compared": not_compared})


def _latency_row(root: Path, entry: BaselineEntry, limit: Any, opts: Any) -> tuple[bool | None, str]:
    if entry.latency is None:
        return None, "latency not compared (the baseline has no latency samples: write it with --measure)"
    if not opts.measure:
        return None, "latency not compared (pass --measure)"
    from edgeq.artifact import MODEL_FILES, sha256

    base_dir = Path(entry.artifact)
    base_model = next((base_dir / n for n in MODEL_FILES if (base_dir / n).is_file()), None)
    tolerance = limit.value / 100
    if base_model is not None and sha256(base_model) == entry.model_sha256:
        est: RatioEstimate = decide(lambda: alternating_rounds(base_dir, root, opts.rounds, entry.latency.runs),
                                    paired_ratio, tolerance)
    else:
        here = host_class()
        if entry.latency.host != here:
            return None, (f"latency not compared: the baseline artifact is gone and its stored samples come from "
                          f"another host ({entry.latency.host.get('cpu')}, {entry.latency.host.get('cpus')} CPUs)")
        stored = list(entry.latency.process_medians_ms)
        calls = iter(range(2))  # the stored medians count once; a second look adds candidate processes only

        def measure() -> tuple[list[float], list[float]]:
            first = next(calls) == 0
            return (stored if first else []), [process_median(root, entry.latency.runs)[0]
                                                 for _ in range(max(opts.rounds, 2))]

        est = decide(measure, unpaired_ratio, tolerance)
    bad = est.regressed(tolerance)
    verdict = "slower beyond" if bad else "within"
    return (not bad, f"latency {est.describe()} {verdict} +{limit.value:g}% ({limit.source}; regression = estimate "
                     f"above tolerance, CI low end above half of it; 1 thread)")
