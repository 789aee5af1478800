"""``edgeq export`` of a causal LM and ``edgeq run``, end to end through the CLI; sampling
checked against hand-computed probabilities; the bad-input cases (one line, exit 2)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import ConfigError, RunError
from edgeq.llm.generate import GenerationConfig, generate
from tests import tiny_lms
from tests.conftest import TINY_LLAMA_CONTEXT, cli_here, run_cli
from tests.helpers import hf_continuation

CONTEXT = TINY_LLAMA_CONTEXT


@pytest.fixture(scope="module")
def lm_dir(tiny_llama_dir) -> Path:
    return tiny_llama_dir


@pytest.fixture(scope="module")
def artifact(tiny_llama_artifacts) -> Path:
    return tiny_llama_artifacts("x86-executorch")


def stats(stderr: str) -> dict[str, float]:
    found = re.search(r"prefill ([\d.]+) tokens/s, decode ([\d.]+) tokens/s, time to first token (\d+) ms, "
                      r"peak RSS (\d+) MB", stderr)
    assert found, stderr
    return dict(zip(("prefill", "decode", "ttft_ms", "rss_mb"), map(float, found.groups())))


def test_manifest_describes_the_llm(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    llm = manifest["llm"]
    assert llm["max_context"] == CONTEXT and llm["vocab_size"] == 256 and llm["eos_token_ids"] == [2]
    assert llm["kv_cache_bytes"] == 2 * 2 * 2 * CONTEXT * 16 * 4  # layers x K,V x kv heads x positions x head dim x fp32
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(llm["tokenizer_files"]) and llm["chat_template"]
    assert llm["verification"]["identical_prompts"] == llm["verification"]["prompts"] >= 1  # fp32: identical
    assert manifest["numerics"]["top1_agreement"] == 1.0
    assert (artifact / "generation_config.json").exists() and (artifact / "model.pte").exists()
    assert not list(artifact.parent.glob(".*staging*"))


@pytest.mark.parametrize("target", ["x86-executorch", "x86"])
def test_the_manifest_records_perplexity_on_edgeqs_held_out_text(target, tiny_llama_artifacts, lm_dir):
    """ExecuTorch and ONNX exports score edgeq's own held-out text through the same path as
    GGUF's: the recorded figures equal the artifact's whole rows and transformers' logits on
    windows cut here, with a hand log-softmax."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeq.backends import get_backend
    from edgeq.llm.perplexity import EVAL_TOKENS, heldout_text
    from tests.test_llm_heldout import ppl_by_hand, windows_by_hand

    out = tiny_llama_artifacts(target)
    manifest = json.loads((out / "manifest.json").read_text())
    held = manifest["llm"]["perplexity"]
    text = heldout_text()
    tok = tiny_lms.tokenizer()
    bos = tok.bos_token_id if tok("a")["input_ids"][:1] == [tok.bos_token_id] else None
    windows = windows_by_hand(tok(text.text, add_special_tokens=False)["input_ids"], CONTEXT, EVAL_TOKENS, bos)
    assert (held["tokens"], held["windows"], held["text_sha256"]) == (EVAL_TOKENS, len(windows), text.sha256)
    session = get_backend(manifest["target"]["format"]).open_lm(out / manifest["model_file"])
    try:
        rows = [session.prefill(w, all_logits=True) for w in windows]
    finally:
        session.close()
    assert held["perplexity"] == pytest.approx(ppl_by_hand(rows, windows), rel=1e-6)
    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    with torch.no_grad():
        eager = [model(input_ids=torch.tensor([w])).logits[0].numpy() for w in windows]
    assert held["reference_perplexity"] == pytest.approx(ppl_by_hand(eager, windows), rel=1e-6)
    assert abs(held["increase"]) < 1e-3 and held["runtime"] == manifest["numerics"]["runtime"]


def test_run_streams_transformers_greedy_text(artifact, lm_dir):
    prompt = "the value of the list is a new object and"
    tok = tiny_lms.tokenizer()
    expected = tok.decode(hf_continuation(lm_dir, tok(prompt)["input_ids"], 12), skip_special_tokens=True)
    proc = cli_here("run", str(artifact), "--prompt", prompt, "--max-new-tokens", "12")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected.strip() and expected.strip()
    figures = stats(proc.stderr)
    assert figures["prefill"] > 0 and figures["rss_mb"] > 50


