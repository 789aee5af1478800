"""``edgeq profile`` for LLM artifacts: generation measured in the real runtime, or decode
speed estimated for devices.

- **host** (``profile_lm_host``): ``edgeq.llm.measure`` in a fresh process: ``warmup``
  untimed generations, then ``runs`` timed ones, each a prefill of a fixed prompt of
  ``prompt_tokens`` ids and ``new_tokens`` greedy tokens with no stop token, through the
  artifact's ``LMSession``. Reported: prefill and decode tokens/s, time to first token (medians
  over the timed runs), peak RSS of the process and above its runtime-imported baseline. The
  report's ``latency_ms`` holds the milliseconds per decoded token of each run, so the
  encoder tables and comparisons read it as the per-token latency.
- **emulated** (``lm_decode_estimates``): ``edgeq.llm.costs.decode_estimate`` for each device
  profile, from the artifact's own per-layer weight bytes (its manifest's inventory and
  lowered schemes, the backend's cost table), the KV-cache traffic at ``position`` tokens, and
  the device's bandwidth and CPU peak. ESTIMATES, upper bounds: real runtimes reach part of
  the bandwidth.

>>> report = profile_lm_host("dist/smollm2-x86", prompt_tokens=64, new_tokens=64)  # doctest: +SKIP
>>> report["llm"]["decode_tokens_per_s"]  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from edgeq.errors import ArtifactError, ConfigError

DEFAULT_PROMPT_TOKENS = 64
DEFAULT_NEW_TOKENS = 64
DEFAULT_RUNS, DEFAULT_WARMUP = 3, 1


def lm_lengths(max_context: int, prompt_tokens: int | None, new_tokens: int | None) -> tuple[int, int]:
    """The prompt and new-token counts: as given (checked against the context), else the
    defaults, shortened to fit a small context (half of it for the prompt)."""
    from edgeq.llm.measure import check_lengths

    prompt = prompt_tokens if prompt_tokens is not None else max(1, min(DEFAULT_PROMPT_TOKENS, max_context // 2))
    new = new_tokens if new_tokens is not None else max(1, min(DEFAULT_NEW_TOKENS, max_context - prompt))
    check_lengths(max_context, prompt, new)
    return prompt, new


def profile_lm_host(artifact_dir: str | Path, *, prompt_tokens: int | None = None, new_tokens: int | None = None,
                    runs: int | None = None, warmup: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Measure generation with an LLM artifact here (see the module docstring); the report
    without its ``host`` block (``edgeq.profiling`` adds it)."""
    from edgeq.artifact import read_artifact
    from edgeq.llm.measure import measure_generation

    manifest, model_file = read_artifact(Path(artifact_dir))
    if manifest.llm is None:
        raise ArtifactError(f"{artifact_dir} is not an LLM artifact", "profile it as an encoder artifact")
    prompt, new = lm_lengths(manifest.llm.max_context, prompt_tokens, new_tokens)
    if threads is not None and not takes_threads(manifest.target.format):
        raise ConfigError(f"--threads cannot be set for {manifest.target.format} LLM sessions in this edgeq "
                          "(the runtime uses its default thread pool)", "drop --threads")
    runs = DEFAULT_RUNS if runs is None else runs
    warmup = DEFAULT_WARMUP if warmup is None else warmup
    measured = measure_generation(model_file.parent, prompt_tokens=prompt, new_tokens=new, runs=runs,
                                  warmup=warmup, threads=threads)
    timed = measured["runs"]
    per_token_ms = [1e3 * r["decode_s"] / r["decode_steps"] for r in timed if r["decode_steps"]]
    predicted = manifest.llm.predicted_memory
    llm = {
        "prompt_tokens": prompt, "new_tokens": new, "max_context": manifest.llm.max_context,
        "prefill_tokens_per_s": statistics.median(r["prefill_tokens_per_s"] for r in timed),
        "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in timed),
        "time_to_first_token_ms": 1e3 * statistics.median(r["time_to_first_token_s"] for r in timed),
        "generated_tokens": [r["new_tokens"] for r in timed], "prompt_seed": measured["prompt_seed"],
        "runs": timed,
        "predicted_memory": predicted.model_dump() if predicted is not None else None,
    }
    return {
        "artifact": str(model_file.parent), "model": manifest.model.name, "model_file": model_file.name,
        "format": manifest.target.format, "runtime": measured["runtime"], "precision": manifest.precision.requested,
        "target": manifest.target.name, "target_device": manifest.target.device,
        "threads": {"requested": threads, "used": threads, "source": "--threads" if threads else "runtime default"},
        "warmup": warmup, "runs": len(timed), "load_ms": measured["load_ms"],
        "latency_ms": _stats(per_token_ms or [0.0]), "samples_ms": per_token_ms,
        "latency_unit": "ms per decoded token", "memory": measured["memory"], "llm": llm,
        "mode": "host", "estimate": False,
    }


