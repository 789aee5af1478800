"""int4-g32-asym in ExecuTorch: llama.cpp's Q4_1 grid (a scale and an offset per block of 32)
as XNNPACK's 8da4w linear of ``d * (q - 8)`` plus the input's block means times the offsets
(an int8 linear). The references are the ``gguf`` package's Q4_1 quantizer (the grid), the ExecuTorch
runtime (the lowered program) and the exact fp32 product."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")


def _lowered(linear, scheme):
    """``linear`` quantized by the lowering's own ``quantized_module`` at ``scheme``, lowered with
    XNNPACK, and run in the ExecuTorch runtime; and the program's operator names."""
    from executorch.runtime import Runtime

    from edgeq.backends.executorch.latency import _One
    from edgeq.backends.executorch.latency import _lowered as lower
    from edgeq.backends.executorch.lowering import _uniform
    from edgeq.backends.executorch.quant import quantized_module
    from edgeq.models.capture import capture

    x0 = torch.zeros(1, 4, linear.in_features)
    q = quantized_module(_One(linear).eval(), {"layer": scheme}, "xnnpack")
    manager = lower(capture(q, (x0,), "a one-layer program"), _uniform({"layer": scheme}))
    program = Runtime.get().load_program(manager.buffer)

    def run(x):
        method = program.load_method("forward")
        return method.execute([torch.from_numpy(x)])[0].numpy()

    return manager, run


def _on_q4_1_grid(rows: int, cols: int, seed: int):
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05 + 0.02).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1),
                                  gguf.GGMLQuantizationType.Q4_1).astype(np.float32)


def test_terms_reproduce_a_q4_1_weight_within_the_bf16_scales():
    """``offset_terms`` of a weight on a Q4_1 grid: integers in [-8, 7], scales exact in bf16, and
    ``scales * ints + offsets`` the weight within what bf16 scales move it by (a few 1e-3 of a
    step), where the symmetric int4-g32 grid misses by a third of its step on average."""
    from edgeq.algorithms.grids import offset_blocks
    from edgeq.backends.executorch.quant import offset_terms

    w = torch.from_numpy(_on_q4_1_grid(64, 128, 0))
    ints, scales, offsets = offset_terms(w, 32)
    assert ints.dtype == torch.int8 and int(ints.min()) >= -8 and int(ints.max()) <= 7
    assert torch.equal(scales, scales.to(torch.bfloat16).float())
    back = (ints.float().unflatten(-1, (-1, 32)) * scales[..., None] + offsets[..., None]).flatten(-2)
    _q, d, _m = offset_blocks(w, 32)
    step = d.repeat_interleave(32, -1)
    assert ((back - w).abs() / step).max() < 0.05
    amax = w.unflatten(-1, (-1, 32)).abs().amax(-1, keepdim=True)
    sym = ((w.unflatten(-1, (-1, 32)) / (amax / 7.5)).round().clamp(-8, 7) * (amax / 7.5)).flatten(-2)
    assert ((sym - w).abs() / step).mean() > 0.1


def test_lowered_linear_runs_the_q4_1_weight_and_matches_its_stand_in():
    """The lowered program computes ``x @ Wᵀ`` of a Q4_1 weight within the int8 rounding of its
    input (less than half the error of int4-g32 on the same weight), and the planner's stand-in
    (``executorch.numerics``) matches the runtime."""
    from edgeq.backends import get_backend
    from edgeq.schemes import INT4, INT4_G32_ASYM

    on_grid = _on_q4_1_grid(96, 192, 3)
    linear = torch.nn.Linear(192, 96, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(on_grid))
        linear.bias.uniform_(-0.1, 0.1)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((1, 4, 192)) * 2).astype(np.float32)
    exact = x @ on_grid.T + linear.bias.detach().numpy()
    manager, asym = _lowered(linear, INT4_G32_ASYM)
    _, plain = _lowered(linear, INT4[32])
    err_asym, err_plain = np.abs(asym(x) - exact).max(), np.abs(plain(x) - exact).max()
    assert err_asym < 0.5 * err_plain
    with torch.no_grad():
        mine = get_backend("executorch").stand_in(linear, INT4_G32_ASYM)(torch.from_numpy(x)).numpy()
    assert np.abs(mine - asym(x)).max() < 0.05 * err_plain


def test_stored_bytes_count_the_program():
    """The planner's stored bytes for an int4-g32-asym linear: the 8da4w layer's bytes plus one
    int8 offset a block and an fp32 scale a row, as the .pte grows by them (measured against
    int4-g32's program)."""
    from edgeq.backends.executorch.costs import stored_bytes
    from edgeq.planning.inventory import layer_inventory
    from edgeq.schemes import INT4, INT4_G32_ASYM

    linear = torch.nn.Linear(512, 1024, bias=False)
    asym, _ = _lowered(linear, INT4_G32_ASYM)
    plain, _ = _lowered(linear, INT4[32])
    (layer,) = layer_inventory(torch.nn.Sequential(linear))
    grew = len(asym.buffer) - len(plain.buffer)
    expected = stored_bytes(layer, INT4_G32_ASYM) - stored_bytes(layer, INT4[32])
    assert expected == 1024 * 16 + 1024 * 4
    assert expected <= grew <= expected + 4096  # the offsets, and the program's few more ops


def test_a_weight_only_delegate_refuses_it_in_one_line():
    """Core ML quantizes linears weight-only: int4-g32-asym (8da4w plus offsets) is refused
    with what to plan instead, not computed some other way."""
    from edgeq.backends.executorch.quant import quantized_module
    from edgeq.errors import ConfigError
    from edgeq.schemes import INT4_G32_ASYM

    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    with pytest.raises(ConfigError, match="weight-only") as info:
        quantized_module(model, {"0": INT4_G32_ASYM}, "coreml")
    assert "int4-g32" in info.value.hint


