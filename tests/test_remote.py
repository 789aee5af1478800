"""On-device profiling.

ssh://: end to end against a real OpenSSH server on loopback (tests/sshd.py), started here,
running edgeq's real runner with "the board's Python" = this test's interpreter (which has
ExecuTorch and ONNX Runtime), through the real ``edgeq profile --device`` command; and the
errors a user meets (unreachable, wrong key, no Python, no runtime, runner killed).

adb:: only what can be tested without an Android device: adb missing, a fake ``adb`` that
lists no / an unauthorized / an offline device, no runner binary (nor app), and the parsers on the
output formats of executor_runner and onnxruntime_perf_test. Nothing here runs a model on
Android: that path is not exercised by these tests.
"""

from __future__ import annotations

import json
import os
import re
import platform
import stat
import sys
from pathlib import Path

import pytest

from edgeq.profiling.remote import AdbDevice, DeviceError, SshDevice, parse_device
from tests.conftest import require_system_tool, run_cli
from tests.sshd import SSHD, LoopbackSshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    require_system_tool(str(SSHD), "openssh-server", "the ssh:// profiling tests need a real sshd")
    require_system_tool("ssh", "openssh-client", "the ssh:// profiling tests need the ssh client")
    with LoopbackSshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """A tiny MLP exported with the real CLI: ExecuTorch (XNNPACK) and ONNX."""
    root = tmp_path_factory.mktemp("remote-artifacts")
    out = {}
    for fmt, target in (("executorch", "x86-executorch"), ("onnx", "x86")):
        proc = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", target, "-p", "fp32", "-o", str(root / fmt), "-q")
        assert proc.returncode == 0, proc.stderr
        out[fmt] = root / fmt
    return out


def _profile(artifact: Path, device: str, opts: str, *extra: str, env: dict[str, str] | None = None):
    return run_cli("profile", str(artifact), "--device", device, *extra, env={"EDGEQ_SSH_OPTS": opts, **(env or {})})


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.strip() == ""
    return lines[0]


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


