"""A graph pass run on an LLM's edge program before XNNPACK partitions it: two kinds of op
XNNPACK does not take, which each split the program between two delegate calls, rewritten
as the same computation in a form it takes (``delegable_shapes``).

A norm's ``mean(x, -1, keepdim=True)`` over a ``[1, seq, H]`` (or
``[1, seq, heads, D]``) input, as every RMSNorm computes it, is not an op XNNPACK takes: it
averages only 4-D tensors over their two innermost dims. Left portable, each such mean
splits the program between two delegate calls (SmolLM2-135M: 61 of them per token). The
pass writes it as the same mean over a ``[1, rows, H, 1]`` view.

A reshape whose shape names the symbolic sequence length (``view(*input_shape, -1, D)``, as
attention splits and merges heads): XNNPACK takes a reshape only with ints and at most one
``-1``. The pass spells the shape from the output's: its one dynamic dim as ``-1``, the
others as ints.
"""

from __future__ import annotations

from typing import Any


def delegable_shapes() -> Any:
    """An ``ExportPass`` rewriting the means and reshapes XNNPACK does not take (see above)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import ExportPass

    mean, view = exir_ops.edge.aten.mean.dim, exir_ops.edge.aten.view_copy.default

    class DelegableShapes(ExportPass):
        def call_operator(self, op: Any, args: Any, kwargs: Any, meta: Any) -> Any:
            if op == view and (shape := _static_but_one(args, meta)) is not None:
                return super().call_operator(view, (args[0], shape), kwargs, meta)
            spelled = _as_4d(args, kwargs) if op == mean else None
            if spelled is None:
                return super().call_operator(op, args, kwargs, meta)
            inner, lead = spelled
            x = super().call_operator(view, (args[0], [1, -1, inner, 1]), {}, meta)
            m = super().call_operator(mean, (x, [2, 3], True), {}, meta)
            return super().call_operator(view, (m, [*lead, 1]), {}, meta)

    return DelegableShapes()


def _as_4d(args: Any, kwargs: Any) -> tuple[int, list[int]] | None:
    """``(H, the output's leading dims spelled for a reshape)`` when ``mean(*args)`` averages the
    last dim (static ``H``) of a 3-D or 4-D input with keepdim, every leading dim a static int
    but one (the sequence); else None."""
    val = args[0].node.meta.get("val") if hasattr(args[0], "node") else None
    if val is None or kwargs.get("dtype") is not None or len(args) < 3 or not args[2]:
        return None
    rank, dims = val.dim(), [int(d) for d in args[1]]
    if rank not in (3, 4) or [d % rank for d in dims] != [rank - 1]:
        return None
    shape = list(val.shape)
    if not isinstance(shape[-1], int) or shape[0] != 1:
        return None
    lead = [d if isinstance(d, int) else -1 for d in shape[:-1]]
    if lead.count(-1) > 1:
        return None
    return shape[-1], lead


def _static_but_one(args: Any, meta: Any) -> list[int] | None:
    """A reshape's shape spelled as ints and one ``-1`` (from its output's shape) when it names a
    symbolic size and its output has exactly one dynamic dim; else None (left as it is)."""
    if all(isinstance(d, int) for d in args[1]):
        return None
    val = meta.data.get("val") if hasattr(meta, "data") else None
    if val is None:
        return None
    out = [d if isinstance(d, int) else -1 for d in val.shape]
    return out if out.count(-1) == 1 else None
