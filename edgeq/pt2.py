"""Saved ExportedPrograms (``.pt2``): load them without unpickling, make them quantizable.

``torch.export.load`` unpickles in several places (payloads flagged ``use_pickle``,
custom and opaque objects, and a ``weights_only=False`` fallback). ``safe_load`` scans
the archive's configs first and refuses those payloads, and runs the load with pickle
restricted to tensors.

``modularize`` turns the program's ``aten.linear`` / ``aten.embedding`` / ``aten.conv2d``
calls on parameters back into ``nn.Linear`` / ``nn.Embedding`` / ``nn.Conv2d``
submodules, so the same per-layer quantization (torchao, ONNX Runtime) applies as for a
model given as Python code. Layer names follow the parameter names (``fc1.weight`` →
``fc1``).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError

def safe_load(path: Path) -> Any:
    import torch
    import torch._export.serde.serialize as serde

    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a valid .pt2 file (not a zip archive)", "re-save it with torch.export.save")
    _refuse_pickled_payloads(path)

    def tensors_only(serialized: Any) -> Any:
        if isinstance(serialized, (dict, tuple)) or len(serialized) == 0:
            return serialized or {}
        try:
            return torch.load(io.BytesIO(serialized), weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError…
            raise ModelLoadError(
                f"{path} holds objects other than tensors ({str(exc).strip().splitlines()[0][:100]})",
                "edgeq does not unpickle arbitrary objects; re-export the program with plain tensors",
            ) from None

    original = serde.deserialize_torch_artifact
    serde.deserialize_torch_artifact = tensors_only
    try:
        return torch.export.load(str(path))
    except ModelLoadError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} is not a valid .pt2 file ({first})",
                             "re-save it with torch.export.save from the same torch version") from None
    finally:
        serde.deserialize_torch_artifact = original


def _refuse_pickled_payloads(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(("_weights_config.json", "_constants_config.json")):
                    continue
                config = json.loads(archive.read(name)).get("config", {})
                for fqn, meta in config.items():
                    plain = meta.get("path_name", "").startswith(("weight_", "tensor_"))
                    if meta.get("use_pickle") or not plain:
                        raise ModelLoadError(
                            f"{path}: payload '{fqn}' is a pickled object",
                            "edgeq does not unpickle arbitrary objects; re-export the program with plain tensors",
                        )
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a valid .pt2 file ({exc})", "re-save it with torch.export.save") from None


def modularize(program: Any) -> Any:
    """A GraphModule equivalent to ``program`` whose weighted ops are real submodules."""
    import torch
    from torch import nn

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
        w = _fetch(gm, weight.target)
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
            mod.bias = nn.Parameter(_fetch(gm, bias.target).detach().clone(), requires_grad=False)
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
    owner = _fetch(gm, name)
    params = {n for n, _ in owner.named_parameters(recurse=False)} | {n for n, _ in owner.named_buffers(recurse=False)}
    if list(owner.children()) or params != ({"weight", "bias"} if bias else {"weight"}):
        return None
    return name


def _fetch(gm: Any, dotted: str) -> Any:
    obj = gm
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
