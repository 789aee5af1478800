"""Perplexity on held-out text in an LLM export's manifest (``llm.perplexity``): the figure
recorded for a GGUF equals one recomputed independently (windows cut here, whole rows from
llama.cpp in a process of their own, log-softmax by hand), its reference equals eager
transformers' (``check_recorded_perplexity``, run by ``test_gguf_backend`` on its F32 export), and held-out text a user gives that cannot be scored is one line, exit 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import tiny_lms
from tests.conftest import built_once, cli_here

CONTEXT = 64
EVAL_TOKENS = 150  # three windows of 63 scored tokens, the last one cut short
# a user's text with characters of two and three UTF-8 bytes
TEXT = ("The list holds a new object, and the value of the first item is returned — naïve code, "
        "but it works. Les données sont lues à partir du fichier.\n\n") * 12


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny-bpe-llama", lambda p: tiny_lms.save_tiny_bpe_lm(p, "llama"))


def windows_by_hand(ids: list[int], window: int, cap: int, bos: int | None = None) -> list[list[int]]:
    """``ids`` in consecutive windows of ``window`` (each after ``bos`` when given), cut after
    ``cap`` scored tokens (a window of n + 1 ids scores n)."""
    step = window - (bos is not None)
    out, left = [], cap
    for i in range(0, len(ids), step):
        if left < 1:
            break
        w = ([bos] if bos is not None else []) + ids[i:i + step]
        out.append(w[: left + 1])
        left -= len(out[-1]) - 1
    return out


def _windows_by_hand() -> list[list[int]]:
    """TEXT's ids (the tiny tokenizer adds no BOS) at CONTEXT, EVAL_TOKENS scored."""
    return windows_by_hand(tiny_lms.bpe_tokenizer()(TEXT, add_special_tokens=False)["input_ids"], CONTEXT, EVAL_TOKENS)


def ppl_by_hand(rows: list[np.ndarray], windows: list[list[int]]) -> float:
    nll = 0.0
    for r, w in zip(rows, windows):
        x = np.asarray(r, dtype=np.float64)
        logp = x - x.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        nll -= sum(logp[j, w[j + 1]] for j in range(len(w) - 1))
    return float(np.exp(nll / sum(len(w) - 1 for w in windows)))


def check_recorded_perplexity(scored: Path, llama_dir: Path, tmp_path: Path) -> None:
    """``scored``: an F32 GGUF of ``llama_dir`` exported with ``--eval-text`` (a file of TEXT)
    ``--eval-tokens EVAL_TOKENS`` at ``--max-context CONTEXT`` (``test_gguf_backend``'s
    ``f32_artifact``, one export for both files)."""
    held = json.loads((scored / "manifest.json").read_text())["llm"]["perplexity"]
    windows = _windows_by_hand()
    assert held["text"] == "--eval-text heldout.txt"
    assert held["text_sha256"] == hashlib.sha256(TEXT.encode("utf-8")).hexdigest()
    assert (held["tokens"], held["windows"], held["window"]) == (EVAL_TOKENS, len(windows), CONTEXT)
    assert "llama.cpp" in held["runtime"]
    # llama.cpp's whole rows for every position, in a fresh process (not the export's top-k scoring)
    code = ("import json, sys\nimport numpy as np\nfrom edgeq.backends import get_backend\n"
            f"s = get_backend('gguf').open_lm({str(scored)!r}, 'model.gguf')\n"
            f"windows = json.loads({json.dumps(windows)!r})\n"
            f"np.savez({str(tmp_path / 'rows.npz')!r}, *[s.prefill(w, all_logits=True) for w in windows])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "rows.npz") as f:
        rows = [f[f"arr_{i}"] for i in range(len(windows))]
    assert held["perplexity"] == pytest.approx(ppl_by_hand(rows, windows), rel=1e-5)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        eager = [model(input_ids=torch.tensor([w])).logits[0].numpy() for w in windows]
    assert held["reference_perplexity"] == pytest.approx(ppl_by_hand(eager, windows), rel=1e-6)
    assert held["increase"] == pytest.approx(held["perplexity"] / held["reference_perplexity"] - 1, abs=1e-12)
    assert abs(held["increase"]) < 0.01  # F32 in llama.cpp against fp32 transformers


def test_edgeqs_own_text_is_the_language_reference_cut_at_the_token_cap():
    from edgeq.llm.perplexity import export_windows, heldout_text

    tok = tiny_lms.bpe_tokenizer()
    windows, held, window = export_windows(tok, None, CONTEXT, 100)
    assert held.sha256 == hashlib.sha256(heldout_text().text.encode("utf-8")).hexdigest()
    ids = tok(heldout_text().text, add_special_tokens=False)["input_ids"]
    assert window == CONTEXT and [len(w) for w in windows] == [64, 38]
    assert windows == [ids[:64], ids[64:102]]
    assert export_windows(tok, None, CONTEXT, 0) is None


def test_a_text_longer_than_the_cap_is_cut_at_a_character(tmp_path, monkeypatch):
    from edgeq.llm import perplexity

    monkeypatch.setattr(perplexity, "EVAL_TEXT_MAX_BYTES", 11)
    f = tmp_path / "t.txt"
    f.write_text("abcdefghé€x", encoding="utf-8")  # bytes 8-9 hold é, 10-12 hold €: the cap ends inside €
    held = perplexity.read_eval_text(f)
    assert held.text == "abcdefghé" and "first 10 bytes" in held.source


@pytest.mark.parametrize("content,expected", [(b"caf\xe9 au lait", "not UTF-8 text"), (b"", "holds no text"),
                                              (b"   \n\n", "holds no text"), (b"a\x00b", "NUL bytes"),
                                              (None, "no such file")])
def test_held_out_text_that_cannot_be_scored_is_one_line_exit_2(content, expected, llama_dir, tmp_path):
    f = tmp_path / "text.txt"
    if content is not None:
        f.write_bytes(content)
    proc = cli_here("export", str(llama_dir), "-t", "x86-gguf", "-p", "fp32", "--eval-text", str(f),
                    "-o", str(tmp_path / "a"), "--quiet")
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    assert expected in lines[0] and "--eval-text" in lines[0]
    assert not (tmp_path / "a").exists()


def test_held_out_text_for_an_encoder_is_refused(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("some text", encoding="utf-8")
    proc = cli_here("export", "tests.tiny_models:tiny_text", "-t", "x86", "--eval-text", str(f), "--quiet",
                    "-o", str(tmp_path / "a"))
    assert proc.returncode == 2 and "--eval-text applies to causal LMs only" in proc.stderr, proc.stderr
