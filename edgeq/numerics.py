"""Compare an artifact's outputs with eager FP32 on held-out inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Numerics:
    """How closely an artifact matches eager FP32 on held-out inputs."""

    samples: int
    inputs: str  # what the held-out inputs were
    runtime: str  # what actually ran the artifact
    cosine_mean: float
    cosine_min: float
    max_abs: float
    top1_agreement: float | None  # for logits; None for embeddings
    kl_mean: float | None = None  # mean KL(FP32 ‖ artifact) of the softmax, for logits

    def error(self, metric: str) -> float:
        """The error in the metric sensitivity uses: 1 − mean cosine, or mean KL."""
        return self.kl_mean if metric == "top1" and self.kl_mean is not None else 1.0 - self.cosine_mean

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> str:
        text = f"cosine mean {self.cosine_mean:.4f} / min {self.cosine_min:.4f}, max-abs {self.max_abs:.3g}"
        if self.top1_agreement is not None:
            text += f", top-1 agreement {self.top1_agreement:.1%}"
        return text + f" over {self.samples} held-out inputs"


def compare(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], *, with_top1: bool,
            inputs: str, runtime: str) -> Numerics:
    """Per-sample cosine of flattened outputs, worst absolute error, argmax agreement."""
    if len(reference) != len(actual) or not reference:
        raise ValueError("reference and actual must be non-empty and of equal length")
    cosines, max_abs, agree, total, kls = [], 0.0, 0, 0, []
    for ref, out in zip(reference, actual):
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64).reshape(ref.shape)
        cosines.append(cosine(ref, out))
        max_abs = max(max_abs, float(np.max(np.abs(ref - out))) if ref.size else 0.0)
        if with_top1:
            a, b = ref.argmax(axis=-1), out.argmax(axis=-1)
            agree += int(np.sum(a == b))
            total += a.size
            kls.append(_kl(ref, out))
    return Numerics(
        samples=len(reference),
        inputs=inputs,
        runtime=runtime,
        cosine_mean=float(np.mean(cosines)),
        cosine_min=float(np.min(cosines)),
        max_abs=max_abs,
        top1_agreement=(agree / total) if with_top1 and total else None,
        kl_mean=float(np.mean(kls)) if kls else None,
    )


def _kl(ref: np.ndarray, out: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(out)
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan") if not np.all(np.isfinite(b)) else 0.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))
