"""Artifact directories: staged in a temporary sibling, renamed into place when complete.

An artifact directory holds the model file (``model.pte`` or ``model.onnx``),
``manifest.json`` and what a runtime needs beside the model (tokenizer, preprocessor
config). Nothing half-written is ever left at the destination: on failure or interrupt
the staging directory is removed and an existing destination is untouched; a staging
directory left by a killed process (its pid is in its name) is cleaned by the next export.

``--force`` replaces only what edgeq wrote: an existing edgeq artifact. Anything else at
the output path (a user's folder, the input model, ``.``, the home directory) is refused.

Reading an artifact treats it as untrusted: the manifest's size is capped, and every file
it lists must be a regular file inside the artifact directory (no ``..``, no absolute
paths, no symlinks, devices or FIFOs) before it is hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from edgeq.atomic import umask
from edgeq.backends import MODEL_FILES
from edgeq.errors import ArtifactError, OutputError, disk_full
from edgeq.manifest import MANIFEST_SCHEMA_VERSION, Manifest

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 2**20  # a manifest is tens of KB; a bigger one is not ours
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


# ----------------------------------------------------------------------------- writing


def check_output(out_dir: Path, force: bool, protected: Sequence[str | Path] = ()) -> None:
    """Fail early (before any heavy work) if ``out_dir`` cannot or must not be written.

    ``protected``: paths the output may neither be nor contain (the input model).
    """
    out_dir = Path(out_dir)
    literal = Path(os.path.abspath(out_dir))
    resolved = out_dir.resolve()
    for path in {literal, resolved}:
        _refuse_precious(out_dir, path, protected)
    if out_dir.is_symlink():
        raise OutputError(f"output {out_dir} is a symbolic link", "pass the real directory, or another --output")
    if out_dir.exists():
        if not force:
            raise OutputError(f"output {out_dir} already exists", "pass --force to replace it, or choose another --output")
        if not out_dir.is_dir():
            raise OutputError(f"output {out_dir} exists and is not a directory", "remove it or choose another --output")
        if not is_artifact_dir(out_dir):
            raise OutputError(f"output {out_dir} exists and is not an edgeq artifact (no edgeq {MANIFEST})",
                              "--force only replaces an artifact edgeq wrote; choose another --output")
    parent = _existing_ancestor(out_dir.parent)
    if not parent.is_dir():
        raise OutputError(f"cannot create {out_dir}: {parent} is a file, not a directory", "choose another --output")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent} (permission denied)", "choose a writable --output location")


def _refuse_precious(given: Path, path: Path, protected: Sequence[str | Path]) -> None:
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if path == Path(path.anchor) or path == cwd or path in cwd.parents or path == home or path in home.parents:
        raise OutputError(f"output {given} is {'the root directory' if path == Path(path.anchor) else 'the current directory, the home directory or one of their parents'}",
                          "choose a new directory for the artifact, e.g. dist/NAME")
    for p in protected:
        source = Path(os.path.abspath(p)), Path(p).resolve()
        if any(path == s or path in s.parents for s in source):
            raise OutputError(f"output {given} is or contains the input model {p}",
                              "write the artifact somewhere else, e.g. dist/NAME")


def is_artifact_dir(path: Path) -> bool:
    """Whether ``path`` holds an edgeq manifest (a JSON object naming an edgeq model file)."""
    try:
        data = _read_manifest_json(Path(path) / MANIFEST)
    except ArtifactError:
        return False
    return isinstance(data, dict) and "schema_version" in data and data.get("model_file") in MODEL_FILES


def clean_stale_staging(out_dir: Path) -> list[str]:
    """Remove staging directories for ``out_dir`` left by processes that no longer run
    (killed mid-export); a previous artifact caught mid-replacement is put back. Returns
    what was done, one line each."""
    done: list[str] = []
    parent = Path(out_dir).parent
    if not parent.is_dir():
        return done
    for entry in sorted(parent.iterdir()):
        found = _STAGING.match(entry.name)
        if not found or found["name"] != Path(out_dir).name or _alive(int(found["pid"])):
            continue
        if not entry.is_dir() or entry.is_symlink():
            continue
        if found["kind"] == "old" and not out_dir.exists() and is_artifact_dir(entry):
            os.rename(entry, out_dir)
            done.append(f"restored {out_dir} from {entry.name}, left by an export that was killed while replacing it")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}, left by an export (pid {found['pid']}) that was killed")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged_dir(out_dir: Path, force: bool, protected: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out_dir`` atomically.

    On any failure, including ``Interrupted`` (SIGINT/SIGTERM), the staging directory is
    removed and ``out_dir`` is left as it was. A full disk becomes an ``OutputError``.
    """
    check_output(out_dir, force, protected)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent))
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir.parent} ({exc.strerror})", "choose a writable --output location") from None
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide the artifact from other users
            _replace(tmp, out_dir, force)
        except Exception as exc:
            if disk_full(exc):  # also when a library wrapped the OSError in its own error
                raise OutputError(f"no space left on device while writing {out_dir}",
                                  "free some disk space, or choose another --output") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not force:  # appeared while we worked
        raise OutputError(f"output {out_dir} appeared while exporting", "pass --force to replace it")
    if not is_artifact_dir(out_dir):
        raise OutputError(f"output {out_dir} was replaced by something that is not an edgeq artifact while exporting",
                          "choose another --output")
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
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


