"""ONNX Runtime's int8 linear kernels as candidates: per-channel ``MatMulInteger``
(``int8@matmulinteger``, as ``quantize_dynamic(per_channel=True)`` makes it) and 8-bit
``MatMulNBits`` at blocks of 128 (``int8``) and 32 (``int8-g32``). Each stand-in reproduces
what ONNX Runtime computes on one layer, lowered by the ONNX backend's own lowering; the
schemes parse, cost and refuse as each backend says."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.errors import ConfigError
from edgeq.schemes import INT8, INT8_G32, parse

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _one_linear_in_ort(linear, scheme):
    """``linear`` in an fp32 one-MatMul graph, quantized by the ONNX lowering's ``_apply_plan``
    at ``scheme``, in ONNX Runtime; also the lowered graph's op types."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.backends.onnx.lowering import _apply_plan

    n, k = linear.weight.shape
    weight = numpy_helper.from_array(linear.weight.detach().numpy().T.copy(), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    proto, applied = _apply_plan(proto, {"lin": scheme}, {"lin": [("mm", "MatMul")]})
    assert applied == {"lin": scheme.name}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return (lambda x: session.run(None, {"x": x})[0]), {n.op_type for n in proto.graph.node}, proto


KERNELS = [("int8@matmulinteger", "MatMulInteger"), ("int8@matmulinteger7", "MatMulInteger"), ("int8", "MatMulNBits"),
           ("int8-g32", "MatMulNBits")]


@pytest.mark.parametrize("name,op", KERNELS)
@pytest.mark.parametrize("k,rows", [(192, 1), (256, 5), (384, 3)])
def test_int8_kernel_stand_ins_reproduce_onnx_runtime(name, op, k, rows):
    """The stand-in sensitivity measures with is within float rounding of ONNX Runtime's
    output for the kernel the lowering writes; each kernel's error differs from the other
    kernels' by far more than that, so the check tells them apart."""
    from edgeq.backends import get_backend

    be = get_backend("onnx")
    torch.manual_seed(k + rows)
    linear = torch.nn.Linear(k, 48, bias=False)
    with torch.no_grad():
        linear.weight.normal_(0, 0.3)
    x = torch.randn(rows, k) * 2
    x[:, 5] = 9.0  # an outlier channel: per-tensor and per-block activation scales differ
    outputs = {}
    for other, _ in KERNELS:
        run, ops, _proto = _one_linear_in_ort(linear, parse(other))
        outputs[other] = run(x.numpy())
        if other == name:
            assert op in ops, ops
    with torch.no_grad():
        mine = be.stand_in(linear, parse(name))(x).numpy()
        exact = linear(x).numpy()
    ort_out = outputs[name]
    own_error = np.abs(ort_out - exact).max()
    assert own_error > 1e-3  # the kernel really quantizes
    assert np.abs(mine - ort_out).max() < 1e-3 * own_error
    for other, out in outputs.items():
        if other != name:
            assert np.abs(mine - out).max() > 0.02 * own_error, other


def test_int8_kernel_bytes_match_the_lowered_initializers():
    """The cost table's stored bytes equal the quantized initializers the lowering writes."""
    from onnx import numpy_helper

    from edgeq.backends import get_backend
    from edgeq.planning.inventory import layer_inventory

    be = get_backend("onnx")
    linear = torch.nn.Linear(200, 48, bias=False)  # K not a multiple of 128: the last block is padded
    layer = layer_inventory(torch.nn.Sequential(linear))[0]
    for name in ("int8@matmulinteger", "int8@matmulinteger7", "int8", "int8-g32"):
        scheme = parse(name)
        if not layer.fits(scheme):
            continue
        _run, _ops, proto = _one_linear_in_ort(linear, scheme)
        stored = sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
        assert be.stored_bytes(layer, scheme) == stored, name


def test_kernel_scheme_names_parse_and_bad_ones_are_refused():
    s = parse("INT8@MatMulInteger")
    assert (s.bits, s.group, s.kernel, s.name) == (8, None, "matmulinteger", "int8@matmulinteger")
    assert parse("int8-g32") == INT8_G32 and INT8_G32.group == 32
    assert parse(s.name) == s and s != INT8
    for bad in ("int8@", "fp32@matmulinteger", "int8@Mat Mul", "int8@x@y"):
        with pytest.raises(ConfigError):
            parse(bad)


def test_each_backend_offers_and_refuses_kernels_as_it_stores_them():
    from edgeq.backends import get_backend
    from edgeq.planning.inventory import LayerInfo

    linear = LayerInfo("l", "linear", (64, 256), 64 * 256)
    embedding = LayerInfo("e", "embedding", (100, 64), 6400)
    onnx_be = get_backend("onnx")
    assert [s.name for s in onnx_be.extra_schemes(linear, ["int8"])] == ["int8@matmulinteger", "int8@matmulinteger7",
                                                                          "int8-g32"]
    assert onnx_be.extra_schemes(linear, ["int4"]) == []  # the target does not allow int8
    # a decoder LLM's lowering ships one kernel per scheme; its linears and table take 8-bit blocks of 32
    assert [s.name for s in onnx_be.extra_schemes(linear, ["int8"], decoder_lm=True)] == ["int8-g32"]
    assert [s.name for s in onnx_be.extra_schemes(embedding, ["int8"], decoder_lm=True)] == ["int8-g32"]
    # an encoder's tables too (GatherBlockQuantized; int8 itself is one uint8 scale a table)
    assert [s.name for s in onnx_be.extra_schemes(embedding, ["int8"])] == ["int8-g32"]
    assert onnx_be.extra_schemes(embedding, ["int4"]) == []
    assert onnx_be.scheme_fits(embedding, parse("int8-g32")) == ""
    assert "embeddings" in onnx_be.scheme_fits(LayerInfo("c", "conv", (8, 27), 216), parse("int8-g32"))
    assert onnx_be.scheme_fits(linear, parse("int8@matmulinteger")) == ""
    assert "no 'foo' kernel" in onnx_be.scheme_fits(linear, parse("int8@foo"))
    assert "linears" in onnx_be.scheme_fits(embedding, parse("int8@matmulinteger"))
    for fmt in ("executorch", "gguf"):
        be = get_backend(fmt)
        assert be.extra_schemes(linear, ["int8"]) == []
        assert be.scheme_fits(linear, parse("int8@matmulinteger")), fmt


def test_a_mixed_kernel_plan_exports_and_runs_in_onnx_runtime(tmp_path, tiny_bert_dir):
    """A BERT with int8 embeddings (quantize_dynamic's Gather), MatMulInteger linears and
    MatMulNBits block-32 linears in one artifact: each layer lowered by its own kernel (the
    exporter's untyped attention constants do not stop quantize_dynamic), verified in ONNX
    Runtime against eager fp32."""
    import json

    import onnx

    from edgeq.planning.inventory import layer_inventory
    from edgeq.models import load_model
    from tests.conftest import cli_here

    layers = layer_inventory(load_model(str(tiny_bert_dir), seq_len=32).module)
    linears = [x.fqn for x in layers if x.kind == "linear"]
    kernels = {f: ("int8@matmulinteger" if i % 2 else "int8-g32") for i, f in enumerate(linears)}
    plan = tmp_path / "plan.yaml"
    plan.write_text("layers:\n" + "".join(f"  {x.fqn}: {kernels.get(x.fqn, 'int8' if x.kind == 'embedding' else 'fp32')}\n"
                                          for x in layers))
    out = tmp_path / "art"
    r = cli_here("export", str(tiny_bert_dir), "-t", "x86", "--plan", str(plan), "--seq-len", "32", "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    applied = manifest["precision"]["layers"]
    called = [f for f in linears if applied[f] != "unused"]  # a sentence embedder never calls the pooler
    assert len(called) >= 8 and {f: applied[f] for f in called} == {f: kernels[f] for f in called}
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"MatMulInteger", "MatMulNBits"} <= ops
    assert manifest["numerics"]["cosine_min"] > 0.99


def test_a_plan_file_asking_a_format_for_a_kernel_it_lacks_is_refused(tmp_path):
    from tests.conftest import cli_here

    plan = tmp_path / "plan.yaml"
    plan.write_text("layers:\n  fc1: int8@matmulinteger\n")
    r = cli_here("export", "tests.tiny_models:tiny_text", "-t", "rpi5", "--plan", str(plan), "-o", str(tmp_path / "a"))
    assert r.returncode == 2 and "no 'matmulinteger' kernel" in r.stderr and "Traceback" not in r.stderr
    plan.write_text("layers:\n  embed: int8@matmulinteger\n")
    r = cli_here("export", "tests.tiny_models:tiny_text", "-t", "x86", "--plan", str(plan), "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and "linears" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("fc1,fc2", [("int8@matmulinteger7", "fp32"), ("int8@matmulinteger7", "int8@matmulinteger"),
                                     ("int8@matmulinteger", "int8@matmulinteger7")])
def test_a_7bit_linear_reading_an_int8_table_exports(tmp_path, fc1, fc2):
    """quantize_dynamic runs once per weight range: an int8 table (Gather) quantized in the
    8-bit pass and a 7-bit MatMulInteger reading its output in the other each name a tensor
    after the table's output; the artifact must still load, and compute what eager fp32 does."""
    import onnx

    from edgeq.export import export

    rules = ["embed=int8", f"fc1={fc1}", f"fc2={fc2}"]
    result = export("tests.tiny_models:tiny_text", "x86", rules=rules, output=tmp_path / "a", samples=4,
                    show_progress=False)
    assert result.manifest.precision.layers == {"embed": "int8", "fc1": fc1, "fc2": fc2}
    graph = onnx.load(str(tmp_path / "a" / "model.onnx")).graph
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == 1 + (fc2 != "fp32")
    assert result.manifest.numerics.cosine_min > 0.99
