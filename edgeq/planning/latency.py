"""A plan's predicted latency: each layer's op timed at each candidate scheme (kernel
included) plus the rest of the graph, from the target's backend.

For a target whose device has this host's CPU architecture (x86 targets here) the
backend times each layer's op alone in the real runtime on this host
(``edgeq.backends.<format>.layer_latency``, cached), and the whole fp32 graph once: the
remainder (attention, norms, activations) is the whole graph's p50 minus its layers' fp32
costs. A backend may add to each layer's timing what it costs in the graph beyond its
timing alone (ONNX: a per-scheme offset from whole-graph timings of uniform plans, see
``edgeq.backends.onnx.latency``). A plan's predicted p50 = remainder + Σ layer timing at its scheme. The figures
are this host's, which stands in for the device (same ISA family, other clocks and cores):
the plan and the manifest say so. Other devices take the emulator's per-op ESTIMATE of the
same one-layer graphs. A backend that does not time layers (``TIMES_LAYERS`` False)
refuses ``--latency-budget`` with a clear message, and leaves a target's own latency
budget to ``edgeq check`` (``applicable``). The fp32 graph's p50 taken with the figures
(``reference_ms``) is what an export times again beside its artifact: the host's speed moves
between spells, and their ratio says by how much since the layers were timed.

>>> costs = LatencyCosts({"a": {"int8": 1.0, "fp32": 2.0}}, remainder_ms=3.0, source="hand-made")
>>> costs.predict({"a": "int8"}), costs.fastest_ms()
(4.0, 4.0)
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

from edgeq.errors import ConfigError


@dataclass(frozen=True)
class LatencyCosts:
    layers: dict[str, dict[str, float]]  # fqn → {scheme name: ms of its op at that scheme}
    remainder_ms: float  # the rest of the graph (not a planned layer), ms
    source: str  # how the figures were taken (measured here / estimate)
    estimate: bool = False  # True: not a measurement on the device or this host
    # the whole fp32 graph's p50 timed with the figures (None for an estimate): timed again beside
    # the artifact, the ratio says how far the host's speed moved since (edgeq.backends.timing.interleaved_ms)
    reference_ms: float | None = None

    def predict(self, schemes: dict[str, Any]) -> float:
        """Predicted whole-model p50 (ms) of a plan ``{fqn: scheme or scheme name}``."""
        return self.remainder_ms + sum(self.layers[f][str(s)] for f, s in schemes.items() if f in self.layers)

    def fastest_ms(self) -> float:
        """The fastest plan's predicted p50: every layer at its fastest candidate."""
        return self.remainder_ms + sum(min(v.values()) for v in self.layers.values() if v)

    def to_dict(self) -> dict[str, Any]:
        return {"remainder_ms": round(self.remainder_ms, 4), "source": self.source, "estimate": self.estimate,
                "reference_ms": None if self.reference_ms is None else round(self.reference_ms, 4)}


def host_threads(threads: int) -> int:
    """The intra-op threads timings and the artifact's measured p50 use here: the target's
    (0: the runtime's default, one per core), at most this host's cores (more threads than
    cores measure contention, not the kernels)."""
    cores = os.cpu_count() or 1
    return min(threads or cores, cores)


def runs_here(profile: Any) -> bool:
    """Whether ``profile``'s CPU is of this host's architecture, so timings here stand in for it."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    return profile.cpu.arch == arch


def cannot_time(prepared: Any) -> str:
    """Why the layers of ``prepared`` cannot be timed for its target ("" when they can)."""
    from edgeq.backends import get_backend

    if not get_backend(prepared.fmt).TIMES_LAYERS:
        return f"edgeq does not time layers per scheme for {prepared.fmt} artifacts yet"
    return ""


def applicable(budgets: Any, prepared: Any, steps: Any) -> Any:
    """``budgets`` as planning can honour them: a ``--latency-budget`` for a target whose
    layers cannot be timed is a ``ConfigError``; a target's own ``budgets.latency_ms`` or
    ``objective: balanced`` there is noted and left to ``edgeq check``'s latency gate."""
    from dataclasses import replace

    if not budgets.wants_latency or not (why := cannot_time(prepared)):
        return budgets
    if budgets.latency_ms is not None and budgets.sources.get("latency") == "--latency-budget":
        raise ConfigError(f"--latency-budget: {why}", "drop --latency-budget, or plan for an ONNX x86 target")
    steps.note(f"{why}: the target's latency budget / balanced objective does not steer this plan "
               "('edgeq check' gates the artifact's latency)")
    return replace(budgets, latency_ms=None, objective="accuracy")


def measure_latency(prepared: Any, candidates: dict[str, list[Any]], use_cache: bool = True) -> LatencyCosts:
    """Each layer's time at each of its ``candidates``, and the remainder (see the module doc)."""
    from edgeq.backends import get_backend

    tgt, profile = prepared.resolved.target, prepared.resolved.profile
    if why := cannot_time(prepared):
        raise ConfigError(why, "drop the latency budget (and objective: balanced) for this target")
    loaded, here = prepared.loaded, runs_here(profile)
    threads = host_threads(tgt.runtime.threads) if here else tgt.runtime.threads
    layers, whole, source = get_backend(prepared.fmt).layer_latency(
        loaded.module, loaded.example_inputs, prepared.layers, candidates, threads, use_cache,
        device=None if here else (profile, list(tgt.delegates)))
    unused = prepared.unused
    layers = {f: ({s: 0.0 for s in v} if f in unused else v) for f, v in layers.items()}
    # negative when the layers' costs sum above the graph (edgeq.backends.timing.in_graph_offsets)
    remainder = whole - sum(v.get("fp32", 0.0) for v in layers.values())
    remainder = remainder if abs(remainder) > 1e-9 else 0.0  # float rounding, not a figure
    return LatencyCosts(layers={f: {s: ms for s, ms in v.items() if s in {c.name for c in candidates[f]}}
                                for f, v in layers.items()},
                        remainder_ms=remainder, estimate=not here, reference_ms=whole if here else None,
                        source=f"{source}; on this host, standing in for {profile.name}" if here else source)
