"""The command line: thin over the library, machine-readable when asked, quick to start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_cli


def test_targets_list_show_validate(tmp_path: Path):
    listed = run_cli("targets", "list", "--json")
    assert listed.returncode == 0
    data = json.loads(listed.stdout)
    assert {t["name"] for t in data["targets"]} >= {"snapdragon8", "apple", "rpi5", "rpi4", "x86"}
    shown = run_cli("targets", "show", "snapdragon8")
    assert shown.returncode == 0 and "delegates:" in shown.stdout and "Snapdragon 8 Gen 3" in shown.stdout
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: rpi5\nbudgets:\n  runtime_memory_mb: 200\n")
    ok = run_cli("targets", "validate", str(mine), str(ROOT / "profiles" / "rpi4.yaml"))
    assert ok.returncode == 0 and ok.stdout.count(": ok") == 2


def test_listing_targets_does_not_import_heavy_libraries():
    code = (
        "import sys; from edgeq.cli import main\n"
        "try:\n    main(['targets', 'list', '--json'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'executorch', 'onnxruntime', 'transformers') if m in sys.modules]\n"
        "sys.stderr.write(repr(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().endswith("[]"), proc.stderr


def test_export_json_and_quiet(tmp_path: Path):
    proc = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-o", str(tmp_path / "a"), "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["target"]["name"] == "x86" and manifest["numerics"]["samples"] == 32
    assert proc.stderr.strip() == ""  # no progress output in --json mode
    quiet = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-o", str(tmp_path / "b"), "-q")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "" and quiet.stderr.strip() == ""
    assert (tmp_path / "b" / "manifest.json").exists()


def test_export_summary_names_sizes_fidelity_delegates_and_location(tmp_path: Path):
    proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", "rpi5", "-o", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    for word in ("FP32 weights", "artifact", "fidelity", "delegates", "xnnpack", str(tmp_path / "a")):
        assert word in proc.stdout, (word, proc.stdout)
    assert "Lowering to xnnpack" in proc.stderr  # progress with per-step timing
