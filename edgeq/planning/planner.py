"""Plan per-layer schemes: measure sensitivity, then solve for the least predicted error
within a byte budget (or the fewest bytes within an error bound).

>>> from edgeq.planning.planner import plan  # doctest: +SKIP
>>> result = plan("path/to/model", "rpi5", budget_bytes=20_000_000)  # doctest: +SKIP
>>> result.plan.schemes["model.encoder.layer.0.attention.self.query"]  # doctest: +SKIP
'int4-g32'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError, EdgeqError
from edgeq.planning.inventory import LayerInfo, fp32_bytes, layer_inventory, nonlayer_bytes
from edgeq.planning.plan import QuantPlan
from edgeq.progress import Steps
from edgeq.schemes import FP32, Scheme, allowed, parse

PLAN_SCHEMA_VERSION = 1


class BudgetError(EdgeqError):
    """No plan fits the budget."""


@dataclass
class PlanResult:
    plan: QuantPlan
    layers: list[LayerInfo]
    sensitivity: dict[str, dict[str, float]]
    layer_bytes: dict[str, int]  # bytes of each layer's weight under its chosen scheme
    other_bytes: int  # constants outside the planned layers (biases, norms), fp32
    file_overhead_bytes: int  # the file's non-weight bytes (graph, metadata): an estimate, see edgeq.planning.inventory
    budget_bytes: int | None  # storage budget (artifact bytes); None with --max-drop
    predicted_error: float
    target: str
    model: str
    fmt: str
    pinned: dict[str, str] = field(default_factory=dict)
    reserve_bytes: float = 0  # held back from the budget for file overhead (after a measured overshoot)
    memory_budget_bytes: int | None = None  # runtime-memory budget (predicted peak)
    memory: Any = None  # edgeq.planning.memory.MemoryEstimate of the plan
    binding: str = ""  # which limit decided the plan: storage | memory | max-drop | none
    budget_sources: dict[str, str] = field(default_factory=dict)  # storage/memory → "--budget" or "target NAME"
    excluded: dict[str, dict[str, str]] = field(default_factory=dict)  # fqn → {scheme: why it cannot take it}

    @property
    def predicted_bytes(self) -> int:
        """The artifact's predicted file size: weights, other constants and file overhead."""
        return sum(self.layer_bytes.values()) + self.other_bytes + self.file_overhead_bytes

    def to_yaml(self) -> str:
        import yaml

        doc = {
            "schema_version": PLAN_SCHEMA_VERSION,
            "model": self.model,
            "target": self.target,
            "format": self.fmt,
            "budget_bytes": self.budget_bytes,
            "memory_budget_bytes": self.memory_budget_bytes,
            "binding": self.binding,
            "predicted": {"bytes": self.predicted_bytes, "error": round(self.predicted_error, 8),
                          "peak_memory_bytes": self.memory.total_bytes if self.memory else None,
                          "file_overhead_bytes": self.file_overhead_bytes},
            "layers": self.plan.names(),
        }
        notes = {f: r for f, r in self.plan.reasons.items() if f not in self.pinned}
        if notes:
            doc["notes"] = notes
        if self.excluded:
            doc["cannot_take"] = self.excluded
        return f"{PLAN_HEADER}: layer → scheme (edit freely; 'edgeq export --plan FILE')\n" + yaml.safe_dump(
            doc, sort_keys=False
        )


def candidate_schemes(layer: LayerInfo, precisions: list[str]) -> list[Scheme]:
    """Schemes the target's ``precisions`` allow that this layer's kind and shape can take."""
    return [s for s in allowed(precisions) if layer.fits(s) and not (layer.kind == "conv" and s.bits == 4)]


def excluded_schemes(layer: LayerInfo, precisions: list[str]) -> dict[str, str]:
    """Schemes the target allows that ``layer`` cannot take, with the reason."""
    out = {}
    for scheme in allowed(precisions):
        if scheme.is_float:
            continue
        if layer.kind == "conv" and scheme.bits == 4:
            out[scheme.name] = "no int4 convolution kernels in the backends"
        elif not layer.fits(scheme):
            out[scheme.name] = f"reduction dim {layer.params // layer.shape[0]} is not a multiple of {scheme.group}"
    return out


