"""--calib: the user's calibration data replaces the built-in split (text, images, .npz)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeq.models.calib import with_calibration
from edgeq.errors import ConfigError
from edgeq.models import load_model
from edgeq.planning.planner import plan
from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bert_with_tokenizer(tmp_path_factory, minilm_dir) -> Path:
    """A small random BERT sharing MiniLM's vocabulary, with MiniLM's tokenizer files."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert-tok")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir / name).exists():
            shutil.copy(minilm_dir / name, path / name)
    return path


def test_text_file_calibration(tmp_path: Path, bert_with_tokenizer: Path):
    lines = ["the cat sat on the mat", "edge devices have little memory", "", "quantize every layer"]
    f = tmp_path / "calib.txt"
    f.write_text("\n".join(lines))
    loaded = load_model(bert_with_tokenizer, seq_len=16)
    mine = with_calibration(loaded, f)
    rows = mine.make_inputs("calib", 10)
    assert len(rows) == 3  # empty lines dropped; never more than the file has
    assert torch.equal(rows[0][0], loaded.encode_text(["the cat sat on the mat"])[0][0])
    assert torch.equal(mine.make_inputs("heldout", 2)[0][0], loaded.make_inputs("heldout", 2)[0][0])
    builtin = plan(loaded, "rpi5", budget_bytes=2_000_000)
    custom = plan(loaded, "rpi5", budget_bytes=2_000_000, calib=f)
    assert builtin.sensitivity != custom.sensitivity  # measured on other data


def test_npz_calibration_for_any_model(tmp_path: Path):
    loaded = load_model("tests.tiny_models:tiny_text")
    ids = np.random.default_rng(0).integers(0, 256, size=(5, 1, 16))
    np.savez(tmp_path / "c.npz", arg0=ids)
    rows = with_calibration(loaded, tmp_path / "c.npz").make_inputs("calib", 32)
    assert len(rows) == 5 and rows[2][0].dtype == loaded.example_inputs[0].dtype
    assert np.array_equal(rows[2][0].numpy(), ids[2])
    result = plan(loaded, "x86", budget_bytes=40_000, calib=tmp_path / "c.npz")
    assert result.predicted_bytes <= 40_000

    np.savez(tmp_path / "bad.npz", arg0=ids[:, :, :8])
    with pytest.raises(ConfigError, match=r"samples of shape \[1, 8\], the model takes \[1, 16\]"):
        with_calibration(loaded, tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", pixels=ids)
    with pytest.raises(ConfigError, match="has no array"):
        with_calibration(loaded, tmp_path / "other.npz")


def test_image_directory_calibration(tmp_path: Path):
    from PIL import Image

    from tests.tiny_models import save_tiny_vit

    model_dir = save_tiny_vit(tmp_path / "vit")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    loaded = load_model(model_dir)
    rows = with_calibration(loaded, images).make_inputs("calib", 8)
    assert len(rows) == 3 and rows[0][0].shape == loaded.example_inputs[0].shape
    assert plan(loaded, "x86", calib=images, budget_bytes=200_000).predicted_bytes <= 200_000


@pytest.mark.parametrize("case,expected", [
    ("missing", "no such file or directory"),
    ("empty", "has no non-empty lines"),
    ("text-for-factory", "needs a text model with a tokenizer"),
    ("nothing-usable", "no .txt, .npz or image files"),
])
def test_bad_calibration_data(tmp_path: Path, case: str, expected: str):
    path = tmp_path / "calib"
    if case == "empty":
        path = tmp_path / "empty.txt"
        path.write_text("\n \n")
    elif case == "text-for-factory":
        path = tmp_path / "lines.txt"
        path.write_text("hello\n")
    elif case == "nothing-usable":
        path.mkdir()
        (path / "notes.md").write_text("x")
    r = run_cli("plan", "tests.tiny_models:tiny_text", "--target", "x86", "--budget", "40KB", "--calib", str(path),
                "-o", str(tmp_path / "plan.yaml"), env={"EDGEQ_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "plan.yaml").exists()
