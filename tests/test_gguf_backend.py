"""The GGUF backend on tiny Llama / Qwen2 models built in code, checked against llama.cpp
itself (xllamacpp) and transformers: the written file loads in both, F32 greedy tokens equal
eager transformers', llama.cpp's Q8_0 / Q4_0 numerics are what the stand-in computes, the
cost table counts the file's real bytes, the memory model holds on a model it was not fitted
on, and bad input is one line, exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeq.errors import ConfigError
from tests import tiny_lms
from tests.conftest import built_once, cli_here, run_cli
from tests.helpers import hf_continuation

CONTEXT = 64
PROMPT = "the value of the list is a new object and"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny-bpe-llama", lambda p: tiny_lms.save_tiny_bpe_lm(p, "llama"))


@pytest.fixture(scope="module")
def narrow_llama_dir(tmp_path_factory) -> Path:
    """Weights drawn as transformers does (std 0.02): a model whose top tokens are not chaotic."""
    return built_once(tmp_path_factory, "tiny-bpe-llama-narrow",
                      lambda p: tiny_lms.save_tiny_bpe_lm(p, "llama", init=0.02))


def export_to(model_dir: Path, out: Path, precision: str, target: str = "x86-gguf", *extra: str) -> dict:
    """``edgeq export`` as a user runs it; no held-out text scored unless ``extra`` asks."""
    extra = extra or ("--eval-tokens", "0")
    proc = run_cli("export", str(model_dir), "-t", target, "-p", precision, "--max-context", str(CONTEXT),
                   "--samples", "2", "-o", str(out), "--quiet", "--force", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def f32_artifact(llama_dir, tmp_path_factory) -> Path:
    """The F32 GGUF, its perplexity scored on a user's text (``test_llm_heldout``)."""
    from tests.test_llm_heldout import EVAL_TOKENS, TEXT

    out = tmp_path_factory.mktemp("gguf") / "f32"
    (out.parent / "heldout.txt").write_text(TEXT, encoding="utf-8")
    export_to(llama_dir, out, "fp32", "x86-gguf", "--eval-text", str(out.parent / "heldout.txt"),
              "--eval-tokens", str(EVAL_TOKENS))
    return out


# ----------------------------------------------------------------------------- llama.cpp runs it


def test_f32_gguf_runs_in_llama_cpp_with_transformers_greedy_text(f32_artifact, llama_dir):
    manifest = json.loads((f32_artifact / "manifest.json").read_text())
    assert manifest["model_file"] == "model.gguf" and manifest["target"]["format"] == "gguf"
    assert manifest["llm"]["verification"]["identical_prompts"] == manifest["llm"]["verification"]["prompts"]
    assert manifest["numerics"]["kl_mean"] < 1e-3 and "llama.cpp" in manifest["numerics"]["runtime"]
    tok = tiny_lms.bpe_tokenizer()
    expected = tok.decode(hf_continuation(llama_dir, tok(PROMPT)["input_ids"], 12), skip_special_tokens=True)
    # a fresh process: the CLI as a user runs it
    ran = run_cli("run", str(f32_artifact), "--prompt", PROMPT, "--max-new-tokens", "12")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == expected.strip() and expected.strip()
    assert "llama.cpp" in ran.stderr


def test_the_recorded_perplexity_equals_llama_cpp_rows_and_transformers_recomputed(f32_artifact, llama_dir,
                                                                                      tmp_path):
    from tests.test_llm_heldout import check_recorded_perplexity

    check_recorded_perplexity(f32_artifact, llama_dir, tmp_path)


def test_llama_cpp_greedy_tokens_equal_transformers_in_a_fresh_process(f32_artifact, llama_dir):
    ids = [1] + tiny_lms.bpe_tokenizer()(PROMPT)["input_ids"]
    code = ("import json, sys\nfrom edgeq.backends import get_backend\nimport numpy as np\n"
            f"s = get_backend('gguf').open_lm({str(f32_artifact)!r}, 'model.gguf')\n"
            f"ids = {ids!r}\nout = []\nlp = s.prefill(ids)\n"
            "for _ in range(20):\n    out.append(int(np.argmax(lp)))\n    lp = s.decode(out[-1])\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():  # no EOS stop: 20 tokens whatever they are
        want = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                              pad_token_id=0)[0, len(ids):].tolist()
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == want


