"""Profiling an artifact on this machine, and comparing profiles.

``profile_host`` validates the artifact, then runs edgeq's standalone runner
(``edgeq/profiling/runner.py``: the same file ``--device ssh://`` copies onto a board) in a fresh
Python process, so the numbers are those of a clean process: load time, latency over
``runs`` timed runs after ``warmup`` untimed ones, peak RSS, and (``ops=True``) a
separate per-op pass (ExecuTorch ETDump + Inspector, ONNX Runtime's profiler).

>>> report = profile_host("dist/all-MiniLM-L6-v2-x86", runs=20)  # doctest: +SKIP
>>> report["latency_ms"]["p50"], report["memory"]["peak_rss_bytes"]  # doctest: +SKIP
>>> compare([report, profile_host("dist/all-MiniLM-L6-v2-x86-fp32")])["rows"][0]  # doctest: +SKIP

This subpackage owns measuring and estimating an artifact's speed and memory: the
standalone ``runner`` (stdlib + the runtime only; copied onto boards), ``remote`` /
``adb`` / ``adb_app`` (devices), ``emulate`` / ``opgraph`` / ``efficiency`` (estimates
from device profiles) and ``report`` (HTML/JSON). It may import ``edgeq.errors``,
``edgeq.artifact``, ``edgeq.manifest``, ``edgeq.targets``, ``edgeq.backends`` and, for LLM
artifacts, ``edgeq.llm`` (its ``profile`` module); never the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeq.errors import ArtifactError, BackendUnavailableError, ConfigError, EdgeqError

if TYPE_CHECKING:
    from edgeq.manifest import Manifest

RUNNER = Path(__file__).with_name("runner.py")


def check_artifact(artifact_dir: str | Path) -> tuple[Manifest, Path]:
    """Validate an artifact for profiling: manifest, hashes, and that the model file is of
    the kind the manifest says (an ONNX model in a .pte artifact and vice versa)."""
    from edgeq.artifact import MODEL_FILES, load_manifest, member, read_artifact
    from edgeq.profiling.runner import RunnerError, check_model_file

    path = Path(artifact_dir)
    if path.is_dir():
        try:  # the model file first: wrong kind, truncated or corrupt say more than read_artifact's hash check
            manifest = load_manifest(path)
            if manifest.model_file in MODEL_FILES and (path / manifest.model_file).exists():
                member(path, manifest.model_file)  # a regular file inside the artifact, before it is read
                check_model_file(path, manifest.model_dump(mode="json"))  # the runner reads the JSON's dict
        except RunnerError as exc:
            raise ArtifactError(*_split_hint(str(exc))) from None
    manifest, model = read_artifact(path)
    return manifest, model


def require_runtime(manifest: Manifest) -> str:
    """The artifact's format; raises if its runtime is not installed in this Python."""
    from edgeq.backends import get_backend

    fmt = manifest.target.format
    package = get_backend(fmt).RUNTIME_PACKAGE
    if importlib.util.find_spec(package) is None:
        want = manifest.versions.get(package)
        pin = f"=={want}" if want else ""
        raise BackendUnavailableError(f"{package} is not installed here, and the artifact needs it",
                                      f"pip install {package}{pin}")
    return fmt


