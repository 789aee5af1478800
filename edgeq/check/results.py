"""Typed results of ``edgeq check``: one ``GateResult`` per gate, one ``CheckResult`` per artifact.

A gate passes, fails or is skipped (with the reason); every verdict carries the measured
figure beside its limit and where the limit came from, so a report never says "failed"
without saying by how much and against what.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "skipped"]
GATES: tuple[str, ...] = ("integrity", "fit", "fidelity", "delegation", "latency", "regression")
RESULT_VERSION = 1


@dataclass(frozen=True)
class GateResult:
    """The verdict of one gate on one artifact."""

    gate: str
    status: Status
    message: str  # one line: the figure and the limit, or why the gate was skipped
    figure: str = ""  # the measured figure, formatted (e.g. "39.6 KB")
    limit: str = ""  # the limit it was held to (e.g. "<= 0.001 MB")
    source: str = ""  # where the limit came from (target checks block, flag, baseline, default)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class CheckResult:
    """All gates of one artifact."""

    artifact: str
    target: str
    gates: list[GateResult]
    seconds: float = 0.0
    manifest_file: str = ""

    @property
    def passed(self) -> bool:
        return not any(g.failed for g in self.gates)

    @property
    def failures(self) -> list[GateResult]:
        return [g for g in self.gates if g.failed]

    def gate(self, name: str) -> GateResult:
        for g in self.gates:
            if g.gate == name:
                return g
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "target": self.target, "passed": self.passed,
                "seconds": round(self.seconds, 3), "gates": [asdict(g) for g in self.gates]}


def exit_code(results: list[CheckResult]) -> int:
    """0 when every gate of every artifact passed or was skipped, 1 when one failed."""
    return 0 if all(r.passed for r in results) else 1


def to_json(results: list[CheckResult]) -> dict[str, Any]:
    return {"version": RESULT_VERSION, "passed": exit_code(results) == 0,
            "artifacts": [r.to_dict() for r in results]}


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
