"""The LLM cost model against what transformers really allocates and holds."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from edgeq.errors import ConfigError
from edgeq.llm.costs import (
    LLAMA_3_2_1B, SMOLLM2_135M, LMShape, decode_estimate, kv_cache_bytes, prefill_arena_bytes, weight_bytes,
)
from edgeq.targets import builtin_names, load_profile

_TINY = dict(hidden_size=64, intermediate_size=96, vocab_size=128)


def _configs() -> dict[str, object]:
    return {
        "llama": T.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, **_TINY),
        "qwen2-gqa": T.Qwen2Config(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, **_TINY),
        # head_dim 48 is not hidden / heads (16): the override must win
        "gemma-head-dim": T.GemmaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                        head_dim=48, **_TINY),
        "gpt2": T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                             bos_token_id=0, eos_token_id=0),
        # sliding layers keep only sliding_window positions
        "gemma3-sliding": T.Gemma3TextConfig(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                             head_dim=32, sliding_window=8, sliding_window_pattern=2, **_TINY),
    }


@pytest.mark.parametrize("name", list(_configs()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kv_cache_bytes_equal_the_static_cache_transformers_allocates(name: str, dtype: torch.dtype) -> None:
    config = _configs()[name]
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval().to(dtype)
    cache = T.StaticCache(config=model.config, max_cache_len=32)
    with torch.no_grad():  # the cache's tensors are allocated on the first forward
        model(input_ids=torch.tensor([[1, 2, 3]]), past_key_values=cache, use_cache=True)
    allocated = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    predicted = kv_cache_bytes(LMShape.from_config(model.config), 32, str(dtype).removeprefix("torch."))
    assert predicted == allocated


@pytest.mark.parametrize("name", ["llama", "qwen2-gqa", "gemma-head-dim", "gpt2"])
def test_fp32_weight_bytes_equal_the_models_own_tensors(name: str) -> None:
    model = T.AutoModelForCausalLM.from_config(_configs()[name])
    gpt2_conv1d = T.pytorch_utils.Conv1D
    linear = sum(m.weight.nbytes for m in model.modules() if isinstance(m, (torch.nn.Linear, gpt2_conv1d)))
    embedding = model.get_input_embeddings().weight.nbytes
    got = weight_bytes(LMShape.from_config(model.config), "fp32", embedding_scheme="fp32")
    assert got["linears"] + got["lm_head"] == linear  # the tied head counted once, as the model's lm_head
    assert got["embedding"] == embedding


def test_llama_3_2_1b_kv_cache_by_hand() -> None:
    # 16 layers x (K, V) x 8 kv heads x 64 dims x 2048 positions x 2 bytes = 64 MiB
    assert kv_cache_bytes(LMShape.from_config(LLAMA_3_2_1B), 2048, "float16") == 16 * 2 * 8 * 64 * 2048 * 2


def test_prefill_arena_grows_with_the_prompt_quadratically_in_attention() -> None:
    shape = LMShape.from_config(SMOLLM2_135M)
    small, large = prefill_arena_bytes(shape, 128), prefill_arena_bytes(shape, 1024)
    assert large > 8 * small  # the T x T score matrices dominate at long prompts
    assert prefill_arena_bytes(shape, 128, all_logits=True) - small == 127 * shape.vocab * 4


def test_decode_estimate_orders_schemes_contexts_and_devices() -> None:
    shape = LMShape.from_config(LLAMA_3_2_1B)
    rpi5, gen3 = load_profile("rpi5"), load_profile("snapdragon-8-gen3")
    int4 = decode_estimate(shape, gen3, position=512)
    fp32 = decode_estimate(shape, gen3, position=512, linear_scheme="fp32", compute_dtype="fp32")
    long = decode_estimate(shape, gen3, position=8192)
    assert fp32.bytes_per_token > 6 * int4.bytes_per_token and fp32.tokens_per_s < int4.tokens_per_s
    assert long.tokens_per_s < int4.tokens_per_s
    assert decode_estimate(shape, rpi5, position=512).tokens_per_s < int4.tokens_per_s
    assert int4.bound == "memory"  # batch-1 decode streams the weights
    for name in builtin_names("profiles"):
        assert decode_estimate(shape, load_profile(name), position=512).tokens_per_s > 0


def test_unknown_kv_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="KV-cache dtype"):
        kv_cache_bytes(LMShape.from_config(SMOLLM2_135M), 16, "float8")
