"""Stage 2, ``measure_costs``: what each (layer, scheme) would cost and lose.

From a ``Prepared`` model: the candidate schemes per layer (target precisions, layer shape,
the user's rules), each candidate's measured error (``sensitivity``, cached on disk), its
bytes in the file and as the runtime holds them (the backend's cost table), and the
backend's fp32 probe. The result, ``PlanCosts``, is plain data: the solver needs nothing
else, and re-solving it (another budget, a measured file overhead) never touches the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from edgeq.errors import ConfigError
from edgeq.planning.inventory import LayerInfo
from edgeq.planning.rules import candidate_schemes, excluded_schemes, parse_rules
from edgeq.planning.solver import Choice
from edgeq.progress import Steps
from edgeq.schemes import FP32, Scheme


@dataclass(frozen=True)
class PlanCosts:
    layers: list[LayerInfo]
    sensitivity: dict[str, dict[str, float]]  # fqn → {scheme name: measured error}
    stored: dict[str, list[Choice]]  # fqn → choices costed in file bytes (weight + its scheme's entries)
    held: dict[str, list[Choice]]  # fqn → choices costed in bytes the runtime holds
    layer_bytes: dict[str, dict[str, int]]  # fqn → {scheme name: weight bytes in the file}
    other_bytes: int  # constants outside the planned layers, fp32
    file_base_bytes: int  # the file's non-weight bytes at fp32 (the backend's probe)
    activation_bytes: int  # the runtime's planned activation arena (0 where it plans none)
    pinned: dict[str, Scheme]
    reasons: dict[str, str]  # fqn → why it has no choice
    excluded: dict[str, dict[str, str]]  # fqn → {scheme: why the layer cannot take it}
    unused: frozenset[str]
    folded: dict[str, int]
    fmt: str
    config: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    tokens: int = 0
    attention_heads: int = 0
    target: str = ""
    model: str = ""
    not_measured: dict[str, str] = field(default_factory=dict)  # algorithm → why its schemes were not candidates
    # (table, head) pairs the format stores as one tensor when both take one scheme (edgeq.planning.shared)
    shared_heads: tuple[tuple[str, str], ...] = ()
    # the schemes at which those pairs are one tensor (None: every scheme)
    shared_schemes: frozenset[Any] | None = None
    # Per (layer, scheme) op time and the graph's remainder (edgeq.planning.latency); None: not measured.
    latency: Any = None
    # A model of memory other than the encoder one (decoder LLMs): (schemes, activation bytes) → MemoryEstimate.
    memory_model: Callable[[dict[str, Scheme], int], Any] | None = None

    def predict(self, schemes: dict[str, Scheme]) -> Any:
        """The memory model's peak for a plan (``edgeq.planning.memory.MemoryEstimate``)."""
        if self.memory_model is not None:
            return self.memory_model(schemes, self.activation_bytes)
        from edgeq.planning import memory

        pairs = [(x, None if x.fqn in self.unused else schemes[x.fqn]) for x in self.layers]
        pairs = memory.with_tied_head(self.fmt, memory.with_folded(pairs, self.folded), self.config, self.task)
        return memory.predict_peak(self.fmt, pairs, nonlayer_bytes=self.other_bytes, tokens=self.tokens,
                                   attention_heads=self.attention_heads,
                                   planned_activation_bytes=self.activation_bytes)

    def with_activation_bytes(self, activation_bytes: int) -> "PlanCosts":
        """The same costs with the arena a real lowering planned (it replaces the probe's)."""
        return replace(self, activation_bytes=activation_bytes)