def write_manifest(root: Path, manifest: Manifest) -> None:
    data = manifest.model_dump(mode="json")
    (root / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ----------------------------------------------------------------------------- reading


def _read_manifest_json(mpath: Path) -> Any:
    """Parse a manifest with its size capped; only a regular file (no symlink, FIFO, device)."""
    try:
        st = mpath.lstat()
    except FileNotFoundError:
        raise ArtifactError(f"{mpath.parent} has no {MANIFEST}", "re-run 'edgeq export' to produce a complete artifact") from None
    except OSError as exc:
        raise ArtifactError(f"{mpath} cannot be read ({exc.strerror})", "check the artifact directory") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{mpath} is not a regular file", "re-run 'edgeq export'")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{mpath} is {st.st_size / 2**20:.0f} MiB, over edgeq's {MAX_MANIFEST_BYTES >> 20} MiB "
                            "limit for a manifest", "re-run 'edgeq export'")
    try:
        with mpath.open("rb") as f:
            return json.loads(f.read(MAX_MANIFEST_BYTES + 1))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mpath} is corrupt ({str(exc)[:120]})", "re-run 'edgeq export'") from None
    except RecursionError:
        raise ArtifactError(f"{mpath} is nested too deeply to be a manifest", "re-run 'edgeq export'") from None
    except OSError as exc:
        raise ArtifactError(f"{mpath} cannot be read ({exc.strerror})", "check the artifact directory") from None


def member(root: Path, rel: Any) -> Path:
    """``root / rel`` for a file an artifact's manifest lists, refusing anything that is not
    a plain relative path to a regular file inside ``root``."""
    bad = (not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/")
           or any(part in ("", ".", "..") for part in PurePosixPath(rel).parts) or len(rel) > 1024)
    if bad:
        raise ArtifactError(f"{root}: the manifest lists a file outside the artifact ({str(rel)[:80]!r})",
                            "the manifest is corrupt or crafted; re-run 'edgeq export'")
    path = root / rel
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise ArtifactError(f"{root}: {rel} is missing", "re-run 'edgeq export'") from None
    except OSError as exc:
        raise ArtifactError(f"{root}: {rel} cannot be read ({exc.strerror})", "re-run 'edgeq export'") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{root}: {rel} is not a regular file (a link, device or pipe)",
                            "an artifact holds only regular files; re-run 'edgeq export'")
    real_root = root.resolve()
    if real_root not in path.resolve().parents:
        raise ArtifactError(f"{root}: {rel} lies outside the artifact directory", "re-run 'edgeq export'")
    return path


def load_manifest(path: Path) -> Manifest:
    """An artifact directory's manifest, read under the bounds above, brought to the current
    schema by ``edgeq.manifest.upgrade`` and validated; ``ArtifactError`` names the first problem."""
    from pydantic import ValidationError

    from edgeq.manifest import first_problem, upgrade

    mpath = Path(path) / MANIFEST
    manifest = _read_manifest_json(mpath)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath} is not a JSON object", "re-run 'edgeq export'")
    version = manifest.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_SCHEMA_VERSION:
        raise ArtifactError(f"{mpath} was written by a newer edgeq (manifest schema {version}; this edgeq reads "
                            f"{MANIFEST_SCHEMA_VERSION})", "upgrade edgeq")
    if type(version) is not int or not 1 <= version <= MANIFEST_SCHEMA_VERSION:  # True == 1 in Python
        raise ArtifactError(f"{mpath} has an unknown schema version", "re-export with this edgeq version")
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        raise ArtifactError(f"{mpath}: 'files' is not a table of {{path: {{bytes, sha256}}}}", "re-run 'edgeq export'")
    try:
        return Manifest.model_validate(upgrade(manifest))
    except ValidationError as exc:
        raise ArtifactError(f"{mpath}: {first_problem(exc)}", "re-run 'edgeq export' with this edgeq") from None


def read_artifact(path: Path, verify_hashes: bool = True) -> tuple[Manifest, Path]:
    """Load an artifact directory's manifest and model path; check files against hashes."""
    path = Path(path)
    if path.is_file() and path.name in MODEL_FILES:
        path = path.parent
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an artifact directory", "pass a directory written by 'edgeq export'")
    manifest = load_manifest(path)
    model_name = manifest.model_file
    if model_name not in MODEL_FILES:
        raise ArtifactError(f"{path}/{MANIFEST} names no model file", "re-run 'edgeq export'")
    try:
        model = member(path, model_name)
    except ArtifactError as exc:
        if "is missing" in exc.message:
            raise ArtifactError(f"{path} is missing its model file ({model_name})", "re-run 'edgeq export'") from None
        raise
    if verify_hashes:
        for rel, info in manifest.files.items():
            f = member(path, rel)
            if f.stat().st_size != info.bytes or sha256(f) != info.sha256:
                raise ArtifactError(f"{path}: {rel} does not match its sha256 in the manifest (corrupt or modified)",
                                    "re-run 'edgeq export'")
    return manifest, model