def check_rules(rules: list[str]) -> list[tuple[str, "re.Pattern[str]", Scheme]]:
    """Parse ``["regex=scheme", ...]`` without the model: ``(rule, regex, scheme)`` each."""
    parsed = []
    for rule in rules:
        if "=" not in rule:
            raise ConfigError(f"rule '{rule}' is not of the form REGEX=SCHEME", "e.g. --rule 'attention.output=int8'")
        pattern, name = rule.rsplit("=", 1)
        scheme = parse(name, f"rule '{rule}'")
        if len(pattern) > 500:
            raise ConfigError(f"rule '{rule[:40]}…': the pattern is longer than 500 characters", "shorten it")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"rule '{rule}': bad regular expression ({exc})", "fix the pattern") from None
        parsed.append((rule, regex, scheme))
    return parsed


def parse_rules(rules: list[str], layers: list[LayerInfo]) -> dict[str, Scheme]:
    """``["regex=scheme", ...]`` → pinned ``{fqn: scheme}``; every rule must match a layer."""
    pinned: dict[str, Scheme] = {}
    names = [layer.fqn for layer in layers]
    for rule, regex, scheme in check_rules(rules):
        matched = [n for n in names if regex.search(n)]
        if not matched:
            from edgeq.errors import did_you_mean

            raise ConfigError(f"rule '{rule}' matches no layer{did_you_mean(rule.rsplit('=', 1)[0], names)}",
                              "run 'edgeq plan' to see the layer names")
        for n in matched:
            pinned[n] = scheme
    return pinned


