"""Timing a layer's op alone in a runtime here, shared by the backends that time layers.

What each backend times (a one-layer graph as its artifact lowers that layer) is the
backend's; how it is timed and cached is the same everywhere:

- ``p50_ms``: the median wall time of a call, as the least of ``ROUNDS`` round medians
  after ``WARMUP_RUNS`` (on a shared host a burst of other work inflates one round; the
  least round is the one closest to the kernel's own time);
- ``interleaved_ms``: several timings taken in turn, round after round, so that a change
  of the host's speed between rounds reaches each of them alike;
- ``input_shapes``: the shape each layer sees in the model, from one forward pass;
- ``LatencyCache``: one bounded JSON file of ``{key: ms}`` under the cache root
  (``<cache>/latency``), keyed by what decides a timing: the runtime's version, this CPU,
  the threads, the shapes and the scheme; ``model_key`` keys a whole model's timing by
  its weights and inputs too.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

WARMUP_RUNS = 5
TIMED_RUNS = 45
ROUNDS = 3
SESSIONS = 5  # fresh sessions a backend may take the median of (edgeq.backends.onnx.latency)
MAX_CACHE_ENTRIES = 50_000  # one file of timings; beyond this it starts again (a few MB of JSON)
CACHE_VERSION = 3  # 2: p50 as the least of round medians; 3: ONNX: the median over sessions


def cpu_name() -> str:
    """This host's CPU model, part of every timing's key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def p50_ms(call: Callable[[], Any], runs: int = TIMED_RUNS, warmup: int = WARMUP_RUNS, rounds: int = ROUNDS) -> float:
    """The median wall time of ``call()`` in ms: the least of ``rounds`` medians of
    ``runs / rounds`` calls each, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(max(1, runs // rounds)):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return min(medians) * 1e3


def interleaved_ms(measures: list[Callable[[], float]], rounds: int = SESSIONS) -> list[float]:
    """Per measure (a callable returning one sample in ms), the median of ``rounds`` samples
    taken in turn: each round calls every measure once.

    A shared host changes speed for spells of 30–90 s (on this project's 2-vCPU EPYC VM,
    MiniLM's all-``MatMulInteger`` graph measured 4.3 ms and 5.6 ms in alternate spells, its
    fp32 graph 8.6 and 10.3). Measures timed one after another put a spell's change between
    them and distort their ratios; in turn, every measure sees the same mix of spells, so
    their ratios hold: a prediction assembled from them, and a reference timed beside them,
    slow down together.

    Two ops of 1 and 2 ms on a host that turns 1.5× slower after two samples: in turn
    their ratio holds; one after another (the first one's three samples, then the
    second's) it does not:

    >>> def host():
    ...     clock = iter(range(100))
    ...     return lambda ms: ms * (1.0 if next(clock) < 2 else 1.5)
    >>> on = host(); interleaved_ms([lambda: on(1.0), lambda: on(2.0)], rounds=3)
    [1.5, 3.0]
    >>> on = host(); [statistics.median(on(ms) for _ in range(3)) for ms in (1.0, 2.0)]
    [1.0, 3.0]
    """
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(rounds):
        for i, measure in enumerate(measures):
            samples[i].append(measure())
    return [statistics.median(s) for s in samples]


def how_timed(runtime: str, threads: int) -> str:
    """The source line of timings taken here."""
    return (f"measured here: {runtime}, {threads or 'default'} threads, "
            f"p50 (least of {ROUNDS} rounds of {TIMED_RUNS // ROUNDS} runs), {cpu_name()}")


def input_shapes(module: Any, example_inputs: tuple[Any, ...], fqns: list[str]) -> dict[str, tuple[int, ...]]:
    """The shape of each layer's first input in one forward pass on ``example_inputs``."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(module.named_modules())

    def record(fqn: str) -> Any:
        def hook(_m: Any, args: tuple[Any, ...]) -> None:
            shapes.setdefault(fqn, tuple(args[0].shape))
        return hook

    handles = [modules[f].register_forward_pre_hook(record(f)) for f in fqns if f in modules]
    try:
        with torch.no_grad():
            module(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def model_key(module: Any, example_inputs: tuple[Any, ...], threads: int) -> str:
    """A whole model's timing key: this CPU, the threads, the weights and the inputs."""
    import torch

    h = hashlib.sha256(f"{cpu_name()}|{threads}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        if torch.is_tensor(t):
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    for t in example_inputs:
        h.update(str(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


class LatencyCache:
    """One bounded JSON file of ``{key: ms}`` under the sensitivity cache's root."""

    def __init__(self, name: str) -> None:
        from edgeq.planning.sensitivity import cache_dir

        self.path = cache_dir().parent / "latency" / f"{name}-v{CACHE_VERSION}.json"
        self.data: dict[str, float] = {}
        self.dirty = False
        try:
            if self.path.exists() and self.path.stat().st_size < 64 * 2**20:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict):
                    self.data = {k: float(v) for k, v in data.items()
                                 if isinstance(k, str) and isinstance(v, (int, float)) and 0 <= v < 1e9}
        except (OSError, ValueError):
            self.data = {}  # a cache is a convenience: unreadable means measure again

    def get(self, key: str) -> float | None:
        return self.data.get(key)

    def put(self, key: str, ms: float) -> None:
        if len(self.data) >= MAX_CACHE_ENTRIES:
            self.data = {}
        self.data[key] = ms
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            from edgeq.atomic import write_text_atomic

            write_text_atomic(self.path, json.dumps(self.data, indent=0, sort_keys=True))
            self.dirty = False


def layer_cases(module: Any, example_inputs: tuple[Any, ...], layers: list[Any], candidates: dict[str, list[Any]],
                kinds: tuple[str, ...] = ("linear", "embedding")) -> tuple[dict[str, dict[str, float]], list[Any]]:
    """What a backend times: ``(untimed, cases)``. ``untimed`` is ``{fqn: {scheme name: 0.0}}``
    for layers of a kind not in ``kinds`` or never called (they stay in the remainder at
    fp32); ``cases`` is ``(fqn, scheme, (kind, weight shape, has_bias, input shape))`` for
    every other layer at fp32 (the remainder's reference) and each of its candidates."""
    from edgeq.schemes import FP32

    shapes = input_shapes(module, example_inputs, [x.fqn for x in layers])
    modules = dict(module.named_modules())
    untimed: dict[str, dict[str, float]] = {}
    cases = []
    for layer in layers:
        schemes = list(dict.fromkeys([FP32, *candidates.get(layer.fqn, [])]))
        if layer.kind not in kinds or layer.fqn not in shapes:
            untimed[layer.fqn] = {s.name: 0.0 for s in schemes}
            continue
        mod = modules[layer.fqn]
        shape = (layer.kind, tuple(mod.weight.shape), getattr(mod, "bias", None) is not None, shapes[layer.fqn])
        cases += [(layer.fqn, scheme, shape) for scheme in schemes]
    return untimed, cases


def case_key(threads: int, shape: tuple[Any, ...], scheme_name: str) -> str:
    """A layer timing's cache key: this CPU, the threads, the shapes and the scheme."""
    kind, weight, has_bias, x_shape = shape
    return f"{cpu_name()}|{threads}|{kind}|{weight}|{has_bias}|{x_shape}|{scheme_name}"


def emulated_threads_and_clock(profile: Any, threads: int) -> tuple[int, float]:
    """For an emulator ESTIMATE on ``profile``: the threads it runs (the target's, at most the
    device's cores) and the clock scale from this host's fitted GHz to the device's."""
    from edgeq.profiling.efficiency import fitted

    used = max(1, min(threads or profile.cpu.cores, profile.cpu.cores))
    host_ghz = float(fitted().get("host", {}).get("ghz") or 0)
    device_ghz = max(c.max_ghz for c in profile.cpu.clusters)
    return used, (host_ghz / device_ghz if host_ghz else 1.0)

def with_in_graph_offsets(out: dict[str, dict[str, float]], cases: list[Any], candidates: dict[str, list[Any]],
                          wholes: Callable[[dict[str, list[str]]], dict[str, float]]
                          ) -> tuple[dict[str, dict[str, float]], float, str]:
    """A backend's layer timings alone (``out``, from ``layer_cases``' ``cases``) made whole-graph
    costs: ``wholes(uniform_plans(...))`` times the whole model at fp32 and at each uniform plan
    of the linears, and each linear's cost at a scheme becomes its timing alone plus the
    scheme's ``in_graph_offsets``. Returns ``(costs, the fp32 whole's ms, a note for the source)``."""
    from edgeq.schemes import FP32, parse, rtn_of

    timed = {fqn for fqn, _s, (kind, *_rest) in cases if kind == "linear"}
    uniform = uniform_plans({f: candidates.get(f, []) for f in sorted(timed)})
    measured = wholes(uniform)
    fp32 = {f: v[FP32.name] for f, v in out.items() if FP32.name in v}
    offsets = in_graph_offsets(fp32, {ref: (measured[ref], {f: out[f][ref] for f in fqns})
                                      for ref, fqns in uniform.items()}, timed)
    for fqn in timed:
        out[fqn] = {name: ms + offsets[rtn_of(parse(name)).name] for name, ms in out[fqn].items()}  # ≥ 0 (in_graph_offsets)
    return out, measured[FP32.name], f"; in-graph offsets from {len(measured)} whole-model timings"


def uniform_key(base_key: str, name: str, fqns: list[str]) -> str:
    """A uniform plan's whole-model timing key: the model's (``model_key``), the scheme, the layers."""
    if name == "fp32":
        return base_key
    return base_key + "|" + name + "|" + hashlib.sha256("\n".join(sorted(fqns)).encode()).hexdigest()[:16]


def uniform_plans(candidates: dict[str, list[Any]]) -> dict[str, list[str]]:
    """``{scheme name: [linears]}``: per RTN scheme the linears' candidates reach (calibrated
    schemes count as their RTN scheme), the linears that have it; fp32 takes every linear.

    >>> from edgeq.schemes import INT8, INT4
    >>> uniform_plans({"a": [INT8, INT4[32]], "b": [INT8]})
    {'fp32': ['a', 'b'], 'int8': ['a', 'b'], 'int4-g32': ['a']}
    """
    from edgeq.schemes import FP32, rtn_of

    plans: dict[str, list[str]] = {FP32.name: list(candidates)}
    for fqn, schemes in candidates.items():
        for name in dict.fromkeys(rtn_of(s).name for s in schemes):
            if name != FP32.name:
                plans.setdefault(name, []).append(fqn)
    return plans


def in_graph_offsets(fp32_ms: dict[str, float], uniform: dict[str, tuple[float, dict[str, float]]],
                     offset_layers: set[str]) -> dict[str, float]:
    """``{scheme name: ms}``: what each of ``offset_layers`` costs at a scheme in the whole
    graph above its timing alone, such that every uniform plan is predicted at its measured p50.

    ``fp32_ms``: every timed layer's fp32 timing alone; ``uniform``: ``{scheme: (whole-graph
    p50, {layer: its timing alone at the scheme})}`` for the fp32 graph and each uniform plan
    (its layers at the scheme, every other layer fp32). With a remainder R (the rest of the
    graph) and n offset layers, the fp32 graph gives ``R + n·c_fp32``, and each plan its own
    ``c``; R and the offsets trade one for another. R is taken as large as keeps every
    offset ≥ 0 (at least 0): ``R = max(n · min c, 0)``, and no larger than keeps every layer's
    cost (its timing alone plus its scheme's offset) ≥ 0: ``R ≤ n · min(alone + c)``. The
    second bound is below 0 only when a plan's graph runs faster than its layers alone
    (on a tiny model each one-layer timing is mostly a run's fixed cost, which the graph
    pays once): R is then negative, and every cost and every uniform plan's prediction
    stays exact (a cost clipped at 0 would predict that plan above its measurement).

    >>> fp32 = {"a": 2.0, "b": 4.0, "e": 0.5}
    >>> in_graph_offsets(fp32, {"fp32": (8.5, fp32), "int8": (5.0, {"a": 1.0, "b": 2.0})}, {"a", "b"})
    {'fp32': 0.25, 'int8': 0.0}
    """
    n = len(offset_layers)
    fp32_name = "fp32"
    if not n:
        return {name: 0.0 for name in uniform}
    whole_fp32 = uniform[fp32_name][0]
    c_fp32 = (whole_fp32 - sum(fp32_ms.values())) / n
    raw = {fp32_name: c_fp32}
    for name, (whole, alone) in uniform.items():
        if name != fp32_name and alone:
            rest = sum(ms for f, ms in fp32_ms.items() if f not in alone) + (n - len(alone)) * c_fp32
            raw[name] = (whole - sum(alone.values()) - rest) / len(alone)
    costs = [ms + raw[fp32_name] for f, ms in fp32_ms.items() if f in offset_layers]
    costs += [ms + raw[name] for name, (_w, alone) in uniform.items() if name in raw and name != fp32_name
              for ms in alone.values()]
    remainder = min(max(n * min(raw.values()), 0.0), n * min(costs))
    return {name: round(c - remainder / n, 9) for name, c in raw.items()}
