"""Hostile model sources and calibration data through the real CLI, table-driven.

Every case must end the same way (``tests.hostile.assert_clean_failure``): exit 2, one
``error:`` line naming the problem and the fix, no traceback, and nothing at ``-o`` (no
output directory, no ``.partial-`` leftovers).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests import tiny_models
from tests.conftest import cli_here, run_cli
from tests.hostile import assert_clean_failure


@pytest.fixture(scope="module")
def base_bert(tmp_path_factory) -> Path:
    return tiny_models.save_tiny_sentence_bert(tmp_path_factory.mktemp("hostile-bert") / "tiny-bert")


def _edit_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _truncated_npz(path: Path) -> Path:
    buf = io.BytesIO()
    np.savez(buf, arg0=np.random.default_rng(0).integers(0, 256, (8, 1, 16)))
    return _write(path, buf.getvalue()[: len(buf.getvalue()) * 2 // 3])


def _npz_bomb(path: Path) -> Path:
    """A .npz whose header declares 12.8 GB of token ids but holds none: only the header may be read."""
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (100_000_000, 1, 16)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arg0.npy", buf.getvalue())  # magic, version and header: no data
    return path


def _pickle_bin(m: Path) -> Path:
    import pickle

    (m / "model.safetensors").unlink()
    _write(m / "pytorch_model.bin", pickle.dumps({"weights": Path("/")}))
    return m


def _safetensors_header_len(m: Path, value: int) -> Path:
    f = m / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(value.to_bytes(8, "little") + data[8:])
    return m


def _nan_weights(m: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(m / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.endswith("weight") and tensors[k].dim() == 2)
    tensors[name][0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in tensors.items()}, m / "model.safetensors", metadata={"format": "pt"})
    assert torch.isnan(load_file(m / "model.safetensors")[name]).any()
    return m


def _big_sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: costs no disk, but reading it whole would take minutes
    return path


def _calib_export(t: Path, model: str, calib: Path) -> list[str]:
    return ["export", model, "-t", "x86", "--calib", str(calib)]


M = "tests.tiny_models"
# (id, argv builder (tmp dir, fresh copy of a tiny sentence-transformers BERT), text in the error line).
CASES = [
    # (1) Hugging Face model directories
    ("safetensors-junk", lambda t, m: ["export", str(_write(m / "model.safetensors", b"\x07" * 100).parent), "-t", "x86"], "not a valid safetensors file"),
    ("safetensors-truncated", lambda t, m: ["export", str(_write(m / "model.safetensors", (m / "model.safetensors").read_bytes()[:5000]).parent), "-t", "x86"], "not a valid safetensors file"),
    ("safetensors-header-too-large", lambda t, m: ["export", str(_safetensors_header_len(m, 10**12)), "-t", "x86"], "not a valid safetensors file"),
    ("safetensors-nan-weights", lambda t, m: ["export", str(_nan_weights(m)), "-t", "x86"], "holds NaN or infinity"),
    ("pickle-in-pytorch-model-bin", lambda t, m: ["export", str(_pickle_bin(m)), "-t", "x86"], "does not unpickle"),
    ("config-not-an-object", lambda t, m: ["export", str(_write(m / "config.json", "[1, 2, 3]").parent), "-t", "x86"], "must hold a JSON object"),
    ("config-vocab-size-string", lambda t, m: (_edit_json(m / "config.json", vocab_size="x"), ["export", str(m), "-t", "x86"])[1], "'vocab_size' must be a whole number"),
    ("config-huge", lambda t, m: ["export", str(_write(m / "config.json", b'{"a": "' + b"x" * (17 << 20) + b'"}').parent), "-t", "x86"], "larger than 16 MB"),
    ("config-deeply-nested", lambda t, m: ["export", str(_write(m / "config.json", "[" * 100_000 + "]" * 100_000).parent), "-t", "x86"], "nests JSON"),
    ("config-bigger-than-weights", lambda t, m: (_edit_json(m / "config.json", vocab_size=10_000_000), ["export", str(m), "-t", "x86"])[1], "describes a model of"),
    ("config-heads-do-not-divide", lambda t, m: (_edit_json(m / "config.json", num_attention_heads=3), ["export", str(m), "-t", "x86"])[1], "transformers cannot load"),
    ("config-not-utf8", lambda t, m: ["export", str(_write(m / "config.json", b"\xff\xfe{}").parent), "-t", "x86"], "not UTF-8"),
    ("modules-json-not-json", lambda t, m: ["export", str(_write(m / "modules.json", "[{").parent), "-t", "x86"], "modules.json is not valid JSON"),
    ("modules-json-not-a-list", lambda t, m: ["export", str(_write(m / "modules.json", '{"type": "Normalize"}').parent), "-t", "x86"], "must hold a JSON list"),
    ("modules-json-wrong-types", lambda t, m: ["export", str(_write(m / "modules.json", '[{"type": 7}]').parent), "-t", "x86"], "string 'type'"),
    ("modules-json-huge", lambda t, m: ["export", str(_write(m / "modules.json", b"[" + b'{"type": "x"},' * 200_000 + b"{}]").parent), "-t", "x86"], "larger than"),
    ("pooling-config-wrong-type", lambda t, m: ["export", str(_write(m / "1_Pooling" / "config.json", '{"pooling_mode_cls_token": "yes"}').parent.parent), "-t", "x86"], "must be true or false"),
    ("pooling-config-not-json", lambda t, m: ["export", str(_write(m / "1_Pooling" / "config.json", "\x00\x01").parent.parent), "-t", "x86"], "config.json is not valid JSON"),
    ("tokenizer-broken", lambda t, m: ["export", str(_write(m / "tokenizer.json", '{"model": {"type": "Nope"}}').parent), "-t", "x86"], "tokenizer files in"),
    ("seq-len-over-positions", lambda t, m: ["export", str(m), "-t", "x86", "--seq-len", "65"], "more than the model's 64 positions"),
    ("base-model-as-classifier", lambda t, m: ["export", str(m), "-t", "x86", "--task", "sequence-classification", "--seq-len", "16"], "has no weights for"),
    ("mistyped-local-dir", lambda t, m: ["export", str(m.parent / "tiny-bart"), "-t", "x86"], "did you mean"),
    ("org-slash-name-under-a-local-dir", lambda t, m: ["export", "models/bert", "-t", "x86"], "no such directory"),
    ("relative-path-not-hub-id", lambda t, m: ["export", "./no-such/model-dir", "-t", "x86"], "no such directory"),
    # (2) factories
    ("factory-raises", lambda t, m: ["export", f"{M}:raises_error", "-t", "x86"], "raised ValueError: the factory failed"),
    ("factory-exits-zero", lambda t, m: ["export", f"{M}:exits_zero", "-t", "x86"], "called sys.exit(0)"),
    ("factory-dict-inputs", lambda t, m: ["export", f"{M}:dict_inputs", "-t", "x86"], "example input 0 is dict, not a tensor"),
    ("factory-float-ids", lambda t, m: ["export", f"{M}:float_ids", "-t", "x86"], "run on its example inputs raised"),
    ("factory-wrong-shape", lambda t, m: ["export", f"{M}:wrong_shape_inputs", "-t", "x86"], "run on its example inputs raised"),
    ("factory-nan-inputs", lambda t, m: ["export", f"{M}:nan_inputs", "-t", "x86"], "holds NaN or infinity"),
    # (3) --calib data
    ("calib-truncated-npz", lambda t, m: _calib_export(t, f"{M}:tiny_text", _truncated_npz(t / "c.npz")), "not a readable .npz"),
    ("calib-npz-declares-gigabytes", lambda t, m: _calib_export(t, f"{M}:tiny_text", _npz_bomb(t / "c.npz")), "MB of arrays, more than"),
    ("calib-ids-over-vocab", lambda t, m: ["export", str(m), "-t", "x86", "--seq-len", "16", "--calib", str(_npz(t / "c.npz", input_ids=np.full((4, 1, 16), 512), attention_mask=np.ones((4, 1, 16), dtype=np.int64)))], "outside the model's vocabulary 0..511"),
    ("calib-negative-ids", lambda t, m: _calib_export(t, f"{M}:tiny_text", _npz(t / "c.npz", arg0=np.full((4, 1, 16), -3))), "cannot run on sample"),
    ("calib-ids-over-factory-vocab", lambda t, m: _calib_export(t, f"{M}:tiny_text", _npz(t / "c.npz", arg0=np.concatenate([np.zeros((3, 1, 16), dtype=np.int64), np.full((1, 1, 16), 256)]))), "cannot run on sample 3"),
    ("calib-float-ids", lambda t, m: _calib_export(t, f"{M}:tiny_text", _npz(t / "c.npz", arg0=np.full((4, 1, 16), 1.5))), "the model takes integers"),
    ("calib-nan-floats", lambda t, m: _calib_export(t, f"{M}:tiny_mlp", _npz(t / "c.npz", arg0=np.full((4, 1, 64), np.nan, dtype=np.float32))), "holds NaN or infinity"),
    ("calib-binary-txt", lambda t, m: ["export", str(m), "-t", "x86", "--seq-len", "16", "--calib", str(_write(t / "c.txt", bytes(range(256)) * 8))], "is binary, not text"),
    ("calib-huge-sparse-txt", lambda t, m: ["export", str(m), "-t", "x86", "--seq-len", "16", "--calib", str(_big_sparse(t / "c.txt", 20 << 30))], "is binary, not text"),
]


@pytest.mark.parametrize("case_id, build, expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_model_input(tmp_path: Path, base_bert: Path, case_id: str, build, expected: str):
    model = tmp_path / "models" / "tiny-bert"
    shutil.copytree(base_bert, model)
    argv = build(tmp_path, model)
    if "--seq-len" not in argv:  # the tiny BERT has 64 positions, the target's default is 128
        argv += ["--seq-len", "16"]
    argv += ["-o", str(tmp_path / "out")]
    proc = cli_here(*argv, cwd=tmp_path, env={"EDGEQ_CACHE_DIR": str(tmp_path / "cache")})
    assert_clean_failure(proc, expected)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


def test_the_unmutated_model_exports(tmp_path: Path, base_bert: Path):
    """The base every case mutates is itself fine: the failures above come from the mutations."""
    proc = run_cli("export", str(base_bert), "-t", "x86", "--seq-len", "16", "--samples", "2", "-o", str(tmp_path / "out"),
                   env={"EDGEQ_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out").is_dir()


def test_interrupt_in_a_factory_exits_130(tmp_path: Path):
    proc = run_cli("export", f"{M}:interrupts", "-t", "x86", "-o", str(tmp_path / "out"))
    assert_clean_failure(proc, "interrupted", code=130)
    assert not (tmp_path / "out").exists()


def test_plan_refuses_bad_calibration_too(tmp_path: Path):
    calib = _npz(tmp_path / "c.npz", arg0=np.full((4, 1, 16), 1.5))
    proc = run_cli("plan", f"{M}:tiny_text", "-t", "x86", "--budget", "40KB", "--calib", str(calib),
                   "-o", str(tmp_path / "plan.yaml"), env={"EDGEQ_CACHE_DIR": str(tmp_path / "cache")})
    assert_clean_failure(proc, "the model takes integers")
    assert not (tmp_path / "plan.yaml").exists()


def test_remote_code_is_not_run_unless_asked(tmp_path: Path, base_bert: Path):
    """A directory whose config points at its own Python: refused, and that code never runs."""
    model = tmp_path / "evil"
    shutil.copytree(base_bert, model)
    marker = tmp_path / "code-ran"
    for name in ("configuration_evil.py", "modeling_evil.py"):
        _write(model / name, f"open({str(marker)!r}, 'w').write('ran')\n")
    _edit_json(model / "config.json", model_type="evil",
               auto_map={"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"})
    proc = run_cli("export", str(model), "-t", "x86", "--seq-len", "16", "-o", str(tmp_path / "out"))
    assert_clean_failure(proc, "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "out").exists()
