"""Per-layer planning: sensitivity + solver within a budget, plans as YAML values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeq.errors import ConfigError
from edgeq.export import export
from edgeq.planner import BudgetError, plan
from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))


def test_budget_is_met_and_more_budget_means_less_error():
    tight = plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=25_000)
    loose = plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000)
    assert tight.predicted_bytes <= 25_000 and loose.predicted_bytes <= 60_000
    assert loose.predicted_error <= tight.predicted_error
    assert "int4-g32" in tight.plan.schemes.values()


def test_infeasible_budget_names_the_smallest_achievable():
    with pytest.raises(BudgetError, match=r"below the smallest achievable plan \(0\.0\d+ MB\)"):
        plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=1_000)


def test_rules_pin_layers_and_bad_rules_are_errors():
    result = plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000, rules=["^fc2$=int4-g32"])
    assert result.plan.schemes["fc2"] == "int4-g32" and result.pinned == {"fc2": "int4-g32"}
    with pytest.raises(ConfigError, match="matches no layer"):
        plan("tests.tiny_models:tiny_text", "rpi5", rules=["decoder=int8"])
    with pytest.raises(ConfigError, match="unknown scheme 'int3'"):
        plan("tests.tiny_models:tiny_text", "rpi5", rules=["fc1=int3"])


def test_plan_yaml_round_trip_through_export(tmp_path: Path):
    result = plan("tests.tiny_models:tiny_text", "x86", budget_bytes=25_000)
    f = tmp_path / "plan.yaml"
    f.write_text(result.to_yaml())
    for target in ("x86", "rpi5"):
        out = tmp_path / f"art-{target}"
        exported = export("tests.tiny_models:tiny_text", target, plan_file=f, output=out)
        assert exported.manifest["precision"]["layers"] == result.plan.schemes


def test_export_with_budget_records_predicted_and_verified_error(tmp_path: Path):
    exported = export("tests.tiny_models:tiny_text", "rpi5", budget_bytes=25_000, output=tmp_path / "a")
    p = exported.manifest["plan"]
    assert p["budget_bytes"] == 25_000 and p["predicted_bytes"] <= 25_000
    assert p["verified_error"] is not None and p["verified_error"] < 0.05
    assert p["error_metric"] == "1 - cosine"


def test_bad_plan_files(tmp_path: Path):
    bad = tmp_path / "p.yaml"
    bad.write_text("layers:\n  fc1: int8\n  fc9: int8\n")
    proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", "rpi5", "--plan", str(bad), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "p.yaml:3: unknown layer 'fc9'; did you mean 'fc" in proc.stderr
    bad.write_text("layers:\n  fc1: int5\n")
    proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", "rpi5", "--plan", str(bad), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unknown scheme 'int5'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_corrupt_cache_is_a_clear_error(tmp_path: Path):
    plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000)
    for f in (tmp_path / "cache").rglob("*.json"):
        f.write_text("{not json")
    with pytest.raises(ConfigError, match="sensitivity cache .* is corrupt"):
        plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000)


def test_plan_cli_prints_table_and_writes_yaml(tmp_path: Path):
    out = tmp_path / "plan.yaml"
    proc = run_cli("plan", "tests.tiny_models:tiny_text", "-t", "rpi5", "--budget", "30KB", "-o", str(out),
                   env={"EDGEQ_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    assert "cumulative" in proc.stdout and "embed" in proc.stdout
    assert "layers:" in out.read_text()
    js = run_cli("plan", "tests.tiny_models:tiny_text", "-t", "rpi5", "--budget", "30KB", "--json",
                 env={"EDGEQ_CACHE_DIR": str(tmp_path / "c")})
    assert json.loads(js.stdout)["predicted"]["bytes"] <= 30_000
    bad = run_cli("plan", "tests.tiny_models:tiny_text", "-t", "rpi5", "--budget", "lots")
    assert bad.returncode == 2 and "cannot read budget 'lots'" in bad.stderr
