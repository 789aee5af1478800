"""``edgeq bundle``: layout, checksums, golden check, integrity, atomicity, --force, index.json."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.helpers import run_onnx, run_pte
from tests.hostile import assert_clean_failure, assert_tree_unchanged, tree_state

ASSETS = Path("app/src/main/assets/edgeq")


@pytest.fixture(scope="module")
def artifacts(tiny_text_artifacts) -> dict[str, Path]:
    return {"executorch": tiny_text_artifacts("rpi5"), "onnx": tiny_text_artifacts("x86")}


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / src.name
    shutil.copytree(src, dst)
    return dst


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tensor(bundle_dir: Path, spec: dict) -> np.ndarray:
    data = (bundle_dir / spec["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == spec["sha256"]
    return np.frombuffer(data, dtype=np.dtype(spec["dtype"]).newbyteorder("<")).reshape(spec["shape"])


@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_bundle_layout_checksums_and_golden(artifacts, tmp_path, fmt):
    art = artifacts[fmt]
    app = tmp_path / "app"
    app.mkdir()
    proc = run_cli("bundle", str(art), str(app), "--id", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    bdir = app / ASSETS / "tiny"
    assert Path(out["bundle_dir"]) == bdir
    desc = json.loads((bdir / "edgeq_bundle.json").read_text())
    assert desc == out["bundle"]
    manifest = json.loads((art / "manifest.json").read_text())
    # every file the manifest lists is copied byte for byte, and the manifest itself
    assert (bdir / "manifest.json").read_bytes() == (art / "manifest.json").read_bytes()
    for rel, info in manifest["files"].items():
        assert _sha(bdir / rel) == info["sha256"] == desc["files"][rel]["sha256"]
    # the bundle's file table covers exactly what is on disk (but itself), with true hashes
    on_disk = {p.relative_to(bdir).as_posix() for p in bdir.rglob("*") if p.is_file()} - {"edgeq_bundle.json"}
    assert set(desc["files"]) == on_disk
    for rel, info in desc["files"].items():
        assert info["bytes"] == (bdir / rel).stat().st_size and info["sha256"] == _sha(bdir / rel)
    # what the app is told: format, runtime release installed here, delegates actually used
    pkg = "executorch" if fmt == "executorch" else "onnxruntime"
    assert desc["format"] == fmt and desc["model_file"] == manifest["model_file"]
    assert desc["runtime"]["release"] == version(pkg).split("+")[0]
    assert desc["runtime"]["android_package"].endswith(":" + version(pkg).split("+")[0])
    assert desc["delegates"] == manifest["delegation"]["used"]
    assert desc["inputs"] == [{"name": "input_0", "shape": [1, 16], "dtype": "int64"}]
    assert desc["outputs"][0]["shape"] == [1, 64] and desc["tokenizer"] is None
    # the golden output is what the real runtime gives on the golden input ...
    golden = desc["golden"]
    x = _tensor(bdir, golden["inputs"][0])
    assert 0 <= x.min() and x.max() < 256  # ids inside the embedding table
    expected = _tensor(bdir, golden["output"])
    row = (torch.from_numpy(x.copy()),)
    rerun = (run_pte if fmt == "executorch" else run_onnx)(bdir / desc["model_file"], [row])[0]
    np.testing.assert_allclose(rerun.reshape(expected.shape), expected, atol=1e-6)
    # ... and close to the fp32 eager model (it is that model's output, not any tensor)
    from tests.tiny_models import tiny_text

    model, _ = tiny_text()
    with torch.no_grad():
        eager = model(*row).numpy()
    assert np.abs(eager - expected).max() <= golden["tolerance"]["max_abs"] * 4
    cos = float(eager.ravel() @ expected.ravel() / (np.linalg.norm(eager) * np.linalg.norm(expected)))
    assert cos > 0.999
    assert golden["tolerance"]["max_abs"] >= manifest["numerics"]["max_abs"]
    index = json.loads((app / ASSETS / "index.json").read_text())
    assert [b["id"] for b in index["bundles"]] == ["tiny"]
    assert index["bundles"][0]["bundle_file"] == "tiny/edgeq_bundle.json"


def test_index_lists_every_bundle_and_skips_foreign_dirs(artifacts, tmp_path):
    app = tmp_path / "app"
    (app / ASSETS / "not-a-bundle").mkdir(parents=True)
    for fmt, name in (("executorch", "b-pte"), ("onnx", "a-onnx")):
        proc = run_cli("bundle", str(artifacts[fmt]), str(app), "--id", name)
        assert proc.returncode == 0, proc.stderr
        assert "bundled tiny_text" in proc.stdout
    index = json.loads((app / ASSETS / "index.json").read_text())
    assert [(b["id"], b["format"]) for b in index["bundles"]] == [("a-onnx", "onnx"), ("b-pte", "executorch")]
    assert index["bundles"][1]["model_file"] == "b-pte/model.pte"


def test_default_id_is_model_and_target(artifacts, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    proc = run_cli("bundle", str(artifacts["executorch"]), str(app))
    assert proc.returncode == 0, proc.stderr
    assert (app / ASSETS / "tiny_text-rpi5" / "edgeq_bundle.json").is_file()


def test_tampered_artifact_is_refused_and_nothing_written(artifacts, tmp_path):
    art = _copy(artifacts["executorch"], tmp_path)
    data = bytearray((art / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.pte").write_bytes(bytes(data))
    app = tmp_path / "app"
    app.mkdir()
    before = tree_state(app)
    proc = run_cli("bundle", str(art), str(app))
    assert_clean_failure(proc, "does not match its sha256")
    assert_tree_unchanged(app, before)


@pytest.mark.parametrize("make_bad", ["empty_dir", "no_model", "escaping_path", "model_not_a_dict", "unknown_format",
                                      "huge_shape", "wrong_shape"])
def test_not_an_artifact_is_refused(artifacts, tmp_path, make_bad):
    if make_bad == "empty_dir":
        art = tmp_path / "empty"
        art.mkdir()
    else:
        art = _copy(artifacts["onnx"], tmp_path)
        if make_bad == "no_model":
            (art / "model.onnx").unlink()
        else:  # manifest.json is not hashed: any edit to it passes the integrity check
            m = json.loads((art / "manifest.json").read_text())
            if make_bad == "escaping_path":
                (tmp_path / "secret.txt").write_text("x")
                m["files"]["../secret.txt"] = {"bytes": 1, "sha256": _sha(tmp_path / "secret.txt")}
            elif make_bad == "huge_shape":
                m["model"]["inputs"][0]["shape"] = [1 << 20, 1 << 20]
            elif make_bad == "wrong_shape":
                m["model"]["inputs"][0]["shape"] = [3, 5]
            elif make_bad == "model_not_a_dict":
                m["model"] = ["not", "a", "dict"]
            else:
                m["target"]["format"] = "gguf"
            (art / "manifest.json").write_text(json.dumps(m))
    app = tmp_path / "app"
    app.mkdir()
    proc = run_cli("bundle", str(art), str(app))
    assert_clean_failure(proc, ("not an artifact", "has no manifest", "missing its model file", "outside the artifact",
                                "lacks what a bundle needs", "cannot be bundled yet", "has shape",
                                "does not run on inputs shaped", "manifest.json: model: Input should be a valid dictionary"))
    assert list(app.iterdir()) == []


@pytest.mark.parametrize("bad_id", ["../evil", "a/b", "..", ".hidden", "a b", "x" * 65])
def test_id_with_path_characters_is_refused(artifacts, tmp_path, bad_id):
    app = tmp_path / "app"
    app.mkdir()
    proc = run_cli("bundle", str(artifacts["onnx"]), str(app), "--id", bad_id)
    assert_clean_failure(proc, "is not a plain name")
    assert list(tmp_path.iterdir()) == [app] and list(app.iterdir()) == []


def test_app_dir_that_cannot_hold_assets_is_refused(artifacts, tmp_path):
    missing = tmp_path / "missing"
    assert_clean_failure(run_cli("bundle", str(artifacts["onnx"]), str(missing)), "does not exist")
    assert not missing.exists()
    app = tmp_path / "app"
    (app / "app" / "src" / "main").mkdir(parents=True)
    (app / "app" / "src" / "main" / "assets").write_text("a file where the assets directory should be")
    before = tree_state(app)
    assert_clean_failure(run_cli("bundle", str(artifacts["onnx"]), str(app)), "is not a directory")
    assert_tree_unchanged(app, before)


def test_existing_bundle_needs_force_and_force_replaces_only_bundles(artifacts, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    assert run_cli("bundle", str(artifacts["executorch"]), str(app), "--id", "m").returncode == 0
    before = tree_state(app)
    assert_clean_failure(run_cli("bundle", str(artifacts["onnx"]), str(app), "--id", "m"), "--force")
    assert_tree_unchanged(app, before)
    proc = run_cli("bundle", str(artifacts["onnx"]), str(app), "--id", "m", "--force")
    assert proc.returncode == 0, proc.stderr
    bdir = app / ASSETS / "m"
    assert json.loads((bdir / "edgeq_bundle.json").read_text())["format"] == "onnx"
    assert not (bdir / "model.pte").exists()  # replaced, not merged
    assert [p.name for p in (app / ASSETS).iterdir() if p.name.startswith(".")] == []
    assert json.loads((app / ASSETS / "index.json").read_text())["bundles"][0]["format"] == "onnx"
    # a directory that is not an edgeq bundle is never replaced, even with --force
    foreign = app / ASSETS / "fonts"
    foreign.mkdir()
    (foreign / "a.ttf").write_text("keep me")
    before = tree_state(app)
    assert_clean_failure(run_cli("bundle", str(artifacts["onnx"]), str(app), "--id", "fonts", "--force"),
                         "not an edgeq bundle")
    assert_tree_unchanged(app, before)


def test_failure_while_writing_leaves_the_previous_bundle(artifacts, tmp_path, monkeypatch):
    from edgeq.bundle import bundle, golden

    app = tmp_path / "app"
    app.mkdir()
    bundle(artifacts["executorch"], app, bundle_id="m")
    before = tree_state(app)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(golden, "make_golden", broken)
    for force in (True, False):
        with pytest.raises(Exception):
            bundle(artifacts["onnx"], app, bundle_id="m" if force else "new", force=force)
        assert_tree_unchanged(app, before)  # no half bundle, no staging dir, index untouched


@pytest.mark.slow
def test_minilm_bundle_has_wordpiece_tokenizer_and_text_golden(tmp_path, minilm_dir):
    from transformers import AutoTokenizer

    art = tmp_path / "minilm"
    proc = run_cli("export", str(minilm_dir), "-t", "rpi5", "-o", str(art), "-q", "--samples", "4")
    assert proc.returncode == 0, proc.stderr
    app = tmp_path / "app"
    app.mkdir()
    proc = run_cli("bundle", str(art), str(app), "--id", "minilm")
    assert proc.returncode == 0, proc.stderr
    bdir = app / ASSETS / "minilm"
    desc = json.loads((bdir / "edgeq_bundle.json").read_text())
    tok = desc["tokenizer"]
    hf = AutoTokenizer.from_pretrained(str(minilm_dir))
    assert tok["kind"] == "wordpiece" and tok["lowercase"] and tok["max_length"] == 128
    assert tok["special_ids"] == {"cls": hf.cls_token_id, "sep": hf.sep_token_id, "pad": hf.pad_token_id,
                                  "unk": hf.unk_token_id}
    assert {"tokenizer.json", "vocab.txt"} <= set(tok["files"]) and all((bdir / f).is_file() for f in tok["files"])
    assert desc["postprocess"] == {"output": "embedding", "pooling": "mean", "normalize": True, "applied_in_model": True}
    golden = desc["golden"]
    ids = _tensor(bdir, golden["inputs"][0])
    want = hf(golden["text"], padding="max_length", max_length=128, truncation=True)["input_ids"]
    assert ids.ravel().tolist() == want
    out = _tensor(bdir, golden["output"])
    assert out.shape == (1, 384) and abs(float(np.linalg.norm(out)) - 1.0) < 1e-3  # normalised in the graph


@pytest.mark.parametrize("prefix", [False, True])
def test_bpe_tokenizer_is_described(tmp_path, prefix):
    from tokenizers import ByteLevelBPETokenizer

    from edgeq.bundle.describe import tokenizer_info

    tok = ByteLevelBPETokenizer(add_prefix_space=prefix)
    tok.train_from_iterator(["a small corpus of words", "words and more words"], vocab_size=300, show_progress=False)
    tok.save(str(tmp_path / "tokenizer.json"))
    info = tokenizer_info(tmp_path, {"tokenizer.json": {}, "vocab.json": {}, "ops.json": {}}, 32)
    assert info == {"kind": "bpe", "files": ["tokenizer.json", "vocab.json"], "max_length": 32, "byte_level": True,
                    "add_prefix_space": prefix, "special_ids": {"pad": None}}
