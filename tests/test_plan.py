"""Per-layer planning: sensitivity + solver within a budget, plans as YAML values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeq.backends import get_backend
from edgeq.errors import ConfigError
from edgeq.export import export
from edgeq.planning.planner import BudgetError, plan
from tests.conftest import run_cli


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """One sensitivity / fp32-probe cache for this module: each model's ExecuTorch probe
    lowering runs once, and later tests plan from the cache (as a user's second plan does)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEQ_CACHE_DIR", str(tmp_path_factory.mktemp("plan-cache")))
        yield


def test_budget_is_met_and_more_budget_means_less_error():
    tight = plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=25_000)
    loose = plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000)
    assert tight.predicted_bytes <= 25_000 and loose.predicted_bytes <= 60_000
    assert loose.predicted_error <= tight.predicted_error
    assert "int4-g32" in tight.plan.names().values()


def test_infeasible_budget_names_the_smallest_achievable():
    with pytest.raises(BudgetError, match=r"below the smallest achievable plan \(0\.0\d+ MB\)"):
        plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=1_000)


def test_rules_pin_layers_and_bad_rules_are_errors():
    result = plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000, rules=["^fc2$=int4-g32"])
    assert result.plan.names()["fc2"] == "int4-g32" and {f: s.name for f, s in result.pinned.items()} == {"fc2": "int4-g32"}
    with pytest.raises(ConfigError, match="matches no layer"):
        plan("tests.tiny_models:tiny_text", "rpi5", rules=["decoder=int8"])
    with pytest.raises(ConfigError, match="unknown scheme 'int3'"):
        plan("tests.tiny_models:tiny_text", "rpi5", rules=["fc1=int3"])


def test_plan_yaml_round_trip_through_export(tmp_path: Path):
    # RTN only: an x86 (ONNX) plan may otherwise choose int4-gN-hqq, which ExecuTorch refuses
    result = plan("tests.tiny_models:tiny_text", "x86", budget_bytes=25_000, algorithms=["rtn"])
    f = tmp_path / "plan.yaml"
    f.write_text(result.to_yaml())
    exported = export("tests.tiny_models:tiny_text", "x86", plan_file=f, output=tmp_path / "art-x86")
    assert exported.manifest.precision.layers == result.plan.names()
    with pytest.raises(ConfigError, match="made for format 'onnx'"):  # another target's plan: refused...
        export("tests.tiny_models:tiny_text", "rpi5", plan_file=f, output=tmp_path / "art-rpi5")
    reuse = tmp_path / "reuse.yaml"  # ...unless the user removes what it was made for
    reuse.write_text("\n".join(line for line in f.read_text().splitlines()
                               if not line.startswith(("target:", "format:"))))
    exported = export("tests.tiny_models:tiny_text", "rpi5", plan_file=reuse, output=tmp_path / "art-rpi5")
    assert exported.manifest.precision.layers == result.plan.names()


def test_export_with_budget_records_predicted_and_verified_error(tmp_path: Path):
    exported = export("tests.tiny_models:tiny_text", "rpi5", budget_bytes=25_000, output=tmp_path / "a")
    p = exported.manifest.plan
    assert p.budget_bytes == 25_000 and p.predicted_bytes <= 25_000
    assert p.verified_error is not None and p.verified_error < 0.05
    assert p.error_metric == "1 - cosine"


def test_bad_plan_files(tmp_path: Path):
    bad = tmp_path / "p.yaml"
    bad.write_text("layers:\n  fc1: int8\n  fc9: int8\n")
    proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", "rpi5", "--plan", str(bad), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "p.yaml:3: unknown layer 'fc9'; did you mean 'fc" in proc.stderr
    bad.write_text("layers:\n  fc1: int5\n")
    proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", "rpi5", "--plan", str(bad), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unknown scheme 'int5'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_corrupt_cache_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000)
    for f in (tmp_path / "cache").rglob("*.json"):
        f.write_text("{not json")
    with pytest.raises(ConfigError, match="sensitivity cache .* is corrupt"):
        plan("tests.tiny_models:tiny_text", "rpi5", budget_bytes=60_000)


