"""The native runner (C++ on ExecuTorch's Module API): built here with cmake against the
executorch wheel, run on bundles; golden check, integrity check, and its latency against
``edgeq profile`` on the same file."""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="cmake and a C++ compiler are needed to build the native runner")


@pytest.fixture(scope="module")
def runner() -> Path:
    from edgeq.bundle.native import build_runner

    return build_runner()  # cached under ~/.cache/edgeq/native-runner (or $EDGEQ_CACHE_DIR)


def _bundle(tmp: Path, model: str, target: str, bundle_id: str, *extra: str) -> Path:
    art = tmp / f"{bundle_id}-artifact"
    proc = run_cli("export", model, "-t", target, "-o", str(art), "-q", *extra)
    assert proc.returncode == 0, proc.stderr
    from edgeq.bundle import bundle

    return bundle(art, tmp / "app", bundle_id=bundle_id).bundle_dir


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory, tiny_text_artifacts) -> dict[str, Path]:
    from edgeq.bundle import bundle

    tmp = tmp_path_factory.mktemp("native")
    (tmp / "app").mkdir()
    return {"pte": bundle(tiny_text_artifacts("rpi5"), tmp / "app", bundle_id="tiny-pte").bundle_dir,
            "onnx": bundle(tiny_text_artifacts("x86"), tmp / "app", bundle_id="tiny-onnx").bundle_dir}


def _run(runner: Path, bundle_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), str(bundle_dir), *args], capture_output=True, text=True, timeout=600)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_runner_matches_golden_and_reports_in_profile_shape(runner, tiny_bundles):
    from edgeq.bundle.native import run_runner
    from edgeq.profiling import profile_host

    report = run_runner(runner, tiny_bundles["pte"], runs=7, warmup=2)
    desc = json.loads((tiny_bundles["pte"] / "edgeq_bundle.json").read_text())
    assert report["golden"]["ok"] is True
    # the same runtime as the host's Python bindings: the same numbers, bit for bit here
    assert report["golden"]["max_abs_diff"] <= desc["golden"]["tolerance"]["max_abs"] / 100
    assert report["golden"]["cosine"] > 0.99999
    assert report["runs"] == 7 and len(report["samples_ms"]) == 7
    lat = report["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"] and lat["p50"] == pytest.approx(
        float(np.percentile(report["samples_ms"], 50)))
    # every key edgeq profile reports for latency and memory is there, of the same kind
    profile = profile_host(tiny_bundles["pte"], runs=3, warmup=1, ops=False)
    assert set(profile["latency_ms"]) == set(lat)
    assert set(profile["memory"]) == set(report["memory"])
    for key in ("load_ms", "warmup", "runs", "delegates", "inputs", "model_file", "format"):
        assert type(report[key]) is type(profile[key]), key
    assert report["delegates"] == profile["delegates"] and report["inputs"] == profile["inputs"]
    assert 0 < report["memory"]["model_attributable_bytes"] < report["memory"]["peak_rss_bytes"]


def test_runner_detects_a_wrong_output(runner, tiny_bundles, tmp_path):
    """A golden output that is not what the model computes (hashes consistent) fails: exit 3."""
    from edgeq.bundle.native import GoldenMismatchError, run_runner

    b = tmp_path / "b"
    shutil.copytree(tiny_bundles["pte"], b)
    desc = json.loads((b / "edgeq_bundle.json").read_text())
    out = np.frombuffer((b / "golden/output.bin").read_bytes(), dtype="<f4").copy()
    out[3] += 4 * desc["golden"]["tolerance"]["max_abs"]
    (b / "golden/output.bin").write_bytes(out.tobytes())
    digest = hashlib.sha256(out.tobytes()).hexdigest()
    desc["files"]["golden/output.bin"]["sha256"] = desc["golden"]["output"]["sha256"] = digest
    (b / "edgeq_bundle.json").write_text(json.dumps(desc))
    proc = _run(runner, b, "--runs", "1")
    assert proc.returncode == 3 and "golden output mismatch" in _error_line(proc)
    with pytest.raises(GoldenMismatchError):
        run_runner(runner, b, runs=1)


@pytest.mark.parametrize("damage", ["model_byte", "missing_file", "bad_json", "escaping_path"])
def test_runner_refuses_a_damaged_bundle(runner, tiny_bundles, tmp_path, damage):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundles["pte"], b)
    if damage == "model_byte":
        data = bytearray((b / "model.pte").read_bytes())
        data[100] ^= 1
        (b / "model.pte").write_bytes(bytes(data))
        want = "does not match its sha256"
    elif damage == "missing_file":
        (b / "golden/input_0.bin").unlink()
        want = "missing"
    elif damage == "bad_json":
        (b / "edgeq_bundle.json").write_text('{"schema_version": 1, "format": ')
        want = "invalid JSON"
    else:
        desc = json.loads((b / "edgeq_bundle.json").read_text())
        desc["files"]["../../etc/passwd"] = {"bytes": 1, "sha256": "0" * 64}
        (b / "edgeq_bundle.json").write_text(json.dumps(desc))
        want = "outside the bundle"
    proc = _run(runner, b)
    assert proc.returncode == 2 and want in _error_line(proc), proc.stderr
    assert proc.stdout == ""


def test_runner_is_executorch_only(runner, tiny_bundles):
    proc = _run(runner, tiny_bundles["onnx"])
    assert proc.returncode == 2 and "runs ExecuTorch bundles" in _error_line(proc)


@pytest.mark.slow
def test_minilm_bundle_golden_and_latency_agree_with_profile(runner, tmp_path, minilm_dir):
    """On the real int8 MiniLM: the golden check passes, and the runner's p50 agrees with
    ``edgeq profile``'s on the same .pte within 10%. One thread each, twelve short
    alternating rounds, the median of each round's native/profile p50 ratio: other processes
    on this 2-core machine slow whichever happens to be running, and pairing cancels that."""
    from edgeq.bundle.native import run_runner
    from edgeq.profiling import profile_host

    (tmp_path / "app").mkdir()
    b = _bundle(tmp_path, str(minilm_dir), "rpi5", "minilm", "--samples", "4")
    rounds = {"native": [], "profile": []}
    for _ in range(12):
        native = run_runner(runner, b, runs=6, warmup=2, threads=1)
        assert native["golden"]["ok"] and native["golden"]["max_abs_diff"] <= 1e-6
        rounds["native"].append(native["latency_ms"]["p50"])
        rounds["profile"].append(profile_host(b, runs=6, warmup=2, threads=1, ops=False)["latency_ms"]["p50"])
    native_p50, profile_p50 = statistics.median(rounds["native"]), statistics.median(rounds["profile"])
    # Each round's two measurements run back to back, so their ratio cancels the machine-wide
    # slowdowns that come and go over the test; the median of those ratios is the comparison.
    ratio = statistics.median(n / p for n, p in zip(rounds["native"], rounds["profile"]))
    print(f"MiniLM int8 p50 (1 thread): native {native_p50:.2f} ms, edgeq profile {profile_p50:.2f} ms; "
          f"median paired ratio {ratio:.3f}; rounds {rounds}")
    assert 0.9 < ratio < 1.1, rounds
