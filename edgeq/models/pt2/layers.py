"""A loaded program's weighted aten calls turned back into ``nn`` layers.

``modularize`` turns the program's ``aten.linear`` / ``aten.embedding`` / ``aten.conv2d``
calls on parameters back into ``nn.Linear`` / ``nn.Embedding`` / ``nn.Conv2d`` submodules, so
the same per-layer quantization applies as for a model given as Python code
(``fc1.weight`` → ``fc1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.models.pt2.guard import only_checked_deserialization
from edgeq.models.pt2.program import fetch


def modularize(program: Any) -> Any:
    """A GraphModule equivalent to ``program`` whose weighted ops are real submodules.

    >>> from edgeq.models.pt2 import modularize, safe_load
    >>> gm = modularize(safe_load(Path("model.pt2")))  # doctest: +SKIP
    """
    import torch
    from torch import nn

    with only_checked_deserialization(Path("<the loaded program>")):  # module() generates and execs code
        gm = program.module()
    graph = gm.graph
    made: dict[str, nn.Module] = {}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        target = node.target
        if target == torch.ops.aten.linear.default:
            x, weight, bias = (list(node.args) + [None])[:3]
        elif target == torch.ops.aten.embedding.default:  # padding_idx only matters for training
            weight, x, bias = node.args[0], node.args[1], None
        elif target == torch.ops.aten.conv2d.default:
            x, weight, bias = (list(node.args) + [None])[:3]
        else:
            continue
        if getattr(weight, "op", None) != "get_attr" or (bias is not None and getattr(bias, "op", None) != "get_attr"):
            continue
        name = _owner_name(gm, weight.target, bias.target if bias is not None else None)
        if name is None or name in made:
            continue
        w = fetch(gm, weight.target)
        if target == torch.ops.aten.linear.default:
            mod: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        elif target == torch.ops.aten.embedding.default:
            mod = nn.Embedding(w.shape[0], w.shape[1])
        else:
            args = list(node.args) + [None] * 7
            stride, padding, dilation, groups = args[3] or 1, args[4] or 0, args[5] or 1, args[6] or 1
            mod = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                            dilation=dilation, groups=groups, bias=bias is not None)
        mod.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
        if bias is not None:
            mod.bias = nn.Parameter(fetch(gm, bias.target).detach().clone(), requires_grad=False)
        gm.set_submodule(name, mod, strict=False)
        made[name] = mod
        with graph.inserting_before(node):
            new = graph.call_module(name, (x,))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _owner_name(gm: Any, weight: str, bias: str | None) -> str | None:
    """The container holding exactly ``<name>.weight`` (and ``<name>.bias``), or None."""
    if not weight.endswith(".weight"):
        return None
    name = weight.removesuffix(".weight")
    if bias is not None and bias != f"{name}.bias":
        return None
    owner = fetch(gm, name)
    params = {n for n, _ in owner.named_parameters(recurse=False)} | {n for n, _ in owner.named_buffers(recurse=False)}
    if list(owner.children()) or params != ({"weight", "bias"} if bias else {"weight"}):
        return None
    return name
