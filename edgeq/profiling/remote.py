"""On-device profiling: run an artifact on a Linux board over ssh, or on an Android device over adb.

Devices are named by a string:

``ssh://[user@]host[:port][/][?python=/path/to/python]``
    A Linux board (Raspberry Pi, Jetson, any Linux host) reached with the system's
    OpenSSH client, so ``~/.ssh/config`` applies (``host`` may be an alias there; ``user``
    and ``port`` default to what it says). ``python`` is the board's interpreter
    (default ``python3``; ``~/venv/bin/python`` is expanded on the board); it needs the
    artifact's runtime: ExecuTorch (``pip install executorch``) for ``.pte``, ONNX Runtime
    and numpy for ``.onnx``. Extra client options come from ``EDGEQ_SSH_OPTS``
    (e.g. ``-i ~/.ssh/pi_key -J bastion``) or the ``ssh_options`` argument. ssh runs with
    ``BatchMode=yes``: key authentication only, never a password prompt.

    Steps: check the board's Python and that the runtime is installed (one connection; the
    board's ``/tmp`` gets a fresh ``edgeq-*`` directory), stream edgeq's runner
    (``edgeq/profiling/runner.py``, stdlib + the runtime) and the model file + manifest into it as a
    tar over ssh, run the runner, read its JSON report, and always remove the directory.
    The report adds ``remote`` (destination, Python, runtime version) and ``transfer``
    (bytes, seconds: copying is never part of a latency); ``host`` is what the runner saw.

``adb:SERIAL`` / ``adb:`` (the only attached device)
    An Android device. No Python runs there: a native benchmark binary built for the
    device does, given with the ``android_runner`` argument or ``EDGEQ_ANDROID_RUNNER``:
    ExecuTorch's ``executor_runner`` for ``.pte`` or ONNX Runtime's ``onnxruntime_perf_test``
    for ``.onnx``. It is pushed with the model to ``/data/local/tmp/edgeq/<name>/``, run, its
    output parsed, and the directory removed.

``adb:SERIAL?app=PKG[&bundle=ID]`` (or ``adb:SERIAL`` with no runner binary given)
    The android-demo app (``PKG`` default ``dev.edgeq.demo``), installed as a debuggable
    build whose APK holds this artifact's bundle (``edgeq bundle``; ``ID`` defaults to
    ``<model>-<target>`` as there): its ``BenchmarkActivity`` is started with ``am start``
    and its ``files/benchmark_results.json`` read back with ``run-as`` (see ``edgeq.profiling.adb``).

Nothing is ever estimated here: every number in the report was measured on the device,
or the call fails with a ``DeviceError`` saying what is missing and what to do.

>>> report = run_on_device(Path("dist/m-rpi5"), "ssh://pi@raspberrypi.local", runs=20, warmup=3,
...                        threads=None, ops=False)  # doctest: +SKIP
>>> report["latency_ms"]["p50"], report["host"]["cpu_model"], report["transfer"]["seconds"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import parse_qs, urlsplit

from edgeq.errors import EdgeqError, clip, did_you_mean

if TYPE_CHECKING:
    from edgeq.manifest import Manifest

RUNNER = Path(__file__).with_name("runner.py")
SSH_OPTS_ENV = "EDGEQ_SSH_OPTS"
ANDROID_RUNNER_ENV = "EDGEQ_ANDROID_RUNNER"
ANDROID_DIR = "/data/local/tmp/edgeq"
_MARK = "@@edgeq-report@@"
_SSH_DEFAULTS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15",
                 "-o", "ServerAliveCountMax=4"]
# What the runner imports on the board, per artifact format: looked up (not imported: torch
# alone takes seconds to import on a board) before anything is copied.
MIN_PYTHON = (3, 9)  # runner.py uses str.removesuffix


class DeviceError(EdgeqError):
    """The device for on-device profiling cannot be used (the base of the errors below)."""


class DeviceUnreachableError(DeviceError):
    """No connection: host unknown, refused, timed out; Android device absent or offline."""


class DeviceAuthError(DeviceError):
    """Connected, but not let in: ssh key refused, host key unknown, adb unauthorized."""


class DeviceSetupError(DeviceError):
    """Something needed is missing: ssh/adb here, Python or the runtime on the device, a runner."""


class DeviceRunError(DeviceError):
    """The runner started on the device and failed; ``output_tail`` keeps its last lines."""

    def __init__(self, message: str, hint: str = "", output_tail: str = "") -> None:
        super().__init__(message, hint)
        self.output_tail = output_tail


# --- device strings ---------------------------------------------------------------------


@dataclass(frozen=True)
class SshDevice:
    url: str
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"

    @property
    def base_url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}" + (f":{self.port}" if self.port else "")


@dataclass(frozen=True)
class AdbDevice:
    """``app`` set: benchmark through that app's ``BenchmarkActivity`` (android-demo), not a runner binary."""

    url: str
    serial: str | None = None
    app: str | None = None
    bundle: str | None = None