def plan(
    model: Any,
    target: Any,
    *,
    budget_bytes: int | None = None,
    memory_budget_bytes: int | None = None,
    max_drop: float | None = None,
    rules: list[str] | None = None,
    proxy: str | None = None,
    calib_samples: int = 32,
    use_cache: bool = True,
    steps: Steps | None = None,
    reserve_bytes: float = 0,
    planned_activation_bytes: int | None = None,
    seq_len: int | None = None,
    calib: str | Path | None = None,
) -> PlanResult:
    """Choose a scheme per layer for ``model`` (a LoadedModel or source) on ``target``.

    Two limits apply, each the target's unless overridden: the artifact's size
    (``budget_bytes``, else ``budgets.storage_mb``) and its predicted peak runtime memory
    (``memory_budget_bytes``, else ``budgets.runtime_memory_mb``; ``edgeq.planning.memory``'s model:
    weights as the runtime holds them + activations + runtime overhead). With ``max_drop``
    the plan is the smallest whose predicted error stays within it, and must still fit both.
    ``planned_activation_bytes``: ExecuTorch's activation arena if known (else it is
    planned once by an fp32 lowering and cached). ``calib``: the user's calibration data
    (see ``edgeq.models.calib``) instead of the built-in split.
    """
    from edgeq.planning import graphfacts, memory, sensitivity, solver
    from edgeq.backends import get_backend
    from edgeq.models import LoadedModel, load_model
    from edgeq.targets import ResolvedTarget, load_target

    steps = steps or Steps()
    resolved = target if isinstance(target, ResolvedTarget) else load_target(target)
    tgt = resolved.target
    fmt = tgt.format
    be = get_backend(fmt)
    check_rules(rules or [])  # before the (slow) model load
    if calib is not None and not Path(calib).exists():
        raise ConfigError(f"--calib {calib}: no such file or directory", "pass a .txt, .npz or a directory of them / images")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, seq_len=seq_len or tgt.seq_len)
    if calib is not None:
        from edgeq.models.calib import with_calibration

        loaded = with_calibration(loaded, calib)
    layers = layer_inventory(loaded.module)
    pinned = parse_rules(rules or [], layers)
    for fqn, scheme in pinned.items():
        layer = next(x for x in layers if x.fqn == fqn)
        if scheme not in candidate_schemes(layer, list(tgt.precisions) + ["fp32"]) and scheme != FP32:
            raise ConfigError(f"layer {fqn} cannot take {scheme} on target {tgt.name}",
                              "its shape or kind does not fit the scheme, or the target does not allow it")
    facts = graphfacts.analyse(loaded.module, loaded.example_inputs, [x.fqn for x in layers])
    unused, folded = facts.unused, (facts.folded if be.FOLDS_CONSTANT_LOOKUPS else {})
    fixed = {f: 0 for f in unused} | folded  # bytes whatever the scheme
    reasons = {f: "never called by the model's forward: the export drops it (fp32, 0 bytes)" for f in unused}
    reasons |= {f: f"the {fmt} lowering folds it into an fp32 constant ({b / 1e3:.0f} KB at any scheme): kept fp32"
                for f, b in folded.items()}
    reasons = {f: r for f, r in reasons.items() if f not in pinned} | {f: "pinned by a rule" for f in pinned}
    candidates = {
        x.fqn: [pinned[x.fqn]] if x.fqn in pinned else [FP32] if x.fqn in fixed
        else candidate_schemes(x, list(tgt.precisions))
        for x in layers
    }
    for fqn, c in candidates.items():
        if not c:
            candidates[fqn] = [FP32]
    with steps.step("Measuring sensitivity") as info:
        calib = loaded.make_inputs("calib", calib_samples)
        sens = sensitivity.measure(loaded.module, layers, candidates, calib, loaded.metric,
                                   proxy=proxy, use_cache=use_cache, fmt=fmt)
        info.detail = f"{sum(len(v) for v in candidates.values())} layer×scheme pairs on {len(calib)} inputs"
    other = nonlayer_bytes(fp32_bytes(loaded.module), layers)
    storage_budget = budget_bytes if budget_bytes is not None else int(tgt.budgets.storage_mb * 1e6)
    memory_budget = (memory_budget_bytes if memory_budget_bytes is not None
                     else int(tgt.budgets.runtime_memory_mb * 1e6))
    sources = {"storage": "--budget" if budget_bytes is not None else f"target {tgt.name}",
               "memory": "--memory-budget" if memory_budget_bytes is not None else f"target {tgt.name}"}
    fp32_weights = other + sum(fixed.get(x.fqn, x.fp32_bytes) for x in layers)
    # What the backend knows before planning: its planned activation arena (ExecuTorch reads
    # it from an fp32 lowering; cached) and the file's non-weight bytes.
    probe = be.fp32_probe(loaded, resolved, facts, fp32_weights, steps, use_cache)
    if planned_activation_bytes is None:
        planned_activation_bytes = probe.activation_bytes
    file_base = probe.file_overhead_bytes
    tokens, heads = memory.workload(loaded.example_inputs, loaded.config)

    def predict(schemes: dict[str, Scheme]) -> Any:
        pairs = [(x, None if x.fqn in unused else schemes[x.fqn]) for x in layers]
        pairs = memory.with_tied_head(fmt, memory.with_folded(pairs, folded), loaded.config, loaded.task)
        return memory.predict_peak(fmt, pairs, nonlayer_bytes=other, tokens=tokens,
                                   attention_heads=heads, planned_activation_bytes=planned_activation_bytes)

    def layer_bytes(x: LayerInfo, scheme: Scheme) -> int:
        return fixed[x.fqn] if x.fqn in fixed else be.stored_bytes(x, scheme)

    def file_bytes(x: LayerInfo, scheme: Scheme) -> int:  # the weight + its scheme's entries in the file
        return layer_bytes(x, scheme) + (0 if x.fqn in fixed else be.scheme_overhead(x, scheme))

    def layer_held(x: LayerInfo, scheme: Scheme) -> int:
        return fixed[x.fqn] if x.fqn in fixed else be.held_bytes(x, scheme)

    def error(fqn: str, scheme: Scheme) -> float:
        # Measured errors below float precision (fp16 layers, ~1e-9) can come out 0 or
        # negative; a changed layer is never better than fp32, so ties go to fp32.
        return 0.0 if scheme == FP32 else max(sens[fqn][scheme.name], 0.0) + 1e-12

    stored = {x.fqn: [solver.Choice(s, file_bytes(x, s), error(x.fqn, s)) for s in candidates[x.fqn]]
              for x in layers}
    held = {x.fqn: [solver.Choice(s, layer_held(x, s), error(x.fqn, s)) for s in candidates[x.fqn]]
            for x in layers}
    with steps.step("Solving the plan") as info:
        if max_drop is not None:
            try:
                solution = solver.smallest_within(stored, max_drop)
            except ValueError as exc:
                raise BudgetError(str(exc), "raise --max-drop or allow more precisions") from None
            binding = "max-drop"
            _check_fits(solution, predict(solution.schemes), other + file_base, storage_budget, memory_budget, sources)
        else:
            solution, binding = _solve_budgets(stored, held, storage_budget - other - file_base - reserve_bytes,
                                               memory_budget, predict, other, file_base + reserve_bytes, sources)
        estimate = predict(solution.schemes)
        layer_total = sum(layer_bytes(x, solution.schemes[x.fqn]) for x in layers)
        info.detail = (f"{layer_total / 1e6:.2f} MB of layers, predicted peak memory "
                       f"{estimate.total_bytes / 1e6:.1f} MB, predicted error {solution.error:.4g}")
    schemes = solution.schemes
    return PlanResult(
        plan=QuantPlan(schemes=schemes, reasons=reasons),
        layers=layers,
        sensitivity=sens,
        layer_bytes={x.fqn: layer_bytes(x, schemes[x.fqn]) for x in layers},
        other_bytes=other,
        file_overhead_bytes=file_base + sum(file_bytes(x, schemes[x.fqn]) - layer_bytes(x, schemes[x.fqn])
                                            for x in layers),
        budget_bytes=storage_budget if max_drop is None else None,
        predicted_error=solution.error,
        target=tgt.name,
        model=loaded.name,
        fmt=fmt,
        pinned=pinned,
        reserve_bytes=reserve_bytes,
        memory_budget_bytes=memory_budget,
        memory=estimate,
        excluded={x.fqn: e for x in layers if (e := excluded_schemes(x, list(tgt.precisions)))},
        binding=binding,
        budget_sources=sources,
    )


