"""GGUF tensor types beyond Q8_0 / Q4_0 (Q4_1, Q5_0, Q5_1 and the K-quants Q2_K … Q6_K),
checked against llama.cpp itself: the bytes edgeq writes equal llama.cpp's quantizer's
(``ggml_quantize_chunk`` in the installed xllamacpp) bit for bit, the stand-in computes what
llama.cpp's CPU dot products compute on the same bytes, a file mixing every type loads in
llama.cpp and in transformers' ``gguf_file=`` loader, the planner offers each type where
rows fit, and formats that do not store a block type refuse it in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeq.errors import ConfigError
from tests import llama_cpp_ref, tiny_lms
from tests.conftest import built_once, cli_here, run_cli

QUANTIZED = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
CONTEXT = 64


def _rows() -> dict[str, np.ndarray]:
    """Random and adversarial rows of 512 (two K-quant super-blocks, sixteen blocks of 32)."""
    rng = np.random.default_rng(7)
    normal = rng.standard_normal((48, 512)).astype(np.float32)
    spikes = normal * np.where(rng.random(normal.shape) < 0.01, 1e4, 1.0).astype(np.float32)
    half = normal.copy()
    half[:, :256] = 0.0  # one super-block of zeros beside a normal one
    return {
        "weights": normal * 0.02,
        "zeros": np.zeros((4, 512), np.float32),
        "constant": np.full((4, 512), 0.37, np.float32),
        "negative constant": np.full((4, 512), -2.5, np.float32),
        "huge outliers": spikes,
        "all positive": np.abs(normal),
        "tiny": normal * 1e-20,
        "sparse": normal * (rng.random(normal.shape) < 0.05),
        "half zero": half,
        "one hot": np.eye(4, 512, dtype=np.float32) * 3.0,
    }


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_bytes_equal_llama_cpps_quantizer(type_name):
    """edgeq's bytes (gguf-py for blocks of 32, edgeq's numpy K-quants) = llama.cpp's, every row."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from edgeq.backends.gguf.numerics import quantized_bytes

    for case, rows in _rows().items():
        mine, theirs = quantized_bytes(rows, type_name), llama_cpp_ref.quantize(rows, type_name)
        assert mine.shape == theirs.shape, case
        differ = np.flatnonzero((mine != theirs).any(axis=1))
        assert differ.size == 0, f"{type_name} {case}: rows {differ.tolist()[:5]} differ"
    # gguf-py reads them back (the stand-in's dequantizer): fewer bits, larger error
    w = _rows()["weights"]
    back = dequantize(quantized_bytes(w, type_name), GGMLQuantizationType[type_name])
    rel = float(np.linalg.norm(back - w) / np.linalg.norm(w))
    bits = int(type_name[1])
    assert 2.0 ** -(bits + 1) < rel < 2.0 ** -(bits - 2), rel


def test_k_quants_refuse_rows_that_are_not_whole_super_blocks():
    from edgeq.backends.gguf.kquants import quantize_k

    with pytest.raises(ValueError, match="256"):
        quantize_k(np.ones((2, 576), np.float32), "Q4_K")


def test_q8_k_activation_rounding_matches_llama_cpp():
    """The stand-in's Q8_K input = llama.cpp's ``quantize_row_q8_K`` (fp32 scale, signed max)."""
    import ctypes

    from edgeq.backends.gguf.numerics import q8_k_activations

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[1, 5] = -40.0  # the largest magnitude negative: the scale is negative, +127 clamps
    x[2, :256] = 0.0
    fn = llama_cpp_ref.lib().quantize_row_q8_K
    for row, mine in zip(x, q8_k_activations(torch.from_numpy(x)).numpy()):
        raw = np.zeros(2 * 292, np.uint8)  # block_q8_K: float d, int8 qs[256], int16 bsums[16]
        fn(ctypes.c_void_p(row.ctypes.data), ctypes.c_void_p(raw.ctypes.data), ctypes.c_int64(512))
        blocks = raw.reshape(2, 292)
        d = blocks[:, :4].copy().view(np.float32)
        qs = blocks[:, 4:260].view(np.int8).astype(np.float32)
        assert np.array_equal(mine.reshape(2, 256), qs * d)


