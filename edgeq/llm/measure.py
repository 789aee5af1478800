"""Generation speed and peak memory of an LLM artifact, measured in a fresh process.

``measure_generation(artifact_dir, prompt_tokens=P, new_tokens=N)`` starts a new Python
process (``python -m edgeq.llm.measure``) that, in this order:

1. reads and hash-checks the artifact, imports its runtime (the backend's ``RUNNER_MODULES``)
   and edgeq's generation code; collects garbage and returns free heap pages, resets the
   kernel's peak-RSS counter and records the resident set: the *baseline*;
2. opens the artifact's ``LMSession`` (timed: ``load_ms``);
3. generates ``warmup`` untimed times, then ``runs`` timed times: a prefill of a fixed
   prompt of ``P`` token ids (drawn from a seeded generator over the vocabulary) and ``N``
   greedy decode steps, no stop token (``edgeq.llm.generate``: time to first token, prefill
   and decode seconds);
4. reads the peak resident set (``VmHWM``).

The memory block has the keys of edgeq's encoder runner (``baseline_rss_bytes``,
``peak_rss_bytes``, ``model_attributable_bytes`` = peak - baseline), so the LLM prediction
(``edgeq.llm.memory``) is checked the way ``edgeq.planning.memory`` is.

>>> m = measure_generation("dist/smollm2-x86", prompt_tokens=64, new_tokens=960)  # doctest: +SKIP
>>> m["memory"]["model_attributable_bytes"], m["runs"][0]["decode_tokens_per_s"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeq.errors import ArtifactError, ConfigError, EdgeqError

PROMPT_SEED = 0


def prompt_ids(vocab_size: int, tokens: int, seed: int = PROMPT_SEED) -> list[int]:
    """A fixed prompt of ``tokens`` ids below ``vocab_size`` (seeded: the same every run)."""
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).integers(0, vocab_size, size=tokens)]


def check_lengths(max_context: int, prompt_tokens: int, new_tokens: int) -> None:
    """The prompt and the new tokens must fit the artifact's context (one line, exit 2 if not)."""
    if prompt_tokens < 1 or new_tokens < 1:
        raise ConfigError(f"prompt tokens ({prompt_tokens}) and new tokens ({new_tokens}) must be at least 1",
                          "pass e.g. --prompt-tokens 64 --new-tokens 64")
    if prompt_tokens >= max_context:
        raise ConfigError(f"a prompt of {prompt_tokens} tokens does not fit the artifact's context of "
                          f"{max_context} (with room for one new token)",
                          f"pass --prompt-tokens {max_context - 1} or less")
    if prompt_tokens + new_tokens > max_context:
        raise ConfigError(f"{prompt_tokens} prompt + {new_tokens} new tokens exceed the artifact's context of "
                          f"{max_context}", f"pass --new-tokens {max_context - prompt_tokens} or less")


def measure_generation(artifact_dir: str | Path, *, prompt_tokens: int, new_tokens: int, runs: int = 1,
                       warmup: int = 0, threads: int | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run the measurement above in a fresh process; its JSON result (``load_ms``, ``runs``:
    one dict per timed run, ``memory``, ``runtime``, ``max_context``)."""
    root = str(Path(__file__).resolve().parents[2])  # this edgeq, not whichever is installed
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    # The ExecuTorch pybindings import torch, whose OpenMP pool would spin beside the runtime's
    # own threads (edgeq's encoder runner sets the same); nothing here uses torch's pool.
    env.update(LANG="C.UTF-8", HF_HUB_OFFLINE="1", PYTHONPATH=root, OMP_NUM_THREADS="1")
    fd, out = tempfile.mkstemp(prefix="edgeq-lm-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", "edgeq.llm.measure", str(Path(artifact_dir).resolve()), "--prompt-tokens",
           str(prompt_tokens), "--new-tokens", str(new_tokens), "--runs", str(runs), "--warmup", str(warmup),
           "--json-out", out]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    try:
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgeqError(f"generating with {artifact_dir} took longer than {timeout:.0f} s",
                             "use fewer --runs or --new-tokens") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
            tail = lines[-1][len("error:"):].strip() if lines else " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
            raise ArtifactError(f"generating with {artifact_dir} failed (exit {proc.returncode}): {tail or 'no message'}",
                                "re-run with --debug; the artifact may need re-exporting")
        return json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)


# --------------------------------------------------------------- the fresh process


def _measure(artifact: Path, prompt_tokens: int, new_tokens: int, runs: int, warmup: int,
             threads: int | None) -> dict[str, Any]:
    import importlib

    from edgeq.artifact import read_artifact
    from edgeq.backends import get_backend
    from edgeq.llm.generate import GenerationConfig, generate
    from edgeq.llm.profile import takes_threads
    from edgeq.profiling.runner import memory_block, proc_status, reset_peak, settle  # the encoder runner's measurement

    manifest, model_file = read_artifact(artifact)
    if manifest.llm is None:
        raise ArtifactError(f"{artifact} is not an LLM artifact", "export a causal LM")
    check_lengths(manifest.llm.max_context, prompt_tokens, new_tokens)
    be = get_backend(manifest.target.format)
    for module in be.RUNNER_MODULES:  # the runtime is part of the baseline, as for encoders
        importlib.import_module(module)
    ids = prompt_ids(manifest.llm.vocab_size, prompt_tokens)
    config = GenerationConfig(max_new_tokens=new_tokens)
    if threads is not None and not takes_threads(manifest.target.format):
        raise ConfigError(f"threads cannot be set for {manifest.target.format} LLM sessions", "drop --threads")
    settle()
    reset = reset_peak()
    base = proc_status()
    t0 = time.perf_counter()
    session = be.open_lm(model_file, **({"threads": threads} if threads is not None else {}))
    load_ms = (time.perf_counter() - t0) * 1e3
    loaded = proc_status()
    try:
        for _ in range(warmup):
            generate(session, ids, config)
        timed = []
        for _ in range(runs):
            r = generate(session, ids, config)
            timed.append({"prompt_tokens": r.prompt_tokens, "new_tokens": len(r.tokens), "stopped_by": r.stopped_by,
                          "prefill_s": r.prefill_s, "decode_s": r.decode_s, "decode_steps": max(len(r.tokens) - 1, 0),
                          "time_to_first_token_s": r.time_to_first_token_s,
                          "prefill_tokens_per_s": r.prefill_tokens_per_s, "decode_tokens_per_s": r.decode_tokens_per_s})
        end = proc_status()
        runtime = session.runtime
    finally:
        session.close()
    memory = memory_block(base, end, reset)
    if memory["available"]:
        memory["after_load_rss_bytes"] = loaded.get("VmRSS")
        if "VmHWM" in loaded:  # the peak of the load alone (the runtime may convert weights as it loads)
            memory["load_attributable_bytes"] = loaded["VmHWM"] - base["VmRSS"]
    return {"artifact": str(artifact), "format": manifest.target.format, "runtime": runtime,
            "max_context": manifest.llm.max_context, "threads_requested": threads, "load_ms": load_ms,
            "warmup": warmup, "runs": timed, "memory": memory, "prompt_seed": PROMPT_SEED}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeq.llm.measure", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--new-tokens", type=int, required=True)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json-out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        result = _measure(args.artifact, args.prompt_tokens, args.new_tokens, max(1, args.runs), max(0, args.warmup),
                          args.threads)
    except EdgeqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tmp = args.json_out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
