"""Hugging Face models: detect the task, wrap the model so it takes and returns tensors.

Wrappers give every task a fixed, export-friendly signature:

- sentence-embedding: ``(input_ids, attention_mask) -> embedding`` with the pooling (and
  normalisation) from the sentence-transformers config, if present.
- sequence-classification: ``(input_ids, attention_mask) -> logits``.
- causal-lm (no KV cache): ``(input_ids, attention_mask) -> logits``.
- image-classification: ``(pixel_values) -> logits``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError
from edgeq.models import LoadedModel, synthetic_inputs

_SUPPORT_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
    "merges.txt", "vocab.json", "sentencepiece.bpe.model", "tokenizer.model",
    "preprocessor_config.json", "config.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "1_Pooling/config.json", "generation_config.json",
)


def detect_task(model_dir: Path, config: dict[str, Any]) -> str:
    """Guess the task from a model directory's files and ``config.json``."""
    if (model_dir / "modules.json").exists() or (model_dir / "config_sentence_transformers.json").exists():
        return "sentence-embedding"
    archs = config.get("architectures") or []
    for arch in archs:
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classification"
        if arch.endswith("ForImageClassification"):
            return "image-classification"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm"
    if archs and archs[0].endswith("Model"):
        return "sentence-embedding"  # a bare encoder: pool its hidden states
    raise ModelLoadError(
        f"cannot tell the task of {model_dir} (architectures: {archs or 'none'})",
        "pass --task sentence-embedding|sequence-classification|image-classification|causal-lm",
    )


def load_hf_dir(model_dir: Path, task: str | None, *, seq_len: int, trust_remote_code: bool) -> LoadedModel:
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise ModelLoadError(
            f"{model_dir} has no config.json, so it is not a Hugging Face model directory",
            "pass the directory that holds config.json and the weights",
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc})", "fix or re-download the model") from None
    task = task or detect_task(model_dir, config)
    return _build(str(model_dir), model_dir, task, config, seq_len, trust_remote_code, "hf-dir")


def load_hub(hub_id: str, task: str | None, *, seq_len: int, trust_remote_code: bool) -> LoadedModel:
    """Download ``hub_id`` through transformers; fails clearly when there is no network."""
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"]))
    except Exception as exc:  # offline, unknown repo, gated repo: all surface as hub errors
        name = type(exc).__name__
        offline = "offline" in str(exc).lower() or "connect" in str(exc).lower() or name in (
            "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError",
        )
        if offline:
            raise ModelLoadError(
                f"cannot download '{hub_id}' from the Hugging Face Hub: no network here",
                "download it on a machine with network access and pass the local directory",
            ) from None
        raise ModelLoadError(f"cannot fetch '{hub_id}' from the Hugging Face Hub ({name})", "check the model id") from None
    loaded = load_hf_dir(local, task, seq_len=seq_len, trust_remote_code=trust_remote_code)
    loaded.source, loaded.source_kind = hub_id, "hub"
    return loaded


# ------------------------------------------------------------------------- building


def _build(source: str, model_dir: Path, task: str, config: dict[str, Any], seq_len: int,
           trust_remote_code: bool, kind: str) -> LoadedModel:
    import torch

    module = _load_module(model_dir, task, trust_remote_code)
    Embedding, Logits, ImageLogits = _wrappers()  # defined lazily: they subclass torch.nn.Module
    support = {rel: model_dir / rel for rel in _SUPPORT_FILES if (model_dir / rel).exists()}
    name = _model_name(model_dir)
    if task == "image-classification":
        size = _image_size(model_dir, config)
        example = (torch.zeros(1, 3, size, size),)
        wrapper = ImageLogits(module).eval()
        return LoadedModel(
            name=name, task=task, module=wrapper, example_inputs=example, input_names=["pixel_values"],
            output_names=["logits"], source=source, source_kind=kind,
            make_inputs=lambda split, n: synthetic_inputs(example, split, n),
            inputs_description="synthetic images (no image data set ships offline)",
            support_files=support, config=config,
            encode_images=_image_encoder(model_dir, size) if (model_dir / "preprocessor_config.json").exists() else None,
        )
    tokenizer = _load_tokenizer(model_dir)
    vocab = int(config.get("vocab_size") or 1000)
    if task == "sentence-embedding":
        pooling, normalize = _pooling(model_dir)
        wrapper = Embedding(module, pooling, normalize).eval()
        outputs = ["sentence_embedding"]
    else:
        wrapper = Logits(module).eval()
        outputs = ["logits"]
    make = _text_inputs(tokenizer, seq_len, vocab)
    encode = None if tokenizer is None else (lambda texts: [_encode(tokenizer, t, seq_len) for t in texts])
    return LoadedModel(
        name=name, task=task, module=wrapper, example_inputs=make("calib", 1)[0],
        input_names=["input_ids", "attention_mask"], output_names=outputs, source=source, source_kind=kind,
        make_inputs=make,
        inputs_description=(
            "sentences from Python standard-library docstrings" if tokenizer is not None
            else "random token ids (the model has no tokenizer)"
        ),
        support_files=support, config=config | {"seq_len": seq_len}, encode_text=encode,
    )


