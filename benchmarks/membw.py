"""This machine's memory bandwidth, measured with numpy on buffers far larger than the caches.

Three streams, each the best of several repeats (the least disturbed by the other
processes on the machine):

- read:  ``buf.sum()`` over a float64 buffer (bytes read / second)
- copy:  ``np.copyto(dst, src)`` (bytes read + bytes written / second, STREAM's convention)
- read with N threads: N buffers summed in N threads at once (numpy releases the GIL)
- dot:   ``a @ b`` of two float32 vectors through numpy's BLAS (its own threads; both read)
- vector read with N threads: ``torch.sum`` of a float32 buffer on N threads of torch's pool,
  when torch is installed. numpy's sum is not bandwidth-bound on a fast core (measured
  2026-12-05 on an AMD EPYC with 2 vCPUs: numpy 22 GB/s on one thread, BLAS dot 43 GB/s,
  torch's vectorized sum on 2 threads 82 GB/s), and an LLM's int4 decode streamed its
  weights at 59 GB/s there, so without it the "bound" was below what decode reached.

Decode of a batch-1 LLM streams every weight once per token, so ``weight bytes / read
bandwidth`` is a lower bound on its time per token: the LLM benchmark prints that bound
from ``measure()``. One core rarely saturates the memory bus, hence the threaded read.

    python benchmarks/membw.py [--mb 1024] [--repeats 5] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_gbps(mb: int, repeats: int, threads: int = 1) -> float:
    """Bytes read per second (GB/s = 1e9 B/s) summing ``threads`` float64 buffers of ``mb`` MiB each."""
    bufs = [np.ones(mb * 2**20 // 8) for _ in range(threads)]
    for b in bufs:
        b.sum()  # touch every page once so first-touch faults are not timed

    def run() -> None:
        workers = [threading.Thread(target=b.sum) for b in bufs]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    seconds = _best(run if threads > 1 else bufs[0].sum, repeats)
    return sum(b.nbytes for b in bufs) / seconds / 1e9


def copy_gbps(mb: int, repeats: int) -> float:
    """(bytes read + bytes written) per second copying a ``mb`` MiB buffer."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    seconds = _best(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / seconds / 1e9


def dot_gbps(mb: int, repeats: int) -> float:
    """Bytes read per second by a BLAS dot product of two float32 vectors of ``mb`` MiB each."""
    a = np.ones(mb * 2**20 // 4, dtype=np.float32)
    b = np.ones_like(a)
    a @ b
    return 2 * a.nbytes / _best(lambda: a @ b, repeats) / 1e9


def vector_read_gbps(mb: int, repeats: int, threads: int) -> float | None:
    """Bytes read per second by ``torch.sum`` over a float32 buffer of ``mb`` MiB on ``threads``
    threads (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(mb * 2**20 // 4)
        buf.sum()
        return buf.numel() * 4 / _best(buf.sum, repeats) / 1e9
    finally:
        torch.set_num_threads(saved)


def measure(mb: int = 1024, repeats: int = 5, threads: int = 1) -> dict[str, float]:
    """GB/s of each stream (``read_gbps``, ``copy_gbps``, ``dot_read_gbps``, ``read_gbps_Nthreads``,
    ``vector_read_Nthreads_gbps``), measured now on this machine."""
    load_before = os.getloadavg()[0]
    out = {"buffer_mb": mb, "read_gbps": read_gbps(mb, repeats), "copy_gbps": copy_gbps(mb, repeats),
           "dot_read_gbps": dot_gbps(mb // 2, repeats)}
    if threads > 1:
        out[f"read_gbps_{threads}threads"] = read_gbps(mb // threads, repeats, threads)
    vector = vector_read_gbps(mb, repeats, threads)
    if vector is not None:
        out[f"vector_read_{threads}threads_gbps"] = vector
    # Other processes share the memory bus and the cores: say how busy the machine was.
    out["load_average"] = max(load_before, os.getloadavg()[0])
    out["cpus"] = os.cpu_count() or 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="buffer size in MiB (far above the last-level cache)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = measure(args.mb, args.repeats, args.threads)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"memory bandwidth on this machine ({args.mb} MiB buffers, best of {args.repeats}; load average "
          f"{result['load_average']:.1f} on {result['cpus']} CPUs):")
    for key, value in result.items():
        if "gbps" in key:
            print(f"  {key:<22} {value:7.2f} GB/s")


if __name__ == "__main__":
    main()
