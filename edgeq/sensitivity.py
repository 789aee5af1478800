"""Per-layer sensitivity: model-level output error when only one layer is quantized.

For every quantizable layer and every scheme it can take, the layer alone is quantized
with the numerics of the target's backend (for ExecuTorch the same torchao configs it
lowers, run in eager PyTorch; for ONNX the block layouts and rounding of ONNX Runtime's
quantizers, written out in torch), the model is run on calibration inputs, and its
output is compared with FP32: mean
``1 − cosine`` for embeddings, mean KL(FP32 ‖ quantized) of the softmax for logits.
``proxy="sqnr"`` instead scores the weight alone (quantization noise power relative to
the weight's), which needs no forward passes.

Results are cached on disk keyed by the model's weights, the calibration inputs, the
schemes, the metric and edgeq's version, so a second ``plan`` is fast.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from edgeq import __version__
from edgeq.errors import ConfigError


def cache_dir() -> Path:
    root = os.environ.get("EDGEQ_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeq"
    )
    return Path(root) / "sensitivity"


def measure(
    module: Any,
    layers: list[Any],
    schemes: dict[str, list[str]],
    calib: list[tuple[Any, ...]],
    metric: str,
    *,
    proxy: str | None = None,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    fmt: str = "executorch",
) -> dict[str, dict[str, float]]:
    """``{layer fqn: {scheme: error}}`` for the given candidate ``schemes`` per layer, with
    the numerics of ``fmt``'s backend (``quantized_layer`` / ``onnx_quantized_layer``)."""
    import torch

    key = cache_key(module, calib, schemes, metric, proxy, fmt)
    stand_in = onnx_quantized_layer if fmt == "onnx" else quantized_layer
    path = cache_dir() / f"{key}.json"
    if use_cache and path.exists():
        return _read_cache(path)
    if proxy == "sqnr":
        result = _sqnr(module, schemes, stand_in)
    else:
        batch = _batch(calib)
        with torch.no_grad():
            reference = _output(module, batch)
            result = {}
            total = sum(len(v) for v in schemes.values())
            done = 0
            modules = dict(module.named_modules())
            for fqn, candidates in schemes.items():
                result[fqn] = {}
                for scheme in candidates:
                    if scheme == "fp32":
                        result[fqn][scheme] = 0.0
                    else:
                        with _swapped(module, fqn, stand_in(modules[fqn], scheme)):
                            result[fqn][scheme] = _error(reference, _output(module, batch), metric)
                    done += 1
                    if progress:
                        progress(done, total)
    if use_cache:
        from edgeq.yamlio import write_text_atomic

        write_text_atomic(path, json.dumps(result, indent=1, sort_keys=True))
    return result


def onnx_quantized_layer(layer: Any, scheme: str) -> Any:
    """A stand-in for one layer with the numerics edgeq's ONNX backend gives it:

    - int8 linear: 8-bit MatMulNBits, symmetric blocks of 128 along K (zero-padded; the
      block's extreme maps to -128), and ``accuracy_level=4``: the input is rounded to
      int8 per row and block of 128 as MLAS does;
    - int4-gN linear / embedding: MatMulNBits / GatherBlockQuantized, asymmetric per
      group of N along the reduction dim, the range stretched to include 0 (MLAS's RTN);
    - int8 embedding: ``quantize_dynamic``'s Gather, the table as uint8 with one scale and
      zero point;
    - int8 conv: ConvInteger, symmetric int8 weights with one scale (absmax / 127), the
      input rounded to uint8 with one dynamic scale and zero point;
    - fp16: as ``quantized_layer``.
    """
    import torch

    if scheme == "fp16":
        return quantized_layer(layer, scheme)
    q = copy.deepcopy(layer)
    w = q.weight.detach().float()
    if isinstance(q, torch.nn.Conv1d | torch.nn.Conv2d):
        q.weight = torch.nn.Parameter(_symmetric(w.reshape(1, -1), w.numel()).view_as(w), requires_grad=False)
        q.register_forward_pre_hook(lambda _m, args: (_uint8_tensor(args[0]),) + tuple(args[1:]))
        return q
    if scheme == "int8" and isinstance(q, torch.nn.Embedding):
        q.weight = torch.nn.Parameter(_uint8_tensor(w), requires_grad=False)
        return q
    if scheme == "int8":
        q.weight = torch.nn.Parameter(_mlas_symmetric8(w, 128), requires_grad=False)
        q.register_forward_pre_hook(lambda _m, args: (_symmetric(args[0], 128),) + tuple(args[1:]))
        return q
    q.weight = torch.nn.Parameter(_asymmetric4(w, int(scheme.removeprefix("int4-g"))), requires_grad=False)
    return q


