"""ExecuTorch backend: quantize (torchao / PT2E), capture, lower with the target's
delegate chain, serialize a .pte, and run it with the ExecuTorch pybindings.

The delegate chain is tried in order: each delegate that can lower here gets a
partitioner, in chain order, so the first one takes the ops it supports and the next
takes what is left; whatever no delegate takes runs on ExecuTorch's portable CPU
kernels. A delegate that cannot lower here (QNN without Qualcomm's SDK, Core ML
without coremltools) is skipped with a note, or is an error under ``--strict``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from edgeq.backends import Lowered, silence_native_stderr
from edgeq.backends.executorch.delegates import BACKEND_IDS, availability, partitioner
from edgeq.backends.executorch.quant import conv_layers, quantize_convs, quantized_module
from edgeq.models.capture import capture
from edgeq.planning.graphfacts import folded_layers, unused_layers
from edgeq.errors import ArtifactError, BackendUnavailableError, ExportError, describe
from edgeq.schemes import FP16, FP32, UNUSED, Scheme


def lower(model: Any, target: Any, plan: Any, workdir: Path, steps: Any, strict: bool, profile: Any = None) -> Lowered:
    precision = _uniform(plan.schemes)
    chain = _usable_chain(target, precision, steps, strict)
    primary = chain[0]
    with steps.step(f"Quantizing ({precision})") as info:
        from edgeq.algorithms.calibrated import folded, for_plan
        from edgeq.backends.executorch import gptq_grid

        calibrated, algorithms = for_plan(model, plan.schemes, gptq_grid())
        model = folded(model, calibrated)  # AWQ layers' input scales into the linears before them
        qmodule = quantized_module(model.module, plan.schemes, primary, calibrated=calibrated)
        convs = conv_layers(plan.schemes, model.module)
        info.detail = ", ".join(f"{n} {s.name}" for s, n in Counter(plan.schemes.values()).items()) or "no quantizable layers"
    with steps.step("Capturing with torch.export") as info:
        program, unused = _capture(qmodule, model, convs)
        info.detail = f"{sum(1 for n in program.graph.nodes if n.op == 'call_function')} ops"
    soc = _soc(profile)
    out = workdir / "model.pte"
    with steps.step(f"Lowering to {' → '.join(chain)}") as info:
        manager, summary = _lower(program, [partitioner(d, precision, soc) for d in chain], out)
        info.detail = _describe(summary)
    used = [d for d in chain if summary["delegated_ops"].get(d)]
    schemes = {fqn: (UNUSED if fqn in unused else s.name) for fqn, s in plan.schemes.items()}
    runnable = all(availability(d).can_run_here for d in used)
    lowered = Lowered(
        model_file=out,
        delegates_used=used,
        delegation=summary,
        layer_schemes=schemes,
        algorithms={f: a for f, a in algorithms.items() if schemes.get(f) != UNUSED},
        runtime=f"ExecuTorch {_version()} pybindings ({', '.join(used) or 'portable'})",
        runnable_here=runnable,
        planned_activation_bytes=_arena_bytes(manager),
        # constant-only lookups ExecuTorch stores as their fp32 results, whatever the scheme;
        # read from the fp32 module: in the quantized program every weight's dequantize is
        # constant-only, so it would call every layer folded
        folded_layers=folded_layers(capture(model.module, model.example_inputs), list(plan.schemes)),
    )
    _write_ops(manager, workdir, lowered, steps)
    if not runnable:
        blockers = [d for d in used if not availability(d).can_run_here]
        lowered.not_runnable_reason = "; ".join(f"{d}: {availability(d).reason}" for d in blockers)
        with steps.step("Lowering an XNNPACK reference for verification") as info:
            ref = workdir / "reference-xnnpack.pte"
            ref_module = quantized_module(model.module, plan.schemes, primary, xnnpack_reference=True,
                                          calibrated=calibrated)
            ref_program, _ = _capture(ref_module, model, convs)
            _lower(ref_program, [partitioner("xnnpack", precision)], ref)
            lowered.reference_file = ref
            lowered.reference_runtime = (
                f"ExecuTorch {_version()} pybindings, XNNPACK reference lowering of the same quantized program "
                f"(not {', '.join(blockers)})"
            )
            info.detail = f"{ref.stat().st_size / 1e6:.1f} MB"
    return lowered


def run(model_file: Path, inputs: list[tuple[Any, ...]], threads: int = 0) -> list[Any]:
    """Run ``model_file`` in the ExecuTorch pybindings on each input tuple (none: load it only)."""
    import executorch.kernels.quantized  # noqa: F401  registers quantized embedding kernels
    from executorch.runtime import Runtime

    from edgeq.backends.executorch.llm import import_custom_ops

    import_custom_ops()  # an LLM program calls ExecuTorch's LLM kernels (llama.custom_sdpa, llama.update_cache)

    runtime = Runtime.get()
    try:
        with silence_native_stderr():
            program = runtime.load_program(str(model_file))
            method = program.load_method("forward")
    except Exception as exc:
        raise ArtifactError(
            f"ExecuTorch cannot load {model_file} ({describe(exc, 160)})",
            "the file is corrupt, not a .pte, or needs a delegate this runtime lacks; re-run 'edgeq export'",
        ) from None
    outs = []
    with silence_native_stderr():
        for row in inputs:
            result = method.execute(list(row))
            outs.append(result[0].float().numpy().copy())
    return outs


# ------------------------------------------------------------------------- internals


def _uniform(schemes: dict[str, Scheme]) -> str:
    """The precision family that decides the delegates' configuration: the lowest one planned."""
    values = set(schemes.values()) - {FP32}
    if not values:
        return "fp32"
    if values == {FP16}:
        return "fp16"
    return "int4" if any(v.bits == 4 for v in values) else "int8"


