"""Property tests: mutated model sources and calibration data end in an EdgeqError or work.

Each surface starts from something valid (a tiny sentence-transformers BERT directory, a
tiny Llama, a factory, a good .npz/.txt) and hypothesis mutates it: files deleted,
truncated, overwritten with junk, JSON fields replaced with values of every type, bytes
flipped. The property: the library call either succeeds, and what it returns works (the
model runs on its inputs), or raises an ``EdgeqError``; any other exception is a bug.
Runs are deterministic (``derandomize``) and bounded (~10-20 s each; see ``_SETTINGS``).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgeq.models.calib import with_calibration
from edgeq.errors import EdgeqError
from edgeq.models import load_model
from tests import tiny_models

_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SEQ = 16


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return tiny_models.save_tiny_sentence_bert(tmp_path_factory.mktemp("fuzz-bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return tiny_models.save_tiny_llama(tmp_path_factory.mktemp("fuzz-llama"))


def _works_or_edgeq_error(call):
    """Run ``call``; a result must be usable, a failure must be an EdgeqError."""
    try:
        loaded = call()
    except EdgeqError as exc:
        assert exc.one_line() and "\n" not in exc.one_line()
        event(f"{type(exc).__name__}: {' '.join(exc.message.split()[1:4])[:40]}")
        return None
    event("loaded")
    rows = loaded.make_inputs("calib", 2)
    with torch.no_grad():
        for row in rows:
            loaded.eager(*row)
    return loaded


# ------------------------------------------------------------------ (1) HF model directories

_any_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
# Mostly plausible-but-wrong values (small numbers, near the real ones), so mutated directories
# get past the first checks and reach transformers, the tokenizer and the forward pass.
json_values = st.one_of(st.integers(-2, 600), st.sampled_from([0, 1, 2, 3, 4, 63, 64, 65, 128, 511, 513, True, 1.5]),
                        _any_json)

_CONFIG_KEYS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "architectures", "model_type", "pad_token_id",
                "hidden_act", "layer_norm_eps", "initializer_range", "torch_dtype", "position_embedding_type"]
_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
          "1_Pooling/config.json"]


@st.composite
def dir_mutations(draw):
    """A list of (file, operation, argument) edits of a model directory."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(_FILES))
        op = draw(st.sampled_from(["json-field"] * 5 + ["delete", "truncate", "junk", "flip", "json-whole", "deep"]))
        if name == "model.safetensors" and draw(st.booleans()):
            op = "st-header"
        if op == "truncate":
            arg = draw(st.floats(0, 0.999))
        elif op == "junk":
            arg = draw(st.binary(max_size=64))
        elif op == "flip":
            arg = draw(st.lists(st.tuples(st.floats(0, 0.999), st.integers(1, 255)), min_size=1, max_size=4))
        elif op == "json-field":
            arg = (draw(st.sampled_from(_CONFIG_KEYS + ["pooling_mode_mean_tokens", "pooling_mode_cls_token", "type"])),
                   draw(json_values))
        elif op == "json-whole":
            arg = draw(json_values)
        elif op == "deep":
            arg = draw(st.integers(50, 100_000))
        elif op == "st-header":
            arg = (draw(st.integers(0, 38)), draw(st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__"])),
                   draw(json_values | st.sampled_from(["F16", "I8", "BOOL", "F64", [0, 0], [64], [1 << 40, 1]])))
        else:
            arg = None
        edits.append((name, op, arg))
    return edits


def _apply(root: Path, edits) -> None:
    for name, op, arg in edits:
        f = root / name
        if op == "delete":
            f.unlink(missing_ok=True)
            continue
        data = f.read_bytes() if f.exists() else b""
        if op == "truncate":
            data = data[: int(len(data) * arg)]
        elif op == "junk":
            data = arg
        elif op == "flip" and data:
            buf = bytearray(data)
            for where, xor in arg:
                buf[int(len(buf) * where)] ^= xor
            data = bytes(buf)
        elif op == "json-field":
            try:
                obj = json.loads(data)
            except ValueError:
                obj = {}
            if isinstance(obj, dict):
                obj[arg[0]] = arg[1]
            elif isinstance(obj, list) and obj and isinstance(obj[-1], dict):
                obj[-1][arg[0]] = arg[1]  # modules.json: edit an entry
            data = json.dumps(obj).encode()
        elif op == "json-whole":
            data = json.dumps(arg).encode()
        elif op == "deep":
            data = b"[" * arg + b"]" * arg
        elif op == "st-header" and len(data) >= 8:
            data = _edit_safetensors_header(data, *arg)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)


