"""Profiling on a board over ssh: probe it, copy the standalone runner and the artifact,
run, read the report back, clean up. Only the board's Python and the artifact's runtime
are needed there (nothing of edgeq is installed).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeq.errors import clip

if TYPE_CHECKING:
    from edgeq.manifest import Manifest


from edgeq.profiling.devices import (DeviceAuthError, DeviceError, DeviceRunError, DeviceSetupError,
                                     DeviceUnreachableError, SSH_OPTS_ENV, SshDevice)

RUNNER = Path(__file__).with_name("runner.py")
_MARK = "@@edgeq-report@@"
_SSH_DEFAULTS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15",
                 "-o", "ServerAliveCountMax=4"]
MIN_PYTHON = (3, 9)  # runner.py uses str.removesuffix


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


def run_ssh(dev: SshDevice, root: Path, manifest: Manifest, model: Path, *, runs: int, warmup: int,
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


