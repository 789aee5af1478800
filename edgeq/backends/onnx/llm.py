"""ONNX decoder LLMs: a transformers causal LM exported with its KV cache as graph
inputs and outputs, quantized per layer with ONNX Runtime's contrib ops.

The graph is ``(input_ids[1, seq], past.{i}.key, past.{i}.value, ...) → (logits[1, seq,
vocab], present.{i}.key, present.{i}.value, ...)``; each past tensor is ``[1, kv_heads,
past, head_dim]`` with ``past`` allowed to be 0, so one graph serves prefill (a whole
prompt, empty cache) and decode (one token). A wrapper rebuilds transformers'
``DynamicCache`` from the flat inputs, so the model's own attention and rotary code is
exported unchanged (positions come from the cache length).

Quantization reuses the encoder path (``lowering._apply_plan``): linears at int4-gN /
int8 become ``MatMulNBits``, embeddings at int4 ``GatherBlockQuantized``, int8
embeddings ``DequantizeLinear`` tables. Unlike an encoder's, a decoder's int4 linears
compute with 8-bit dynamic activations (``accuracy_level=4``: the input rounded to
symmetric int8 per row and block of the group size, then an int8 dot product), as
ExecuTorch's LLM int4 does (8da4w) and as int8 linears already do here: for decoder LLMs
both formats mean the same by int4 and int8, the manifest says so (``llm.linear_compute``)
and the planner measures sensitivity with those numerics (``numerics.lm_numerics``).
The exported graph is then fused so a decode step runs few kernels (``llm_fusion``,
``llm_attention``): RMSNorms become ``SimplifiedLayerNormalization`` (ONNX Runtime folds
the residual Adds into ``SkipSimplifiedLayerNormalization`` at load), rotary embeddings
``RotaryEmbedding``, and each layer's attention one ``GroupQueryAttention`` with the
rotary inside; SmolLM2-135M goes from 1895 nodes to 459. When every layer's attention is
fused, each layer's K and V become one buffer of ``max_context`` positions that the session
binds as both past and present (``share_kv_buffers``; the kernel writes the new positions in
place instead of copying the whole cache into a new present at every call, and the session
feeds the cache length); otherwise past and present stay separate inputs and outputs, the
unfused graph's concatenation. The metadata and the manifest say which
(``kv_cache`` / ``llm.kv_cache_layout``). A pattern that does
not match exactly is left as exported (GPT-2 keeps its graph; Qwen3, whose q/k norms sit
before the rotary, keeps its attention nodes), and fp32 greedy tokens stay identical to
eager transformers for every architecture tested. ONNX Runtime's offline optimization
(``optimized_model_filepath``) is not applied: at EXTENDED it fused nothing more than the
runtime does at load (same decode speed), and a model saved at ALL may hold CPU-specific
layouts that only load where it was optimized.

What ``open_lm`` needs (layer count, cache names, max context) is written into the
model's metadata under ``edgeq.lm`` (versioned), so the ``.onnx`` file is self-describing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeq.backends import KV_GROWN, KV_STATIC
from edgeq.errors import ConfigError, ExportError, describe
from edgeq.llm.session import LoweredLM, head_storage, linears_with_int8_activations

LM_META_KEY = "edgeq.lm"
LM_META_VERSION = 1
MODEL_FILE = "model.onnx"
# MatMulNBits' accuracy_level 4: int8 compute (the input quantized to int8 per row and block)
ACCURACY_INT8 = 4
# Example lengths for tracing; distinct from any head count / size, so the exporter
# keeps them symbolic instead of specialising a dimension that happens to match.
_TRACE_SEQ, _TRACE_PAST = 7, 11
# One protobuf cannot exceed 2 GB: above this, weights go to an external data file.
_EXTERNAL_DATA_BYTES = 1_800_000_000


def lower_lm(model: Any, plan: Any, workdir: Path, max_context: int, steps: Any = None,
             calibrated: dict[str, Any] | None = None) -> LoweredLM:
    """Export causal LM ``model`` with past key/values to ``workdir/model.onnx``, apply
    ``plan`` (``QuantPlan`` of fqn → scheme, fqns relative to ``model``; None = fp32),
    check that ONNX Runtime loads it, and say what was written."""
    import onnxruntime as ort

    from edgeq.backends.onnx.graph import called_layers, dedupe_nodes, fold_weight_transposes, gemm_to_matmul, layer_nodes, op_counts
    from edgeq.backends.onnx.llm_attention import fuse_group_query_attention, pack_qkv, share_kv_buffers
    from edgeq.backends.onnx.llm_session import KV_CONCAT, KV_SHARED
    from edgeq.backends.onnx.llm_fusion import fuse_rms_norms, fuse_rotary, fuse_skip_norms
    from edgeq.backends.onnx.calibrated import write_calibrated
    from edgeq.backends.onnx.lowering import _apply_plan, _strip_debug_metadata, check_loads
    from edgeq.progress import Steps

    steps = steps or Steps(show=False)
    module = _causal_lm(model)
    layers = _check_context(module, max_context)
    workdir = Path(workdir)
    out = workdir / MODEL_FILE
    with steps.step("Exporting with torch.onnx (dynamo, KV cache)") as info:
        proto = _export(module, layers, max_context, workdir)
        info.detail = f"{len(proto.graph.node)} nodes, {layers} layers"
    schemes = dict(plan.schemes) if plan is not None else {}
    with steps.step("Quantizing and fusing with ONNX Runtime ops") as info:
        gemm_to_matmul(proto)
        fold_weight_transposes(proto, {_PREFIX + h for h in _untied_heads(module, schemes)})
        nodes = {_unprefix(k): v for k, v in layer_nodes(proto).items()}
        called = {_unprefix(k) for k in called_layers(proto)}
        proto, applied = _apply_plan(proto, schemes, nodes, called)
        write_calibrated(proto, nodes, {f: w for f, w in (calibrated or {}).items() if applied.get(f) == schemes[f].name})
        tied_once = _share_tied_table(proto, module, schemes, applied)
        _int8_activations(proto)
        dedupe_nodes(proto)
        norms, rotary = fuse_rms_norms(proto), fuse_rotary(proto, module, max_context)
        attention = fuse_group_query_attention(proto, module.config, max_context, layers)
        shared = share_kv_buffers(proto, layers, max_context)
        skips = fuse_skip_norms(proto)
        packed = pack_qkv(proto)
        _strip_debug_metadata(proto)
        kv = _cache_layout(proto, layers)
        meta = {"version": LM_META_VERSION, "max_context": max_context, "num_layers": layers,
                "vocab_size": int(module.config.vocab_size), "kv_heads": kv[0], "head_dim": kv[1],
                "kv_cache_dtype": "float32", "kv_cache": KV_SHARED if shared else KV_CONCAT}
        entry = proto.metadata_props.add()
        entry.key, entry.value = LM_META_KEY, json.dumps(meta)
        extra = _save(proto, out)
        counts = op_counts(proto)
        info.detail = (", ".join(f"{n} {s}" for s, n in _count(applied).items()) or "fp32") + \
            (f"; fused {norms} RMSNorms ({skips} with their residual Add), {rotary} rotary embeddings, "
             f"{attention} attentions ({packed} reading one packed q/k/v projection)"
             if norms or rotary or attention else "")
    check_loads(out, extra, "LM", steps)
    return LoweredLM(
        model_file=out,
        runtime=f"ONNX Runtime {ort.__version__} (CPUExecutionProvider)",
        delegates_used=["cpu"],
        layer_schemes=applied,
        max_context=max_context,
        kv_cache_dtype="float32",
        kv_cache_bytes=2 * layers * kv[0] * kv[1] * max_context * 4,
        extra_files=extra,
        linear_compute=linears_with_int8_activations(module, applied),  # MatMulNBits at accuracy_level 4
        delegation={"delegated_ops": {"CPUExecutionProvider": sum(counts.values())}, "portable_op_count": 0,
                    "op_types": counts, "head": _head(module, applied, tied_once),
                    "kv_cache_layout": KV_STATIC if shared else KV_GROWN},
    )


# ------------------------------------------------------------------------- internals

_PREFIX = "lm."  # the wrapper's attribute: exported name scopes start with it


def _unprefix(scope: str) -> str:
    return scope[len(_PREFIX):] if scope.startswith(_PREFIX) else scope


def _share_tied_table(proto: Any, module: Any, schemes: dict[str, Any], applied: dict[str, str]) -> bool:
    """A tied head at its table's scheme, where ONNX stores that pair once (``llm_tied``):
    the table read from the head's tensor. Returns whether the graph was rewritten."""
    from edgeq.backends.onnx.llm_tied import share_tied_table, shares_table
    from edgeq.planning.inventory import layer_inventory

    pairs = [(x.tied, x.fqn) for x in layer_inventory(module) if x.tied]
    return len(pairs) == 1 and all(
        f in schemes and applied.get(f) == schemes[f].name for f in pairs[0]) \
        and schemes[pairs[0][0]] == schemes[pairs[0][1]] and shares_table(schemes[pairs[0][1]]) \
        and share_tied_table(proto)


