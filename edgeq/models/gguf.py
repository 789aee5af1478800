"""GGUF files as a model source: ``edgeq export model.gguf --target ...``.

A ``.gguf`` file, or a directory without ``config.json`` that holds exactly one, loads
through transformers' GGUF loader (``from_pretrained(dir, gguf_file=name)``, which needs
the ``gguf`` and ``accelerate`` packages) as a float32 causal LM: every tensor is
**dequantized**, so the reference edgeq measures fidelity against is the GGUF's
dequantized weights (a Q4_1 file's reference is Q4_1's values in float32), not the model
it was once quantized from. The manifest's ``source_kind`` is ``"gguf"``.

The file is untrusted: its header is read and checked first by ``edgeq.models.gguf_header``
(magic, version, bounded counts and lengths, every tensor's data inside the file), then
its architecture against the ones transformers can load as a causal LM, the sizes its
metadata declares against its tensors and this machine's memory; only then does
transformers parse it.

>>> loaded = load_gguf(Path("SmolLM2-135M-Instruct.Q4_1.gguf"), None, seq_len=128)  # doctest: +SKIP
>>> loaded.task, loaded.source_kind  # doctest: +SKIP
('causal-lm', 'gguf')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError

REFERENCE_NOTE = ("the reference model is the GGUF's weights dequantized to float32 by transformers' GGUF loader "
                  "(not the model the GGUF was quantized from)")
# GGUF architecture names transformers spells differently (its load_gguf_checkpoint).
_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
_NOT_CAUSAL = {"general", "tokenizer", "t5", "umt5", "t5encoder"}
# Metadata sizes ({arch}.<key>) and the most any real model uses, with headroom.
_SIZE_KEYS = {"block_count": 4096, "embedding_length": 1 << 17, "feed_forward_length": 1 << 20,
              "context_length": 1 << 24, "attention.head_count": 4096, "attention.head_count_kv": 4096,
              "vocab_size": 1 << 24, "attention.key_length": 1 << 14, "attention.value_length": 1 << 14}
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_FIX = "the GGUF metadata does not describe its tensors; re-download or re-convert the model"


def gguf_in_dir(model_dir: Path) -> Path | None:
    """The one ``.gguf`` file of a directory without ``config.json``; None when the
    directory is a regular Hugging Face one (or holds no GGUF)."""
    if (model_dir / "config.json").exists():
        return None
    found = sorted(p for p in model_dir.glob("*.gguf") if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise ModelLoadError(f"{model_dir} holds {len(found)} GGUF files ({names})", "pass the one to export as the model")
    return found[0] if found else None


def load_gguf(path: Path, task: str | None, *, seq_len: int) -> Any:
    """Check, dequantize and wrap the GGUF model at ``path`` as an ``edgeq.models.LoadedModel``."""
    from edgeq.models.gguf_header import read_gguf_header

    if task not in (None, "causal-lm"):
        raise ModelLoadError(f"a GGUF file holds a causal language model, not {task}", "drop --task or pass causal-lm")
    header = read_gguf_header(path)
    arch = check_architecture(header)
    check_metadata_sizes(header, arch)
    check_memory(header)
    model, config = _load_model(path, header)
    tokenizer = _load_tokenizer(path, header)
    return _loaded_model(path, header, model, config, tokenizer, seq_len)


def check_architecture(header: Any) -> str:
    """The GGUF's architecture, if transformers loads it as a causal LM; else ModelLoadError."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = header.architecture
    if arch is None:
        raise ModelLoadError(f"{header.path} has no general.architecture string", _FIX)
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_CAUSAL)
    if arch not in supported and _ALIASES.get(arch) not in supported:
        from edgeq.errors import did_you_mean

        raise ModelLoadError(f"{header.path}: GGUF architecture '{arch:.60}' cannot be loaded as a causal LM by "
                             f"transformers{did_you_mean(arch, supported)}",
                             f"architectures it loads: {', '.join(supported)}")
    return arch