def _model_name(model_dir: Path) -> str:
    """The model card's title when it is a plain name (``# all-MiniLM-L6-v2``), else the dir name."""
    import re

    card = model_dir / "README.md"
    if card.exists():
        for line in card.read_text(errors="replace").splitlines()[:200]:
            found = re.fullmatch(r"#\s+([\w.\-]{2,80})\s*", line)
            if found:
                return found.group(1)
    return model_dir.name


def _load_module(model_dir: Path, task: str, trust_remote_code: bool) -> Any:
    import transformers

    auto = {
        "sentence-embedding": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "image-classification": transformers.AutoModelForImageClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
    }.get(task)
    if auto is None:
        raise ModelLoadError(f"task '{task}' does not apply to a Hugging Face directory", "drop --task or pick another")
    try:
        model = auto.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, attn_implementation="eager", dtype="float32",
        )
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        hint = "pass --trust-remote-code if you trust this model's code" if "trust_remote_code" in str(exc) else "check the model directory and --task"
        raise ModelLoadError(f"transformers cannot load {model_dir} as {task}: {first}", hint) from None
    if task == "causal-lm":
        model.config.use_cache = False
    return model.eval()


def _load_tokenizer(model_dir: Path) -> Any:
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception:  # a broken tokenizer should not stop an export: fall back to ids
        return None


def _pooling(model_dir: Path) -> tuple[str, bool]:
    mode = "mean"
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                          ("pooling_mode_mean_tokens", "mean")):
            if data.get(key):
                mode = name
                break
    normalize = False
    modules = model_dir / "modules.json"
    if modules.exists():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    return mode, normalize


def _image_size(model_dir: Path, config: dict[str, Any]) -> int:
    size = config.get("image_size")
    pre = model_dir / "preprocessor_config.json"
    if pre.exists():
        data = json.loads(pre.read_text())
        s = data.get("crop_size") or data.get("size")
        if isinstance(s, dict):
            s = s.get("height") or s.get("shortest_edge")
        size = s or size
    return int(size or 224)


def _text_inputs(tokenizer: Any, seq_len: int, vocab: int):
    import torch

    from edgeq import textdata

    def make(split: str, n: int) -> list[tuple[Any, ...]]:
        if tokenizer is None:
            gen = torch.Generator().manual_seed(0 if split == "calib" else 1_000_003)
            return [
                (torch.randint(0, vocab, (1, seq_len), generator=gen), torch.ones(1, seq_len, dtype=torch.long))
                for _ in range(n)
            ]
        return [_encode(tokenizer, sentence, seq_len) for sentence in textdata.sentences(split, n)]

    return make


def _encode(tokenizer: Any, text: str, seq_len: int) -> tuple[Any, Any]:
    import torch

    enc = tokenizer(text, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return enc["input_ids"].to(torch.long), enc["attention_mask"].to(torch.long)


def _image_encoder(model_dir: Path, size: int):
    def encode(files: list[Path]) -> list[tuple[Any, ...]]:
        from PIL import Image, UnidentifiedImageError
        from transformers import AutoImageProcessor

        from edgeq.errors import ConfigError

        processor = AutoImageProcessor.from_pretrained(str(model_dir))
        out = []
        for f in files:
            try:
                image = Image.open(f).convert("RGB")
            except (OSError, UnidentifiedImageError) as exc:
                raise ConfigError(f"--calib {f} is not a readable image ({exc})", "remove or replace it") from None
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            if pixels.shape[-1] != size or pixels.shape[-2] != size:
                raise ConfigError(f"--calib: the image processor made {list(pixels.shape)} inputs, the model takes "
                                  f"{size}x{size}", "check preprocessor_config.json")
            out.append((pixels.float(),))
        return out

    return encode


def _wrappers():
    import torch

    class Embedding(torch.nn.Module):
        def __init__(self, model, pooling: str, normalize: bool):
            super().__init__()
            self.model, self.pooling, self.normalize = model, pooling, normalize

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            elif self.pooling == "max":
                pooled = hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, -1e9).max(dim=1).values
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            return pooled

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    class ImageLogits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    return Embedding, Logits, ImageLogits