def _head(module: Any, applied: dict[str, str], tied_once: bool) -> dict[str, Any]:
    head = head_storage(module, applied)
    return {**head, "storage": "shared with the embedding"} if tied_once else head


def _causal_lm(model: Any) -> Any:
    """The ``torch.nn.Module`` to export, refusing anything that is not a decoder with an LM head."""
    import torch

    module = model if isinstance(model, torch.nn.Module) else getattr(model, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"expected a torch.nn.Module causal LM, got {type(model).__name__}",
                          "load the model with transformers.AutoModelForCausalLM")
    config = getattr(module, "config", None)
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    can_generate = bool(getattr(module, "can_generate", lambda: False)())
    if config is None or head is None or not can_generate or getattr(config, "is_encoder_decoder", False):
        raise ExportError(f"{type(module).__name__} is not a decoder-only causal LM with a language-model head",
                          "export a *ForCausalLM model (e.g. loaded with AutoModelForCausalLM)")
    return module


def _check_context(module: Any, max_context: int) -> int:
    """The layer count, after checking ``max_context`` against the model's positions."""
    config = module.config
    if not isinstance(max_context, int) or isinstance(max_context, bool) or max_context < 2:
        raise ConfigError(f"max context {max_context!r} is not an integer ≥ 2", "give --max-context N")
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_context > positions:
        raise ConfigError(f"max context {max_context} is above the model's {positions} positions",
                          f"give --max-context {positions} or less")
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise ExportError(f"{type(module).__name__}'s config has no layer count", "export a transformers causal LM")
    return layers