# --- ssh:// end to end -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_ssh_profile_runs_the_real_runner_on_the_board(sshd, artifacts, fmt):
    artifact = artifacts[fmt]
    url = sshd.url(python=sys.executable)
    accepted_before = sshd.log.read_text().count("Accepted publickey")
    proc = _profile(artifact, url, sshd.ssh_options(), "--runs", "5", "--warmup", "2", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)

    assert report["mode"] == "device" and report["device"] == url and report["estimate"] is False
    assert report["format"] == fmt and report["artifact"] == str(artifact)
    # Measured by the runner on the "board": five real timings, a real load, a real peak RSS.
    samples = report["samples_ms"]
    assert len(samples) == 5 and all(s > 0 for s in samples)
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"]
    assert lat["min"] == min(samples) and lat["max"] == max(samples)
    assert report["load_ms"] > 0 and report["warmup"] == 2 and report["runs"] == 5
    assert report["threads"]["used"] == 1
    assert report["memory"]["available"] and report["memory"]["peak_rss_bytes"] > report["memory"]["baseline_rss_bytes"] > 0
    assert report["ops"]["by_op"] and report["ops"]["total_ms"] > 0  # per-op pass ran on the board
    # What the board is, from the board.
    assert report["host"]["machine"] == platform.machine() and report["host"]["cpu_model"]
    remote = report["remote"]
    assert remote["transport"] == "ssh" and remote["destination"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert remote["python"] == sys.executable and remote["runtime_version"]
    # Only what the runner needs was copied, and the transfer is reported apart from the timings.
    model_file = "model.pte" if fmt == "executorch" else "model.onnx"
    assert report["transfer"]["files"] == sorted(["manifest.json", model_file])
    assert report["transfer"]["bytes"] > (artifact / model_file).stat().st_size
    assert report["transfer"]["seconds"] > 0
    # It went through sshd (key auth, new sessions), and the board's temp dir is gone.
    assert sshd.log.read_text().count("Accepted publickey") >= accepted_before + 3
    assert remote["workdir"].startswith("/") and "edgeq-" in remote["workdir"]
    assert not Path(remote["workdir"]).exists()
    assert "notes" not in report or not any("could not remove" in n for n in report["notes"])


def test_ssh_profile_table_output(sshd, artifacts):
    proc = _profile(artifacts["onnx"], sshd.url(python=sys.executable), sshd.ssh_options(), "--runs", "3", "--no-ops")
    assert proc.returncode == 0, proc.stderr
    assert "p50" in proc.stdout


# --- ssh:// errors: one line, exit 2 -----------------------------------------------------


def test_ssh_unreachable_port(sshd, artifacts):
    closed = LoopbackSshd.free_port()
    line = _one_error_line(_profile(artifacts["onnx"], f"ssh://{sshd.user}@127.0.0.1:{closed}", sshd.ssh_options()))
    assert line.startswith(f"error: cannot reach {sshd.user}@127.0.0.1:{closed}: connection refused")
    assert "sshd" in line


def test_ssh_unknown_host(sshd, artifacts):
    line = _one_error_line(_profile(artifacts["onnx"], "ssh://edgeq-no-such-board.invalid", sshd.ssh_options()))
    assert "unknown host name 'edgeq-no-such-board.invalid'" in line


def test_ssh_wrong_key_is_an_auth_failure(sshd, artifacts):
    proc = _profile(artifacts["onnx"], sshd.url(python=sys.executable), sshd.ssh_options(key=sshd.other_key))
    line = _one_error_line(proc)
    assert line.startswith(f"error: ssh to {sshd.user}@127.0.0.1:{sshd.port} failed: Permission denied (publickey)")
    assert f"ssh-copy-id -p {sshd.port} {sshd.user}@127.0.0.1" in line


def test_ssh_python_not_found(sshd, artifacts):
    line = _one_error_line(_profile(artifacts["onnx"], sshd.url(python="/nonexistent/bin/python3"), sshd.ssh_options()))
    assert line.startswith(f"error: no Python at '/nonexistent/bin/python3' on {sshd.user}@127.0.0.1:{sshd.port}")
    assert "?python=" in line


@pytest.mark.parametrize("fmt,missing,install", [
    ("onnx", "numpy, onnxruntime", r"pip install numpy onnxruntime==[\d.]+; "),
    ("executorch", "numpy, torch, executorch.runtime, executorch.kernels.quantized",
     r"pip install numpy torch==[\d.]+ executorch==[\d.]+; "),  # pinned to the exporter's versions
])
def test_ssh_python_without_the_runtime(sshd, artifacts, tmp_path, fmt, missing, install):
    # The same interpreter without site-packages (-S): no numpy, no ONNX Runtime, no ExecuTorch.
    bare = _script(tmp_path / "bare-python", f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    line = _one_error_line(_profile(artifacts[fmt], sshd.url(python=bare), sshd.ssh_options()))
    assert f"'s Python ({sys.executable}, {platform.python_version()}) has no {missing}, needed to run this {fmt} artifact" in line
    assert re.search(install, line), line


def test_ssh_runner_killed_on_the_board(sshd, artifacts, tmp_path):
    # The board's Python works for edgeq's checks, but the runner process is killed (as the
    # OOM killer would): the error says so, and the temp dir is still removed.
    python = _script(tmp_path / "killed-python",
                     f'#!/bin/sh\nif [ "$1" = runner.py ]; then kill -9 $$; fi\nexec {sys.executable} "$@"\n')
    before = set(Path("/tmp").glob("edgeq-*"))
    line = _one_error_line(_profile(artifacts["onnx"], sshd.url(python=python), sshd.ssh_options()))
    assert line.startswith(f"error: the runner failed on {sshd.user}@127.0.0.1:{sshd.port} (killed by SIGKILL)")
    assert "out of memory" in line
    left = [d for d in set(Path("/tmp").glob("edgeq-*")) - before if (d / "runner.py").exists()]
    assert not left  # the board's temp dir was removed


def test_ssh_runner_error_shows_its_last_line(sshd, artifacts, tmp_path):
    # The runner itself fails (here: it cannot import its runtime for lack of address space)
    # and prints one error line: that line is what the user sees.
    python = _script(tmp_path / "small-python",
                     f'#!/bin/sh\nif [ "$1" = runner.py ]; then ulimit -v 300000; fi\nexec {sys.executable} "$@"\n')
    line = _one_error_line(_profile(artifacts["executorch"], sshd.url(python=python), sshd.ssh_options()))
    assert line.startswith(f"error: the runner failed on {sshd.user}@127.0.0.1:{sshd.port} (exit ")
    assert line.count("error:") == 1  # the runner's own "error: " prefix is not repeated


@pytest.mark.parametrize("device,expected", [
    ("pi@board", "error: unknown device 'pi@board' (use ssh://"),
    ("ssh://pi@board?pyhton=/usr/bin/python3", "unknown parameter 'pyhton' in 'ssh://pi@board?pyhton=/usr/bin/python3'; did you mean 'python'?"),
    ("ssh://pi@board:99999", "port 99999"),
    ("ssh://-oProxyCommand=touch%20x", "cannot read ssh device"),
    ("ssh://pi@board/home/pi", "cannot read ssh device"),
])
def test_bad_device_strings(artifacts, device, expected):
    assert expected in _one_error_line(run_cli("profile", str(artifacts["onnx"]), "--device", device))


def test_parse_device():
    assert parse_device("ssh://pi@raspberrypi.local") == SshDevice("ssh://pi@raspberrypi.local", "raspberrypi.local", "pi")
    dev = parse_device("ssh://pi@10.0.0.7:2222/?python=~/venv/bin/python")
    assert (dev.user, dev.host, dev.port, dev.python) == ("pi", "10.0.0.7", 2222, "~/venv/bin/python")
    assert parse_device("ssh://myboard").user is None  # user, port, host name: from ~/.ssh/config
    v6 = parse_device("ssh://root@[fe80::1]:22")
    assert (v6.host, v6.port, v6.base_url) == ("fe80::1", 22, "ssh://root@[fe80::1]:22")
    assert parse_device("adb:") == AdbDevice("adb:", None) and parse_device("adb:R58M12ABC").serial == "R58M12ABC"
    with pytest.raises(DeviceError):
        parse_device("ssh://pi@board?python=")


# --- adb: the error paths that can be tested without a device --------------------------


def _fake_adb(tmp_path: Path, devices_output: str) -> dict[str, str]:
    """A directory on PATH with an ``adb`` that answers ``adb devices`` with ``devices_output``
    and fails on anything else (no test here gets further than the device check)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (tmp_path / "devices.txt").write_text(devices_output)
    _script(bindir / "adb", f'#!/bin/sh\nif [ "$1" = devices ]; then cat {tmp_path / "devices.txt"}; exit 0; fi\n'
                            'echo "fake adb: unexpected call: $*" >&2; exit 1\n')
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def test_adb_not_on_path(artifacts, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = run_cli("profile", str(artifacts["onnx"]), "--device", "adb:", env={"PATH": str(empty)})
    line = _one_error_line(proc)
    assert line.startswith("error: adb not found (install Android platform-tools")


@pytest.mark.parametrize("listing,device,expected", [
    ("List of devices attached\n\n", "adb:", "error: no Android device attached ('adb devices' lists none)"),
    ("List of devices attached\nemulator-5554\tunauthorized\n\n", "adb:",
     "error: Android device emulator-5554 has not authorized this computer (unlock the device and accept"),
    ("List of devices attached\n0123456789ABCDEF\toffline\n\n", "adb:0123456789ABCDEF",
     "error: Android device 0123456789ABCDEF is offline"),
    ("* daemon started successfully\nList of devices attached\nemulator-5554\tdevice\n\n", "adb:R58M12ABC",
     "error: Android device R58M12ABC is not attached (attached: emulator-5554)"),
    ("List of devices attached\nA1\tdevice\nB2\tdevice\n\n", "adb:", "error: several Android devices attached (A1, B2)"),
])
def test_adb_device_not_ready(artifacts, tmp_path, listing, device, expected):
    proc = run_cli("profile", str(artifacts["onnx"]), "--device", device, env=_fake_adb(tmp_path, listing))
    assert _one_error_line(proc).startswith(expected)


def test_adb_without_a_runner_says_so(artifacts, tmp_path):
    env = {**_fake_adb(tmp_path, "List of devices attached\nemulator-5554\tdevice\n\n"), "EDGEQ_ANDROID_RUNNER": ""}
    line = _one_error_line(run_cli("profile", str(artifacts["onnx"]), "--device", "adb:emulator-5554", env=env))
    # No runner: edgeq looks for the android-demo app (tests/test_adb_app.py), absent here.
    assert line.startswith("error: no runner binary for the Android device, and the android-demo app "
                           "(dev.edgeq.demo) is not installed on emulator-5554")
    assert "onnxruntime_perf_test" in line and "EDGEQ_ANDROID_RUNNER" in line
    not_elf = tmp_path / "runner.sh"
    not_elf.write_text("#!/bin/sh\necho 'Average inference time cost: 1 ms'\n")
    line = _one_error_line(run_cli("profile", str(artifacts["executorch"]), "--device", "adb:emulator-5554",
                                   env={**env, "EDGEQ_ANDROID_RUNNER": str(not_elf)}))
    assert line.startswith(f"error: runner {not_elf} is not a native executable (ELF)")
    assert "executor_runner" in line


# --- adb: parsers, on the formats the runners print (from their sources) ------------------


def test_parse_executor_runner_output():
    from edgeq.backends import get_backend

    parse_executor_runner = get_backend("executorch").parse_android_output

    # examples/portable/executor_runner/executor_runner.cpp, posix PAL log lines
    log = "\n".join([
        "I 00:00:00.001203 executorch:executor_runner.cpp:301] Model file model.pte is loaded.",
        "I 00:00:00.052110 executorch:executor_runner.cpp:412] Model loaded in 48.250000 ms.",
        *[f"I 00:00:00.{60 + i:06d} executorch:executor_runner.cpp:640] Iteration {i + 1} of 5: {ms:f} ms"
          for i, ms in enumerate([9.5, 4.0, 3.0, 5.0, 4.5])],
        "I 00:00:00.090000 executorch:executor_runner.cpp:652] Model executed successfully 5 time(s) in 26.000000 ms.",
    ])
    out = parse_executor_runner(log, warmup=2)
    assert out["load_ms"] == 48.25 and out["runs"] == 3 and out["samples_ms"] == [3.0, 5.0, 4.5]
    assert out["latency_ms"]["p50"] == 4.5 and out["latency_ms"]["min"] == 3.0
    # An older build prints only the total: the mean, labelled as such, and no percentiles.
    old = parse_executor_runner("I 00:00:00.09 executorch:executor_runner.cpp:200] "
                                "Model executed successfully 4 time(s) in 20.000000 ms.", warmup=1)
    assert old["latency_ms"]["mean"] == 5.0 and old["latency_ms"]["p50"] is None and "mean over all 4" in old["note"]
    assert parse_executor_runner("E 00:00:00.01 executorch:method.cpp:1] Missing operator", warmup=0) is None


def test_parse_perf_test_output():
    from edgeq.backends import get_backend

    parse_perf_test = get_backend("onnx").parse_android_output

    # onnxruntime/test/perftest/performance_runner.cc, with -s
    text = ("Session creation time cost: 0.217932 s\nFirst inference time cost: 196 ms\n"
            "Total inference time cost: 0.49481 s\nTotal inference requests: 5\n"
            "Average inference time cost: 98.961997 ms\nTotal inference run time: 0.494854 s\n"
            "Number of inferences per second: 10.104\nAvg CPU usage: 11 %\nPeak working set size: 271122432 bytes\n"
            "Min Latency: 0.0958204 s\nMax Latency: 0.101519 s\nP50 Latency: 0.0995086 s\nP90 Latency: 0.101519 s\n")
    out = parse_perf_test(text)
    assert out["runs"] == 5 and out["load_ms"] == pytest.approx(217.932)
    assert out["latency_ms"]["p50"] == pytest.approx(99.5086) and out["latency_ms"]["mean"] == pytest.approx(98.961997)
    assert out["memory"]["peak_rss_bytes"] == 271122432
    assert parse_perf_test("failed to initialize.") is None
