"""``edgeq profile`` on LLM artifacts: host generation figures checked against a direct
timing of the same session in this test, emulated decode estimates for every built-in
device checked against a hand count of the bytes a token moves, and bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_LLAMA_CONTEXT, cli_here

CONTEXT = TINY_LLAMA_CONTEXT
PROMPT, NEW = 16, 24


@pytest.fixture(scope="module")
def lm_dir(tiny_llama_dir) -> Path:
    return tiny_llama_dir


@pytest.fixture(scope="module", params=["x86", "x86-executorch"])
def artifact(request, tiny_llama_artifacts) -> Path:
    return tiny_llama_artifacts(request.param)


def _direct_decode_tokens_per_s(art: Path, prompt: list[int], steps: int, repeats: int = 3) -> float:
    """Decode speed of the artifact's own session, timed here around its decode calls."""
    from edgeq.artifact import read_artifact
    from edgeq.backends import get_backend

    manifest, model_file = read_artifact(art)
    session = get_backend(manifest.target.format).open_lm(model_file)
    best = 0.0
    try:
        for _ in range(repeats):
            token = int(np.argmax(session.prefill(prompt)))
            t0 = time.perf_counter()
            for _ in range(steps):
                token = int(np.argmax(session.decode(token)))
            best = max(best, steps / (time.perf_counter() - t0))
    finally:
        session.close()
    return best


def test_host_profile_counts_tokens_and_agrees_with_a_direct_timing(artifact):
    from edgeq.llm.measure import prompt_ids
    from edgeq.profiling import profile_artifacts

    report = profile_artifacts([artifact], prompt_tokens=PROMPT, new_tokens=NEW, runs=3, warmup=1)[0]
    lm = report["llm"]
    assert report["mode"] == "host" and report["estimate"] is False and report["runs"] == 3
    assert (lm["prompt_tokens"], lm["new_tokens"], lm["generated_tokens"]) == (PROMPT, NEW, [NEW] * 3)
    assert all(r["decode_steps"] == NEW - 1 and r["stopped_by"] == "max-new-tokens" for r in lm["runs"])
    # the per-token latency samples are the runs' decode seconds over their decode steps
    assert report["samples_ms"] == pytest.approx([1e3 * r["decode_s"] / (NEW - 1) for r in lm["runs"]])
    assert lm["time_to_first_token_ms"] == pytest.approx(1e3 * PROMPT / lm["prefill_tokens_per_s"], rel=0.5)
    direct = _direct_decode_tokens_per_s(artifact, prompt_ids(256, PROMPT), NEW - 1)
    # a shared 2-core machine: a broad factor, but a miscount (tokens, seconds) would fall outside it
    assert direct / 4 <= lm["decode_tokens_per_s"] <= direct * 4, (lm["decode_tokens_per_s"], direct)
    mem = report["memory"]
    assert mem["available"] and mem["peak_rss_bytes"] > mem["baseline_rss_bytes"] > 0
    assert mem["model_attributable_bytes"] > 0 and lm["predicted_memory"]["estimate"] is True


def test_emulated_estimates_every_builtin_device_and_counts_the_bytes_by_hand(artifact, lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeq.profiling import profile_artifacts
    from edgeq.targets import builtin_names, load_profile

    report = profile_artifacts([artifact], mode="emulated")[0]
    assert report["estimate"] is True and report["mode"] == "emulated"
    rows = {r["device"]: r for r in report["llm"]["decode_estimates"]}
    assert set(builtin_names("profiles")) <= set(rows)
    assert all(r["estimate"] is True and "ESTIMATE" in r["label"] for r in rows.values())
    # hand count for this fp32 tied-head llama: every linear incl. the head (vocab x hidden, the
    # embedding's tensor), one embedding row, the other float tensors (norms, rotary frequencies);
    # K and V of every layer read up to the position and written once
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    unique = {id(t): t.numel() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    others = sum(unique.values()) - linears  # the tied table is the head's tensor, counted once above
    cfg = model.config
    position = report["llm"]["position"]
    assert position == CONTEXT // 2
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    by_hand = 4 * (linears + cfg.hidden_size + others) + kv * (position + 1)
    for name, row in rows.items():
        assert row["bytes_per_token"] == by_hand, name
        if row["bound"] == "memory":
            gbps = load_profile(name).memory.bandwidth_gbps
            assert row["tokens_per_s"] == pytest.approx(gbps * 1e9 / by_hand, rel=1e-3)
    assert report["latency_ms"] == pytest.approx(rows[report["device"]]["ms_per_token"])


def test_cli_emulated_table_labels_estimates(artifact):
    proc = cli_here("profile", str(artifact), "--mode", "emulated")
    assert proc.returncode == 0, proc.stderr
    assert "ESTIMATE" in proc.stdout and "snapdragon-8-gen3" in proc.stdout and "snapdragon-8-gen1" in proc.stdout
    proc = cli_here("profile", str(artifact), "--mode", "emulated", "--json")
    data = json.loads(proc.stdout)
    assert data["estimate"] is True and len(data["llm"]["decode_estimates"]) >= 8


@pytest.mark.parametrize("args, expected", [
    (["--prompt-tokens", str(CONTEXT + 1)], "does not fit the artifact's context of 64"),
    (["--prompt-tokens", "40", "--new-tokens", "40"], "exceed the artifact's context of 64"),
    (["--mode", "device", "--device", "ssh://nobody@127.0.0.1"], "LLM artifacts is not available"),
])
def test_bad_input_is_one_line_exit_2(artifact, args, expected):
    proc = cli_here("profile", str(artifact), *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr


def test_threads_are_refused_where_the_llm_session_cannot_take_them(artifact):
    from edgeq.llm.profile import takes_threads
    from edgeq.manifest import Manifest

    fmt = Manifest.model_validate_json((artifact / "manifest.json").read_text()).target.format
    if takes_threads(fmt):
        pytest.skip(f"{fmt} LLM sessions take a thread count")
    proc = cli_here("profile", str(artifact), "--threads", "1")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --threads cannot be set"), proc.stderr
