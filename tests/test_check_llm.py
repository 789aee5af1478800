"""``edgeq check`` on decoder-LLM artifacts: memory at the context, next-token fidelity and
decode time per token, not the encoder gates' figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import tiny_lms
from tests.conftest import TINY_LLAMA_CONTEXT


def _check(paths, **kw):
    from edgeq.check import CheckOptions, check_artifacts

    return check_artifacts([str(p) for p in paths], CheckOptions(**kw))


def _target(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llm.yaml"
    path.write_text(text)
    return path


def _kv_bytes_by_hand(lm_dir: Path, context: int) -> int:
    c = json.loads((lm_dir / "config.json").read_text())
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * 4 * context


@pytest.mark.parametrize("target", ["x86", "x86-executorch"])
def test_an_llm_passes_with_its_peak_at_the_context_and_next_token_fidelity(tiny_llama_artifacts, tiny_llama_dir,
                                                                             target):
    art = tiny_llama_artifacts(target)
    [r] = _check([art], measure=True, latency_budget_ms=10_000)
    assert r.passed, [(g.gate, g.status, g.message) for g in r.gates]
    fit = r.gate("fit")
    assert f"generating to the {TINY_LLAMA_CONTEXT}-token context" in fit.message
    # The peak counts the KV cache at the context (by hand from the config) beside the weights.
    weights = (art / json.loads((art / "manifest.json").read_text())["model_file"]).stat().st_size
    assert fit.details["predicted_peak_bytes"] >= _kv_bytes_by_hand(tiny_llama_dir, TINY_LLAMA_CONTEXT) + weights * 0.9
    # --measure generated to the full context in a fresh process and held its peak RSS to the budget
    # (how close the prediction comes is tests/test_llm_memory.py's, on models where the cache dominates).
    assert fit.details["measured_peak_rss_bytes"] > fit.details["predicted_peak_bytes"]
    assert "measured peak RSS of a fresh process" in fit.message
    fid = r.gate("fidelity")
    assert fid.details["top1_agreement"] == 1.0 and fid.details["greedy"]["identical_prompts"] == fid.details["greedy"]["prompts"]
    lat = r.gate("latency")
    assert lat.details["measured"] and lat.figure.endswith("ms/token") and lat.details["decode_ms_per_token"] > 0


def test_an_llm_fails_fit_below_its_kv_cache_and_fidelity_against_another_model(tiny_llama_artifacts, tmp_path):
    art = tiny_llama_artifacts("x86")
    tgt = _target(tmp_path, "extends: x86\nbudgets:\n  runtime_memory_mb: 0.01\n  latency_ms: 0.000001\n")
    other = tiny_lms.save_tiny_lm(tmp_path / "other-llama", "llama", init=0.2)  # same shapes and tokenizer, other weights
    [r] = _check([art], target=str(tgt), model=str(other))
    failing = {g.gate for g in r.gates if g.status == "fail"}
    assert failing == {"fit", "fidelity", "latency"}, [(g.gate, g.status, g.message) for g in r.gates]
    assert "> 10.00 KB memory budget" in r.gate("fit").message
    assert r.gate("fidelity").details["top1_agreement"] < 0.9
    assert "ESTIMATE" in r.gate("latency").message  # no --measure: the device estimate, labelled


@pytest.mark.parametrize("target", ["x86", "x86-executorch"])
def test_the_cli_loads_an_llm_artifact_in_a_fresh_process(tiny_llama_artifacts, target):
    """``edgeq check`` alone in its process: the integrity gate's load must register every kernel
    an LLM program calls (ExecuTorch's ``llama.custom_sdpa`` / ``llama.update_cache``), not rely
    on another command having imported them earlier in the same process."""
    from tests.conftest import run_cli

    art = tiny_llama_artifacts(target)
    proc = run_cli("check", str(art), "--json")
    gates = {g["gate"]: g for g in json.loads(proc.stdout)["artifacts"][0]["gates"]}
    assert gates["integrity"]["status"] == "pass", gates["integrity"]["message"]
    assert f"loads in {json.loads((art / 'manifest.json').read_text())['target']['format']}" in gates["integrity"]["message"]
