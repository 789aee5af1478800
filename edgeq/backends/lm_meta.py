"""The ``edgeq.lm`` metadata a format's LLM artifact carries (what its session needs to open
it: context, vocabulary, layers...), read from an untrusted file: bounded, typed, versioned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeq.errors import ArtifactError

MAX_META_CHARS = 4096


def read_lm_meta(text: Any, path: Path, key: str, version: int, bounds: dict[str, tuple[int, int]],
                 hint: str) -> dict[str, Any]:
    """The JSON object ``text`` (the file's ``key`` metadata) of ``version``, every field in
    ``bounds`` an int within its inclusive ``(low, high)``; ``ArtifactError`` naming ``path``."""
    if not isinstance(text, str):
        raise ArtifactError(f"{path} is not an edgeq LLM artifact (no {key} metadata)", hint)
    if len(text) > MAX_META_CHARS:
        raise ArtifactError(f"{path}'s {key} metadata is larger than {MAX_META_CHARS} characters", hint)
    try:
        meta = json.loads(text)
    except ValueError:
        raise ArtifactError(f"{path}'s {key} metadata is not valid JSON", hint) from None
    if not isinstance(meta, dict) or meta.get("version") != version:
        raise ArtifactError(f"{path}'s {key} metadata is not version {version}", hint)
    for name, (low, high) in bounds.items():
        value = meta.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ArtifactError(f"{path}'s {key} metadata has a bad '{name}': {str(value)[:40]!r}", hint)
    return meta