def _symmetric(x: Any, block: int) -> Any:
    """Round ``x`` (…, K) to int8 with one absmax scale per ``block`` along the last dim."""
    import torch

    k = x.shape[-1]
    pad = (-k) % block
    xb = torch.nn.functional.pad(x, (0, pad)).unflatten(-1, (-1, block))
    scale = (xb.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
    return ((xb / scale).round().clamp(-127, 127) * scale).flatten(-2)[..., :k]


def _mlas_symmetric8(w: Any, block: int) -> Any:
    """MLAS's symmetric 8-bit blocks: the block's largest-magnitude value m maps exactly to
    -128 (scale = -m / 128), the rest round to [-128, 127]; K zero-padded to whole blocks."""
    import torch

    k = w.shape[-1]
    wb = torch.nn.functional.pad(w, (0, (-k) % block)).unflatten(-1, (-1, block))
    idx = wb.abs().argmax(-1, keepdim=True)
    m = wb.gather(-1, idx)
    scale = torch.where(m == 0, torch.ones_like(m), -m / 128)
    return ((wb / scale).round().clamp(-128, 127) * scale).flatten(-2)[..., :k]


def _asymmetric4(w: Any, group: int) -> Any:
    wb = w.unflatten(-1, (-1, group))
    lo, hi = wb.amin(-1, keepdim=True).clamp(max=0), wb.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    zero = (-lo / scale).round().clamp(0, 15)
    return (((wb / scale).round() + zero).clamp(0, 15) - zero).mul(scale).flatten(-2)


def _uint8_tensor(x: Any) -> Any:
    lo, hi = x.amin().clamp(max=0), x.amax().clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-12)
    zero = (-lo / scale).round()
    return (((x / scale).round() + zero).clamp(0, 255) - zero) * scale


def quantized_layer(layer: Any, scheme: str) -> Any:
    """A stand-in for one layer with the numerics the ExecuTorch backend gives it.

    Weights are quantized with the same torchao configs and stored dequantized, so the
    forward is a plain fp32 op (torchao's eager subclass dispatch is ~5× slower); linears
    also round their input per token to int8, as XNNPACK's dynamic quantization does.
    """
    import torch
    from torchao.quantization import quantize_

    from edgeq.backends.et_quant import torchao_config

    q = copy.deepcopy(layer)
    if scheme == "fp16":
        q.weight = torch.nn.Parameter(q.weight.detach().half().float(), requires_grad=False)
        if getattr(q, "bias", None) is not None:
            q.bias = torch.nn.Parameter(q.bias.detach().half().float(), requires_grad=False)
        return _Fp16Edges(q)
    if isinstance(q, torch.nn.Embedding):
        quantize_(q, torchao_config(scheme, True), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Embedding))
        q.weight = torch.nn.Parameter(_dequantized_weight(q), requires_grad=False)
        return q
    if isinstance(q, torch.nn.Linear):
        quantize_(q, torchao_config(scheme, True))
        q.weight = torch.nn.Parameter(_dequantized_weight(q), requires_grad=False)
        return _DynamicInt8Input(q)
    # conv: static int8 per-channel weights (activation scales are calibrated; not simulated)
    w = q.weight.detach()
    scale = w.abs().flatten(1).amax(1).clamp(min=1e-12) / 127
    shape = (-1,) + (1,) * (w.dim() - 1)
    q.weight = torch.nn.Parameter((w / scale.view(shape)).round().clamp(-127, 127) * scale.view(shape))
    return q


