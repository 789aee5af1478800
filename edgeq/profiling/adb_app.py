"""On-device profiling on Android through the android-demo app's benchmark mode.

Or, with no runner binary (or ``adb:SERIAL?app=PKG[&bundle=ID]``), :func:`run_app` drives
the android-demo app's benchmark mode. The model is not pushed: it must already be in the
APK, bundled with ``edgeq bundle ARTIFACT android-demo`` before the app was built and
installed (bundle id ``ID``, default ``<model>-<target>``). Steps: ``pm path PKG`` (is it
installed), ``run-as PKG rm -f`` the previous results (``run-as`` only works for a
debuggable build, and the results live in the app's private ``files/``, so the debug APK
is required), the bundle's ``edgeq_bundle.json`` read from the APK with the device's
``unzip`` when it has one and its model files' sha256 compared with the artifact's,
``am start -W -S -n PKG/dev.edgeq.demo.BenchmarkActivity --es bundle ID --ei runs N --ei
warmup W [--ei threads T]``, then ``files/benchmark_results.json`` (or
``files/benchmark_error.txt``) polled for up to ``EDGEQ_ANDROID_APP_TIMEOUT`` seconds
(default 900), and the copy of ``edgeq_bundle.json`` the app ran (``files/edgeq/ID/``)
compared with the artifact again. Every figure in the report is the app's; nothing is
filled in when they cannot be read. Tested against a fake ``adb`` only.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from edgeq.profiling.adb import _adb, _adb_path, _device_info, _last_line, pick_device
from edgeq.errors import clip
from edgeq.manifest import Manifest
from edgeq.profiling.remote import ANDROID_APP, ANDROID_RUNNER_ENV, AdbDevice, DeviceRunError, DeviceSetupError

APP_TIMEOUT_ENV = "EDGEQ_ANDROID_APP_TIMEOUT"
APP_TIMEOUT_S = 900.0
# The class, not the package: a build with another applicationId keeps the class name.
BENCHMARK_ACTIVITY = "dev.edgeq.demo.BenchmarkActivity"
RESULTS_FILE = "files/benchmark_results.json"
ERROR_FILE = "files/benchmark_error.txt"
MAX_RESULTS_BYTES = 8 << 20  # 100 000 samples (the app's maximum) take ~2 MB
MAX_DESCRIPTION_BYTES = 1 << 20
STATS = ("min", "p50", "p90", "max", "mean", "stdev")


def run_app(dev: AdbDevice, root: Path, manifest: Manifest, model: Path, *, runs: int, warmup: int,
            threads: int | None, ops: bool, explicit: bool) -> dict[str, Any]:
    """Benchmark ``root`` with the android-demo app already installed on the device.

    ``explicit``: the device string named the app (``?app=``); otherwise the app is the
    fallback for a missing runner binary, and the errors say both ways out.
    """
    from edgeq.bundle.describe import default_bundle_id

    fmt = manifest.target.format
    adb = _adb_path()
    serial = pick_device(adb, dev.serial)
    pkg = dev.app or ANDROID_APP
    bundle_id = dev.bundle or default_bundle_id(manifest)
    shell = [adb, "-s", serial, "shell"]
    timeout = _app_timeout()
    apk = _installed_apk(shell, serial, pkg, fmt, explicit)
    host, _ = _device_info(shell, serial)
    _run_as(shell, serial, pkg, f"rm -f {RESULTS_FILE} {ERROR_FILE}")  # stale results never count
    notes: list[str] = []
    in_apk = _bundle_in_apk(shell, serial, pkg, apk, bundle_id, root)
    if in_apk is None:
        notes.append(f"{serial} has no unzip: the bundle in the APK was compared with the artifact only after the run, "
                     "in the copy the app ran")
    else:
        _check_bundle(in_apk, root, manifest, model, bundle_id, f"{pkg}'s APK on {serial}")
    component = f"{pkg}/{BENCHMARK_ACTIVITY}"
    extras = f"--es bundle {bundle_id} --ei runs {runs} --ei warmup {warmup}" + (f" --ei threads {threads}" if threads else "")
    started = time.perf_counter()
    proc = _adb(shell + [f"am start -W -S -n {component} {extras}"], serial, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or re.search(r"^(Error|Exception|java\.)", out, re.MULTILINE):
        raise DeviceRunError(f"'am start' of {component} failed on {serial}: {_last_line(out)}",
                             f"check {pkg} is android-demo (it has BenchmarkActivity); reinstall its debug APK", out[-4000:])
    data = _wait_for_results(shell, serial, pkg, timeout)
    elapsed = time.perf_counter() - started
    ran = _read_app_file(shell, serial, pkg, f"files/edgeq/{bundle_id}/edgeq_bundle.json", MAX_DESCRIPTION_BYTES)
    if ran is None:
        raise DeviceRunError(f"{pkg} on {serial} wrote results but has no files/edgeq/{bundle_id}/edgeq_bundle.json",
                             "reinstall android-demo's debug APK; the bundle it ran cannot be checked")
    _check_bundle(ran, root, manifest, model, bundle_id, f"the copy {pkg} ran on {serial}")
    results = _parse_results(data, f"{pkg}'s {RESULTS_FILE} on {serial}", bundle_id=bundle_id, fmt=fmt,
                             runs=runs, warmup=warmup)
    memory = results.get("memory") or {"available": False}
    if memory.get("available"):
        notes.append(f"memory is the app's proportional set size ({memory.get('source') or 'Debug.getPss'}), "
                     "not peak RSS: not comparable with host or ssh:// reports")
    golden = results.get("golden")
    if isinstance(golden, dict) and golden.get("ok") is False:
        notes.append(f"the app's golden check FAILED on {serial} (max abs diff {golden.get('max_abs_diff')}, "
                     f"cosine {golden.get('cosine')}): the latencies are of a model that computes wrong outputs there")
    if ops:
        notes.append("per-op profiling is not available over adb; profile the same artifact with ssh:// or on the host")
    target = manifest.target
    used = (results.get("threads") or {}).get("used")
    return {
        "mode": "device", "device": dev.url, "artifact": str(root), "model": manifest.model.name,
        "model_file": model.name, "format": fmt, "runtime": f"{fmt} ({pkg}: {results.get('runtime') or 'runtime not named'})",
        "precision": manifest.precision.requested, "target": target.name,
        "target_device": target.device, "delegates": list(manifest.delegation.used),
        "inputs": [spec.model_dump() for spec in manifest.model.inputs], "host": host,
        "threads": {"requested": threads, "used": used if isinstance(used, int) and used > 0 else None,
                    "source": "--threads" if threads else "bundle (the target's threads)"},
        "warmup": results["warmup"], "runs": results["runs"], "load_ms": results["load_ms"],
        "latency_ms": {k: results["latency_ms"][k] for k in STATS}, "samples_ms": results["samples_ms"],
        "memory": memory, **({"golden": golden} if isinstance(golden, dict) else {}),
        "remote": {"transport": "adb", "serial": serial, "app": pkg, "apk": apk, "activity": component,
                   "bundle": bundle_id, "seconds": round(elapsed, 3)},
        **({"notes": notes} if notes else {}),
    }


def _app_timeout() -> float:
    import os

    text = os.environ.get(APP_TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else APP_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise DeviceSetupError(f"{APP_TIMEOUT_ENV}='{clip(text)}' is not a number of seconds",
                               f"set it to how long to wait for the app's results, e.g. {APP_TIMEOUT_ENV}=1800")
    return value


def _installed_apk(shell: list[str], serial: str, pkg: str, fmt: str, explicit: bool) -> str:
    proc = _adb(shell + [f"pm path {pkg}"], serial, check=False)
    paths = [ln[len("package:"):].strip() for ln in proc.stdout.splitlines() if ln.startswith("package:")]
    if paths:
        return next((p for p in paths if p.endswith("/base.apk")), paths[0])
    install = (f"build android-demo with this artifact's bundle ('edgeq bundle ARTIFACT android-demo', then Gradle's "
               f"assembleDebug) and install it: adb -s {serial} install -r app-debug.apk")
    if explicit:
        raise DeviceSetupError(f"{pkg} is not installed on {serial}", f"{install}; or check ?app=")
    from edgeq.backends import get_backend

    raise DeviceSetupError(f"no runner binary for the Android device, and the android-demo app ({pkg}) is not "
                           f"installed on {serial}",
                           f"{install}; or build {get_backend(fmt).ANDROID_RUNNER} with the Android NDK and pass it "
                           f"with {ANDROID_RUNNER_ENV}=PATH")


def _run_as(shell: list[str], serial: str, pkg: str, command: str) -> subprocess.CompletedProcess:
    proc = _adb(shell + [f"run-as {pkg} {command}"], serial, check=False)
    said = next((ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("run-as:")), None)
    if said is not None:
        raise DeviceSetupError(f"cannot read {pkg}'s files on {serial} ({clip(said)})",
                               "edgeq reads the results with 'adb shell run-as', which works only for a debuggable "
                               "build: install android-demo's debug APK (assembleDebug)")
    return proc


def _read_app_file(shell: list[str], serial: str, pkg: str, rel: str, limit: int) -> bytes | None:
    """Up to ``limit + 1`` bytes of the app's file ``rel`` (None when it does not exist)."""
    code, data, err = _read_bounded(shell + [f"run-as {pkg} cat {rel}"], limit)
    if len(data) > limit:
        return data  # too large: the caller says so
    if code != 0 or b"No such file" in data[:200]:
        text = (data[:2000].decode(errors="replace") + err)
        if "run-as:" in text:
            _run_as(shell, serial, pkg, "true")  # raises the not-debuggable error
        return None
    return data


