"""A decoder LLM's int4 linears in ONNX compute with 8-bit dynamic activations
(``MatMulNBits`` ``accuracy_level=4``), like ExecuTorch's 8da4w: the planner's stand-in
reproduces ONNX Runtime's own output on one layer, the artifact's nodes carry the
attribute, and the manifest records it. Encoders' int4 stays weight-only."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests import tiny_lms  # noqa: E402
from tests.conftest import cli_here  # noqa: E402


def _one_linear_in_ort(linear, group: int, decoder: bool):
    """``linear`` as the ONNX lowerings quantize it to int4-g``group`` (the encoder path's
    ``_nbits``, plus the LLM lowering's accuracy_level pass when ``decoder``), in ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.backends.onnx.llm import _int8_activations
    from edgeq.backends.onnx.lowering import _nbits

    n, k = linear.weight.shape
    weight = numpy_helper.from_array(linear.weight.detach().numpy().T.copy(), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [weight])
    proto = _nbits(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), ["mm"], 4,
                   group)
    assert (_int8_activations(proto) if decoder else 0) == int(decoder)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


@pytest.mark.parametrize("k,group,rows", [(192, 32, 1), (256, 64, 5), (576, 32, 3)])
def test_decoder_int4_stand_in_reproduces_onnx_runtime_accuracy_level_4(k, group, rows):
    """ONNX Runtime's MatMulNBits at accuracy_level=4 is the reference: the stand-in the LLM
    planner measures with (inside ``lm_numerics``) is within float rounding of it, while
    the weight-only stand-in (what encoders get) is off by the activations' int8 error —
    so the check tells the two numerics apart."""
    from edgeq.backends import get_backend
    from edgeq.schemes import Scheme

    be = get_backend("onnx")
    torch.manual_seed(k + rows)
    linear = torch.nn.Linear(k, 48, bias=False)
    with torch.no_grad():
        linear.weight.normal_(0, 0.3)
    x = (torch.randn(rows, k) * 2).numpy()
    x[:, 5] = 9.0  # one outlier channel: its block's int8 step is coarse
    ort_int8 = _one_linear_in_ort(linear, group, decoder=True)(x)
    ort_fp32 = _one_linear_in_ort(linear, group, decoder=False)(x)
    scheme = Scheme("int", 4, group)
    with torch.no_grad(), be.lm_numerics():
        decoder = be.stand_in(linear, scheme)(torch.from_numpy(x)).numpy()
    with torch.no_grad():
        encoder = be.stand_in(linear, scheme)(torch.from_numpy(x)).numpy()
    activation_error = np.abs(ort_int8 - ort_fp32).max()
    assert activation_error > 1e-2  # int8 activations really change the numbers
    assert np.abs(decoder - ort_int8).max() < 1e-3 * activation_error
    assert np.abs(encoder - ort_fp32).max() < 1e-3 * activation_error  # encoders: unchanged, weight-only
    assert np.abs(encoder - ort_int8).max() > 0.1 * activation_error


def test_int4_llm_export_records_int8_activations_in_model_and_manifest(tmp_path):
    """``edgeq export -p int4`` of a causal LM to ONNX: every 4-bit MatMulNBits has
    accuracy_level=4, and the manifest's llm block says how each scheme's linears compute."""
    import onnx

    lm = tiny_lms.save_tiny_lm(tmp_path / "tiny-llama", "llama")
    out = tmp_path / "art"
    r = cli_here("export", str(lm), "-t", "x86", "-p", "int4", "--max-context", "32", "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: a.i for a in n.attribute} for n in nodes]
    int4_linears = [f for f, s in manifest["precision"]["layers"].items() if s.startswith("int4") and "embed" not in f]
    packed = [n for n in nodes if any(o.endswith(".qkv") or ".qkv" in o for o in n.output)]  # q/k/v as one node
    assert len(packed) == 2  # one per layer
    assert len(nodes) + 2 * len(packed) == len(int4_linears) >= 14  # 2 layers x 7 linears (+ an int4 head)
    assert all(a["bits"] == 4 and a["accuracy_level"] == 4 for a in attrs)
    schemes = {s for f, s in manifest["precision"]["layers"].items() if "embed" not in f}
    assert manifest["llm"]["linear_compute"] == {
        s: ("int8 dynamic activations" if s.startswith("int") else "fp32") for s in schemes}
    from edgeq.artifact import load_manifest

    assert load_manifest(out).llm.linear_compute["int4-g32"] == "int8 dynamic activations"


def test_llm_planner_measures_onnx_sensitivity_with_the_decoder_numerics(tmp_path, monkeypatch):
    """``edgeq plan`` on a causal LM for an ONNX target measures every int4 linear with the
    int8-activation stand-in (the artifact's numerics), not the encoders' weight-only one."""
    import edgeq.backends.onnx as onnx_backend
    from edgeq.backends.onnx import numerics

    seen: list[tuple[str, bool]] = []
    original = onnx_backend.stand_in

    def spy(layer, scheme, weights=None):
        seen.append((scheme.name, numerics._DECODER_LM.get()))
        return original(layer, scheme, weights)

    monkeypatch.setattr(onnx_backend, "stand_in", spy)
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))  # measured now, not read from a cache
    lm = tiny_lms.save_tiny_lm(tmp_path / "tiny-llama", "llama", init=0.02)
    r = cli_here("plan", str(lm), "--target", "x86", "--budget", "10MB", "--max-context", "32", "-o",
                 str(tmp_path / "plan.yaml"))
    assert r.returncode == 0, r.stderr
    int4 = [decoder for name, decoder in seen if name.startswith("int4")]
    assert len(int4) >= 14 and all(int4)
    assert not numerics._DECODER_LM.get()  # and nothing leaks out of the plan
