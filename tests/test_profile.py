"""edgeq profile: host profiling of tiny ExecuTorch and ONNX artifacts in their real
runtimes, the standalone runner, reports (table, JSON, HTML), compare, and bad input."""

from __future__ import annotations

import ast
import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

RUNNER = ROOT / "edgeq" / "runner.py"


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """tests.tiny_models:tiny_text (embedding → 2 linears → mean) as INT8 ExecuTorch (XNNPACK)
    and INT8 ONNX artifacts, written by the real export."""
    from edgeq.export import export

    root = tmp_path_factory.mktemp("profile-artifacts")
    out = {}
    for key, target in (("executorch", "x86-executorch"), ("onnx", "x86")):
        out[key] = root / key
        export("tests.tiny_models:tiny_text", target, precision="int8", output=out[key], samples=4)
    return out


@pytest.fixture(scope="session")
def et_report(tiny_artifacts):
    from edgeq.profiling import profile_host

    return profile_host(tiny_artifacts["executorch"], runs=15, warmup=2)


@pytest.fixture(scope="session")
def onnx_report(tiny_artifacts):
    from edgeq.profiling import profile_host

    return profile_host(tiny_artifacts["onnx"], runs=15, warmup=2)


def _check_measured(report: dict, runs: int) -> None:
    assert report["mode"] == "host" and report["estimate"] is False
    lat = report["latency_ms"]
    assert len(report["samples_ms"]) == runs
    assert all(s > 0 for s in report["samples_ms"])
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["min"] == min(report["samples_ms"]) and lat["max"] == max(report["samples_ms"])
    assert report["load_ms"] > 0
    mem = report["memory"]
    assert mem["available"] and mem["peak_reset"]
    assert mem["peak_rss_bytes"] > mem["baseline_rss_bytes"] > 10 * 2**20  # a Python process with a runtime
    assert mem["model_attributable_bytes"] == mem["peak_rss_bytes"] - mem["baseline_rss_bytes"]
    assert report["host"]["usable_cores"] >= 1 and report["host"]["cpu_model"]
    threads = report["threads"]
    assert threads["source"] == "target" and threads["requested"] == 4  # x86 targets say 4
    assert threads["used"] == min(4, report["host"]["usable_cores"])
    ops = report["ops"]
    assert "error" not in ops, ops
    assert ops["by_op"] and ops["nodes"]
    assert 0.0 <= ops["delegate_share"] <= 1.0
    assert all(row["ms"] >= 0 and row["count"] >= 1 for row in ops["by_op"])
    assert abs(sum(row["share"] for row in ops["by_op"]) - 1) < 1e-6


def _base_op(name: str) -> str:
    """'embedding_byte.out' / 'aten.mean' / 'sum.IntList_out' → 'embedding_byte' / 'mean' / 'sum'."""
    name = name.split("::")[-1]
    parts = name.split(".")
    if parts[0] in ("aten", "quantized_decomposed", "torchao", "dim_order_ops"):
        parts = parts[1:]
    return parts[0]


def test_host_profile_executorch(et_report, tiny_artifacts):
    _check_measured(et_report, runs=15)
    assert et_report["format"] == "executorch" and et_report["runtime"].startswith("executorch ")
    ops = et_report["ops"]
    assert ops["source"] == "etdump"
    manifest = json.loads((tiny_artifacts["executorch"] / "manifest.json").read_text())
    backends = {row["backend"] for row in ops["by_op"]}
    assert backends == {"xnnpack", "portable"}  # the linears in XNNPACK; embedding and mean portable
    # XNNPACK runs the two linears as its fully-connected operator
    fc = [row for row in ops["by_op"] if row["backend"] == "xnnpack" and row["op"].startswith("Fully Connected")]
    assert fc and sum(row["count"] for row in fc) == 2
    portable = {_base_op(row["op"]) for row in ops["by_op"] if row["backend"] == "portable"}
    assert portable == {_base_op(op) for op in manifest["delegation"]["portable_ops"]}
    assert 0 < ops["delegate_share"] < 1
    assert ops["by_backend_ms"]["xnnpack"] > 0 and ops["by_backend_ms"]["portable"] > 0


def test_host_profile_onnx(onnx_report, tiny_artifacts):
    import onnx

    _check_measured(onnx_report, runs=15)
    assert onnx_report["format"] == "onnx" and onnx_report["runtime"].startswith("onnxruntime ")
    ops = onnx_report["ops"]
    assert ops["source"] == "onnxruntime-profiler"
    graph = onnx.load(str(tiny_artifacts["onnx"] / "model.onnx")).graph
    graph_ops = {n.op_type for n in graph.node}
    graph_names = {n.name for n in graph.node}
    for row in ops["by_op"]:  # ORT may fuse nodes (e.g. a bias Add into MatMulNBits), never invent ops
        assert row["op"] in graph_ops or row["op"].startswith("Fused"), row
        assert row["backend"] == "CPU"
    assert {"MatMulNBits", "Gather", "ReduceMean"} <= {row["op"] for row in ops["by_op"]}
    assert {n["name"] for n in ops["nodes"]} & graph_names
    assert ops["delegate_share"] == 0.0  # everything on the CPU execution provider here


