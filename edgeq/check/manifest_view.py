"""The one place ``edgeq check`` reads an artifact's manifest.

Gates read a ``ManifestView`` (the fields they need, flattened) built from the typed
``edgeq.manifest.Manifest``. ``view`` also takes the raw JSON dict (the integrity gate
names a bad field before anything else reads the artifact): it is upgraded and validated
by ``edgeq.manifest``, and the first problem becomes ``ManifestError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeq.manifest import Manifest


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
    llm_max_context: int | None = None  # a decoder LLM with a KV cache: its max context; None otherwise

    @property
    def is_llm(self) -> bool:
        return self.llm_max_context is not None

    @property
    def model_sha256(self) -> str:
        return str((self.files.get(self.model_file) or {}).get("sha256", ""))

    @property
    def seq_len(self) -> int | None:
        shapes = self.input_shapes
        return shapes[0][-1] if shapes and shapes[0] else None


def view(manifest: Manifest | Any) -> ManifestView:
    """A flat view of a ``Manifest`` (or of a manifest's JSON dict, validated first);
    raises ``ManifestError`` naming what is wrong."""
    typed = manifest if isinstance(manifest, Manifest) else parse(manifest)
    target, model, delegation = typed.target, typed.model, typed.delegation
    return ManifestView(
        model_file=typed.model_file,
        format=target.format,
        target_name=target.name,
        device=target.device,
        delegates=list(target.delegates),
        threads=target.threads,
        model_name=model.name,
        model_source=model.source,
        model_source_kind=model.source_kind,
        task=model.task,
        input_shapes=[list(spec.shape) for spec in model.inputs],
        artifact_bytes=typed.sizes.artifact_bytes,
        budgets=typed.budgets.model_dump(),
        delegates_used=list(delegation.used),
        delegated_ops=dict(delegation.delegated_ops),
        portable_ops=delegation.portable_ops,
        expected_execution_providers=delegation.expected_execution_providers,
        notes=list(typed.notes),
        recorded_numerics=typed.numerics.model_dump() if typed.numerics is not None else None,
        files={rel: info.model_dump() for rel, info in typed.files.items()},
        has_layer_inventory=typed.precision.inventory is not None,
        llm_max_context=typed.llm.max_context if typed.llm is not None else None,
    )


def parse(data: Any) -> Manifest:
    """A manifest's JSON dict as a ``Manifest`` (upgraded from an older schema); raises
    ``ManifestError`` with its first problem in words a CI log reader can act on."""
    from pydantic import ValidationError

    from edgeq.manifest import upgrade

    if not isinstance(data, dict):
        raise ManifestError("unknown schema version (the manifest is not a JSON object)")
    try:
        return Manifest.model_validate(upgrade(data))
    except ValidationError as exc:
        raise ManifestError(_say(exc.errors()[0])) from None
    except ValueError as exc:  # upgrade: a schema version edgeq does not read
        raise ManifestError(f"unknown schema version ({exc})") from None


def _say(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "missing":
        return f"the manifest has no '{where}'"
    if kind in ("model_type", "dict_type"):
        return f"the manifest's '{where}' is not a dict"
    if kind == "list_type":
        return f"the manifest's '{where}' is not a list"
    if kind == "extra_forbidden":
        return f"the manifest has an unknown field '{where}'"
    return f"the manifest has a field of the wrong kind ({where}: {err.get('msg', 'invalid')})"
