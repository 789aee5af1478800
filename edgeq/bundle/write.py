"""Writing a bundle into an Android app: ``APP_DIR/app/src/main/assets/edgeq/<id>/``.

The artifact's hashes are re-checked before anything is copied and the copies are hashed
again; the bundle is staged in a temporary sibling and renamed into place, so an app never
sees half a bundle. ``--force`` replaces only a directory that is itself an edgeq bundle.
``assets/edgeq/index.json`` lists every bundle in the app and is rewritten atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from edgeq.atomic import write_text_atomic
from edgeq.artifact import MANIFEST, file_table, read_artifact, sha256, staged_dir
from edgeq.bundle.describe import BUNDLE_FILE, BUNDLE_SCHEMA_VERSION, check_bundle_id, default_bundle_id, describe
from edgeq.errors import ArtifactError, OutputError

if TYPE_CHECKING:
    from edgeq.manifest import Manifest

ASSETS = Path("app/src/main/assets/edgeq")
INDEX = "index.json"
INDEX_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BundleResult:
    bundle_dir: Path
    description: dict[str, Any]
    index_path: Path


def bundle(artifact: str | Path, app_dir: str | Path, *, bundle_id: str | None = None,
           force: bool = False) -> BundleResult:
    """Copy a verified artifact into ``app_dir``'s assets with ``edgeq_bundle.json`` and a
    golden check, and list it in ``index.json``."""
    app_dir = Path(app_dir)
    bundle_id = check_bundle_id(bundle_id) if bundle_id is not None else None
    assets = _check_app_dir(app_dir)
    manifest, model_path = read_artifact(Path(artifact))  # re-checks every sha256
    artifact_dir = model_path.parent
    bundle_id = bundle_id or check_bundle_id(default_bundle_id(manifest))
    dest = assets / bundle_id
    _check_destination(dest, force)
    desc = describe(manifest, artifact_dir, bundle_id)
    _check_paths(artifact_dir, manifest)
    created = _make_assets_dir(assets)  # only now: a rejected input leaves the app untouched
    try:
        _stage(artifact_dir, manifest, desc, dest, force)
    except BaseException:
        for d in created:  # directories this call made, deepest first, if still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    index_path = write_index(assets)
    return BundleResult(bundle_dir=dest, description=desc, index_path=index_path)


def _stage(artifact_dir: Path, manifest: Manifest, desc: dict[str, Any], dest: Path, force: bool) -> None:
    with staged_dir(dest, force) as work:
        _copy_verified(artifact_dir, manifest, work)
        from edgeq.bundle.golden import make_golden

        golden = make_golden(desc, manifest, work)
        desc["golden"] = golden
        if "output" in golden:
            desc["outputs"][:1] = [{**(desc["outputs"] or [{}])[0], "name": golden["output"]["name"],
                                    "shape": golden["output"]["shape"], "dtype": golden["output"]["dtype"]}]
        desc["files"] = file_table(work) | {MANIFEST: {"bytes": (work / MANIFEST).stat().st_size,
                                                       "sha256": sha256(work / MANIFEST)}}
        (work / BUNDLE_FILE).write_text(json.dumps(desc, indent=2) + "\n")


def read_index(app_dir: str | Path) -> dict[str, Any]:
    """``assets/edgeq/index.json`` of an app (``{"bundles": []}`` when there is none)."""
    path = Path(app_dir) / ASSETS / INDEX
    if not path.exists():
        return {"schema_version": INDEX_SCHEMA_VERSION, "bundles": []}
    return json.loads(path.read_text())


def write_index(assets: Path) -> Path:
    """List every ``<id>/edgeq_bundle.json`` under ``assets`` in ``index.json`` (atomically)."""
    entries = []
    for d in sorted(p for p in assets.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            desc = json.loads((d / BUNDLE_FILE).read_text())
        except (OSError, ValueError):
            continue  # not a bundle (or a broken one): the app must not be offered it
        if not isinstance(desc, dict) or desc.get("schema_version") != BUNDLE_SCHEMA_VERSION:
            continue
        entries.append({
            "id": d.name, "model_name": desc.get("model_name"), "task": desc.get("task"),
            "format": desc.get("format"), "model_file": f"{d.name}/{desc.get('model_file')}",
            "bundle_file": f"{d.name}/{BUNDLE_FILE}", "runtime": (desc.get("runtime") or {}).get("android_package"),
        })
    index = {"schema_version": INDEX_SCHEMA_VERSION, "bundles": entries}
    write_text_atomic(assets / INDEX, json.dumps(index, indent=2) + "\n")
    return assets / INDEX


def _check_app_dir(app_dir: Path) -> Path:
    """``app_dir``'s asset directory for bundles, after checking it can be created and written."""
    if not app_dir.is_dir():
        raise OutputError(f"app directory {app_dir} does not exist or is not a directory",
                          "pass the app project's root (e.g. android-demo)")
    assets = app_dir / ASSETS
    existing = assets
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {assets}: {existing} is not a directory", "move it out of the way")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {existing} (permission denied)", "check the app directory's permissions")
    return assets


def _make_assets_dir(assets: Path) -> list[Path]:
    """Create ``assets``; return the directories that did not exist before, deepest first."""
    created = []
    d = assets
    while not d.exists():
        created.append(d)
        d = d.parent
    try:
        assets.mkdir(parents=True, exist_ok=True)
        return created
    except OSError as exc:
        raise OutputError(f"cannot create {assets} ({exc.strerror})", "check the app directory's permissions") from None


def _check_destination(dest: Path, force: bool) -> None:
    if not (dest.exists() or dest.is_symlink()):
        return
    if not force:
        raise OutputError(f"bundle {dest} already exists", "pass --force to replace it, or choose another --id")
    if dest.is_symlink() or not dest.is_dir() or not (dest / BUNDLE_FILE).is_file():
        raise OutputError(f"{dest} exists and is not an edgeq bundle, so --force will not replace it",
                          "remove it yourself or choose another --id")


def _check_paths(artifact_dir: Path, manifest: Manifest) -> None:
    """Every file the manifest lists is inside the artifact (a manifest is user input)."""
    root = artifact_dir.resolve()
    for rel in manifest.files:
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts or root not in (root / rel).resolve().parents:
            raise ArtifactError(f"{artifact_dir}/manifest.json lists a file outside the artifact ({rel})",
                                "re-run 'edgeq export'; do not edit manifest.json")


def _copy_verified(artifact_dir: Path, manifest: Manifest, work: Path) -> None:
    """Copy the manifest's files and the manifest; hash each copy against the manifest."""
    for rel, info in manifest.files.items():
        dst = work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact_dir / rel, dst)
        if sha256(dst) != info.sha256:
            raise ArtifactError(f"{artifact_dir}: {rel} changed while it was being copied", "run 'edgeq bundle' again")
    shutil.copyfile(artifact_dir / MANIFEST, work / MANIFEST)