def test_partial_rows_hold_the_whole_rows_most_likely_tokens(f32_artifact):
    """``top=k`` (what greedy generation asks for) gives the k tokens a whole row ranks first,
    with the same log-probabilities, and nothing above them elsewhere."""
    from edgeq.backends import get_backend

    ids = [1] + tiny_lms.bpe_tokenizer()(PROMPT)["input_ids"]
    session = get_backend("gguf").open_lm(f32_artifact, "model.gguf")
    try:
        rows = [(session.prefill(ids), session.prefill(ids, top=5))]
        nxt = int(np.argmax(rows[0][0]))
        whole = session.decode(nxt)
        session.prefill(ids, top=1)
        rows.append((whole, session.decode(nxt, top=5)))
    finally:
        session.close()
    for whole, part in rows:
        best = np.argsort(-whole, kind="stable")[:5]
        assert sorted(np.argsort(-part, kind="stable")[:5].tolist()) == sorted(best.tolist())
        np.testing.assert_allclose(part[best], whole[best], rtol=0, atol=1e-5)
        rest = np.setdiff1d(np.arange(len(part)), best)
        assert part[rest].max() < whole[best].min()


def test_scoring_text_gives_the_whole_rows_log_probabilities(f32_artifact):
    """Perplexity through ``next_token_log_probs`` (top tokens, a whole row only where the next
    token is not among them) equals the one from whole rows, on text whose tokens are often
    outside the top 64 of the tiny model's 320 (reversed prompt ids) and often inside."""
    from edgeq.backends import get_backend
    from edgeq.backends.gguf import llm_session
    from edgeq.llm.perplexity import perplexity, window_nll

    ids = [1] + tiny_lms.bpe_tokenizer()(PROMPT)["input_ids"]
    windows = [ids, [1] + ids[1:][::-1]]
    session = get_backend("gguf").open_lm(f32_artifact, "model.gguf")
    try:
        whole = sum(window_nll(session.prefill(w, all_logits=True), w) for w in windows)
        scored = session.next_token_log_probs(windows[0])
        topped = [bool(session.prefill(w[: i + 1], top=llm_session.SCORE_TOP)[w[i + 1]] > llm_session._FLOOR)
                  for w in windows for i in range(len(w) - 1)]
        ppl = perplexity(session, windows)
    finally:
        session.close()
    assert 0 < sum(topped) < len(topped)  # both paths taken
    assert len(scored) == len(windows[0]) - 1
    assert ppl.nll == pytest.approx(whole, rel=1e-6)


def test_profile_and_check_work_on_a_gguf_artifact(f32_artifact, tmp_path):
    """edgeq profile measures llama.cpp generating in a fresh process; edgeq check's gates pass."""
    proc = run_cli("profile", str(f32_artifact), "--runs", "2", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "llama.cpp" in text and "decode" in text and json.loads(text)
    checked = run_cli("check", str(f32_artifact))
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]


def test_the_gguf_loads_in_transformers_gguf_loader_with_the_same_logits(f32_artifact, llama_dir):
    """transformers reads llama.cpp's names and undoes the Q/K permutation: same logits as the source."""
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    back = AutoModelForCausalLM.from_pretrained(f32_artifact, gguf_file="model.gguf").eval()
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        a, b = src(ids).logits, back(ids).logits
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_tokenizer_and_metadata_are_what_llama_cpp_reads(f32_artifact):
    from gguf import GGUFReader

    r = GGUFReader(f32_artifact / "model.gguf")
    fields = r.fields

    def scalar(key):
        f = fields[key]
        return f.parts[f.data[0]].tolist()[0] if f.types[0].name != "STRING" else bytes(f.parts[f.data[0]]).decode()

    tok = tiny_lms.bpe_tokenizer()
    model_json = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [bytes(fields["tokenizer.ggml.merges"].parts[i]).decode() for i in fields["tokenizer.ggml.merges"].data]
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in model_json["merges"]]
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in fields["tokenizer.ggml.tokens"].data]
    assert tokens[:len(tok)] == [tok.convert_ids_to_tokens(i) for i in range(len(tok))] and len(tokens) == 320
    assert scalar("general.architecture") == "llama" and scalar("tokenizer.ggml.model") == "gpt2"
    assert scalar("tokenizer.ggml.bos_token_id") == 1 and scalar("tokenizer.ggml.eos_token_id") == 2
    assert scalar("tokenizer.chat_template") == tiny_lms.CHAT_TEMPLATE
    assert scalar("llama.attention.head_count_kv") == 2 and scalar("llama.rope.dimension_count") == 16


@pytest.mark.parametrize("arch", ["qwen2"])
def test_other_architectures_give_transformers_greedy_tokens(arch, tmp_path):
    d = tiny_lms.save_tiny_bpe_lm(tmp_path / arch, arch)
    manifest = export_to(d, tmp_path / "a", "fp32")
    v = manifest["llm"]["verification"]
    assert v["identical_prompts"] == v["prompts"], v


