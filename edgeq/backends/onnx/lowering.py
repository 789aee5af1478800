"""ONNX backend: torch.onnx (dynamo) export, ONNX Runtime quantizers per layer, ORT run.

Schemes per layer (from the plan):

- int8 linear: ORT ``MatMulNBits`` 8-bit, symmetric blocks of 128 along K,
  ``accuracy_level=4`` (int8 compute on CPU); int8-g32: the same at blocks of 32 (more
  accurate, slower). int8@matmulinteger: ``quantize_dynamic``'s per-channel
  ``MatMulInteger`` (faster; loses more: uniform on MiniLM, cosine 0.9935 vs 0.998).
  int8@matmulinteger7: the same with ``reduce_range`` (weight codes in [-64, 64]), which an
  AVX2 host without VNNI computes exactly (8-bit codes saturate its int16 pair sums).
- int8 embedding / conv: ``quantize_dynamic`` (uint8 table + DequantizeLinear, ConvInteger).
  int8-g32 embedding: ``GatherBlockQuantized`` 8-bit, symmetric blocks of 32 along the row,
  stored as 8-bit ``MatMulNBits`` stores a weight (so a tied head can share it).
- int4-gN linear / embedding: ``MatMulNBits`` / ``GatherBlockQuantized`` 4-bit, blocks of N.
- int4-g32-asym linear: Q4_1's grid (a scale and an offset per block of 32) as a 4-bit
  ``MatMulNBits`` plus the input's block sums times the offsets (``blockquant.asym_blocks``).
- fp16 (whole model): ORT's float16 converter, inputs and outputs kept in their types;
  fp16 layers in a mixed plan: the same converter on those layers' nodes only (fp16
  weights, Casts at their edges; ORT's CPU EP computes them in fp32).

The manifest names the execution providers the target expects; here the artifact is
checked by running it on ONNX Runtime's CPU execution provider.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgeq.backends import Lowered
from edgeq.backends.onnx.graph import (
    called_layers,
    dedupe_nodes,
    fold_weight_transposes,
    gemm_to_matmul,
    layer_nodes,
    merge_equal_scalings,
    op_counts,
    reader_counts,
)
from edgeq.backends.onnx.blockquant import asym_blocks, block8_tables
from edgeq.backends.onnx.costs import EXECUTION_PROVIDERS as ONNX_EXECUTION_PROVIDERS
from edgeq.backends.onnx.calibrated import write_calibrated
from edgeq.backends.onnx.costs import INT8_BLOCK, MATMUL_INTEGER, MATMUL_INTEGER7
from edgeq.errors import ArtifactError, ExportError, describe
from edgeq.schemes import FP16, FP32, INT8, UNUSED, Scheme

OPSET = 21  # GatherBlockQuantized needs 21; exporting at 21 avoids an opset bump later


def lower(model: Any, target: Any, plan: Any, workdir: Path, steps: Any, strict: bool, profile: Any = None) -> Lowered:
    import onnx
    import onnxruntime as ort

    from edgeq.algorithms.calibrated import folded, for_plan
    from edgeq.backends.onnx import gptq_grid

    _check_providers(target, steps, strict)
    out = workdir / "model.onnx"
    # calibrated on the model as given; AWQ's input scales are folded into the exported copy
    every_calibrated, every_record = for_plan(model, plan.schemes, gptq_grid())
    model = folded(model, every_calibrated)
    with steps.step("Exporting with torch.onnx (dynamo)") as info:
        proto = _export(model, workdir)
        merge_equal_scalings(proto)  # smoothed q/k/v: one Div (and one DynamicQuantizeLinear) for the three
        info.detail = f"{len(proto.graph.node)} nodes"
    with steps.step("Quantizing with ONNX Runtime") as info:
        rewritten = gemm_to_matmul(proto)
        fold_weight_transposes(proto, _untied_heads(model, plan.schemes))
        nodes = layer_nodes(proto)
        called = called_layers(proto)
        proto, applied = _apply_plan(proto, plan.schemes, nodes, called)
        calibrated, algorithms = _calibrated(every_calibrated, every_record, plan.schemes, applied)
        write_calibrated(proto, nodes, calibrated)
        dedupe_nodes(proto)
        _strip_debug_metadata(proto)
        onnx.save(proto, str(out))
        info.detail = f"{len(rewritten)} Gemm→MatMul, " + ", ".join(f"{n} {s}" for s, n in _count(applied).items())
    check_loads(out, [], "model", steps)
    counts = op_counts(proto)
    providers = [ONNX_EXECUTION_PROVIDERS[d] for d in target.delegates]
    return Lowered(
        model_file=out,
        delegates_used=["cpu"],
        delegation={
            "expected_execution_providers": providers,
            "available_here": [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"],
            # ORT assigns nodes to providers when a session is created on the device; here
            # every node runs on the CPU execution provider.
            "delegated_ops": {"CPUExecutionProvider": sum(counts.values())},
            "portable_op_count": 0,
            "op_types": counts,
        },
        layer_schemes=applied,
        runtime=f"ONNX Runtime {ort.__version__} (CPUExecutionProvider)",
        algorithms=algorithms,
    )


def _calibrated(weights: dict[str, Any], record: dict[str, Any], schemes: dict[str, Scheme],
                applied: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The calibrated results of the layers the graph calls, and their manifest record."""
    used = {f for f, s in schemes.items() if applied.get(f) == s.name}
    return {f: q for f, q in weights.items() if f in used}, {f: r for f, r in record.items() if f in used}


