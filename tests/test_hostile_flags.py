"""Usage errors: the usage line plus one error line, exit 2 — never an "internal error"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli_here, run_cli
from tests.hostile import assert_clean_failure

MLP = "tests.tiny_models:tiny_mlp"

CASES = [
    ("no-arguments", [], "missing command"),
    ("misspelt-command", ["exprot"], "Did you mean 'export'"),
    ("missing-model", ["export"], "Missing argument"),
    ("missing-target", ["export", MLP], "Missing option"),
    ("unknown-option", ["export", MLP, "-t", "x86", "--bogus"], "No such option: --bogus"),
    ("seq-len-zero", ["export", MLP, "-t", "x86", "--seq-len", "0"], "--seq-len"),
    ("seq-len-text", ["export", MLP, "-t", "x86", "--seq-len", "many"], "--seq-len"),
    ("samples-zero", ["export", MLP, "-t", "x86", "--samples", "0"], "--samples"),
    ("max-drop-negative", ["plan", MLP, "-t", "x86", "--max-drop", "-1"], "--max-drop"),
    ("max-drop-nan", ["plan", MLP, "-t", "x86", "--max-drop", "nan"], "--max-drop"),
    ("max-drop-inf", ["plan", MLP, "-t", "x86", "--max-drop", "inf"], "--max-drop"),
    ("budget-garbage", ["plan", MLP, "-t", "x86", "--budget", "lots"], "cannot read budget"),
    ("budget-zero", ["plan", MLP, "-t", "x86", "--budget", "0MB"], "cannot read budget"),
    ("budget-negative", ["plan", MLP, "-t", "x86", "--budget", "-5MB"], "cannot read budget"),
    ("budget-exponent", ["plan", MLP, "-t", "x86", "--budget", "1e400MB"], "cannot read budget"),
    ("memory-budget-garbage", ["export", MLP, "-t", "x86", "--memory-budget", "nanMB"], "cannot read budget"),
    ("precision-with-plan", ["export", MLP, "-t", "x86", "-p", "int8", "--budget", "1MB"], "cannot be combined"),
    ("unknown-precision", ["export", MLP, "-t", "x86", "-p", "int7"], "unknown precision 'int7'"),
    ("rule-without-equals", ["plan", MLP, "-t", "x86", "--rule", "fc1"], "REGEX=SCHEME"),
    ("rule-bad-regex", ["plan", MLP, "-t", "x86", "--rule", "(=int8"], "bad regular expression"),
    ("rule-unknown-scheme", ["plan", MLP, "-t", "x86", "--rule", "0=int5"], "unknown scheme"),
    ("proxy-unknown", ["plan", MLP, "-t", "x86", "--proxy", "mse"], "unknown proxy"),
    ("profile-runs-zero", ["profile", "nowhere", "--runs", "0"], ("--runs", "not an artifact")),
    ("profile-warmup-negative", ["profile", "nowhere", "--warmup", "-1"], ("--warmup", "not an artifact")),
    ("profile-mode-unknown", ["profile", "nowhere", "--mode", "cloud"], "unknown --mode"),
    ("profile-device-without-url", ["profile", "nowhere", "--mode", "device"], "needs --device"),
    ("targets-show-unknown", ["targets", "show", "snapdragon9"], "unknown target"),
    ("targets-no-subcommand", ["targets"], "missing command"),
    ("calib-missing", ["export", MLP, "-t", "x86", "--budget", "1MB", "--calib", "/no/such/calib.txt"], "no such file"),
    ("plan-file-missing", ["export", MLP, "-t", "x86", "--plan", "/no/such/plan.yaml"], "no such file"),
    ("eval-tokens-negative", ["export", MLP, "-t", "x86", "--eval-tokens", "-1"], "--eval-tokens"),
    ("eval-text-missing", ["export", MLP, "-t", "x86", "--eval-text", "/no/such/text.txt"], "no such file"),
]


@pytest.mark.parametrize("case_id, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_usage_errors(tmp_path: Path, case_id: str, argv: list[str], expected):
    if argv and argv[0] == "export" and "-o" not in argv:
        argv = argv + ["-o", str(tmp_path / "out")]
    proc = cli_here(*argv, env={"EDGEQ_CACHE_DIR": str(tmp_path / "cache")})
    line = assert_clean_failure(proc, expected)
    assert "internal error" not in line
    assert not (tmp_path / "out").exists()


def test_version_and_help():
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("edgeq ")
    helped = run_cli("export", "--help")
    assert helped.returncode == 0 and "MODEL" in helped.stdout


def test_debug_is_accepted_anywhere_and_keeps_the_exit_code(tmp_path: Path):
    for argv in (["--debug", "export", MLP, "-t", "snapdragn8"], ["export", MLP, "-t", "snapdragn8", "--debug"]):
        proc = run_cli(*argv)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" in proc.stderr and "did you mean 'snapdragon8'" in proc.stderr


def test_uppercase_precision_is_the_same_precision(tmp_path: Path):
    proc = run_cli("export", MLP, "-t", "x86", "-p", "INT8", "-o", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"requested": "int8"' in proc.stdout
