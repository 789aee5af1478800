"""Hugging Face models: detect the task, wrap the model so it takes and returns tensors.

Wrappers give every task a fixed, export-friendly signature:

- sentence-embedding: ``(input_ids, attention_mask) -> embedding`` with the pooling (and
  normalisation) from the sentence-transformers config, if present.
- sequence-classification: ``(input_ids, attention_mask) -> logits``.
- causal-lm (no KV cache): ``(input_ids, attention_mask) -> logits``.
- image-classification: ``(pixel_values) -> logits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.models import hf_checks
from edgeq.errors import ModelLoadError
from edgeq.jsonio import read_json
from edgeq.models import LoadedModel, synthetic_inputs

_FIX = "fix or re-download the model"

_SUPPORT_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
    "merges.txt", "vocab.json", "sentencepiece.bpe.model", "tokenizer.model",
    "preprocessor_config.json", "config.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "1_Pooling/config.json", "generation_config.json",
    "chat_template.jinja", "chat_template.json",
)


def detect_task(model_dir: Path, config: dict[str, Any]) -> str:
    """Guess the task from a model directory's files and ``config.json``."""
    if (model_dir / "modules.json").exists() or (model_dir / "config_sentence_transformers.json").exists():
        return "sentence-embedding"
    archs = config.get("architectures") or []  # a list of strings (checked by read_config)
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
    config = hf_checks.read_config(model_dir)
    hf_checks.check_files(model_dir)
    task = task or detect_task(model_dir, config)
    positions = hf_checks.max_positions(config)
    if task != "image-classification" and positions is not None and seq_len > positions:
        raise ModelLoadError(
            f"sequence length {seq_len} is more than the model's {positions} positions ({model_dir})",
            f"pass --seq-len {positions} or less; without --seq-len the target's seq_len is used")
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
        _probe(wrapper, example, model_dir, None)
        return LoadedModel(
            name=name, task=task, module=wrapper, example_inputs=example, input_names=["pixel_values"],
            output_names=["logits"], source=source, source_kind=kind,
            make_inputs=lambda split, n: synthetic_inputs(example, split, n),
            inputs_description="synthetic images (no image data set ships offline)",
            support_files=support, config=config,
            encode_images=_image_encoder(model_dir, size) if (model_dir / "preprocessor_config.json").exists() else None,
        )
    tokenizer = _load_tokenizer(model_dir)
    vocab = int(config.get("vocab_size") or 1000)  # checked a positive int by read_config
    if task == "sentence-embedding":
        pooling, normalize = _pooling(model_dir)
        wrapper = Embedding(module, pooling, normalize).eval()
        outputs = ["sentence_embedding"]
    else:
        wrapper = Logits(module).eval()
        outputs = ["logits"]
    make = _text_inputs(tokenizer, seq_len, vocab)
    encode = None if tokenizer is None else (lambda texts: [_encode(tokenizer, t, seq_len) for t in texts])
    example = make("calib", 1)[0]
    top = int(example[0].max())
    if top >= vocab:
        raise ModelLoadError(f"the tokenizer in {model_dir} makes token id {top}, but the model's vocab_size is {vocab}",
                             "the tokenizer files do not belong to these weights; fix or re-download the model")
    _probe(wrapper, example, model_dir, seq_len)
    return LoadedModel(
        name=name, task=task, module=wrapper, example_inputs=example,
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
    if card.is_file():
        with open(card, "rb") as f:
            head = f.read(64 * 1024).decode("utf-8", errors="replace")  # the title is near the top
        for line in head.splitlines()[:200]:
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
    # transformers raises whatever its code meets in a broken directory (OSError, ValueError,
    # TypeError, RuntimeError, SafetensorError, UnpicklingError...): every one of them means
    # "this directory cannot be loaded". KeyboardInterrupt is not an Exception and passes.
    try:
        import torch

        config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        with torch.device("meta"):  # sizes only: nothing is allocated
            on_meta = auto.from_config(config, trust_remote_code=trust_remote_code)
        hf_checks.check_size_matches_weights(model_dir, on_meta)
        del on_meta
        model, info = auto.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, attn_implementation="eager", dtype="float32",
            output_loading_info=True,
        )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _load_error(model_dir, task, exc) from None
    hf_checks.check_loading_info(model_dir, task, info)
    hf_checks.check_finite(model_dir, model)
    if task == "causal-lm":
        model.config.use_cache = False
    return model.eval()


