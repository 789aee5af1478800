"""Emulated profiling: op extraction (FLOPs and bytes), the roofline estimate, units, errors."""

from __future__ import annotations

import json
import math
import platform
import shutil
from pathlib import Path

import pytest

from edgeq.profiling.emulate import assign_units, cpu_share, estimate, host_profile, predict
from edgeq.errors import ArtifactError
from edgeq.profiling.opgraph import Op, ops_from_artifact
from edgeq.targets import builtin_names, load_profile
from tests.conftest import run_cli

PROFILES = builtin_names("profiles")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Tiny artifacts: MLP (ExecuTorch int8, ONNX fp32) and conv net (ExecuTorch fp32, ONNX fp32 and int8)."""
    from edgeq.export import export

    root = tmp_path_factory.mktemp("emulate")
    made = {}
    for key, model, target, precision in (
        ("mlp-et-int8", "tests.tiny_models:tiny_mlp", "x86-executorch", "int8"),
        ("conv-et-fp32", "tests.tiny_models:tiny_conv", "x86-executorch", "fp32"),
        ("mlp-onnx-fp32", "tests.tiny_models:tiny_mlp", "x86", "fp32"),
        ("conv-onnx-fp32", "tests.tiny_models:tiny_conv", "x86", "fp32"),  # Conv + ReLU: ORT's FusedConv
        ("conv-onnx-int8", "tests.tiny_models:tiny_conv", "x86", "int8"),
    ):
        made[key] = export(model, target, precision=precision, output=root / key, samples=2).artifact_dir
    return made


def _gemms(path: Path) -> list[Op]:
    return [o for o in ops_from_artifact(path) if o.kind == "gemm"]


# ---------------------------------------------------------------- op extraction


def test_linear_flops_and_bytes_onnx(artifacts):
    # tiny_mlp: x[1, 64] -> Linear(64, 128) -> ReLU -> Linear(128, 32)
    gemms = _gemms(artifacts["mlp-onnx-fp32"])
    assert sorted(o.flops for o in gemms) == [2 * 1 * 32 * 128, 2 * 1 * 128 * 64]  # 2 M N K
    first = max(gemms, key=lambda o: o.flops)
    # fp32 weight 128x64 + bias 128, input 64, output 128 values, 4 bytes each
    assert first.bytes == 4 * (128 * 64 + 128 + 64 + 128)
    assert first.weight_bytes == 4 * (128 * 64 + 128) and first.dtype == "fp32"


def test_linear_int8_executorch(artifacts):
    gemms = _gemms(artifacts["mlp-et-int8"])
    assert sorted(o.flops for o in gemms) == [8192, 16384]
    first = max(gemms, key=lambda o: o.flops)
    assert first.dtype == "int8" and first.weights == "int8" and first.runtime == "xnnpack"
    # int8 weight 128x64 + an fp32 scale and an int8 zero point per row + fp32 bias
    assert first.weight_bytes == 128 * 64 + 128 * 4 + 128 + 128 * 4
    ops = ops_from_artifact(artifacts["mlp-et-int8"])
    assert not any(o.op.endswith("relu") for o in ops)  # fused into the first linear


def test_conv_flops(artifacts):
    # tiny_conv on 3x32x32: Conv2d(3, 16, 3, pad 1) -> ReLU -> Conv2d(16, 32, 3, pad 1) -> ... -> Linear(32, 10)
    conv1 = 2 * (16 * 32 * 32) * (3 * 3 * 3)
    conv2 = 2 * (32 * 32 * 32) * (16 * 3 * 3)
    linear = 2 * 10 * 32
    for key in ("conv-et-fp32", "conv-onnx-fp32", "conv-onnx-int8"):
        assert sorted(o.flops for o in _gemms(artifacts[key])) == [linear, conv1, conv2], key
    convs = [o for o in _gemms(artifacts["conv-onnx-int8"]) if o.flops > linear]
    assert {o.dtype for o in convs} == {"int8"}


# ---------------------------------------------------------------------- estimates


@pytest.mark.parametrize("key", ["mlp-et-int8", "conv-onnx-int8"])
def test_estimate_every_profile(artifacts, key):
    for name in PROFILES:
        r = estimate(artifacts[key], load_profile(name))
        assert r["mode"] == "emulated" and r["estimate"] is True and r["device"] == name
        assert math.isfinite(r["latency_ms"]) and r["latency_ms"] > 0
        assert r["ops"] and {"name", "op", "dtype", "unit", "flops", "bytes", "bound", "ms"} <= set(r["ops"][0])
        assert sum(r["bound_share"].values()) == pytest.approx(1.0)
        assert r["assumptions"], "an estimate always states its assumptions"
        assert sum(o["ms"] for o in r["ops"]) <= r["latency_ms"] + 1e-9
        json.dumps(r)  # JSON-able


def test_threads_never_slow_an_estimate_down(artifacts):
    profile = load_profile("snapdragon-8-gen3")
    times = [estimate(artifacts["conv-et-fp32"], profile, threads=t)["latency_ms"] for t in (1, 2, 4, 8)]
    assert times == sorted(times, reverse=True) and times[0] > times[-1]


def test_cpu_share_by_core_speed():
    laptop = load_profile("x86-avx2-laptop")  # 4 P-cores 4.7 GHz x 32, 8 E-cores 3.4 GHz x 16 FLOPs/cycle
    assert cpu_share(laptop, 4) == pytest.approx(4 * 4.7 * 32 / (4 * 4.7 * 32 + 8 * 3.4 * 16))
    assert cpu_share(laptop, 12) == pytest.approx(1.0)


def _gemv(weights: str, nbytes: float) -> Op:
    # One token through a 4096 x 4096 linear: 2 N K FLOPs, the weight read once.
    return Op("fc", "aten.linear", "gemm", "int8" if weights == "int8" else "fp32", weights, "xnnpack",
              2.0 * 4096 * 4096, nbytes + 4 * (4096 + 4096))


def test_int8_weights_make_a_memory_bound_gemv_faster():
    """With the same efficiency factors for both, an int8 GEMV moves a quarter of the bytes
    and no profile's int8 peak is below its fp32 peak, so it can only be faster."""
    same = {"gemm": 0.3, "compute": 0.1, "memory": 0.5, "op_us": 1.0, "call_us": 0.0, "run_us": 0.0}
    for name in PROFILES:
        profile = load_profile(name)
        times = {}
        for weights, nbytes in (("fp32", 4.0 * 4096 * 4096), ("int8", 1.0 * 4096 * 4096)):
            ops = [_gemv(weights, nbytes)]
            units = assign_units(ops, "executorch", ["xnnpack"], profile, [])
            times[weights] = predict(ops, units, "executorch", profile, 1, lookup=lambda rt, u: (same, "test")).total_s
        assert times["int8"] < times["fp32"], name


