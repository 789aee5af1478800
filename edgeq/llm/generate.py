"""Text generation over any ``LMSession``: greedy by default, or temperature / top-p
sampling from a seeded generator; stops at an EOS id or after ``max_new_tokens``; calls
``on_token`` for each new token; measures prefill and decode speed and time to first token.

>>> from edgeq.llm.generate import generate, GenerationConfig  # doctest: +SKIP
>>> result = generate(session, [1, 2, 3], GenerationConfig(max_new_tokens=8), eos_ids={2})  # doctest: +SKIP
>>> result.tokens, result.decode_tokens_per_s  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from edgeq.errors import ConfigError, RunError


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate. ``temperature`` 0 means greedy (argmax); otherwise tokens are
    sampled from softmax(logits / temperature) restricted to the smallest set of tokens
    whose probability reaches ``top_p``."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> None:
        if not 1 <= self.max_new_tokens <= 1_000_000:
            raise ConfigError(f"max new tokens must be between 1 and 1000000, not {self.max_new_tokens}",
                              "pass a positive --max-new-tokens")
        if not 0.0 <= self.temperature <= 100.0 or self.temperature != self.temperature:
            raise ConfigError(f"temperature must be between 0 and 100, not {self.temperature}",
                              "0 is greedy; 0.7 is a common sampling temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top-p must be in (0, 1], not {self.top_p}", "1 keeps every token")


@dataclass
class GenerationResult:
    """The new tokens and how fast they came."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    stopped_by: str = "max-new-tokens"  # "eos" | "max-new-tokens" | "context"
    prefill_s: float = 0.0
    decode_s: float = 0.0
    time_to_first_token_s: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens produced by decode calls (every new token after the first) per second."""
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else 0.0


def generate(
    session: Any,
    prompt_ids: list[int],
    config: GenerationConfig = GenerationConfig(),
    *,
    eos_ids: Iterable[int] = (),
    on_token: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Generate after ``prompt_ids`` with ``session``; the first token comes from the
    prefill's logits, each next one from a decode of the previous token."""
    config.check()
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise RunError("the prompt is empty", "give a prompt with at least one token")
    if len(prompt) >= session.max_context:
        raise RunError(f"the prompt is {len(prompt)} tokens, and the artifact's context holds {session.max_context}"
                       " (with room for at least one new token)",
                       "shorten the prompt, or re-export with a larger --max-context")
    pick = _picker(config)
    # greedy reads only the most likely token: a session that returns whole rows slowly skips the rest
    top = {"top": 1} if config.temperature == 0.0 and getattr(session, "partial_rows", False) else {}
    eos = {int(e) for e in eos_ids}
    result = GenerationResult(prompt_tokens=len(prompt))
    start = time.perf_counter()
    logits = session.prefill(prompt, **top)
    token = pick(logits)
    result.prefill_s = result.time_to_first_token_s = time.perf_counter() - start
    decode_start = time.perf_counter()
    while True:
        result.tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos:
            result.stopped_by = "eos"
            break
        if len(result.tokens) >= config.max_new_tokens:
            break
        if len(prompt) + len(result.tokens) >= session.max_context:
            result.stopped_by = "context"
            break
        token = pick(session.decode(token, **top))
    result.decode_s = time.perf_counter() - decode_start if len(result.tokens) > 1 else 0.0
    return result


def _picker(config: GenerationConfig) -> Callable[[Any], int]:
    import numpy as np

    if config.temperature == 0.0:
        return lambda logits: int(np.argmax(logits))
    rng = np.random.default_rng(config.seed)

    def sample(logits: Any) -> int:
        z = np.asarray(logits, dtype=np.float64) / config.temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if config.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            cumulative = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cumulative, config.top_p)) + 1]  # smallest set reaching top_p
            kept = np.zeros_like(p)
            kept[keep] = p[keep]
            p = kept / kept.sum()
        return int(rng.choice(len(p), p=p))

    return sample