def check_metadata_sizes(header: Any, arch: str) -> None:
    """Sizes in the metadata within bounds, and the declared block count the one the tensors have."""
    for key, most in _SIZE_KEYS.items():
        value = header.metadata.get(f"{arch}.{key}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
            raise ModelLoadError(f"{header.path}: GGUF metadata {arch}.{key} is {value!r:.40}, outside 1..{most}", _FIX)
    blocks = {int(m.group(1)) for t in header.tensors if (m := _BLOCK.match(t.name))}
    declared = header.metadata.get(f"{arch}.block_count")
    if declared is not None and blocks and declared != max(blocks) + 1:
        raise ModelLoadError(f"{header.path}: GGUF metadata declares {declared} blocks, its tensors hold "
                             f"{max(blocks) + 1}", _FIX)
    tokens = header.arrays.get("tokenizer.ggml.tokens")
    vocab = header.metadata.get(f"{arch}.vocab_size")
    if tokens and vocab and tokens[1] != vocab:
        raise ModelLoadError(f"{header.path}: the GGUF vocabulary has {tokens[1]} tokens, its metadata says {vocab}",
                             _FIX)


def check_memory(header: Any) -> None:
    """Refuse a GGUF whose float32 copy cannot fit in the memory available now."""
    available = _available_bytes()
    needed = 4 * header.numel
    if available is not None and needed > available:
        raise ModelLoadError(f"{header.path} dequantizes to {needed / 1e9:.1f} GB in float32; {available / 1e9:.1f} GB "
                             "of memory is available", "free memory or use a machine with more")


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _load_model(path: Path, header: Any) -> tuple[Any, dict[str, Any]]:
    import torch
    import transformers

    from edgeq.models import hf_checks

    try:
        config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        with torch.device("meta"):  # sizes only: nothing is allocated
            on_meta = transformers.AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in on_meta.parameters())
        del on_meta
        if params > header.numel * 5 // 4 + (1 << 20):
            raise ModelLoadError(f"{path}: its metadata describes a model of {params:,} parameters, its tensors hold "
                                 f"{header.numel:,}", _FIX)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, config=config, dtype=torch.float32, attn_implementation="eager",
            output_loading_info=True)  # config given: transformers parses the GGUF once more, not twice
    except ModelLoadError:
        raise
    except ImportError as exc:
        raise ModelLoadError(f"loading {path} needs a package that is missing ({str(exc).strip()[:160]})",
                             "pip install gguf accelerate") from None
    except Exception as exc:  # whatever transformers' GGUF reader or a model class raises: the file is unusable
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        if "accelerate" in text:
            raise ModelLoadError(f"loading {path} needs the accelerate package", "pip install accelerate") from None
        raise ModelLoadError(f"transformers cannot load {path} as a causal LM ({type(exc).__name__}: {first})",
                             _FIX) from None
    hf_checks.check_loading_info(path, "causal-lm", info)
    hf_checks.check_finite(path, model)
    model.config.use_cache = False
    saved = model.config.to_dict()
    saved.pop("quantization_config", None)  # the float32 copy is not GGUF-quantized
    return model.eval(), saved


def _load_tokenizer(path: Path, header: Any) -> Any:
    if "tokenizer.ggml.model" not in header.metadata:
        return None  # no vocabulary in the file: calibrate on random token ids, as for an HF dir without one
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer("probe", padding="max_length", truncation=True, max_length=8, return_tensors="pt")
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise ModelLoadError(f"the tokenizer in {path} cannot be used ({type(exc).__name__}: {first})", _FIX) from None
    return tokenizer


def _support_files(model: Any, config: dict[str, Any], tokenizer: Any) -> dict[str, Path]:
    """config.json, generation_config.json and the tokenizer files, written from the GGUF's
    metadata into a directory removed when the process ends: the artifact copies them."""
    import atexit
    import json
    import shutil
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="edgeq-gguf-"))
    atexit.register(shutil.rmtree, where, True)
    (where / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    model.generation_config.save_pretrained(where)
    if tokenizer is not None:
        tokenizer.save_pretrained(where)
    return {p.name: p for p in sorted(where.iterdir()) if p.is_file()}


def _loaded_model(path: Path, header: Any, model: Any, config: dict[str, Any], tokenizer: Any, seq_len: int) -> Any:
    from edgeq.models.hf import _encode, _probe, _text_inputs, _wrappers
    from edgeq.models import LoadedModel

    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and seq_len > positions:
        raise ModelLoadError(f"sequence length {seq_len} is more than the model's {positions} positions ({path})",
                             f"pass --seq-len {positions} or less")
    vocab = int(config.get("vocab_size") or 1)
    wrapper = _wrappers()[1](model).eval()
    make = _text_inputs(tokenizer, seq_len, vocab)
    example = make("calib", 1)[0]
    top = int(example[0].max())
    if top >= vocab:
        raise ModelLoadError(f"the tokenizer in {path} makes token id {top}, but the model's vocab_size is {vocab}", _FIX)
    _probe(wrapper, example, path, seq_len)
    types: dict[str, int] = {}
    for t in header.tensors:
        types[t.type_name] = types.get(t.type_name, 0) + 1
    return LoadedModel(
        name=path.name.removesuffix(".gguf"), task="causal-lm", module=wrapper, example_inputs=example,
        input_names=["input_ids", "attention_mask"], output_names=["logits"], source=str(path), source_kind="gguf",
        make_inputs=make,
        inputs_description=("sentences from Python standard-library docstrings" if tokenizer is not None
                            else "random token ids (the GGUF has no tokenizer)"),
        support_files=_support_files(model, config, tokenizer),
        config=config | {"seq_len": seq_len, "reference": REFERENCE_NOTE,
                         "gguf": {"version": header.version, "file_bytes": header.file_bytes,
                                  "tensor_types": dict(sorted(types.items()))}},
        encode_text=None if tokenizer is None else (lambda texts: [_encode(tokenizer, t, seq_len) for t in texts]),
    )