def algorithms_offered(be: Any, algorithms: list[str] | None, decoder_lm: bool = False) -> tuple[str, ...]:
    """The calibrated algorithms to offer: ``algorithms`` (checked against what the format
    stores; ``"rtn"`` adds none), or every one the format stores. A decoder LLM's list may
    also name ``smoothquant`` and ``rotation`` (the export's scaling search and rotation,
    ``edgeq.algorithms.smooth`` / ``.rotate``); an encoder's, ``smoothquant`` where the format
    has per-tensor int8 linears (``ENCODER_SMOOTHS``: the export's input divisions)."""
    stored = tuple(be.CALIBRATED_ALGORITHMS)
    if algorithms is None:
        return stored
    check_algorithm_names(algorithms, decoder_lm)
    for name in algorithms:
        if name in DECODER_ONLY:
            continue
        if name in AT_EXPORT:
            if not decoder_lm and not be.ENCODER_SMOOTHS:
                raise ConfigError(f"{be.FORMAT} encoders have no linear whose input {name} would scale "
                                  "(their int8 linears round each token's input on its own)",
                                  f"algorithms for {be.FORMAT}: {', '.join(('rtn', *stored))}")
            continue
        if name != "rtn" and name not in stored:
            why = be.ALGORITHMS_NOT_OFFERED.get(name)
            raise ConfigError(f"{be.FORMAT} artifacts do not store {name} results" + (f": {why}" if why else ""),
                              f"algorithms for {be.FORMAT}: {', '.join(('rtn', *stored))}")
    return tuple(a for a in stored if a in algorithms)


# what a decoder LLM's export applies besides the per-layer algorithms, and why only there
DECODER_ONLY = {"rotation": "their residual stream"}
# searched at export (not per-layer candidates): a decoder's int8 activations; an encoder's
# per-tensor int8 linears (edgeq.algorithms.smooth, .smooth_encoder)
AT_EXPORT = ("smoothquant",)


def check_algorithm_names(algorithms: list[str], decoder_lm: bool) -> None:
    """``ConfigError`` for a name ``--algorithms`` cannot take (``DECODER_ONLY``: decoder LLMs only)."""
    from edgeq.errors import did_you_mean
    from edgeq.schemes import ALGORITHMS

    known = (*ALGORITHMS, *AT_EXPORT, *DECODER_ONLY) if decoder_lm else (*ALGORITHMS, *AT_EXPORT)
    for name in algorithms:
        if name in DECODER_ONLY and not decoder_lm:
            raise ConfigError(f"{name} applies to decoder LLMs only ({DECODER_ONLY[name]})",
                              f"algorithms: {', '.join((*ALGORITHMS, *AT_EXPORT))}")
        if name not in known:
            raise ConfigError(f"unknown algorithm '{name}'{did_you_mean(name, known)}", f"algorithms: {', '.join(known)}")


def _excluded(layer: LayerInfo, families: list[str], cannot: Callable[[Any, Scheme], str],
              stored: tuple[Scheme, ...]) -> dict[str, str]:
    """Schemes the target allows that ``layer`` cannot take, with the reason (the format's own
    included): among the common schemes and the format's ``stored`` ones."""
    from edgeq.schemes import SCHEMES, allowed

    offered = SCHEMES + tuple(s for s in stored if s not in SCHEMES)
    out = excluded_schemes(layer, families, offered)
    for s in allowed(families, offered):
        if s.name not in out and (why := cannot(layer, s)):
            out[s.name] = why
    return out