def _edit_safetensors_header(data: bytes, index: int, field: str, value) -> bytes:
    """Set ``field`` of the ``index``-th tensor in the header, keeping the length prefix consistent."""
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8: 8 + n])
    except ValueError:
        return data
    names = sorted(k for k in header if k != "__metadata__")
    if field == "__metadata__":
        header["__metadata__"] = value
    elif names:
        header[names[index % len(names)]][field] = value
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


@settings(max_examples=40, **_SETTINGS)
@given(edits=dir_mutations())
def test_mutated_sentence_bert_dir_loads_or_fails_cleanly(bert_dir, edits):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model"
        shutil.copytree(bert_dir, root)
        _apply(root, edits)
        _works_or_edgeq_error(lambda: load_model(root, seq_len=SEQ))


@settings(max_examples=25, **_SETTINGS)
@given(key=st.sampled_from(["vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads",
                            "intermediate_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                            "tie_word_embeddings", "head_dim", "architectures", "rope_scaling", "hidden_act"]),
       value=json_values, seq_len=st.sampled_from([8, 128, 129, 4096]))
def test_llama_config_fields_load_or_fail_cleanly(llama_dir, key, value, seq_len):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "llama"
        shutil.copytree(llama_dir, root)
        config = json.loads((root / "config.json").read_text())
        config[key] = value
        (root / "config.json").write_text(json.dumps(config))
        _works_or_edgeq_error(lambda: load_model(root, seq_len=seq_len))


@settings(max_examples=2, **_SETTINGS)
@given(edits=dir_mutations())
def test_mutated_dir_through_the_cli_fails_cleanly(bert_dir, edits):
    """A few mutations end to end: exit 0 with an artifact, or exactly one error line and exit 2."""
    from tests.conftest import run_cli
    from tests.hostile import assert_clean_failure

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model"
        shutil.copytree(bert_dir, root)
        _apply(root, edits)
        proc = run_cli("export", str(root), "-t", "x86", "--seq-len", str(SEQ), "--samples", "2",
                       "-o", str(Path(tmp) / "out"), env={"EDGEQ_CACHE_DIR": str(Path(tmp) / "cache")})
        if proc.returncode == 0:
            assert (Path(tmp) / "out").is_dir()
        else:
            assert_clean_failure(proc, "")
            assert not (Path(tmp) / "out").exists()


def test_seq_len_over_positions_is_refused_and_at_the_limit_works(llama_dir):
    assert load_model(llama_dir, seq_len=128).example_inputs[0].shape == (1, 128)  # max_position_embeddings
    with pytest.raises(EdgeqError, match="more than .*128 positions"):
        load_model(llama_dir, seq_len=129)


# ------------------------------------------------------------------------ (2) factories

_exceptions = st.sampled_from([
    ValueError("bad"), RuntimeError(""), TypeError("x"), SystemExit(0), SystemExit(1), SystemExit("bye"),
    MemoryError(), RecursionError(), ImportError("dep"), GeneratorExit(), AttributeError("a"),
    ExceptionGroup("many", [ValueError("a"), OSError("b")]),
])
_dtypes = st.sampled_from([torch.float32, torch.float16, torch.int64, torch.int32, torch.bool, torch.uint8,
                           torch.complex64, torch.float64])


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(0, 70), max_size=3))
    dtype = draw(_dtypes)
    kind = draw(st.sampled_from(["randn", "zeros", "nan", "big", "negative"]))
    if dtype.is_complex:
        return torch.zeros(shape, dtype=dtype)
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=torch.bool)
    base = torch.randn(shape) if kind == "randn" else torch.zeros(shape)
    if kind == "nan":
        base = base + float("nan")
    elif kind == "big":
        base = base + 1e6
    elif kind == "negative":
        base = base - 5
    return base.to(dtype)


