"""Quantization of a decoder LLM for ExecuTorch / XNNPACK, with the combinations that
build a wrong or crashing ``.pte`` refused up front.

What ships:

- linears: int8 dynamic activations with int4 group-wise weights ("8da4w", scheme
  ``int4-gN``) or int8 per-channel weights ("8da8w", scheme ``int8``), through
  ``edgeq.backends.executorch.quant`` (torchao ``Int8DynamicActivationIntxWeightConfig``);
- embeddings: 4- or 8-bit weight-only tables (``embedding_4bit`` / ``embedding_byte``
  kernels from ``executorch.kernels.quantized``);
- the output head: its own entry in the plan (``lm_head``). A tied head shares the
  embedding's storage only while both stay float; once either is quantized the head gets
  its own copy, stored at the head's scheme, and the manifest says so.

Refused (``ConfigError``), because executorch 1.5.1 gets them wrong:

- weight-only int8/int4 linears lowered to XNNPACK: the delegated kernel drops the
  scales and computes wrong numbers (8da8w / 8da4w are correct);
- bf16 model weights with 8da4w: a linear XNNPACK does not take gets int8 weights with a
  bf16 input and the ``.pte`` aborts at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import ConfigError
from edgeq.schemes import FP16, FP32, Scheme

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class LMQuant:
    """How an LLM is stored: a scheme per layer (fqn of the Hugging Face model, as
    ``edgeq.planning.inventory.layer_inventory`` names them) and the model's float dtype.

    ``weight_only_linears`` asks for int linears without dynamic activation quantization;
    it exists so the request can be refused with a reason rather than silently changed."""

    schemes: dict[str, Scheme] = field(default_factory=dict)
    dtype: str = "float32"
    weight_only_linears: bool = False


def as_lm_quant(plan_or_quant: Any) -> LMQuant:
    """An ``LMQuant`` from an ``LMQuant``, an ``edgeq.planning.plan.QuantPlan`` or ``{fqn: scheme}``."""
    if isinstance(plan_or_quant, LMQuant):
        return plan_or_quant
    if plan_or_quant is None:
        return LMQuant()
    schemes = getattr(plan_or_quant, "schemes", plan_or_quant)
    if not isinstance(schemes, dict):
        raise ConfigError(f"cannot read a quantization plan from {type(plan_or_quant).__name__}",
                          "pass an edgeq.planning.plan.QuantPlan or {layer: scheme}")
    from edgeq.schemes import parse

    return LMQuant(schemes={str(k): parse(v, str(k)) for k, v in schemes.items()})


def check_lm_quant(quant: LMQuant, module: Any) -> None:
    """Refuse what would ship a wrong or crashing ``.pte`` (see the module docstring)."""
    from torch import nn

    if quant.dtype not in DTYPES:
        raise ConfigError(f"unknown LLM dtype '{quant.dtype}'", f"choose one of: {', '.join(DTYPES)}")
    modules = dict(module.named_modules())
    int_linears = sorted(f for f, s in quant.schemes.items()
                         if s.is_quantized and isinstance(modules.get(f), nn.Linear))
    if quant.weight_only_linears and int_linears:
        raise ConfigError(
            f"weight-only int linears ({int_linears[0]}{' and others' if len(int_linears) > 1 else ''}) compute "
            "wrong numbers on XNNPACK in executorch 1.5.1 (the delegate drops their scales)",
            "use dynamic int8 activations (8da8w: int8, 8da4w: int4-gN), which XNNPACK computes correctly")
    int4 = [f for f in int_linears if quant.schemes[f].bits == 4]
    if quant.dtype == "bfloat16" and int4:
        raise ConfigError(
            "bf16 weights with 8da4w linears build an ExecuTorch program that crashes at run time "
            "(an int8-weight linear gets a bf16 input)",
            "export 8da4w from float32 weights (the default)")
    if quant.dtype == "bfloat16" and int_linears:
        raise ConfigError("bf16 weights with int8 dynamic-activation linears are not supported by edgeq's "
                          "ExecuTorch LLM export", "export from float32 weights (the default)")
    unknown = sorted(set(quant.schemes) - set(modules))
    if unknown:
        raise ConfigError(f"the plan names layer '{unknown[0]}', which the model does not have",
                          "plan on this model's layers ('edgeq inspect' lists them)")


def quantize_lm(model: Any, quant: LMQuant, calibrated: dict[str, Any] | None = None,
                in_place: bool = False) -> tuple[Any, dict[str, str]]:
    """A quantized copy of the Hugging Face causal LM ``model`` (``in_place``: ``model``
    itself, quantized) and the scheme applied per layer (``calibrated``: the GPTQ results of
    its calibrated layers, written into 8da4w)."""
    import copy

    import torch

    from edgeq.backends.executorch.quant import quantized_module

    check_lm_quant(quant, model)
    if quant.dtype == "bfloat16":
        model = (model if in_place else copy.deepcopy(model)).to(torch.bfloat16)
        in_place = True
    active = {f: s for f, s in quant.schemes.items() if s != FP32}
    if any(s == FP16 for s in active.values()):
        raise ConfigError("fp16 layers in an LLM plan are not supported by edgeq's ExecuTorch LLM export",
                          "use fp32, int8 or int4-gN for LLM layers")
    if not active:
        return model, {f: s.name for f, s in quant.schemes.items()}
    qmodel = quantized_module(model, active, "xnnpack", calibrated=calibrated, in_place=in_place)
    return qmodel, {f: s.name for f, s in quant.schemes.items()}
