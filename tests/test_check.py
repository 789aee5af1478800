"""``edgeq check``: each gate fails alone when its limit is violated, with the figure and
the limit in its message; outputs (JSON, JUnit, GitHub) and exit codes."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import cli_here, run_cli

DATA = Path(__file__).parent / "data"
TINY = "tests.tiny_models:tiny_text"


@pytest.fixture(scope="session")
def artifacts(tiny_text_artifacts) -> dict[str, Path]:
    """tiny_text exported once for rpi5 (ExecuTorch/XNNPACK) and x86 (ONNX Runtime)."""
    return {t: tiny_text_artifacts(t) for t in ("rpi5", "x86")}


def _target(tmp_path: Path, text: str, name: str = "strict.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _check(paths, **kw):
    from edgeq.check import CheckOptions, check_artifacts

    return check_artifacts([str(p) for p in paths], CheckOptions(**kw))


def _failing(result) -> set[str]:
    return {g.gate for g in result.gates if g.status == "fail"}


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_healthy_artifacts_pass_every_gate_that_runs(artifacts):
    results = _check([artifacts["rpi5"], artifacts["x86"]], model=TINY, latency_budget_ms=1e6)
    for r in results:
        status = {g.gate: g.status for g in r.gates}
        assert status == {"integrity": "pass", "fit": "pass", "fidelity": "pass", "delegation": "pass",
                          "latency": "pass", "regression": "skipped"}, r.to_dict()
        # re-measured now, not copied: the figure is a fresh comparison on held-out inputs
        fid = r.gate("fidelity").details
        assert fid["samples"] == 32 and 0.999 < fid["cosine_min"] <= 1.0
    assert results[0].gate("delegation").details["portable_ops"]  # embedding_byte and mean stay portable


def test_tampered_model_file_fails_integrity_naming_the_file(artifacts, tmp_path):
    art = _copy(artifacts["rpi5"], tmp_path)
    data = bytearray((art / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.pte").write_bytes(bytes(data))
    [r] = _check([art], model=TINY)
    assert _failing(r) == {"integrity"}
    assert "model.pte" in r.gate("integrity").message and "sha256" in r.gate("integrity").message
    assert all(g.status == "skipped" for g in r.gates[1:])


def test_truncated_or_swapped_model_fails_integrity(artifacts, tmp_path):
    art = _copy(artifacts["x86"], tmp_path)
    (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes()[:1000])
    [r] = _check([art])
    assert _failing(r) == {"integrity"} and "model.onnx" in r.gate("integrity").message
    swapped = _copy(artifacts["rpi5"], tmp_path / "s")
    shutil.copyfile(artifacts["x86"] / "model.onnx", swapped / "model.pte")
    [r] = _check([swapped])
    assert _failing(r) == {"integrity"} and "model.pte" in r.gate("integrity").message


def test_manifest_without_a_model_hash_fails_integrity(artifacts, tmp_path):
    art = _copy(artifacts["x86"], tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (art / "manifest.json").write_text(json.dumps(manifest))
    [r] = _check([art])
    assert _failing(r) == {"integrity"} and "no sha256 for model.onnx" in r.gate("integrity").message


def test_storage_budget_violation_fails_fit_only(artifacts, tmp_path):
    tgt = _target(tmp_path, "extends: rpi5\nbudgets:\n  storage_mb: 0.001\n")
    [r] = _check([artifacts["rpi5"]], target=str(tgt), model=TINY)
    assert _failing(r) == {"fit"}
    size = (artifacts["rpi5"] / "model.pte").stat().st_size
    msg = r.gate("fit").message
    assert f"{size / 1e3:.2f} KB > 1.00 KB storage budget" in msg and "budgets.storage_mb" in msg


def test_memory_budget_violation_fails_fit_only(artifacts, tmp_path):
    tgt = _target(tmp_path, "extends: x86\nbudgets:\n  runtime_memory_mb: 1\n")
    [r] = _check([artifacts["x86"]], target=str(tgt), model=TINY)
    assert _failing(r) == {"fit"}
    msg = r.gate("fit").message
    assert "predicted peak memory" in msg and "> 1.00 MB memory budget" in msg
    # The predicted figure is edgeq's memory model on this artifact, as the manifest recorded at export.
    recorded = json.loads((artifacts["x86"] / "manifest.json").read_text())["memory"]["predicted"]["total_bytes"]
    assert r.gate("fit").details["predicted_peak_bytes"] == recorded


def test_impossible_fidelity_threshold_fails_fidelity_only(artifacts, tmp_path):
    tgt = _target(tmp_path, "extends: rpi5\nchecks:\n  fidelity:\n    cosine_min: 1.0\n")
    [r] = _check([artifacts["rpi5"]], target=str(tgt), model=TINY)
    assert _failing(r) == {"fidelity"}
    g = r.gate("fidelity")
    assert "< 1 (target strict checks.fidelity.cosine_min)" in g.message and "worst cosine 0.9999" in g.message


def test_fidelity_is_skipped_not_passed_without_the_source_model(artifacts):
    [r] = _check([artifacts["x86"]])
    g = r.gate("fidelity")
    assert g.status == "skipped" and "pass --model" in g.message and "Python factory" in g.message
    assert r.passed  # a skipped gate does not fail the build, and is reported as skipped


def test_fidelity_detects_a_different_model(artifacts, tmp_path):
    # The artifact compared with another model's eager outputs is a real fidelity failure.
    [r] = _check([artifacts["x86"]], model="tests.test_check:other_text")
    assert _failing(r) == {"fidelity"} and "worst cosine" in r.gate("fidelity").message


def other_text():
    import torch

    from tests.tiny_models import TinyText

    torch.manual_seed(1)
    return TinyText().eval(), (torch.randint(0, 256, (1, 16)),)


def test_delegate_share_it_cannot_have_fails_delegation_only(artifacts, tmp_path):
    tgt = _target(tmp_path, "extends: rpi5\nchecks:\n  delegation:\n    min_share: 1.0\n")
    [r] = _check([artifacts["rpi5"]], target=str(tgt), model=TINY)
    assert _failing(r) == {"delegation"}
    g = r.gate("delegation")
    # 17 ops, 2 of which (the quantized embedding lookup and the mean) stay on the portable path.
    manifest = json.loads((artifacts["rpi5"] / "manifest.json").read_text())["delegation"]
    on, portable = manifest["delegated_ops"]["xnnpack"], manifest["portable_op_count"]
    assert f"({on}/{on + portable}) on xnnpack < 100%" in g.message
    assert "portable CPU ops: " in g.message and "aten.mean ×1" in g.message


def test_latency_budget_violation_fails_latency_only(artifacts, tmp_path):
    tgt = _target(tmp_path, "extends: rpi5\nbudgets:\n  latency_ms: 0.001\n")
    [r] = _check([artifacts["rpi5"]], target=str(tgt), model=TINY)
    assert _failing(r) == {"latency"}
    g = r.gate("latency")
    assert "emulated p50 on rpi5 (ESTIMATE)" in g.message and "> 0.001 ms budget" in g.message
    from edgeq.profiling.emulate import estimate
    from edgeq.targets import load_profile

    assert g.details["p50_ms"] == pytest.approx(estimate(artifacts["rpi5"], load_profile("rpi5"))["latency_ms"])


def test_measured_latency_and_rss_with_measure(artifacts):
    [r] = _check([artifacts["x86"]], measure=True, latency_budget_ms=0.001, runs=5)
    assert _failing(r) == {"latency"} and "measured p50 on this host" in r.gate("latency").message
    fit = r.gate("fit")
    assert fit.details["measured_peak_rss_bytes"] > 10e6  # a real process: Python + ONNX Runtime
    assert "measured peak RSS of a fresh process" in fit.message


def test_skipped_chain_delegate_is_reported(tmp_path_factory):
    from edgeq.export import export

    out = tmp_path_factory.mktemp("snap") / "tiny-snapdragon8"
    art = export(TINY, "snapdragon8", output=out).artifact_dir  # QNN cannot lower here: skipped, XNNPACK takes it
    [r] = _check([art], model=TINY)
    g = r.gate("delegation")
    assert "qnn" in g.details["skipped_delegates"] and "skipped delegates: qnn (" in g.message
    assert g.status == "fail" and "on qnn < 50%" in g.message  # the intended delegate is the chain's first
    tgt = tmp_path_factory.mktemp("t") / "cpu-ok.yaml"
    tgt.write_text("extends: snapdragon8\nchecks:\n  delegation:\n    delegate: xnnpack\n")
    [r] = _check([art], target=str(tgt), model=TINY)
    assert r.gate("delegation").status == "pass"


# ------------------------------------------------------------------------------ target schema


def test_targets_validate_accepts_and_rejects_checks_blocks(tmp_path):
    good = _target(tmp_path, "extends: rpi5\nchecks:\n  fidelity: {cosine_min: 0.995}\n  delegation: {min_share: 0.8}\n"
                             "  regression: {latency_pct: 15}\n", "good.yaml")
    proc = run_cli("targets", "validate", str(good))
    assert proc.returncode == 0, proc.stderr
    typo = _target(tmp_path, "extends: rpi5\nchecks:\n  fidelity: {cosine_mn: 0.995}\n", "typo.yaml")
    proc = run_cli("targets", "validate", str(typo))
    assert proc.returncode == 2 and "unknown key 'checks.fidelity.cosine_mn'" in proc.stderr
    assert "did you mean 'cosine_min'" in proc.stderr
    bad = _target(tmp_path, "extends: rpi5\nchecks:\n  delegation: {delegate: qnn}\n", "bad.yaml")
    proc = run_cli("targets", "validate", str(bad))
    assert proc.returncode == 2 and "checks.delegation.delegate 'qnn' is not in delegates" in proc.stderr
    out_of_range = _target(tmp_path, "extends: rpi5\nchecks:\n  delegation: {min_share: 1.5}\n", "range.yaml")
    assert run_cli("targets", "validate", str(out_of_range)).returncode == 2


# ------------------------------------------------------------------------ CLI and its outputs


def test_cli_exit_codes_json_junit_and_github(artifacts, tmp_path):
    tgt = _target(tmp_path, "extends: x86\nbudgets:\n  storage_mb: 0.001\n")
    junit, summary = tmp_path / "out.xml", tmp_path / "summary.md"
    proc = cli_here("check", str(artifacts["x86"]), "-t", str(tgt), "--json", "--junit", str(junit), "--github",
                   env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    gates = {g["gate"]: g for g in doc["artifacts"][0]["gates"]}
    assert gates["fit"]["status"] == "fail" and doc["passed"] is False
    assert f"::error file={artifacts['x86']}/manifest.json,title=edgeq check%3A fit::" in proc.stderr
    assert "| fit | ❌ fail |" in summary.read_text()
    _validate_junit(junit.read_text())
    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"integrity", "fit", "fidelity", "delegation", "latency", "regression"}
    failure = cases["fit"].find("failure")
    assert failure is not None and "> 1.00 KB storage budget" in failure.get("message")
    assert cases["fidelity"].find("skipped") is not None and cases["integrity"].find("failure") is None

    ok = cli_here("check", str(artifacts["x86"]))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 artifact(s) checked: 1 passed, 0 failed" in ok.stdout


def _validate_junit(text: str) -> None:
    """Structurally always; against the Jenkins/GitLab JUnit schema subset in tests/data
    when ``xmlschema`` is installed (it is not a dependency of edgeq)."""
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    for suite in root:
        assert suite.tag == "testsuite" and suite.get("name") and suite.get("tests") == str(len(suite))
        assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in suite)
        assert int(suite.get("skipped")) == sum(c.find("skipped") is not None for c in suite)
        for case in suite:
            assert case.tag == "testcase" and case.get("name") and case.get("classname")
            assert len([c for c in case if c.tag in ("failure", "skipped", "error")]) <= 1
    try:
        import xmlschema
    except ImportError:
        return
    xmlschema.XMLSchema(str(DATA / "junit-jenkins-subset.xsd")).validate(text)


def test_the_xsd_rejects_what_jenkins_would_not_read():
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(str(DATA / "junit-jenkins-subset.xsd"))
    assert not schema.is_valid("<testsuites><testsuite name='a'><testcase name='x'/></testsuite></testsuites>")  # no tests=
    assert not schema.is_valid("<testsuites><testsuite name='a' tests='1'><testcase name='x'><oops/></testcase>"
                               "</testsuite></testsuites>")


@pytest.mark.parametrize("args, needle", [
    (["/nonexistent/artifact"], "is not an artifact directory"),
    (["{x86}", "--baseline", "/nonexistent.json"], "baseline /nonexistent.json not found"),
    (["{x86}", "--target", "no-such-target"], "unknown target"),
    (["{x86}", "--model", "tests.tiny_models:no_such_factory"], "no_such_factory"),
    (["{x86}", "--junit", "{x86}"], "--junit"),
    (["{x86}", "--latency-budget", "0"], "--latency-budget must be more than 0 ms"),
    (["{x86}", "--target", "rpi5"], "is an onnx artifact, but target rpi5 is for executorch"),
    (["{x86}", "--rounds", "1"], "--rounds must be between 2 and 100, got 1"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(artifacts, args, needle, tmp_path):
    from tests.hostile import assert_clean_failure, assert_tree_unchanged, tree_state

    before = tree_state(artifacts["x86"])
    proc = cli_here("check", *[a.format(x86=artifacts["x86"]) for a in args], "--junit" if "--junit" not in args else
                   "--json", *([str(tmp_path / "r.xml")] if "--junit" not in args else []))
    assert_clean_failure(proc, needle)
    assert not (tmp_path / "r.xml").exists()
    assert_tree_unchanged(artifacts["x86"], before)


@pytest.mark.parametrize("mutate, needle", [
    (lambda m: [m], "is not a JSON object"),
    (lambda m: {**m, "schema_version": 99}, "written by a newer edgeq (manifest schema 99"),
    (lambda m: {**m, "target": "rpi5"}, "'target' is not a dict"),
    (lambda m: {**m, "delegation": {**m["delegation"], "delegated_ops": {"cpu": "many"}}}, "wrong kind"),
    (lambda m: {k: v for k, v in m.items() if k != "sizes"}, "no 'sizes'"),
])
def test_hostile_manifest_fails_integrity_not_the_process(artifacts, tmp_path, mutate, needle):
    art = _copy(artifacts["x86"], tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps(mutate(manifest)))
    [r] = _check([art])
    assert _failing(r) == {"integrity"}, r.to_dict()
    assert needle in r.gate("integrity").message


def test_without_a_builtin_target_the_manifest_budgets_are_the_limits(artifacts, tmp_path):
    art = _copy(artifacts["x86"], tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["target"]["name"] = "my-own-target"
    manifest["budgets"]["storage_mb"] = 0.002
    (art / "manifest.json").write_text(json.dumps(manifest))
    [r] = _check([art])
    assert _failing(r) == {"fit"}
    assert "manifest budgets (target my-own-target at export) budgets.storage_mb" in r.gate("fit").message


def test_bad_baseline_file_exits_2(artifacts, tmp_path):
    from tests.hostile import assert_clean_failure

    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"edgeq_baseline_version": 9, "created": "x", "artifacts": {}}))
    assert_clean_failure(cli_here("check", str(artifacts["x86"]), "--baseline", str(bad)), "edgeq_baseline_version")
    bad.write_text("{not json")
    assert_clean_failure(cli_here("check", str(artifacts["x86"]), "--baseline", str(bad)), "is not JSON")
    entry = {"artifact": "/x", "model_sha256": "0", "target": "x86", "file_bytes": -5}
    bad.write_text(json.dumps({"edgeq_baseline_version": 1, "created": "x", "artifacts": {"tiny-x86": entry}}))
    assert_clean_failure(cli_here("check", str(artifacts["x86"]), "--baseline", str(bad)), "file_bytes")


def test_regression_gate_on_size_memory_and_fidelity(artifacts, tmp_path):
    """A baseline from the INT8 artifact; the same model re-exported at FP32 under the same
    name is 3× larger: exactly the regression gate fails, naming the size, its change and limit."""
    from edgeq.export import export

    baseline = tmp_path / "baseline.json"
    [first] = _check([artifacts["x86"]], model=TINY, update_baseline=baseline)
    entry = json.loads(baseline.read_text())["artifacts"]["tiny-x86"]
    assert entry["file_bytes"] == (artifacts["x86"] / "model.onnx").stat().st_size
    assert entry["fidelity"] == first.gate("fidelity").details["cosine_min"] and entry["latency"] is None

    [same] = _check([artifacts["x86"]], model=TINY, baseline=baseline)
    assert same.gate("regression").status == "pass"
    assert "latency not compared (the baseline has no latency samples" in same.gate("regression").message

    fp32 = export(TINY, "x86", precision="fp32", output=tmp_path / "fp32" / "tiny-x86").artifact_dir
    [r] = _check([fp32], model=TINY, baseline=baseline)
    assert _failing(r) == {"regression"}
    g = r.gate("regression")
    before, after = entry["file_bytes"], (fp32 / "model.onnx").stat().st_size
    change = (after - before) / before * 100
    assert f"size {before / 1e3:.2f} KB → {after / 1e3:.2f} KB ({change:+.1f}% > +5%, edgeq default " \
           "checks.regression.size_pct)" in g.message
    # ONNX Runtime's fixed ~19.6 MB dominates the predicted peak: +90 KB of weights is within +10%.
    memory = [t for t in g.details["compared"] if t.startswith("predicted peak memory")]
    assert memory and "<= +10%" in memory[0]
    assert not any(t.startswith("fidelity") for t in g.details["failed"])  # FP32 is closer to FP32, not further

    # A stricter fidelity tolerance in the target: any drop at all fails.
    strict = _target(tmp_path, "extends: x86\nchecks:\n  regression: {fidelity_drop: 0, size_pct: 1000, "
                               "memory_pct: 1000}\n")
    doc = json.loads(baseline.read_text())
    doc["artifacts"]["tiny-x86"]["fidelity"] = 1.0  # as if the baseline had matched FP32 exactly
    baseline.write_text(json.dumps(doc))
    [r] = _check([artifacts["x86"]], model=TINY, baseline=baseline, target=str(strict))
    assert _failing(r) == {"regression"}
    assert "fidelity cosine_min 1.000000 →" in r.gate("regression").message
    assert "> 0, target strict checks.regression.fidelity_drop" in r.gate("regression").message