def _read_bounded(cmd: list[str], limit: int, timeout: float = 300) -> tuple[int, bytes, str]:
    """Run ``cmd``, keep at most ``limit + 1`` bytes of its stdout (then stop it)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        data = proc.stdout.read(limit + 1)
        if len(data) > limit:
            proc.kill()
        err = proc.stderr.read(8192).decode(errors="replace")
        code = proc.wait()
    finally:
        watchdog.cancel()
        proc.stdout.close()
        proc.stderr.close()
    return code, data, err


def _bundle_in_apk(shell: list[str], serial: str, pkg: str, apk: str, bundle_id: str, root: Path) -> bytes | None:
    """The APK's ``edgeq_bundle.json`` for ``bundle_id``; None if the device cannot unzip."""
    def entry(name: str) -> tuple[int, bytes, str]:
        return _read_bounded(shell + [f"unzip -p {shlex.quote(apk)} assets/edgeq/{name}"], MAX_DESCRIPTION_BYTES)

    code, data, err = entry(f"{bundle_id}/edgeq_bundle.json")
    if code == 0 and data:
        return data
    if code == 127 or re.search(r"\bunzip: (inaccessible or )?not found", err + data[:500].decode(errors="replace")):
        return None
    code, index, _ = entry("index.json")
    try:
        ids = [str(b.get("id")) for b in json.loads(index)["bundles"]] if code == 0 else []
    except (ValueError, KeyError, TypeError, AttributeError):
        ids = []
    holds = f"it holds {', '.join(ids)}" if ids else "it holds no edgeq bundle"
    raise DeviceSetupError(
        f"bundle '{bundle_id}' is not in {pkg} on {serial} ({clip(holds)})",
        f"bundles live in the APK's assets: run 'edgeq bundle {root} android-demo --id {bundle_id}', rebuild and "
        "reinstall the app; or name the bundle the APK has with &bundle=ID")