def takes_threads(fmt: str) -> bool:
    """Whether the format's ``open_lm`` takes a thread count."""
    import inspect

    from edgeq.backends import get_backend

    return "threads" in inspect.signature(get_backend(fmt).open_lm).parameters


def artifact_weight_bytes(manifest: Any, shape: Any) -> dict[str, int]:
    """``edgeq.llm.costs.weight_bytes``'s keys from an artifact's inventory and lowered schemes:
    the bytes of its linears, its output head, its embedding table and its norms as stored."""
    from edgeq.backends import get_backend
    from edgeq.planning.inventory import layers_from_json
    from edgeq.schemes import applied

    stored = get_backend(manifest.target.format).stored_bytes
    layers = layers_from_json([row.model_dump() for row in manifest.precision.inventory or []])
    if not layers:
        raise ArtifactError("the artifact records no layer inventory", "re-export it with this edgeq")
    out = {"linears": 0, "lm_head": 0, "embedding": 0}
    for x in layers:
        scheme = applied(manifest.precision.layers.get(x.fqn, "fp32"))
        if scheme is None:
            continue
        is_head = x.kind == "linear" and x.shape and x.shape[0] == shape.vocab
        key = "lm_head" if is_head else "embedding" if x.kind == "embedding" else "linears"
        out[key] += stored(x, scheme)
    counted = sum(x.params * 4 for x in layers if not x.tied)
    out["norms"] = max(0, manifest.sizes.fp32_weight_bytes - counted)
    return out


def lm_decode_estimates(artifact_dir: str | Path, profiles: list[Any], *, position: int | None = None,
                        threads: int | None = None) -> dict[str, Any]:
    """Estimated decode tokens/s of an LLM artifact on each of ``profiles``
    (``edgeq.targets.schema.DeviceProfile``), with ``position`` tokens in the KV cache
    (default: half the max context). Every figure is an estimate."""
    from edgeq.artifact import read_artifact
    from edgeq.llm.costs import LMShape, decode_estimate
    from edgeq.planning.memory import artifact_config

    manifest, model_file = read_artifact(Path(artifact_dir))
    if manifest.llm is None:
        raise ArtifactError(f"{artifact_dir} is not an LLM artifact", "emulate it as an encoder artifact")
    config = artifact_config(model_file.parent, manifest)
    if not config:
        raise ArtifactError(f"{artifact_dir} has no config.json beside its model", "re-export it with this edgeq")
    shape = LMShape.from_config(config)
    position = manifest.llm.max_context // 2 if position is None else position
    if not 0 <= position < manifest.llm.max_context:
        raise ArtifactError(f"position {position} is outside the artifact's context of {manifest.llm.max_context}",
                            "give a position below the max context")
    weights = artifact_weight_bytes(manifest, shape)
    rows = []
    for profile in profiles:
        e = decode_estimate(shape, profile, position=position, compute_dtype="fp32", kv_dtype=manifest.llm.kv_cache_dtype,
                            threads=threads, weights=weights)
        rows.append({"device": profile.name, "device_name": profile.display_name, "estimate": True,
                     "label": "ESTIMATE (roofline upper bound)", "tokens_per_s": round(e.tokens_per_s, 3),
                     "ms_per_token": round(e.seconds * 1e3, 4), "bytes_per_token": e.bytes_per_token,
                     "flops_per_token": e.flops_per_token, "bound": e.bound, "threads": e.threads,
                     "bandwidth_gbps": profile.memory.bandwidth_gbps})
    assumptions = [
        f"decode of one token with {position} tokens in the KV cache ({manifest.llm.kv_cache_dtype}), batch 1",
        "bytes per token: every linear and the output head as stored in the artifact, one embedding row, the norms, "
        "the KV cache read up to the position and one position written",
        "seconds per token = max(bytes / the profile's memory bandwidth, FLOPs / its CPU fp32 peak on the threads "
        "used); the fp32 peak is used because the manifest does not record whether quantized linears compute "
        "in int8 (ExecuTorch's 8da4w does: its compute bound would be lower)",
        "an upper bound: real runtimes reach part of the bandwidth, phones throttle; nothing is fitted to any device",
    ]
    return {"position": position, "weights": weights, "shape": {"layers": shape.layers, "hidden": shape.hidden,
            "heads": shape.heads, "kv_heads": shape.kv_heads, "vocab": shape.vocab},
            "decode_estimates": rows, "assumptions": assumptions}


def _stats(samples: list[float]) -> dict[str, float]:
    xs = sorted(samples)

    def pct(q: float) -> float:
        k = (len(xs) - 1) * q
        lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"min": xs[0], "p50": pct(0.5), "p90": pct(0.9), "max": xs[-1], "mean": statistics.fmean(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0}
