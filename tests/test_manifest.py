"""The typed manifest (schema 2): what export writes reads back unchanged; schema-1
manifests (as edgeq wrote them before) are upgraded and used by profile and check;
newer or malformed manifests are refused with one line."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.hostile import assert_clean_failure

TINY = "tests.tiny_models:tiny_text"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """tiny_text for rpi5 (ExecuTorch) and x86 (ONNX), and a budgeted rpi5 export (with a plan block)."""
    from edgeq.export import export

    root = tmp_path_factory.mktemp("manifest-artifacts")
    out = {t: export(TINY, t, output=root / t).artifact_dir for t in ("rpi5", "x86")}
    out["planned"] = export(TINY, "x86", output=root / "planned", budget_bytes=40_000).artifact_dir
    return out


def _json(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


def _as_v1_before_memory_planning(v2: dict) -> dict:
    """A schema-2 manifest rewritten by hand to what edgeq wrote at schema 1 before the keys
    added later (git history of edgeq/export.py): no layer inventory, memory with only the
    planned arena, numerics without kl_mean, plan without its memory fields."""
    v1 = copy.deepcopy(v2)
    v1["schema_version"] = 1
    del v1["precision"]["inventory"]
    v1["memory"] = {"planned_activation_bytes": v2["memory"]["planned_activation_bytes"]}
    if v1["numerics"] is not None:
        del v1["numerics"]["kl_mean"]
    if "plan" in v1:
        for key in ("memory_budget_bytes", "binding", "predicted_peak_memory_bytes"):
            del v1["plan"][key]
    return v1


def _copy_with(src: Path, dst: Path, manifest: dict) -> Path:
    shutil.copytree(src, dst)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ["rpi5", "x86", "planned"])
def test_export_load_dump_is_the_file(artifacts, name):
    from edgeq.artifact import load_manifest
    from edgeq.manifest import Manifest

    on_disk = _json(artifacts[name])
    loaded = load_manifest(artifacts[name])
    assert isinstance(loaded, Manifest) and loaded.schema_version == 2 == on_disk["schema_version"]
    dumped = loaded.model_dump(mode="json")
    assert dumped == on_disk
    assert list(dumped) == list(on_disk)  # top-level key order as written
    assert ("plan" in on_disk) == (name == "planned")
    assert loaded.precision.inventory is not None and loaded.memory.tokens == 16


def test_typed_fields_match_the_artifact(artifacts):
    """Attributes agree with independent facts: the file's real size and hash, the model's inputs."""
    from edgeq.artifact import load_manifest, sha256

    art = artifacts["rpi5"]
    m = load_manifest(art)
    model = art / m.model_file
    assert m.sizes.artifact_bytes == model.stat().st_size == m.files[m.model_file].bytes
    assert m.files[m.model_file].sha256 == sha256(model)
    assert [(i.name, i.shape, i.dtype) for i in m.model.inputs] == [("input_0", [1, 16], "int64")]
    assert m.target.format == "executorch" and m.delegation.used == ["xnnpack"]
    assert sum(m.delegation.portable_ops.values()) == m.delegation.details["portable_op_count"]


def test_the_board_runner_reads_a_v2_manifest(artifacts):
    """edgeq/profiling/runner.py reads the JSON as a dict: the keys it reads are where they were."""
    from edgeq.profiling.runner import check_model_file

    for name in ("rpi5", "x86"):
        path, fmt = check_model_file(artifacts[name], _json(artifacts[name]))
        assert path.name == _json(artifacts[name])["model_file"] and fmt == _json(artifacts[name])["target"]["format"]


# ---------------------------------------------------------------------------- schema 1


def test_upgrade_v1_names_exactly_the_missing_keys(artifacts):
    from edgeq.manifest import upgrade

    v2 = _json(artifacts["planned"])
    v1 = _as_v1_before_memory_planning(v2)
    before = copy.deepcopy(v1)
    up = upgrade(v1)
    assert v1 == before  # the input is not modified
    expected = copy.deepcopy(v2)
    expected["precision"]["inventory"] = None
    expected["memory"] = {"planned_activation_bytes": v2["memory"]["planned_activation_bytes"], "tokens": None,
                          "attention_heads": None, "folded_layers": {}, "budget_bytes": None, "predicted": None}
    expected["numerics"]["kl_mean"] = None
    expected["plan"].update(memory_budget_bytes=None, binding=None, predicted_peak_memory_bytes=None)
    assert up == expected
    # The oldest schema-1 manifests had no memory block at all.
    no_memory = {k: v for k, v in v1.items() if k != "memory"}
    assert upgrade(no_memory)["memory"]["planned_activation_bytes"] == 0
    # What edgeq wrote just before schema 2 differs from schema 2 only in the number.
    latest_v1 = {**v2, "schema_version": 1}
    assert upgrade(latest_v1) == v2


@pytest.mark.parametrize("name", ["rpi5", "x86"])
def test_v1_artifact_profiles_and_checks_like_the_v2_one(artifacts, tmp_path, name):
    from edgeq.artifact import load_manifest

    v2_dir = artifacts[name]
    v1_dir = _copy_with(v2_dir, tmp_path / "v1", _as_v1_before_memory_planning(_json(v2_dir)))
    m = load_manifest(v1_dir)
    assert m.schema_version == 2 and m.precision.inventory is None and m.memory.tokens is None

    reports = []
    for art in (v2_dir, v1_dir):
        proc = run_cli("profile", str(art), "--mode", "emulated", "--json")
        assert proc.returncode == 0, proc.stderr
        reports.append(json.loads(proc.stdout))
    assert reports[1]["latency_ms"] == reports[0]["latency_ms"] > 0
    assert reports[1]["format"] == reports[0]["format"] and reports[1]["precision"] == reports[0]["precision"]

    proc = run_cli("check", str(v1_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    from edgeq.check import CheckOptions, check_artifacts

    [r] = check_artifacts([str(v1_dir)], CheckOptions())
    assert not r.gate("integrity").failed and not r.gate("fit").failed
    assert "no layer inventory" in r.gate("fit").message  # said, not guessed
    assert (v1_dir / "manifest.json").read_text() == json.dumps(_as_v1_before_memory_planning(_json(v2_dir)), indent=2)


def test_memory_prediction_without_an_inventory_needs_the_layers(artifacts, tmp_path):
    from edgeq.planning import memory
    from edgeq.errors import ArtifactError
    from edgeq.planning.inventory import layer_inventory
    from tests.tiny_models import tiny_text

    v2_dir = artifacts["x86"]
    v1_dir = _copy_with(v2_dir, tmp_path / "v1", _as_v1_before_memory_planning(_json(v2_dir)))
    with pytest.raises(ArtifactError, match="no layer inventory"):
        memory.predict_from_artifact(v1_dir)
    given = memory.predict_from_artifact(v1_dir, layer_inventory(tiny_text()[0]))
    recorded = _json(v2_dir)["memory"]["predicted"]
    assert given.total_bytes == recorded["total_bytes"]  # what export predicted with the real inventory
    assert memory.predict_from_artifact(v1_dir, load_source=True).total_bytes == recorded["total_bytes"]


# ---------------------------------------------------------------------------- refused


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.__setitem__("schema_version", 3), "newer edgeq (manifest schema 3"),
    (lambda m: m.__setitem__("surprise", 1), "surprise: Extra inputs are not permitted"),
    (lambda m: m["target"].__setitem__("threads", "4"), "target.threads: Input should be a valid integer"),
    (lambda m: m["sizes"].__setitem__("artifact_bytes", True), "sizes.artifact_bytes"),
    (lambda m: m["memory"].pop("tokens"), "memory.tokens: Field required"),
    (lambda m: m["model"]["inputs"][0].__setitem__("shape", [1, "16"]), "model.inputs.0.shape.1"),
    (lambda m: m["precision"]["inventory"][0].__setitem__("rows", 3), "precision.inventory.0.rows"),
])
def test_bad_manifest_is_refused_with_one_line(artifacts, tmp_path, edit, needle):
    from edgeq.artifact import load_manifest
    from edgeq.errors import ArtifactError

    manifest = _json(artifacts["x86"])
    edit(manifest)
    art = _copy_with(artifacts["x86"], tmp_path / "bad", manifest)
    with pytest.raises(ArtifactError) as err:
        load_manifest(art)
    assert needle in err.value.message and "\n" not in err.value.one_line()
    line = assert_clean_failure(run_cli("profile", str(art), "--mode", "emulated"), needle)
    assert "Traceback" not in line


def test_check_names_the_bad_field(artifacts, tmp_path):
    from edgeq.check import CheckOptions, check_artifacts

    manifest = _json(artifacts["x86"])
    manifest["delegation"]["used"] = "cpu"
    art = _copy_with(artifacts["x86"], tmp_path / "bad", manifest)
    [r] = check_artifacts([str(art)], CheckOptions())
    assert r.gate("integrity").failed
    assert "delegation.used" in r.gate("integrity").message