ANDROID_APP = "dev.edgeq.demo"  # android-demo's applicationId
_PACKAGE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as edgeq.bundle.describe.check_bundle_id


_NETLOC = re.compile(r"(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.%-]+)(?::(?P<port>\d{1,5}))?")


def parse_device(device: str) -> SshDevice | AdbDevice:
    """``ssh://[user@]host[:port][?python=PATH]`` or ``adb:[SERIAL][?app=PKG][&bundle=ID]`` → a device."""
    text = device.strip()
    if text in ("adb", "adb:") or text.startswith("adb:"):
        return _parse_adb(device, text)
    if not text.startswith("ssh://"):
        raise DeviceError(f"unknown device '{device}'",
                          "use ssh://[user@]host[:port] for a Linux board, or adb:SERIAL for Android "
                          "(adb: alone picks the only attached device)")
    parts = urlsplit(text)
    found = _NETLOC.fullmatch(parts.netloc)
    if not found or found.group("host").startswith("-") or parts.path not in ("", "/") or parts.fragment:
        raise DeviceError(f"cannot read ssh device '{device}'",
                          "write it as ssh://[user@]host[:port][?python=/path/to/python3]")
    port = int(found.group("port")) if found.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise DeviceError(f"port {port} in '{device}' is out of range", "use a port from 1 to 65535")
    query = parse_qs(parts.query, keep_blank_values=True)
    for key in query:
        if key != "python":
            raise DeviceError(f"unknown parameter '{key}' in '{device}'{did_you_mean(key, ['python'])}",
                              "the only parameter is ?python=/path/to/python3")
    python = query.get("python", ["python3"])[-1].strip()
    if not python:
        raise DeviceError(f"empty python= in '{device}'", "give the board's interpreter, e.g. ?python=/usr/bin/python3")
    return SshDevice(url=text, host=found.group("host").strip("[]"), user=found.group("user"), port=port, python=python)


def _parse_adb(device: str, text: str) -> AdbDevice:
    serial, mark, query_text = text[4:].partition("?")
    if serial and not re.fullmatch(r"[A-Za-z0-9._:\-\[\]]+", serial):
        raise DeviceError(f"'{device}' is not a valid adb serial",
                          "use adb:SERIAL as listed by 'adb devices', or adb: for the only device")
    query = parse_qs(query_text, keep_blank_values=True) if mark else {}
    for key in query:
        if key not in ("app", "bundle"):
            raise DeviceError(f"unknown parameter '{key}' in '{device}'{did_you_mean(key, ['app', 'bundle'])}",
                              f"the parameters are ?app={ANDROID_APP}&bundle=BUNDLE_ID")
    app = query["app"][-1].strip() if "app" in query else None
    bundle = query["bundle"][-1].strip() if "bundle" in query else None
    if app is not None and not _PACKAGE.fullmatch(app):
        raise DeviceError(f"app= in '{device}' is not an Android package name",
                          f"give the app's applicationId, e.g. ?app={ANDROID_APP}")
    if bundle is not None and (not _BUNDLE_ID.fullmatch(bundle) or ".." in bundle):
        raise DeviceError(f"bundle= in '{device}' is not a bundle id",
                          "give the id 'edgeq bundle' used: 1-64 letters, digits, '.', '_' or '-'")
    if bundle is not None and app is None:
        app = ANDROID_APP  # a bundle only exists inside an app
    return AdbDevice(url=text, serial=serial or None, app=app, bundle=bundle)