def test_run_chat_uses_the_bundled_template(artifact, lm_dir):
    tok = tiny_lms.tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "what is the capital of france ?"}],
                                  add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert tok.convert_tokens_to_ids("<|assistant|>") == ids[-1]
    expected = tok.decode(hf_continuation(lm_dir, ids, 10), skip_special_tokens=True)
    proc = cli_here("run", str(artifact), "--prompt", "what is the capital of france ?", "--chat",
                   "--max-new-tokens", "10")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected.strip()


def test_sampling_with_a_seed_repeats(artifact):
    args = ("run", str(artifact), "--prompt", "the file name", "--max-new-tokens", "8",
            "--temperature", "1.5", "--top-p", "0.95", "--seed", "7")
    first, second = cli_here(*args), cli_here(*args)  # in-process: the same stdout, no fresh interpreter
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()


# ------------------------------------------------------------------------- sampling by hand


class FixedLogits:
    """An LMSession whose next-token logits never change."""

    max_context, vocab_size, runtime = 100_000, 3, "fixed logits"

    def __init__(self, logits):
        self.logits = np.asarray(logits, dtype=np.float32)

    def prefill(self, ids, *, all_logits=False):
        return self.logits

    def decode(self, token):
        return self.logits

    def reset(self):
        pass

    def close(self):
        pass


def test_temperature_and_top_p_follow_softmax():
    session = FixedLogits([0.0, 1.0, 2.0])
    n = 6000
    tokens = generate(session, [0], GenerationConfig(max_new_tokens=n, temperature=0.5, seed=1)).tokens
    p = np.exp(np.array([0.0, 2.0, 4.0]))  # softmax(logits / 0.5), by hand
    p /= p.sum()
    freq = np.bincount(tokens, minlength=3) / n
    assert np.abs(freq - p).max() < 0.02
    # top-p 0.5: the top token alone already holds 0.67 at temperature 1
    tokens = generate(session, [0], GenerationConfig(max_new_tokens=200, temperature=1.0, top_p=0.5, seed=1)).tokens
    assert set(tokens) == {2}
    # top-p 0.8 keeps tokens 2 and 1 (0.665 + 0.245), renormalised
    tokens = generate(session, [0], GenerationConfig(max_new_tokens=4000, temperature=1.0, top_p=0.8, seed=2)).tokens
    freq = np.bincount(tokens, minlength=3) / 4000
    assert freq[0] == 0 and abs(freq[2] - 0.6652 / (0.6652 + 0.2447)) < 0.03
    # greedy, and EOS stops
    result = generate(session, [0], GenerationConfig(max_new_tokens=10), eos_ids={2})
    assert result.tokens == [2] and result.stopped_by == "eos"


def test_generation_options_are_checked():
    with pytest.raises(ConfigError):
        GenerationConfig(temperature=-1).check()
    with pytest.raises(ConfigError):
        GenerationConfig(top_p=0).check()
    with pytest.raises(RunError, match="context holds"):
        generate(FixedLogits([0, 1, 2]), [1] * 100_000)


# ------------------------------------------------------------------------- bad input


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def rewritten(artifact: Path, dest: Path, drop: list[str], edit=None) -> Path:
    """A copy of ``artifact`` without ``drop`` files and with a manifest that agrees with
    its files (as an export of such a model would write it)."""
    from edgeq.artifact import file_table, load_manifest, write_manifest
    from edgeq.manifest import Manifest

    shutil.copytree(artifact, dest)
    for rel in drop:
        (dest / rel).unlink()
    if edit:
        edit(dest)
    data = load_manifest(dest).model_dump(mode="json")
    data["files"] = file_table(dest)
    data["llm"]["tokenizer_files"] = [f for f in data["llm"]["tokenizer_files"] if (dest / f).exists()]
    write_manifest(dest, Manifest.model_validate(data))
    return dest


def test_prompt_longer_than_the_context(artifact):
    one_line_error(cli_here("run", str(artifact), "--prompt", " ".join(["the"] * (CONTEXT + 5))),
                   f"context holds {CONTEXT}")