@pytest.mark.slow  # one KV-cache lowering (~50-75 s); the one-layer tests above run the same lowering in CI
def test_a_decoder_at_int4_g32_asym_runs_its_q4_1_weights(tmp_path):
    """A tiny Llama whose linears sit on Q4_1 grids (as a model dequantized from a Q4_1 GGUF
    does), exported with a KV cache at int4-g32-asym: its logits match the planner's stand-ins
    of the same layers, and are closer to the fp32 model than int4-g32's stand-ins (KL on
    next-token distributions)."""
    import copy

    gguf = pytest.importorskip("gguf")
    from edgeq.backends import get_backend
    from edgeq.backends.executorch.llm import lower_lm, open_lm
    from edgeq.planning.plan import QuantPlan
    from edgeq.progress import Steps
    from edgeq.schemes import INT4, INT4_G32_ASYM
    from tests import tiny_lms

    model = tiny_lms.build("llama", tied=False, init=0.05)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    with torch.no_grad():
        for n in linears:
            w = model.get_submodule(n).weight
            q1 = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_1)
            w.copy_(torch.from_numpy(gguf.quants.dequantize(q1, gguf.GGMLQuantizationType.Q4_1)))
    seq = list(range(3, 40))
    result = lower_lm(model, QuantPlan(schemes={n: INT4_G32_ASYM for n in linears}), tmp_path, 48, Steps(show=False))
    assert result.layer_schemes[linears[0]] == "int4-g32-asym"
    session = open_lm(result.model_file)
    try:
        got = session.prefill(seq, all_logits=True)
    finally:
        session.close()

    def eager(scheme):
        be, copy_ = get_backend("executorch"), copy.deepcopy(model)
        for n in linears:
            copy_.set_submodule(n, be.stand_in(model.get_submodule(n), scheme))
        with torch.no_grad():
            return copy_(torch.tensor([seq])).logits[0].numpy()

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def kl(p, q):
        lp, lq = log_softmax(p), log_softmax(q)
        return float((np.exp(lp) * (lp - lq)).sum(-1).mean())

    with torch.no_grad():
        fp32 = model(torch.tensor([seq])).logits[0].numpy()
    plain = eager(INT4[32])
    assert kl(eager(INT4_G32_ASYM), got) < 0.1 * kl(fp32, plain)
    assert kl(fp32, got) < 0.5 * kl(fp32, plain)


def test_with_a_dynamic_sequence_the_whole_term_is_one_delegate_call():
    """Captured and lowered as an LLM is (strict ``torch.export`` with a dynamic sequence dim,
    the lowering's ``delegable_shapes`` pass), an int4-g32-asym linear lowers to a single XNNPACK
    call with no portable op: the block sums' reshape names the symbolic sequence length, which
    XNNPACK refuses as written, and would sit between two delegate calls at every such linear. The
    program's output at 5 rows and at 1 row matches the planner's stand-in."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from edgeq.backends import get_backend
    from edgeq.backends.executorch.latency import _One
    from edgeq.backends.executorch.lowering import _portable_ops
    from edgeq.backends.executorch.passes import delegable_shapes
    from edgeq.backends.executorch.quant import quantized_module
    from edgeq.schemes import INT4_G32_ASYM

    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96, bias=False)

    q = quantized_module(_One(linear).eval(), {"layer": INT4_G32_ASYM}, "xnnpack")
    seq = torch.export.Dim("seq", min=1, max=64)
    program = torch.export.export(q, (torch.zeros(1, 4, 128),), dynamic_shapes=({1: seq},), strict=True)
    edge = to_edge_transform_and_lower(program, transform_passes=[delegable_shapes()], partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    manager = edge.to_executorch()
    graph = manager.exported_program().graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function" and "call_delegate" in str(n.target)]
    assert len(calls) == 1
    assert not {k: v for k, v in _portable_ops(manager.exported_program().graph_module).items() if k != "view"}
    method = Runtime.get().load_program(manager.buffer).load_method("forward")
    stand_in = get_backend("executorch").stand_in(linear, INT4_G32_ASYM)
    for rows in (5, 1):
        x = torch.randn(1, rows, 128)
        got = method.execute([x])[0]
        with torch.no_grad():
            want = stand_in(x)
        assert got.shape == (1, rows, 96)
        assert (got - want).abs().max() < 0.02 * want.abs().max()


def test_the_weight_proxy_sees_the_offsets():
    """``--proxy sqnr`` scores a stand-in's dequantized weight: for int4-g32-asym that is the 4-bit
    term plus each block's int8 offset, which reproduces a Q4_1-grid weight within a tenth of a
    step, so the proxy scores it far below int4-g32 (without the offsets it scored the 4-bit term
    alone, worse than int4-g32)."""
    from edgeq.algorithms.grids import offset_blocks
    from edgeq.backends import get_backend
    from edgeq.backends.standins import dequantized_weight
    from edgeq.planning.sensitivity import _sqnr
    from edgeq.schemes import INT4, INT4_G32_ASYM

    w = torch.from_numpy(_on_q4_1_grid(64, 256, 5))
    linear = torch.nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    stand_in = get_backend("executorch").stand_in
    back = dequantized_weight(stand_in(linear, INT4_G32_ASYM))
    _q, d, _m = offset_blocks(w, 32)
    assert ((back - w).abs() / d.repeat_interleave(32, -1)).max() < 0.1
    scores = _sqnr(torch.nn.Sequential(linear), {"0": [INT4[32], INT4_G32_ASYM]},
                   lambda layer, scheme, _fqn: stand_in(layer, scheme))["0"]
    assert scores[INT4_G32_ASYM.name] < 0.05 * scores[INT4[32].name]