def run(model_file: Path, inputs: list[tuple[Any, ...]], threads: int = 0) -> list[Any]:
    """Run ``model_file`` in ONNX Runtime on each input tuple; return the first output."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"ONNX Runtime cannot load {model_file}: {describe(exc, 200)}",
                            "the file is corrupt or not an ONNX model; re-run 'edgeq export'") from None
    names = [i.name for i in session.get_inputs()]
    outs = []
    for row in inputs:
        feeds = {n: np.asarray(t.numpy() if hasattr(t, "numpy") else t) for n, t in zip(names, row)}
        outs.append(session.run(None, feeds)[0])
    return outs


# ------------------------------------------------------------------------- internals


def _check_providers(target: Any, steps: Any, strict: bool) -> None:
    """Say which of the target's execution providers this host can verify with."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    missing = [d for d in target.delegates if ONNX_EXECUTION_PROVIDERS[d] not in available]
    if not missing:
        return
    names = ", ".join(ONNX_EXECUTION_PROVIDERS[d] for d in missing)
    if strict and target.delegates[-1] in missing:
        from edgeq.errors import BackendUnavailableError

        raise BackendUnavailableError(f"ONNX Runtime here has no {names}", "drop --strict to verify on the CPU provider")
    steps.note(
        f"{names} not in this ONNX Runtime build: the artifact is verified on CPUExecutionProvider; "
        f"on the device, ONNX Runtime assigns nodes to {' → '.join(ONNX_EXECUTION_PROVIDERS[d] for d in target.delegates)}"
    )


def _export(model: Any, workdir: Path) -> Any:
    import onnx
    import torch

    tmp = workdir / "fp32-export.onnx"
    try:
        with torch.no_grad():
            torch.onnx.export(
                model.module, model.example_inputs, str(tmp), dynamo=True, external_data=False, optimize=True,
                opset_version=OPSET, input_names=model.input_names, output_names=model.output_names,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export cannot export the model: {describe(exc)}",
            "make forward() free of data-dependent control flow, or re-run with --debug for details",
        ) from exc
    proto = onnx.load(str(tmp))
    tmp.unlink()
    proto.graph.ClearField("value_info")  # stale shapes break ORT's quantizers' shape inference
    return proto


