"""Perplexity on held-out text, through any ``LMSession``, and next-token KL between two models.

**The text.** Python's own language reference as ``pydoc_data.topics`` ships it (the
text ``help("assert")`` shows): its topics in sorted-name order, joined by blank lines,
cut at a paragraph boundary at ``max_bytes`` UTF-8 bytes (default 64 KiB). It ships
with every CPython, needs no download, and is never calibration data: edgeq calibrates
on standard-library docstrings (``edgeq.models.textdata``), and any paragraph that contains one
of those sentences is dropped from this text. The selection depends on the Python
version, so every result records the Python version and the text's SHA-256.

**The measure.** The token ids are split into consecutive, non-overlapping windows of at
most ``window`` tokens (at most the session's context). Each window is fed with
``prefill(ids, all_logits=True)`` (teacher forcing: the model sees the true prefix) and
scored on its tokens after the first: ``perplexity = exp(sum NLL / tokens scored)``, the
log-softmax taken in float64. Windows do not share context, so a token's prefix is at
most ``window - 1`` tokens (the usual non-overlapping evaluation; a strided one would be
lower).

**KL.** ``next_token_kl(ref, test)`` is the mean over positions of KL(P_ref || P_test) of
the next-token distributions, in nats: a per-position measure of how far a quantized
model's predictions moved, which needs no labels (``tests/test_perplexity.py`` shows it
orders quantized models as their perplexity increase does).

**In the manifest.** ``edgeq export`` of a causal LM scores the artifact in its runtime on
this text (or the user's ``--eval-text FILE``: UTF-8, its first ``EVAL_TEXT_MAX_BYTES``
read), in windows of at most ``EVAL_WINDOW`` tokens, its first ``EVAL_TOKENS`` scored tokens
(``--eval-tokens``), and the source model in eager transformers on the same windows
(``score_artifact``): ``llm.perplexity`` records both, the tokens and windows, and the
text's source and SHA-256.

>>> windows = heldout_windows(hf_tokenize(tokenizer), 512, bos=added_bos(tokenizer))  # doctest: +SKIP
>>> perplexity(session, windows).perplexity  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeq.errors import ConfigError

DEFAULT_MAX_BYTES = 64 * 1024
EVAL_TOKENS = 511  # tokens an export scores by default (--eval-tokens): one window of 512 (its first token is context)
EVAL_WINDOW = 512  # tokens per window at most (and at most the artifact's context)
EVAL_TEXT_MAX_BYTES = 4 * 2**20  # an --eval-text file's bytes read at most (its first ones)
REFERENCE = "the source model in eager transformers (fp32), on the same windows"
TEXT_SOURCE = "pydoc_data.topics (the Python language reference), topics in sorted order"


@dataclass(frozen=True)
class HeldoutText:
    text: str
    source: str
    python: str
    sha256: str
    topics: int
    dropped_paragraphs: int  # paragraphs holding a calibration sentence


def heldout_text(max_bytes: int = DEFAULT_MAX_BYTES) -> HeldoutText:
    """The fixed held-out text (see the module docstring), at most ``max_bytes`` UTF-8 bytes."""
    from pydoc_data.topics import topics

    from edgeq.models import textdata

    if max_bytes < 1:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}", "pass a positive byte count")
    calibration = {" ".join(s.split()) for s in textdata.sentences("calib")}
    kept: list[str] = []
    used, dropped, names = 0, 0, 0
    for name in sorted(topics):
        names += 1
        for paragraph in topics[name].strip().split("\n\n"):
            flat = " ".join(paragraph.split())
            if not flat:
                continue
            if any(s in flat for s in calibration):
                dropped += 1
                continue
            size = len(paragraph.encode("utf-8")) + 2
            if used + size > max_bytes:
                return _held(kept, names, dropped)
            kept.append(paragraph)
            used += size
    return _held(kept, names, dropped)


def _held(paragraphs: list[str], topics: int, dropped: int) -> HeldoutText:
    text = "\n\n".join(paragraphs)
    return HeldoutText(text=text, source=TEXT_SOURCE, python=sys.version.split()[0],
                       sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), topics=topics,
                       dropped_paragraphs=dropped)


def read_eval_text(path: str | Path) -> HeldoutText:
    """A user's held-out text (``--eval-text``): a UTF-8 file, its first ``EVAL_TEXT_MAX_BYTES``
    bytes (cut at a character boundary). Untrusted: anything else is a ``ConfigError``."""
    p = Path(path)
    hint = "pass a UTF-8 text file, or leave --eval-text out to score edgeq's held-out text"
    if not p.is_file():
        raise ConfigError(f"--eval-text {path}: no such file", hint)
    try:
        with open(p, "rb") as f:
            raw = f.read(EVAL_TEXT_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--eval-text {path}: cannot read it ({exc.strerror})", hint) from None
    cut = len(raw) > EVAL_TEXT_MAX_BYTES
    raw = raw[:EVAL_TEXT_MAX_BYTES]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (cut and exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data"):
            raise ConfigError(f"--eval-text {path} is not UTF-8 text (invalid byte at offset {exc.start})",
                              hint) from None
        text = raw[: exc.start].decode("utf-8")  # the read ended inside a character
    if "\x00" in text:
        raise ConfigError(f"--eval-text {path} holds NUL bytes: not a text file", hint)
    if not text.strip():
        raise ConfigError(f"--eval-text {path} holds no text", hint)
    return HeldoutText(text=text, source=f"--eval-text {p.name}" + (
        f" (its first {len(text.encode('utf-8'))} bytes)" if cut else ""), python=sys.version.split()[0],
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), topics=0, dropped_paragraphs=0)


def hf_tokenize(tokenizer: Any) -> Callable[[str], list[int]]:
    """A transformers tokenizer as ``text → ids``, without special tokens (windows add BOS)."""
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    return encode


def added_bos(tokenizer: Any) -> int | None:
    """The BOS id ``tokenizer`` puts before a text by default (Llama 3), else None (SmolLM2, GPT-2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = list(tokenizer("a")["input_ids"])
    return bos if ids[:1] == [bos] else None


def heldout_windows(tokenize: Callable[[str], list[int]], window: int, *, bos: int | None = None,
                    max_bytes: int = DEFAULT_MAX_BYTES, max_windows: int | None = None,
                    max_tokens: int | None = None, text: str | None = None) -> list[list[int]]:
    """The held-out text's (or ``text``'s) token ids in consecutive windows of at most
    ``window`` tokens, each starting with ``bos`` when given (the model's BOS, if its
    tokenizer adds one); with ``max_tokens``, cut after that many scored tokens."""
    if window < 2 + (bos is not None):
        raise ConfigError(f"a perplexity window needs at least two tokens, got {window}", "pass a larger window")
    ids = tokenize(heldout_text(max_bytes).text if text is None else text)
    step = window - (bos is not None)
    out = [([bos] if bos is not None else []) + ids[i:i + step] for i in range(0, len(ids), step)]
    out = [w for w in out if len(w) >= 2]
    out = out[:max_windows] if max_windows is not None else out
    if max_tokens is None:
        return out
    capped, left = [], max_tokens
    for w in out:
        if left < 1:
            break
        capped.append(w[: left + 1])  # a window of n + 1 tokens scores n
        left -= len(capped[-1]) - 1
    return capped


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll: float  # summed negative log-likelihood, nats
    tokens: int  # tokens scored
    windows: int
    runtime: str

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def window_nll(logits: Any, window: list[int]) -> float:
    """Summed NLL of ``window[1:]`` under ``logits`` (one row per position of ``window``)."""
    import numpy as np

    logp = _log_softmax(np.asarray(logits)[: len(window) - 1])
    return float(-logp[np.arange(len(window) - 1), np.asarray(window[1:])].sum())


def perplexity(session: Any, windows: list[list[int]]) -> Perplexity:
    """Perplexity of ``windows`` through ``session`` (an ``edgeq.llm.session.LMSession``)."""
    import numpy as np

    if not windows:
        raise ConfigError("no held-out windows to score", "use more text or a smaller window")
    nll, scored = 0.0, 0
    for w in windows:
        if len(w) > session.max_context:
            raise ConfigError(f"a perplexity window of {len(w)} tokens is longer than the context of "
                              f"{session.max_context}", f"pass window={session.max_context} or less")
        if hasattr(session, "next_token_log_probs"):  # a session whose whole rows are slow scores the text only
            nll -= float(np.sum(session.next_token_log_probs(w)))
            scored += len(w) - 1
            continue
        logits = np.asarray(session.prefill(w, all_logits=True))
        if logits.shape != (len(w), session.vocab_size):
            raise ValueError(f"prefill(all_logits=True) returned shape {logits.shape}, expected "
                             f"{(len(w), session.vocab_size)}")
        nll += window_nll(logits, w)
        scored += len(w) - 1
    session.reset()
    return Perplexity(perplexity=math.exp(nll / scored), nll=nll, tokens=scored, windows=len(windows),
                      runtime=session.runtime)


def eager_perplexity(model: Any, windows: list[list[int]]) -> Perplexity:
    """Perplexity through the eager transformers ``model`` (the reference)."""
    from edgeq.llm.eager_session import EagerLMSession

    return perplexity(EagerLMSession(model, max_context=max(len(w) for w in windows)), windows)


KL_ROWS = 64  # positions at a time: a 128k vocabulary's float64 temporaries stay ~66 MB each


def next_token_kl(ref_logits: Any, test_logits: Any) -> float:
    """Mean over positions of KL(P_ref || P_test) between next-token distributions, in nats.
    Both are ``(positions, vocab)`` (or ``(vocab,)``) logits."""
    import numpy as np

    ref, test = np.atleast_2d(np.asarray(ref_logits)), np.atleast_2d(np.asarray(test_logits))
    if ref.shape != test.shape:
        raise ValueError(f"logits of shapes {ref.shape} and {test.shape} cannot be compared")
    per_position = [_kl_rows(ref[i:i + KL_ROWS], test[i:i + KL_ROWS]) for i in range(0, len(ref), KL_ROWS)]
    return float(np.concatenate(per_position).mean())


def _kl_rows(ref: Any, test: Any) -> Any:
    import numpy as np

    lp, lq = _log_softmax(ref), _log_softmax(test)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


@dataclass(frozen=True)
class Comparison:
    reference: Perplexity
    test: Perplexity
    kl: float  # mean next-token KL(reference || test), nats, over every scored position

    @property
    def perplexity_increase(self) -> float:
        """Relative increase of the test model's perplexity over the reference's."""
        return self.test.perplexity / self.reference.perplexity - 1.0


def compare(reference: Any, test: Any, windows: list[list[int]]) -> Comparison:
    """Perplexity of both sessions and the next-token KL between them, on the same windows."""
    import numpy as np

    kl_sum, positions = 0.0, 0
    ref_nll = test_nll = 0.0
    for w in windows:
        a = np.asarray(reference.prefill(w, all_logits=True))
        b = np.asarray(test.prefill(w, all_logits=True))
        ref_nll += window_nll(a, w)
        test_nll += window_nll(b, w)
        kl_sum += next_token_kl(a[: len(w) - 1], b[: len(w) - 1]) * (len(w) - 1)
        positions += len(w) - 1
    reference.reset()
    test.reset()

    def result(nll: float, session: Any) -> Perplexity:
        return Perplexity(math.exp(nll / positions), nll, positions, len(windows), session.runtime)

    return Comparison(result(ref_nll, reference), result(test_nll, test), kl_sum / positions)


def export_windows(tokenizer: Any, text: HeldoutText | None, context: int,
                   max_tokens: int = EVAL_TOKENS) -> tuple[list[list[int]], HeldoutText, int] | None:
    """The windows an export scores (``text``, else edgeq's held-out text), the text and the
    window size; None when there is nothing to score (``max_tokens`` 0, or no tokenizer for
    edgeq's own text). A user's text that cannot be scored is a ``ConfigError``."""
    if max_tokens < 1:
        return None
    if tokenizer is None:
        if text is not None:
            raise ConfigError("--eval-text needs the model's tokenizer, and this model ships none",
                              "export a model directory with its tokenizer files, or drop --eval-text")
        return None
    window = min(context, EVAL_WINDOW)
    bos = added_bos(tokenizer)
    if window < 2 + (bos is not None):
        return None
    held = text if text is not None else heldout_text()
    windows = heldout_windows(hf_tokenize(tokenizer), window, bos=bos, max_tokens=max_tokens, text=held.text)
    if not windows:
        if text is not None:
            raise ConfigError(f"{text.source} gives fewer than two tokens to score", "pass a longer text")
        return None
    return windows, held, window


def score_artifact(session: Any, model: Any, windows: list[list[int]], text: HeldoutText, window: int) -> dict[str, Any]:
    """The manifest's ``llm.perplexity``: ``session``'s perplexity on ``windows`` (cut from
    ``text`` at ``window`` tokens) and the eager fp32 ``model``'s on the same windows."""
    got = perplexity(session, windows)
    ref = eager_perplexity(model, windows)
    return {"perplexity": got.perplexity, "reference_perplexity": ref.perplexity,
            "increase": got.perplexity / ref.perplexity - 1.0, "reference": REFERENCE, "tokens": got.tokens,
            "windows": got.windows, "window": window, "text": text.source, "text_sha256": text.sha256,
            "python": text.python, "runtime": got.runtime}
