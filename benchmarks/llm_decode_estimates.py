"""ESTIMATED decode tokens/s of SmolLM2-135M and Llama-3.2-1B shapes at 8da4w on every
built-in device profile (``edgeq.llm.costs.decode_estimate``): a roofline from the bytes
each token moves (4-bit group-32 linears incl. the output head, fp32 KV cache read to the
current position) against the profile's memory bandwidth, and its FLOPs against the
profile's int8 peak on all cores. Upper bounds, not measurements: real runtimes reach a
part of the bandwidth, phones throttle, and nothing here is tuned to any published figure.

With ``--host``, a last row per model gives this machine's memory-bound decode limit from
its bandwidth measured now (``benchmarks/membw.py``, the fastest read stream).

    python benchmarks/llm_decode_estimates.py [--position 512] [--context 2048] [--host]
"""

from __future__ import annotations

import argparse

from edgeq.llm.costs import LLAMA_3_2_1B, SMOLLM2_135M, LMShape, decode_estimate, kv_cache_bytes, weight_bytes
from edgeq.targets import builtin_names, load_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--position", type=int, default=512, help="tokens already in the KV cache")
    ap.add_argument("--context", type=int, default=2048, help="max context (for the KV-cache size column)")
    ap.add_argument("--host", action="store_true", help="add this machine's measured-bandwidth bound")
    args = ap.parse_args()
    host_gbps = None
    if args.host:
        from membw import measure  # benchmarks/membw.py, beside this script

        streams = measure(mb=512, repeats=3)
        host_gbps = max(v for k, v in streams.items() if "read" in k and k.endswith("gbps"))
    shapes = {"SmolLM2-135M": LMShape.from_config(SMOLLM2_135M), "Llama-3.2-1B": LMShape.from_config(LLAMA_3_2_1B)}
    print(f"ESTIMATED decode at 8da4w (int4-g32 linears + head, int8 compute, fp32 KV), {args.position} tokens in "
          "the cache; roofline upper bounds")
    for name, shape in shapes.items():
        w = weight_bytes(shape)
        print(f"\n{name}: streamed weights {(w['linears'] + w['lm_head']) / 1e6:.1f} MB/token, embedding table "
              f"{w['embedding'] / 1e6:.1f} MB (fp32, one row read per token), KV cache "
              f"{kv_cache_bytes(shape, args.context) / 2**20:.1f} MiB at {args.context} tokens")
        print(f"  {'device':<22} {'GB/s':>6} {'int8 GOPS':>10} {'MB/token':>9} {'GFLOP/token':>12} {'tokens/s':>9}  bound")
        for device in builtin_names("profiles"):
            profile = load_profile(device)
            e = decode_estimate(shape, profile, position=args.position)
            print(f"  {device:<22} {profile.memory.bandwidth_gbps:>6.1f} {profile.cpu.peak_gops['int8']:>10.0f} "
                  f"{e.bytes_per_token / 1e6:>9.1f} {e.flops_per_token / 1e9:>12.2f} {e.tokens_per_s:>9.1f}  {e.bound}")
        if host_gbps:
            print(f"  {'this machine':<22} {host_gbps:>6.1f} {'':>10} {e.bytes_per_token / 1e6:>9.1f} {'':>12} "
                  f"{host_gbps * 1e9 / e.bytes_per_token:>9.1f}  memory (measured bandwidth)")


if __name__ == "__main__":
    main()