def _untied_heads(model: Any, schemes: dict[str, Scheme]) -> set[str]:
    """Tied LM heads that get a weight of their own: those whose scheme differs from the
    table's or is an int scheme. (Sharing the table through its Transpose would run the
    head on the table's quantized values, or keep an fp32 original beside a 4-bit table.)
    A head at the table's float scheme keeps sharing it: one copy in the file."""
    from edgeq.planning.inventory import layer_inventory

    heads = {x.fqn: x.tied for x in layer_inventory(model.module) if x.tied}
    return {h for h, table in heads.items()
            if schemes.get(h) != schemes.get(table) or schemes.get(h, FP32).is_quantized}


def _apply_plan(proto: Any, schemes: dict[str, Scheme], nodes: dict[str, list[tuple[str, str]]],
                called: set[str] | None = None) -> tuple[Any, dict[str, str]]:
    """Quantize each layer's nodes as its scheme says; return the model and applied schemes
    (``called``: layers with any node, e.g. a tied head reading the table through a Transpose)."""
    called = set(nodes) | (called or set())
    wanted = set(schemes.values())
    if wanted == {FP16}:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
        return proto, {fqn: (FP16.name if fqn in called else UNUSED) for fqn in schemes}

    # A layer with no node in the graph was never called (the exporter drops it).
    applied = {fqn: (FP32.name if fqn in called else UNUSED) for fqn in schemes}
    by_pass: dict[tuple[int, int], list[str]] = {}
    dynamic: list[str] = []
    reduced: list[str] = []  # MatMuls at int8@matmulinteger7 (quantize_dynamic's reduce_range)
    half: list[str] = []
    tables: dict[int, list[str]] = {}  # block → Gather nodes whose table takes 8-bit blocks
    offsets: list[str] = []  # MatMuls at int4-g32-asym (Q4_1's grid: a scale and an offset a block)
    for fqn, scheme in schemes.items():
        for node, op in nodes.get(fqn, []):
            if scheme == FP16 and op in ("MatMul", "Gather", "Conv"):
                half.append(node)
            elif scheme.bits == 8 and scheme.kernel == MATMUL_INTEGER and op == "MatMul":
                dynamic.append(node)
            elif scheme.bits == 8 and scheme.kernel == MATMUL_INTEGER7 and op == "MatMul":
                reduced.append(node)
            elif scheme.bits == 8 and not scheme.kernel and op == "MatMul":
                by_pass.setdefault((8, scheme.group or INT8_BLOCK), []).append(node)
            elif scheme.bits == 8 and scheme.group and op == "Gather":
                tables.setdefault(scheme.group, []).append(node)
            elif scheme == INT8 and op in ("Gather", "Conv"):
                dynamic.append(node)
            elif scheme.bits == 4 and not scheme.symmetric and op == "MatMul":
                offsets.append(node)
            elif scheme.bits == 4 and op in ("MatMul", "Gather"):
                by_pass.setdefault((4, scheme.group), []).append(node)
            else:
                continue
            applied[fqn] = scheme.name
    for (bits, block), include in sorted(by_pass.items()):
        proto = _nbits(proto, include, bits, block)
    for block, include in sorted(tables.items()):
        block8_tables(proto, include, block)
    if offsets:
        asym_blocks(proto, offsets, 32)
    # Two passes of quantize_dynamic (reduce_range is one setting per pass). Each names what it
    # adds after the tensor it quantizes ("<x>_quantized"), so the 7-bit pass's names are made
    # its own: a Gather the other pass quantizes, whose output a 7-bit MatMul reads, would be
    # given the same name twice.
    if reduced:
        before = _value_names(proto)
        proto = _dynamic_int8(proto, reduced, ["MatMul"], reduce_range=True)
        _rename_new(proto, before, "rr")
    if dynamic:
        proto = _dynamic_int8(proto, dynamic, sorted({op for fqn in schemes for node, op in nodes.get(fqn, [])
                                                      if node in set(dynamic)}))
    if half:
        proto = _fp16_nodes(proto, half)
    return proto, applied