def _check_bundle(data: bytes, root: Path, manifest: Manifest, model: Path, bundle_id: str, where: str) -> None:
    """The bundle's model files (model + external data) have the artifact's sha256."""
    try:
        desc = json.loads(data)
        table = desc["files"]
        if not isinstance(table, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise DeviceRunError(f"edgeq_bundle.json of bundle '{bundle_id}' in {where} is not readable",
                             "re-run 'edgeq bundle', rebuild and reinstall the app") from None
    ours = {rel: info.sha256 for rel, info in manifest.files.items()
            if rel == model.name or rel.startswith((model.name + ".", model.stem + ".data"))}
    ours.setdefault(model.name, None)
    for rel, digest in sorted(ours.items()):
        theirs = (table.get(rel) or {}).get("sha256") if isinstance(table.get(rel), dict) else None
        if digest is None or theirs != digest:
            raise DeviceSetupError(
                f"bundle '{bundle_id}' in {where} is not this artifact: its {rel} has sha256 "
                f"{str(theirs)[:12]}, {root}'s has {str(digest)[:12]}",
                f"run 'edgeq bundle {root} android-demo --id {bundle_id} --force', rebuild and reinstall the app")


def _wait_for_results(shell: list[str], serial: str, pkg: str, timeout: float) -> bytes:
    """Poll the app's ``files/`` until it writes its results or its error, crashes, or time runs out."""
    deadline = time.monotonic() + timeout
    interval = min(1.0, max(0.05, timeout / 20))
    gone_before = False
    logcat = f"adb -s {serial} logcat -d -s edgeq-benchmark AndroidRuntime"
    while True:
        names = set(_run_as(shell, serial, pkg, "ls files").stdout.split())
        if RESULTS_FILE.split("/")[1] in names:
            data = _read_app_file(shell, serial, pkg, RESULTS_FILE, MAX_RESULTS_BYTES)
            if data is not None:
                return data
        if ERROR_FILE.split("/")[1] in names:
            text = (_read_app_file(shell, serial, pkg, ERROR_FILE, 4000) or b"").decode(errors="replace")
            raise DeviceRunError(f"the benchmark failed in {pkg} on {serial}: "
                                 f"{_last_line(text).removeprefix('error: ')}",
                                 f"see {logcat}; check the bundle is the one for this artifact", text)
        pid = _adb(shell + [f"pidof {pkg}"], serial, check=False)
        gone = pid.returncode == 1 and not pid.stdout.strip()
        if gone and gone_before:  # twice: not a process that exited right after writing
            raise DeviceRunError(f"{pkg} stopped on {serial} without writing results (it crashed?)",
                                 f"see {logcat}")
        gone_before = gone
        if time.monotonic() > deadline:
            raise DeviceRunError(f"{pkg} wrote no results on {serial} within {timeout:g} s",
                                 f"a long benchmark needs more time: {APP_TIMEOUT_ENV}=SECONDS; see {logcat}")
        time.sleep(interval)


def _parse_results(data: bytes, where: str, *, bundle_id: str, fmt: str, runs: int, warmup: int) -> dict[str, Any]:
    """The app's results, checked: a JSON object in ``edgeq profile --json``'s shape for this run."""
    hint = "re-run; if it persists, reinstall android-demo's debug APK"
    if len(data) > MAX_RESULTS_BYTES:
        raise DeviceRunError(f"{where} is larger than {MAX_RESULTS_BYTES} bytes", hint)
    try:
        results = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DeviceRunError(f"{where} is not valid JSON", hint) from None
    if not isinstance(results, dict):
        raise DeviceRunError(f"{where} is not a JSON object", hint)

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0

    lat, samples, memory = results.get("latency_ms"), results.get("samples_ms"), results.get("memory")
    problem = None
    if results.get("bundle_id") != bundle_id or results.get("format") != fmt:
        problem = f"is for bundle {clip(str(results.get('bundle_id')))} ({clip(str(results.get('format')))}), " \
                  f"not {bundle_id} ({fmt})"
    elif results.get("runs") != runs or results.get("warmup") != warmup:
        problem = f"has {clip(str(results.get('runs')))} runs after {clip(str(results.get('warmup')))} warm-up, " \
                  f"not the {runs} after {warmup} asked for"
    elif not (isinstance(lat, dict) and all(number(lat.get(k)) for k in STATS)
              and lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"]):
        problem = "has no valid latency_ms (min <= p50 <= p90 <= max, mean, stdev)"
    elif not (isinstance(samples, list) and len(samples) == runs and all(number(x) for x in samples)):
        problem = f"has no samples_ms list of {runs} timings"
    elif not number(results.get("load_ms")):
        problem = "has no load_ms"
    elif memory is not None and not (isinstance(memory, dict) and (not memory.get("available") or all(
            isinstance(memory.get(k), int) and not isinstance(memory.get(k), bool)
            for k in ("baseline_rss_bytes", "peak_rss_bytes", "model_attributable_bytes")))):
        problem = "has an unreadable memory record"
    if problem:
        raise DeviceRunError(f"{where} {problem}", hint)
    return results
