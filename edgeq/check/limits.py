"""Where each gate's limit comes from: a flag, the target's ``checks:`` block and budgets,
the budgets recorded in the manifest, or edgeq's default — resolved once per artifact.

Every ``Limit`` carries its source, so a report says *why* 0.99 is the bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Used when neither a flag nor the target sets a limit; each is a floor a healthy int8
# artifact clears comfortably (tiny models score cosine > 0.9999), so a failure is real.
DEFAULTS = {
    "fidelity.cosine_min": 0.99,
    "fidelity.top1_min": 0.90,
    "delegation.min_share": 0.5,
    "regression.size_pct": 5.0,
    "regression.memory_pct": 10.0,
    "regression.latency_pct": 10.0,
    "regression.fidelity_drop": 0.005,
}


@dataclass(frozen=True)
class Limit:
    value: float
    source: str


@dataclass(frozen=True)
class Limits:
    """The limits of every gate for one artifact."""

    storage_bytes: Limit
    memory_bytes: Limit
    latency_ms: Limit | None
    fidelity_cosine: Limit
    fidelity_top1: Limit
    fidelity_kl: Limit | None
    delegate: str
    delegate_share: Limit
    regression: dict[str, Limit]
    device: str
    target_name: str


def resolve(mv: Any, target: Any | None, *, latency_budget_ms: float | None = None) -> Limits:
    """Limits for an artifact (``ManifestView``) from ``target`` (a ``Target``, or None to use
    the budgets recorded in the manifest at export) and flags."""
    if target is not None:
        where = f"target {target.name}"
        budgets = target.budgets.model_dump()
        checks = target.checks
        device = target.device
        chain = target.delegates
    else:
        where = f"manifest budgets (target {mv.target_name} at export)"
        budgets = mv.budgets
        checks = None
        device = mv.device
        chain = mv.delegates

    def budget(key: str, scale: float) -> Limit:
        if budgets.get(key) is None:
            from edgeq.check.manifest_view import ManifestError

            raise ManifestError(f"no budgets.{key} in {where}")
        return Limit(float(budgets[key]) * scale, f"{where} budgets.{key}")

    def check(gate: str, key: str) -> Limit | None:
        value = getattr(getattr(checks, gate), key) if checks is not None else None
        if value is not None:
            return Limit(float(value), f"target {target.name} checks.{gate}.{key}")
        if f"{gate}.{key}" in DEFAULTS:
            return Limit(DEFAULTS[f"{gate}.{key}"], f"edgeq default checks.{gate}.{key}")
        return None

    if latency_budget_ms is not None:
        latency = Limit(latency_budget_ms, "flag --latency-budget")
    else:
        latency = budget("latency_ms", 1.0) if budgets.get("latency_ms") is not None else None
    delegate = (checks.delegation.delegate if checks is not None else None) or chain[0]
    return Limits(
        storage_bytes=budget("storage_mb", 1e6),
        memory_bytes=budget("runtime_memory_mb", 1e6),
        latency_ms=latency,
        fidelity_cosine=check("fidelity", "cosine_min"),
        fidelity_top1=check("fidelity", "top1_min"),
        fidelity_kl=check("fidelity", "kl_max"),
        delegate=delegate,
        delegate_share=check("delegation", "min_share"),
        regression={k: check("regression", k) for k in ("size_pct", "memory_pct", "latency_pct", "fidelity_drop")},
        device=device,
        target_name=target.name if target is not None else mv.target_name,
    )