def test_threads_override(tiny_artifacts):
    from edgeq.profiling import profile_host

    report = profile_host(tiny_artifacts["onnx"], runs=3, warmup=1, threads=1, ops=False)
    assert report["threads"] == {"requested": 1, "used": 1, "source": "--threads"}
    assert "ops" not in report and len(report["samples_ms"]) == 3


def test_runner_is_standalone(tiny_artifacts, tmp_path):
    """The runner is copied alone onto boards: it imports only the stdlib, numpy and runtimes,
    and runs from a directory with nothing else in it."""
    tree = ast.parse(RUNNER.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in runner.py"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) <= {"numpy", "torch", "executorch", "onnxruntime"}, imported
    alone = tmp_path / "board"
    alone.mkdir()
    shutil.copy(RUNNER, alone / "runner.py")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-I", "runner.py", str(tiny_artifacts["onnx"]), "--runs", "4", "--warmup", "1",
                           "--ops", "--json-out", str(out)], cwd=alone, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert len(report["samples_ms"]) == 4 and report["ops"]["by_op"]


def test_runner_without_runtime(tiny_artifacts):
    """A board without the runtime: one line naming the package to install, exit 2."""
    code = ("import sys, runpy; sys.modules['onnxruntime'] = None; "
            f"sys.argv = ['runner.py', {str(tiny_artifacts['onnx'])!r}, '--runs', '2']; "
            f"runpy.run_path({str(RUNNER)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert re.match(r"error: onnxruntime is not installed on this machine \(pip install onnxruntime==\d", lines[0]), lines


def test_summaries_drop_the_first_run():
    """Per-op times are medians over the profiled runs after the first (a warm-up)."""
    from edgeq.profiling.runner import summarize_etdump, summarize_ort_trace

    events = [
        {"name": "Method::execute", "delegated": False, "raw_ms": [9.0, 3.0, 3.2, 2.8], "backend": None},
        {"name": "native_call_mean.out", "delegated": False, "raw_ms": [1, 1, 1, 1], "backend": None},
        {"name": "OPERATOR_CALL", "delegated": False, "raw_ms": [5.0, 1.0, 1.2, 0.8], "backend": None},
        {"name": "Fully Connected (NC, F32) GEMM #1", "delegated": True, "raw_ms": [3.0, 1.5, 1.5, 1.7], "backend": None},
        {"name": "DELEGATE_CALL", "delegated": False, "raw_ms": [4.0, 2.0, 2.0, 2.0], "backend": None},
    ]
    ops = summarize_etdump(events, ["xnnpack"])
    assert ops["total_ms"] == 3.0
    assert ops["by_backend_ms"] == {"xnnpack": 2.0, "portable": 1.0}
    assert ops["delegate_share"] == pytest.approx(2 / 3)
    assert [(r["op"], r["backend"], r["ms"]) for r in ops["by_op"]] == [
        ("Fully Connected (NC, F32) GEMM", "xnnpack", 1.5), ("mean.out", "portable", 1.0)]
    trace = []
    for i, dur in enumerate([900, 100, 120, 80]):  # µs; run 0 is slow
        ts = i * 1000
        trace.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": dur + 10})
        trace.append({"cat": "Node", "name": "mm_kernel_time", "ts": ts + 1, "dur": dur,
                      "args": {"op_name": "MatMul", "provider": "CPUExecutionProvider"}})
        trace.append({"cat": "Node", "name": "gelu_kernel_time", "ts": ts + 2, "dur": 5,
                      "args": {"op_name": "Gelu", "provider": "XnnpackExecutionProvider"}})
    ops = summarize_ort_trace(trace)
    assert [(r["op"], r["backend"], r["ms"]) for r in ops["by_op"]] == [("MatMul", "CPU", 0.1), ("Gelu", "Xnnpack", 0.005)]
    assert ops["delegate_share"] == pytest.approx(0.005 / 0.105)
    assert ops["total_ms"] == pytest.approx(0.11)


def test_cli_compare_json_and_html(tiny_artifacts, tmp_path):
    html = tmp_path / "reports" / "profile.html"
    proc = run_cli("profile", str(tiny_artifacts["executorch"]), str(tiny_artifacts["onnx"]), "--runs", "6",
                   "--warmup", "1", "--json", "--html", str(html))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    reports, cmp = data["reports"], data["comparison"]
    assert [r["format"] for r in reports] == ["executorch", "onnx"]
    assert cmp["labels"] == ["executorch", "onnx"]
    p50 = next(row for row in cmp["rows"] if row["metric"] == "p50")
    assert p50["values"] == [r["latency_ms"]["p50"] for r in reports]
    assert p50["ratios"][0] == 1.0 and p50["ratios"][1] == pytest.approx(p50["values"][1] / p50["values"][0])
    page = html.read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) >= 3  # latency distribution + per-op bars for each artifact
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert "MatMulNBits" in page and "Fully Connected" in page
    assert not [p for p in html.parent.iterdir() if p.name != "profile.html"]  # no temp file left


def test_estimate_beside_measurement_renders(onnx_report):
    """Estimated vs measured: compare and the HTML accept an estimate (shape of
    edgeq.profiling.emulate.estimate's result, numbers made up here) beside a real measurement."""
    from edgeq.profiling.report import render_html
    from edgeq.profiling import compare

    estimate = {"mode": "emulated", "estimate": True, "device": "x86-avx2-laptop", "latency_ms": 0.5,
                "artifact": onnx_report["artifact"], "model_file": "model.onnx", "bound_share": {"compute": 0.7, "memory": 0.3},
                "ops": [{"name": "fc1", "op": "linear", "dtype": "int8", "unit": "cpu", "flops": 2e5, "bytes": 1e4,
                         "bound": "compute", "ms": 0.4}]}
    cmp = compare([onnx_report, estimate])
    assert cmp["labels"] == ["onnx", "onnx (estimate)"]
    p50 = cmp["rows"][0]
    assert p50["metric"] == "p50" and p50["values"] == [onnx_report["latency_ms"]["p50"], 0.5]
    assert not any(row["metric"] == "delegate_share" and row["values"][1] is not None for row in cmp["rows"])
    page = render_html([{**onnx_report, "emulated": estimate}])
    assert "Estimated vs measured" in page and "ESTIMATE" in page
    assert page.count("data:image/png;base64,") == 3  # latency, estimated vs measured, per-op bars


def test_cli_table(tiny_artifacts):
    proc = run_cli("profile", str(tiny_artifacts["onnx"]), "--runs", "5", "--warmup", "1", "--no-ops")
    assert proc.returncode == 0, proc.stderr
    for text in ("measured on this machine", "p50", "load", "peak RSS", "threads"):
        assert text in proc.stdout, proc.stdout


def test_cli_emulated(tiny_artifacts):
    pytest.importorskip("edgeq.profiling.emulate")
    proc = run_cli("profile", str(tiny_artifacts["executorch"]), "--mode", "emulated", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["estimate"] is True and report["mode"] == "emulated" and report["latency_ms"] > 0
    proc = run_cli("profile", str(tiny_artifacts["executorch"]), "--mode", "emulated")
    assert proc.returncode == 0 and "ESTIMATE" in proc.stdout


# ---------------------------------------------------------------------------- bad input


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _corrupt(arts, tmp):
    d = _copy(arts["executorch"], tmp / "corrupt")
    data = bytearray((d / "model.pte").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    (d / "model.pte").write_bytes(bytes(data))
    return [str(d)]


def _truncated(arts, tmp):
    d = _copy(arts["onnx"], tmp / "truncated")
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 2])
    return [str(d)]


def _no_manifest(arts, tmp):
    d = _copy(arts["onnx"], tmp / "no-manifest")
    (d / "manifest.json").unlink()
    return [str(d)]


def _not_a_dir(arts, tmp):
    (tmp / "notes.txt").write_text("hello")
    return [str(tmp / "notes.txt")]


def _wrong_runtime(arts, tmp, src: str, dst: str):
    """An artifact whose manifest (hashes updated) says one runtime, holding the other's model."""
    from edgeq.artifact import sha256

    d = _copy(arts[dst], tmp / f"{dst}-holding-{src}")
    name = "model.onnx" if dst == "onnx" else "model.pte"
    other = "model.pte" if dst == "onnx" else "model.onnx"
    shutil.copy(arts[src] / other, d / name)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": (d / name).stat().st_size, "sha256": sha256(d / name)}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return [str(d)]


BAD = [
    ("corrupt-model", _corrupt, "does not match its sha256 in the manifest (corrupt or modified)"),
    ("truncated-model", _truncated, "does not match its sha256 in the manifest (truncated)"),
    ("missing-manifest", _no_manifest, "has no manifest.json"),
    ("not-an-artifact", _not_a_dir, "is not an artifact directory"),
    ("pte-in-onnx-artifact", lambda a, t: _wrong_runtime(a, t, "executorch", "onnx"), "is an ExecuTorch program, but the artifact is for ONNX Runtime"),
    ("onnx-in-pte-artifact", lambda a, t: _wrong_runtime(a, t, "onnx", "executorch"), "is an ONNX model, but the artifact is for ExecuTorch"),
    ("runs-zero", lambda a, t: [str(a["onnx"]), "--runs", "0"], "--runs must be at least 1"),
    ("warmup-negative", lambda a, t: [str(a["onnx"]), "--warmup", "-1"], "--warmup must be 0 or more"),
    ("device-mode-without-device", lambda a, t: [str(a["onnx"]), "--mode", "device"], "--mode device needs --device"),
    ("unknown-mode", lambda a, t: [str(a["onnx"]), "--mode", "hots"], "unknown --mode 'hots'"),
    ("html-is-a-directory", lambda a, t: [str(a["onnx"]), "--html", str(t)], "is a directory"),
]


@pytest.mark.parametrize("case_id, build, expected", BAD, ids=[c[0] for c in BAD])
def test_bad_input(tiny_artifacts, tmp_path, case_id, build, expected):
    argv = build(tiny_artifacts, tmp_path)
    proc = run_cli("profile", *argv)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert proc.stdout == ""