def run_on_device(artifact_dir: Path, device: str, *, runs: int, warmup: int, threads: int | None, ops: bool,
                  ssh_options: Sequence[str] | None = None, android_runner: Path | None = None) -> dict[str, Any]:
    """Profile ``artifact_dir`` on ``device`` and return the runner's report.

    The report is the one host mode produces, measured on the device, plus ``mode:
    "device"``, ``device`` (the string given), ``remote`` (what the device is: host,
    machine, CPU, Python and runtime versions) and ``transfer`` (bytes and seconds spent
    copying, not part of any latency). ``ssh_options`` replaces ``EDGEQ_SSH_OPTS``;
    ``android_runner`` replaces ``EDGEQ_ANDROID_RUNNER``; with neither, or with ``?app=``
    in an ``adb:`` string, the android-demo app installed on the device is driven instead
    (``edgeq.profiling.adb_app.run_app``). Raises a ``DeviceError`` subclass when the device cannot be
    reached or used.
    """
    from edgeq.artifact import read_artifact

    target = parse_device(device)
    manifest, model = read_artifact(Path(artifact_dir))
    if isinstance(target, AdbDevice):
        runner = android_runner or os.environ.get(ANDROID_RUNNER_ENV) or None
        if target.app is not None or runner is None:
            from edgeq.profiling import adb_app

            return adb_app.run_app(target, Path(artifact_dir), manifest, model, runs=runs, warmup=warmup,
                               threads=threads, ops=ops, explicit=target.app is not None)
        return _run_adb(target, Path(artifact_dir), manifest, model, runs=runs, warmup=warmup, threads=threads,
                        ops=ops, runner=Path(runner) if runner else None)
    if ssh_options is None:
        try:
            ssh_options = shlex.split(os.environ.get(SSH_OPTS_ENV, ""))
        except ValueError as exc:
            raise DeviceSetupError(f"cannot read {SSH_OPTS_ENV} ({exc})",
                                   "quote it as you would on a shell command line") from None
    return _run_ssh(target, Path(artifact_dir), manifest, model, runs=runs, warmup=warmup, threads=threads,
                    ops=ops, options=list(ssh_options))


# --- ssh ---------------------------------------------------------------------------------

# Runs on the board (Python >= 3.6, stdlib only): what the board is, whether the runtime's
# modules are installed, and (if they are) a fresh temporary directory for the run.
_PROBE = r"""
import importlib.util, json, os, platform, sys, tempfile
fmt = sys.argv[1]
info = {"python": sys.executable, "python_version": platform.python_version(), "machine": platform.machine(),
        "system": platform.system(), "release": platform.release(), "hostname": platform.node(),
        "cpu_count": os.cpu_count()}
try:
    cpu = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        if value.strip():
            cpu.setdefault(key.strip(), value.strip())
    info["cpu_model"] = cpu.get("model name") or cpu.get("Model") or cpu.get("Hardware")
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            info["mem_total_bytes"] = int(line.split()[1]) * 1024
except (OSError, ValueError):
    pass
info["missing"] = []
for mod in json.loads(sys.argv[2]):
    try:
        found = importlib.util.find_spec(mod) is not None
    except Exception:  # a parent package is missing or broken
        found = False
    if not found:
        info["missing"].append(mod)
if not info["missing"]:
    try:
        from importlib.metadata import version
        info["runtime_version"] = version(sys.argv[3])
    except Exception:
        pass
    info["workdir"] = tempfile.mkdtemp(prefix="edgeq-")
print("@@edgeq-probe@@" + json.dumps(info))
"""

_EXTRACT = r"""
import sys, tarfile
archive = tarfile.open(fileobj=sys.stdin.buffer, mode="r|")
archive.extractall(sys.argv[1], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
"""


def _remote_path(path: str) -> str:
    """Quote ``path`` for the board's shell, keeping a leading ``~/`` expandable."""
    return '"$HOME"/' + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