def test_chat_without_a_template(artifact, tmp_path):
    def strip_template(dest):
        cfg = json.loads((dest / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (dest / "tokenizer_config.json").write_text(json.dumps(cfg))

    drop = ["chat_template.jinja"] if (artifact / "chat_template.jinja").exists() else []
    copy = rewritten(artifact, tmp_path / "no-template", drop, strip_template)
    one_line_error(cli_here("run", str(copy), "--prompt", "the file", "--chat"), "no chat template")
    assert cli_here("run", str(copy), "--prompt", "the file", "--max-new-tokens", "2").returncode == 0


def test_artifact_without_a_tokenizer(artifact, tmp_path):
    files = [f for f in json.loads((artifact / "manifest.json").read_text())["llm"]["tokenizer_files"]]
    copy = rewritten(artifact, tmp_path / "no-tokenizer", files)
    one_line_error(cli_here("run", str(copy), "--prompt", "the file"), "has no tokenizer")


def test_run_refuses_an_artifact_that_is_not_an_lm(tmp_path):
    out = tmp_path / "mlp"
    assert run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86-executorch", "-p", "fp32", "-o", str(out),
                   "--quiet").returncode == 0
    one_line_error(cli_here("run", str(out), "--prompt", "hello"), "is not an LLM artifact")


def test_max_context_above_the_model_positions(lm_dir, tmp_path):
    out = tmp_path / "too-long"
    one_line_error(run_cli("export", str(lm_dir), "-t", "x86-executorch", "--max-context", "1000", "-o", str(out),
                           "--quiet"),
                   "above the model's 128 positions")
    assert not out.exists()


def test_model_without_a_causal_lm_head(tmp_path):
    from tests.tiny_models import save_tiny_vit

    vit = save_tiny_vit(tmp_path / "vit")
    one_line_error(run_cli("export", str(vit), "-t", "x86-executorch", "--task", "causal-lm",
                           "-o", str(tmp_path / "out"), "--quiet"), "causal-lm")


def test_attention_the_runtime_cannot_compute_is_refused_before_any_work(tmp_path):
    from tests import tiny_lms

    lm = tiny_lms.save_tiny_lm(tmp_path / "gemma2", "gemma2")  # soft-capped attention logits
    out = tmp_path / "out"
    proc = run_cli("export", str(lm), "-t", "x86-executorch", "-p", "int4", "-o", str(out), "--quiet")
    one_line_error(proc, "soft-capped attention logits")
    assert "ONNX target" in proc.stderr
    assert not out.exists()
    # planning measures nothing for it either
    plan = tmp_path / "plan.yaml"
    one_line_error(run_cli("plan", str(lm), "-t", "x86-executorch", "--budget", "1MB", "-o", str(plan), "--quiet"),
                   "soft-capped attention logits")
    assert not plan.exists()


def test_sampling_options_without_sampling(tmp_path):
    # checked before the artifact is opened
    one_line_error(cli_here("run", str(tmp_path), "--prompt", "the", "--top-p", "0.9"), "--temperature")


def test_target_without_the_llm_delegate_is_refused():
    from types import SimpleNamespace

    from edgeq.backends import get_backend
    from edgeq.llm.export import _check_delegates
    from edgeq.progress import Steps

    be = get_backend("executorch")
    steps = Steps(show=False)
    with pytest.raises(ConfigError, match="none of xnnpack"):
        _check_delegates(be, SimpleNamespace(name="npu-only", format="executorch", delegates=["qnn"]), steps)
    _check_delegates(be, SimpleNamespace(name="phone", format="executorch", delegates=["qnn", "xnnpack"]), steps)
    assert steps.notes and "qnn" in steps.notes[0]  # not silently dropped


def test_onnx_export_and_run_give_transformers_greedy_text(lm_dir, tiny_llama_artifacts):
    """The same CLI flow for format onnx: export with a KV cache, then 'edgeq run' in ONNX
    Runtime streams the text eager transformers generates greedily."""
    out = tiny_llama_artifacts("x86")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_file"] == "model.onnx" and manifest["llm"]["max_context"] == CONTEXT
    prompt = "the value of the list is a new object and"
    tok = tiny_lms.tokenizer()
    expected = tok.decode(hf_continuation(lm_dir, tok(prompt)["input_ids"], 12), skip_special_tokens=True)
    ran = cli_here("run", str(out), "--prompt", prompt, "--max-new-tokens", "12")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == expected.strip() and expected.strip()
    assert "ONNX Runtime" in ran.stderr
