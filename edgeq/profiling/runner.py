"""Standalone latency / memory / per-op runner for one edgeq artifact.

This file is copied alone onto boards (``edgeq profile --device ssh://...``) and run
with the board's own Python, so it imports nothing from edgeq: only the standard
library, numpy and the artifact's runtime (ExecuTorch pybindings or ONNX Runtime)::

    python runner.py ARTIFACT_DIR --runs 20 --warmup 3 [--threads T] [--ops] [--json-out FILE]

It prints one JSON report (or writes it to ``--json-out``, atomically). On a problem
the user can fix (corrupt file, runtime missing) it prints one ``error: ...`` line on
stderr and exits 2.

What is measured, in this order, in this one process:

1. import the runtime; build the inputs the manifest describes; the resident set now is
   the *baseline*, and the kernel's peak counter (``VmHWM``) is reset to it;
2. load the model (timed: ``load_ms``); ``warmup`` untimed runs; ``runs`` timed runs,
   ``time.perf_counter()`` around the runtime's execute call and nothing else;
3. peak RSS (``VmHWM``) of steps 1-2;
4. with ``--ops``, a separate pass on a second, profiling-enabled load of the model
   (ExecuTorch ETDump read with the devtools Inspector; ONNX Runtime's profiler), so
   profiling never touches the timed runs: per-op times (median over the profiled runs
   after the first) and the share of time inside delegates (XNNPACK, non-CPU execution
   providers) vs ExecuTorch's portable kernels / ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNNER_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 2**20  # as edgeq.artifact (this file imports nothing from edgeq)
MAX_INPUT_ELEMENTS = 1 << 26  # per input: far above any edge model's input, far below this machine's memory
ALLOWED_DTYPES = ("bool", "float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8")
PROFILED_RUNS = 6  # ops pass: the first is dropped as a warm-up, the median of the rest is kept
TOP_NODES = 40


class RunnerError(Exception):
    """A problem with the artifact or this machine that the user can fix (exit 2)."""


# --------------------------------------------------------------------------- artifact


def read_manifest(artifact: Path) -> dict[str, Any]:
    if not artifact.is_dir():
        raise RunnerError(f"{artifact} is not an artifact directory (pass a directory written by 'edgeq export')")
    mpath = artifact / "manifest.json"
    if mpath.is_symlink() or (mpath.exists() and not mpath.is_file()):
        raise RunnerError(f"{mpath} is not a regular file (re-run 'edgeq export')")
    if mpath.exists() and mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise RunnerError(f"{mpath} is too large to be a manifest (re-run 'edgeq export')")
    try:
        manifest = json.loads(mpath.read_text())
    except RecursionError:
        raise RunnerError(f"{mpath} is nested too deeply to be a manifest (re-run 'edgeq export')") from None
    except FileNotFoundError:
        raise RunnerError(f"{artifact} has no manifest.json (re-run 'edgeq export')") from None
    except ValueError as exc:
        raise RunnerError(f"{artifact}/manifest.json is corrupt ({exc}) (re-run 'edgeq export')") from None
    if not isinstance(manifest, dict) or manifest.get("model_file") not in _FORMAT_OF_FILE:
        raise RunnerError(f"{artifact}/manifest.json names no model file (re-run 'edgeq export')")
    return manifest


# the model file of each format (as edgeq.backends' registry; this file imports nothing from edgeq)
_FORMAT_OF_FILE = {"model.pte": "executorch", "model.onnx": "onnx", "model.gguf": "gguf"}


def sniff_format(path: Path) -> str | None:
    """``executorch`` / ``onnx`` / ``gguf`` from the file's first bytes; None if none of them."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) >= 8 and head[4:6] == b"ET":  # flatbuffer file identifier "ET12"
        return "executorch"
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    return None


