"""Checks on a Hugging Face model directory before (and right after) transformers reads it.

A model directory is untrusted input. transformers trusts it: a wrong-typed config field,
a corrupt safetensors header or a pickled ``pytorch_model.bin`` surface as whatever
exception the library happens to raise, and a config that asks for a 4-billion-row
embedding is allocated before anything compares it with the weights. These checks read
only small, bounded things (JSON, safetensors headers, file sizes) and raise
``ModelLoadError`` naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError
from edgeq.jsonio import read_json

# Integer config fields and the most any real model uses, with headroom: past these a
# config is corrupt (and would ask transformers to allocate absurd tensors).
_INT_FIELDS = {
    "vocab_size": 1 << 24, "hidden_size": 1 << 17, "intermediate_size": 1 << 20, "num_hidden_layers": 4096,
    "num_attention_heads": 4096, "num_key_value_heads": 4096, "max_position_embeddings": 1 << 24,
    "n_positions": 1 << 24, "n_embd": 1 << 17, "n_layer": 4096, "n_head": 4096, "n_inner": 1 << 20,
    "num_channels": 64, "num_labels": 1 << 20, "type_vocab_size": 1 << 16, "head_dim": 1 << 14,
}
_SIZE_FIELDS = ("image_size", "patch_size")  # an int, or [height, width]
_FIX = "fix or re-download the model"
MAX_TOKENIZER_FILE_BYTES = 256 * 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` as a dict, with the fields edgeq and transformers size things by checked."""
    path = model_dir / "config.json"
    config = read_json(path, expect=dict, fix=_FIX)
    for key, most in _INT_FIELDS.items():
        if config.get(key) is not None:
            _check_int(path, key, config[key], most)
    for key in _SIZE_FIELDS:
        value = config.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            for v in value:
                _check_int(path, key, v, 1 << 14)
        elif value is not None:
            _check_int(path, key, value, 1 << 14)
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ModelLoadError(f"{path}: 'architectures' must be a list of class names, not {archs!r:.60}", _FIX)
    if config.get("model_type") is not None and not isinstance(config["model_type"], str):
        raise ModelLoadError(f"{path}: 'model_type' must be a string, not {config['model_type']!r:.60}", _FIX)
    return config


def _check_int(path: Path, key: str, value: Any, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelLoadError(f"{path}: '{key}' must be a whole number, not {value!r:.60}", _FIX)
    if not 0 < value <= most:
        raise ModelLoadError(f"{path}: '{key}' is {value}, outside 1..{most}", _FIX)


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest sequence the model's position table covers, if the config says."""
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def check_files(model_dir: Path) -> None:
    """Weights exist and their containers are sound; tokenizer files are of sane size."""
    weights = [p for p in sorted(model_dir.iterdir()) if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    if not weights:
        raise ModelLoadError(f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)",
                             "pass the directory that holds config.json and the weights")
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        data = read_json(index, expect=dict, fix=_FIX)
        if not isinstance(data.get("weight_map"), dict):
            raise ModelLoadError(f"{index} has no 'weight_map' object", _FIX)
    for f in weights:
        if f.suffix == ".safetensors":
            _check_safetensors(f)
    for name in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "tokenizer_config.json"):
        f = model_dir / name
        if f.is_file() and f.stat().st_size > MAX_TOKENIZER_FILE_BYTES:
            raise ModelLoadError(f"{f} is larger than {MAX_TOKENIZER_FILE_BYTES >> 20} MB, too large for a tokenizer file", _FIX)


def _check_safetensors(path: Path) -> None:
    """Opening a safetensors file reads and validates only its header (the data is mapped lazily)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # SafetensorError, OSError, HeaderTooLarge...: the file is not sound
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} is not a valid safetensors file ({detail})", _FIX) from None


def weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def check_size_matches_weights(model_dir: Path, module_on_meta: Any) -> None:
    """Refuse a config describing a model far bigger than its weight files before it is allocated.

    Loading in float32 can double a half-precision checkpoint and an untied head can add
    as much again; past 4x (plus 256 MB of slack for tiny models) config.json does not
    describe these weights.
    """
    needed = 4 * sum(p.numel() for p in module_on_meta.parameters())
    have = weight_bytes(model_dir)
    if needed > 4 * have + (256 << 20):
        raise ModelLoadError(
            f"{model_dir / 'config.json'} describes a model of {needed / 1e9:.1f} GB in float32, but the weight "
            f"files hold only {have / 1e6:.1f} MB", "config.json does not match the weights; fix or re-download the model")


def check_loading_info(model_dir: Path, task: str, info: dict[str, Any]) -> None:
    """Weights the checkpoint lacks would be left random: refuse, naming a few."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(k[0]) if isinstance(k, (tuple, list)) else str(k) for k in info.get("mismatched_keys") or []]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(
            f"{model_dir} has no weights for {', '.join(missing[:3])}{more} as {task}; they would be random",
            "check --task (a base model has no task head) or re-download the model")
    if mismatched:
        raise ModelLoadError(f"{model_dir}: weights of the wrong shape for {', '.join(mismatched[:3])}", _FIX)


def check_finite(model_dir: Path, module: Any) -> None:
    import torch

    for name, tensor in module.named_parameters():  # not buffers: some hold -inf masks by design
        # One float64 sum per tensor: NaN and infinity survive a sum, finite weights cannot overflow it.
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach().sum(dtype=torch.float64))):
            raise ModelLoadError(f"{model_dir}: weight {name} holds NaN or infinity", _FIX)
