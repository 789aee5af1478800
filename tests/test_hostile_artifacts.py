"""Artifacts and manifests given to `edgeq profile` are untrusted: a crafted manifest can
neither make edgeq read or hash files outside the artifact nor hang it on a device or FIFO."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli_here, run_cli
from tests.hostile import assert_clean_failure


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "mlp"
    proc = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    return out


def _edit(art: Path, change) -> None:
    m = json.loads((art / "manifest.json").read_text())
    change(m)
    (art / "manifest.json").write_text(json.dumps(m))


def _add_file_entry(name: str):
    return lambda art: _edit(art, lambda m: m["files"].__setitem__(name, {"bytes": 1, "sha256": "0" * 64}))


def _link_in(name: str, to: str):
    def make(art: Path) -> None:
        (art / name).symlink_to(to)
        _add_file_entry(name)(art)
    return make


def _fifo_in(name: str):
    def make(art: Path) -> None:
        os.mkfifo(art / name)
        _add_file_entry(name)(art)
    return make


def _model_link(to: str):
    def make(art: Path) -> None:
        (art / "model.onnx").unlink()
        (art / "model.onnx").symlink_to(to)
    return make


def _big_outside(art: Path) -> None:
    big = art.parent / "big.bin"
    big.write_bytes(b"\0" * (1 << 20))
    _model_link(str(big))(art)


def _manifest_link(art: Path) -> None:
    real = art.parent / "elsewhere.json"
    shutil.move(art / "manifest.json", real)
    (art / "manifest.json").symlink_to(real)


def _write_manifest(text: str):
    return lambda art: (art / "manifest.json").write_text(text)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


CASES = [
    ("files-dotdot", _add_file_entry("../outside.txt"), "outside the artifact"),
    ("files-absolute", _add_file_entry("/etc/passwd"), "outside the artifact"),
    ("files-backslash", _add_file_entry("..\\..\\etc\\passwd"), "outside the artifact"),
    ("files-symlink-to-device", _link_in("zero.bin", "/dev/zero"), "not a regular file"),
    ("files-symlink-to-etc", _link_in("passwd", "/etc/passwd"), "not a regular file"),
    ("files-fifo", _fifo_in("pipe.bin"), "not a regular file"),
    ("files-missing", _add_file_entry("gone.bin"), "is missing"),
    ("files-wrong-types", lambda a: _edit(a, lambda m: m["files"].__setitem__("x", "yes")), "is not a table"),
    ("model-symlink-to-device", _model_link("/dev/zero"), ("not a regular file", "symbolic link", "missing its model")),
    ("model-symlink-outside", _big_outside, ("not a regular file", "symbolic link")),
    ("model-file-traversal", lambda a: _edit(a, lambda m: m.__setitem__("model_file", "../../etc/passwd")), "names no model file"),
    ("manifest-symlink", _manifest_link, "not a regular file"),
    ("manifest-huge", _write_manifest('{"pad": "' + "x" * (17 << 20) + '"}'), "limit for a manifest"),
    ("manifest-deep", _write_manifest("[" * 100_000 + "]" * 100_000), ("nested too deeply", "corrupt")),
    ("manifest-list", _write_manifest("[1, 2]"), "not a JSON object"),
    ("manifest-newer", lambda a: _edit(a, lambda m: m.__setitem__("schema_version", 99)), "newer edgeq"),
    ("manifest-version-bool", lambda a: _edit(a, lambda m: m.__setitem__("schema_version", True)), "unknown schema version"),
    ("manifest-not-json", _write_manifest("{'a': 1}"), "corrupt"),
    ("manifest-missing", lambda a: (a / "manifest.json").unlink(), "no manifest.json"),
    ("model-truncated", lambda a: (a / "model.onnx").write_bytes((a / "model.onnx").read_bytes()[:100]), "truncated"),
    ("model-tampered", lambda a: _flip_last_byte(a / "model.onnx"), "does not match its sha256"),
]


@pytest.mark.parametrize("case_id, mutate, expected", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("mode", ["host", "emulated"])
def test_crafted_artifacts_are_refused(tmp_path: Path, good: Path, case_id, mutate, expected, mode):
    art = tmp_path / "art"
    shutil.copytree(good, art, symlinks=True)
    mutate(art)
    proc = cli_here("profile", str(art), "--mode", mode, "--runs", "1", "--warmup", "0", "--no-ops")
    assert_clean_failure(proc, expected)


@pytest.mark.parametrize("shape, dtype", [([1, 10**10], "float32"), ([-1, 64], "float32"), ([1] * 20, "float32"),
                                          ([1, 64], "object")])
def test_manifest_inputs_cannot_make_the_runner_allocate_anything(tmp_path: Path, good: Path, shape, dtype):
    """The runner builds its inputs from the manifest's shapes: bounded before allocating."""
    art = tmp_path / "art"
    shutil.copytree(good, art)

    def change(m):
        m["model"]["inputs"][0].update(shape=shape, dtype=dtype)

    _edit(art, change)
    proc = run_cli("profile", str(art), "--runs", "1", "--warmup", "0", "--no-ops")
    assert_clean_failure(proc, ("not a model input", "has dtype"))