def _DynamicInt8Input(linear: Any) -> Any:
    import torch

    class DynamicInt8Input(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
            hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
            scale = ((hi - lo) / 255).clamp(min=1e-12)
            zero = (-128 - lo / scale).round()
            xq = ((x / scale).round() + zero).clamp(-128, 127)
            return self.inner((xq - zero) * scale)

    return DynamicInt8Input(linear)


def _Fp16Edges(layer: Any) -> Any:
    """Round the layer's float inputs and its output to fp16, as an fp16 layer sees them
    (hooks, so the module keeps its type and attributes: a ViT reads its patch conv's weight)."""
    layer.register_forward_pre_hook(
        lambda _m, args: tuple(a.half().float() if a.is_floating_point() else a for a in args))
    layer.register_forward_hook(lambda _m, _args, out: out.half().float())
    return layer


class _swapped:
    def __init__(self, root: Any, fqn: str, replacement: Any) -> None:
        self.root, self.fqn, self.new = root, fqn, replacement

    def __enter__(self) -> None:
        self.old = self.root.get_submodule(self.fqn)
        self.root.set_submodule(self.fqn, self.new)

    def __exit__(self, *exc: Any) -> None:
        self.root.set_submodule(self.fqn, self.old)


def _batch(calib: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Stack calibration rows into one batch; trim right padding of text inputs."""
    import torch

    cols = [torch.cat([row[i] for row in calib], dim=0) for i in range(len(calib[0]))]
    if len(cols) == 2 and cols[1].dtype in (torch.int64, torch.int32) and cols[1].dim() == 2:
        length = int(cols[1].sum(dim=1).max())  # attention_mask: keep only real tokens
        if torch.all(cols[1][:, :length].sum(dim=1) == cols[1].sum(dim=1)):
            cols = [c[:, :length] for c in cols]
    return tuple(cols)


def _output(module: Any, batch: tuple[Any, ...]) -> Any:
    out = module(*batch)
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


def _error(reference: Any, actual: Any, metric: str) -> float:
    import torch

    if metric == "cosine":
        ref, act = reference.flatten(1), actual.flatten(1)
        return float((1 - torch.nn.functional.cosine_similarity(ref, act, dim=1)).mean())
    logp = torch.log_softmax(reference, dim=-1)
    logq = torch.log_softmax(actual, dim=-1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def _sqnr(module: Any, schemes: dict[str, list[str]], stand_in: Callable[[Any, str], Any]) -> dict[str, dict[str, float]]:
    """Weight-only proxy: noise-to-signal power ratio of the dequantized weight."""
    modules = dict(module.named_modules())
    out: dict[str, dict[str, float]] = {}
    for fqn, candidates in schemes.items():
        w = modules[fqn].weight.detach().float()
        out[fqn] = {}
        for scheme in candidates:
            if scheme == "fp32":
                out[fqn][scheme] = 0.0
                continue
            deq = _dequantized_weight(stand_in(modules[fqn], scheme))
            noise = float(((deq - w) ** 2).sum())
            out[fqn][scheme] = noise / max(float((w**2).sum()), 1e-30) * (w.numel() / 1e6)
    return out


def _dequantized_weight(layer: Any) -> Any:
    while hasattr(layer, "inner"):  # the stand-ins' input/output wrappers
        layer = layer.inner
    w = layer.weight
    return (w.dequantize() if hasattr(w, "dequantize") else w).detach().float()


def cache_key(module: Any, calib: list, schemes: dict[str, list[str]], metric: str, proxy: str | None,
              fmt: str = "executorch") -> str:
    import torch

    h = hashlib.sha256()
    h.update(f"{__version__}|{metric}|{proxy}|{fmt}|{json.dumps(schemes, sort_keys=True)}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        if torch.is_tensor(t):
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    for row in calib:
        for t in row:
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _read_cache(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(path.read_text())
        if not all(isinstance(v, dict) and all(isinstance(e, (int, float)) for e in v.values()) for v in data.values()):
            raise ValueError("unexpected structure")
        return data
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"sensitivity cache {path} is corrupt ({exc})", f"delete it (or the folder {path.parent}) and re-run"
        ) from None
