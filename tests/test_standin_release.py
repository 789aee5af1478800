"""A dropped stand-in or quantized copy is freed at once, without Python's cycle collector.

Rotation's measurement builds a stand-in of every quantized layer of the model (a 1B
model's are 5 GB) and the scale search one per candidate; tensor-heavy work allocates few
Python objects, so the cycle collector may not run for whole phases. A reference cycle
through a stand-in (torchao's ``quantize_`` binds an ``extra_repr`` to the module it
quantizes; a class made per call that closes over the module) kept them all alive.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from edgeq.backends import get_backend
from edgeq.errors import ConfigError
from edgeq.schemes import INT8, Scheme

SCHEMES = [INT8, Scheme("int", 4, 32), Scheme("int", 4, 128), Scheme("int", 4, 32, symmetric=False),
           Scheme("float", 16)]


def _layers():
    torch.manual_seed(0)
    return [torch.nn.Linear(256, 128), torch.nn.Embedding(300, 128)]


def _alive_after_drop(make):
    """Modules of ``make()``'s result still alive once it is dropped, with the collector off."""
    gc.collect()
    gc.disable()
    try:
        out = make()
        refs = [weakref.ref(m) for m in out.modules()]
        del out
        return [type(r()).__name__ for r in refs if r() is not None]
    finally:
        gc.enable()


@pytest.mark.parametrize("fmt", ["executorch", "onnx", "gguf"])
def test_a_dropped_stand_in_is_freed_without_the_cycle_collector(fmt):
    be = get_backend(fmt)
    be.stand_in(torch.nn.Linear(64, 32), INT8)  # first use imports torchao (its import leaves a cycle once)
    made = 0
    for scheme in SCHEMES:
        for layer in _layers():
            for numerics in (be.lm_numerics, None):
                def make():
                    if numerics is None:
                        return be.stand_in(layer, scheme)
                    with numerics():
                        return be.stand_in(layer, scheme)
                try:
                    alive = _alive_after_drop(make)
                except (ValueError, ConfigError):  # a scheme this format has no layout for
                    continue
                made += 1
                assert alive == [], f"{fmt} {scheme.name} {type(layer).__name__}: {alive} kept alive"
    assert made >= 14  # each format takes most of these (the test is not void)


def test_a_dropped_quantized_copy_is_freed_without_the_cycle_collector():
    from edgeq.backends.executorch.quant import quantized_module

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    plan = {"0": INT8, "1": Scheme("int", 4, 32), "2": Scheme("int", 4, 32, symmetric=False)}
    quantized_module(torch.nn.Linear(64, 32), {"": INT8}, "xnnpack")  # the import's one cycle, as above
    assert _alive_after_drop(lambda: quantized_module(model, plan, "xnnpack")) == []


def _held_bytes(module) -> int:
    """Bytes of every tensor ``module`` holds (a torchao weight: its integers, scales, zeros)."""
    total = 0
    for p in list(module.parameters()) + list(module.buffers()):
        inner = [getattr(p, n) for n in p.__tensor_flatten__()[0]] if hasattr(p, "__tensor_flatten__") else [p]
        total += sum(t.untyped_storage().nbytes() for t in inner)
    return total


@pytest.mark.parametrize("scheme", ["int8", "int4-g32", "int4-g128"])
def test_an_executorch_linear_stand_in_holds_about_a_byte_a_weight(scheme):
    """Rotation's measurement holds a stand-in of every quantized layer at once (a 1B model's
    in fp32 are 5 GB): the ExecuTorch stand-in keeps torchao's integers and dequantizes at each
    call, to exactly the weight a dequantized copy would hold."""
    from edgeq.backends.executorch.numerics import stand_in
    from edgeq.backends.standins import dequantized_weight
    from edgeq.schemes import parse

    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 256)
    q = stand_in(layer, parse(scheme))
    assert _held_bytes(q) < 1.2 * layer.weight.numel() + 4 * 256 * (512 // 32 + 1)  # int8 + a scale a group
    assert _held_bytes(layer) > 4 * layer.weight.numel()  # the fp32 layer, measured the same way
    x = torch.randn(3, 512)
    w = dequantized_weight(q)
    assert w.dtype == torch.float32 and w.shape == layer.weight.shape
    assert not torch.equal(w, layer.weight)  # really quantized
    # the stand-in's input rounding, then the linear of the dequantized weight
    assert torch.equal(q(x), torch.nn.functional.linear(_round_like(q, x), w, layer.bias))


def _round_like(stand_in, x):
    """The stand-in's input as its linear sees it (XNNPACK's per-token int8 rounding)."""
    seen = []
    handle = stand_in.inner.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        stand_in(x)
    handle.remove()
    return seen[0]