def _wrapper(module: Any, layers: int) -> Any:
    import torch
    from transformers import DynamicCache

    class KVCacheLM(torch.nn.Module):
        """Flat past key/values in, logits and flat present key/values out."""

        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: Any, *past: Any) -> tuple[Any, ...]:
            # Plain layers for every attention layer, sliding-window ones too: they keep every
            # position (the model's own mask applies the window), so each past grows by the
            # tokens fed, as the session feeds it, with no window-dependent cropping traced in.
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, past_key_values=cache, use_cache=True)
            flat = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    return KVCacheLM(module).eval()


def _past_shape(module: Any) -> tuple[int, int]:
    """``(kv_heads, head_dim)`` of the cache, from a dry run of the model (so every
    architecture's own naming of heads and head sizes is respected)."""
    import torch

    with torch.no_grad():
        out = module(input_ids=torch.zeros((1, 1), dtype=torch.long), use_cache=True)
    keys = out.past_key_values.layers[0].keys
    return int(keys.shape[1]), int(keys.shape[3])


def _export(module: Any, layers: int, max_context: int, workdir: Path) -> Any:
    import onnx
    import torch

    from edgeq.backends.onnx.lowering import OPSET

    heads, head_dim = _past_shape(module)
    wrapper = _wrapper(module, layers)
    names = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    ids = torch.ones((1, _TRACE_SEQ), dtype=torch.long)
    past = [torch.zeros((1, heads, _TRACE_PAST, head_dim)) for _ in names]
    seq = torch.export.Dim("seq", min=1, max=max_context)
    past_len = torch.export.Dim("past", min=0, max=max_context)
    shapes = ({1: seq}, tuple({2: past_len} for _ in names))
    tmp = workdir / "fp32-export.onnx"
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (ids, *past), str(tmp), dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
                input_names=["input_ids", *names], output_names=["logits", *[n.replace("past", "present") for n in names]],
                external_data=True, optimize=True, verbose=False,
            )
        proto = onnx.load(str(tmp))
    except Exception as exc:
        raise ExportError(f"torch.onnx.export cannot export {type(module).__name__} with a KV cache: {describe(exc.__cause__ or exc)}",
                          "re-run with --debug for details") from exc
    finally:
        for f in workdir.glob("fp32-export.onnx*"):
            f.unlink()
    # the dynamo exporter's value_info goes stale under the rewrites and breaks ORT's quantizers
    proto.graph.ClearField("value_info")
    return proto