def _solve_budgets(stored: dict, held: dict, storage_cap: float, memory_budget: int, predict: Any, other: int,
                   reserve: float, sources: dict[str, str]) -> tuple[Any, str]:
    """Least predicted error within both limits.

    Exact when one limit binds: first the storage knapsack (layer costs = stored bytes);
    if that plan's predicted peak memory fits, it is optimal. Otherwise the memory
    knapsack (costs = bytes as the runtime holds them; the cap = budget − activations −
    runtime overhead − other constants); if that plan also fits storage, it is optimal.
    Should the load-time peak (stored weights + one transient copy) or storage still be
    over, the memory cap is tightened by the overshoot and the knapsack re-solved.
    """
    from edgeq.planning import solver

    try:
        solution = solver.solve(stored, int(storage_cap))
    except solver.Infeasible as exc:
        held_back = f" with {reserve / 1e3:.0f} KB for the file's non-weight bytes" if reserve else ""
        raise BudgetError(
            f"storage budget {(storage_cap + other + reserve) / 1e6:.3f} MB ({sources['storage']}){held_back} is below "
            f"the smallest achievable plan ({(exc.minimum_bytes + other + reserve) / 1e6:.3f} MB)",
            "raise --budget, or allow int4 on the target",
        ) from None
    estimate = predict(solution.schemes)
    if estimate.total_bytes <= memory_budget:
        return solution, "storage" if _tight(stored, solution, storage_cap) else "none"
    cap = memory_budget - estimate.runtime_overhead_bytes - estimate.activation_bytes - other
    for _ in range(16):
        try:
            solution = solver.solve(held, int(cap))
        except solver.Infeasible:
            smallest = predict({fqn: min(c, key=lambda x: x.bytes).scheme for fqn, c in held.items()})
            raise BudgetError(
                f"memory budget {memory_budget / 1e6:.1f} MB ({sources['memory']}) is below the smallest achievable "
                f"predicted peak memory ({_describe_memory(smallest)})",
                "raise --memory-budget (or the target's budgets.runtime_memory_mb), or shorten --seq-len",
            ) from None
        estimate = predict(solution.schemes)
        stored_total = sum(next(c.bytes for c in stored[f] if c.scheme == s) for f, s in solution.schemes.items())
        over = max(estimate.total_bytes - memory_budget, stored_total - storage_cap)
        if over <= 0:
            return solution, "memory"
        cap -= max(over, 1024)
    raise BudgetError("no plan found that fits both the storage and the memory budget",
                      "raise --budget or --memory-budget")


def _tight(options: dict, solution: Any, cap: float) -> bool:
    """Whether the plan is held back by the cap (not every layer at its most accurate scheme)."""
    return any(min(c, key=lambda x: (x.error, x.bytes)).scheme != solution.schemes[f] for f, c in options.items())


def _check_fits(solution: Any, estimate: Any, other: int, storage_budget: int, memory_budget: int,
                sources: dict[str, str]) -> None:
    if solution.bytes + other > storage_budget:
        raise BudgetError(f"the smallest plan within --max-drop is {(solution.bytes + other) / 1e6:.2f} MB, over the "
                          f"storage budget of {storage_budget / 1e6:g} MB ({sources['storage']})",
                          "raise --max-drop or --budget")
    if estimate.total_bytes > memory_budget:
        raise BudgetError(f"the smallest plan within --max-drop needs {_describe_memory(estimate)}, over the memory "
                          f"budget of {memory_budget / 1e6:g} MB ({sources['memory']})",
                          "raise --max-drop or --memory-budget")


def _describe_memory(estimate: Any) -> str:
    return (f"{estimate.total_bytes / 1e6:.1f} MB: weights {estimate.weights_bytes / 1e6:.1f} + activations "
            f"{estimate.activation_bytes / 1e6:.1f} + runtime {estimate.runtime_overhead_bytes / 1e6:.1f}")


@dataclass(frozen=True)
class PlanFile:
    """A plan YAML read and checked against the target, before the model is loaded."""

    path: Path
    schemes: dict[str, Scheme]
    lines: dict[Any, int]


