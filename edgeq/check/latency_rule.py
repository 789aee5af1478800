"""The noise-aware latency regression rule, and the fresh-process rounds that feed it.

Latency on a shared CI runner drifts (other jobs, thermal state, frequency scaling), so a
single before/after pair flaps. edgeq measures in **rounds**: each round runs the
baseline and the candidate artifact in fresh processes, back to back, alternating which
goes first (so a drift within a round cancels over rounds), and keeps each process's
median latency. The rule then works on log ratios of those medians:

* **paired** (the baseline artifact is on disk and still matches its recorded sha256):
  ``d_i = log(candidate_i / baseline_i)`` per round; a t-interval on their mean.
* **unpaired** (only the baseline's stored per-process medians exist): Welch's t-interval
  on the difference of mean log medians, candidate processes measured now. Each group's
  spread between processes is part of its variance, so the interval widens with the
  noise; what pairing alone can cancel — the machine being in another state when the
  baseline was recorded — it cannot, so stored samples are only compared on the same
  host class (checked by the caller) and the report says "unpaired".

A regression is declared only when the ratio estimate is beyond ``1 + tolerance`` **and**
the 95% interval's lower end is beyond ``1 + tolerance / 2`` (the slowdown is large, and at
least half of the tolerance is surely real, not noise). When the first rounds are
inconclusive — the estimate past half the tolerance, the interval reaching past all of it
— as many rounds again are measured once and the rule decides on all of them
(``decide``), so one disturbed round does not hide a real slowdown.

Rounds run the runtime on **one thread**: on a shared runner a multi-threaded timing
mostly measures the neighbours' load (on this 2-core machine shared with other jobs the
per-round spread was ~2× wider with 2 threads); a regression in the model's work shows
single-threaded too. Measured latency against a budget (``--measure``) keeps the target's
threads.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# Two-sided 95% Student t quantiles by degrees of freedom (1..30); above 30, 1.96 + a small term.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df: float) -> float:
    if df < 1:
        return math.inf
    if df <= 30:
        return _T975[int(math.floor(df)) - 1]  # rounding df down: the wider, safer interval
    return 1.96 + 2.4 / df


@dataclass(frozen=True)
class RatioEstimate:
    """Candidate latency / baseline latency, with a 95% confidence interval."""

    ratio: float
    low: float
    high: float
    rounds: int
    paired: bool

    def regressed(self, tolerance: float) -> bool:
        return self.ratio > 1.0 + tolerance and self.low > 1.0 + tolerance / 2

    def inconclusive(self, tolerance: float) -> bool:
        """Not a regression, but the estimate is past half the tolerance and the interval
        reaches beyond it: worth more rounds before saying "no"."""
        return not self.regressed(tolerance) and self.ratio > 1.0 + tolerance / 2 and self.high > 1.0 + tolerance

    def describe(self) -> str:
        kind = "paired rounds" if self.paired else "unpaired, vs stored samples"
        return f"×{self.ratio:.3f} (95% CI ×{self.low:.3f}–×{self.high:.3f}, {self.rounds} {kind})"


def paired_ratio(baseline_ms: Sequence[float], candidate_ms: Sequence[float]) -> RatioEstimate:
    """Per-round medians of the two artifacts, measured in the same rounds."""
    if len(baseline_ms) != len(candidate_ms) or len(baseline_ms) < 2:
        raise ValueError("paired rounds need two or more rounds of both artifacts")
    d = [math.log(c / b) for b, c in zip(baseline_ms, candidate_ms)]
    mean = statistics.fmean(d)
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return RatioEstimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(d), True)


def unpaired_ratio(baseline_ms: Sequence[float], candidate_ms: Sequence[float]) -> RatioEstimate:
    """Process medians of the baseline (stored) and the candidate (now): Welch's interval."""
    if len(baseline_ms) < 2 or len(candidate_ms) < 2:
        raise ValueError("the unpaired rule needs two or more processes of each artifact")
    lb, lc = [math.log(x) for x in baseline_ms], [math.log(x) for x in candidate_ms]
    vb, vc = statistics.variance(lb) / len(lb), statistics.variance(lc) / len(lc)
    se = math.sqrt(vb + vc)
    df = (vb + vc) ** 2 / ((vb ** 2 / (len(lb) - 1)) + (vc ** 2 / (len(lc) - 1))) if se > 0 else len(lb) + len(lc) - 2
    diff = statistics.fmean(lc) - statistics.fmean(lb)
    half = t975(df) * se
    return RatioEstimate(math.exp(diff), math.exp(diff - half), math.exp(diff + half), min(len(lb), len(lc)), False)


REGRESSION_THREADS = 1


def process_median(root: Path, runs: int, threads: int | None = REGRESSION_THREADS) -> tuple[float, list[float]]:
    """One fresh process of edgeq's runner on ``root``: its median latency and raw samples."""
    from edgeq.profiling import profile_host

    report = profile_host(root, runs=runs, warmup=3, ops=False, threads=threads)
    samples = [float(x) for x in report["samples_ms"]]
    return statistics.median(samples), samples


def alternating_rounds(baseline: Path, candidate: Path, rounds: int, runs: int,
                       threads: int | None = REGRESSION_THREADS) -> tuple[list[float], list[float]]:
    """``rounds`` rounds of baseline and candidate in fresh processes, alternating who goes first."""
    base, cand = [], []
    for i in range(rounds):
        order = [(baseline, base), (candidate, cand)]
        for root, sink in order if i % 2 == 0 else order[::-1]:
            sink.append(process_median(root, runs, threads)[0])
    return base, cand


def decide(measure: Callable[[], tuple[list[float], list[float]]],
           rule: Callable[[list[float], list[float]], RatioEstimate], tolerance: float) -> RatioEstimate:
    """``rule`` on ``measure()``'s baseline and candidate medians; once more rounds when inconclusive."""
    base, cand = measure()
    est = rule(base, cand)
    if est.inconclusive(tolerance):
        more_base, more_cand = measure()
        est = rule(base + more_base, cand + more_cand)
    return est


def host_class() -> dict[str, Any]:
    """What must match for stored latency samples to be comparable: CPU model and cores."""
    import os
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": model or platform.processor(), "cpus": os.cpu_count() or 0}