def test_plan_cli_prints_table_and_writes_yaml(tmp_path: Path):
    out = tmp_path / "plan.yaml"
    proc = run_cli("plan", "tests.tiny_models:tiny_text", "-t", "rpi5", "--budget", "30KB", "-o", str(out),
                   env={"EDGEQ_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    assert "cumulative" in proc.stdout and "embed" in proc.stdout
    assert "layers:" in out.read_text()
    js = run_cli("plan", "tests.tiny_models:tiny_text", "-t", "rpi5", "--budget", "30KB", "--json",
                 env={"EDGEQ_CACHE_DIR": str(tmp_path / "c")})
    assert json.loads(js.stdout)["predicted"]["bytes"] <= 30_000
    bad = run_cli("plan", "tests.tiny_models:tiny_text", "-t", "rpi5", "--budget", "lots")
    assert bad.returncode == 2 and "cannot read budget 'lots'" in bad.stderr


def test_memory_budget_binds_and_the_plan_fits_it():
    free = plan("tests.tiny_models:tiny_text", "rpi5")
    assert free.binding == "none" and set(free.plan.names().values()) == {"fp32"}
    assert free.memory is not None and free.memory.total_bytes > free.predicted_bytes  # + activations + runtime
    budget = free.memory.total_bytes - 50_000
    tight = plan("tests.tiny_models:tiny_text", "rpi5", memory_budget_bytes=budget)
    assert tight.binding == "memory" and tight.memory.total_bytes <= budget
    assert tight.memory.activation_bytes == free.memory.activation_bytes  # arena does not depend on the schemes
    assert tight.predicted_error > 0 and set(tight.plan.names().values()) != {"fp32"}


def test_onnx_memory_budget_uses_bytes_as_held():
    free = plan("tests.tiny_models:tiny_text", "x86")
    budget = free.memory.total_bytes - 60_000
    tight = plan("tests.tiny_models:tiny_text", "x86", memory_budget_bytes=budget)
    assert tight.memory.total_bytes <= budget < free.memory.total_bytes
    held = sum(get_backend("onnx").held_bytes(x, tight.plan.schemes[x.fqn]) for x in tight.layers)
    assert tight.memory.weights_bytes == held + tight.other_bytes


def test_memory_budget_below_the_minimum_names_the_smallest():
    with pytest.raises(BudgetError, match=r"memory budget 1\.0 MB \(--memory-budget\) is below the smallest "
                                          r"achievable predicted peak memory \(\d+\.\d MB: weights"):
        plan("tests.tiny_models:tiny_text", "rpi5", memory_budget_bytes=1_000_000)


@pytest.mark.parametrize("target", ["rpi4", "x86-executorch"])  # int schemes only; fp16 allowed too
def test_export_with_memory_budget_fits_the_lowered_prediction(tmp_path: Path, target: str):
    from edgeq.planning import memory

    free = plan("tests.tiny_models:tiny_text", target)
    budget = free.memory.total_bytes - 50_000
    exported = export("tests.tiny_models:tiny_text", target, memory_budget_bytes=budget,
                      output=tmp_path / "a", samples=4)
    m = exported.manifest
    assert m.plan.binding == "memory" and m.plan.memory_budget_bytes == budget
    again = memory.predict_from_artifact(tmp_path / "a")  # from the manifest's inventory alone
    assert again.total_bytes == m.memory.predicted.total_bytes <= budget
    arena = m.memory.predicted.activation_bytes
    if target == "rpi4":
        # with int schemes the arena planned on an fp32 lowering is the lowered artifact's own
        assert arena == free.memory.activation_bytes
    else:
        # fp16 layers pass fp16 activations (half the bytes): the fp32 arena is an upper bound
        assert "fp16" in m.precision.layers.values() and arena < free.memory.activation_bytes


def test_uniform_export_over_the_target_memory_budget_is_refused(tmp_path: Path):
    tgt = tmp_path / "small.yaml"
    tgt.write_text("extends: x86\nname: small\nbudgets:\n  runtime_memory_mb: 1\n  storage_mb: 100\n")
    r = run_cli("export", "tests.tiny_models:tiny_text", "--target", str(tgt), "--precision", "int8",
                "-o", str(tmp_path / "a"))
    assert r.returncode == 2 and "over the 1 MB memory budget (target 'small'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()[-1]) > 0
    assert not (tmp_path / "a").exists()


def test_plan_file_with_a_precision_the_target_disallows(tmp_path: Path):
    f = tmp_path / "plan.yaml"
    f.write_text("layers:\n  fc1: fp16\n")
    with pytest.raises(ConfigError, match="does not allow"):
        export("tests.tiny_models:tiny_text", "rpi4", plan_file=f, output=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_layers_that_cannot_take_a_scheme_are_marked():
    result = plan("tests.tiny_models:tiny_mlp", "x86", budget_bytes=20_000)
    assert result.excluded == {"0": {"int4-g128": "reduction dim 64 is not a multiple of 128"}}
    assert "int4-g128" not in result.sensitivity["0"] and "int4-g128" in result.sensitivity["2"]
    assert "cannot_take" in result.to_yaml()


def test_the_summary_gives_one_line_per_reason_however_many_layers_share_it():
    from edgeq.export_report import excluded_lines

    why = {"int4-g128": "reduction dim 576 is not a multiple of 128"}
    excluded = {f"layers.{i}.q_proj": dict(why) for i in range(200)}
    excluded["head"] = {"int4-g64": "reduction dim 96 is not a multiple of 64"}
    lines = excluded_lines(excluded)
    assert lines == ["int4-g128 (reduction dim 576 is not a multiple of 128): layers.0.q_proj, layers.1.q_proj, "
                     "layers.2.q_proj and 197 more",
                     "int4-g64 (reduction dim 96 is not a multiple of 64): head"]


@pytest.mark.slow  # two ExecuTorch lowerings of a tiny BERT, ~50 s: with the slow tests
def test_unused_and_folded_layers_are_pinned_at_the_bytes_the_export_stores(tiny_bert_dir: Path, tmp_path: Path):
    """BERT's pooler is never called (0 bytes); on ExecuTorch its position and token-type
    lookups read constants only and are folded into fp32 results (tokens × hidden × 4 bytes),
    so the plan keeps them fp32 and counts those bytes; the exported file agrees."""
    ids = ("model.pooler.dense", "model.embeddings.position_embeddings", "model.embeddings.token_type_embeddings")
    et = plan(str(tiny_bert_dir), "x86-executorch", budget_bytes=150_000, seq_len=32)
    pooler, position, token_type = ids
    assert et.layer_bytes[pooler] == 0 and "never called" in et.plan.reasons[pooler]
    for fqn in (position, token_type):
        assert et.plan.names()[fqn] == "fp32" and "folds it" in et.plan.reasons[fqn]
        assert et.layer_bytes[fqn] == 32 * 64 * 4  # the folded (1, 32, 64) fp32 lookup, not the table
    assert et.predicted_bytes <= 150_000
    onnx = plan(str(tiny_bert_dir), "x86", budget_bytes=150_000, seq_len=32)
    assert onnx.layer_bytes[pooler] == 0
    assert position not in onnx.plan.reasons  # ONNX keeps the lookup: planned like any embedding
    art = export(str(tiny_bert_dir), "x86-executorch", budget_bytes=150_000, seq_len=32, output=tmp_path / "et")
    m = art.manifest
    assert m.memory.folded_layers == {position: 32 * 64 * 4, token_type: 32 * 64 * 4}
    assert m.precision.layers[pooler] == "unused"
    # The layers' bytes as planned are what the lowering stored: no re-plan was needed.
    assert not any("re-planning" in n for n in m.notes), m.notes


@pytest.mark.parametrize("target", ["x86-executorch", "x86"])
def test_fp16_layers_mix_with_int_layers(tmp_path: Path, target: str):
    """A plan with fp16, int8, int4 and fp32 layers exports as asked in both formats; the fp16
    layer's weight is stored in half the bytes (artifact smaller than the all-fp32-but-int one)."""
    f = tmp_path / "plan.yaml"
    f.write_text("layers:\n  embed: int4-g32\n  fc1: fp16\n  fc2: int8\n")
    mixed = export("tests.tiny_models:tiny_text", target, plan_file=f, output=tmp_path / "mixed")
    assert mixed.manifest.precision.layers == {"embed": "int4-g32", "fc1": "fp16", "fc2": "int8"}
    assert mixed.manifest.numerics.cosine_min > 0.995
    f.write_text("layers:\n  embed: int4-g32\n  fc1: fp32\n  fc2: int8\n")
    wider = export("tests.tiny_models:tiny_text", target, plan_file=f, output=tmp_path / "wider")
    saved = wider.manifest.sizes.artifact_bytes - mixed.manifest.sizes.artifact_bytes
    assert saved >= 0.9 * 64 * 128 * 2  # fc1's 8192 weights at 2 bytes instead of 4


def test_fp16_is_a_planning_candidate_and_the_sqnr_proxy_orders_schemes():
    result = plan("tests.tiny_models:tiny_text", "x86-executorch", budget_bytes=60_000)
    assert all("fp16" in result.sensitivity[f] for f in ("embed", "fc1", "fc2"))
    sqnr = plan("tests.tiny_models:tiny_text", "x86-executorch", budget_bytes=60_000, proxy="sqnr")
    for fqn in ("embed", "fc1", "fc2"):
        e = sqnr.sensitivity[fqn]
        assert 0 == e["fp32"] < e["fp16"] < e["int8"] < e["int4-g32"], e


@pytest.fixture(scope="module")
def tied_lm_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tied-lm")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("target", [pytest.param("x86-executorch", marks=pytest.mark.slow), "x86"])
def test_a_tied_lm_head_is_planned_and_quantized_as_its_own_layer(tied_lm_dir: Path, tmp_path: Path, target: str):
    """The head shares the embedding's table, but the runtimes hold it as a second matrix:
    it is a layer of the inventory and of plans, and an int8 head is stored as int8."""
    from edgeq.planning.inventory import layer_inventory
    from edgeq.models import load_model

    layers = {x.fqn: x for x in layer_inventory(load_model(str(tied_lm_dir), seq_len=16).module)}
    head = layers["model.lm_head"]
    assert head.tied == "model.model.embed_tokens" and head.shape == (512, 64)
    f = tmp_path / "plan.yaml"
    sizes = {}
    for scheme in ("int8", "fp32"):
        f.write_text(f"layers:\n  model.model.embed_tokens: int8\n  model.lm_head: {scheme}\n")
        art = export(str(tied_lm_dir), target, plan_file=f, seq_len=16, output=tmp_path / scheme, samples=4)
        assert art.manifest.precision.layers["lm_head"] == scheme  # the LLM artifact names the model's own layers
        assert art.manifest.numerics.top1_agreement >= 0.9
        sizes[scheme] = art.manifest.sizes.artifact_bytes
    # 512 x 64 fp32 (131 KB) vs int8 (33-68 KB with scales / ONNX's 128-blocks padding K=64)
    assert sizes["fp32"] - sizes["int8"] > 60_000, sizes
    planned = plan(str(tied_lm_dir), target, budget_bytes=sizes["int8"], seq_len=16)
    assert planned.plan.names()["model.lm_head"] != "fp32"
