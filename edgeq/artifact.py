"""Artifact directories: staged in a temporary sibling, renamed into place when complete.

An artifact directory holds the model file (``model.pte`` or ``model.onnx``),
``manifest.json`` and what a runtime needs beside the model (tokenizer, preprocessor
config). Nothing half-written is ever left at the destination: on failure the staging
directory is removed and an existing destination is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgeq.errors import ArtifactError, OutputError

MANIFEST = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
MODEL_FILES = ("model.pte", "model.onnx")


def check_output(out_dir: Path, force: bool) -> None:
    """Fail early (before any heavy work) if ``out_dir`` cannot be written."""
    if out_dir.exists() and not force:
        raise OutputError(f"output {out_dir} already exists", "pass --force to replace it, or choose another --output")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output {out_dir} exists and is not a directory", "remove it or choose another --output")
    parent = _existing_ancestor(out_dir.parent)
    if not parent.is_dir():
        raise OutputError(f"cannot create {out_dir}: {parent} is a file, not a directory", "choose another --output")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent} (permission denied)", "choose a writable --output location")


@contextlib.contextmanager
def staged_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out_dir`` atomically."""
    check_output(out_dir, force)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir.parent} ({exc.strerror})", "choose a writable --output location") from None
    try:
        yield tmp
        _replace(tmp, out_dir, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not force:  # appeared while we worked
        raise OutputError(f"output {out_dir} appeared while exporting", "pass --force to replace it")
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        os.rename(old, out_dir)  # put the previous artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {bytes, sha256}}`` for every file under ``root`` but the manifest."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    return out


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_artifact(path: Path, verify_hashes: bool = True) -> tuple[dict[str, Any], Path]:
    """Load an artifact directory's manifest and model path; check files against hashes."""
    path = Path(path)
    if path.is_file() and path.name in MODEL_FILES:
        path = path.parent
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an artifact directory", "pass a directory written by 'edgeq export'")
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} has no {MANIFEST}", "re-run 'edgeq export' to produce a complete artifact") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mpath} is corrupt ({exc})", "re-run 'edgeq export'") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise ArtifactError(f"{mpath} has an unknown schema version", "re-export with this edgeq version")
    model_name = manifest.get("model_file")
    if model_name not in MODEL_FILES or not (path / model_name).exists():
        raise ArtifactError(f"{path} is missing its model file ({model_name})", "re-run 'edgeq export'")
    if verify_hashes:
        for rel, info in manifest.get("files", {}).items():
            f = path / rel
            if not f.exists():
                raise ArtifactError(f"{path}: {rel} is missing", "re-run 'edgeq export'")
            if f.stat().st_size != info["bytes"] or sha256(f) != info["sha256"]:
                raise ArtifactError(f"{path}: {rel} does not match its sha256 in the manifest (corrupt or modified)",
                                    "re-run 'edgeq export'")
    return manifest, path / model_name