def profile_artifacts(artifacts: list[str | Path], *, mode: str | None = None, device: str | None = None,
                      runs: int | None = None, warmup: int | None = None, threads: int | None = None, ops: bool = True,
                      device_profile: str | None = None, with_estimate: bool = False,
                      prompt_tokens: int | None = None, new_tokens: int | None = None) -> list[dict[str, Any]]:
    """Profile each artifact in ``mode`` (host, emulated, or device with ``device``); every
    artifact and argument is checked before anything is measured. With ``with_estimate``,
    each measurement carries the emulated estimate for the same class of device.

    LLM artifacts (a manifest with an ``llm`` block) are profiled by ``edgeq.llm.profile``:
    generation of ``new_tokens`` after a ``prompt_tokens`` prompt (host; ``runs`` / ``warmup``
    default to 3 / 1 generations instead of 20 / 3 inferences), or decode tokens/s estimated for
    every built-in device profile (emulated)."""
    if mode not in (None, "host", "emulated", "device"):
        raise ConfigError(f"unknown --mode '{mode}'", "use host, emulated or device")
    if device and mode not in (None, "device"):
        raise ConfigError(f"--device measures on a device, but --mode is {mode}", "drop --mode, or drop --device")
    mode = "device" if device else (mode or "host")
    if mode == "device" and not device:
        raise ConfigError("--mode device needs --device", "pass --device ssh://user@host or --device adb:SERIAL")
    validate_counts(20 if runs is None else runs, 3 if warmup is None else warmup, threads)
    manifests = [check_artifact(artifact)[0] for artifact in artifacts]
    is_lm = [m.llm is not None for m in manifests]
    if (prompt_tokens is not None or new_tokens is not None) and not all(is_lm):
        raise ConfigError("--prompt-tokens / --new-tokens apply to LLM artifacts only", "drop them for this artifact")
    for manifest, lm in zip(manifests, is_lm):
        if lm and mode == "device":
            raise ConfigError("on-device profiling of LLM artifacts is not available in this edgeq",
                              "use --mode host or --mode emulated")
        if lm and mode == "host":
            from edgeq.llm.profile import lm_lengths

            lm_lengths(manifest.llm.max_context, prompt_tokens, new_tokens)  # before anything is measured
    reports = []
    for artifact, lm in zip(artifacts, is_lm):
        if lm:
            reports.append(_profile_lm(artifact, mode, runs=runs, warmup=warmup, threads=threads,
                                       device_profile=device_profile, with_estimate=with_estimate,
                                       prompt_tokens=prompt_tokens, new_tokens=new_tokens))
            continue
        runs_, warmup_ = (20 if runs is None else runs), (3 if warmup is None else warmup)
        if mode == "emulated":
            reports.append(emulate_artifact(artifact, device_profile, threads=threads))
            continue
        if mode == "device":
            from edgeq.profiling.remote import run_on_device

            report = run_on_device(artifact, device, runs=runs_, warmup=warmup_, threads=threads, ops=ops)
            report = complete_ops({**report, "mode": "device", "estimate": False})
        else:
            report = profile_host(artifact, runs=runs_, warmup=warmup_, threads=threads, ops=ops)
        if with_estimate:
            name = device_profile or (host_class_profile() if mode == "host" else None)
            if name is None:
                raise ConfigError("--with-estimate needs a device profile for this device", "pass --device-profile NAME")
            used = (report.get("threads") or {}).get("used")
            report["emulated"] = emulate_artifact(artifact, name, threads=used)
        reports.append(report)
    return [_checked(r) for r in reports]


def _profile_lm(artifact: str | Path, mode: str, *, runs: int | None, warmup: int | None, threads: int | None,
                device_profile: str | None, with_estimate: bool, prompt_tokens: int | None,
                new_tokens: int | None) -> dict[str, Any]:
    """An LLM artifact's host measurement or emulated estimate (``edgeq.llm.profile``)."""
    if mode == "emulated":
        return emulate_lm_artifact(artifact, device_profile, threads=threads)
    from edgeq.llm.profile import profile_lm_host
    from edgeq.profiling.runner import host_info

    report = profile_lm_host(artifact, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs, warmup=warmup,
                             threads=threads)
    report["host"] = host_info()
    if with_estimate:
        name = device_profile or host_class_profile()
        if name is None:
            raise ConfigError("--with-estimate needs a device profile for this device", "pass --device-profile NAME")
        report["emulated"] = emulate_lm_artifact(artifact, name, threads=threads)
    return report