def _linear(k: int, n: int) -> torch.nn.Linear:
    rng = np.random.default_rng(11)
    lin = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy((rng.standard_normal((n, k)) * 0.05).astype(np.float32)))
    return lin


@pytest.mark.parametrize("scheme", ["fp16", "int8", "int4-g32", "int4-g32-asym", "int5-g32", "int5-g32-asym",
                                    "int2-k", "int3-k", "int4-k", "int5-k", "int6-k"])
def test_stand_in_computes_llama_cpps_matmul(scheme):
    """One linear: the stand-in's output = llama.cpp's CPU ``vec_dot`` of the same weight bytes with
    the input converted by the type's ``vec_dot_type`` (up to fp32 summation order), far closer
    than the dequantized weights with an exact input."""
    from edgeq.backends.gguf.costs import gguf_type
    from edgeq.backends.gguf.numerics import quantized_bytes, stand_in
    from edgeq.schemes import parse

    s = parse(scheme)
    t = gguf_type(s)
    lin = _linear(512, 24)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 512)) * np.where(rng.random((4, 512)) < 0.02, 20.0, 1.0)).astype(np.float32)
    w = lin.weight.detach().numpy()
    raw = quantized_bytes(w, t.name) if t.quantized else w.astype(np.float16).view(np.uint8)
    theirs = llama_cpp_ref.matmul(raw, t.name, x)
    layer = stand_in(lin, s)
    with torch.no_grad():
        mine = layer(torch.from_numpy(x)).numpy()
        weights_only = torch.nn.functional.linear(torch.from_numpy(x), layer.weight).numpy()
    miss, miss_weights = np.abs(mine - theirs).max(), np.abs(weights_only - theirs).max()
    assert miss < 1e-5 * np.abs(theirs).max() * 10, (miss, np.abs(theirs).max())
    assert miss * 50 < miss_weights, (miss, miss_weights)


# ------------------------------------------------------------------ a file of every type

PLAN = {  # the wide tiny Llama (hidden 256, intermediate 512): every layer's rows fit a K-quant
    "model.model.embed_tokens": "int6-k",
    "model.lm_head": "int6-k",  # tied, the table's type: llama.cpp reads token_embd for both
    "model.model.layers.0.self_attn.q_proj": "int4-k",
    "model.model.layers.0.self_attn.k_proj": "int5-k",
    "model.model.layers.0.self_attn.v_proj": "int3-k",
    "model.model.layers.0.self_attn.o_proj": "int2-k",
    "model.model.layers.0.mlp.gate_proj": "int4-g32-asym",
    "model.model.layers.0.mlp.up_proj": "int5-g32",
    "model.model.layers.0.mlp.down_proj": "int5-g32-asym",
    "model.model.layers.1.self_attn.q_proj": "int4-k",
    "model.model.layers.1.self_attn.k_proj": "int4-k",
    "model.model.layers.1.self_attn.v_proj": "int6-k",
    "model.model.layers.1.self_attn.o_proj": "int4-k",
    "model.model.layers.1.mlp.gate_proj": "int4-k",
    "model.model.layers.1.mlp.up_proj": "int4-k",
    "model.model.layers.1.mlp.down_proj": "int5-k",
}


@pytest.fixture(scope="module")
def wide_llama_dir(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny-bpe-llama-wide",
                      lambda p: tiny_lms.save_tiny_bpe_lm(p, "llama", init=0.05, hidden=256, intermediate=512))