class _Ssh:
    def __init__(self, dev: SshDevice, options: list[str]) -> None:
        if shutil.which("ssh") is None:
            raise DeviceSetupError("ssh not found on this machine",
                                   "install the OpenSSH client (e.g. apt install openssh-client) to profile over ssh://")
        self.dev = dev
        self.base = ["ssh", *options, *_SSH_DEFAULTS]
        if dev.port:
            self.base += ["-p", str(dev.port)]
        if dev.user:
            self.base += ["-l", dev.user]
        # What ssh will actually use (after ~/.ssh/config and the options): for messages.
        probe = subprocess.run([*self.base, "-G", "--", dev.host], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            raise DeviceSetupError(f"ssh rejected its options: {_last_line(probe.stderr)}",
                                   f"check {SSH_OPTS_ENV} and ~/.ssh/config")
        conf = dict(line.split(" ", 1) for line in probe.stdout.splitlines() if " " in line)
        host = conf.get("hostname", dev.host)
        host = f"[{host}]" if ":" in host else host
        self.port = conf.get("port", "22")
        self.login = f"{conf.get('user', dev.user or '')}@{host}"
        self.dest = self.login + ("" if self.port == "22" else f":{self.port}")

    def command(self, remote: str) -> list[str]:
        return [*self.base, "--", self.dev.host, remote]

    def run(self, remote: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.command(remote), capture_output=True, text=True, errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceUnreachableError(f"ssh to {self.dest} did not answer within {timeout:.0f}s",
                                         "check the board is up and not overloaded") from None

    def failure(self, stderr: str) -> DeviceError:
        """The error for an ssh-level failure (exit 255), from ssh's message."""
        last = _last_line(stderr)
        denied = re.search(r"Permission denied \(([^)]*)\)", stderr)
        port = "" if self.port == "22" else f"-p {self.port} "
        if denied:
            return DeviceAuthError(
                f"ssh to {self.dest} failed: Permission denied ({denied.group(1)})",
                f"set up key auth with 'ssh-copy-id {port}{self.login}': edgeq runs ssh with BatchMode=yes and cannot "
                f"type a password; a key that is not the default one goes in ~/.ssh/config or {SSH_OPTS_ENV}='-i KEY'")
        if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            return DeviceAuthError(f"ssh to {self.dest} failed: host key verification failed",
                                   f"connect once by hand ('ssh {port}{self.login}') to check and accept the board's "
                                   "host key, or fix its line in ~/.ssh/known_hosts")
        hint = "check the board is powered on and on the network, and the host name and port (ssh://user@host:port)"
        if "Could not resolve hostname" in stderr:
            return DeviceUnreachableError(f"cannot reach {self.dest}: unknown host name '{self.dev.host}'",
                                          "check the spelling, or use the board's IP address")
        if "Connection refused" in stderr:
            return DeviceUnreachableError(f"cannot reach {self.dest}: connection refused",
                                          "check sshd runs on the board on that port: sudo systemctl enable --now ssh")
        if re.search(r"timed out|No route to host|Network is unreachable|not responding", stderr):
            return DeviceUnreachableError(f"cannot reach {self.dest}: {_ssh_reason(last)}", hint)
        return DeviceUnreachableError(f"ssh to {self.dest} failed: {_ssh_reason(last) or 'no reason given'}", hint)


def _run_ssh(dev: SshDevice, root: Path, manifest: Manifest, model: Path, *, runs: int, warmup: int,
             threads: int | None, ops: bool, options: list[str]) -> dict[str, Any]:
    if not RUNNER.exists():
        raise DeviceSetupError(f"edgeq's runner is missing ({RUNNER})", "reinstall edgeq")
    ssh = _Ssh(dev, options)
    fmt = manifest.target.format
    started = time.perf_counter()
    info = _probe(ssh, fmt, manifest)
    checked = time.perf_counter()
    workdir = info["workdir"]
    notes: list[str] = []
    try:
        files = _artifact_files(root, manifest, model)
        sent = _upload(ssh, workdir, root, files)
        uploaded = time.perf_counter()
        report = _run_runner(ssh, workdir, runs=runs, warmup=warmup, threads=threads, ops=ops)
        finished = time.perf_counter()
    finally:
        if not _cleanup(ssh, workdir):
            notes.append(f"could not remove {workdir} on {ssh.dest}; delete it by hand")
    from edgeq.backends import get_backend

    ours = manifest.versions.get(get_backend(fmt).RUNTIME_PACKAGE)
    if ours and info.get("runtime_version") and info["runtime_version"] != ours:
        notes.append(f"the board runs {fmt} {info['runtime_version']}; the artifact was exported with {ours}")
    report.update(mode="device", device=dev.url, artifact=str(root))
    report["remote"] = {
        "transport": "ssh", "destination": ssh.dest, "python": info.get("python"),
        "python_version": info.get("python_version"), "runtime_version": info.get("runtime_version"),
        "release": info.get("release"), "mem_total_bytes": info.get("mem_total_bytes"), "workdir": workdir,
    }
    report["transfer"] = {"bytes": sent, "seconds": round(uploaded - checked, 3), "files": files}
    report["device_timings_s"] = {"connect_and_check": round(checked - started, 3),
                                  "transfer": round(uploaded - checked, 3), "run": round(finished - uploaded, 3)}
    if notes:
        report["notes"] = [*report.get("notes", []), *notes]
    return report


def _probe(ssh: _Ssh, fmt: str, manifest: Manifest) -> dict[str, Any]:
    """Run ``_PROBE`` with the board's Python: what the board is, and a temp dir if all is there."""
    python = ssh.dev.python
    from edgeq.backends import get_backend

    be = get_backend(fmt)
    modules = shlex.quote(json.dumps(list(be.RUNNER_MODULES)))
    proc = ssh.run(f"{_remote_path(python)} -c {shlex.quote(_PROBE)} {fmt} {modules} {be.RUNTIME_PACKAGE}",
                   timeout=300)
    if proc.returncode == 255:
        raise ssh.failure(proc.stderr)
    where = f"{ssh.dev.base_url}?python=/path/to/python3"
    if proc.returncode == 127:
        raise DeviceSetupError(f"no Python at '{python}' on {ssh.dest}",
                               f"install Python 3 on the board with 'sudo apt install python3', or point at it: {where}")
    if proc.returncode == 126:
        raise DeviceSetupError(f"'{python}' on {ssh.dest} cannot be executed", f"point at the board's Python 3: {where}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@edgeq-probe@@")), None)
    if proc.returncode != 0 or line is None:
        raise DeviceSetupError(
            f"'{python}' on {ssh.dest} failed to run edgeq's check: {_last_line(proc.stderr) or 'no output'}",
            f"point at a working Python 3: {where}")
    info = json.loads(line[len("@@edgeq-probe@@"):])
    label = f"{ssh.dest}'s Python ({info['python']}, {info['python_version']})"
    problem: DeviceError | None = None
    version = tuple(int(x) for x in re.findall(r"\d+", info["python_version"])[:2])
    if version < MIN_PYTHON:
        needed = ".".join(map(str, MIN_PYTHON))
        problem = DeviceSetupError(f"{label} is too old for edgeq's runner (needs {needed} or newer)",
                                   f"install a newer Python on the board and point at it: {where}")
    elif info["missing"]:
        versions = manifest.versions
        packages = []
        for mod in info["missing"]:
            package = mod.split(".")[0]
            pin = str(versions.get(package, "")).split("+")[0]  # no local label: 2.13.0+cpu -> 2.13.0
            pinned = f"{package}=={pin}" if pin and package != "numpy" else package
            if pinned not in packages:
                packages.append(pinned)
        problem = DeviceSetupError(
            f"{label} has no {', '.join(info['missing'])}, needed to run this {fmt} artifact",
            f"install on the board: {info['python']} -m pip install {' '.join(packages)}; "
            "or install into a venv there and pass ?python=/path/to/venv/bin/python")
    if problem is not None:
        if "workdir" in info:
            _cleanup(ssh, info["workdir"])
        raise problem
    return info


