"""Per-layer sensitivity: model-level output error when only one layer is quantized.

For every quantizable layer and every scheme it can take, the layer alone is replaced by
its backend's stand-in (``edgeq.backends.<format>.numerics``: the numerics the runtime
gives that layer, in eager PyTorch), the model is run on calibration inputs, and its
output is compared with FP32: mean
``1 − cosine`` for embeddings, mean KL(FP32 ‖ quantized) of the softmax for logits.
``proxy="sqnr"`` instead scores the weight alone (quantization noise power relative to
the weight's), which needs no forward passes. A calibrated scheme (``int4-gN-gptq``) is
stood in with the algorithm's result for that layer (``edgeq.algorithms.calibrated``),
never with RTN's, so its error is the error of what the lowering writes.

Results are cached on disk, one file per (model weights, calibration inputs, metric,
format, edgeq's version) holding every (layer, scheme) measured on them, so a second
``plan`` is fast and a plan with other candidates measures only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from edgeq import __version__
from edgeq.backends.standins import dequantized_weight
from edgeq.errors import ConfigError
from edgeq.schemes import FP32, Scheme


def cache_dir() -> Path:
    root = os.environ.get("EDGEQ_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeq"
    )
    return Path(root) / "sensitivity"


def measure(
    module: Any,
    layers: list[Any],
    schemes: dict[str, list[Scheme]],
    calib: list[tuple[Any, ...]],
    metric: str,
    *,
    proxy: str | None = None,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    fmt: str,
    calibrated: dict[tuple[str, str], Any] | None = None,
    calibration_key: str = "",
    input_scales: Any = None,
    batchable: bool = True,
) -> dict[str, dict[str, float]]:
    """``{layer fqn: {scheme name: error}}`` for the given candidate ``schemes`` per layer,
    with the numerics of ``fmt``'s backend (its ``stand_in``). A calibrated scheme (GPTQ) is
    measured on its result: ``calibrated[(fqn, scheme name)]`` (``edgeq.algorithms``),
    computed on the data ``calibration_key`` names (part of the cache key). ``input_scales``
    (``edgeq.algorithms.smooth_encoder.EncoderScales``): a linear at a scheme it has a scale for is
    measured scaled, as the lowering ships it (its entry keyed by the scales' digest).
    ``batchable``: whether ``module`` takes the calibration rows stacked into one batch
    (``LoadedModel.batchable``); if not, each row runs alone."""
    import torch

    from edgeq.backends import get_backend

    # One cache file per (model, data, metric, numerics) holds every (layer, scheme) measured
    # on them: a layer's error does not depend on the other candidates, so a plan with fewer
    # (or more) candidates reuses what an earlier one measured and measures only the rest.
    # Calibrated schemes' entries are named by their results' key (calibration data, revisions).
    key = cache_key(module, calib, {}, metric, proxy, fmt)
    tag = hashlib.sha256(calibration_key.encode()).hexdigest()[:16]
    base_stand_in = get_backend(fmt).stand_in
    found = calibrated or {}

    scaled = input_scales.scales if input_scales is not None and proxy != "sqnr" else {}

    def entry(fqn: str, scheme: Scheme) -> str:
        if (fqn, scheme.name) in scaled:
            return f"{scheme.name}~{input_scales.digest}"
        return scheme.name if scheme.algorithm == "rtn" else f"{scheme.name}@{tag}"

    def stand_in(layer: Any, scheme: Scheme, fqn: str) -> Any:
        if (fqn, scheme.name) in scaled:
            from edgeq.algorithms.smooth_encoder import scaled_stand_in

            return scaled_stand_in(base_stand_in, layer, scheme, scaled[(fqn, scheme.name)][2])
        if scheme.algorithm == "rtn":
            return base_stand_in(layer, scheme)
        return base_stand_in(layer, scheme, found[(fqn, scheme.name)])
    path = cache_dir() / f"{key}.json"
    known = _read_cache(path) if use_cache and path.exists() else {}
    todo = {fqn: [s for s in ss if entry(fqn, s) not in known.get(fqn, {})] for fqn, ss in schemes.items()}
    todo = {fqn: ss for fqn, ss in todo.items() if ss}
    if not todo:
        pass
    elif proxy == "sqnr":
        measured = _sqnr(module, todo, stand_in)
    else:
        from edgeq.planning.prefix import Prefix

        # one forward over the stacked batch; a program traced at a fixed batch (a .pt2 whose
        # guard checks it) takes its rows one at a time, each error the mean over the rows
        batches = [_batch(calib)] if batchable else [_batch([row]) for row in calib]
        measured = {fqn: {} for fqn in todo}
        total = sum(len(v) for v in todo.values()) * len(batches)
        done = 0
        modules = dict(module.named_modules())
        with torch.no_grad():
            for batch in batches:
                # the modules that run before a swapped layer compute what they computed in the
                # fp32 run: their outputs are kept once and reused (edgeq.planning.prefix)
                prefix = Prefix(module, batch, list(todo), _output)
                reference = prefix.reference
                for fqn, candidates in todo.items():
                    for scheme in candidates:
                        if scheme == FP32:
                            error = 0.0
                        else:
                            with _swapped(module, fqn, stand_in(modules[fqn], scheme, fqn)), prefix.skipping(fqn):
                                error = _error(reference, _output(module, batch), metric)
                        measured[fqn][scheme.name] = measured[fqn].get(scheme.name, 0.0) + error / len(batches)
                        done += 1
                        if progress:
                            progress(done, total)
                del prefix
    for fqn, ss in todo.items():
        known.setdefault(fqn, {}).update({entry(fqn, s): measured[fqn][s.name] for s in ss})
    if use_cache and todo:
        from edgeq.atomic import write_text_atomic

        write_text_atomic(path, json.dumps(known, indent=1, sort_keys=True))
    return {fqn: {s.name: known[fqn][entry(fqn, s)] for s in ss} for fqn, ss in schemes.items()}


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


def _sqnr(module: Any, schemes: dict[str, list[Scheme]],
          stand_in: Callable[[Any, Scheme, str], Any]) -> dict[str, dict[str, float]]:
    """Weight-only proxy: noise-to-signal power ratio of the dequantized weight."""
    modules = dict(module.named_modules())
    out: dict[str, dict[str, float]] = {}
    for fqn, candidates in schemes.items():
        w = modules[fqn].weight.detach().float()
        out[fqn] = {}
        for scheme in candidates:
            if scheme == FP32:
                out[fqn][scheme.name] = 0.0
                continue
            deq = dequantized_weight(stand_in(modules[fqn], scheme, fqn))
            noise = float(((deq - w) ** 2).sum())
            out[fqn][scheme.name] = noise / max(float((w**2).sum()), 1e-30) * (w.numel() / 1e6)
    return out


# Part of every cache key: raised whenever a backend's stand-in numerics change, so figures
# cached by an earlier edgeq of the same version are measured again (2: ONNX decoder LLMs'
# int4 linears take int8 dynamic activations; 3: ExecuTorch int4 linears' group scales in
# bf16, as XNNPACK stores them; 4: calibrated schemes, keyed by their calibration data;
# 5: one file per model and data, entries per (layer, scheme); 6: ExecuTorch int4-g32-asym
# offsets at int8).
STAND_IN_REVISION = 6


def cache_key(module: Any, calib: list, schemes: dict[str, list[Scheme]], metric: str, proxy: str | None,
              fmt: str = "", calibration_key: str = "") -> str:
    import torch

    h = hashlib.sha256()
    names = {fqn: [s.name for s in candidates] for fqn, candidates in schemes.items()}
    h.update(f"{__version__}|{STAND_IN_REVISION}|{metric}|{proxy}|{fmt}|{calibration_key}|"
             f"{json.dumps(names, sort_keys=True)}".encode())
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