def measure_costs(prepared: Any, *, rules: list[str] | None = None, proxy: str | None = None,
                  calib_samples: int = 32, use_cache: bool = True, steps: Steps | None = None,
                  precisions: Sequence[str] | None = None, algorithms: list[str] | None = None,
                  latency: bool = False) -> PlanCosts:
    """Candidates, measured errors and bytes for every layer of ``prepared``.

    ``precisions``: the families the candidates come from (default: the target's); a
    caller whose lowering takes fewer (decoder LLMs) passes the ones it can ship.
    ``algorithms``: the calibrated algorithms whose schemes are candidates besides RTN's
    (default: every one the format stores, e.g. ``["gptq"]``; ``["rtn"]``: RTN only).
    ``latency``: also time each (layer, scheme) (``edgeq.planning.latency``), for a latency
    budget or a balanced objective."""
    from edgeq.backends import get_backend
    from edgeq.planning import sensitivity

    steps = steps or Steps()
    loaded, tgt, layers = prepared.loaded, prepared.resolved.target, prepared.layers
    fmt = prepared.fmt
    be = get_backend(fmt)
    families = list(tgt.precisions if precisions is None else precisions)
    pinned = parse_rules(rules or [], layers)
    # a format whose storage is in blocks (GGUF) says which schemes a layer's rows can take;
    # a scheme the target excludes (quantization.exclude_schemes) is no candidate anywhere
    excluded = set(tgt.quantization.exclude_schemes)

    def cannot(layer: Any, scheme: Any) -> str:
        if scheme.name in excluded:
            return f"target '{tgt.name}' excludes {scheme.name} (quantization.exclude_schemes)"
        return be.scheme_fits(layer, scheme)
    from edgeq.algorithms import calibrated as calibration_data
    from edgeq.schemes import calibrated

    offered = [s for s in calibrated(families, algorithms_offered(be, algorithms, prepared.decoder_lm))
               if s.name not in excluded]
    not_measured: dict[str, str] = {}
    if prepared.decoder_lm and any(s.algorithm == "awq" for s in offered):
        offered = [s for s in offered if s.algorithm != "awq"]
        not_measured["awq"] = ("a decoder LLM's AWQ scale is searched per fold at export (llm.smoothing), "
                               "not planned per layer")
    for fqn, scheme in pinned.items():
        layer = next(x for x in layers if x.fqn == fqn)
        if cannot(layer, scheme):
            raise ConfigError(f"layer {fqn} cannot take {scheme} on target {tgt.name}: {cannot(layer, scheme)}",
                              "pin a scheme the format can store")
        takes = (candidate_schemes(layer, families + ["fp32"], be.SCHEMES) + [s for s in offered if layer.fits(s)]
                 + be.extra_schemes(layer, families, prepared.decoder_lm))
        if scheme not in takes and scheme != FP32:
            raise ConfigError(f"layer {fqn} cannot take {scheme} on target {tgt.name}",
                              "its shape or kind does not fit the scheme, or the target does not allow it")
    unused, folded, fixed = prepared.unused, prepared.folded, prepared.fixed
    reasons = {f: "never called by the model's forward: the export drops it (fp32, 0 bytes)" for f in unused}
    reasons |= {f: f"the {fmt} lowering folds it into an fp32 constant ({b / 1e3:.0f} KB at any scheme): kept fp32"
                for f, b in folded.items()}
    reasons = {f: r for f, r in reasons.items() if f not in pinned} | {f: "pinned by a rule" for f in pinned}
    candidates = {
        x.fqn: [pinned[x.fqn]] if x.fqn in pinned else [FP32] if x.fqn in fixed
        else [s for s in candidate_schemes(x, families, be.SCHEMES) if not cannot(x, s)] or [FP32]
        for x in layers
    }
    # Other kernels of a scheme, and schemes only this format stores (ONNX: int8@matmulinteger, int8-g32)
    for x in layers:
        if x.fqn not in pinned and x.fqn not in fixed and candidates[x.fqn] != [FP32]:
            candidates[x.fqn] += [s for s in be.extra_schemes(x, families, prepared.decoder_lm) if not cannot(x, s)]
    # Calibrated schemes (GPTQ; HQQ) are candidates where the backend stores them and there is
    # calibration data (HQQ needs none); without data they are named as excluded, and pinning
    # one is an error.
    source = calibration_data.calibration_source(loaded)
    no_awq: dict[str, int] = {}  # why linears are no AWQ candidates → how many
    for x in layers:
        extra = [s for s in offered if x.fits(s)]
        if any(s.algorithm == "awq" for s in extra) and (why := calibration_data.awq_unavailable(loaded.module, x.fqn)):
            extra = [s for s in extra if s.algorithm != "awq"]
            no_awq[why] = no_awq.get(why, 0) + 1
        if x.fqn in pinned or x.fqn in fixed or not extra or candidates[x.fqn] == [FP32]:
            continue
        if source is None:
            not_measured |= {s.algorithm: calibration_data.no_data_reason(loaded)
                             for s in extra if calibration_data.needs_data(s.algorithm)}
            extra = [s for s in extra if not calibration_data.needs_data(s.algorithm)]
        candidates[x.fqn] = candidates[x.fqn] + extra
    if no_awq:
        not_measured.setdefault("awq", "not a candidate for " + "; ".join(
            f"{n} linear{'s' if n > 1 else ''} ({why})" for why, n in sorted(no_awq.items())))
    for algorithm, why in not_measured.items():
        steps.note(f"{algorithm} schemes not measured: {why}")
    calibration_data.require_calibration(loaded, pinned.values())
    with steps.step("Measuring sensitivity") as info:
        calib = loaded.make_inputs("calib", calib_samples)
        solved, calibration = {}, None
        if any(s.algorithm != "rtn" for v in candidates.values() for s in v):
            solved, calibration = calibration_data.solve(loaded, candidates, be.gptq_grid(),
                                                         samples=calibration_data.samples_for(loaded),
                                                         use_cache=use_cache)
        scales = None
        if not prepared.decoder_lm:
            from edgeq.algorithms.smooth_encoder import encoder_methods, encoder_scales

            # per-tensor int8 linears are measured with the input scale the export will divide by
            scales = encoder_scales(loaded, list({s for v in candidates.values() for s in v}), be,
                                    encoder_methods(algorithms))
        sens = sensitivity.measure(loaded.module, layers, candidates, calib, loaded.metric,
                                   proxy=proxy, use_cache=use_cache, fmt=fmt, calibrated=solved,
                                   calibration_key=calibration_data.results_key(calibration, solved),
                                   input_scales=scales, batchable=loaded.batchable)
        info.detail = f"{sum(len(v) for v in candidates.values())} layer×scheme pairs on {len(calib)} inputs" + (
            f"; GPTQ on {calibration.samples} calibration samples ({calibration.tokens} rows)" if calibration else "")
    if calibration is not None and calibration.first_sample < len(calib):
        steps.note(f"GPTQ candidates are scored partly on the samples they were calibrated on (sensitivity: samples "
                   f"1-{len(calib)}, GPTQ: from sample {calibration.first_sample + 1}); more calibration data or "
                   "fewer --samples keeps them apart")
    probe = prepared.probe(steps, use_cache)
    timings = None
    if latency:
        from edgeq.planning.latency import measure_latency

        with steps.step("Timing layers per scheme") as info:
            timings = measure_latency(prepared, candidates, use_cache)
            info.detail = (f"fastest plan {timings.fastest_ms():.2f} ms, rest of the graph {timings.remainder_ms:.2f} ms"
                           f" ({'estimate' if timings.estimate else 'measured on this host'})")

    def weight(x: LayerInfo, scheme: Scheme) -> int:
        return fixed[x.fqn] if x.fqn in fixed else be.stored_bytes(x, scheme)

    def in_file(x: LayerInfo, scheme: Scheme) -> int:  # the weight + its scheme's entries in the file
        return weight(x, scheme) + (0 if x.fqn in fixed else be.scheme_overhead(x, scheme))

    def held(x: LayerInfo, scheme: Scheme) -> int:
        return fixed[x.fqn] if x.fqn in fixed else be.held_bytes(x, scheme, decoder_lm=prepared.decoder_lm)

    def error(fqn: str, scheme: Scheme) -> float:
        # Measured errors below float precision (fp16 layers, ~1e-9) can come out 0 or
        # negative; a changed layer is never better than fp32, so ties go to fp32.
        return 0.0 if scheme == FP32 else max(sens[fqn][scheme.name], 0.0) + 1e-12

    return PlanCosts(
        layers=layers,
        sensitivity=sens,
        stored={x.fqn: [Choice(s, in_file(x, s), error(x.fqn, s)) for s in candidates[x.fqn]] for x in layers},
        held={x.fqn: [Choice(s, held(x, s), error(x.fqn, s)) for s in candidates[x.fqn]] for x in layers},
        layer_bytes={x.fqn: {s.name: weight(x, s) for s in candidates[x.fqn]} for x in layers},
        other_bytes=prepared.other_bytes,
        file_base_bytes=probe.file_overhead_bytes,
        activation_bytes=probe.activation_bytes,
        pinned=pinned,
        reasons=reasons,
        excluded={x.fqn: e for x in layers if (e := _excluded(x, families, cannot, tuple(be.SCHEMES)))},
        not_measured=not_measured,
        unused=frozenset(unused),
        folded=folded,
        fmt=fmt,
        config=loaded.config,
        task=loaded.task,
        tokens=prepared.tokens,
        attention_heads=prepared.attention_heads,
        target=tgt.name,
        model=loaded.name,
        shared_heads=tuple((x.tied, x.fqn) for x in layers if x.tied and x.tied in candidates and x.fqn in candidates
                           and any(be.tied_head_shares_table(s) for s in candidates[x.fqn])),
        shared_schemes=frozenset(s for x in layers if x.tied and x.fqn in candidates
                                 for s in candidates[x.fqn] if be.tied_head_shares_table(s)),
        latency=timings,
    )
