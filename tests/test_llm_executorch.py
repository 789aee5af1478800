"""Decoder LLMs on ExecuTorch: KV-cache .pte vs eager transformers, 8da4w, and the refusals.

Tiny random-weight models built in code (tests/tiny_lms.py). The reference is transformers'
own ``generate`` (dynamic cache, eager attention): an independent path from the exported
static-cache program.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeq.backends.executorch.llm import lower_lm, open_lm
from edgeq.backends.executorch.llm_quant import LMQuant
from edgeq.errors import ConfigError, RunError
from edgeq.llm.generate import GenerationConfig, generate
from edgeq.planning.plan import QuantPlan
from edgeq.progress import Steps
from edgeq.schemes import INT4, INT8, parse
from tests import tiny_lms

PROMPTS = ([5, 17, 33, 2 + 40, 9], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17])
CONTEXT = 48
QUANT_INIT = 0.05  # a calmer random model for quantization error (see tiny_lms.config)


def hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def lowered(tmp_path, model, plan=None):
    result = lower_lm(model, plan, tmp_path, CONTEXT, Steps(show=False))
    return result, open_lm(result.model_file)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2",
                                  pytest.param("qwen2", marks=pytest.mark.slow),
                                  pytest.param("gemma", marks=pytest.mark.slow),
                                  pytest.param("phi3", marks=pytest.mark.slow),
                                  pytest.param("mistral", marks=pytest.mark.slow),
                                  pytest.param("qwen3", marks=pytest.mark.slow)])
def test_fp32_greedy_tokens_identical_to_transformers_generate(tmp_path, arch):
    """gemma3 and mistral have 8-position sliding windows: the prompts and 20 new tokens run
    past them, so the windowed layers' masks are checked too."""
    model = tiny_lms.build(arch)
    result, session = lowered(tmp_path, model)
    assert result.max_context == CONTEXT and result.delegates_used == ["xnnpack"]
    # attention in ExecuTorch's LLM kernels: the cache written in place, attended as filled
    layers = model.config.get_text_config().num_hidden_layers
    ops = result.delegation["portable_ops"]
    assert ops.get("llama.custom_sdpa") == layers and ops.get("llama.update_cache") == 2 * layers, ops
    assert session.max_context == CONTEXT and session.vocab_size == model.config.vocab_size
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert result.kv_cache_bytes == 2 * cfg.num_hidden_layers * heads * CONTEXT * head_dim * 4  # K and V, fp32
    for prompt in PROMPTS:
        n = 20
        expected = hf_greedy(model, prompt, n)
        got = generate(session, prompt, GenerationConfig(max_new_tokens=n)).tokens  # no EOS: n tokens
        assert got == expected, arch
        assert len(set(expected)) > 2  # the model is not stuck on one token: the comparison has power
    # prefill after a conversation starts a new one (the cache is overwritten, not appended to)
    again = generate(session, PROMPTS[0], GenerationConfig(max_new_tokens=5)).tokens
    assert again == hf_greedy(model, PROMPTS[0], 5)
    # all_logits: one row per prompt position, equal to transformers' logits
    with torch.no_grad():
        ref = model(torch.tensor([PROMPTS[1]])).logits[0].numpy()
    rows = session.prefill(PROMPTS[1], all_logits=True)
    # fp32 rounding only (XNNPACK's accumulation order): Gemma's logits reach ~10, so relative
    assert rows.shape == ref.shape and np.abs(rows - ref).max() < 1e-3 + 5e-4 * np.abs(ref).max()
    session.close()


def test_soft_capped_attention_is_refused(tmp_path):
    from edgeq.errors import ExportError

    with pytest.raises(ExportError, match="soft-capped attention logits") as info:
        lowered(tmp_path, tiny_lms.build("gemma2"))
    assert "ONNX" in info.value.hint


def test_context_is_enforced(tmp_path):
    model = tiny_lms.build("llama")
    _, session = lowered(tmp_path, model)
    with pytest.raises(RunError, match="context"):
        session.prefill(list(range(3, 3 + CONTEXT + 1)))
    session.prefill(list(range(3, 3 + CONTEXT - 1)))
    session.decode(5)  # position CONTEXT - 1: the last one
    with pytest.raises(RunError, match="exceed"):
        session.decode(5)
    result = generate(session, list(range(3, 3 + CONTEXT - 4)), GenerationConfig(max_new_tokens=50))
    assert len(result.tokens) == 4 and result.stopped_by == "context"


