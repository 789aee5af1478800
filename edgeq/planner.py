"""Plan per-layer schemes: measure sensitivity, then solve for the least predicted error
within a byte budget (or the fewest bytes within an error bound).

>>> from edgeq.planner import plan  # doctest: +SKIP
>>> result = plan("path/to/model", "rpi5", budget_bytes=20_000_000)  # doctest: +SKIP
>>> result.plan.schemes["model.encoder.layer.0.attention.self.query"]  # doctest: +SKIP
'int4-g32'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError, EdgeqError
from edgeq.inventory import LayerInfo, fp32_bytes, layer_inventory, stored_bytes
from edgeq.plan import SCHEMES, QuantPlan
from edgeq.progress import Steps

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
    budget_bytes: int | None
    predicted_error: float
    target: str
    model: str
    fmt: str
    pinned: dict[str, str] = field(default_factory=dict)
    reserve_bytes: float = 0  # held back from the budget for file overhead (after a measured overshoot)

    @property
    def predicted_bytes(self) -> int:
        return sum(self.layer_bytes.values()) + self.other_bytes

    def to_yaml(self) -> str:
        import yaml

        doc = {
            "schema_version": PLAN_SCHEMA_VERSION,
            "model": self.model,
            "target": self.target,
            "format": self.fmt,
            "budget_bytes": self.budget_bytes,
            "predicted": {"bytes": self.predicted_bytes, "error": round(self.predicted_error, 8)},
            "layers": dict(self.plan.schemes),
        }
        return "# edgeq quantization plan: layer → scheme (edit freely; 'edgeq export --plan FILE')\n" + yaml.safe_dump(
            doc, sort_keys=False
        )


def candidate_schemes(layer: LayerInfo, allowed: list[str], fmt: str) -> list[str]:
    """Schemes the target allows that this layer's kind and shape can take in ``fmt``."""
    out = []
    for scheme in ("fp32", "int8", "int4-g32", "int4-g64", "int4-g128"):
        base = "int4" if scheme.startswith("int4") else scheme
        if base in allowed and layer.fits(scheme) and not (layer.kind == "conv" and base == "int4"):
            out.append(scheme)
    return out


def parse_rules(rules: list[str], layers: list[LayerInfo]) -> dict[str, str]:
    """``["regex=scheme", ...]`` → pinned ``{fqn: scheme}``; every rule must match a layer."""
    pinned: dict[str, str] = {}
    names = [layer.fqn for layer in layers]
    for rule in rules:
        if "=" not in rule:
            raise ConfigError(f"rule '{rule}' is not of the form REGEX=SCHEME", "e.g. --rule 'attention.output=int8'")
        pattern, scheme = rule.rsplit("=", 1)
        if scheme not in SCHEMES:
            from edgeq.errors import did_you_mean

            raise ConfigError(f"rule '{rule}': unknown scheme '{scheme}'{did_you_mean(scheme, SCHEMES)}",
                              f"schemes: {', '.join(SCHEMES)}")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"rule '{rule}': bad regular expression ({exc})", "fix the pattern") from None
        matched = [n for n in names if regex.search(n)]
        if not matched:
            from edgeq.errors import did_you_mean

            raise ConfigError(f"rule '{rule}' matches no layer{did_you_mean(pattern, names)}",
                              "run 'edgeq plan' to see the layer names")
        for n in matched:
            pinned[n] = scheme
    return pinned


