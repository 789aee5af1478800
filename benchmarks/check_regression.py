#!/usr/bin/env python
"""Benchmark: false alarms and detection of ``edgeq check``'s latency regression rule.

Two FP32 ONNX Runtime artifacts (target ``x86``) of the same MLP (256 → hidden → 256, a
batch of 32 rows): ``mlp_base`` (hidden 1024) and ``mlp_30pct_slower`` (hidden 1344:
1.31× the multiply-adds). For ``--comparisons`` comparisons of each kind:

- unchanged: the base artifact against a copy of itself;
- slowdown: the base artifact against the 30% slower one;

each comparison runs ``--rounds`` alternating fresh-process rounds, exactly as
``edgeq check --baseline --measure`` does (``edgeq.check.latency_rule.alternating_rounds``:
one thread, 50 timed runs per process). From the same measurements three rules decide
"regressed" at a 10% tolerance:

- edgeq paired: ``decide(..., paired_ratio, 0.10)`` — the rule used when the baseline
  artifact is on disk, including its one extension by as many rounds again when the
  first rounds are inconclusive;
- edgeq unpaired: ``unpaired_ratio(...)`` on the same process medians without pairing
  (the rule used when only the baseline file's stored samples exist; no extension here);
- naive: one process each (the first round), p50 ratio > 1.10 — what a single
  before/after measurement in CI does.

Goals: 0 false alarms in the unchanged comparisons, 20/20 detections of the slowdown.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/check_regression.py            # 20 + 20 comparisons (~5 min)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/check_regression.py --comparisons 5

Results: a table on stdout and ``benchmarks/results/check_regression.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.check.latency_rule import alternating_rounds, decide, paired_ratio, unpaired_ratio  # noqa: E402

TOLERANCE = 0.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comparisons", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "check_regression.json")
    args = parser.parse_args()

    from edgeq.export import export

    work = Path(tempfile.mkdtemp(prefix="edgeq-bench-regression-"))
    try:
        base = export("tests.test_check_regression:mlp_base", "x86", precision="fp32", output=work / "base").artifact_dir
        slower = export("tests.test_check_regression:mlp_30pct_slower", "x86", precision="fp32",
                        output=work / "slower").artifact_dir
        same = work / "same"
        shutil.copytree(base, same)
        load_before = os.getloadavg()
        rows = []
        for kind, candidate in (("unchanged", same), ("slowdown 1.31x work", slower)):
            for i in range(args.comparisons):
                t0 = time.perf_counter()
                looks: list[tuple[list[float], list[float]]] = []

                def measure() -> tuple[list[float], list[float]]:
                    looks.append(alternating_rounds(base, candidate, args.rounds, args.runs))
                    return looks[-1]

                paired = decide(measure, paired_ratio, TOLERANCE)  # exactly what edgeq check does
                b, c = [x for lb, _ in looks for x in lb], [x for _, lc in looks for x in lc]
                unpaired = unpaired_ratio(b, c)
                rows.append({
                    "kind": kind, "i": i, "seconds": time.perf_counter() - t0, "rounds": len(b),
                    "baseline_medians_ms": b, "candidate_medians_ms": c,
                    "paired": {"ratio": paired.ratio, "low": paired.low, "high": paired.high,
                               "regressed": paired.regressed(TOLERANCE)},
                    "unpaired": {"ratio": unpaired.ratio, "low": unpaired.low, "high": unpaired.high,
                                 "regressed": unpaired.regressed(TOLERANCE)},
                    "naive": {"ratio": c[0] / b[0], "regressed": c[0] / b[0] > 1 + TOLERANCE},
                })
                r = rows[-1]
                print(f"{kind:20s} #{i:2d}  paired ×{paired.ratio:.3f} [{paired.low:.3f}, {paired.high:.3f}] "
                      f"{'REGRESSED' if r['paired']['regressed'] else 'ok':9s}  unpaired ×{unpaired.ratio:.3f} "
                      f"[{unpaired.low:.3f}, {unpaired.high:.3f}]  naive ×{r['naive']['ratio']:.3f}  "
                      f"({r['rounds']} rounds, {r['seconds']:.1f} s)", flush=True)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'rule':16s} {'false alarms (unchanged)':>26s} {'detected (1.31x work)':>24s}")
    summary = {}
    for rule in ("paired", "unpaired", "naive"):
        fa = sum(r[rule]["regressed"] for r in rows if r["kind"] == "unchanged")
        det = sum(r[rule]["regressed"] for r in rows if r["kind"] != "unchanged")
        summary[rule] = {"false_alarms": fa, "detected": det, "comparisons": args.comparisons}
        label = {"paired": "edgeq paired", "unpaired": "edgeq unpaired", "naive": "naive 1 process"}[rule]
        print(f"{label:16s} {fa:>20d} / {args.comparisons:<3d} {det:>18d} / {args.comparisons:<3d}")
    slow = [r["paired"]["ratio"] for r in rows if r["kind"] != "unchanged"]
    print(f"measured slowdown (paired ratio estimates): ×{min(slow):.3f}–×{max(slow):.3f}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{args.rounds} rounds × {args.runs} runs per comparison, tolerance {TOLERANCE:.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"version": 1, "date": time.strftime("%Y-%m-%d"), "tolerance": TOLERANCE,
                                    "rounds": args.rounds, "runs": args.runs, "load_before": load_before,
                                    "load_after": load_after, "summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
