"""``edgeq_bundle.json`` (schema v1): the one file an app reads about a bundled model.

Everything here is derived from the artifact's manifest and its tokenizer files; this
module is the only place that reads the manifest (an ``edgeq.manifest.Manifest``) for bundling.

The description holds: format, model file, task, inputs and outputs (name, shape,
dtype), the delegates the artifact actually uses (from the manifest's delegation record,
not the target's wish list), the runtime and its exact version, thread count, tokenizer
(kind, files, max length, special ids, normalisation), post-processing, Android hints,
and, filled in by :mod:`edgeq.bundle.golden` and :mod:`edgeq.bundle.write`, the golden
check and every file's bytes and sha256.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeq.backends import MODEL_FILES
from edgeq.errors import ArtifactError

if TYPE_CHECKING:
    from edgeq.manifest import Manifest

BUNDLE_FILE = "edgeq_bundle.json"
BUNDLE_SCHEMA_VERSION = 1
# Model files an app memory-maps or hands to the runtime by path: stored uncompressed in
# the APK so they can be read straight from the asset (and aligned by zipalign).
# Every format's model file, plus ONNX external data and raw tensors.
NO_COMPRESS_SUFFIXES = (*(name.rsplit(".", 1)[1] for name in MODEL_FILES), "data", "bin")
ANDROID_ABIS = ["arm64-v8a", "x86_64"]  # the ABIs ExecuTorch's and ONNX Runtime's Android AARs ship
ANDROID_MIN_SDK = 28  # android-demo's minSdk; not checked against the AARs' own minimum here
MAX_INPUT_ELEMENTS = 1 << 26  # 64 Mi elements per input: far above any edge model's input


def describe(manifest: Manifest, artifact_dir: Path, bundle_id: str) -> dict[str, Any]:
    """The bundle description (without ``golden`` and ``files``) for an artifact's manifest."""
    target, model = manifest.target, manifest.model
    fmt = target.format
    inputs = [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in model.inputs]
    outputs = list(model.outputs)
    delegates = list(manifest.delegation.used)
    versions = dict(manifest.versions)
    threads = target.threads
    task = model.task
    precision = manifest.precision.requested
    for spec in inputs:  # shapes come from a user-editable file: bound what they make us allocate
        count = 1
        for dim in spec["shape"]:
            count *= dim
        if any(d < 0 for d in spec["shape"]) or count > MAX_INPUT_ELEMENTS:
            raise ArtifactError(f"{artifact_dir}/manifest.json: input {spec['name']} has shape {spec['shape']}",
                                "re-run 'edgeq export'")
    from edgeq.backends import FORMATS, get_backend

    if fmt not in FORMATS or not get_backend(fmt).ANDROID_PACKAGE:
        raise ArtifactError(f"{artifact_dir}: format '{fmt}' cannot be bundled yet",
                            "bundle an ExecuTorch (.pte) or ONNX artifact")
    be = get_backend(fmt)
    runtime_version = str(versions.get(be.RUNTIME_PACKAGE, "unknown"))
    release = runtime_version.split("+")[0]  # '1.5.1+cpu': the local label is the wheel's build, not the release
    seq_len = next((i["shape"][-1] for i in inputs if i["name"] == "input_ids" and i["shape"]), None)
    tokenizer = tokenizer_info(artifact_dir, manifest.files, seq_len)
    return {
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "id": bundle_id,
        "created_by": f"edgeq {versions.get('edgeq', 'unknown')}",
        "model_name": model.name or bundle_id,
        "task": task,
        "format": fmt,
        "model_file": manifest.model_file,
        "precision": precision,
        "target": {"name": target.name, "device": target.device},
        "inputs": inputs,
        "outputs": [{"name": n} for n in outputs],  # shapes and dtypes filled from the golden run
        "delegates": delegates,
        "runtime": {
            "name": fmt, "version": runtime_version, "release": release,
            "android_package": f"{be.ANDROID_PACKAGE}:{release}",
        },
        "threads": threads,
        "tokenizer": tokenizer,
        "postprocess": postprocess_info(task, artifact_dir),
        "android": {
            "no_compress": list(NO_COMPRESS_SUFFIXES),
            "abis": ANDROID_ABIS,
            "min_sdk": ANDROID_MIN_SDK,
            "copy_to_files_dir": be.ANDROID_LOADS_FROM_PATH,
        },
        "source_manifest": "manifest.json",
    }