def test_8da4w_is_close_to_fp32_and_faithful_to_its_quantized_weights(tmp_path):
    """int4-g32 linears with int8 dynamic activations, int8 embedding, int8 head: the .pte vs
    the fp32 model (quantization error) and vs torchao's eager quantized model (the runtime's
    own error, which dropped scales would blow up)."""
    from edgeq.backends.executorch.quant import quantized_module

    model = tiny_lms.build("llama", tied=False, init=QUANT_INIT)
    schemes = {n: INT4[32] for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    schemes.update({"model.embed_tokens": INT8, "lm_head": INT8})
    result, session = lowered(tmp_path, model, QuantPlan(schemes=schemes))
    assert result.layer_schemes["lm_head"] == "int8" and result.layer_schemes["model.layers.0.mlp.up_proj"] == "int4-g32"
    # what the manifest records: both integer schemes compute with int8 dynamic activations
    assert result.linear_compute == {"int4-g32": "int8 dynamic activations", "int8": "int8 dynamic activations"}
    ops = result.delegation["portable_ops"]
    assert any("embedding_byte" in op for op in ops), ops  # the quantized table, not an fp32 copy
    eager_q = quantized_module(model, schemes, "xnnpack")
    seq = list(range(3, 40))
    got = session.prefill(seq, all_logits=True)
    with torch.no_grad():
        fp32 = model(torch.tensor([seq])).logits[0].numpy()
        quant = eager_q(torch.tensor([seq])).logits[0].numpy()

    def kl(p_logits, q_logits):
        lp = p_logits - np.log(np.exp(p_logits - p_logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - p_logits.max(-1, keepdims=True)
        lq = q_logits - np.log(np.exp(q_logits - q_logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - q_logits.max(-1, keepdims=True)
        return float((np.exp(lp) * (lp - lq)).sum(-1).mean())

    # eager 8da4w vs fp32 on this model: top-1 0.73, KL 0.0018 (measured with torchao alone)
    assert (got.argmax(-1) == quant.argmax(-1)).mean() >= 0.9
    assert kl(quant, got) < 0.005
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.6
    assert kl(fp32, got) < 0.01
    session.close()


def test_4bit_embedding_and_tied_head_choice(tmp_path):
    """A tied head quantized apart from its embedding gets its own copy, and says so."""
    from edgeq.backends.executorch.quant import quantized_module

    model = tiny_lms.build("llama", tied=True, init=QUANT_INIT)
    schemes = {"model.embed_tokens": INT4[32], "lm_head": INT8}
    result, session = lowered(tmp_path, model, QuantPlan(schemes=schemes))
    assert result.delegation["head"] == {"fqn": "lm_head", "tied": True, "scheme": "int8", "storage": "own copy"}
    assert any("embedding_4bit" in op for op in result.delegation["portable_ops"])
    seq = list(range(3, 30))
    with torch.no_grad():
        fp32 = model(torch.tensor([seq])).logits[0].numpy()
        quant = quantized_module(model, schemes, "xnnpack")(torch.tensor([seq])).logits[0].numpy()
    got = session.prefill(seq, all_logits=True)
    assert (got.argmax(-1) == quant.argmax(-1)).mean() >= 0.9  # the runtime computes what torchao stored
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.7  # eager: 0.95 on this model
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the caller's model is untouched
    session.close()


# ------------------------------------------------------------------------- refusals (no lowering)


def test_weight_only_int_linears_are_refused(tmp_path):
    model = tiny_lms.build("llama")
    for scheme in (INT8, INT4[32]):
        quant = LMQuant(schemes={"model.layers.0.mlp.up_proj": scheme}, weight_only_linears=True)
        with pytest.raises(ConfigError, match="weight-only int linears .* wrong numbers on XNNPACK"):
            lower_lm(model, quant, tmp_path, CONTEXT, Steps(show=False))
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_bf16_with_8da4w_is_refused(tmp_path):
    model = tiny_lms.build("llama")
    quant = LMQuant(schemes={"model.layers.0.mlp.up_proj": INT4[32]}, dtype="bfloat16")
    with pytest.raises(ConfigError, match="bf16 weights with 8da4w .* crashes at run time"):
        lower_lm(model, quant, tmp_path, CONTEXT, Steps(show=False))
    assert next(model.parameters()).dtype == torch.float32
    assert not list(tmp_path.iterdir())


def test_plan_naming_a_missing_layer_is_refused(tmp_path):
    model = tiny_lms.build("llama")
    with pytest.raises(ConfigError, match="does not have"):
        lower_lm(model, {"model.layers.9.mlp.up_proj": parse("int8")}, tmp_path, CONTEXT, Steps(show=False))


def test_quantize_lm_in_place_quantizes_the_given_copy_and_otherwise_copies():
    from edgeq.backends.executorch.llm_quant import quantize_lm

    model = tiny_lms.build("llama", init=QUANT_INIT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quant = LMQuant(schemes={"model.layers.0.mlp.up_proj": INT8})
    copied, _ = quantize_lm(model, quant)
    assert copied is not model and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    same, _ = quantize_lm(model, quant, in_place=True)
    assert same is model
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"  # torchao's int8
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, before["model.layers.0.mlp.down_proj.weight"])


@pytest.mark.parametrize("algorithms", [["rtn", "awq", "smoothquant"], ["rtn", "rotation"], None])
def test_export_quantizes_only_its_own_copy_in_place(tmp_path, monkeypatch, algorithms):
    """The rotated or smoothed copy is the lowering's alone (scaled and quantized in place, no
    further copy of the model); the loaded model, the reference of verification and
    perplexity, stays fp32."""
    import edgeq.backends.executorch as et
    import edgeq.models as models
    from edgeq.export import export

    loaded_models, calls = [], []
    real_load, real_lower = models.load_model, et.lower_lm

    def load(*args, **kwargs):
        loaded_models.append(real_load(*args, **kwargs))
        return loaded_models[-1]

    def lower(model, *args, **kwargs):
        calls.append((model, kwargs.get("owned", False)))
        return real_lower(model, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", load)
    monkeypatch.setattr(et, "lower_lm", lower)
    lm = tiny_lms.save_tiny_lm(tmp_path / "llama", "llama", init=QUANT_INIT)
    art = export(str(lm), "x86-executorch", precision="int8", output=tmp_path / "a", samples=4, max_context=CONTEXT,
                 algorithms=algorithms)
    made = bool(art.manifest.llm.smoothing and art.manifest.llm.smoothing["folds"])
    rotated = bool(art.manifest.llm.rotation and art.manifest.llm.rotation["applied"])
    assert made or rotated  # a copy was made (the test is void otherwise)
    (model, owned), = calls
    reference = loaded_models[0].module
    assert owned and model is not reference and not any(model is m for m in reference.modules())
    fresh = tiny_lms.build("llama", init=QUANT_INIT)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in reference.state_dict().items() if k in
               fresh.state_dict())


@pytest.mark.parametrize("chosen", [True, False])
def test_at_lowering_only_the_reference_and_the_lowered_copy_are_alive(tmp_path, monkeypatch, chosen):
    """One plan: whether rotation is chosen or not, no copy of the model outlives its use (the
    rotated copy when not chosen, the measurements' stand-ins): at the lowering, the live
    models are the fp32 reference and the copy lowered."""
    import gc
    import weakref

    import edgeq.algorithms.rotate as rotate
    import edgeq.backends.executorch as et
    from edgeq.export import export
    from transformers import LlamaForCausalLM

    def plan_kl(model, reference, *args):  # rotation wins (or loses) by its measure alone
        return 0.0 if (model is reference) != chosen else 1.0

    alive, real_lower = [], et.lower_lm
    gc.collect()
    earlier = weakref.WeakSet(m for m in gc.get_objects() if isinstance(m, LlamaForCausalLM))  # other tests'

    def lower(model, *args, **kwargs):
        gc.collect()
        alive.append([m for m in gc.get_objects() if isinstance(m, LlamaForCausalLM) and m not in earlier])
        return real_lower(model, *args, **kwargs)

    monkeypatch.setattr(rotate, "plan_kl", plan_kl)
    monkeypatch.setattr(et, "lower_lm", lower)
    lm = tiny_lms.save_tiny_lm(tmp_path / "llama", "llama", init=QUANT_INIT)
    art = export(str(lm), "x86-executorch", precision="int8", output=tmp_path / "a", samples=4, max_context=CONTEXT)
    assert art.manifest.llm.rotation["applied"] is chosen
    assert chosen or art.manifest.llm.smoothing["folds"]  # not chosen: the scaled copy is lowered
    models, = alive
    assert len(models) == 2, [id(m) for m in models]
