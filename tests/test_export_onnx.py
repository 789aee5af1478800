"""ONNX exports of tiny models, run in ONNX Runtime here and compared with eager."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgeq.export import export
from tests import tiny_models
from tests.helpers import cosines, random_rows, run_onnx, stand_in_distance


@pytest.mark.parametrize(
    "factory, precision, min_cos, op",
    [
        ("tiny_text", "fp32", 0.99999, "MatMul"),
        ("tiny_text", "int8", 0.999, "MatMulNBits"),
        ("tiny_text", "int4", 0.99, "GatherBlockQuantized"),
        ("tiny_text", "fp16", 0.999, "Cast"),
        ("tiny_mlp", "int4", 0.99, "MatMulNBits"),  # 2-D input: exported as Gemm, rewritten
        ("tiny_conv", "int8", 0.999, "ConvInteger"),
    ],
)
def test_onnx_export_runs_and_matches_eager(tmp_path: Path, factory, precision, min_cos, op):
    out = tmp_path / "art"
    result = export(f"tests.tiny_models:{factory}", "x86", precision=precision, output=out)
    path = out / "model.onnx"
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert op in ops, ops
    # the exporter's per-node debug metadata (stack traces with local paths) is not shipped
    assert not any(n.metadata_props for n in graph.node) and str(Path.cwd()) not in path.read_bytes().decode("latin-1")
    assert "Gemm" not in ops or precision in ("fp32", "fp16", "int8")
    model, example = getattr(tiny_models, factory)()
    rows = random_rows(example, 8)
    cos = cosines(model, rows, run_onnx(path, rows))
    assert min(cos) >= min_cos, cos
    m = result.manifest
    assert m.delegation.expected_execution_providers == ["CPUExecutionProvider"]
    assert m.numerics.cosine_min >= min_cos


def test_onnx_target_names_its_execution_providers(tmp_path: Path):
    result = export("tests.tiny_models:tiny_mlp", "snapdragon8-onnx", output=tmp_path / "out")
    d = result.manifest.delegation
    assert d.expected_execution_providers == ["QNNExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider"]
    assert any("QNNExecutionProvider" in n for n in result.manifest.notes)


def test_per_layer_schemes_follow_module_names(tmp_path: Path):
    result = export("tests.tiny_models:tiny_text", "x86", precision="int4", output=tmp_path / "out")
    assert result.manifest.precision.layers == {"embed": "int4-g32", "fc1": "int4-g32", "fc2": "int4-g32"}


@pytest.mark.slow
def test_minilm_onnx_int8_meets_size_and_fidelity(tmp_path: Path, minilm_dir: Path):
    from edgeq.models import load_model

    out = tmp_path / "minilm"
    result = export(str(minilm_dir), "x86", precision="int8", output=out, samples=8)
    assert result.manifest.sizes.artifact_bytes <= 0.26 * result.manifest.sizes.fp32_weight_bytes
    loaded = load_model(minilm_dir)
    rows = loaded.make_inputs("heldout", 64)
    cos = cosines(loaded.module, rows, run_onnx(out / "model.onnx", rows))
    assert sum(cos) / len(cos) >= 0.995 and min(cos) >= 0.99


@pytest.mark.parametrize("factory, layer, plan_yaml, scheme", [
    ("tiny_mlp", "0", "{'0': int8, '2': fp32}", "int8"),  # 8-bit MatMulNBits, int8 compute
    ("tiny_mlp", "0", "{'0': int4-g32, '2': fp32}", "int4-g32"),  # 4-bit MatMulNBits
    ("tiny_text", "embed", "{embed: int8, fc1: fp32, fc2: fp32}", "int8"),  # quantize_dynamic Gather
    ("tiny_text", "embed", "{embed: int4-g32, fc1: fp32, fc2: fp32}", "int4-g32"),  # GatherBlockQuantized
    ("tiny_text", "embed", "{embed: int8-g32, fc1: fp32, fc2: fp32}", "int8-g32"),  # GatherBlockQuantized, 8 bits
    ("tiny_conv", "0", "{'0': int8, '2': fp32, '6': fp32}", "int8"),  # ConvInteger
])
def test_onnx_sensitivity_stand_ins_reproduce_onnx_runtime(tmp_path: Path, factory, layer, plan_yaml, scheme):
    """The eager stand-in the planner measures ONNX sensitivity with computes the artifact's
    numbers: its distance to ONNX Runtime's output is a tiny part of the quantization error
    (test_export_executorch.py checks the ExecuTorch stand-in the same way)."""
    distance, quant_error = stand_in_distance(tmp_path, factory, "x86", layer, plan_yaml, scheme)
    assert quant_error > 0
    assert distance < 0.02 * quant_error, (distance, quant_error)
