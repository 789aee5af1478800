"""Activation-aware scaling (``edgeq.algorithms.smooth``: SmoothQuant's and AWQ's scales): the
folds leave the model's function unchanged (fp32 logits against the unscaled model), and
where an input has an outlier channel, a made fold lowers the quantized layer's error on
inputs the search never saw (measured against fp32 through ExecuTorch's 8da8w and ONNX
Runtime's int4 stand-ins)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests import tiny_lms


def _model(arch: str, outlier: float = 1.0):
    torch.manual_seed(0)
    model = tiny_lms.build(arch, init=0.05).eval()
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data = 1 + 0.2 * torch.randn_like(p)
            if outlier != 1.0:
                p.data[..., 3] *= outlier  # channel 3 of every normed input: an outlier
    return model


def _rows(seed: int, n: int = 6, length: int = 24):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(6, 256, (1, length), generator=g),) for _ in range(n)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: biased q/k/v; both grouped-query attention
def test_folds_compute_the_models_own_logits(arch):
    from edgeq.algorithms.smooth import folds, smoothed, statistics

    model = _model(arch)
    made_folds, skipped = folds(model)
    assert not skipped
    # per layer: input norm → q/k/v, post-attention norm → gate/up, up → down, v → o; the final norm → head
    assert sorted(f.kind for f in made_folds) == ["norm"] * 5 + ["rows"] * 2 + ["value"] * 2
    linears = sorted({f for fold in made_folds for f in fold.linears})
    stats = statistics(model, linears, _rows(1))
    # SmoothQuant's scale at 0.5 for every fold but the value ones, AWQ's there
    out, made, skipped = smoothed(model, stats, lambda f: "", lambda fold: ("awq", 0.5) if fold.kind == "value" else 0.5)
    assert len(made) == 9 and not skipped
    assert sorted(v["method"] for v in made.values()) == ["awq"] * 2 + ["smoothquant"] * 7
    assert max(v["scale_range"][1] for v in made.values()) > 1.5  # the weights really changed
    ids = _rows(2, 1)[0][0]
    with torch.no_grad():
        want, got = model(ids).logits, out(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the head took its own scaled copy; the table (and the source model) are untouched
    assert out.lm_head.weight is not out.model.embed_tokens.weight
    torch.testing.assert_close(out.model.embed_tokens.weight, model.model.embed_tokens.weight, rtol=0, atol=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert out.config.tie_word_embeddings is False and model.config.tie_word_embeddings is True
    # in place: the same weights in the module itself (every scale taken from the unscaled weights)
    mine = copy.deepcopy(model)
    same, made_here, _ = smoothed(mine, stats, lambda f: "", lambda fold: ("awq", 0.5) if fold.kind == "value" else 0.5,
                                  in_place=True)
    assert same is mine and made_here == made
    want = out.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in mine.state_dict().items())


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_gemma_norms_fold_into_one_plus_weight(arch):
    """Gemma's RMSNorms compute ``(1 + weight) * normalized(x)``, and Gemma 2 / 3 feed the MLP
    from ``pre_feedforward_layernorm`` (``post_attention_layernorm`` normalizes the attention's
    output): every fold is made there and the logits stay the model's."""
    from edgeq.algorithms.smooth import folds, smoothed, statistics

    model = _model(arch)
    made_folds, skipped = folds(model)
    assert not skipped
    sources = sorted(f.source for f in made_folds if f.kind == "norm")
    mlp_in = "post_attention_layernorm" if arch == "gemma" else "pre_feedforward_layernorm"
    assert sources == sorted(["model.norm"] + [f"model.layers.{i}.{n}" for i in range(2)
                                               for n in ("input_layernorm", mlp_in)])
    linears = sorted({f for fold in made_folds for f in fold.linears})
    stats = statistics(model, linears, _rows(1))
    out, made, skipped = smoothed(model, stats, lambda f: "", lambda fold: 0.5)
    assert len(made) == 9 and not skipped
    assert max(v["scale_range"][1] for v in made.values()) > 1.5  # the weights really changed
    ids = _rows(2, 1)[0][0]
    with torch.no_grad():
        want, got = model(ids).logits, out(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ExecuTorch's 8da8w: the int8 activations' outlier channel (SmoothQuant's case); ONNX
# Runtime's int4 blocks of 32: a salient input channel whose weights 4-bit rounds (AWQ's case).
@pytest.mark.parametrize("fmt,scheme,methods,outlier,gain", [
    ("executorch", "int8", ("smoothquant", "awq"), 40.0, 0.5),
    ("onnx", "int4-g32", ("awq",), 20.0, 0.6),
])
def test_a_fold_lowers_the_quantized_error_of_an_outlier_input_on_unseen_rows(fmt, scheme, methods, outlier, gain):
    from edgeq.algorithms.scale_search import choose_scale
    from edgeq.algorithms.smooth import folds, smoothed, statistics
    from edgeq.backends import get_backend
    from edgeq.schemes import parse

    be = get_backend(fmt)
    model = _model("llama", outlier=outlier)
    fold = next(f for f in folds(model)[0] if f.source == "model.layers.0.input_layernorm")
    stats = statistics(model, list(fold.linears), _rows(1))

    def quantize(linear, fqn):
        with be.lm_numerics():
            return be.stand_in(linear, parse(scheme))

    modules = dict(model.named_modules())
    alpha = choose_scale(fold, stats, modules, quantize, model, methods)
    assert alpha is not None and alpha[0] in methods
    out, made, _ = smoothed(model, stats, lambda f: "" if f in fold.linears else "not this test's",
                            lambda f: alpha)
    assert list(made) == [fold.source]

    # unseen rows: q/k/v outputs of the quantized layers against fp32, before and after the fold
    def errors(m):
        inputs = []
        hook = dict(m.named_modules())[fold.linears[0]].register_forward_pre_hook(
            lambda _m, args: inputs.append(args[0].detach().flatten(0, -2)))
        with torch.no_grad():
            for row in _rows(7):
                m(*row)
        hook.remove()
        x = torch.cat(inputs)
        total = 0.0
        for f in fold.linears:
            lin = dict(m.named_modules())[f]
            with torch.no_grad():
                ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
                total += float((quantize(copy.deepcopy(lin), f)(x) - ref).pow(2).sum() / ref.pow(2).sum())
        return total

    before, after = errors(model), errors(out)
    assert after < gain * before, (before, after)


def test_layers_a_plan_does_not_round_are_left_alone():
    from edgeq.algorithms.smooth import folds, smoothed, statistics

    model = _model("llama")
    made_folds, _ = folds(model)
    stats = statistics(model, sorted({f for x in made_folds for f in x.linears}), _rows(1))
    gptq = "model.layers.1.mlp.down_proj"
    out, made, skipped = smoothed(model, stats, lambda f: "calibrated" if f == gptq else "", lambda fold: 0.5)
    assert "model.layers.1.mlp.up_proj" in skipped and "calibrated" in skipped["model.layers.1.mlp.up_proj"]
    assert "model.layers.0.mlp.up_proj" in made
    torch.testing.assert_close(dict(out.named_modules())[gptq].weight, dict(model.named_modules())[gptq].weight)
    # nothing wanted: the model itself, no copy
    same, made, _ = smoothed(model, stats, lambda f: "fp32", lambda fold: 0.5)
    assert same is model and not made


def test_a_calibrated_linear_is_never_the_source_a_fold_divides(tmp_path, monkeypatch):
    """up_proj at GPTQ keeps the values GPTQ computed for its unscaled weights, so the
    up → down fold is not made (dividing its output rows would be lost from the artifact:
    a budgeted SmolLM2 plan mixing GPTQ up_proj with int8 down_proj lost its logits so);
    the same fold with an RTN up_proj is made."""
    from edgeq.algorithms import smooth
    from edgeq.backends import get_backend
    from edgeq.models import load_model
    from edgeq.planning.plan import QuantPlan
    from edgeq.progress import Steps
    from edgeq.schemes import parse
    from tests.tiny_lms import save_tiny_lm

    loaded = load_model(str(save_tiny_lm(tmp_path / "lm", "llama")), None, seq_len=32)
    model = loaded.module.model
    monkeypatch.setattr(smooth, "choose_scale", lambda *a, **k: ("awq", 0.5))  # every fold wanted
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    schemes = {n: parse("int8", n) for n in names}
    schemes["model.layers.0.mlp.up_proj"] = parse("int4-g32-gptq")
    schemes["model.layers.0.self_attn.v_proj"] = parse("int4-g32-gptq")
    out, record = smooth.PlanSmoothing(loaded, model, get_backend("onnx"), Steps(show=False)).apply(
        QuantPlan(schemes=schemes))
    for gptq in ("model.layers.0.mlp.up_proj", "model.layers.0.self_attn.v_proj"):
        assert gptq not in record["folds"] and "unscaled weights" in record["skipped"][gptq]
        torch.testing.assert_close(dict(out.named_modules())[gptq].weight, dict(model.named_modules())[gptq].weight)
    assert {"model.layers.1.mlp.up_proj", "model.layers.1.self_attn.v_proj"} <= set(record["folds"])


# every scheme a smoothing format stores, at its LLM numerics: a linear's stand-in computes
# each output row from that row's weights alone, so a sample of rows judges a scale exactly
@pytest.mark.parametrize("fmt,scheme", [
    ("executorch", "int8"), ("executorch", "int4-g32"), ("executorch", "int4-g128"),
    ("onnx", "int8-g32"), ("onnx", "int4-g32"), ("onnx", "int4-g128"), ("onnx", "int8"),
])
def test_sampled_output_rows_of_a_stand_in_are_the_whole_stand_ins_rows(fmt, scheme):
    from edgeq.algorithms.scale_search import part, sampled_rows
    from edgeq.backends import get_backend
    from edgeq.schemes import parse

    be = get_backend(fmt)
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 3000).eval()
    lin.weight.data[::7, 5] *= 30  # rows with an outlier weight, whose scales differ from their neighbours'
    rows = sampled_rows(lin.weight.shape, budget=64 * 256)
    assert rows is not None and len(rows) == 256 and rows[0] == 0 and rows[-1] == 2999
    scale = 1 + torch.rand(256)
    x = torch.randn(40, 256)
    x[:, 9] *= 25  # an outlier input channel: the activations' int8 range is set by it
    with be.lm_numerics(), torch.no_grad():
        whole = be.stand_in(part(lin, None, scale), parse(scheme))(x / scale)
        some = be.stand_in(part(lin, rows, scale), parse(scheme))(x / scale)
    assert some.shape == (40, 256)
    torch.testing.assert_close(some, whole[:, rows], rtol=0, atol=0)
    # the part is a copy: the linear itself keeps its weight, rows and size
    assert lin.weight.shape == (3000, 256) and lin.out_features == 3000
    assert sampled_rows((512, 256), budget=512 * 256) is None  # at or under the budget: every row