junk = st.recursive(
    st.none() | st.integers() | st.text(max_size=5) | st.floats() | tensors(),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=6,
)


class _Returns(torch.nn.Module):
    """forward() returns a fixed junk value (a dict, a string, None, a complex tensor...)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return self.value


_modules = st.sampled_from(["mlp", "text", "conv"]).map(
    lambda k: {"mlp": tiny_models.tiny_mlp, "text": tiny_models.tiny_text, "conv": tiny_models.tiny_conv}[k]()[0])


@st.composite
def factory_behaviours(draw):
    kind = draw(st.sampled_from(["raise", "return-junk", "junk-inputs", "junk-output"]))
    if kind == "raise":
        exc = draw(_exceptions)

        def behave():
            raise exc
    elif kind == "return-junk":
        value = draw(junk | st.tuples(junk, junk))
        behave = lambda: value  # noqa: E731
    elif kind == "junk-inputs":
        module, example = draw(_modules), draw(junk)
        behave = lambda: (module, example)  # noqa: E731
    else:
        module, out = _Returns(draw(junk)), torch.randn(1, 4)
        behave = lambda: (module, (out,))  # noqa: E731
    return kind, behave


@settings(max_examples=120, **_SETTINGS)
@given(behaviour=factory_behaviours())
def test_junk_factories_load_or_fail_cleanly(behaviour, monkeypatch):
    _, behave = behaviour
    monkeypatch.setattr(tiny_models, "FUZZ_FACTORY", behave)
    _works_or_edgeq_error(lambda: load_model("tests.tiny_models:fuzz_factory"))


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), BaseExceptionGroup("g", [KeyboardInterrupt()])])
def test_interrupt_in_a_factory_is_not_swallowed(monkeypatch, raised):
    def behave():
        raise raised

    monkeypatch.setattr(tiny_models, "FUZZ_FACTORY", behave)
    with pytest.raises((KeyboardInterrupt, BaseExceptionGroup)) as info:
        load_model("tests.tiny_models:fuzz_factory")
    assert not isinstance(info.value, EdgeqError)


# ---------------------------------------------------------------------- (3) --calib data


@pytest.fixture(scope="module")
def loaded_models(bert_dir):
    return {"bert": load_model(bert_dir, seq_len=SEQ), "text": load_model("tests.tiny_models:tiny_text"),
            "mlp": load_model("tests.tiny_models:tiny_mlp")}


def _good_arrays(which: str, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if which == "bert":
        return {"input_ids": rng.integers(0, 512, (n, 1, SEQ)), "attention_mask": np.ones((n, 1, SEQ), dtype=np.int64)}
    if which == "text":
        return {"arg0": rng.integers(0, 256, (n, 1, 16))}
    return {"arg0": rng.standard_normal((n, 1, 64)).astype(np.float32)}


@st.composite
def npz_files(draw):
    which = draw(st.sampled_from(["bert", "text", "mlp"]))
    arrays = _good_arrays(which, draw(st.integers(0, 6)))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(arrays) + ["extra"]))
        a = arrays.get(key, np.zeros((2, 3)))
        op = draw(st.sampled_from(["float", "nan", "inf", "negative", "huge", "vocab-edge", "bool", "uint64",
                                   "string", "shape", "drop", "scalar", "one-sample", "complex"]))
        if a.dtype.kind not in "biuf" or a.size == 0:  # an earlier edit made it text or empty: replace it
            op = draw(st.sampled_from(["drop", "scalar"]))
        if op == "float":
            a = a.astype(np.float64) + 0.5
        elif op == "nan":
            a = a.astype(np.float32)
            if a.size:
                a.flat[draw(st.integers(0, a.size - 1))] = np.nan
        elif op == "inf":
            a = np.full_like(a.astype(np.float32), np.inf)
        elif op == "negative":
            a = a - draw(st.integers(1, 10**6))
        elif op == "huge":
            a = a + 2**40
        elif op == "vocab-edge":
            a = np.full_like(a, draw(st.sampled_from([255, 256, 511, 512])))
        elif op == "bool":
            a = a.astype(bool)
        elif op == "uint64":
            a = a.astype(np.uint64) + np.uint64(2**63)
        elif op == "string":
            a = np.array(["x"] * max(len(a), 1))
        elif op == "shape":
            a = a.reshape(len(a), -1) if a.ndim > 1 else a[None]
        elif op == "drop":
            arrays.pop(key, None)
            continue
        elif op == "scalar":
            a = np.array(3)
        elif op == "one-sample":
            a = a[:1]
        elif op == "complex":
            a = a.astype(np.complex64)
        arrays[key] = a
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
    data = buf.getvalue()
    cut = draw(st.sampled_from([None] * 9 + [0.5, 0.9, 0.99]))
    if cut is not None:
        data = data[: int(len(data) * cut)]
    if draw(st.integers(0, 11)) == 0 and data:
        buf = bytearray(data)
        buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(buf)
    return which, data


def _calibrate(loaded, path: Path):
    """``with_calibration`` then every calibration sample through the model."""
    def call():
        return with_calibration(loaded, path)

    try:
        cal = call()
    except EdgeqError as exc:
        event(f"{type(exc).__name__}: {' '.join(exc.message.split()[2:5])[:40]}")
        return None
    event("calibrated")
    rows = cal.make_inputs("calib", 10_000)
    assert rows and all(len(r) == len(loaded.example_inputs) for r in rows)
    with torch.no_grad():
        for row in rows:
            out = cal.eager(*row)
            assert torch.isfinite(out).all()
    return cal


@settings(max_examples=120, **_SETTINGS)
@given(case=npz_files())
def test_mutated_npz_calibration_works_or_fails_cleanly(loaded_models, case):
    which, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calib.npz"
        path.write_bytes(data)
        _calibrate(loaded_models[which], path)


@settings(max_examples=60, **_SETTINGS)
@given(data=st.binary(max_size=2000) | st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
       which=st.sampled_from(["bert", "text"]), as_dir=st.booleans())
def test_arbitrary_text_calibration_works_or_fails_cleanly(loaded_models, data, which, as_dir):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "calib.txt"
        if as_dir:
            path = root / "calib"
            path.mkdir()
            (path / "a.txt").write_bytes(data)
            (path / "b.txt").write_text("edge devices have little memory\n")
        else:
            path.write_bytes(data)
        _calibrate(loaded_models[which], path)


def test_calibration_reads_are_capped_and_reported(loaded_models, tmp_path, monkeypatch):
    from edgeq.models import calib

    many = tmp_path / "many"
    many.mkdir()
    for i in range(3000):  # thousands of files: only MAX_SAMPLES lines are used
        (many / f"{i:05d}.txt").write_text(f"sample number {i} of the set\n")
    monkeypatch.setattr(calib, "MAX_SAMPLES", 1000)
    cal = with_calibration(loaded_models["bert"], many)
    assert "1000 samples" in cal.config["calibration"] and "left out" in cal.config["calibration"]
    assert len(cal.make_inputs("calib", 5000)) == 1000

    monkeypatch.setattr(calib, "MAX_TEXT_BYTES", 4096)
    big = tmp_path / "big.txt"
    big.write_text("a line of calibration text\n" * 100_000)  # 2.7 MB: only the first 4 KB is read
    cal = with_calibration(loaded_models["bert"], big)
    assert "left out" in cal.config["calibration"]
    assert len(cal.make_inputs("calib", 5000)) == 4096 // len("a line of calibration text\n")

    npz = tmp_path / "c.npz"
    np.savez(npz, arg0=np.zeros((50, 1, 16), dtype=np.int64))
    monkeypatch.setattr(calib, "MAX_SAMPLES", 20)
    cal = with_calibration(loaded_models["text"], npz)
    assert "used the first 20 of 50" in cal.config["calibration"] and len(cal.make_inputs("calib", 100)) == 20
    monkeypatch.setattr(calib, "MAX_NPZ_BYTES", 50 * 16 * 8 - 1)  # one byte less than the arrays declare
    with pytest.raises(EdgeqError, match="MB of arrays, more than"):
        with_calibration(loaded_models["text"], npz)

    monkeypatch.setattr(calib, "MAX_DIR_ENTRIES", 100)
    with pytest.raises(EdgeqError, match="more than 100 entries"):
        with_calibration(loaded_models["bert"], many)