# ------------------------------------------------------------------- numerics and costs


def _llama_cpp_rows(artifact: Path, ids: list[int]) -> np.ndarray:
    from edgeq.backends import get_backend

    session = get_backend("gguf").open_lm(artifact, "model.gguf")
    try:
        return np.asarray(session.prefill(ids, all_logits=True))
    finally:
        session.close()


def _eager_rows(model, ids: list[int], swap=None) -> np.ndarray:
    from edgeq.planning.inventory import layer_inventory
    from edgeq.planning.sensitivity import _swapped

    import contextlib

    with torch.no_grad(), contextlib.ExitStack() as stack:
        if swap is not None:
            for x in layer_inventory(model):
                stack.enter_context(_swapped(model, x.fqn, swap(model.get_submodule(x.fqn))))
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy()


@pytest.fixture(scope="module")
def mid_llama(tmp_path_factory):
    """A tiny Llama drawn at std 0.1 (quantization visibly moves its logits, greedy stays stable),
    with its F32 GGUF's log-probabilities in llama.cpp: the baseline each quantized file is compared from."""
    from transformers import AutoModelForCausalLM

    d = built_once(tmp_path_factory, "tiny-bpe-llama-0.1", lambda p: tiny_lms.save_tiny_bpe_lm(p, "llama", init=0.1))
    out = tmp_path_factory.mktemp("gguf-mid") / "f32"
    export_to(d, out, "fp32")
    ids = [1] + list(range(40, 80))
    return d, AutoModelForCausalLM.from_pretrained(d).eval(), ids, _llama_cpp_rows(out, ids)


@pytest.mark.parametrize("layer,scheme", [("model.layers.0.self_attn.q_proj", "int8"),
                                          ("model.layers.1.mlp.down_proj", "int8"),
                                          ("model.layers.1.mlp.down_proj", "int4-g32")])
