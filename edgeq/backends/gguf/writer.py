"""A transformers decoder LLM written as a GGUF file llama.cpp loads: tensors named and laid
out as llama.cpp's architecture expects, each at the GGUF type of its planned scheme
(``costs.GGUF_TYPES``), with the metadata llama.cpp reads (architecture, context, rope, norm
epsilon, heads, tokenizer with merges, chat template, bos/eos).

Architectures (``ARCHS``): ``llama`` (Llama, SmolLM2, Mistral without a sliding window) and
``qwen2``. llama.cpp's ``llama`` rotary is the interleaved (GPT-J) form while transformers'
Llama rotates halves, so Q and K rows are permuted per head (pairs ``(i, i + d/2)`` become
``(2i, 2i + 1)``); ``qwen2`` uses llama.cpp's NEOX rotary (halves) and keeps them as they are.
A tied output head is written as ``output.weight`` only when its scheme differs from the
table's; otherwise llama.cpp reads ``token_embd.weight`` for both.

The file is written to a temporary name in the destination directory and renamed into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError, ExportError

GGUF_META_KEY = "edgeq.lm"  # a JSON string: what open_lm needs besides llama.cpp (versioned)
GGUF_META_VERSION = 1


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers architecture maps onto a llama.cpp architecture."""

    gguf_arch: str
    permute_qk: bool  # interleaved rotary in llama.cpp: permute Q/K rows per head
    qkv_bias: bool


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", permute_qk=True, qkv_bias=False),
    "qwen2": ArchSpec("qwen2", permute_qk=False, qkv_bias=True),
}

# transformers' per-layer names → llama.cpp's (blk.N.<name>)
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def check_arch(config: Any) -> ArchSpec:
    """The architecture's spec; ``ConfigError`` (before any work) for one edgeq cannot write."""
    model_type = getattr(config, "model_type", None)
    spec = ARCHS.get(model_type)
    hint = f"GGUF export takes {', '.join(ARCHS)} decoders; use an executorch or onnx target for this model"
    if spec is None:
        raise ConfigError(f"edgeq cannot write a {model_type} model as GGUF", hint)
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    if kind not in (None, "default"):
        raise ConfigError(f"edgeq's GGUF writer does not write {kind} rope scaling", hint)
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", model_type != "qwen2"):
        raise ConfigError("edgeq's GGUF writer does not write sliding-window attention", hint)
    heads, kv = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
    if heads % kv:
        raise ConfigError(f"{heads} attention heads are not a multiple of {kv} KV heads", hint)
    return spec