@pytest.fixture(scope="module")
def mixed_artifact(wide_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf-types")
    plan = out / "plan.yaml"
    plan.write_text("layers:\n" + "".join(f"  {f}: {s}\n" for f, s in PLAN.items()))
    proc = run_cli("export", str(wide_llama_dir), "-t", "x86-gguf", "--plan", str(plan), "--max-context",
                   str(CONTEXT), "--samples", "2", "--eval-tokens", "0", "-o", str(out / "a"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out / "a"


def test_a_file_of_every_type_has_the_planned_types_and_file_type(mixed_artifact):
    from gguf import GGUFReader, LlamaFileType

    from edgeq.backends.gguf.costs import gguf_type
    from edgeq.schemes import parse

    r = GGUFReader(mixed_artifact / "model.gguf")
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == "Q6_K" and types["blk.0.attn_v.weight"] == "Q3_K"
    assert types["blk.0.attn_output.weight"] == "Q2_K" and types["blk.0.ffn_gate.weight"] == "Q4_1"
    assert types["blk.0.ffn_up.weight"] == "Q5_0" and types["blk.0.ffn_down.weight"] == "Q5_1"
    assert {gguf_type(parse(s)).name for s in PLAN.values()} <= set(types.values())
    f = r.fields["general.file_type"]
    assert LlamaFileType(int(f.parts[f.data[0]][0])) == LlamaFileType.MOSTLY_Q4_K_M  # most weights are Q4_K


def _llama_cpp_logprobs(artifact: Path, ids: list[int]) -> np.ndarray:
    from edgeq.backends import get_backend

    session = get_backend("gguf").open_lm(artifact, "model.gguf")
    try:
        logits = np.asarray(session.prefill(ids, all_logits=True))
    finally:
        session.close()
    return torch.log_softmax(torch.from_numpy(logits).float(), -1).numpy()


def _eager_logprobs(model, ids: list[int], layers: dict[str, object] | None = None) -> np.ndarray:
    import contextlib

    from edgeq.planning.sensitivity import _swapped

    with torch.no_grad(), contextlib.ExitStack() as stack:
        for path, layer in (layers or {}).items():
            stack.enter_context(_swapped(model, path, layer))
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy()


IDS = [1] + list(range(40, 80))


def test_llama_cpp_on_the_mixed_file_computes_what_the_stand_ins_compute(mixed_artifact, wide_llama_dir):
    """llama.cpp's log-probabilities on the mixed file are those of eager transformers with every
    layer's stand-in (what remains: llama.cpp's f16 KV cache and summation order)."""
    from transformers import AutoModelForCausalLM

    from edgeq.backends import get_backend
    from edgeq.schemes import parse

    model = AutoModelForCausalLM.from_pretrained(wide_llama_dir).eval()
    theirs = _llama_cpp_logprobs(mixed_artifact, IDS)
    be = get_backend("gguf")
    stand_ins = {f.removeprefix("model."): be.stand_in(model.get_submodule(f.removeprefix("model.")), parse(s))
                 for f, s in PLAN.items()}
    moved = np.abs(theirs - _eager_logprobs(model, IDS)).mean()
    miss = np.abs(theirs - _eager_logprobs(model, IDS, stand_ins)).mean()
    assert moved > 0.1 and miss < 0.1 * moved, (miss, moved)


@pytest.fixture(scope="module")
def wide_f32(wide_llama_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("gguf-wide") / "f32"
    proc = run_cli("export", str(wide_llama_dir), "-t", "x86-gguf", "-p", "fp32", "--max-context", str(CONTEXT),
                   "--samples", "2", "--eval-tokens", "0", "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return AutoModelForCausalLM.from_pretrained(wide_llama_dir).eval(), _llama_cpp_logprobs(out, IDS)


@pytest.mark.parametrize("scheme", ["int4-g32-asym", "int5-g32", "int5-g32-asym", "int2-k", "int3-k", "int4-k",
                                    "int5-k", "int6-k"])
def test_stand_in_reproduces_llama_cpp_on_one_layer(scheme, wide_llama_dir, wide_f32, tmp_path):
    """One layer at ``scheme`` in the GGUF: how far llama.cpp's log-probabilities move from its F32
    file's is how far the stand-in moves eager transformers', much closer than the same dequantized
    weights with an exact input (the activation rounding of the type's ``vec_dot_type`` matters)."""
    from edgeq.backends import get_backend
    from edgeq.schemes import parse

    model, f32 = wide_f32
    layer = "model.layers.1.mlp.down_proj"
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"layers:\n  model.{layer}: {scheme}\n")
    proc = run_cli("export", str(wide_llama_dir), "-t", "x86-gguf", "--plan", str(plan), "--max-context",
                   str(CONTEXT), "--samples", "2", "--eval-tokens", "0", "-o", str(tmp_path / "a"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    moved = _llama_cpp_logprobs(tmp_path / "a", IDS) - f32
    base = _eager_logprobs(model, IDS)
    stand_in = get_backend("gguf").stand_in(model.get_submodule(layer), parse(scheme))
    weights_only = torch.nn.Linear(stand_in.in_features, stand_in.out_features, bias=False)
    weights_only.weight = stand_in.weight
    by_stand_in = _eager_logprobs(model, IDS, {layer: stand_in}) - base
    by_weights = _eager_logprobs(model, IDS, {layer: weights_only}) - base
    miss, miss_weights = np.abs(moved - by_stand_in).mean(), np.abs(moved - by_weights).mean()
    assert np.abs(moved).mean() > 5e-3  # the layer's quantization moves llama.cpp's output
    assert miss < 0.7 * miss_weights and miss < 0.5 * np.abs(moved).mean(), (miss, miss_weights, np.abs(moved).mean())


def test_transformers_gguf_loader_reads_every_type(mixed_artifact, wide_llama_dir):
    """transformers dequantizes each type with gguf-py: its logits = eager with the dequantized weights."""
    from transformers import AutoModelForCausalLM

    from edgeq.backends.gguf.costs import gguf_type
    from edgeq.backends.gguf.numerics import dequantized
    from edgeq.schemes import parse

    src = AutoModelForCausalLM.from_pretrained(wide_llama_dir).eval()
    with torch.no_grad():
        for fqn, name in PLAN.items():
            m = src.get_submodule(fqn.removeprefix("model."))
            m.weight.copy_(dequantized(m.weight, gguf_type(parse(name)).name).view_as(m.weight))
    back = AutoModelForCausalLM.from_pretrained(mixed_artifact, gguf_file="model.gguf").eval()
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        a, b = src(ids).logits, back(ids).logits
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


# ------------------------------------------------------------------ schemes and the planner


def test_block_scheme_names_round_trip_and_have_their_gguf_types():
    from edgeq.backends.gguf.costs import GGUF_TYPES
    from edgeq.schemes import BLOCK_SCHEMES, NAMES, parse

    assert [s.name for s in BLOCK_SCHEMES] == ["int4-g32-asym", "int5-g32", "int5-g32-asym", "int2-k", "int3-k",
                                               "int4-k", "int5-k", "int6-k"]
    assert all(parse(n).name == n for n in NAMES) and parse("INT4-K") == parse("int4-k")
    # llama.cpp's block layouts by hand: Q4_1 = fp16 scale + fp16 min + 16 B; Q5_0 = fp16 + 4 B high bits
    # + 16 B; Q4_K per 256 = 2 fp16 + 12 B of 6-bit scales/mins + 128 B; Q6_K = 128 + 64 + 16 + fp16
    sizes = {GGUF_TYPES[parse(n)].name: (GGUF_TYPES[parse(n)].block, GGUF_TYPES[parse(n)].block_bytes)
             for n in ("int4-g32-asym", "int5-g32", "int4-k", "int6-k")}
    assert sizes == {"Q4_1": (32, 20), "Q5_0": (32, 22), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def test_k_quants_fit_rows_of_whole_super_blocks_only():
    from edgeq.backends import get_backend
    from edgeq.planning.inventory import LayerInfo
    from edgeq.schemes import parse

    be = get_backend("gguf")
    smol = LayerInfo(fqn="q", kind="linear", shape=(576, 576), params=576 * 576)  # SmolLM2's rows of 576
    down = LayerInfo(fqn="d", kind="linear", shape=(576, 1536), params=576 * 1536)
    assert "256" in be.scheme_fits(smol, parse("int4-k")) and not be.scheme_fits(smol, parse("int5-g32-asym"))
    assert not be.scheme_fits(down, parse("int6-k"))
    assert be.stored_bytes(down, parse("int6-k")) == 576 * 6 * 210


def test_the_gguf_planner_offers_block_types_where_rows_fit(wide_llama_dir):
    from edgeq.llm.plan import lm_costs
    from edgeq.models import load_model
    from edgeq.targets import load_target

    loaded = load_model(str(wide_llama_dir), "causal-lm", seq_len=16)
    costs = lm_costs(loaded, load_target("x86-gguf"), CONTEXT, calib_samples=1, use_cache=False)
    offered = {f: {c.scheme.name for c in choices} for f, choices in costs.stored.items()}
    down = offered["model.model.layers.0.mlp.down_proj"]
    assert {"int4-g32-asym", "int5-g32", "int5-g32-asym", "int4-k", "int6-k", "int2-k"} <= down
    assert "int4-g64" not in down


def test_executorch_and_onnx_do_not_offer_block_types(tmp_path):
    from edgeq.backends import get_backend
    from edgeq.planning.inventory import LayerInfo
    from edgeq.planning.rules import candidate_schemes
    from edgeq.schemes import parse

    layer = LayerInfo(fqn="x", kind="linear", shape=(256, 256), params=256 * 256)
    for fmt in ("executorch", "onnx"):
        be = get_backend(fmt)
        names = {s.name for s in candidate_schemes(layer, ["fp32", "int8", "int4"], be.SCHEMES)}
        assert "int4-k" not in names and "int4-g32-asym" not in names and "int4-g32" in names
        assert fmt in be.scheme_fits(layer, parse("int4-k"))


def test_a_target_listing_a_precision_its_format_does_not_store_is_one_line(tmp_path):
    target = tmp_path / "t.yaml"
    target.write_text("extends: x86-executorch\nname: x86-int5\nprecisions: [fp32, int8, int5]\n")
    proc = cli_here("targets", "validate", str(target))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "int5" in proc.stderr and "executorch" in proc.stderr


def test_a_plan_with_a_gguf_only_scheme_for_an_executorch_target_is_one_line(tmp_path):
    d = tiny_lms.save_tiny_bpe_lm(tmp_path / "m", "llama")
    plan = tmp_path / "plan.yaml"
    plan.write_text("layers:\n  model.model.layers.0.mlp.down_proj: int5-g32-asym\n")
    proc = cli_here("export", str(d), "-t", "x86-executorch", "--plan", str(plan), "--max-context", str(CONTEXT),
                    "-o", str(tmp_path / "a"), "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "int5-g32-asym" in proc.stderr and "executorch" in proc.stderr


def test_uniform_int5_on_a_gguf_target_is_q5_0():
    from edgeq.schemes import for_precision

    assert for_precision("int5").name == "int5-g32" and for_precision("int6").name == "int6-k"
    with pytest.raises(ConfigError):
        from edgeq.backends import check_stored, get_backend
        from edgeq.schemes import parse

        check_stored([parse("int5-g32")], get_backend("onnx"))


def test_a_target_can_exclude_schemes_from_every_layers_candidates(wide_llama_dir, tmp_path):
    from edgeq.llm.plan import lm_costs
    from edgeq.models import load_model
    from edgeq.targets import load_target

    target = tmp_path / "no-q4_1.yaml"
    target.write_text("extends: x86-gguf\nname: x86-gguf-no-q4-1\n"
                      "quantization:\n  exclude_schemes: [int4-g32-asym, INT6-K]\n")
    loaded = load_model(str(wide_llama_dir), "causal-lm", seq_len=16)
    costs = lm_costs(loaded, load_target(str(target)), CONTEXT, calib_samples=1, use_cache=False)
    offered = {f: {c.scheme.name for c in choices} for f, choices in costs.stored.items()}
    down = offered["model.model.layers.0.mlp.down_proj"]
    assert {"int4-g32", "int5-g32-asym", "int4-k"} <= down  # the rest of the families stay
    assert not any({"int4-g32-asym", "int6-k"} & names for names in offered.values())
    assert "excludes int4-g32-asym" in costs.excluded["model.model.layers.0.mlp.down_proj"]["int4-g32-asym"]


def test_excluding_an_unknown_scheme_is_one_line(tmp_path):
    target = tmp_path / "t.yaml"
    target.write_text("extends: x86-gguf\nname: x86-gguf-typo\nquantization:\n  exclude_schemes: [int4-g32-asymm]\n")
    proc = cli_here("targets", "validate", str(target))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "int4-g32-asymm" in proc.stderr and "did you mean" in proc.stderr


@pytest.mark.parametrize("scheme_name", ["int4-g32", "int4-k", "int8", "int6-k", "int5-g32"])
def test_held_bytes_count_the_copies_llama_cpp_repacks_at_load(wide_llama_dir, tmp_path, scheme_name):
    """The memory model's extra held bytes (a repacked copy beside the mapped file) against
    llama.cpp's own report of its CPU_REPACK buffer for a file of that type (MiB, 2 decimals)."""
    import transformers

    from edgeq.backends import get_backend
    from edgeq.backends.gguf.llm_session import reserved_buffers
    from edgeq.backends.gguf.writer import write_gguf
    from edgeq.planning.inventory import LayerInfo
    from edgeq.schemes import parse

    be, scheme = get_backend("gguf"), parse(scheme_name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(wide_llama_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(wide_llama_dir))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    out = tmp_path / "m.gguf"
    write_gguf(model, {n: scheme for n in linears}, out, max_context=CONTEXT, tokenizer=tokenizer,
               chat_template=None, name="wide")
    layers = [LayerInfo(fqn=n, kind="linear", shape=tuple(m.weight.shape), params=m.weight.numel())
              for n, m in linears.items()]
    predicted = sum(be.held_bytes(x, scheme) - be.stored_bytes(x, scheme) for x in layers)
    reported = reserved_buffers(out)["repack"]
    assert abs(predicted - reported) <= 6 * 1024 + 0.01 * predicted, (scheme_name, predicted, reported)


@pytest.mark.parametrize("model_kind", ["encoder", "causal-lm"])
def test_a_precision_whose_scheme_the_target_excludes_is_refused(tmp_path, tiny_llama_dir, model_kind):
    """-p int4 on a target that excludes int4-g32 is one line, exit 2, and nothing written
    (it used to write int4-g32 anyway)."""
    base = "x86-gguf" if model_kind == "causal-lm" else "x86"
    target = tmp_path / "t.yaml"
    target.write_text(f"extends: {base}\nname: no-int4-g32\nquantization:\n  exclude_schemes: [int4-g32]\n")
    model = str(tiny_llama_dir) if model_kind == "causal-lm" else "tests.tiny_models:tiny_mlp"
    out = tmp_path / "out"
    proc = cli_here("export", model, "-t", str(target), "-p", "int4", "-o", str(out),
                    *(["--max-context", "32"] if model_kind == "causal-lm" else []))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "int4-g32" in proc.stderr and "exclude_schemes" in proc.stderr
    assert not out.exists()
