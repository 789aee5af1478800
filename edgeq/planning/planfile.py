"""The plan file: a typed, versioned YAML document of layer → scheme.

``edgeq plan -o FILE`` writes a ``PlanDocument``; ``edgeq export --plan FILE`` reads one
back (hand-edited or not) through ``read_plan_file``, which checks everything that needs
no model (schema version, keys, the format and target it was made for, every scheme known
and allowed), and ``plan_from_file``, which checks it against the model's layers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgeq.errors import ConfigError
from edgeq.planning.inventory import LayerInfo
from edgeq.planning.plan import QuantPlan
from edgeq.schemes import FP32, Scheme, parse

PLAN_SCHEMA_VERSION = 1
PLAN_HEADER = "# edgeq quantization plan"


class PlanPrediction(BaseModel):
    """What the planner predicted for the plan (estimates; the artifact's manifest holds
    what was measured)."""

    model_config = ConfigDict(extra="forbid")
    bytes: int | None = None
    error: float | None = None
    peak_memory_bytes: int | None = None
    file_overhead_bytes: int | None = None
    latency_ms: float | None = None  # whole-model p50 (edgeq.planning.latency)
    latency_source: str | None = None  # how the layers were timed (measured on a host, or an estimate)


class PlanDocument(BaseModel):
    """A plan file. Only ``layers`` is required: a hand-written plan may be just that."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = PLAN_SCHEMA_VERSION
    model: str | None = None
    target: str | None = None
    format: str | None = None
    budget_bytes: int | None = None
    memory_budget_bytes: int | None = None
    latency_budget_ms: float | None = None
    objective: str | None = None
    binding: str | None = None
    predicted: PlanPrediction | None = None
    layers: dict[str, Any]  # fqn → scheme name; each is parsed by edgeq.schemes.parse, with its line
    notes: dict[str, str] = {}
    cannot_take: dict[str, dict[str, str]] = {}
    not_measured: dict[str, str] = {}  # algorithm (e.g. gptq) → why its schemes were not candidates

    def to_yaml(self) -> str:
        import yaml

        doc = self.model_dump(exclude_defaults=False)
        for key in ("notes", "cannot_take", "not_measured"):
            if not doc[key]:
                del doc[key]
        return f"{PLAN_HEADER}: layer → scheme (edit freely; 'edgeq export --plan FILE')\n" + yaml.safe_dump(
            doc, sort_keys=False, allow_unicode=True)


@dataclass(frozen=True)
class PlanFile:
    """A plan YAML read and checked against the target, before the model is loaded."""

    path: Path
    document: PlanDocument
    schemes: dict[str, Scheme]
    lines: dict[Any, int]


def read_plan_file(path: Path, target: Any = None) -> PlanFile:
    """Read a plan YAML and check what needs no model: its schema version, its keys, that it
    was made for ``target``'s format and target, and that every scheme is known and allowed."""
    from edgeq.yamlio import read_yaml, validate_yaml

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
    document = validate_yaml(PlanDocument, data, lines, path)
    if target is not None:
        for key, mine in (("format", target.format), ("target", target.name)):
            theirs = getattr(document, key)
            if theirs is not None and theirs != mine:
                raise ConfigError(f"{path}:{lines.get((key,), 1)}: the plan was made for {key} {theirs!r}, "
                                  f"this export is for {key} {mine!r}",
                                  f"re-plan with 'edgeq plan MODEL -t {target.name} -o FILE' (or edit '{key}:' "
                                  "in the file if you mean to reuse it)")
    schemes: dict[str, Scheme] = {}
    for fqn, scheme in document.layers.items():
        where = f"{path}:{lines.get(('layers', fqn), 1)}"
        scheme = parse(scheme, where)
        if target is not None and scheme != FP32 and scheme.precision not in target.precisions:
            raise ConfigError(f"{where}: layer '{fqn}' is planned as {scheme}, which target '{target.name}' does not "
                              f"allow (precisions: {', '.join(target.precisions)})",
                              "edit the plan, or re-plan for this target with 'edgeq plan'")
        schemes[fqn] = scheme
    return PlanFile(path, document, schemes, lines)


def plan_from_file(plan_file: PlanFile, layers: list[LayerInfo], cannot: Any = None) -> QuantPlan:
    """The plan for ``layers``: every planned layer must exist and its shape take its scheme
    (``cannot(layer, scheme)``: the format's reason it cannot, e.g. a kernel it lacks);
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
        if cannot is not None and (why := cannot(names[fqn], scheme)):
            raise ConfigError(f"{where}: layer '{fqn}' cannot take {scheme}: {why}", "pick a scheme the format stores")
    schemes = {fqn: plan_file.schemes.get(fqn, FP32) for fqn in names}
    return QuantPlan(schemes=schemes, reasons={f: "not in the plan file: fp32" for f in names if f not in plan_file.schemes})


def load_plan_file(path: Path, layers: list[LayerInfo], target: Any = None) -> QuantPlan:
    """``read_plan_file`` then ``plan_from_file``."""
    return plan_from_file(read_plan_file(path, target), layers)


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