def emulate_lm_artifact(artifact_dir: str | Path, device_profile: str | None = None, *,
                        threads: int | None = None) -> dict[str, Any]:
    """Estimated decode tokens/s of an LLM artifact on every built-in device profile (plus
    ``device_profile`` when it is a file); the report's ``latency_ms`` is the estimated ms
    per token on ``device_profile`` (default: the artifact's target device). An estimate."""
    from edgeq.llm.profile import lm_decode_estimates
    from edgeq.targets import builtin_names, load_profile

    manifest, model = check_artifact(artifact_dir)
    name = device_profile or manifest.target.device
    chosen = load_profile(name)
    profiles = [load_profile(n) for n in builtin_names("profiles")]
    if chosen.name not in {p.name for p in profiles}:
        profiles.append(chosen)
    est = lm_decode_estimates(model.parent, profiles, threads=threads)
    row = next(r for r in est["decode_estimates"] if r["device"] == chosen.name)
    return {"mode": "emulated", "estimate": True, "device": chosen.name, "artifact": str(model.parent),
            "model_file": model.name, "format": manifest.target.format, "precision": manifest.precision.requested,
            "target": manifest.target.name, "threads": {"used": row["threads"], "requested": threads},
            "latency_ms": row["ms_per_token"], "latency_unit": "ms per decoded token",
            "bound_share": {row["bound"]: 1.0}, "assumptions": est.pop("assumptions"), "llm": est}


def _checked(report: dict[str, Any]) -> dict[str, Any]:
    """The report as ``edgeq.profiling.schema`` types it (a runner on a device is not
    edgeq's process: what it sent back is checked like input)."""
    from edgeq.profiling.schema import report_dict

    try:
        return report_dict(report)
    except ValueError as exc:
        raise ArtifactError(f"the profile report for {report.get('artifact', '?')} is malformed ({exc})",
                            "re-run with --debug; if the runner is edgeq's own, report it") from None


def profile_host(artifact_dir: str | Path, *, runs: int = 20, warmup: int = 3, threads: int | None = None,
                 ops: bool = True, timeout: float = 1800) -> dict[str, Any]:
    """Measure ``artifact_dir`` on this machine in a fresh process; the runner's report
    plus ``"mode": "host"``. Raises ``ArtifactError`` for a corrupt, truncated or
    wrong-kind artifact and ``BackendUnavailableError`` if its runtime is missing."""
    validate_counts(runs, warmup, threads)
    manifest, model = check_artifact(artifact_dir)
    require_runtime(manifest)
    root = model.parent.resolve()
    fd, out = tempfile.mkstemp(prefix="edgeq-profile-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(RUNNER), str(root), "--runs", str(runs), "--warmup", str(warmup), "--json-out", out]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if ops:
        cmd.append("--ops")
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgeqError(f"profiling {root} took longer than {timeout:.0f} s", "use fewer --runs") from None
        if proc.returncode == 2:
            line = _last_error_line(proc.stderr)
            raise ArtifactError(*_split_hint(line or f"the runner rejected {root}"))
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
            raise ArtifactError(f"the runtime failed on {root} (exit {proc.returncode}): {tail or 'no message'}",
                                "the model file may be corrupt; re-run 'edgeq export' (or report it with --debug)")
        report = json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    report["mode"] = "host"
    report["estimate"] = False
    complete_ops(report)
    return report


def complete_ops(report: dict[str, Any]) -> dict[str, Any]:
    """Parse an ETDump the runner shipped raw (its machine lacked executorch.devtools) here."""
    ops = report.get("ops")
    if not isinstance(ops, dict) or "etdump_b64" not in ops:
        return report
    import base64

    from edgeq.profiling.runner import etdump_events, summarize_etdump

    try:
        events = etdump_events(base64.b64decode(ops["etdump_b64"]))
    except ImportError as exc:
        report["ops"] = {"error": f"cannot read the ETDump: executorch.devtools is not importable here ({exc})"}
        return report
    report["ops"] = {**summarize_etdump(events, ops.get("delegates_used") or []), "parsed_on": "host"}
    return report


def validate_counts(runs: int, warmup: int, threads: int | None) -> None:
    if not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"--runs must be at least 1, got {runs}", "pass e.g. --runs 20")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {warmup}", "pass e.g. --warmup 3")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"--threads must be at least 1, got {threads}", "leave it out to use the target's")


