"""Property tests over each untrusted input surface edgeq parses itself: target YAML, plan
YAML, artifact manifests and command-line flags. Whatever the input, the outcome is a value
or an ``EdgeqError`` (exit 2) — never another exception, never exit 1. Deterministic
(``derandomize``) and bounded in examples, so CI time is fixed."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.errors import EdgeqError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["extends", "name", "device", "format", "delegates", "precisions", "default_precision", "budgets",
        "storage_mb", "runtime_memory_mb", "latency_ms", "quantization", "keep_fp32", "int4_group_size",
        "runtime", "threads", "seq_len", "schema_version", "description", "layers", "target", "files", "bytes",
        "sha256", "model_file", "&a", "*a", "!!python/name:os.system", "<<"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["x86", "rpi5", "int8", "int4-g32", "onnx", "executorch",
                                                           "xnnpack", "qnn", "../../etc", ".inf", "fc.*", "("]))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5)),
    max_leaves=25)
X86 = (ROOT / "targets" / "x86.yaml").read_text()


def _mutations(text: str):
    """Strings near ``text``: bytes dropped, duplicated, replaced; lines shuffled in."""
    return st.lists(st.tuples(st.integers(0, max(len(text) - 1, 0)), st.integers(0, 3),
                              st.sampled_from(["", ":", "-", "&a ", "*a", "[", "{", "\n  ", "!!", "\t", "'", "1e400"])),
                    max_size=6).map(lambda edits: _apply(text, edits))


def _apply(text: str, edits) -> str:
    for pos, width, insert in edits:
        text = text[:pos] + insert + text[pos + width:]
    return text


def _outcome(call):
    try:
        return call()
    except EdgeqError:
        return None


@FUZZ
@given(doc=documents)
def test_target_yaml_structures(tmp_path_factory, doc):
    from edgeq.targets import load_target, validate_file

    path = tmp_path_factory.mktemp("y") / "t.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    a = _outcome(lambda: load_target(path))
    b = _outcome(lambda: validate_file(path))
    assert (a is None) == (b is None) or isinstance(doc, dict) and "cpu" in doc  # validate agrees with export


@FUZZ
@given(text=_mutations(X86))
def test_target_yaml_text_mutations(tmp_path_factory, text):
    from edgeq.targets import load_target

    path = tmp_path_factory.mktemp("y") / "t.yaml"
    path.write_text(text)
    _outcome(lambda: load_target(path))


@FUZZ
@given(doc=documents)
def test_plan_files(tmp_path_factory, doc):
    from edgeq.planning.planner import read_plan_file
    from edgeq.targets import load_target

    path = tmp_path_factory.mktemp("p") / "plan.yaml"
    path.write_text(yaml.safe_dump(doc))
    _outcome(lambda: read_plan_file(path, load_target("x86").target))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("art") / "mlp"
    proc = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    return out


names = st.one_of(st.sampled_from(["model.onnx", "../x", "/etc/passwd", "a/../../b", "", ".", "a\\b", "x\0y",
                                   "manifest.json", "config.json", "ops.json"]), st.text(max_size=12))


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(["schema_version", "model_file", "files", "target", "model"]),
                                  documents | names), max_size=4),
       extra=st.dictionaries(names, st.one_of(documents, st.fixed_dictionaries(
           {"bytes": st.integers(-5, 10**12), "sha256": st.text(max_size=64)})), max_size=3))
def test_manifests(tmp_path_factory, artifact, changes, extra):
    from edgeq.artifact import read_artifact

    art = tmp_path_factory.mktemp("m") / "a"
    shutil.copytree(artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    for key, value in changes:
        manifest[key] = value
    if isinstance(manifest.get("files"), dict):
        manifest["files"].update(extra)
    (art / "manifest.json").write_text(json.dumps(manifest))
    _outcome(lambda: read_artifact(art))


FLAGS = ["export", "plan", "profile", "targets", "list", "show", "validate", "--target", "-t", "x86", "rpi5",
         "nowhere", "/no/such/model", "--precision", "INT8", "int5", "--budget", "1e400MB", "-5MB", "12MB",
         "--memory-budget", "--max-drop", "nan", "-1", "0.01", "--rule", "(=int8", "fc=int4-g32", "--seq-len", "0",
         "--samples", "--runs", "--warmup", "--threads", "--mode", "emulated", "device", "--device", "adb:",
         "--plan", "--calib", "-o", "--output", "--force", "--json", "--quiet", "--debug", "--version", "--help",
         "--", "-", "''", "\x00", "é"]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(argv=st.lists(st.sampled_from(FLAGS) | st.text(max_size=6), max_size=8))
def test_command_lines(argv):
    from edgeq.cli import _run

    argv = [a for a in argv if a not in ("--debug",)]
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = _run(argv, debug=False)
    assert code in (0, 2), (argv, code, err.getvalue()[-500:])
    if code == 2:
        errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (argv, err.getvalue()[-500:])


parts = st.sampled_from(["a", "b", "art", "model", "..", ".", "link", "home", ""])


@FUZZ
@given(out=st.lists(parts, min_size=1, max_size=5), cwd=st.sampled_from([".", "a", "a/b", "model", "model/sub", "art"]))
def test_force_never_allows_replacing_what_edgeq_did_not_write(tmp_path_factory, monkeypatch, out, cwd):
    """Whatever the output path, ``--force`` is allowed only where nothing exists yet or an
    edgeq artifact is, and never over the input model, the working or home directory."""
    import os

    from edgeq.artifact import check_output, is_artifact_dir

    root = tmp_path_factory.mktemp("t")
    for d in ("a/b", "model/sub", "art", "home"):
        (root / d).mkdir(parents=True)
    (root / "a" / "file.txt").write_text("mine")
    (root / "model" / "config.json").write_text("{}")
    (root / "art" / "manifest.json").write_text('{"schema_version": 1, "model_file": "model.onnx"}')
    (root / "a" / "link").symlink_to(root / "art")
    work = root / cwd
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(root / "home"))
    path = Path(*out)
    try:
        check_output(path, True, [root / "model"])
    except EdgeqError:
        return
    real = path.resolve()
    assert not path.is_symlink()
    assert not path.exists() or is_artifact_dir(path)
    for precious in (root / "model", work, root / "home"):
        assert real != precious.resolve() and real not in precious.resolve().parents
    assert os.path.commonpath([real, root]) == str(root) or not path.exists()
