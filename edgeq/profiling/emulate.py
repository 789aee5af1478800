"""Emulated profiling: estimate an artifact's latency on a device from its ops and the
device profile. Always an ESTIMATE, never a measurement.

For each op of the lowered graph (``edgeq.profiling.opgraph``): FLOPs, bytes moved, the dtype it
computes in, and the unit that runs it (the CPU for XNNPACK / portable kernels / ONNX
Runtime's CPU provider; the GPU for Vulkan; the NPU for QNN; the Neural Engine (or GPU)
for Core ML). Then a roofline per op::

    ms = max(flops / (peak[unit, dtype] * eff_compute), bytes / (bandwidth * eff_memory)) + op overhead

summed over the ops, plus a cost per delegate call and per inference. Peaks and
bandwidth come from the device profile; the efficiency factors from ``edgeq.profiling.efficiency``
(fitted on host measurements for the CPU runtimes; assumed for accelerators). The CPU
peak counts only the cores the threads run on (the fastest first); portable kernels run
on one core.

>>> from edgeq.targets import load_profile
>>> est = estimate("dist/all-MiniLM-L6-v2-x86", load_profile("rpi5"))  # doctest: +SKIP
>>> est["latency_ms"], est["bound_share"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeq.errors import ConfigError
from edgeq.hostcpu import usable_cpus
from edgeq.targets.schema import DeviceProfile

# Fallback order when a unit's profile lists no peak for the op's dtype.
_PEAK_FALLBACK = {"fp32": ("fp32", "fp16"), "fp16": ("fp16", "fp32"), "int8": ("int8", "fp16", "fp32")}
# ExecuTorch delegates and ONNX Runtime execution providers → (unit kind, profile API).
_ACCEL = {"coreml": (("neural-engine", "coreml"), ("gpu", "coreml")), "vulkan": (("gpu", "vulkan"),),
          "qnn": (("npu", "qnn"),), "nnapi": (("npu", "nnapi"),)}


def estimate(artifact_dir: str | Path, profile: DeviceProfile, *, threads: int | None = None) -> dict[str, Any]:
    """Estimated latency of ``artifact_dir`` on the device ``profile`` describes.

    ``threads``: CPU threads (default: the artifact's target's, at most the device's cores).
    Returns a JSON-able report: ``latency_ms``, per-op ``ops`` (name, op, dtype, unit,
    flops, bytes, bound, ms), ``bound_share``, the factors used and the assumptions made.
    """
    from edgeq.artifact import read_artifact
    from edgeq.profiling.efficiency import fitted
    from edgeq.profiling.opgraph import ops_from_artifact

    manifest, model_file = read_artifact(Path(artifact_dir))
    fmt = manifest.target.format
    ops = ops_from_artifact(model_file.parent)
    cores = profile.cpu.cores
    wanted = threads if threads is not None else manifest.target.threads or cores
    if wanted < 1:
        raise ConfigError(f"threads must be at least 1, got {wanted}", "leave it out to use the target's")
    used_threads = min(wanted, cores)
    assumptions: list[str] = []
    if wanted > cores:
        assumptions.append(f"{wanted} threads asked for; {profile.name} has {cores} cores, so {cores} are used")
    host_ghz = float(fitted().get("host", {}).get("ghz") or 0)
    device_ghz = max(c.max_ghz for c in profile.cpu.clusters)
    clock_scale = host_ghz / device_ghz if host_ghz else 1.0
    units = assign_units(ops, fmt, list(manifest.target.delegates), profile, assumptions)
    pred = predict(ops, units, fmt, profile, used_threads, clock_scale=clock_scale)
    rows, total_s = pred.rows, pred.total_s

    unshaped = sorted({o.op for o in ops if not o.shaped})
    if unshaped:
        assumptions.append(f"{sum(not o.shaped for o in ops)} op(s) with shapes edgeq cannot infer "
                           f"({', '.join(unshaped)}) are counted with what is known: the estimate is low there")
    if any(u != "cpu" for u, _ in units):
        assumptions.append("accelerator efficiency factors are assumed, not fitted (no such device was measured): "
                           "treat accelerator times as order-of-magnitude")
    if host_ghz and abs(device_ghz - host_ghz) > 1e-6:
        assumptions.append(f"fixed per-op/per-call/per-run CPU costs fitted on a {host_ghz:g} GHz host, scaled by "
                           f"clock to {device_ghz:g} GHz")
    if not fitted():
        assumptions.append("no fitted efficiency file (edgeq/profiling/efficiency_fitted.json): default CPU factors used")
    assumptions.append("CPU peaks are the profile's theoretical figures at max clock, split by core for the "
                       f"{used_threads} thread(s) used (portable kernels: 1); sustained clocks are lower")
    assumptions.append(f"memory bandwidth {profile.memory.bandwidth_gbps:g} GB/s as the profile states it; caches are "
                       "not modelled (their effect on this host is folded into the fitted memory factor)")

    return {
        "mode": "emulated",
        "estimate": True,
        "device": profile.name,
        "device_name": profile.display_name,
        "artifact": str(model_file.parent),
        "format": fmt,
        "threads": {"used": used_threads, "requested": wanted,
                    "source": "argument" if threads is not None else "artifact target"},
        "latency_ms": total_s * 1e3,
        "bound_share": {"compute": _share(pred.compute_s, total_s), "memory": _share(pred.memory_s, total_s),
                        "overhead": _share(pred.overhead_s, total_s)},
        "totals": {"gflop": sum(o.flops for o in ops) / 1e9, "mb_moved": sum(o.bytes for o in ops) / 1e6,
                   "ops": len(ops), "delegate_calls": sum(pred.calls.values()), "fixed_ms": pred.fixed_s * 1e3},
        "by_unit_ms": _by(rows, "unit"),
        "ops": rows,
        "factors": pred.factors,
        "factors_provenance": {k: v for k, v in fitted().items() if k != "runtimes"},
        "peaks": _peaks_used(profile, rows, used_threads),
        "assumptions": assumptions,
    }


@dataclass
class Prediction:
    """Per-op rows and the time split of one estimate (seconds)."""

    rows: list[dict[str, Any]]
    compute_s: float
    memory_s: float
    overhead_s: float  # per-op, per-call and per-run fixed costs
    fixed_s: float  # per-call and per-run costs alone
    calls: dict[tuple[str, str], int]
    factors: dict[str, dict[str, Any]]

    @property
    def total_s(self) -> float:
        return self.compute_s + self.memory_s + self.overhead_s


Lookup = Callable[[str, str], "tuple[dict[str, float], str]"]


def predict(ops: list[Any], units: list[tuple[str, str]], fmt: str, profile: DeviceProfile, threads: int, *,
            lookup: Lookup | None = None, clock_scale: float = 1.0) -> Prediction:
    """The roofline per op and the fixed costs, with factors from ``lookup(runtime, unit)``
    (default ``edgeq.profiling.efficiency.factors``); CPU fixed costs are multiplied by ``clock_scale``."""
    from edgeq.backends import get_backend
    from edgeq.profiling.efficiency import factors

    be = get_backend(fmt)
    lookup = lookup or factors
    bandwidth = profile.memory.bandwidth_gbps * 1e9
    rows: list[dict[str, Any]] = []
    used: dict[str, dict[str, Any]] = {}
    compute_s = memory_s = overhead_s = 0.0
    for op, (unit, dtype) in zip(ops, units):
        if unit == "cpu":
            runtime = _cpu_runtime(op.runtime)
        else:
            runtime = be.accelerated_runtime(op, unit)
        table, source = lookup(runtime, unit)
        used.setdefault(f"{runtime}/{unit}", {"source": source, **table})
        peak_dtype, peak = _peak(profile, unit, dtype, 1 if op.runtime == "portable" else threads)
        speedup = 1.0
        if unit == "cpu" and op.runtime != "portable" and threads > 1:
            # Threads beyond the first add their cores' share times the parallel factor, to
            # compute and to memory-bound ops alike (the fitted memory factor is mostly
            # cache-resident traffic, which each core brings its own bandwidth for).
            one = _peak(profile, unit, dtype, 1)[1]
            speedup = 1.0 + table.get("parallel", 1.0) * (peak / one - 1.0)
            peak = one * speedup
        eff_c = _compute_factor(table, op.kind, dtype, op.weights, op.op)
        t_compute = op.flops / (peak * eff_c) if op.flops else 0.0
        t_memory = op.bytes / (bandwidth * table["memory"] * speedup) if op.bytes else 0.0
        slowdown = table.get(f"slowdown.{op.op}", 1.0)  # a kernel far slower than its kind (fitted)
        t_compute, t_memory = t_compute * slowdown, t_memory * slowdown
        t_fixed = table["op_us"] * 1e-6 * (clock_scale if unit == "cpu" else 1.0)
        bound = "compute" if t_compute >= t_memory else "memory"
        if bound == "compute":
            compute_s += t_compute
        else:
            memory_s += t_memory
        if t_fixed > max(t_compute, t_memory):
            bound = "overhead"
        overhead_s += t_fixed
        rows.append({"name": op.name, "op": op.op, "kind": op.kind, "dtype": dtype, "weights": op.weights,
                     "unit": unit, "runtime": runtime, "flops": op.flops, "bytes": op.bytes,
                     "peak_dtype": peak_dtype, "bound": bound, "ms": (max(t_compute, t_memory) + t_fixed) * 1e3})
    calls = _delegate_calls(ops, units, fmt)
    fixed_s = 0.0
    for (runtime, unit), count in calls.items():
        table, _ = lookup(runtime, unit)
        fixed_s += count * table["call_us"] * 1e-6 * (clock_scale if unit == "cpu" else 1.0)
    run_table, _ = lookup(be.EMULATION_RUNTIME, "cpu")
    fixed_s += run_table["run_us"] * 1e-6 * clock_scale
    return Prediction(rows, compute_s, memory_s, overhead_s + fixed_s, fixed_s, calls, used)


# ------------------------------------------------------------------------ peaks


def cpu_share(profile: DeviceProfile, threads: int) -> float:
    """Share of the CPU's peak that ``threads`` threads reach: the fastest cores first,
    each weighted by clock x FP32 FLOPs/cycle (clock alone when the profile omits it)."""
    per_core = []
    for c in profile.cpu.clusters:
        per_core += [c.max_ghz * (c.fp32_flops_per_cycle or 1.0)] * c.count
    per_core.sort(reverse=True)
    return sum(per_core[:threads]) / sum(per_core)


def _peak(profile: DeviceProfile, unit: str, dtype: str, threads: int) -> tuple[str, float]:
    """(dtype whose peak is used, peak in FLOP/s) for ``dtype`` on ``unit``."""
    if unit == "cpu":
        table, scale = profile.cpu.peak_gops, cpu_share(profile, threads)
    else:
        acc = next(a for a in profile.accelerators if a.kind == unit)
        table, scale = acc.peak_gops, 1.0
    for d in _PEAK_FALLBACK.get(dtype, (dtype, "fp32")):
        if d in table:
            return d, table[d] * 1e9 * scale
    d, value = max(table.items(), key=lambda kv: kv[1])  # e.g. an NPU listing int8 only
    return d, value * 1e9 * scale


def _peaks_used(profile: DeviceProfile, rows: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {"bandwidth_gbps": profile.memory.bandwidth_gbps,
                           "cpu_share_of_peak": round(cpu_share(profile, threads), 4)}
    for r in rows:
        key = f"{r['unit']}.{r['peak_dtype']}"
        if key not in out:
            t = 1 if r["runtime"] == "portable" else threads
            label = key + (".1thread" if t == 1 and r["unit"] == "cpu" else "")
            out[label] = _peak(profile, r["unit"], r["peak_dtype"], t)[1] / 1e9
    return out


def _compute_factor(table: dict[str, float], kind: str, dtype: str, weights: str, op: str) -> float:
    from edgeq.profiling.efficiency import compute_factor

    return compute_factor(table, "gemm" if kind == "gemm" else "compute", dtype, weights, op)


# ------------------------------------------------------------------------ units


def assign_units(ops: list[Any], fmt: str, delegates: list[str], profile: DeviceProfile,
           assumptions: list[str]) -> list[tuple[str, str]]:
    """(unit, compute dtype) per op: the delegate (ExecuTorch) or the first execution
    provider in the target's chain (ONNX) that has a unit on this device, else the CPU."""
    missing: set[str] = set()

    def accel_for(name: str) -> str | None:
        for kind, api in _ACCEL.get(name, ()):
            if any(a.kind == kind and api in a.apis for a in profile.accelerators):
                return kind
        if name in _ACCEL:
            missing.add(name)
        return None

    from edgeq.backends import get_backend

    placed, notes = get_backend(fmt).op_units(ops, [d for d in delegates if d in _ACCEL], accel_for)
    out = [(unit or "cpu", _accel_dtype(op, unit, delegate)) for op, (unit, delegate) in zip(ops, placed)]
    assumptions.extend(notes)
    for name in sorted(missing):
        assumptions.append(f"{profile.name} has no unit for the {name} delegate/provider: its ops are estimated on "
                           "the CPU")
    return out


def _accel_dtype(op: Any, unit: str | None, delegate: str) -> str:
    """The dtype an op computes in on its unit. Core ML and QNN (as edgeq lowers them) and
    an NPU or Neural Engine compute in fp16; int8 weights without int8 activations are
    dequantized, so the math runs at the activation's precision."""
    if unit is None:
        return op.dtype
    if delegate in ("coreml", "qnn") or unit in ("npu", "neural-engine"):
        return "int8" if op.dtype == "int8" and delegate not in ("coreml", "qnn") else "fp16"
    return op.dtype


def _delegate_calls(ops: list[Any], units: list[tuple[str, str]], fmt: str) -> dict[tuple[str, str], int]:
    """Delegate calls per (runtime, unit), as the format's runtime makes them (its backend's ``delegate_calls``)."""
    from edgeq.backends import get_backend

    return get_backend(fmt).delegate_calls(ops, [u for u, _ in units], _cpu_runtime)


def _cpu_runtime(runtime: str) -> str:
    """The CPU runtime whose factors apply: an accelerator delegate's ops that fall back to
    the CPU are estimated as XNNPACK's."""
    from edgeq.backends import cpu_runtimes

    return runtime if runtime in cpu_runtimes() else "xnnpack"


def _by(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0.0) + r["ms"]
    return out


def _share(part: float, total: float) -> float:
    return part / total if total > 0 else 0.0


# ------------------------------------------------------------------- host profile


def host_profile(bandwidth_gbps: float | None = None) -> DeviceProfile:
    """A device profile of this machine's x86-64 CPU, detected from ``/proc/cpuinfo``.

    Cores: those this process may run on. Clock: cpufreq's maximum, else ``cpu MHz``
    (in a VM, the nominal clock). Peak FP32: cores x clock x FLOPs/cycle from the ISA
    (``_flops_per_cycle``); INT8: 4x with VNNI, else 2x. Bandwidth: ``bandwidth_gbps``
    if given, else measured now (``measure_bandwidth_gbps``, ~0.3 s).
    """
    import platform

    info = _cpuinfo()
    if platform.machine().lower() not in ("x86_64", "amd64") or not info:
        raise ConfigError("detecting a host profile needs an x86-64 Linux machine (/proc/cpuinfo)",
                          "pass a built-in device profile instead (edgeq targets list)")
    flags = set(info.get("flags", "").split())
    cores = len(usable_cpus())
    ghz = _max_ghz() or float(info.get("cpu MHz", "0") or 0) / 1e3 or 2.0
    family = int(info.get("cpu family", "0") or 0)
    vendor = info.get("vendor_id", "")
    model_name = " ".join(info.get("model name", "x86-64 CPU").split())
    fpc, why = _flops_per_cycle(flags, vendor, family, model_name)
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    fp32 = cores * ghz * fpc
    isa_names = {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                 "avx512_bf16", "avx512_fp16"}
    isa = sorted(flags & isa_names) + (["amx"] if "amx_tile" in flags else [])
    peaks = {"fp32": round(fp32, 1), "int8": round(fp32 * (4 if vnni else 2), 1)}
    if "avx512_fp16" in flags:
        peaks["fp16"] = round(fp32 * 2, 1)
    bw = bandwidth_gbps if bandwidth_gbps is not None else measure_bandwidth_gbps()
    ram_gb = _meminfo_gb()
    import shutil

    storage = shutil.disk_usage("/").total / 1e9
    notes = (f"Detected {time.strftime('%Y-%m-%d')} from /proc/cpuinfo: {model_name} ({vendor}, family {family}), "
             f"{cores} usable cores at {ghz:.2f} GHz. FP32 peak = cores x GHz x {fpc} FLOPs/cycle ({why}); INT8 = "
             f"{'4' if vnni else '2'}x FP32 ({'VNNI' if vnni else 'no VNNI: pmaddubsw'}). Bandwidth "
             f"{'given' if bandwidth_gbps is not None else 'measured: single-thread numpy copy, best of 15'}: "
             f"{bw:.1f} GB/s. Estimates, not vendor figures.")
    return DeviceProfile.model_validate({
        "schema_version": 1, "name": "host", "display_name": f"{model_name} (this machine, {cores} cores)",
        "family": "x86", "vendor": vendor.replace("Genuine", "").replace("Authentic", "") or "x86",
        "cpu": {"arch": "x86_64", "clusters": [{"name": model_name, "count": cores, "max_ghz": round(ghz, 3),
                                                 "fp32_flops_per_cycle": fpc}],
                "isa": isa, "peak_gops": peaks},
        "memory": {"ram_gb": round(ram_gb, 1), "app_share": 0.9, "bandwidth_gbps": round(bw, 2),
                   "storage_gb": round(storage, 1)},
        "accelerators": [], "os": {"name": "linux", "min_version": platform.release()}, "notes": notes,
    })


def _flops_per_cycle(flags: set[str], vendor: str, family: int, model_name: str) -> tuple[int, str]:
    """FP32 FLOPs per cycle per core from the ISA and the microarchitecture family.

    estimate: two FMA pipes per core of the widest vector width the core executes at full
    rate: AVX-512 on Intel server cores and AMD Zen 5 (family 0x1A) = 2 x 16 x 2 = 64;
    AMD Zen 4 (family 0x19) runs AVX-512 on 256-bit pipes = 32; AVX2 + FMA = 32; else 16.
    """
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family < 0x1A:
            return 32, "AMD Zen 4: AVX-512 on 256-bit FMA pipes"
        return 64, "two 512-bit FMA pipes (AVX-512" + (", AMD Zen 5)" if vendor == "AuthenticAMD" else ")")
    if "avx2" in flags and "fma" in flags:
        return 32, "two 256-bit FMA pipes (AVX2 + FMA)"
    return 16, "SSE: 128-bit add + multiply"


def measure_bandwidth_gbps(mib: int = 128, repeats: int = 15) -> float:
    """Memory bandwidth by copying a ``mib`` MiB buffer, far larger than caches (bytes read +
    written / time, best of ``repeats``: on a shared host the best copy is the one least
    disturbed); one thread."""
    import numpy as np

    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    return info


def _max_ghz() -> float | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        return None


def _meminfo_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return 1.0