def check_model_file(artifact: Path, manifest: dict[str, Any]) -> tuple[Path, str]:
    """The model path and its format; raises on a wrong kind, a missing or a corrupt file."""
    name = manifest["model_file"]
    fmt = _FORMAT_OF_FILE[name]
    declared = (manifest.get("target") or {}).get("format")
    if declared and declared != fmt:
        raise RunnerError(f"{artifact}: manifest says format {declared} but names {name} (re-run 'edgeq export')")
    path = artifact / name
    if not path.is_file():
        raise RunnerError(f"{artifact} is missing its model file {name} (re-run 'edgeq export')")
    if path.is_symlink():  # an artifact holds regular files; a link could point at anything on the machine
        raise RunnerError(f"{path} is a symbolic link, not the model file (re-run 'edgeq export')")
    found = sniff_format(path)
    kinds = {"executorch": "an ExecuTorch program", "onnx": "an ONNX model", "gguf": "a GGUF file"}
    runtimes = {"executorch": "ExecuTorch", "onnx": "ONNX Runtime", "gguf": "llama.cpp"}
    if found is not None and found != fmt:
        raise RunnerError(f"{path} is {kinds[found]}, but the artifact is for {runtimes[fmt]} (re-run 'edgeq export')")
    files = manifest.get("files")
    info = files.get(name) if isinstance(files, dict) else None
    if isinstance(info, dict) and info:
        size = path.stat().st_size
        if size != info.get("bytes") or _sha256(path) != info.get("sha256"):
            what = "truncated" if size < int(info.get("bytes") or 0) else "corrupt or modified"
            raise RunnerError(f"{path} does not match its sha256 in the manifest ({what}) (re-run 'edgeq export')")
    elif found is None:
        raise RunnerError(f"{path} is not {kinds[fmt]} (re-run 'edgeq export')")
    return path, fmt


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def require_runtime(fmt: str, manifest: dict[str, Any]) -> str:
    """Import the runtime the artifact needs; its version. Raises with the pip line if missing."""
    want = (manifest.get("versions") or {}).get("onnxruntime" if fmt == "onnx" else "executorch")
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            pin = f"=={want}" if want else ""
            raise RunnerError(f"onnxruntime is not installed on this machine (pip install onnxruntime{pin})") from None
        return f"onnxruntime {onnxruntime.__version__}"
    try:
        import executorch.kernels.quantized  # noqa: F401  registers the quantized embedding kernels
        from executorch.runtime import Runtime  # noqa: F401
        from executorch.version import __version__
    except ImportError:
        pin = f"=={want}" if want else ""
        raise RunnerError(f"the ExecuTorch runtime is not installed on this machine (pip install executorch{pin})") from None
    return f"executorch {__version__}"


# ----------------------------------------------------------------------------- inputs


def make_inputs(specs: list[dict[str, Any]]) -> list[Any]:
    """numpy arrays for the manifest's inputs: ones for masks, zeros for token types,
    0..n-1 for positions, small token ids for other integers, N(0, 1) for floats."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for spec in specs:
        name, shape, dtype = str(spec["name"]).lower(), [int(s) for s in spec["shape"]], str(spec["dtype"])
        count = 1
        for dim in shape:
            count *= dim
        # the shapes come from a file a user can edit: bound what they make this process allocate
        if len(shape) > 8 or any(d < 0 for d in shape) or count > MAX_INPUT_ELEMENTS:
            raise RunnerError(f"the manifest's input {name[:40]} has shape {shape[:8]}, not a model input "
                              "(re-run 'edgeq export')")
        if dtype not in ALLOWED_DTYPES:
            raise RunnerError(f"the manifest's input {name[:40]} has dtype {dtype[:20]!r} (re-run 'edgeq export')")
        if dtype == "bool":
            arr = np.ones(shape, dtype=bool)
        elif dtype.startswith(("int", "uint")):
            if "mask" in name:
                arr = np.ones(shape, dtype=dtype)
            elif "type" in name:
                arr = np.zeros(shape, dtype=dtype)
            elif "position" in name:
                arr = np.broadcast_to(np.arange(shape[-1] if shape else 1), shape).astype(dtype)
            else:
                arr = (np.arange(int(np.prod(shape)) if shape else 1) * 7 % 100).reshape(shape).astype(dtype)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        out.append(arr)
    return out


# ----------------------------------------------------------------------------- memory


def proc_status() -> dict[str, int]:
    """This process's resident set now (``VmRSS``), its peak (``VmHWM``) and their parts, in bytes."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def settle() -> None:
    """Collect garbage and return free heap pages (glibc), so the baseline is memory in use."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter to the resident set now (False where not allowed)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ host


def host_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    model = line.split(":", 1)[1].strip()
                    if model:
                        break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "hostname": platform.node(), "machine": platform.machine(), "system": platform.system(),
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "usable_cores": usable, "loadavg": load,
        "python": platform.python_version(),
    }


def choose_threads(cli: int | None, manifest: dict[str, Any], usable: int) -> dict[str, Any]:
    """``--threads`` as given; else the target's thread count, at most this host's cores;
    else the runtime's default."""
    wanted = int((manifest.get("target") or {}).get("threads") or 0)
    if cli is not None:
        return {"requested": cli, "used": cli, "source": "--threads"}
    if wanted > 0:
        used = min(wanted, usable)
        note = (f"the target asks for {wanted} threads; this machine has {usable} usable cores, so {used} are used"
                if used != wanted else "")
        return {"requested": wanted, "used": used, "source": "target", "note": note}
    return {"requested": None, "used": None, "source": "runtime default"}