def _value_names(proto: Any) -> set[str]:
    graph = proto.graph
    return ({t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
            | {i.name for i in graph.input})


def _rename_new(proto: Any, before: set[str], tag: str) -> None:
    """Every tensor ``proto`` defines that was not in ``before`` gets ``.tag`` appended
    (initializers, node outputs and the inputs that read them); graph outputs keep theirs."""
    graph = proto.graph
    kept = before | {o.name for o in graph.output}
    new = {name: f"{name}.{tag}" for name in _value_names(proto) - kept}
    for t in graph.initializer:
        t.name = new.get(t.name, t.name)
    for node in graph.node:
        node.input[:] = [new.get(x, x) for x in node.input]
        node.output[:] = [new.get(x, x) for x in node.output]


def _fp16_nodes(proto: Any, include: list[str]) -> Any:
    """The ``include`` nodes (MatMul / Gather / Conv) in fp16: their float initializers stored
    as fp16 (a copy when other nodes share one), a Cast to fp16 on each float activation
    input and a Cast back to fp32 on the output, so the rest of the graph is unchanged."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    readers = reader_counts(proto.graph)
    keep = set(include)
    nodes = []
    for node in proto.graph.node:
        if node.name not in keep:
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if node.op_type == "Gather" and k == 1 or not name:
                continue  # indices
            if name in inits:
                if inits[name].data_type != TensorProto.FLOAT:
                    continue
                half = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16),
                                               f"{name}_fp16" if readers[name] > 1 else name)
                if readers[name] > 1:
                    proto.graph.initializer.append(half)
                else:
                    inits[name].CopyFrom(half)
                node.input[k] = half.name
            else:
                cast = helper.make_node("Cast", [name], [f"{node.name}_in{k}_fp16"], name=f"{node.name}_in{k}_to_fp16",
                                        to=TensorProto.FLOAT16)
                nodes.append(cast)
                node.input[k] = cast.output[0]
        out = node.output[0]
        node.output[0] = f"{out}_fp16"
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [node.output[0]], [out], name=f"{node.name}_out_to_fp32",
                                      to=TensorProto.FLOAT))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto


def _nbits(proto: Any, include: list[str], bits: int, block: int) -> Any:
    root = logging.getLogger()
    level = root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root.setLevel(level)  # importing the quantizer reconfigures the root logger
    ops = ("MatMul",) if bits == 8 else ("MatMul", "Gather")
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=bits == 8, accuracy_level=4 if bits == 8 else None, bits=bits,
        op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    every = {n.name for n in proto.graph.node if n.op_type in ops}
    quantizer = MatMulNBitsQuantizer(proto, algo_config=config, nodes_to_exclude=sorted(every - set(include)))
    quantizer.process()
    return quantizer.model.model


def _dynamic_int8(proto: Any, include: list[str], op_types: list[str], reduce_range: bool = False) -> Any:
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        proto.graph.ClearField("value_info")
        onnx.save(proto, str(src))
        # DefaultTensorType: ORT's shape inference leaves some exporter constants untyped (an
        # attention MatMul's 'val_N'), which the quantizer refuses to look past otherwise
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=op_types, nodes_to_quantize=include,
                         per_channel=True, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return onnx.load(str(dst))


def _strip_debug_metadata(proto: Any) -> None:
    """Drop the exporter's per-node debug metadata (stack traces with this machine's paths,
    class hierarchies, FX node text: ~2 KB a node, a quarter of a small model's file); the
    layer mapping has been read from it already, and runtimes never read it."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _count(applied: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in applied.values():
        out[s] = out.get(s, 0) + 1
    return out


def check_loads(model_file: Path, extra: list[Path], what: str, steps: Any) -> None:
    """The exported file loads in ONNX Runtime (else an ``ExportError``), shown as a step with
    its size (``extra``: external-data files beside it)."""
    import onnxruntime as ort

    with steps.step("Loading in ONNX Runtime") as info:
        try:
            ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"ONNX Runtime cannot load the exported {what}: {describe(exc, 200)}",
                              "re-run with --debug and report it") from exc
        info.detail = f"{sum(p.stat().st_size for p in [model_file, *extra]) / 1e6:.1f} MB"
