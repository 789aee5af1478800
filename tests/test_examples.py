"""The examples under examples/ run end to end (on a tiny model, so the suite stays quick)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _run(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WORK": str(tmp_path),
                "EDGEQ": f"{sys.executable} -m edgeq.cli", "PYTHON": sys.executable,
                "EDGEQ_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run(["bash", str(ROOT / "examples" / script)], env=full_env, capture_output=True, text=True,
                          timeout=1800, cwd=tmp_path)


def test_quickstart_example(tmp_path: Path):
    proc = _run("quickstart/run.sh", tmp_path, MODEL="tests.tiny_models:tiny_text", TARGET="rpi5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "model-rpi5" / "manifest.json").read_text())
    assert manifest["numerics"]["cosine_min"] > 0.99
    assert "ESTIMATE" in proc.stdout.upper() and (tmp_path / "edgeq-junit.xml").exists()


# rpi5 (an ExecuTorch lowering, ~40 s) runs with the slow tests; x86 runs the same script.
@pytest.mark.parametrize("target", [pytest.param("rpi5", marks=pytest.mark.slow), "x86"])
def test_plan_example_meets_its_budget(tmp_path: Path, target: str):
    proc = _run("plan/run.sh", tmp_path, MODEL="tests.tiny_models:tiny_text", TARGET=target, BUDGET="30KB")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "planned" / "manifest.json").read_text())
    assert manifest["sizes"]["artifact_bytes"] <= 30_000
    planned = (tmp_path / "plan.yaml").read_text()
    assert manifest["precision"]["requested"] == "planned"
    assert all(f"{layer}: {scheme}" in planned for layer, scheme in manifest["precision"]["layers"].items())
