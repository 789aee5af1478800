"""int4-g32-asym in ONNX: llama.cpp's Q4_1 grid (a scale and an offset per block of 32) as a
4-bit ``MatMulNBits`` plus the input's block sums times the offsets; and where the planner
offers it, in both formats. The references are the ``gguf`` package's own Q4_1 quantizer
(the grid) and ONNX Runtime (the lowered graph)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _one_linear(linear, scheme_name: str, decoder: bool):
    """``linear`` lowered alone at ``scheme_name`` by the ONNX lowering's own plan pass (plus
    the LLM lowering's accuracy_level pass when ``decoder``), run in ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.backends.onnx.llm import _int8_activations
    from edgeq.backends.onnx.lowering import _apply_plan
    from edgeq.schemes import parse

    n, k = linear.weight.shape
    weight = numpy_helper.from_array(linear.weight.detach().numpy().T.copy(), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "m", n])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    proto, applied = _apply_plan(proto, {"fc": parse(scheme_name)}, {"fc": [("mm", "MatMul")]})
    assert applied == {"fc": scheme_name}
    if decoder:
        _int8_activations(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return proto, (lambda x: session.run(None, {"x": x})[0])


def test_grid_is_gguf_q4_1():
    """The integers are the ``gguf`` package's Q4_1 quantizer's, and its scale and offset
    (stored there as fp16) are ours rounded to fp16."""
    gguf = pytest.importorskip("gguf")
    from edgeq.algorithms.grids import offset_blocks

    torch.manual_seed(0)
    w = torch.randn(8, 128) * 0.1
    w[0, :32] = 0.25  # a constant block: scale 0
    q, d, m = offset_blocks(w, 32)
    raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_1).reshape(8, 4, -1)  # per block: d, m (fp16), 16 bytes
    ref_d = raw[..., 0:2].copy().view(np.float16)[..., 0]
    ref_m = raw[..., 2:4].copy().view(np.float16)[..., 0]
    nib = raw[..., 4:]
    ref_q = np.concatenate([nib & 0x0F, nib >> 4], axis=-1)  # Q4_1: element j in the low nibble, j + 16 in the high
    np.testing.assert_array_equal(q.numpy().astype(np.uint8), ref_q)
    np.testing.assert_array_equal(d.numpy().astype(np.float16), ref_d)
    np.testing.assert_array_equal(m.numpy().astype(np.float16), ref_m)


@pytest.mark.parametrize("decoder", [True, False])
def test_lowered_linear_reproduces_a_q4_1_weight_and_its_stand_in(decoder):
    """A weight already on a Q4_1 grid (the gguf package's dequantized Q4_1 of a random
    matrix) runs in ONNX Runtime at int4-g32-asym as the fp32 product (weight-only) or within
    the int8 activations' rounding (decoder), where int4-g32's integer zero point cannot put
    its grid on those values; the planner's stand-in matches ONNX Runtime."""
    gguf = pytest.importorskip("gguf")
    from edgeq.backends import get_backend
    from edgeq.backends.onnx.numerics import lm_numerics
    from edgeq.schemes import INT4, INT4_G32_ASYM

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((96, 192)) * 0.05 + 0.02).astype(np.float32)
    on_grid = gguf.quants.dequantize(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1),
                                     gguf.GGMLQuantizationType.Q4_1).astype(np.float32)
    linear = torch.nn.Linear(192, 96, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(on_grid))
    x = (rng.standard_normal((1, 4, 192)) * 2).astype(np.float32)
    x[..., 7] = 9.0
    exact = x @ on_grid.T
    proto, asym = _one_linear(linear, INT4_G32_ASYM.name, decoder)
    _, plain = _one_linear(linear, INT4[32].name, decoder)
    ops = sorted(n.op_type for n in proto.graph.node)
    assert ops == ["Add", "MatMul", "MatMul", "MatMulNBits"]
    err_asym, err_plain = np.abs(asym(x) - exact).max(), np.abs(plain(x) - exact).max()
    if decoder:
        assert err_asym < 0.5 * err_plain
    else:
        assert err_asym < 1e-4 * np.abs(exact).max() < err_plain
    be = get_backend("onnx")
    with torch.no_grad():
        if decoder:
            with lm_numerics():
                stand_in = be.stand_in(linear, INT4_G32_ASYM)
        else:
            stand_in = be.stand_in(linear, INT4_G32_ASYM)
        mine = stand_in(torch.from_numpy(x)).numpy()
    assert np.abs(mine - asym(x)).max() < 1e-3 * max(err_plain, 1e-3)


def test_stored_bytes_count_the_file():
    """The planner's stored bytes for an int4-g32-asym linear are the initializers the lowering writes
    (the shared block-indicator matrix aside)."""
    from edgeq.backends.onnx.costs import stored_bytes
    from edgeq.planning.inventory import layer_inventory
    from edgeq.schemes import INT4_G32_ASYM

    linear = torch.nn.Linear(192, 96, bias=False)
    proto, _ = _one_linear(linear, INT4_G32_ASYM.name, decoder=True)
    written = sum(len(t.raw_data) for t in proto.graph.initializer if not t.name.startswith("edgeq_block"))
    (layer,) = layer_inventory(torch.nn.Sequential(linear))
    assert stored_bytes(layer, INT4_G32_ASYM) == written


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_offered_to_a_decoders_untied_linears_only(fmt):
    """The planner's candidates in both formats: a decoder LLM's linears take int4-g32-asym when
    the target allows int4; its table and tied head do not (the table reads the head's tensor),
    and neither do an encoder's linears nor a decoder without int4."""
    from edgeq.backends import get_backend
    from edgeq.planning.inventory import layer_inventory
    from edgeq.schemes import INT4_G32_ASYM
    from tests import tiny_lms

    be = get_backend(fmt)
    layers = layer_inventory(tiny_lms.build("llama"))
    offered = {x.fqn for x in layers if INT4_G32_ASYM in be.extra_schemes(x, ["int8", "int4"], decoder_lm=True)}
    linears = {x.fqn for x in layers if x.kind == "linear" and not x.tied}
    assert offered == linears and len(linears) == 14
    assert all(INT4_G32_ASYM not in be.extra_schemes(x, ["int8"], decoder_lm=True) for x in layers)
    assert all(INT4_G32_ASYM not in be.extra_schemes(x, ["int8", "int4"]) for x in layers)
    tied = [x for x in layers if x.tied]
    assert tied and be.scheme_fits(tied[0], INT4_G32_ASYM)