def _load_error(model_dir: Path, task: str, exc: Exception) -> ModelLoadError:
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    if type(exc).__name__ == "UnpicklingError" or "weights_only" in text:
        return ModelLoadError(f"{model_dir}: the pickled weights (pytorch_model.bin) hold Python objects beyond "
                              "tensors, which edgeq does not unpickle", "use the model's model.safetensors instead")
    if "trust_remote_code" in text:
        return ModelLoadError(f"transformers cannot load {model_dir} as {task}: it needs the model's own code",
                              "pass --trust-remote-code if you trust this model's code")
    if isinstance(exc, MemoryError):
        first = "out of memory"
    return ModelLoadError(f"transformers cannot load {model_dir} as {task} ({type(exc).__name__}: {first})",
                          "check config.json, the weight files and --task; fix or re-download the model")


def _probe(wrapper: Any, example: tuple[Any, ...], model_dir: Path, seq_len: int | None) -> None:
    """Run the model once: a directory whose parts disagree fails here, not deep inside an export."""
    import torch

    try:
        with torch.no_grad():
            wrapper(*example)
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else ""
        at = f" at sequence length {seq_len}" if seq_len else ""
        hint = "try a smaller --seq-len, or fix or re-download the model" if seq_len else _FIX
        raise ModelLoadError(f"{model_dir} does not run{at} ({type(exc).__name__}: {first})", hint) from None


def _load_tokenizer(model_dir: Path) -> Any:
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    # A broken tokenizer is an error, not a reason to calibrate on random ids: the user would
    # get a plan measured on noise without knowing.
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked out either way
        tokenizer("probe", padding="max_length", truncation=True, max_length=8, return_tensors="pt")
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else ""
        raise ModelLoadError(f"the tokenizer files in {model_dir} cannot be used ({type(exc).__name__}: {first})",
                             "fix or re-download them, or remove every tokenizer file to calibrate on random "
                             "token ids") from None
    if isinstance(tokenizer, bool) or not callable(tokenizer):
        raise ModelLoadError(f"the tokenizer files in {model_dir} cannot be used", _FIX)
    return tokenizer


def _pooling(model_dir: Path) -> tuple[str, bool]:
    mode = "mean"
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.exists():
        data = read_json(cfg, expect=dict, max_bytes=1 << 20, fix=_FIX)
        for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                          ("pooling_mode_mean_tokens", "mean")):
            if data.get(key) is not None and not isinstance(data[key], bool):
                raise ModelLoadError(f"{cfg}: '{key}' must be true or false, not {data[key]!r:.60}", _FIX)
            if data.get(key):
                mode = name
                break
    normalize = False
    modules = model_dir / "modules.json"
    if modules.exists():
        entries = read_json(modules, expect=list, max_bytes=1 << 20, fix=_FIX)
        if not all(isinstance(m, dict) and isinstance(m.get("type", ""), str) for m in entries):
            raise ModelLoadError(f"{modules} must list objects with a string 'type'", _FIX)
        normalize = any("Normalize" in m.get("type", "") for m in entries)
    return mode, normalize


def _image_size(model_dir: Path, config: dict[str, Any]) -> int:
    size = config.get("image_size")
    if isinstance(size, list):  # [height, width], checked by read_config
        size = size[0]
    pre = model_dir / "preprocessor_config.json"
    if pre.exists():
        data = read_json(pre, expect=dict, max_bytes=1 << 20, fix=_FIX)
        s = data.get("crop_size") or data.get("size")
        if isinstance(s, dict):
            s = s.get("height") or s.get("shortest_edge")
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 8192):
            raise ModelLoadError(f"{pre}: the image size must be a whole number of pixels up to 8192, not {s!r:.60}", _FIX)
        size = s or size
    return int(size or 224)


def _text_inputs(tokenizer: Any, seq_len: int, vocab: int):
    import torch

    from edgeq.models import textdata

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
        from PIL import Image
        from transformers import AutoImageProcessor

        from edgeq.errors import ConfigError

        try:
            processor = AutoImageProcessor.from_pretrained(str(model_dir))
        except Exception as exc:
            raise ModelLoadError(f"{model_dir / 'preprocessor_config.json'} cannot be used ({type(exc).__name__}: "
                                 f"{str(exc).strip()[:160]})", _FIX) from None
        out = []
        for f in files:
            try:
                with Image.open(f) as opened:  # PIL refuses decompression bombs (DecompressionBombError)
                    image = opened.convert("RGB")
                pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, processor errors
                raise ConfigError(f"--calib {f} is not a readable image ({type(exc).__name__}: {str(exc)[:160]})",
                                  "remove or replace it") from None
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
