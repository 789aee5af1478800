"""Budgeted per-layer plans for decoder LLMs (``edgeq.llm.plan``): the plan fits the
budget as the lowered file measures it, mixes schemes, counts the KV cache in memory, and
bad budgets fail with one line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli_here
from tests.tiny_lms import save_tiny_lm

CONTEXT = 48


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    # narrow weights (init 0.02): a calm model, where quantization error is small and ranked
    return save_tiny_lm(tmp_path_factory.mktemp("lm") / "llama", "llama", init=0.02)


def _param_bytes(lm_dir, bits: float) -> int:
    """The tiny llama's linear + embedding weights at ``bits`` per weight, by hand from its
    config (the tied head is a second matrix in both runtimes once quantized)."""
    c = json.loads((lm_dir / "config.json").read_text())
    h, i, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return int((n * per_layer + 2 * v * h) * bits / 8)


# ExecuTorch lowers a tiny LM with a static cache in 1-2 min: that case runs with the slow tests.
@pytest.mark.parametrize("target", [pytest.param("x86-executorch", marks=pytest.mark.slow), "x86"])
def test_a_budgeted_llm_plan_fits_the_budget_mixes_schemes_and_generates(lm_dir, tmp_path, target):
    from edgeq.export import export

    # Between uniform int4 and uniform int8 (weights alone, by hand), so neither extreme is the answer.
    budget = (_param_bytes(lm_dir, 4.5) + _param_bytes(lm_dir, 8.5)) // 2 + 60_000
    out = tmp_path / "art"
    result = export(str(lm_dir), target, budget_bytes=budget, max_context=CONTEXT, output=out)
    m = result.manifest
    size = (out / m.model_file).stat().st_size
    assert size <= budget  # the measured file, not the prediction
    assert m.plan is not None and m.plan.budget_bytes == budget
    schemes = set(m.precision.layers.values())
    assert len(schemes) >= 2, schemes  # a mix, not one precision
    assert "fp16" not in schemes
    assert m.llm is not None and m.llm.verification.prompts >= 1  # checked in its runtime against transformers
    # The plan's predicted KL is a measured figure; the artifact's verified KL is measured in its runtime.
    assert m.plan.predicted_error >= 0 and m.plan.verified_error is not None


def test_the_llm_memory_budget_counts_the_kv_cache(lm_dir):
    c = json.loads((lm_dir / "config.json").read_text())
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    context = c["max_position_embeddings"]
    kv = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * 4 * context  # fp32 K and V, by hand
    r = cli_here("plan", str(lm_dir), "--target", "x86-executorch", "--memory-budget", "64MB",
                 "--max-context", str(context), "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["predicted"]["peak_memory_bytes"] >= kv + _param_bytes(lm_dir, 4)
    # Below the cache alone: refused in one line that names the knob an LLM has.
    r = cli_here("plan", str(lm_dir), "--target", "x86-executorch", "--memory-budget", f"{kv / 2 / 1e6:.3f}MB",
                 "--max-context", str(context), "--quiet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: memory budget") and "--max-context" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_llm_max_drop_gives_the_smallest_plan_within_it_and_fp16_is_never_a_candidate(lm_dir):
    loose = cli_here("plan", str(lm_dir), "--target", "x86-executorch", "--max-drop", "1.0", "--max-context",
                     str(CONTEXT), "--json")
    tight = cli_here("plan", str(lm_dir), "--target", "x86-executorch", "--max-drop", "1e-9", "--max-context",
                     str(CONTEXT), "--json")
    assert loose.returncode == 0 and tight.returncode == 0, loose.stderr + tight.stderr
    loose, tight = json.loads(loose.stdout), json.loads(tight.stdout)
    assert loose["predicted"]["error"] <= 1.0 and tight["predicted"]["error"] <= 1e-9
    assert loose["predicted"]["bytes"] < tight["predicted"]["bytes"]
    assert all(v.startswith("int4") for v in loose["layers"].values())  # a loose bound: the smallest schemes
    assert "fp16" not in set(loose["layers"].values()) | set(tight["layers"].values())


def test_a_storage_budget_below_any_llm_plan_is_one_line(lm_dir):
    r = cli_here("plan", str(lm_dir), "--target", "x86-executorch", "--budget", "1KB", "--max-context", str(CONTEXT),
                 "--quiet")
    assert r.returncode == 2
    assert r.stderr.startswith("error: storage budget") and len(r.stderr.strip().splitlines()) == 1


def test_algorithms_choose_the_exports_activation_aware_scales(lm_dir, tmp_path):
    from edgeq.export import export

    # default: SmoothQuant's and AWQ's scales are both searched, per fold, on the calibration text
    m = export(str(lm_dir), "x86", precision="int4", max_context=CONTEXT, output=tmp_path / "default").manifest
    record = m.llm.smoothing
    assert record is not None and set(record["searched"]) == {"smoothquant", "awq"}
    assert all(f["method"] in ("smoothquant", "awq") for f in record["folds"].values())
    assert len(record["folds"]) + len(record["skipped"]) > 0
    # AWQ alone
    m = export(str(lm_dir), "x86", precision="int4", max_context=CONTEXT, output=tmp_path / "awq",
               algorithms=["awq"]).manifest
    assert list(m.llm.smoothing["searched"]) == ["awq"]
    assert all(f["method"] == "awq" for f in m.llm.smoothing["folds"].values())
    # rtn: the plain round-to-nearest values, nothing scaled
    m = export(str(lm_dir), "x86", precision="int4", max_context=CONTEXT, output=tmp_path / "rtn",
               algorithms=["rtn"]).manifest
    assert m.llm.smoothing is None


def test_rotation_is_refused_for_a_model_that_is_not_a_decoder(tiny_bert_dir, tmp_path):
    r = cli_here("plan", str(tiny_bert_dir), "--target", "x86", "--seq-len", "32", "--budget", "1MB",
                 "--algorithms", "rotation")
    assert r.returncode == 2, r.stderr
    assert "rotation applies to decoder LLMs only" in r.stderr and "Traceback" not in r.stderr
    r = cli_here("export", str(tiny_bert_dir), "--target", "x86", "--seq-len", "32", "--algorithms", "rotation",
                 "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "rotation applies to decoder LLMs only" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
    r = cli_here("export", str(tiny_bert_dir), "--target", "x86", "--algorithms", "gptqq", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown algorithm 'gptqq'" in r.stderr, r.stderr


def test_a_plan_file_names_llm_layers_as_the_manifest_does(lm_dir, tmp_path):
    """``--plan`` takes the Hugging Face model's own layer names (as the manifest and the
    export's notes show them) and the names ``edgeq plan`` writes; one layer named both
    ways is refused in one line."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeq.errors import ConfigError
    from edgeq.llm.export import _plan
    from edgeq.models import load_model
    from edgeq.planning.planfile import read_plan_file
    from edgeq.progress import Steps
    from edgeq.targets import load_target

    hf = AutoModelForCausalLM.from_pretrained(lm_dir)  # the reference for the names
    linears = [n for n, m in hf.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    tgt = load_target("x86").target
    loaded = load_model(str(lm_dir), None, seq_len=tgt.seq_len)
    plan_yaml = tmp_path / "plan.yaml"
    plan_yaml.write_text("layers:\n  model.embed_tokens: int8\n"
                         f"  {linears[0]}: int4-g32\n  model.{linears[1]}: int8\n")
    plan, requested = _plan(loaded, tgt, "int8", read_plan_file(plan_yaml, tgt), Steps(show=False))
    assert requested == "planned"
    assert {k: v.name for k, v in plan.schemes.items() if v.name != "fp32"} == {
        "model.embed_tokens": "int8", linears[0]: "int4-g32", linears[1]: "int8"}
    assert set(plan.schemes) >= set(linears)  # every other layer stays fp32, on the same names
    plan_yaml.write_text(f"layers:\n  {linears[0]}: int8\n  model.{linears[0]}: int8\n")
    with pytest.raises(ConfigError, match="planned twice"):
        _plan(loaded, tgt, "int8", read_plan_file(plan_yaml, tgt), Steps(show=False))


def test_a_planned_artifact_that_does_not_compute_its_plan_is_not_written(lm_dir, tmp_path, monkeypatch):
    """A lowering that loses the model's function (here: the head's input negated and
    magnified on the way in) is caught by the verified KL against the plan's prediction:
    an error, nothing written."""
    import copy

    import torch

    from edgeq.backends import get_backend
    from edgeq.errors import ExportError
    from edgeq.export import export

    be = get_backend("onnx")
    real = be.lower_lm

    def broken(lm, *args, **kwargs):
        lm = copy.deepcopy(lm)
        with torch.no_grad():
            lm.model.norm.weight.mul_(-50)
        return real(lm, *args, **kwargs)

    monkeypatch.setattr(be, "lower_lm", broken)
    budget = (_param_bytes(lm_dir, 4.5) + _param_bytes(lm_dir, 8.5)) // 2 + 60_000
    out = tmp_path / "art"
    with pytest.raises(ExportError, match="does not compute what the plan"):
        export(str(lm_dir), "x86", budget_bytes=budget, max_context=CONTEXT, output=out)
    assert not out.exists()
