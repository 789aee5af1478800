"""The fit, fidelity and latency gates for decoder-LLM artifacts (a manifest with ``llm``).

An LLM's memory is dominated by what the file size does not show (the KV cache at the
context, the runtime's arena), its fidelity is about next tokens, and its speed is per
generated token, so these gates measure what ``edgeq export`` of an LLM records:

- fit: the predicted peak of generating up to the artifact's max context
  (``edgeq.llm.memory.predict_lm_peak``), and with ``--measure`` the peak RSS of a fresh
  process that does it (``edgeq.llm.measure``: the same scenario, a prompt of
  ``scenario_prompt(context)`` tokens then decoding to the full context);
- fidelity: greedy continuations and teacher-forced next-token numerics of the artifact in
  its runtime against eager transformers on held-out prompts (``edgeq.llm.verify``), held
  to the target's top-1 agreement (and KL, when set);
- latency: the decode time per token, measured with ``--measure`` or else the roofline
  estimate on the target's device (``edgeq.llm.profile.lm_decode_estimates``, an upper
  bound on speed, so a lower bound on time: labelled ESTIMATE).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from edgeq.check.results import GateResult
from edgeq.errors import EdgeqError, ModelLoadError

def predicted_peak(root: Path) -> tuple[int, int] | str:
    """(bytes beyond the runtime's baseline, with a Python runtime) at the max context, or why not."""
    from edgeq.llm.memory import predict_lm_peak

    try:
        est = predict_lm_peak(root)
    except EdgeqError as exc:
        return exc.one_line()
    return int(est.total_bytes), int(est.peak_rss_bytes)


def measure(root: Path, max_context: int) -> dict[str, Any]:
    """A fresh process generating to the full context: ``memory`` (the runner's block) and
    ``decode_ms_per_token`` (the median over the timed runs)."""
    from edgeq.llm.measure import measure_generation
    from edgeq.llm.memory import scenario_prompt

    prompt = scenario_prompt(max_context)
    result = measure_generation(root, prompt_tokens=prompt, new_tokens=max_context - prompt, runs=1)
    speeds = [r["decode_tokens_per_s"] for r in result["runs"] if r.get("decode_tokens_per_s")]
    result["decode_ms_per_token"] = 1e3 / statistics.median(speeds) if speeds else None
    return result


def fidelity(mv: Any, model_file: Path, limits: Any, source: str, why_not: str) -> GateResult:
    """The artifact's greedy tokens and next-token numerics against the source model, now."""
    wanted = limits.fidelity_top1
    limit = f"top-1 >= {wanted.value:.0%}"
    if why_not:
        return GateResult("fidelity", "skipped", why_not, limit=limit, source=wanted.source)
    from edgeq.backends import get_backend
    from edgeq.llm import verify
    from edgeq.llm.export import VERIFY_PROMPTS, causal_lm_of, source_tokenizer  # as edgeq export verifies
    from edgeq.models import load_model

    try:
        loaded = load_model(source, "causal-lm")
        model = causal_lm_of(loaded)
    except ModelLoadError as exc:
        return GateResult("fidelity", "skipped", f"the source model {source} cannot be loaded ({exc.one_line()})",
                          limit=limit, source=wanted.source)
    try:
        session = get_backend(mv.format).open_lm(model_file)
    except (EdgeqError, ValueError, RuntimeError) as exc:
        return GateResult("fidelity", "fail", f"the artifact does not open in its runtime ({str(exc).splitlines()[0][:200]})",
                          figure="does not run", limit=limit, source=wanted.source)
    try:
        prompts, described = verify.verification_prompts(source_tokenizer(loaded), session.vocab_size, session.max_context,
                                                         VERIFY_PROMPTS)
        greedy, numerics = verify.check(model, session, prompts, described)
    except (EdgeqError, ValueError, RuntimeError) as exc:
        return GateResult("fidelity", "fail", f"the artifact does not generate ({str(exc).splitlines()[0][:200]})",
                          figure="does not run", limit=limit, source=wanted.source)
    finally:
        session.close()
    from edgeq.check.gates import logit_checks

    checks, figure = logit_checks(numerics, limits, "next-token top-1 agreement")
    failed = [t for ok, t in checks if not ok]
    text = ("; ".join(failed or [t for _, t in checks]) + f"; greedy: {greedy.identical_prompts}/{greedy.prompts} "
            f"prompts identical to transformers over {greedy.new_tokens} tokens ({described})")
    return GateResult("fidelity", "fail" if failed else "pass", text, figure=figure, limit=limit, source=wanted.source,
                      details={**numerics.to_dict(), "greedy": greedy.to_dict()})


def decode_ms(root: Path, device: str, measured: dict[str, Any] | None) -> tuple[float, str] | str:
    """(ms per decoded token, how it was obtained), or why there is no figure."""
    if measured is not None:
        ms = measured.get("decode_ms_per_token")
        if not ms:
            return "the measurement decoded no tokens"
        return float(ms), "measured decode time per token on this host"
    from edgeq.llm.profile import lm_decode_estimates
    from edgeq.targets import load_profile

    try:
        row = lm_decode_estimates(root, [load_profile(device)])["decode_estimates"][0]
    except (EdgeqError, OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        return f"no decode estimate for {device} ({str(exc).splitlines()[0][:160]}); pass --measure"
    return float(row["ms_per_token"]), (f"estimated decode time per token on {device} (ESTIMATE: a roofline "
                                        "lower bound, real runtimes are slower)")
