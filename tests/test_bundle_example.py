"""examples/bundle/run.sh: export → bundle into (a copy of) android-demo → native runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "examples" / "bundle" / "run.sh"
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="the example builds the native runner with cmake and a C++ compiler")


def _run_example(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    app = tmp_path / "android-demo"
    shutil.copytree(ROOT / "android-demo", app, ignore=shutil.ignore_patterns("build", ".gradle", "assets"))
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "APP": str(app),
                "WORK": str(tmp_path / "work"), "EDGEQ": f"{sys.executable} -m edgeq.cli", "PYTHON": sys.executable,
                "RUNS": "5", **env}
    proc = subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=1800,
                          cwd=tmp_path)
    return proc, app


def _report(proc: subprocess.CompletedProcess) -> dict:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("report: "))
    return json.loads(line[len("report: "):])


def test_example_bundles_a_tiny_model_and_the_runner_checks_it(tmp_path):
    proc, app = _run_example(tmp_path, MODEL="tests.tiny_models:tiny_text", ID="tiny")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "golden check: passed" in proc.stdout
    report = _report(proc)
    assert report["golden"]["ok"] and report["runs"] == 5 and report["bundle_id"] == "tiny"
    index = json.loads((app / "app/src/main/assets/edgeq/index.json").read_text())
    assert [b["id"] for b in index["bundles"]] == ["tiny"]


@pytest.mark.slow
def test_example_on_minilm(tmp_path, minilm_dir):
    proc, app = _run_example(tmp_path, MODEL=str(minilm_dir))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = _report(proc)
    assert report["golden"]["ok"] and report["model"] == "all-MiniLM-L6-v2"
    desc = json.loads((app / "app/src/main/assets/edgeq/example-rpi5/edgeq_bundle.json").read_text())
    assert desc["tokenizer"]["kind"] == "wordpiece" and desc["delegates"] == ["xnnpack"]
