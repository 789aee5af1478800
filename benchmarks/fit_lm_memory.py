#!/usr/bin/env python
"""Fit: the runtime overhead of an ONNX Runtime LLM session, from fresh-process generations.

For each random decoder (Llama with one KV buffer per layer, GPT-2 with its cache grown per
call), exported at fp32 with ``edgeq export -t x86 --max-context C``, this script generates
from a 64-token prompt until the context is full (``edgeq.llm.measure``, a fresh process),
and sets the model-attributable peak beside ``edgeq.llm.memory.predict_lm_peak``'s weights,
KV cache and activations: what is left is the session's own overhead. It prints each row,
the median overhead over the fit rows (robust to the few MiB glibc's malloc arenas add on a
loaded host), and the held-out row's error with that overhead (the
model of ``tests/test_llm_memory.py``, never in the fit).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fit_lm_memory.py [--out benchmarks/results/lm_memory_onnx.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (architecture, layers, hidden, context); the held-out row is the memory test's model
FIT = [("llama", 16, 128, 1024), ("llama", 8, 128, 2048), ("llama", 4, 256, 2048), ("llama", 16, 128, 512),
       ("llama", 2, 128, 512), ("gpt2", 8, 128, 1024), ("gpt2", 8, 128, 512)]
HELD_OUT = [("llama", 16, 128, 2048)]
PROMPT = 64
MIB = 2**20


def _model(path: Path, arch: str, layers: int, hidden: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from tests import tiny_lms

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=256, n_embd=hidden, n_layer=layers, n_head=8, n_positions=4096,
                         bos_token_id=1, eos_token_id=2)
    else:
        cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
                          initializer_range=0.02)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
    tiny_lms.tokenizer().save_pretrained(path)
    return path


def measure(work: Path, arch: str, layers: int, hidden: int, context: int) -> dict:
    from edgeq.llm.measure import measure_generation
    from edgeq.llm.memory import predict_lm_peak

    name = f"{arch}-{layers}x{hidden}-{context}"
    model = _model(work / f"{name}-hf", arch, layers, hidden)
    art = work / name
    proc = subprocess.run([str(Path(sys.executable).parent / "edgeq"), "export", str(model), "-t", "x86", "-p", "fp32",
                           "--max-context", str(context), "--samples", "2", "-o", str(art)], capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    got = measure_generation(art, prompt_tokens=PROMPT, new_tokens=context - PROMPT)["memory"]["model_attributable_bytes"]
    est = predict_lm_peak(art, prompt_tokens=PROMPT)
    layout = json.loads((art / "manifest.json").read_text())["llm"].get("kv_cache_layout")
    return {"model": name, "kv_layout": layout, "measured_mib": got / MIB, "weights_mib": est.weights_bytes / MIB,
            "kv_cache_mib": est.kv_cache_bytes / MIB, "activations_mib": est.activation_bytes / MIB,
            "overhead_mib": (got - est.weights_bytes - est.kv_cache_bytes - est.activation_bytes) / MIB,
            "predicted_mib": est.total_bytes / MIB, "predicted_overhead_mib": est.runtime_overhead_bytes / MIB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lm_memory_onnx.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeq-lm-memory-"))
    rows = []
    for role, cases in (("fit", FIT), ("held-out", HELD_OUT)):
        for case in cases:
            rows.append({"role": role, **measure(work, *case)})
            r = rows[-1]
            print(f"{role:8} {r['model']:22} {r['kv_layout']:26} measured {r['measured_mib']:6.2f} MiB  "
                  f"weights {r['weights_mib']:5.2f}  kv {r['kv_cache_mib']:5.2f}  act {r['activations_mib']:4.2f}  "
                  f"overhead {r['overhead_mib']:5.2f}  (predicted now {r['predicted_mib']:6.2f})", flush=True)
    fit = [r["overhead_mib"] for r in rows if r["role"] == "fit"]
    overhead = statistics.median(fit)
    print(f"session overhead: median {overhead:.2f} MiB over {len(fit)} fit rows (min {min(fit):.2f}, max {max(fit):.2f})")
    for r in rows:
        if r["role"] == "held-out":
            pred = r["predicted_mib"] - r["predicted_overhead_mib"] + overhead
            r["error_with_fit"] = (pred - r["measured_mib"]) / r["measured_mib"]
            print(f"held-out {r['model']}: predicted {pred:.2f} MiB with the fitted overhead, measured "
                  f"{r['measured_mib']:.2f} ({r['error_with_fit']:+.1%})")
    args.out.write_text(json.dumps({"fit_overhead_mib": overhead, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