# ------------------------------------------------------------------------- statistics


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_xs:
        return float("nan")
    pos = (len(sorted_xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def latency_stats(samples_ms: list[float]) -> dict[str, float]:
    xs = sorted(samples_ms)
    return {
        "min": xs[0], "p50": percentile(xs, 0.5), "p90": percentile(xs, 0.9), "max": xs[-1],
        "mean": statistics.fmean(xs), "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
    }


# ------------------------------------------------------------------------ executorch


def _et_threads(threads: int | None) -> int:
    from executorch.extension.pybindings import portable_lib

    if threads:
        portable_lib._unsafe_reset_threadpool(int(threads))
    return int(portable_lib._threadpool_get_thread_count())


def time_executorch(model: Path, arrays: list[Any], runs: int, warmup: int, threads: int | None) -> dict[str, Any]:
    import torch
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    feeds = [torch.from_numpy(a.copy()) for a in arrays]
    used = _et_threads(threads)
    settle()
    reset = reset_peak()
    base = proc_status()
    t0 = time.perf_counter()
    try:
        method = runtime.load_program(str(model)).load_method("forward")
    except Exception as exc:  # the pybindings raise RuntimeError with the C++ error
        raise RunnerError(f"ExecuTorch cannot load {model} ({_first_line(exc)}) "
                          "(the file is corrupt or needs a delegate this runtime lacks; re-run 'edgeq export')") from None
    load_ms = (time.perf_counter() - t0) * 1e3
    loaded = proc_status()
    try:
        for _ in range(warmup):
            method.execute(feeds)
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            method.execute(feeds)
            samples.append((time.perf_counter() - t) * 1e3)
    except Exception as exc:
        raise RunnerError(f"ExecuTorch failed running {model} on the manifest's inputs ({_first_line(exc)}) "
                          "(check model.inputs in manifest.json; re-run 'edgeq export')") from None
    end = proc_status()
    return {"load_ms": load_ms, "samples_ms": samples, "threads_used": used,
            "memory": memory_block(base, end, reset), "memory_detail": _memory_detail(base, loaded, end)}


def ops_executorch(model: Path, arrays: list[Any], delegates_used: list[str]) -> dict[str, Any]:
    """Per-op times from an ETDump of ``PROFILED_RUNS`` runs of a second, ETDump-enabled load."""
    import torch
    from executorch.runtime import Runtime

    feeds = [torch.from_numpy(a.copy()) for a in arrays]
    program = Runtime.get().load_program(str(model), enable_etdump=True)
    method = program.load_method("forward")
    for _ in range(PROFILED_RUNS):
        method.execute(feeds)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.etdp")
        program.write_etdump_result_to_file(path, os.path.join(d, "debug.bin"))
        data = Path(path).read_bytes()
    try:
        events = etdump_events(data)
    except ImportError as exc:  # the devtools' Python deps (pandas, ...) missing here: parse on the host
        return {"source": "etdump", "etdump_b64": base64.b64encode(data).decode(),
                "parse_error": f"executorch.devtools not importable here ({exc})", "delegates_used": delegates_used}
    return summarize_etdump(events, delegates_used)


def etdump_events(data: bytes) -> list[dict[str, Any]]:
    """The Execute block's events of an ETDump (``executorch.devtools.Inspector``, no ETRecord
    needed): name, per-run durations in ms, and whether the event is inside a delegate."""
    import warnings

    from executorch.devtools import Inspector

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.etdp")
        Path(path).write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=path)
    events = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for ev in block.events:
            raw = list(ev.perf_data.raw) if ev.perf_data is not None else []
            events.append({"name": ev.name, "delegated": bool(ev.is_delegated_op), "raw_ms": raw,
                           "backend": ev.delegate_backend_name})
    return events


def _steady(raw: list[float]) -> float:
    """Median over the profiled runs, the first (a warm-up: caches, packing) left out."""
    xs = raw[1:] if len(raw) > 1 else raw
    return statistics.median(xs) if xs else 0.0


def summarize_etdump(events: list[dict[str, Any]], delegates_used: list[str]) -> dict[str, Any]:
    """Aggregate ETDump events: per-op table, delegate vs portable time, total per run.

    Instruction-level events split the run: ``DELEGATE_CALL`` (a whole delegate call)
    and ``OPERATOR_CALL`` (a portable kernel, named by the ``native_call_<op>`` event
    before it). Inside a delegate, its own events (XNNPACK: one per operator) name the ops.
    Without an ETRecord the Inspector cannot tell which backend a delegate call belongs
    to; with one delegate in the artifact, it is that one.
    """
    backend = delegates_used[0] if len(delegates_used) == 1 else "delegate"
    nodes: list[dict[str, Any]] = []
    delegate_ms = portable_ms = total_ms = 0.0
    pending_op = None
    for ev in events:
        name, ms = ev["name"], _steady(ev["raw_ms"])
        if name == "Method::execute":
            total_ms += ms
        elif name == "DELEGATE_CALL":
            delegate_ms += ms
        elif name == "OPERATOR_CALL":
            portable_ms += ms
            op = pending_op or "operator"
            nodes.append({"name": op, "op": op, "backend": "portable", "ms": ms})
            pending_op = None
        elif name.startswith("native_call_"):
            pending_op = name[len("native_call_"):]
        elif ev["delegated"]:
            op = re.sub(r"\s+#\d+$", "", name)
            nodes.append({"name": name, "op": op, "backend": ev.get("backend") or backend, "ms": ms})
    calls = delegate_ms + portable_ms
    if not total_ms:
        total_ms = calls
    return _ops_report("etdump", nodes, total_ms, {backend: delegate_ms, "portable": portable_ms},
                       delegate_ms / calls if calls > 0 else 0.0)


def _ops_report(source: str, nodes: list[dict[str, Any]], total_ms: float, by_backend: dict[str, float],
                delegate_share: float) -> dict[str, Any]:
    by_op: dict[tuple[str, str], dict[str, Any]] = {}
    for n in nodes:
        row = by_op.setdefault((n["op"], n["backend"]), {"op": n["op"], "backend": n["backend"], "ms": 0.0, "count": 0})
        row["ms"] += n["ms"]
        row["count"] += 1
    op_total = sum(r["ms"] for r in by_op.values()) or 1.0
    rows = sorted(by_op.values(), key=lambda r: -r["ms"])
    for r in rows:
        r["share"] = r["ms"] / op_total
    return {
        "source": source, "profiled_runs": PROFILED_RUNS, "steady_runs": PROFILED_RUNS - 1,
        "total_ms": total_ms, "delegate_share": delegate_share,
        "by_backend_ms": {k: v for k, v in by_backend.items() if v or k != "portable"},
        "by_op": rows, "nodes": sorted(nodes, key=lambda n: -n["ms"])[:TOP_NODES], "node_count": len(nodes),
    }


# ------------------------------------------------------------------------------ onnx


def _ort_session(model: Path, threads: int | None, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RunnerError(f"ONNX Runtime cannot load {model} ({_first_line(exc)}) "
                          "(the file is corrupt or not an ONNX model; re-run 'edgeq export')") from None


def _ort_feeds(session: Any, names: list[str], arrays: list[Any]) -> dict[str, Any]:
    """The manifest's inputs by name, for the inputs the graph has (an unused one may be pruned)."""
    wanted = [i.name for i in session.get_inputs()]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise RunnerError(f"the ONNX model needs inputs the manifest does not list: {', '.join(missing)} "
                          "(re-run 'edgeq export')")
    return {n: a for n, a in zip(names, arrays) if n in wanted}


def time_onnx(model: Path, arrays: list[Any], names: list[str], runs: int, warmup: int,
              threads: int | None) -> dict[str, Any]:
    import onnxruntime  # noqa: F401  imported before the baseline

    settle()
    reset = reset_peak()
    base = proc_status()
    t0 = time.perf_counter()
    session = _ort_session(model, threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    loaded = proc_status()
    feeds = _ort_feeds(session, names, arrays)
    try:
        for _ in range(warmup):
            session.run(None, feeds)
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, feeds)
            samples.append((time.perf_counter() - t) * 1e3)
    except Exception as exc:
        raise RunnerError(f"ONNX Runtime failed running {model} on the manifest's inputs ({_first_line(exc)}) "
                          "(check model.inputs in manifest.json; re-run 'edgeq export')") from None
    end = proc_status()
    return {"load_ms": load_ms, "samples_ms": samples, "threads_used": threads,
            "memory": memory_block(base, end, reset), "memory_detail": _memory_detail(base, loaded, end)}


def ops_onnx(model: Path, arrays: list[Any], names: list[str], threads: int | None) -> dict[str, Any]:
    """Per-node times from ONNX Runtime's profiler, on a second, profiling-enabled session."""
    with tempfile.TemporaryDirectory() as d:
        session = _ort_session(model, threads, os.path.join(d, "ort"))
        feeds = _ort_feeds(session, names, arrays)
        for _ in range(PROFILED_RUNS):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    return summarize_ort_trace(trace)


def summarize_ort_trace(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Group the trace's ``*_kernel_time`` node events into runs (by the ``model_run``
    spans), drop the first run, and take each node's median."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    per_node: dict[str, dict[str, Any]] = {}
    run_totals = [0.0] * len(runs)
    for e in trace:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        idx = next((i for i, (a, b) in enumerate(runs) if a <= e["ts"] <= b), None)
        if idx is None:
            continue
        args = e.get("args", {})
        name = e["name"][: -len("_kernel_time")]
        node = per_node.setdefault(name, {"op": args.get("op_name", "?"), "provider": args.get("provider", "?"),
                                          "raw": [0.0] * len(runs)})
        node["raw"][idx] += e["dur"] / 1e3
    for i, (a, b) in enumerate(runs):
        run_totals[i] = (b - a) / 1e3
    nodes, by_provider = [], {}
    for name, n in per_node.items():
        ms = _steady(n["raw"])
        provider = n["provider"].removesuffix("ExecutionProvider") or "?"
        nodes.append({"name": name, "op": n["op"], "backend": provider, "ms": ms})
        by_provider[provider] = by_provider.get(provider, 0.0) + ms
    kernel = sum(by_provider.values())
    delegated = sum(v for k, v in by_provider.items() if k != "CPU")
    by_provider.setdefault("CPU", 0.0)
    return _ops_report("onnxruntime-profiler", nodes, _steady(run_totals), by_provider,
                       delegated / kernel if kernel > 0 else 0.0)


# ------------------------------------------------------------------------------ main


def memory_block(base: dict[str, int], end: dict[str, int], reset: bool) -> dict[str, Any]:
    """Peak RSS (``VmHWM``) over load and runs, above the baseline taken with the runtime
    imported. The keys are a contract: the android-demo app writes the same block."""
    if not base or not end:
        return {"available": False}
    return {"available": True, "baseline_rss_bytes": base["VmRSS"], "peak_rss_bytes": end["VmHWM"],
            "model_attributable_bytes": end["VmHWM"] - base["VmRSS"], "final_rss_bytes": end["VmRSS"],
            "peak_reset": reset}


def _memory_detail(base: dict[str, int], loaded: dict[str, int], end: dict[str, int]) -> dict[str, Any]:
    """For diagnosing the memory model (``edgeq.profiling.rss``): the RSS right after
    loading, and the final anonymous / file-backed growth over the baseline."""
    out: dict[str, Any] = {}
    if loaded:
        out.update(after_load_rss_bytes=loaded["VmRSS"], after_load_hwm_bytes=loaded["VmHWM"])
    if "RssAnon" in base and "RssAnon" in end:
        out.update(final_anon_bytes=end["RssAnon"] - base["RssAnon"], final_file_bytes=end["RssFile"] - base["RssFile"])
    return out


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The message's first line, cut at a word boundary (edgeq.errors.describe's rule;
    this file imports nothing from edgeq)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return text or type(exc).__name__


def profile(artifact: Path, runs: int, warmup: int, threads: int | None, ops: bool) -> dict[str, Any]:
    """Measure one artifact in this process; the report as a JSON-able dict."""
    manifest = read_manifest(artifact)
    model, fmt = check_model_file(artifact, manifest)
    host = host_info()
    thread_cfg = choose_threads(threads, manifest, host["usable_cores"])
    if fmt == "executorch" and "OMP_NUM_THREADS" not in os.environ:
        # The ExecuTorch pybindings import torch, whose OpenMP pool (a thread per core) would
        # spin beside XNNPACK's threads and slow the timed runs; the runtime never uses it (it
        # has its own thread pool), and an app linking the runtime alone has no such pool.
        # One thread, set before torch is imported.
        os.environ["OMP_NUM_THREADS"] = "1"
        thread_cfg["omp_num_threads"] = os.environ["OMP_NUM_THREADS"]
    runtime = require_runtime(fmt, manifest)
    specs = (manifest.get("model") or {}).get("inputs") or []
    if not specs:
        raise RunnerError(f"{artifact}/manifest.json lists no model inputs (re-run 'edgeq export')")
    arrays = make_inputs(specs)
    names = [s["name"] for s in specs]
    if fmt == "executorch":
        measured = time_executorch(model, arrays, runs, warmup, thread_cfg["used"])
    else:
        measured = time_onnx(model, arrays, names, runs, warmup, thread_cfg["used"])
    thread_cfg["used"] = measured.pop("threads_used")
    target = manifest.get("target") or {}
    delegates_used = (manifest.get("delegation") or {}).get("used") or []
    report: dict[str, Any] = {
        "runner_version": RUNNER_VERSION,
        "artifact": str(artifact),
        "model": (manifest.get("model") or {}).get("name"),
        "model_file": model.name,
        "format": fmt,
        "runtime": runtime,
        "precision": (manifest.get("precision") or {}).get("requested"),
        "target": target.get("name"),
        "target_device": target.get("device"),
        "delegates": delegates_used if fmt == "executorch" else ["CPUExecutionProvider"],
        "inputs": specs,
        "host": host,
        "threads": thread_cfg,
        "warmup": warmup,
        "runs": runs,
        "load_ms": measured["load_ms"],
        "latency_ms": latency_stats(measured["samples_ms"]),
        "samples_ms": measured["samples_ms"],
        "memory": measured["memory"],
        "memory_detail": measured["memory_detail"],
    }
    if ops:
        try:
            if fmt == "executorch":
                report["ops"] = ops_executorch(model, arrays, delegates_used)
            else:
                report["ops"] = ops_onnx(model, arrays, names, thread_cfg["used"])
        except RunnerError:
            raise
        except Exception as exc:  # per-op profiling is extra: keep the timings, say why it is missing
            report["ops"] = {"error": f"per-op profiling failed: {type(exc).__name__}: {_first_line(exc)}"}
    return report


def _write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runner.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="artifact directory (model.pte|model.onnx + manifest.json)")
    parser.add_argument("--runs", type=_positive, default=20, help="timed runs (default 20)")
    parser.add_argument("--warmup", type=_non_negative, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--threads", type=_positive, default=None, help="threads (default: the target's)")
    parser.add_argument("--ops", action="store_true", help="add a per-op profiling pass")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON report here instead of stdout")
    args = parser.parse_args(argv)
    try:
        report = profile(args.artifact.resolve(), args.runs, args.warmup, args.threads, args.ops)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1)
    if args.json_out:
        _write_atomic(args.json_out, text + "\n")
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
