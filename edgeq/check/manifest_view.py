"""The one place ``edgeq check`` reads an artifact's manifest.

Gates read a ``ManifestView`` (typed, with the fields they need), never the manifest's
dict by string keys, so moving to a typed manifest model changes this module alone.
A missing or mistyped field becomes ``ManifestError`` (reported by the integrity gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ManifestError(ValueError):
    """The manifest lacks a field or has one of the wrong type."""


@dataclass(frozen=True)
class ManifestView:
    model_file: str
    format: str  # executorch | onnx
    target_name: str
    device: str
    delegates: list[str]  # the target's chain at export
    threads: int
    model_name: str
    model_source: str
    model_source_kind: str
    task: str
    input_shapes: list[list[int]]
    artifact_bytes: int
    budgets: dict[str, Any]
    delegates_used: list[str]
    delegated_ops: dict[str, int]  # delegate (or ONNX execution provider) → op count
    portable_ops: dict[str, int]  # op type → count, on the portable CPU path
    expected_execution_providers: list[str]
    notes: list[str]
    recorded_numerics: dict[str, Any] | None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    has_layer_inventory: bool = False  # precision.inventory: lets memory be predicted without the source

    @property
    def model_sha256(self) -> str:
        return str((self.files.get(self.model_file) or {}).get("sha256", ""))

    @property
    def seq_len(self) -> int | None:
        shapes = self.input_shapes
        return shapes[0][-1] if shapes and shapes[0] else None


def view(manifest: Any) -> ManifestView:
    """A typed view of a manifest dict; raises ``ManifestError`` naming what is wrong."""
    try:
        return _view(manifest)
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"the manifest has a field of the wrong kind ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None


def _view(manifest: Any) -> ManifestView:
    if not isinstance(manifest, dict):
        raise ManifestError("the manifest is not a JSON object")
    target = _get(manifest, "target", dict)
    model = _get(manifest, "model", dict)
    delegation = _get(manifest, "delegation", dict)
    sizes = _get(manifest, "sizes", dict)
    inputs = _get(model, "inputs", list, "model.")
    shapes = []
    for spec in inputs:
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise ManifestError("model.inputs has an entry without a shape")
        shapes.append([int(d) for d in spec["shape"]])
    return ManifestView(
        model_file=_get(manifest, "model_file", str),
        format=_get(target, "format", str, "target."),
        target_name=_get(target, "name", str, "target."),
        device=_get(target, "device", str, "target."),
        delegates=[str(d) for d in _get(target, "delegates", list, "target.")],
        threads=int(target.get("threads") or 0),
        model_name=str(model.get("name", "")),
        model_source=str(model.get("source", "")),
        model_source_kind=str(model.get("source_kind", "")),
        task=_get(model, "task", str, "model."),
        input_shapes=shapes,
        artifact_bytes=int(_get(sizes, "artifact_bytes", int, "sizes.")),
        budgets=dict(manifest.get("budgets") or {}),
        delegates_used=[str(d) for d in delegation.get("used") or []],
        delegated_ops={str(k): int(v) for k, v in (delegation.get("delegated_ops") or {}).items()},
        portable_ops={str(k): int(v) for k, v in (delegation.get("portable_ops") or {}).items()},
        expected_execution_providers=[str(p) for p in delegation.get("expected_execution_providers") or []],
        notes=[str(n) for n in manifest.get("notes") or []],
        recorded_numerics=manifest.get("numerics") if isinstance(manifest.get("numerics"), dict) else None,
        files=dict(manifest.get("files") or {}),
        has_layer_inventory=(manifest.get("precision") or {}).get("inventory") is not None,
    )


def _get(d: dict[str, Any], key: str, kind: type, prefix: str = "") -> Any:
    if key not in d:
        raise ManifestError(f"the manifest has no '{prefix}{key}'")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"the manifest's '{prefix}{key}' is not a {kind.__name__}")
    return value
