"""Efficiency factors for emulated profiling: the fraction of a unit's peak a runtime reaches.

Two kinds of figures:

- **Fitted** (``efficiency_fitted.json`` beside this file, written by
  ``benchmarks/fit_emulation.py``): for the CPU runtimes that run on this kind of host —
  ExecuTorch's XNNPACK delegate and portable kernels, ONNX Runtime's CPU provider — from
  latencies and per-op times measured here, against the host's peak throughput and
  measured memory bandwidth. The file records when, on which CPU, from which artifacts,
  and the residuals.
- **Assumed** (``ACCELERATOR_DEFAULTS`` below): GPU, NPU and Neural Engine factors, which
  cannot be measured without the device. They are round, unfitted figures, reported as
  assumptions with every estimate that uses them.

Keys per runtime: ``gemm.<dtype>`` / ``gemm`` / ``compute`` (fraction of one core's peak
FLOPs for matrix products, then for everything else), ``parallel`` (what each further
thread adds, as a fraction of its core's peak), ``memory`` (fraction of memory
bandwidth), ``op_us`` (fixed cost per op), ``call_us`` (per delegate call), ``run_us`` (per
inference), ``slowdown.<op>`` (a multiplier on one op type's roofline time, for a kernel
far slower than the rest of its kind).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

FITTED_FILE = Path(__file__).with_name("efficiency_fitted.json")

# Used for a CPU runtime when no fitted file is present (a fresh checkout before the fit
# was run, or a runtime the fit had no data for).
# estimate: not measured; round figures of the order XNNPACK / MLAS reach on transformer
# GEMMs (a fraction of peak) and of a streaming kernel's share of DRAM bandwidth.
CPU_DEFAULTS: dict[str, float] = {"gemm": 0.3, "compute": 0.1, "memory": 0.5, "op_us": 5.0, "call_us": 10.0,
                                  "run_us": 50.0, "parallel": 0.8}

# estimate: NOT fitted (no such device is attached to the machine that fits the factors).
# Round figures, below the CPU's so that an accelerator is not flattered: a GEMM-heavy
# transformer reaching about a fifth of a mobile GPU's / NPU's / Neural Engine's peak,
# streaming ops half the memory bandwidth, ~10 us per dispatched op on a GPU (a compute
# shader launch), a few us per op inside an NPU graph, and a fixed cost per delegate call
# for handing buffers to the accelerator. Treat such estimates as order-of-magnitude.
ACCELERATOR_DEFAULTS: dict[str, dict[str, float]] = {
    "gpu": {"gemm": 0.2, "compute": 0.1, "memory": 0.5, "op_us": 10.0, "call_us": 200.0, "run_us": 0.0},
    "npu": {"gemm": 0.2, "compute": 0.05, "memory": 0.5, "op_us": 3.0, "call_us": 300.0, "run_us": 0.0},
    "neural-engine": {"gemm": 0.2, "compute": 0.05, "memory": 0.5, "op_us": 3.0, "call_us": 300.0, "run_us": 0.0},
}


@lru_cache(maxsize=1)
def fitted() -> dict[str, Any]:
    """The fitted factors and their provenance (``{}`` when the fit was never run)."""
    if not FITTED_FILE.exists():
        return {}
    return json.loads(FITTED_FILE.read_text())


def factors(runtime: str, unit: str) -> tuple[dict[str, float], str]:
    """The factors for ``runtime`` (xnnpack, portable, onnx, ...) on ``unit`` (cpu, gpu,
    npu, neural-engine) and where they come from: ``"fitted"``, ``"default"`` or ``"assumed"``."""
    if unit != "cpu":
        return ACCELERATOR_DEFAULTS[unit], "assumed"
    table = fitted().get("runtimes", {}).get(runtime)
    if table:
        return {**CPU_DEFAULTS, **table}, "fitted"
    return CPU_DEFAULTS, "default"


def compute_factor(table: dict[str, float], kind: str, dtype: str, weights: str, op: str = "") -> float:
    """The most specific compute factor: gemm.int8.ConvInteger (one op type), gemm.int8.w4
    (weight width), gemm.int8, gemm, compute."""
    keys = (f"{kind}.{dtype}.{op}" if op else None,
            f"{kind}.{dtype}.w{weights[3:]}" if weights.startswith("int") else None, f"{kind}.{dtype}", kind)
    for key in keys:
        if key and key in table:
            return table[key]
    return table["compute"]
