#!/usr/bin/env python
"""GPTQ's time per layer (issue 14): one sweep sharing one factorization of the Hessian
across the weights that read the same input and across the group sizes
(``edgeq.algorithms.gptq.gptq_many``, on one thread) vs one ``gptq`` call per (weight,
group) as edgeq first ran it (its own factorization each, torch's default threads), on
MiniLM-shaped (384 / 1536) and SmolLM2-shaped (576 / 1536) linears, both formats' grids.

Weights are random (0.05 · N(0, 1)), inputs a random correlated mix (4,000 rows): the time
does not depend on the values. The machine is shared: the load average is printed.

    .venv/bin/python benchmarks/gptq_speed.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = (  # (weights sharing one input, out, in): MiniLM q/k/v, intermediate, output; SmolLM2 gate/up, down
    (3, 384, 384), (1, 1536, 384), (1, 384, 1536), (2, 1536, 576), (1, 576, 1536))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import torch

    from edgeq.algorithms.gptq import HessianSum, factor, gptq, gptq_many
    from edgeq.algorithms.grids import AsymmetricUint4, SymmetricInt4

    g = torch.Generator().manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the start")
    print("| weights | grid | groups | per (weight, group), default threads s | one sweep, 1 thread s | speed-up |")
    print("|---|---|---|---|---|---|")
    for count, rows, cols in SHAPES:
        weights = [torch.randn(rows, cols, generator=g) * 0.05 for _ in range(count)]
        x = torch.randn(4000, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols ** 0.5)
        h = HessianSum(cols)
        h.add(x)
        hessian = h.matrix()
        groups = [s for s in (32, 64, 128) if cols % s == 0]
        for grid in (SymmetricInt4(), AsymmetricUint4()):
            before, after = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                with _default_threads():
                    for w in weights:
                        for s in groups:
                            gptq(w, hessian, grid, s)
                before.append(time.perf_counter() - t)
                t = time.perf_counter()
                gptq_many(weights, factor(hessian), grid, groups)
                after.append(time.perf_counter() - t)
            b, a = min(before), min(after)
            print(f"| {count}×[{rows}×{cols}] | {grid.name} | {','.join(map(str, groups))} | {b:.2f} | {a:.2f} | "
                  f"{b / a:.1f}× |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} at the end (1 / 5 min)")
    return 0


class _default_threads:
    """``gptq`` as first written: its sweep on torch's default threads (``one_thread`` off)."""

    def __enter__(self) -> None:
        import edgeq.algorithms.gptq as mod

        self.saved = mod.one_thread
        mod.one_thread = _noop

    def __exit__(self, *exc: object) -> None:
        import edgeq.algorithms.gptq as mod

        mod.one_thread = self.saved


class _noop:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
