"""Rotation of a decoder's residual stream (``edgeq.algorithms.rotate``): the rotated model
computes the model's own logits, int8 rounding of a stream with an outlier channel loses
less after it, and a structure it does not commute with is refused with a reason."""

from __future__ import annotations

import pytest
import torch

from edgeq.algorithms.rotate import not_rotatable, rotated
from edgeq.llm.perplexity import next_token_kl
from tests import tiny_lms


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "phi3"])
def test_the_rotated_model_computes_the_models_logits(arch):
    model = tiny_lms.build(arch).eval()
    assert not_rotatable(model) == ""
    out, record = rotated(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(ids).logits, out(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    # the stream really is rotated: the table and every norm weight changed
    assert not torch.allclose(out.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert torch.equal(out.model.norm.weight, torch.ones_like(out.model.norm.weight))
    assert out.get_output_embeddings().weight is not out.get_input_embeddings().weight
    assert record["revision"] >= 1 and "seed" in record["matrix"]
    # the original is untouched
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)


def _int8_per_token(x):
    """Symmetric int8 rounding with one scale per row (a dynamic per-token activation)."""
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    return (x / scale).round().clamp(-127, 127) * scale


def test_int8_rounding_of_a_stream_with_an_outlier_channel_loses_less_after_rotation():
    model = tiny_lms.build("llama").eval()
    with torch.no_grad():  # one channel of the stream 40x the others (as real LLMs have)
        model.get_input_embeddings().weight[:, 3] *= 40
    out, _ = rotated(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    seen = {}

    def grab(key):
        return lambda mod, args: seen.__setitem__(key, args[0].detach())

    hooks = [model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(grab("plain")),
             out.model.layers[0].self_attn.q_proj.register_forward_pre_hook(grab("rotated"))]
    with torch.no_grad():
        model(ids), out(ids)
    for h in hooks:
        h.remove()
    errors = {}
    for key, m in (("plain", model), ("rotated", out)):
        w = m.model.layers[0].self_attn.q_proj.weight
        x = seen[key]
        ref = x @ w.T
        errors[key] = float((_int8_per_token(x) @ w.T - ref).norm() / ref.norm())
    assert errors["rotated"] < 0.5 * errors["plain"], errors


@pytest.mark.parametrize("arch", ["gemma", "gpt2"])
def test_a_decoder_the_rotation_does_not_commute_with_is_refused_with_a_reason(arch):
    model = tiny_lms.build(arch)
    why = not_rotatable(model)
    assert why and arch in why
    with pytest.raises(ValueError, match="cannot rotate"):
        rotated(model)



def _loaded(tmp_path, arch="llama", outlier=True):
    """A tiny decoder (its stream's channel 3 made 40x the others when ``outlier``, as real
    LLMs have), loaded as edgeq loads it."""
    from transformers import AutoModelForCausalLM

    from edgeq.models import load_model
    from edgeq.targets import load_target

    d = tiny_lms.save_tiny_lm(tmp_path / arch, arch)
    if outlier:
        model = AutoModelForCausalLM.from_pretrained(d)
        with torch.no_grad():
            model.get_input_embeddings().weight[:, 3] *= 40
        model.save_pretrained(d)
    return load_model(str(d), None, seq_len=load_target("x86-executorch").target.seq_len)


def _plan(model, scheme):
    from edgeq.planning.plan import QuantPlan
    from edgeq.schemes import parse

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Embedding)]
    return QuantPlan(schemes={n: parse(scheme, n) for n in names})


def test_an_export_rotates_where_the_stand_ins_lose_less_and_says_why_not_elsewhere(tmp_path):
    from edgeq.algorithms.rotate import PlanRotation
    from edgeq.backends import get_backend
    from edgeq.progress import Steps

    be = get_backend("executorch")
    loaded = _loaded(tmp_path)
    model = loaded.module.model  # the transformers model inside edgeq's wrapper
    steps = Steps(show=False)
    rotation = PlanRotation(loaded, model, be, steps, next_token_kl)
    base, record = rotation.apply(_plan(model, "int8"))
    # the outlier channel costs the unrotated stand-ins more, so the rotated model is lowered
    assert record["applied"] and base is not model and record["kl_rotated"] < record["kl_unrotated"]
    assert record["tokens"] > 0 and "docstring" in record["calibration"]
    ids = torch.arange(5, 25)[None]
    with torch.no_grad():
        got, want = base(ids).logits, model(ids).logits  # logits up to ~40 here: fp32 rounding of the products
        assert (got - want).abs().max() < 1e-5 * want.abs().max() * 100, (got - want).abs().max()
    # fp32: nothing to rotate for; a GPTQ layer's values were chosen for the unrotated weights
    assert rotation.apply(_plan(model, "fp32")) == (model, None)
    gptq = _plan(model, "int8")
    gptq.schemes["model.layers.0.mlp.up_proj"] = __import__("edgeq.schemes", fromlist=["parse"]).parse("int4-g32-gptq")
    assert rotation.apply(gptq) == (model, None)
    assert any("int4-g32-gptq" in n and "unrotated" in n for n in steps.notes), steps.notes
    gemma = _loaded(tmp_path, "gemma", outlier=False)
    g = gemma.module.model
    assert PlanRotation(gemma, g, be, steps, next_token_kl).apply(_plan(g, "int8")) == (g, None)
    assert any("no rotation of the residual stream: a gemma" in n for n in steps.notes), steps.notes


def test_plan_kl_swaps_stand_ins_in_and_puts_the_layers_back(tmp_path):
    """Its KL equals the one of a separately built copy with every quantized layer replaced
    by its stand-in, and the model (here also the reference) ends with its own layers."""
    import copy

    from edgeq.algorithms.rotate import plan_kl
    from edgeq.backends import get_backend

    be = get_backend("executorch")
    model = tiny_lms.build("llama", init=0.05)
    plan = _plan(model, "int4-g32").schemes
    layers = {n: m for n, m in model.named_modules()}
    rows = [(torch.arange(6, 40)[None],), (torch.arange(50, 90)[None],)]
    got = plan_kl(model, model, plan, be, rows, next_token_kl)
    assert {n: m for n, m in model.named_modules()} == layers  # the same module objects
    by_hand = copy.deepcopy(model)
    with be.lm_numerics():
        for fqn, scheme in plan.items():
            parent, _, child = fqn.rpartition(".")
            holder = by_hand.get_submodule(parent) if parent else by_hand
            setattr(holder, child, be.stand_in(getattr(holder, child), scheme))
        with torch.no_grad():
            want = sum(next_token_kl(model(r[0]).logits[0].numpy(), by_hand(r[0]).logits[0].numpy())
                       for r in rows) / len(rows)
    assert got > 0 and abs(got - want) <= 1e-6 * want, (got, want)


def test_a_weight_rotated_a_block_of_rows_at_a_time_is_the_whole_product(monkeypatch):
    """Big tables are rotated a block of rows at a time (float64 temporaries): with blocks
    smaller than the vocabulary, the rotated model still computes the model's logits."""
    import edgeq.algorithms.rotate as rotate

    model = tiny_lms.build("llama").eval()
    monkeypatch.setattr(rotate, "ROWS", 37)  # 256 rows: 7 blocks, the last one short
    out, _ = rotated(model)
    q = rotate.orthogonal(model.config.hidden_size)
    want = (model.get_input_embeddings().weight.detach().double() @ q).float()
    assert torch.allclose(out.get_input_embeddings().weight, want, atol=1e-6)
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(out(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
