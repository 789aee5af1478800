"""The CI examples run: the GitHub workflow's ``run:`` steps and the composite action's
script, executed here with bash on a tiny model (the commands, not GitHub), the pytest
helper ``edgeq.testing.assert_fits`` and ``examples/ci/test_model_fits.py``; many
artifacts in one ``edgeq check`` share the source model and the runtime imports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "ci"
TINY = "tests.tiny_models:tiny_text"


def _env(**extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the `edgeq` console script lives beside python
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **extra}


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_github_workflow_run_steps_work_locally(tmp_path):
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    [job] = workflow["jobs"].values()
    steps = [s for s in job["steps"] if "run" in s]
    # The install step needs edgeq on PyPI; here edgeq comes from this checkout (PYTHONPATH).
    install = [s for s in steps if "pip install" in s["run"]]
    assert len(install) == 1
    summary = tmp_path / "summary.md"
    env = _env(**{**{k: str(v) for k, v in workflow["env"].items()}, "MODEL": TINY, "TARGET": "x86",
                  "GITHUB_STEP_SUMMARY": str(summary)})
    for step in steps:
        if step in install:
            continue
        proc = _bash(step["run"], tmp_path, env)
        assert proc.returncode == 0, f"step {step['name']!r} failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "dist" / "model" / "model.onnx").is_file()
    report = ET.parse(tmp_path / "reports" / "edgeq-check.xml").getroot()
    statuses = {c.get("name"): ("fail" if c.find("failure") is not None else
                                "skipped" if c.find("skipped") is not None else "pass") for c in report.iter("testcase")}
    assert statuses["fidelity"] == "pass" and statuses["fit"] == "pass" and statuses["regression"] == "skipped"
    assert "## edgeq check" in summary.read_text()
    # The upload steps name what the run steps produced.
    uploads = [s["with"]["path"] for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads == ["dist/", "reports/edgeq-check.xml"]


def test_composite_action_script_runs_and_fails_the_step_on_a_failing_gate(tmp_path):
    action = yaml.safe_load((EXAMPLES / "action" / "action.yml").read_text())
    [step] = action["runs"]["steps"]
    from edgeq.export import export

    export(TINY, "x86", output=tmp_path / "dist" / "tiny")
    inputs = {k: v.get("default", "") for k, v in action["inputs"].items()}
    inputs.update(install="", model=TINY)
    step_env = {k: re.sub(r"\$\{\{\s*inputs\.(\w+)\s*\}\}", lambda m: inputs[m.group(1)], v)
                for k, v in step["env"].items()}
    proc = _bash(step["run"], tmp_path, _env(**step_env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "reports" / "edgeq-check.xml").is_file()

    small = tmp_path / "small.yaml"
    small.write_text("extends: x86\nbudgets:\n  storage_mb: 0.001\n")
    step_env["EDGEQ_TARGET"] = str(small)
    proc = _bash(step["run"], tmp_path, _env(**step_env))
    assert proc.returncode == 1 and "::error file=dist/tiny/manifest.json,title=edgeq check%3A fit::" in proc.stdout


def test_assert_fits_passes_and_names_the_failing_gates(tmp_path):
    from edgeq.export import export
    from edgeq.testing import assert_fits

    art = export(TINY, "x86", output=tmp_path / "tiny").artifact_dir
    assert assert_fits(art, "x86", model=TINY).passed
    assert assert_fits(art, "x86").gate("fidelity").status == "skipped"  # no source model given
    with pytest.raises(AssertionError, match="fidelity skipped: .*pass --model"):
        assert_fits(art, "x86", allow_skipped=False)
    with pytest.raises(AssertionError) as info:
        assert_fits(art, "x86", model=TINY, latency_budget_ms=1e-6)
    text = str(info.value)
    assert "latency fail: emulated p50 on x86-avx2-laptop (ESTIMATE)" in text and "> 1e-06 ms budget" in text
    assert "fit" not in text.split("\n", 1)[1]  # only the failing gate is listed


def test_the_pytest_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLES / "test_model_fits.py"), "--rootdir", str(tmp_path)],
                          cwd=ROOT, env=_env(EDGEQ_TARGET="x86"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout


def test_many_artifacts_share_one_source_model_and_one_summary(tmp_path, monkeypatch):
    from edgeq import models
    from edgeq.check import CheckOptions, check_artifacts
    from edgeq.export import export

    first = export(TINY, "x86", output=tmp_path / "dist" / "a").artifact_dir
    for name in "bcde":
        shutil.copytree(first, tmp_path / "dist" / name)
    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    results = check_artifacts(sorted((tmp_path / "dist").iterdir()), CheckOptions(model=TINY))
    assert len(results) == 5 and all(r.passed for r in results)
    assert len(loads) == 1  # the source model is loaded (and run eagerly) once for all five
    assert all(r.gate("fidelity").status == "pass" for r in results)