def tokenizer_info(artifact_dir: Path, files: dict[str, Any], max_length: int | None) -> dict[str, Any] | None:
    """Kind, files, normalisation and special ids of the artifact's tokenizer, or None."""
    if "tokenizer.json" not in files:
        return None
    try:
        data = json.loads((artifact_dir / "tokenizer.json").read_text())
        model = data["model"]
        kind = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}.get(model.get("type"), "unknown")
        vocab = model.get("vocab")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{artifact_dir}/tokenizer.json cannot be read ({exc})", "re-run 'edgeq export'") from None
    normalizer = data.get("normalizer") or {}
    info: dict[str, Any] = {
        "kind": kind,
        "files": sorted(f for f in files if f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                 "merges.txt", "vocab.json", "special_tokens_map.json")),
        "max_length": max_length,
    }
    if kind == "wordpiece" and isinstance(vocab, dict):
        lowercase = bool(normalizer.get("lowercase", True))
        strip = normalizer.get("strip_accents")
        info.update({
            "lowercase": lowercase,
            "strip_accents": lowercase if strip is None else bool(strip),  # BERT: None follows lowercase
            "handle_chinese_chars": bool(normalizer.get("handle_chinese_chars", True)),
            "clean_text": bool(normalizer.get("clean_text", True)),
            "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
            "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
            "special_ids": {k: vocab.get(t) for k, t in (("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"),
                                                         ("unk", model.get("unk_token", "[UNK]")))},
        })
    elif kind == "bpe":
        pre = data.get("pre_tokenizer") or {}
        info.update({
            "byte_level": pre.get("type") == "ByteLevel" or any(
                p.get("type") == "ByteLevel" for p in pre.get("pretokenizers") or [] if isinstance(p, dict)),
            "add_prefix_space": bool(pre.get("add_prefix_space", False)),
            "special_ids": {"pad": (data.get("padding") or {}).get("pad_id")},
        })
    return info


def postprocess_info(task: str, artifact_dir: Path) -> dict[str, Any]:
    """What the app does with the output. edgeq's sentence-embedding graphs already pool (and
    normalise, if the model says so), so the app must not do it again."""
    if task == "sentence-embedding":
        pooling, normalize = "mean", False
        pool_cfg = artifact_dir / "1_Pooling" / "config.json"
        modules = artifact_dir / "modules.json"
        try:
            if pool_cfg.exists():
                cfg = json.loads(pool_cfg.read_text())
                for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                                  ("pooling_mode_mean_tokens", "mean")):
                    if cfg.get(key):
                        pooling = name
                        break
            if modules.exists():
                normalize = any("Normalize" in str(m.get("type", "")) for m in json.loads(modules.read_text()))
        except (OSError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{artifact_dir}: pooling config cannot be read ({exc})", "re-run 'edgeq export'") from None
        return {"output": "embedding", "pooling": pooling, "normalize": normalize, "applied_in_model": True}
    if task in ("sequence-classification", "image-classification"):
        return {"output": "logits", "softmax": True, "applied_in_model": False}
    return {"output": "raw", "applied_in_model": True}


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_bundle_id(bundle_id: str) -> str:
    """A bundle id is one path component an app can use as an asset directory name."""
    from edgeq.errors import ConfigError

    if not _ID.fullmatch(bundle_id) or ".." in bundle_id:
        raise ConfigError(f"bundle id '{bundle_id}' is not a plain name",
                          "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'")
    return bundle_id


def default_bundle_id(manifest: Manifest) -> str:
    """``<model>-<target>`` with anything but [A-Za-z0-9._-] replaced by '-'."""
    name = f"{manifest.model.name or 'model'}-{manifest.target.name}"
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:64] or "model"
    return clean.replace("..", "-")


def token_id_bound(manifest: Manifest) -> int:
    """Upper bound for synthetic token ids: the smallest embedding table's row count (else 100)."""
    rows = [layer.shape[0] for layer in manifest.precision.inventory or []
            if layer.kind == "embedding" and layer.shape]
    return max(1, min(rows)) if rows else 100


def export_numerics(manifest: Manifest) -> dict[str, Any] | None:
    """The export's artifact-vs-fp32 numerics (max_abs, cosine_min, runtime), or None if skipped."""
    numerics = manifest.numerics
    if numerics is None:
        return None
    if not 0 <= numerics.max_abs < float("inf"):  # nan fails both
        raise ArtifactError("manifest.json numerics.max_abs is not a finite number", "re-run 'edgeq export'")
    return numerics.model_dump()


def skipped_reason(manifest: Manifest) -> str:
    return manifest.numerics_skipped or "the artifact was not run at export"
