"""Target and plan YAML as untrusted input: bounded, strict, rejected before the model loads,
and `targets validate` rejects everything `export` would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import cli_here, run_cli
from tests.hostile import assert_clean_failure

MARKED = "tests.hostile_models:marks_loaded"


def _laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _million_keys() -> str:
    return "extends: x86\nextra:\n" + "".join(f"  k{i}: {i}\n" for i in range(120_000))


# (id, target YAML text, expected text in the error line)
TARGETS = [
    ("syntax-error", "extends: x86\nbudgets: [1,\n", "YAML syntax error"),
    ("billion-laughs", "extends: x86\n" + _laughs(), "expands to more than"),
    ("recursive-alias", "extends: x86\nloop: &a [*a]\n", ("nested more than", "expands to more than")),
    ("deep-nesting", "extends: x86\nx: " + "[" * 500 + "]" * 500 + "\n", "nested"),
    ("too-many-keys", None, ("over edgeq's", "expands to more than")),
    ("huge-file", "extends: x86\n# " + "x" * (2 << 20) + "\n", "limit for a YAML file"),
    ("repeated-key", "extends: x86\nbudgets: {storage_mb: 1}\nbudgets: {storage_mb: 900}\n", "is repeated"),
    ("python-tag", "extends: x86\nname: !!python/object/apply:os.system ['touch /tmp/edgeq-pwned']\n", "YAML"),
    ("binary-tag", "extends: x86\ndescription: !!binary aGVsbG8=\n", "description"),
    ("top-level-list", "- x86\n", "expected a mapping"),
    ("budget-inf", "extends: x86\nbudgets:\n  storage_mb: .inf\n", "finite number"),
    ("budget-nan", "extends: x86\nbudgets:\n  storage_mb: .nan\n", "finite number"),
    ("budget-bool", "extends: x86\nbudgets:\n  storage_mb: true\n", "valid number"),
    ("budget-string", "extends: x86\nbudgets:\n  storage_mb: '12'\n", "valid number"),
    ("budget-huge", "extends: x86\nbudgets:\n  runtime_memory_mb: 1.0e+300\n", "less than or equal"),
    ("budget-zero", "extends: x86\nbudgets:\n  runtime_memory_mb: 0\n", "greater than 0"),
    ("threads-negative", "extends: x86\nruntime:\n  threads: -1\n", "greater than or equal"),
    ("seq-len-bool", "extends: x86\nseq_len: yes\n", "valid integer"),
    ("bad-keep-regex", "extends: x86\nquantization:\n  keep_fp32: ['fc(']\n", "not a valid regular expression"),
    ("name-path", "extends: x86\nname: ../../etc\n", "should match pattern"),
    ("unknown-key", "extends: x86\nbudget:\n  storage_mb: 1\n", "did you mean 'budgets'"),
    ("unknown-delegate", "extends: snapdragon8\ndelegates: [qnn, xnnpak]\n", "did you mean 'xnnpack'"),
    ("extends-number", "extends: 5\n", "extends must be a target name"),
    ("extends-self", "extends: ./t.yaml\n", "loops back"),
    ("extends-missing", "extends: ./nowhere.yaml\n", "not found"),
    ("extends-device-file", "extends: /dev/zero\n", ("not a regular file", "not found")),
    ("not-utf8", b"extends: x86\nname: \xff\xfe\n", "cannot be read"),
]


def _write(t: Path, text) -> Path:
    p = t / "t.yaml"
    if text is None:
        text = _million_keys()
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


@pytest.mark.parametrize("case_id, text, expected", TARGETS, ids=[c[0] for c in TARGETS])
def test_bad_target_yaml_is_refused_by_validate_and_by_export_before_loading(tmp_path: Path, case_id, text, expected):
    path = _write(tmp_path, text)
    validated = cli_here("targets", "validate", str(path))
    assert_clean_failure(validated, expected)
    marker = tmp_path / "loaded"
    exported = cli_here("export", MARKED, "-t", str(path), "-o", str(tmp_path / "out"),
                       env={"EDGEQ_TEST_MARKER": str(marker)})
    assert_clean_failure(exported, expected)
    assert not marker.exists(), "the model was loaded before the target was rejected"
    assert not Path("/tmp/edgeq-pwned").exists()


def test_fifo_as_target_does_not_hang(tmp_path: Path):
    fifo = tmp_path / "t.yaml"
    os.mkfifo(fifo)
    assert_clean_failure(run_cli("targets", "validate", str(fifo)), "not a regular file")


# (id, plan YAML text, expected) — checked against target x86 (ONNX), model tiny_mlp (layers 0 and 2)
PLANS = [
    ("plan-newer-schema", "schema_version: 2\nlayers: {'0': int8}\n", "newer edgeq"),
    ("plan-bad-schema", "schema_version: one\nlayers: {'0': int8}\n", "is unknown"),
    ("plan-other-format", "format: executorch\nlayers: {'0': int8}\n", "format 'executorch'"),
    ("plan-other-target", "target: rpi5\nlayers: {'0': int8}\n", "target 'rpi5'"),
    ("plan-no-layers", "schema_version: 1\n", "needs a 'layers:' mapping"),
    ("plan-layers-list", "layers: [int8]\n", "needs a 'layers:' mapping"),
    ("plan-unknown-scheme", "layers: {'0': int5}\n", "unknown scheme 'int5'"),
    ("plan-scheme-typo", "layers: {'0': int-8}\n", "did you mean 'int8'"),
    ("plan-scheme-not-allowed", None, "does not allow"),
    ("plan-bomb", "layers: {'0': int8}\n" + _laughs(), "expands to more than"),
    ("plan-unknown-key", "layers: {'0': int8}\nbudget_byte: 5\n", "unknown key 'budget_byte'; did you mean 'budget_bytes'"),
    ("plan-layer-name-not-a-string", "layers: {1: int8}\n", "layers.1"),
    ("plan-prediction-wrong-kind", "layers: {'0': int8}\npredicted: {bytes: lots}\n", "predicted.bytes"),
]


@pytest.mark.parametrize("case_id, text, expected", PLANS, ids=[c[0] for c in PLANS])
def test_bad_plan_file_is_refused_before_loading(tmp_path: Path, case_id, text, expected):
    target = "x86"
    if text is None:  # a target that allows only fp32/int8
        (tmp_path / "tgt.yaml").write_text("extends: x86\nprecisions: [fp32, int8]\ndefault_precision: int8\n")
        target, text = str(tmp_path / "tgt.yaml"), "layers: {'0': int4-g32}\n"
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    marker = tmp_path / "loaded"
    proc = cli_here("export", MARKED, "-t", target, "--plan", str(plan), "-o", str(tmp_path / "out"),
                   env={"EDGEQ_TEST_MARKER": str(marker)})
    assert_clean_failure(proc, expected)
    assert not marker.exists(), "the model was loaded before the plan was rejected"


def test_plan_naming_a_layer_the_model_lacks(tmp_path: Path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("layers: {'fc9': int8}\n")
    proc = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "--plan", str(plan), "-o", str(tmp_path / "o"))
    assert_clean_failure(proc, "unknown layer 'fc9'")


def test_rules_are_checked_before_loading(tmp_path: Path):
    marker = tmp_path / "loaded"
    proc = run_cli("plan", MARKED, "-t", "x86", "--rule", "fc[=int8", env={"EDGEQ_TEST_MARKER": str(marker)})
    assert_clean_failure(proc, "bad regular expression")
    assert not marker.exists()
