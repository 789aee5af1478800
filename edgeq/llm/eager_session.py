"""An ``LMSession`` over an eager transformers causal LM: the reference every runtime's
session is compared with (perplexity, next-token KL, greedy tokens).

>>> session = EagerLMSession(model, max_context=512)  # doctest: +SKIP
>>> first = session.prefill([1, 2, 3]); nxt = session.decode(int(first.argmax()))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from edgeq.errors import RunError


class EagerLMSession:
    """Decoder state over a transformers ``*ForCausalLM`` in eager PyTorch, float32 logits out."""

    def __init__(self, model: Any, max_context: int | None = None) -> None:
        positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.model = model.eval()
        self.max_context = int(max_context or positions or 2048)
        self.vocab_size = int(model.config.vocab_size)
        self.runtime = "PyTorch eager (transformers)"
        self._cache: Any = None
        self._length = 0

    def prefill(self, token_ids: list[int], *, all_logits: bool = False) -> Any:
        self.reset()
        return self._feed(list(token_ids), all_logits)

    def decode(self, token_id: int) -> Any:
        if self._cache is None:
            raise RunError("decode() before prefill()", "call prefill with the prompt first")
        return self._feed([int(token_id)], False)

    def reset(self) -> None:
        self._cache, self._length = None, 0

    def close(self) -> None:
        self.reset()

    def _feed(self, ids: list[int], all_logits: bool) -> Any:
        import torch
        from transformers import DynamicCache

        if not ids:
            raise RunError("no tokens to feed", "pass at least one token id")
        if self._length + len(ids) > self.max_context:
            raise RunError(f"{self._length + len(ids)} tokens exceed the context of {self.max_context}",
                           "shorten the prompt or use a larger context")
        if self._cache is None:
            self._cache = DynamicCache(config=self.model.config)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), past_key_values=self._cache, use_cache=True)
        self._length += len(ids)
        logits = out.logits[0].float()
        return (logits if all_logits else logits[-1]).numpy()