def _untied_heads(module: Any, schemes: dict[str, Any]) -> set[str]:
    """Tied LM heads whose scheme differs from their table's or is an int scheme: they get
    a transposed copy of the table to quantize (as the encoder path does)."""
    from edgeq.planning.inventory import layer_inventory
    from edgeq.schemes import FP32

    heads = {x.fqn: x.tied for x in layer_inventory(module) if x.tied}
    return {h for h, table in heads.items()
            if schemes.get(h) != schemes.get(table) or schemes.get(h, FP32).is_quantized}


def _cache_layout(proto: Any, layers: int) -> tuple[int, int]:
    """``(kv_heads, head_dim)`` as the graph's first past input declares them."""
    inputs = {i.name: i for i in proto.graph.input}
    dims = inputs["past.0.key"].type.tensor_type.shape.dim
    heads, head_dim = dims[1].dim_value, dims[3].dim_value
    if len(dims) != 4 or heads < 1 or head_dim < 1 or f"past.{layers - 1}.value" not in inputs:
        raise ExportError("the exported graph's KV-cache inputs have an unexpected layout",
                          "re-run with --debug and report it")
    return heads, head_dim


def _save(proto: Any, out: Path) -> list[Path]:
    """Write ``proto``; weights beyond one protobuf's limit go to ``model.onnx.data``."""
    import onnx

    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    if size < _EXTERNAL_DATA_BYTES:
        onnx.save(proto, str(out))
        return []
    data = out.with_name(out.name + ".data")
    onnx.save(proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [data]


def _int8_activations(proto: Any) -> int:
    """Every 4-bit ``MatMulNBits`` computes with int8 dynamic activations (``accuracy_level=4``:
    the input rounded to int8 per row and block), as the 8-bit ones already do; returns how
    many were changed."""
    from onnx import helper

    changed = 0
    for n in proto.graph.node:
        if n.op_type != "MatMulNBits" or n.domain != "com.microsoft":
            continue
        attrs = {a.name: a for a in n.attribute}
        if attrs["bits"].i != 4:
            continue
        if "accuracy_level" in attrs:
            attrs["accuracy_level"].i = ACCURACY_INT8
        else:
            n.attribute.append(helper.make_attribute("accuracy_level", ACCURACY_INT8))
        changed += 1
    return changed


def _count(applied: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in applied.values():
        out[s] = out.get(s, 0) + 1
    return out
