"""Check an LLM artifact against eager transformers on a few prompts.

Two figures, both from the artifact in its runtime:

- greedy agreement: the artifact's greedy continuation (through ``edgeq.llm.generate``,
  KV cache and all) against eager transformers' greedy continuation (a full forward per
  step, no cache: an independent path), as the fraction of positions before the first
  divergence, and how many prompts gave identical continuations;
- next-token numerics: eager and artifact logits at every position of prompt + eager
  continuation (teacher-forced), compared with ``edgeq.numerics.compare`` (cosine,
  top-1 agreement, KL(eager ‖ artifact)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NEW_TOKENS = 16


@dataclass(frozen=True)
class GreedyCheck:
    prompts: int
    new_tokens: int  # per prompt
    identical_prompts: int  # prompts whose whole greedy continuation matched
    prefix_match: float  # mean fraction of positions before the first divergence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verification_prompts(tokenizer: Any, vocab: int, max_context: int, n: int) -> tuple[list[list[int]], str]:
    """``n`` prompts of held-out sentences (random ids without a tokenizer), each short
    enough to leave room for the continuation."""
    limit = max(1, min(48, max_context // 2))
    if tokenizer is not None:
        from edgeq.models.textdata import sentences

        prompts = []
        for text in sentences("heldout", n):
            ids = tokenizer(text, add_special_tokens=True)["input_ids"][:limit]
            if ids:
                prompts.append([int(i) for i in ids])
        if prompts:
            return prompts, "greedy continuations of Python standard-library docstring sentences"
    import numpy as np

    rng = np.random.default_rng(0)
    return ([rng.integers(0, vocab, size=min(8, limit)).tolist() for _ in range(n)],
            "greedy continuations of random token ids (the model has no tokenizer)")


def eager_greedy(model: Any, prompt: list[int], new_tokens: int) -> tuple[list[int], Any]:
    """transformers' greedy continuation (one full forward per step) and the logits of
    its last forward over prompt + continuation[:-1] (position-aligned with the artifact)."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            ids.append(int(logits[-1].argmax()))
    return ids[len(prompt):], logits.float().numpy()


def check(model: Any, session: Any, prompts: list[list[int]], description: str) -> tuple[GreedyCheck, Any]:
    """Greedy agreement and teacher-forced next-token numerics of ``session`` vs ``model``."""
    from edgeq.llm.generate import GenerationConfig, generate
    from edgeq.numerics import compare

    identical, fractions, refs, outs = 0, [], [], []
    k = NEW_TOKENS
    for prompt in prompts:
        k = max(1, min(NEW_TOKENS, session.max_context - len(prompt)))
        expected, ref_logits = eager_greedy(model, prompt, k)
        got = generate(session, prompt, GenerationConfig(max_new_tokens=k)).tokens
        same = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
        fractions.append(same / len(expected))
        identical += int(got == expected)
        forced = prompt + expected[:-1]
        if getattr(session, "returns_log_probs", False):  # e.g. llama.cpp's server: compare like with like
            import torch

            ref_logits = torch.log_softmax(torch.as_tensor(ref_logits, dtype=torch.float32), dim=-1).numpy()
        refs.append(ref_logits)
        outs.append(session.prefill(forced, all_logits=True))
    greedy = GreedyCheck(prompts=len(prompts), new_tokens=k, identical_prompts=identical,
                         prefix_match=float(sum(fractions) / len(fractions)))
    numerics = compare(refs, outs, with_top1=True, inputs=f"{description}, every position teacher-forced",
                       runtime=session.runtime)
    return greedy, numerics
