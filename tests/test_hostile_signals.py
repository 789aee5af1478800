"""Signals and exit codes with real processes and real signals: an interrupted or failed
export never exits 0 and never leaves staging behind; a killed one is cleaned up next time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeq.artifact import clean_stale_staging
from tests.conftest import ROOT, run_cli
from tests.hostile import assert_clean_failure


def _start_export(tmp: Path, out: Path, sleep: float = 60, model: str = "slow_to_export") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "EDGEQ_TEST_EXPORT_SLEEP": str(sleep)}
    return subprocess.Popen([sys.executable, "-m", "edgeq.cli", "export", f"tests.hostile_models:{model}",
                             "-t", "x86", "-o", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _staging(tmp: Path) -> list[Path]:
    return [p for p in tmp.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def _wait_for_staging(proc: subprocess.Popen, tmp: Path, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _staging(tmp):
            time.sleep(0.5)  # inside the capture's sleep now
            return
        if proc.poll() is not None:
            pytest.fail(f"export ended before staging appeared: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("staging directory never appeared")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_export_exits_nonzero_and_removes_staging(tmp_path: Path, sig: int, code: int, word: str):
    out = tmp_path / "out"
    proc = _start_export(tmp_path, out)
    _wait_for_staging(proc, tmp_path)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert_clean_failure(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), word, code=code)
    assert not out.exists()
    assert not _staging(tmp_path), _staging(tmp_path)


def test_interrupted_export_ends_though_a_worker_thread_is_still_running(tmp_path: Path):
    """A non-daemon thread left by the model's libraries would keep an ordinary interpreter
    exit waiting for an hour: the interrupted command still ends, with 143 and no staging."""
    out = tmp_path / "out"
    proc = _start_export(tmp_path, out, model="slow_with_a_worker_thread")
    _wait_for_staging(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the interrupted export was still running 60 s after SIGTERM")
    assert_clean_failure(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), "terminated", code=143)
    assert not out.exists() and not _staging(tmp_path)


def test_sigkill_leaves_staging_that_the_next_export_removes_and_reports(tmp_path: Path):
    out = tmp_path / "out"
    proc = _start_export(tmp_path, out)
    _wait_for_staging(proc, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = _staging(tmp_path)
    assert left and not out.exists()
    again = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert not _staging(tmp_path)
    assert "killed" in again.stderr and left[0].name in again.stderr  # said, not silently done


def test_staging_of_a_running_export_is_left_alone(tmp_path: Path):
    out = tmp_path / "out"
    alive = tmp_path / f".out.partial-{os.getpid()}-abc"  # this test process is alive
    alive.mkdir()
    assert clean_stale_staging(out) == []
    assert alive.exists()


def test_artifact_caught_mid_replacement_is_restored(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that has exited
    dead.wait()
    old = tmp_path / f".out.old-{dead.pid}-xyz"
    old.mkdir()
    (old / "manifest.json").write_text('{"schema_version": 1, "model_file": "model.onnx"}')
    notes = clean_stale_staging(tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").exists() and not old.exists()
    assert notes and "restored" in notes[0]


def test_failed_export_in_a_shell_chain_stops_the_chain(tmp_path: Path):
    """`edgeq export ... && upload` must not upload after a failure."""
    marker = tmp_path / "uploaded"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = (f"{sys.executable} -m edgeq.cli export tests.tiny_models:exits_zero -t x86 -o {tmp_path / 'out'} "
           f"&& touch {marker}")
    subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert not marker.exists()