def _usable_chain(target: Any, precision: str, steps: Any, strict: bool) -> list[str]:
    chain = []
    for delegate in target.delegates:
        avail = availability(delegate)
        reason = avail.reason
        if delegate == "qnn" and avail.can_lower and precision in ("int8", "int4"):
            avail, reason = None, "edgeq lowers QNN at fp16 only; QNN int8/int4 needs Qualcomm's calibrated quantizer"
        if avail is not None and avail.can_lower:
            chain.append(delegate)
            continue
        rest = [d for d in target.delegates if d != delegate and availability(d).can_lower]
        if strict or not rest:
            raise BackendUnavailableError(
                f"delegate {delegate} cannot be used: {reason}",
                "drop --strict to use the target's fallback" if strict and rest else "install what the delegate needs, or pick another target",
            )
        steps.note(f"{delegate} skipped: {reason}; ops go to {' → '.join(d for d in target.delegates if d != delegate)}")
    return chain


def _capture(qmodule: Any, model: Any, convs: list[str]) -> tuple[Any, set[str]]:
    """The captured program and the layers it never uses."""
    import torch

    program = capture(qmodule, model.example_inputs)
    program.graph.eliminate_dead_code()  # e.g. a pooler whose output the wrapper drops
    unused = unused_layers(program)
    if convs:
        with torch.no_grad():
            converted = quantize_convs(program, convs, model.make_inputs("calib", 16))
        program = capture(converted, model.example_inputs, "the conv-quantized model")
    return program, unused


def _lower(program: Any, partitioners: list[Any], out: Path) -> tuple[Any, dict[str, Any]]:
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(program, partitioner=partitioners)
        summary = _delegation_summary(edge.exported_program().graph_module)  # before to_executorch mutates it
        manager = edge.to_executorch(
            ExecutorchBackendConfig(extract_delegate_segments=True, do_quant_fusion_and_const_prop=True)
        )
        # Portable ops are read from the final program: quant fusion rewrites them there.
        portable = _portable_ops(manager.exported_program().graph_module)
        summary["portable_op_count"], summary["portable_ops"] = sum(portable.values()), dict(portable.most_common())
    except Exception as exc:
        raise ExportError(f"ExecuTorch lowering failed: {describe(exc)}",
                          "try another --precision or target, or re-run with --debug for details") from exc
    with out.open("wb") as f:
        manager.write_to_file(f)
    return manager, summary


_NAME_OF = {v: k for k, v in BACKEND_IDS.items()}


def _write_ops(manager: Any, workdir: Path, lowered: Lowered, steps: Any) -> None:
    """``ops.json``: every op with its shapes and delegate (delegated subgraphs are opaque
    in the .pte), for emulated profiling."""
    import json

    from edgeq.backends.executorch.ops import OPS_FILE, executorch_ops

    try:
        data = executorch_ops(manager.exported_program())
    except Exception as exc:  # noqa: BLE001 - the artifact is still good; only emulation needs this file
        steps.note(f"{OPS_FILE} not written ({type(exc).__name__}: {exc}); emulated profiling will not work "
                   "on this artifact")
        return
    path = workdir / OPS_FILE
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    lowered.extra_files.append(path)


def _delegation_summary(gm: Any) -> dict[str, Any]:
    """Ops per delegate (from each lowered module's original graph) and portable ops."""
    delegated: dict[str, int] = {}
    by_delegate: dict[str, Counter] = {}
    subgraphs: Counter = Counter()
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            lowered = modules.get(node.args[0].target) or getattr(gm, node.args[0].target)
            backend = _NAME_OF.get(lowered.backend_id, lowered.backend_id)
            ops = Counter(_op_name(n.target) for n in lowered.original_module.graph.nodes if n.op == "call_function")
            delegated[backend] = delegated.get(backend, 0) + sum(ops.values())
            by_delegate.setdefault(backend, Counter()).update(ops)
            subgraphs[backend] += 1
    return {
        "delegated_ops": delegated,
        "delegated_subgraphs": dict(subgraphs),
        "delegated_op_types": {d: dict(c.most_common()) for d, c in by_delegate.items()},
    }


def _portable_ops(gm: Any) -> Counter:
    ops: Counter = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") not in (
            "alloc", "getitem", "executorch_call_delegate",
        ):
            ops[_op_name(node.target)] += 1
    return ops


def _op_name(target: Any) -> str:
    """``aten::mean.out`` / ``quantized_decomposed::embedding_byte.out`` → ``aten.mean`` …"""
    name = getattr(target, "_name", None) or getattr(target, "__name__", None) or str(target)
    name = name.replace("::", ".")
    return re.sub(r"\.(out|default|Tensor_out|int_out)$", "", name)


def _describe(summary: dict[str, Any]) -> str:
    parts = [f"{d}: {n} ops" for d, n in summary["delegated_ops"].items()]
    parts.append(f"portable: {summary['portable_op_count']} ops")
    return ", ".join(parts)


def _arena_bytes(manager: Any) -> int:
    plan = manager.executorch_program.execution_plan[0]
    return int(sum(plan.non_const_buffer_sizes[1:]))


def _soc(profile: Any) -> str | None:
    if profile is None:
        return None
    found = re.search(r"SM\d{4}", profile.display_name)
    return found.group(0) if found else None


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")
