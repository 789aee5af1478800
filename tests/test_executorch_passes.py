"""``executorch.passes.delegable_shapes``: the means and reshapes an LLM's norms and attention
write, which XNNPACK does not take as written, rewritten so it takes them. The reference is
the eager module (the same numbers) and the program itself (one delegate call, no portable
op left between calls)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")


class _NormsAndHeads(torch.nn.Module):
    """An RMSNorm over ``[1, seq, H]``, one per head over ``[1, seq, heads, D]`` (Qwen3's q_norm),
    and a head split and merge naming the sequence length, as transformers' attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 64)
        self.weight = torch.nn.Parameter(torch.rand(64) + 0.5)
        self.head_weight = torch.nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        h = self.proj(h)
        shape = h.shape[:-1]
        heads = h.view(*shape, -1, 16)
        heads = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + 1e-6) * self.head_weight
        return heads.reshape(*shape, -1)


def _lowered(passes):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from edgeq.backends.executorch.lowering import _portable_ops

    seq = torch.export.Dim("seq", min=1, max=64)
    program = torch.export.export(_NormsAndHeads().eval(), (torch.randn(1, 5, 64),), dynamic_shapes=({1: seq},),
                                  strict=True)
    edge = to_edge_transform_and_lower(program, transform_passes=passes, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    manager = edge.to_executorch()
    gm = manager.exported_program().graph_module
    calls = sum(1 for n in gm.graph.nodes if n.op == "call_function" and "call_delegate" in str(n.target))
    return manager, calls, {k: v for k, v in _portable_ops(gm).items() if k != "view"}


def test_norm_means_and_head_reshapes_run_in_one_delegate_call_with_the_eager_numbers():
    from executorch.runtime import Runtime

    from edgeq.backends.executorch.passes import delegable_shapes

    torch.manual_seed(0)
    _, calls_before, portable_before = _lowered([])
    assert calls_before > 1 and {"aten.mean"} <= set(portable_before)  # as XNNPACK finds them
    torch.manual_seed(0)
    eager = _NormsAndHeads().eval()
    torch.manual_seed(0)
    manager, calls, portable = _lowered([delegable_shapes()])
    assert (calls, portable) == (1, {})
    method = Runtime.get().load_program(manager.buffer).load_method("forward")
    for rows in (7, 1):
        x = torch.randn(1, rows, 64)
        with torch.no_grad():
            want = eager(x)
        got = method.execute([x])[0]
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_shapes_it_cannot_spell_stay_as_they_are():
    """A mean over other dims, without keepdim, or of a 2-D input is not rewritten."""
    from edgeq.backends.executorch.passes import _as_4d

    class P:
        def __init__(self, t):
            self.node = type("N", (), {"meta": {"val": t}})()

    x3 = torch.empty(1, 4, 8)
    assert _as_4d((P(x3), [-1], True), {}) == (8, [1, 4])
    assert _as_4d((P(x3), [1], True), {}) is None
    assert _as_4d((P(x3), [-1], False), {}) is None
    assert _as_4d((P(torch.empty(4, 8)), [-1], True), {}) is None
    assert _as_4d((P(torch.empty(2, 4, 8)), [-1], True), {}) is None
