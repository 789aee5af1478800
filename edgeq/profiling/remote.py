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

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgeq.profiling.devices import ANDROID_RUNNER_ENV, SSH_OPTS_ENV, AdbDevice, DeviceSetupError, parse_device

if TYPE_CHECKING:
    from edgeq.manifest import Manifest


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
    from edgeq.profiling.ssh import run_ssh

    return run_ssh(target, Path(artifact_dir), manifest, model, runs=runs, warmup=warmup, threads=threads,
                    ops=ops, options=list(ssh_options))


def _run_adb(dev: AdbDevice, root: Path, manifest: Manifest, model: Path, *, runs: int, warmup: int,
             threads: int | None, ops: bool, runner: Path | None) -> dict[str, Any]:
    from edgeq.profiling import adb

    return adb.run(dev, root, manifest, model, runs=runs, warmup=warmup, threads=threads, ops=ops, runner=runner)
