"""Tiny causal LMs with random weights and a word-level tokenizer, built in code (no downloads).

``save_tiny_lm(path, arch)`` writes a Hugging Face directory: config + safetensors, a
``tokenizer.json`` (``tokenizers`` WordLevel over a small English vocabulary, lower-cased,
split on whitespace and punctuation), a chat template, and ``generation_config.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = (
    "the of and to a in is it that for on with as be by this are or an if not at from which can "
    "return returns value values object objects function string list file name data set default "
    "true false none number type new call used use when all one two first last each any this these "
    "python module class method error what capital france paris city is was will may must should "
    "given if then else new line text bytes path time read write open close , . ? ! ( ) : ; ' -"
).split()
VOCAB = SPECIALS + sorted(set(WORDS) - set(SPECIALS))
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} <|end|> "
                 "{% else %}<|assistant|> {{ m['content'] }} <|end|> {% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
ARCHS = ("llama", "qwen2", "gpt2", "gemma", "phi3")


def tokenizer(chat_template: bool = True):
    """A ``PreTrainedTokenizerFast`` over ``VOCAB`` (word level)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=SPECIALS[3:])
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def config(arch: str, *, vocab: int = 256, positions: int = 128, tied: bool = True, init: float = 0.4,
           hidden: int = 64, intermediate: int = 128):
    """A small config of ``arch`` (2 layers, hidden 64, grouped-query attention where the
    architecture has it). Weights are drawn wider than transformers' default (``init``,
    the normal's std) so that greedy continuations vary instead of repeating one token;
    such a model is chaotic, so quantization tests draw narrower ones."""
    import transformers as t

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=tied, initializer_range=init)
    if arch == "llama":
        return t.LlamaConfig(**common)
    if arch == "qwen2":
        return t.Qwen2Config(**common)
    if arch == "gemma":
        return t.GemmaConfig(**common, head_dim=16)
    if arch == "phi3":
        return t.Phi3Config(**common)
    if arch == "qwen3":
        return t.Qwen3Config(**common, head_dim=16)
    if arch == "gemma3":  # a sliding-window layer (8 positions) then a full-attention one
        # untied: with its embedding scaled by sqrt(hidden), a tied random Gemma 3 only
        # repeats the token it was given
        return t.Gemma3TextConfig(**{**common, "tie_word_embeddings": False}, head_dim=16, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention"])
    if arch == "mistral":  # every layer sees 8 positions
        return t.MistralConfig(**common, sliding_window=8)
    if arch == "gemma2":  # soft-capped attention logits
        return t.Gemma2Config(**common, head_dim=16)
    if arch == "gpt2":
        return t.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=positions,
                            bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied, initializer_range=init)
    raise ValueError(f"unknown architecture {arch}")


def build(arch: str, **kwargs):
    """The model, in eval mode, seeded."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config(arch, **kwargs)).eval()


def save_tiny_lm(path: Path, arch: str = "llama", *, chat_template: bool = True, with_tokenizer: bool = True,
                 **kwargs) -> Path:
    """A Hugging Face causal-LM directory with a tokenizer and (optionally) a chat template."""
    path = Path(path)
    model = build(arch, **kwargs)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    if with_tokenizer:
        tokenizer(chat_template).save_pretrained(path)
    return path


def bpe_tokenizer(chat_template: bool = True):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (the kind Llama 3, SmolLM2 and Qwen2 ship,
    and the kind GGUF's ``gpt2`` vocabulary holds), trained in code on ``WORDS``: 256 byte
    tokens, the specials, and merges up to 300 tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=SPECIALS[3:])
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_bpe_lm(path: Path, arch: str = "llama", **kwargs) -> Path:
    """``save_tiny_lm`` with the byte-level BPE tokenizer (vocabulary 320: the tokenizer's 300
    tokens and 20 the model has beyond them, as real models pad theirs)."""
    path = Path(path)
    model = build(arch, vocab=320, **kwargs)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    bpe_tokenizer().save_pretrained(path)
    return path