def plan(
    model: Any,
    target: Any,
    *,
    budget_bytes: int | None = None,
    max_drop: float | None = None,
    rules: list[str] | None = None,
    proxy: str | None = None,
    calib_samples: int = 32,
    use_cache: bool = True,
    steps: Steps | None = None,
    reserve_bytes: float = 0,
) -> PlanResult:
    """Choose a scheme per layer for ``model`` (a LoadedModel or source) on ``target``."""
    from edgeq import sensitivity, solver
    from edgeq.models import LoadedModel, load_model
    from edgeq.targets import ResolvedTarget, load_target

    steps = steps or Steps()
    resolved = target if isinstance(target, ResolvedTarget) else load_target(target)
    tgt = resolved.target
    fmt = tgt.format
    loaded = model if isinstance(model, LoadedModel) else load_model(model, seq_len=tgt.seq_len)
    layers = layer_inventory(loaded.module)
    pinned = parse_rules(rules or [], layers)
    for fqn, scheme in pinned.items():
        layer = next(x for x in layers if x.fqn == fqn)
        if scheme not in candidate_schemes(layer, list(tgt.precisions) + ["fp32"], fmt) and scheme != "fp32":
            raise ConfigError(f"layer {fqn} cannot take {scheme} on target {tgt.name}",
                              "its shape or kind does not fit the scheme, or the target does not allow it")
    candidates = {
        x.fqn: [pinned[x.fqn]] if x.fqn in pinned else candidate_schemes(x, list(tgt.precisions), fmt)
        for x in layers
    }
    for fqn, c in candidates.items():
        if not c:
            candidates[fqn] = ["fp32"]
    with steps.step("Measuring sensitivity") as info:
        calib = loaded.make_inputs("calib", calib_samples)
        sens = sensitivity.measure(loaded.module, layers, candidates, calib, loaded.metric,
                                   proxy=proxy, use_cache=use_cache)
        info.detail = f"{sum(len(v) for v in candidates.values())} layer×scheme pairs on {len(calib)} inputs"
    other = fp32_bytes(loaded.module) - sum(x.fp32_bytes for x in layers)
    options = {
        x.fqn: [solver.Choice(s, stored_bytes(x, s, fmt), sens[x.fqn][s]) for s in candidates[x.fqn]]
        for x in layers
    }
    with steps.step("Solving the plan") as info:
        if max_drop is not None:
            try:
                solution = solver.smallest_within(options, max_drop)
            except ValueError as exc:
                raise BudgetError(str(exc), "raise --max-drop or allow more precisions") from None
        else:
            budget = budget_bytes if budget_bytes is not None else int(tgt.budgets.storage_mb * 1e6)
            try:
                solution = solver.solve(options, int(budget - other - reserve_bytes))
            except solver.Infeasible as exc:
                held = f" after {reserve_bytes / 1e3:.0f} KB held back for measured file overhead" if reserve_bytes else ""
                raise BudgetError(
                    f"budget {budget / 1e6:.3f} MB{held} is below the smallest achievable plan "
                    f"({(exc.minimum_bytes + other + reserve_bytes) / 1e6:.3f} MB)",
                    "raise --budget, or allow int4 on the target",
                ) from None
        info.detail = f"{solution.bytes / 1e6:.2f} MB of layers, predicted error {solution.error:.4g}"
    schemes = solution.schemes
    return PlanResult(
        plan=QuantPlan(schemes=schemes, reasons={f: "pinned by a rule" for f in pinned}),
        layers=layers,
        sensitivity=sens,
        layer_bytes={x.fqn: stored_bytes(x, schemes[x.fqn], fmt) for x in layers},
        other_bytes=other,
        budget_bytes=budget_bytes if max_drop is None else None,
        predicted_error=solution.error,
        target=tgt.name,
        model=loaded.name,
        fmt=fmt,
        pinned=pinned,
        reserve_bytes=reserve_bytes,
    )


def load_plan_file(path: Path, layers: list[LayerInfo]) -> QuantPlan:
    """Read a plan YAML; every layer must exist, every scheme must be known."""
    from edgeq.errors import did_you_mean
    from edgeq.yamlio import read_yaml

    data, lines = read_yaml(Path(path))
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        raise ConfigError(f"{path}: a plan needs a 'layers:' mapping of layer → scheme", "write one with 'edgeq plan -o FILE'")
    names = {x.fqn: x for x in layers}
    schemes: dict[str, str] = {}
    for fqn, scheme in data["layers"].items():
        where = f"{path}:{lines.get(('layers', fqn), 1)}"
        if fqn not in names:
            raise ConfigError(f"{where}: unknown layer '{fqn}'{did_you_mean(str(fqn), list(names))}",
                              "the plan was made for another model, or the name is misspelt")
        if scheme not in SCHEMES:
            raise ConfigError(f"{where}: unknown scheme '{scheme}'{did_you_mean(str(scheme), SCHEMES)}",
                              f"schemes: {', '.join(SCHEMES)}")
        if not names[fqn].fits(scheme):
            raise ConfigError(f"{where}: layer '{fqn}' (shape {list(names[fqn].shape)}) cannot take {scheme}",
                              "pick a scheme its shape fits, e.g. int8")
        schemes[fqn] = scheme
    for fqn in names:
        schemes.setdefault(fqn, "fp32")
    return QuantPlan(schemes=schemes, reasons={f: "not in the plan file: fp32" for f in names if f not in data["layers"]})