def test_units_follow_the_delegate_and_the_device():
    coreml = Op("mm", "aten.linear", "gemm", "fp32", "int8", "coreml", 1e6, 1e4)
    notes: list[str] = []
    assert assign_units([coreml], "executorch", ["coreml", "xnnpack"], load_profile("apple-a17-pro"), notes) == \
        [("neural-engine", "fp16")]
    assert assign_units([coreml], "executorch", ["coreml", "xnnpack"], load_profile("rpi5"), notes)[0][0] == "cpu"
    assert any("coreml" in n and "CPU" in n for n in notes)
    standard = Op("mm", "MatMul", "gemm", "fp32", "fp32", "onnx", 1e6, 1e4, domain="")
    nbits = Op("q", "MatMulNBits", "gemm", "int8", "int8", "onnx", 1e6, 1e4, domain="com.microsoft")
    units = assign_units([standard, nbits], "onnx", ["qnn", "xnnpack", "cpu"], load_profile("snapdragon-8-gen3"), [])
    assert units == [("npu", "fp16"), ("cpu", "int8")]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not Path("/proc/cpuinfo").exists(),
                    reason="host profile detection reads an x86-64 Linux /proc/cpuinfo")
def test_host_profile(artifacts):
    profile = host_profile(bandwidth_gbps=20.0)
    assert profile.cpu.arch == "x86_64" and profile.cpu.peak_gops["int8"] >= profile.cpu.peak_gops["fp32"] > 0
    assert profile.memory.bandwidth_gbps == 20.0 and "Detected" in profile.notes
    assert estimate(artifacts["mlp-onnx-fp32"], profile)["latency_ms"] > 0


# ---------------------------------------------------------------------- bad input


def _without_ops(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "ops.json").unlink()
    manifest = json.loads((dst / "manifest.json").read_text())
    del manifest["files"]["ops.json"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_missing_ops_json_is_a_clear_error(artifacts, tmp_path):
    old = _without_ops(artifacts["mlp-et-int8"], tmp_path / "old")
    with pytest.raises(ArtifactError, match="no ops.json") as err:
        estimate(old, load_profile("rpi5"))
    assert "re-export" in err.value.hint
    proc = run_cli("profile", str(old), "--mode", "emulated")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ops.json" in lines[0] and "re-export" in lines[0], proc.stderr


def test_corrupt_ops_json(artifacts, tmp_path):
    bad = _without_ops(artifacts["mlp-et-int8"], tmp_path / "bad")
    (bad / "ops.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        estimate(bad, load_profile("rpi5"))
