"""Tiny models built in code, loaded by tests as ``tests.tiny_models:<factory>``."""

from __future__ import annotations

import torch
from torch import nn


class TinyText(nn.Module):
    """Embedding → two linears → mean: the shape of a text encoder, 64-dim."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.fc2(torch.relu(self.fc1(h))).mean(dim=1)


def tiny_text():
    torch.manual_seed(0)
    return TinyText().eval(), (torch.randint(0, 256, (1, 16)),)


def tiny_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    return model, (torch.randn(1, 64),)


def wide_mlp():
    """Four 1024×1024 linears (16.8 MB at fp32): big enough that their weights stand out of
    a runtime's RSS noise."""
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval(), (torch.randn(1, 1024),)


def tiny_conv():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    return model, (torch.randn(1, 3, 32, 32),)


class DataDependent(nn.Module):
    """Branches on a tensor's value: torch.export cannot capture this."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def not_exportable():
    return DataDependent().eval(), (torch.randn(1, 8),)


def not_a_module():
    return "nope", (1,)


def save_tiny_bert(path, *, task: str = "sentence-embedding"):
    """A BERT with random weights from a small config, saved as a Hugging Face directory."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64)
    if task == "sequence-classification":
        cfg.num_labels = 3
        model = BertForSequenceClassification(cfg)
    else:
        model = BertModel(cfg)
    model.save_pretrained(path)
    return path


def save_tiny_vit(path):
    """A ViT image classifier with random weights, saved with its preprocessor config."""
    import json

    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=128, num_labels=5)
    ViTForImageClassification(cfg).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 32}}))
    return path


def save_tiny_llama(path):
    """A Llama-architecture causal LM with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def save_tiny_sentence_bert(path):
    """A tiny BERT sentence embedder laid out like sentence-transformers: WordPiece tokenizer,
    ``modules.json`` (with Normalize) and ``1_Pooling/config.json`` (mean pooling)."""
    import json
    import string

    from transformers import BertTokenizer

    save_tiny_bert(path)
    words = ["the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "on", "with", "as", "be", "by", "this"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits] + words
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64,
                                                                 "pooling_mode_mean_tokens": True}))
    return path


# Factories that misbehave, for the hostile-input suites.

def raises_error():
    raise ValueError("the factory failed to build its model")


def exits_zero():
    import sys

    sys.exit(0)


def interrupts():
    raise KeyboardInterrupt


def dict_inputs():
    model, _ = tiny_mlp()
    return model, ({"x": torch.randn(1, 64)},)


def float_ids():
    """An embedding model handed float inputs it cannot index with."""
    model, _ = tiny_text()
    return model, (torch.randn(1, 16),)


def nan_inputs():
    model, _ = tiny_mlp()
    return model, (torch.full((1, 64), float("nan")),)


def wrong_shape_inputs():
    model, _ = tiny_mlp()
    return model, (torch.randn(1, 7),)


# Set by the property tests: ``fuzz_factory`` returns (or raises) whatever it is given.
FUZZ_FACTORY = None


def fuzz_factory():
    return FUZZ_FACTORY()