def host_class_profile() -> str | None:
    """The built-in device profile of this machine's CPU class, if there is one."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return "x86-avx2-laptop"
    return None


def emulate_artifact(artifact_dir: str | Path, device_profile: str | None = None, *, threads: int | None = None) -> dict[str, Any]:
    """The emulated (estimated) latency of an artifact on ``device_profile`` (default: its
    target's device), from ``edgeq.profiling.emulate.estimate``; always marked as an estimate."""
    manifest, model = check_artifact(artifact_dir)
    name = device_profile or manifest.target.device
    if not name:
        raise ConfigError(f"{artifact_dir}: the manifest names no device", "pass --device-profile NAME")
    from edgeq.targets import load_profile

    profile = load_profile(name)
    try:
        from edgeq.profiling.emulate import estimate
    except ImportError as exc:
        raise BackendUnavailableError(f"emulated profiling is not available in this edgeq ({exc})",
                                      "use --mode host or --device") from None
    result = dict(estimate(model.parent, profile, threads=threads))
    result.setdefault("mode", "emulated")
    result["estimate"] = True
    result.setdefault("artifact", str(model.parent))
    result.setdefault("model_file", model.name)
    result.setdefault("format", manifest.target.format)
    result.setdefault("precision", manifest.precision.requested)
    result.setdefault("target", manifest.target.name)
    return result


# ---------------------------------------------------------------------------- compare


def p50_ms(report: dict[str, Any]) -> float | None:
    lat = report.get("latency_ms")
    if isinstance(lat, dict):
        return lat.get("p50")
    return float(lat) if isinstance(lat, (int, float)) else None


def label(report: dict[str, Any]) -> str:
    name = Path(str(report.get("artifact", "?"))).name
    return f"{name} (estimate)" if report.get("estimate") else name


def _metric(report: dict[str, Any], key: str) -> float | None:
    lat = report.get("latency_ms")
    mem = report.get("memory") or {}
    ops = report.get("ops") if isinstance(report.get("ops"), dict) else {}  # an estimate's ops are a list
    if key in ("min", "p50", "p90", "max", "mean"):
        if isinstance(lat, dict):
            return lat.get(key)
        return float(lat) if key == "p50" and isinstance(lat, (int, float)) else None
    if key == "load_ms":
        return report.get("load_ms")
    if key == "peak_rss_bytes":
        return mem.get("peak_rss_bytes")
    if key == "model_attributable_bytes":
        return mem.get("model_attributable_bytes")
    if key == "delegate_share":
        return ops.get("delegate_share")
    if key == "file_bytes":
        path = Path(str(report.get("artifact", ""))) / str(report.get("model_file", ""))
        return path.stat().st_size if path.is_file() else None
    return None


COMPARE_METRICS = [
    ("p50", "latency p50 (ms)"), ("p90", "latency p90 (ms)"), ("min", "latency min (ms)"),
    ("max", "latency max (ms)"), ("load_ms", "load (ms)"), ("peak_rss_bytes", "peak RSS"),
    ("model_attributable_bytes", "peak RSS over baseline"), ("delegate_share", "share in delegates"),
    ("file_bytes", "model file"),
]


def compare(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Side-by-side metrics of two or more reports, with each one's ratio to the first."""
    if len(reports) < 2:
        raise ValueError("compare needs at least two reports")
    rows = []
    for key, title in COMPARE_METRICS:
        values = [_metric(r, key) for r in reports]
        if all(v is None for v in values):
            continue
        base = values[0]
        ratios = [(v / base) if (v is not None and base) else None for v in values]
        rows.append({"metric": key, "title": title, "values": values, "ratios": ratios})
    return {"baseline": label(reports[0]), "labels": [label(r) for r in reports], "rows": rows}


# --------------------------------------------------------------------------- internals


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("error:")]
    return lines[-1][len("error:"):].strip() if lines else ""


def _split_hint(text: str) -> tuple[str, str]:
    """``"msg (hint)"`` → ``("msg", "hint")``: the runner prints one line with its hint in
    parentheses; EdgeqError puts it back the same way."""
    text = text.strip()
    if text.endswith(")") and " (" in text:
        head, _, hint = text[:-1].rpartition(" (")
        if head and "(" not in hint:
            return head, hint
    return text, ""