def _artifact_files(root: Path, manifest: Manifest, model: Path) -> list[str]:
    """What the runner needs: the manifest, the model and its external data (``model.onnx.data``)."""
    names = {"manifest.json", model.name}
    names |= {rel for rel in manifest.files if rel.startswith((model.name + ".", model.stem + ".data"))}
    return sorted(n for n in names if (root / n).is_file())


def _upload(ssh: _Ssh, workdir: str, root: Path, files: list[str]) -> int:
    """Stream runner.py and ``files`` (under ``artifact/``) as a tar into ``workdir``; bytes sent."""
    remote = f"{_remote_path(ssh.dev.python)} -c {shlex.quote(_EXTRACT)} {shlex.quote(workdir)}"
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(ssh.command(remote), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        counter = _CountingWriter(proc.stdin)
        try:
            with tarfile.open(fileobj=counter, mode="w|") as tar:
                tar.add(RUNNER, arcname="runner.py")
                for rel in files:
                    tar.add(root / rel, arcname=f"artifact/{rel}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # ssh or the extractor died: its message is on stderr
        finally:
            try:
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        code = proc.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if code == 255:
        raise ssh.failure(stderr)
    if code != 0:
        raise DeviceRunError(f"copying the artifact to {ssh.dest}:{workdir} failed: {_last_line(stderr)}",
                             "check free space in the board's temp directory (df -h /tmp)", stderr[-2000:])
    return counter.count


class _CountingWriter:
    def __init__(self, raw: Any) -> None:
        self.raw, self.count = raw, 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def _run_runner(ssh: _Ssh, workdir: str, *, runs: int, warmup: int, threads: int | None, ops: bool) -> dict[str, Any]:
    args = ["runner.py", "artifact", "--runs", str(runs), "--warmup", str(warmup), "--json-out", "report.json"]
    if threads is not None:
        args += ["--threads", str(threads)]
    if ops:
        args.append("--ops")
    # The runner's stdout goes to stderr so that stdout carries only the marker and the report.
    remote = (f"cd {shlex.quote(workdir)} && {_remote_path(ssh.dev.python)} {shlex.join(args)} >&2 && "
              f"printf '%s\\n' {_MARK} && cat report.json")
    proc = ssh.run(remote)
    if proc.returncode == 255 and _is_ssh_message(proc.stderr):
        err = ssh.failure(proc.stderr)
        raise type(err)(f"lost the connection to {ssh.dest} while the runner ran: {err.message}", err.hint)
    if proc.returncode != 0:
        what = f"exit {proc.returncode}"
        hint = "re-run with --debug for its output; run it by hand on the board with the same artifact to see more"
        if proc.returncode > 128 and proc.returncode - 128 in signal.Signals._value2member_map_:
            sig = signal.Signals(proc.returncode - 128)
            what = f"killed by {sig.name}"
            if sig == signal.SIGKILL:
                hint = "probably out of memory on the board (check dmesg); try a smaller precision or --target"
        last = _last_line(proc.stderr).removeprefix("error: ")
        raise DeviceRunError(f"the runner failed on {ssh.dest} ({what}): {last or 'no output'}",
                             hint, proc.stderr[-4000:])
    _, found, text = proc.stdout.partition(_MARK)
    try:
        report = json.loads(text) if found else None
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict):
        raise DeviceRunError(f"the runner on {ssh.dest} wrote no readable report: {_last_line(proc.stderr) or 'no output'}",
                             "re-run with --debug", proc.stderr[-4000:])
    return report


def _cleanup(ssh: _Ssh, workdir: str) -> bool:
    if not (workdir.startswith("/") and Path(workdir).name.startswith("edgeq-")):
        return False  # never rm -rf anything we did not create
    try:
        proc = ssh.run(f"rm -rf -- {shlex.quote(workdir)}", timeout=120)
    except DeviceError:
        return False
    return proc.returncode == 0


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.startswith("Warning: Permanently added")]
    return clip(lines[-1]) if lines else ""


def _ssh_reason(line: str) -> str:
    """``ssh: connect to host x port 22: Connection timed out`` → ``Connection timed out``."""
    return line.rsplit(": ", 1)[-1].rstrip(".") if line.startswith(("ssh:", "kex_exchange")) else line


def _is_ssh_message(stderr: str) -> bool:
    return bool(re.search(r"^(ssh: |client_loop: |Connection to .* closed|Timeout, server .* not responding|"
                          r"Connection closed by )", stderr, re.MULTILINE))


# --- adb ---------------------------------------------------------------------------------


def _run_adb(dev: AdbDevice, root: Path, manifest: Manifest, model: Path, *, runs: int, warmup: int,
             threads: int | None, ops: bool, runner: Path | None) -> dict[str, Any]:
    from edgeq.profiling import adb

    return adb.run(dev, root, manifest, model, runs=runs, warmup=warmup, threads=threads, ops=ops, runner=runner)
