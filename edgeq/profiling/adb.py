"""On-device profiling on Android over adb, with a native benchmark binary the user provides.

No Python runs on a phone, so edgeq's runner cannot: the device runs the runtime's own
benchmark binary, built for its ABI with the NDK, and edgeq parses what it prints:

- ``.pte``: ExecuTorch's ``executor_runner`` (``examples/portable/executor_runner``; for
  XNNPACK-delegated programs, a build with ``EXECUTORCH_BUILD_XNNPACK=ON``). It fills every
  input with ones and logs ``Model loaded in X ms``, ``Iteration i of n: X ms`` (recent
  versions) and ``Model executed successfully n time(s) in X ms.`` — on stderr with the
  posix PAL, in logcat (tag ``ExecuTorch``) with the Android PAL; both are read. It has no
  warm-up flag: edgeq runs ``warmup + runs`` iterations and drops the first ``warmup``
  when per-iteration times are printed; older builds print only the total, and then only
  the mean over all iterations is reported.
- ``.onnx``: ONNX Runtime's ``onnxruntime_perf_test`` (``-I -m times -r RUNS -s``): random
  inputs, one untimed warm-up run of its own, then ``Session creation time cost``,
  ``Min/Max/P50/P90 Latency`` and ``Peak working set size`` (the process's peak RSS).

The binary, the model and the manifest are pushed to ``/data/local/tmp/edgeq/<name>/``,
which is removed afterwards. Per-op profiling is not available over adb.

With no runner binary (or ``adb:SERIAL?app=PKG``), ``edgeq.profiling.adb_app.run_app`` drives the
android-demo app's benchmark mode instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeq.errors import clip
from edgeq.profiling.remote import (ANDROID_DIR, ANDROID_RUNNER_ENV, AdbDevice, DeviceAuthError, DeviceError,
                          DeviceRunError, DeviceSetupError, DeviceUnreachableError)

if TYPE_CHECKING:
    from edgeq.manifest import Manifest

# ELF e_machine values for the Android ABIs.
ELF_MACHINE = {"arm64-v8a": 183, "armeabi-v7a": 40, "x86_64": 62, "x86": 3}


def run(dev: AdbDevice, root: Path, manifest: Manifest, model: Path, *, runs: int, warmup: int,
        threads: int | None, ops: bool, runner: Path | None) -> dict[str, Any]:
    from edgeq.backends import get_backend

    fmt = manifest.target.format
    be = get_backend(fmt)
    adb = _adb_path()
    serial = pick_device(adb, dev.serial)
    runner = _check_runner(runner, be)
    shell = [adb, "-s", serial, "shell"]
    host, started_at = _device_info(shell, serial)
    abi = host["machine"]
    machine = _elf_machine(runner)
    if abi in ELF_MACHINE and machine is not None and machine != ELF_MACHINE[abi]:
        raise DeviceSetupError(f"runner {runner} is not built for {serial}'s ABI ({abi})",
                               f"build {be.ANDROID_RUNNER} for {abi} with the Android NDK")
    workdir = f"{ANDROID_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', root.name)}"
    try:
        _adb(shell + [f"rm -rf {workdir} && mkdir -p {workdir}"], serial)
        files = [runner, root / "manifest.json", model]
        t0 = time.perf_counter()
        _adb([adb, "-s", serial, "push", *map(str, files), workdir + "/"], serial)
        sent = time.perf_counter() - t0
        exe = f"{workdir}/{runner.name}"
        _adb(shell + [f"chmod 755 {exe}"], serial)
        cmd = be.android_command(workdir, runner.name, model.name, runs, warmup, threads)
        proc = subprocess.run(shell + [cmd], capture_output=True, text=True, errors="replace")
        output = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0:
            raise DeviceRunError(f"{runner.name} failed on {serial} (exit {proc.returncode}): {_last_line(output)}",
                                 f"check it is {be.ANDROID_RUNNER} built with the delegates this artifact uses", output[-4000:])
        if not be.android_output_complete(output):  # the runtime logged to logcat
            output += "\n" + _adb([adb, "-s", serial, "logcat", "-d", "-v", "brief", "-s", be.ANDROID_LOG_TAG,
                                   "-T", f"{started_at}.000"], serial, check=False).stdout
        measured = be.parse_android_output(output, warmup)
        if measured is None:
            raise DeviceRunError(f"found no timings in {runner.name}'s output on {serial}: {_last_line(output)}",
                                 f"pass {be.ANDROID_RUNNER} as the runner", output[-4000:])
    finally:
        _adb(shell + [f"rm -rf {workdir}"], serial, check=False)
    notes = [measured.pop("note")] if measured.get("note") else []
    if ops:
        notes.append("per-op profiling is not available over adb; profile the same artifact with ssh:// or on the host")
    target = manifest.target
    return {
        "mode": "device", "device": dev.url, "artifact": str(root), "model": manifest.model.name,
        "model_file": model.name, "format": fmt, "runtime": f"{fmt} ({runner.name})",
        "precision": manifest.precision.requested, "target": target.name,
        "target_device": target.device, "delegates": list(manifest.delegation.used),
        "inputs": [spec.model_dump() for spec in manifest.model.inputs],
        "host": host,
        "threads": {"requested": threads, "used": threads, "source": "--threads" if threads else "runner default"},
        "warmup": measured.pop("warmup"), "runs": measured.pop("runs"), **measured,
        "remote": {"transport": "adb", "serial": serial, "runner": str(runner), "workdir": workdir},
        "transfer": {"bytes": sum(f.stat().st_size for f in files), "seconds": round(sent, 3),
                     "files": [f.name for f in files]},
        **({"notes": notes} if notes else {}),
    }


def _adb_path() -> str:
    adb = shutil.which("adb")
    if adb is None:
        raise DeviceSetupError("adb not found",
                               "install Android platform-tools (https://developer.android.com/tools/releases/platform-tools) "
                               "and put adb on PATH")
    return adb


def _device_info(shell: list[str], serial: str) -> tuple[dict[str, Any], str]:
    """The report's ``host`` from getprop, and the device's clock (for ``logcat -T``)."""
    props = _adb(shell + ["getprop ro.product.manufacturer; getprop ro.product.model; getprop ro.soc.model; "
                          "getprop ro.product.cpu.abi; getprop ro.build.version.release; date +%m-%d\\ %H:%M:%S"],
                 serial).stdout.splitlines() + [""] * 6
    maker, product, soc, abi, release, started_at = (p.strip() for p in props[:6])
    return {"hostname": f"{maker} {product}".strip(), "machine": abi, "system": f"Android {release}".strip(),
            "cpu_model": soc or None}, started_at


def _check_runner(runner: Path | None, be: Any) -> Path:
    if runner is None:
        raise DeviceSetupError(
            "no runner binary for the Android device (edgeq ships none)",
            f"build {be.ANDROID_RUNNER} for the device with the Android NDK and pass it with --runner PATH "
            f"or {ANDROID_RUNNER_ENV}=PATH")
    runner = Path(runner).expanduser()
    if not runner.is_file():
        raise DeviceSetupError(f"runner {runner} not found", f"pass the path to {be.ANDROID_RUNNER} built for the device")
    if _elf_machine(runner) is None:
        raise DeviceSetupError(f"runner {runner} is not a native executable (ELF)",
                               f"pass {be.ANDROID_RUNNER} built for the device with the Android NDK")
    return runner


def _elf_machine(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def pick_device(adb: str, serial: str | None) -> str:
    """The serial to use, after checking ``adb devices`` lists it as ready (``device``)."""
    proc = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise DeviceSetupError(f"'adb devices' failed: {_last_line(proc.stdout + proc.stderr)}",
                               "restart the adb server (adb kill-server; adb start-server)")
    states: dict[str, str] = {}
    listing = proc.stdout.split("List of devices attached", 1)[-1]
    for line in listing.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and not line.startswith("*"):
            states[parts[0]] = parts[1].strip()
    if serial is None:
        if not states:
            raise DeviceUnreachableError("no Android device attached ('adb devices' lists none)",
                                         "connect one by USB with USB debugging on (Settings > Developer options)")
        if len(states) > 1:
            raise DeviceError(f"several Android devices attached ({', '.join(states)})",
                              f"pick one: --device adb:{next(iter(states))}")
        serial = next(iter(states))
    state = states.get(serial)
    if state is None:
        attached = f"attached: {', '.join(states)}" if states else "'adb devices' lists none"
        raise DeviceUnreachableError(f"Android device {serial} is not attached ({attached})",
                                     "connect it with USB debugging on, or check the serial")
    if state == "unauthorized":
        raise DeviceAuthError(f"Android device {serial} has not authorized this computer",
                              "unlock the device and accept the 'Allow USB debugging?' prompt, then retry")
    if state.startswith("no permissions"):
        raise DeviceAuthError(f"no permission to use Android device {serial} ({state})",
                              "add a udev rule for the device, as the Android docs on USB debugging say, "
                              "or run adb as its owner")
    if state == "offline":
        raise DeviceUnreachableError(f"Android device {serial} is offline",
                                     "reconnect the cable or run 'adb reconnect', and unlock the device")
    if state != "device":
        raise DeviceUnreachableError(f"Android device {serial} is in state '{state}', not ready",
                                     "boot it normally with USB debugging on")
    return serial


def _adb(cmd: list[str], serial: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=1800)
    except subprocess.TimeoutExpired:
        raise DeviceUnreachableError(f"adb did not finish on {serial} within 30 min", "check the device") from None
    if check and proc.returncode != 0:
        raise DeviceRunError(f"adb failed on {serial}: {_last_line(proc.stdout + proc.stderr)}",
                             "check the device is attached and has free space in /data/local/tmp",
                             (proc.stdout + proc.stderr)[-4000:])
    return proc


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return clip(lines[-1]) if lines else "no output"