def gguf_names(model: Any) -> dict[str, str]:
    """transformers parameter name (relative to the CausalLM) → GGUF tensor name."""
    layers = int(model.config.num_hidden_layers)
    out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    for i in range(layers):
        for hf, gg in _LAYER_TENSORS.items():
            out[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
    return out


def _permute(w: Any, heads: int) -> Any:
    """Rows of each head reordered from halves to interleaved pairs (transformers → llama.cpp)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_data(array: Any, type_name: str, where: str) -> tuple[Any, Any]:
    """``(data, GGMLQuantizationType)`` of a float32 array at GGUF type ``type_name``."""
    import numpy as np
    from gguf import GGMLQuantizationType

    from edgeq.backends.gguf.numerics import quantized_bytes

    qtype = GGMLQuantizationType[type_name]
    array = np.ascontiguousarray(array, dtype=np.float32)
    if type_name == "F32":
        return array, qtype
    if type_name == "F16":
        return array.astype(np.float16), qtype
    try:
        return quantized_bytes(array, type_name), qtype
    except Exception as exc:  # gguf.quants' QuantError, kquants' ValueError: rows not whole blocks
        raise ExportError(f"{where}: cannot quantize to {type_name}: {exc}", "keep the layer at fp32") from None


def write_gguf(model: Any, schemes: dict[str, Any], out: Path, *, max_context: int, tokenizer: Any,
               chat_template: str | None, name: str) -> dict[str, str]:
    """Write causal LM ``model`` to ``out`` with each layer (fqn relative to ``model``) at
    ``schemes[fqn]`` (absent: fp32); returns the GGUF tensor name → type written."""
    import gguf

    from edgeq.backends.gguf.costs import gguf_type
    from edgeq.schemes import FP32

    config = model.config.get_text_config()
    spec = check_arch(config)
    heads = int(config.num_attention_heads)
    kv_heads = int(config.num_key_value_heads or heads)
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    names = gguf_names(model)
    state = {k: v for k, v in model.state_dict().items()}
    tied = "lm_head.weight" not in state or state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    head_scheme, table_scheme = schemes.get("lm_head", FP32), schemes.get("model.embed_tokens", FP32)
    if tied and head_scheme == table_scheme:
        state.pop("lm_head.weight", None)  # llama.cpp reads token_embd for the head
    elif tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    unknown = sorted(k for k in state if k not in names and not k.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise ExportError(f"the {config.model_type} model has tensors edgeq's GGUF writer does not map: "
                          f"{', '.join(unknown[:3])}", "re-run with --debug and report it")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), spec.gguf_arch, use_temp_file=False)
    _metadata(writer, config, spec, max_context=max_context, head_dim=head_dim, name=name)
    _tokenizer(writer, tokenizer, int(config.vocab_size), config, chat_template)
    writer.add_string(GGUF_META_KEY, json.dumps({"version": GGUF_META_VERSION, "max_context": max_context,
                                                 "vocab_size": int(config.vocab_size),
                                                 "plain_token": plain_token(tokenizer)}))
    written: dict[str, str] = {}
    for hf_name, tensor in state.items():
        if hf_name not in names:
            continue
        fqn = hf_name.rsplit(".", 1)[0]
        array = tensor.detach().float().cpu().numpy()
        if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _permute(array, heads)
        elif spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            array = _permute(array, kv_heads)
        # weights of planned layers at their scheme; norms and biases stay F32 (llama.cpp adds them in F32)
        is_weight = hf_name.endswith(".weight") and array.ndim == 2
        t = gguf_type(schemes.get(fqn, FP32), fqn) if is_weight else gguf_type(FP32)
        if t.quantized and array.shape[-1] % t.block:
            raise ConfigError(f"{fqn}: rows of {array.shape[-1]} weights are not whole {t.name} blocks of {t.block}",
                              "keep the layer at fp32 or fp16 (a rule such as --rule '<name>=fp32')")
        data, qtype = tensor_data(array, t.name, fqn)
        writer.add_tensor(names[hf_name], data, raw_dtype=qtype)
        written[names[hf_name]] = t.name
    writer.add_file_type(_file_type(written))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return written


def _file_type(written: dict[str, str]) -> int:
    """llama.cpp's ``general.file_type``: the type most 2-D weights have (a mostly-Q4_0 file is
    MOSTLY_Q4_0; a mostly-Q4_K one MOSTLY_Q4_K_M; ties go to the type listed first in ``GGUF_TYPES``)."""
    from gguf import LlamaFileType

    from edgeq.backends.gguf.costs import FILE_TYPES, GGUF_TYPES

    order = [t.name for t in GGUF_TYPES.values()]
    kinds = [t for n, t in written.items() if n.endswith(".weight") and "norm" not in n]
    common = min(set(kinds), key=lambda k: (-kinds.count(k), order.index(k))) if kinds else "F32"
    return LlamaFileType[FILE_TYPES[common]]


def _metadata(writer: Any, config: Any, spec: ArchSpec, *, max_context: int, head_dim: int, name: str) -> None:
    heads = int(config.num_attention_heads)
    writer.add_name(name)
    writer.add_context_length(int(getattr(config, "max_position_embeddings", None) or max_context))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.num_key_value_heads or heads))
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    if head_dim != int(config.hidden_size) // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        params = getattr(config, "rope_parameters", None) or {}
        theta = params.get("rope_theta") if isinstance(params, dict) else None
    if theta is None:
        raise ExportError(f"{config.model_type}'s config has no rope_theta", "re-run with --debug and report it")
    return float(theta)


def bpe_model(tokenizer: Any) -> dict[str, Any]:
    """The ``model`` block of a byte-level BPE ``tokenizer.json``; ``ConfigError`` for a tokenizer
    llama.cpp's ``gpt2`` vocabulary cannot express (WordLevel, WordPiece, Unigram, BPE with
    SentencePiece's byte fallback, or no merges)."""
    hint = "GGUF export takes models with a byte-level BPE tokenizer.json (Llama 3, SmolLM2, Qwen2)"
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer to write into the GGUF", hint)
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else {}
    model = data.get("model") or {}
    kind = model.get("type", type(tokenizer).__name__)
    if kind != "BPE" or model.get("byte_fallback") or not model.get("merges"):
        why = "byte fallback" if kind == "BPE" and model.get("byte_fallback") else "no merges" if kind == "BPE" else kind
        raise ConfigError(f"the model's tokenizer ({why}) has no GGUF form edgeq writes", hint)
    return model


def plain_token(tokenizer: Any) -> int:
    """A token whose text is plain ASCII letters: what the session has llama.cpp's server
    sample (with a logit bias) so that every step returns its probabilities (the server
    holds back those of a token that ends inside a UTF-8 character)."""
    for text, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if text.isascii() and text.isalpha() and i not in set(getattr(tokenizer, "all_special_ids", [])):
            return int(i)
    raise ConfigError("the tokenizer has no plain ASCII token", "export a model with a byte-level BPE tokenizer")


def _tokenizer(writer: Any, tokenizer: Any, vocab_size: int, config: Any, chat_template: str | None) -> None:
    """The HF tokenizer as llama.cpp's ``gpt2`` vocabulary: byte-level BPE tokens, their
    types and merges from ``tokenizer.json`` (the tokenizer of Llama 3, SmolLM2, Qwen2)."""
    from gguf import TokenType

    model_json = bpe_model(tokenizer)
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    specials = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if i in specials else TokenType.USER_DEFINED if i in added
                         else TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, key, None)
        if value is None:
            value = getattr(config, key, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < vocab_size:
            add(value)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if chat_template:
        writer.add_chat_template(chat_template)