def read_plan_file(path: Path, target: Any = None) -> PlanFile:
    """Read a plan YAML and check what needs no model: its schema version, that it was made
    for ``target``'s format and target, and that every scheme is known and allowed there."""
    from edgeq.yamlio import read_yaml

    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        raise ConfigError(f"{path}: a plan needs a 'layers:' mapping of layer → scheme", "write one with 'edgeq plan -o FILE'")
    version = data.get("schema_version", PLAN_SCHEMA_VERSION)  # hand-written plans may leave it out
    if type(version) is not int or version != PLAN_SCHEMA_VERSION:  # True == 1 in Python
        newer = isinstance(version, int) and not isinstance(version, bool) and version > PLAN_SCHEMA_VERSION
        raise ConfigError(f"{path}:{lines.get(('schema_version',), 1)}: plan schema_version {version!r} "
                          f"{'is from a newer edgeq' if newer else 'is unknown'} (this edgeq reads {PLAN_SCHEMA_VERSION})",
                          "upgrade edgeq" if newer else "re-plan with 'edgeq plan -o FILE'")
    if target is not None:
        for key, mine in (("format", target.format), ("target", target.name)):
            theirs = data.get(key)
            if theirs is not None and theirs != mine:
                raise ConfigError(f"{path}:{lines.get((key,), 1)}: the plan was made for {key} {theirs!r}, "
                                  f"this export is for {key} {mine!r}",
                                  f"re-plan with 'edgeq plan MODEL -t {target.name} -o FILE' (or edit '{key}:' "
                                  "in the file if you mean to reuse it)")
    schemes: dict[str, Scheme] = {}
    for fqn, scheme in data["layers"].items():
        where = f"{path}:{lines.get(('layers', fqn), 1)}"
        if not isinstance(fqn, str):
            raise ConfigError(f"{where}: layer name {fqn!r} is not a string", "quote it")
        scheme = parse(scheme, where)
        if target is not None and scheme != FP32 and scheme.precision not in target.precisions:
            raise ConfigError(f"{where}: layer '{fqn}' is planned as {scheme}, which target '{target.name}' does not "
                              f"allow (precisions: {', '.join(target.precisions)})",
                              "edit the plan, or re-plan for this target with 'edgeq plan'")
        schemes[fqn] = scheme
    return PlanFile(path, schemes, lines)


def plan_from_file(plan_file: PlanFile, layers: list[LayerInfo]) -> QuantPlan:
    """The plan for ``layers``: every planned layer must exist and its shape take its scheme;
    layers the file leaves out stay fp32 (and the plan says so)."""
    from edgeq.errors import did_you_mean

    names = {x.fqn: x for x in layers}
    path, lines = plan_file.path, plan_file.lines
    for fqn, scheme in plan_file.schemes.items():
        where = f"{path}:{lines.get(('layers', fqn), 1)}"
        if fqn not in names:
            raise ConfigError(f"{where}: unknown layer '{fqn}'{did_you_mean(str(fqn), list(names))}",
                              "the plan was made for another model, or the name is misspelt")
        if not names[fqn].fits(scheme):
            raise ConfigError(f"{where}: layer '{fqn}' (shape {list(names[fqn].shape)}) cannot take {scheme}",
                              "pick a scheme its shape fits, e.g. int8")
    schemes = {fqn: plan_file.schemes.get(fqn, FP32) for fqn in names}
    return QuantPlan(schemes=schemes, reasons={f: "not in the plan file: fp32" for f in names if f not in plan_file.schemes})


def load_plan_file(path: Path, layers: list[LayerInfo], target: Any = None) -> QuantPlan:
    """``read_plan_file`` then ``plan_from_file``."""
    return plan_from_file(read_plan_file(path, target), layers)


PLAN_HEADER = "# edgeq quantization plan"


def check_plan_output(path: Path, force: bool) -> None:
    """Fail before planning if ``path`` cannot take the plan YAML; ``force`` replaces only
    a plan edgeq wrote."""
    from edgeq.errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"plan output {path} is a directory", "pass a file name, e.g. plan.yaml")
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputError(f"plan output {path} already exists", "pass --force to replace it, or choose another -o")
        try:
            with path.open("rb") as f:
                head = f.read(len(PLAN_HEADER))
        except OSError:
            head = b""
        if path.is_symlink() or not path.is_file() or head != PLAN_HEADER.encode():
            raise OutputError(f"plan output {path} exists and is not a plan edgeq wrote",
                              "--force only replaces an edgeq plan; choose another -o")
    parent = path.parent if path.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the plan to {path} ({probe} is not a writable directory)", "choose another -o")