def test_stand_in_reproduces_llama_cpp(layer, scheme, mid_llama, tmp_path):
    """One layer at ``scheme`` in the GGUF: how far llama.cpp's log-probabilities move from its F32
    file's is how far the stand-in moves eager transformers' (llama.cpp's Q8_0 rounding of the
    matmul's input included), much closer than the same GGUF weights with fp32 activations."""
    import copy

    from edgeq.backends import get_backend
    from edgeq.backends.gguf.numerics import dequantized
    from edgeq.planning.sensitivity import _swapped
    from edgeq.schemes import parse

    d, model, ids, f32 = mid_llama
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"layers:\n  model.{layer}: {scheme}\n")
    proc = run_cli("export", str(d), "-t", "x86-gguf", "--plan", str(plan), "--max-context", str(CONTEXT),
                   "--samples", "2", "--eval-tokens", "0", "-o", str(tmp_path / "a"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    moved = _llama_cpp_rows(tmp_path / "a", ids) - f32

    def eager(new=None):
        with torch.no_grad():
            if new is None:
                return torch.log_softmax(model(torch.tensor([ids])).logits[0], -1).numpy()
            with _swapped(model, layer, new):
                return torch.log_softmax(model(torch.tensor([ids])).logits[0], -1).numpy()

    s = parse(scheme)
    base = eager()
    stand_in = eager(get_backend("gguf").stand_in(model.get_submodule(layer), s)) - base
    weights = copy.deepcopy(model.get_submodule(layer))
    weights.weight = torch.nn.Parameter(dequantized(weights.weight, "Q8_0" if s.bits == 8 else "Q4_0"),
                                        requires_grad=False)
    weights_only = eager(weights) - base
    miss, miss_weights = np.abs(moved - stand_in).mean(), np.abs(moved - weights_only).mean()
    assert np.abs(moved).mean() > 1e-3  # the layer's quantization moves llama.cpp's output
    assert miss < 0.6 * miss_weights and miss < 0.5 * np.abs(moved).mean(), (miss, miss_weights, np.abs(moved).mean())


def test_q8_0_activation_rounding_matches_a_hand_computation():
    from edgeq.backends.gguf.numerics import q8_0_activations

    x = torch.zeros(32)
    x[0], x[1], x[2] = 2.54, -1.0, 0.01
    d = torch.tensor(2.54 / 127).half().float()
    want = torch.zeros(32)
    want[0], want[1], want[2] = 127 * d, -50 * d, 0.0  # 1.0 * 127 / 2.54 = 50.0, 0.01 * 50 = 0.5 → 0 (half to even)
    assert torch.equal(q8_0_activations(x), want)


def test_costs_count_the_files_real_tensor_bytes(narrow_llama_dir, tmp_path):
    """A mixed plan written as GGUF: every tensor's bytes in the file (edgeq's bounded header
    reader, which checks them against the file) equal stored_bytes of its layer and scheme."""
    from transformers import AutoModelForCausalLM

    from edgeq.backends import get_backend
    from edgeq.backends.gguf.writer import gguf_names, write_gguf
    from edgeq.models.gguf_header import read_gguf_header
    from edgeq.planning.inventory import layer_inventory
    from edgeq.schemes import parse

    model = AutoModelForCausalLM.from_pretrained(narrow_llama_dir).eval()
    layers = layer_inventory(model)
    cycle = ["int8", "int4-g32", "fp16", "fp32"]
    schemes = {x.fqn: parse(cycle[i % 4]) for i, x in enumerate(layers)}
    schemes["lm_head"] = parse("int8")
    schemes["model.embed_tokens"] = parse("int4-g32")  # tied, different scheme: output.weight written
    out = tmp_path / "m.gguf"
    written = write_gguf(model, schemes, out, max_context=CONTEXT, tokenizer=tiny_lms.bpe_tokenizer(),
                         chat_template=None, name="t")
    header = read_gguf_header(out)
    by_name = {t.name: t for t in header.tensors}
    names = gguf_names(model)
    be = get_backend("gguf")
    for x in layers:
        t = by_name[names[x.fqn + ".weight"]]
        assert t.type_name == written[t.name]
        assert t.nbytes == be.stored_bytes(x, schemes[x.fqn]), (x.fqn, t.type_name)
    assert {"Q8_0", "Q4_0", "F16", "F32"} <= set(written.values()) and "output.weight" in written


def test_scheme_table_and_block_sizes():
    from edgeq.backends.gguf.costs import GGUF_TYPES, gguf_type
    from edgeq.planning.inventory import LayerInfo
    from edgeq.schemes import parse

    # llama.cpp's block layouts, by hand: Q8_0 = fp16 scale + 32 int8; Q4_0 = fp16 scale + 16 bytes
    assert (GGUF_TYPES[parse("int8")].block_bytes, GGUF_TYPES[parse("int4-g32")].block_bytes) == (34, 18)
    with pytest.raises(ConfigError, match="no GGUF tensor type"):
        gguf_type(parse("int4-g64"))
    from edgeq.backends import get_backend

    be = get_backend("gguf")
    odd = LayerInfo(fqn="x", kind="linear", shape=(8, 48), params=8 * 48)
    assert be.scheme_fits(odd, parse("int8")) and not be.scheme_fits(odd, parse("fp16"))


# ----------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_memory_prediction_holds_on_a_model_it_was_not_fitted_on(tmp_path):
    """costs.py's terms were measured on hidden 128 / 3 layers / context 256 and hidden 256 /
    4 layers / context 512; here hidden 192 / 2 layers / context 384 at Q8_0, in a fresh
    process, after a prompt as long as the context (llama.cpp's compute buffers all touched)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from edgeq.llm.measure import measure_generation
    from edgeq.llm.memory import predict_lm_peak

    context = 384
    d = tiny_lms.save_tiny_bpe_lm(tmp_path / "m", "llama", init=0.02)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(hidden_size=192, intermediate_size=512, num_hidden_layers=2, max_position_embeddings=1024)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(LlamaConfig(**cfg)).save_pretrained(d)
    proc = run_cli("export", str(d), "-t", "x86-gguf", "-p", "int8", "--max-context", str(context), "--samples", "2",
                   "-o", str(tmp_path / "a"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    measured = measure_generation(tmp_path / "a", prompt_tokens=context - 8, new_tokens=8)["memory"]
    est = predict_lm_peak(tmp_path / "a", prompt_tokens=context - 8)
    ratio = est.total_bytes / measured["model_attributable_bytes"]
    assert 0.9 < ratio < 1.1, (est.to_dict(), measured)


# ----------------------------------------------------------------------------- bad input


def one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines and lines[0].startswith("error:"), proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_an_encoder_to_a_gguf_target_is_refused():
    line = one_line(cli_here("export", "tests.tiny_models:tiny_text", "-t", "x86-gguf", "--quiet"))
    assert "decoder LLMs only" in line


def test_a_truncated_gguf_is_refused(f32_artifact, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(f32_artifact, art)
    f = art / "model.gguf"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    one_line(cli_here("run", str(art), "--prompt", "the", "--max-new-tokens", "2"))
    from edgeq.backends import get_backend
    from edgeq.errors import ArtifactError

    with pytest.raises(ArtifactError):
        get_backend("gguf").open_lm(art, "model.gguf")


def test_a_scheme_with_no_gguf_type_is_refused(llama_dir, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("layers:\n  model.model.layers.0.mlp.down_proj: int4-g64\n")
    line = one_line(cli_here("export", str(llama_dir), "-t", "x86-gguf", "--plan", str(plan), "--max-context",
                             str(CONTEXT), "-o", str(tmp_path / "a"), "--quiet"))
    assert "gguf" in line.lower() and "int4-g64" in line


def test_a_tokenizer_gguf_cannot_hold_is_refused(tmp_path):
    d = tiny_lms.save_tiny_lm(tmp_path / "wl", "llama")  # WordLevel tokenizer
    line = one_line(cli_here("export", str(d), "-t", "x86-gguf", "-p", "fp32", "--max-context", str(CONTEXT),
                             "-o", str(tmp_path / "a"), "--quiet"))
    assert "tokenizer" in line


def test_an_architecture_the_writer_cannot_take_is_refused(tmp_path):
    d = tiny_lms.save_tiny_lm(tmp_path / "g", "gpt2")
    line = one_line(cli_here("export", str(d), "-t", "x86-gguf", "-p", "fp32", "--max-context", str(CONTEXT),
                             "-o", str(tmp_path / "a"), "--quiet"))
    assert "gpt2" in line and "GGUF" in line


def test_the_planner_offers_only_schemes_gguf_stores(llama_dir):
    """A target allowing int4 at every group: GGUF's costs list the schemes with a GGUF type only
    (int4-g32 = Q4_0, int4-g32-asym = Q4_1; no int4-g64), each named excluded with its reason."""
    from edgeq.llm.plan import lm_costs
    from edgeq.models import load_model
    from edgeq.targets import load_target

    loaded = load_model(str(llama_dir), "causal-lm", seq_len=16)
    costs = lm_costs(loaded, load_target("x86-gguf"), CONTEXT, calib_samples=1, use_cache=False)
    offered = {c.scheme.name for choices in costs.stored.values() for c in choices}
    from edgeq.backends.gguf.costs import GGUF_TYPES

    assert offered <= {s.name for s in GGUF_TYPES} and {"int4-g32", "int4-g32-asym"} <= offered
    assert all(costs.excluded[f].get("int4-g64") for f in costs.excluded) and costs.excluded


# ----------------------------------------------------------------------------- tied head


def test_a_tied_head_sharing_its_tables_tensor_is_counted_once(llama_dir, tmp_path):
    """With a budget of the uniform Q8_0 file's tensor bytes (llama.cpp reads token_embd for the
    head there: no output tensor), uniform Q8_0 fits, so the plan is at least as accurate as it
    predicts uniform Q8_0 to be, and its predicted bytes are the bytes of the tensors it writes."""
    from edgeq.backends.gguf.writer import write_gguf
    from edgeq.models.gguf_header import read_gguf_header
    from edgeq.plans import plan_model
    from transformers import AutoModelForCausalLM

    export_to(llama_dir, tmp_path / "q8", "int8")
    tensors = read_gguf_header(tmp_path / "q8" / "model.gguf").tensors
    assert "output.weight" not in {t.name for t in tensors}
    budget = sum(t.nbytes for t in tensors)
    r = plan_model(llama_dir, "x86-gguf", budget_bytes=budget, max_context=CONTEXT, calib_samples=2)
    uniform_int8 = sum(r.sensitivity[x.fqn]["int8"] for x in r.layers)
    assert r.predicted_error <= uniform_int8 + 1e-9, (r.plan.names(), r.predicted_error, uniform_int8)
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    schemes = {k.removeprefix("model."): v for k, v in r.plan.schemes.items()}  # the loaded wrapper's names
    written = write_gguf(model, schemes, tmp_path / "p.gguf", max_context=CONTEXT, tokenizer=tiny_lms.bpe_tokenizer(),
                         chat_template=None, name="t")
    in_file = sum(t.nbytes for t in read_gguf_header(tmp_path / "p.gguf").tensors)
    # within the model's non-weight buffers, which the plan counts at fp32 and GGUF does not store
    # (the rotary inv_freq: 64 bytes here); the head counted twice would be 20 KB over
    assert 0 <= r.predicted_bytes - in_file <= 256, (r.predicted_bytes, in_file, written)
