"""An ``LMSession`` over a GGUF decoder LLM in llama.cpp (xllamacpp's in-process server).

xllamacpp exposes llama.cpp's server, not its low-level context: each step is one
completion request over the whole token sequence so far with ``cache_prompt`` (the server
keeps the KV cache of the common prefix and evaluates only the new tokens, plus the last
one again for its logits), ``n_predict`` 1, and ``n_probs`` = the vocabulary, so the
response holds the log-probabilities of every next token computed by llama.cpp from its
logits (``post_sampling_probs`` off: a softmax over the raw logits). A whole row costs the
server ~0.5 s of JSON at a 49k vocabulary (SmolLM2) where llama.cpp's decode step takes
~5 ms, so the session takes ``top=k`` (``partial_rows``): the ``k`` most likely tokens'
exact log-probabilities, the floor elsewhere, which is what greedy generation reads; and
perplexity reads each next token's log-probability (``next_token_log_probs``): asked among
the ``SCORE_TOP`` most likely, and with a whole row only where the token is not among them. The session returns
those log-probabilities: logits up to a constant per position, which every consumer
(argmax, softmax, KL, perplexity) is invariant to. A logit bias makes the server sample a
plain ASCII token (``edgeq.lm``'s ``plain_token``): it holds back the probabilities of a
token that ends inside a UTF-8 character, and the sampled token is discarded anyway.
Probabilities that underflow float32 come back as the smallest normal float's log.

The model file is untrusted: its header is read with edgeq's bounded GGUF reader and its
``edgeq.lm`` metadata checked before llama.cpp opens it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgeq.backends.lm_meta import read_lm_meta
from edgeq.errors import ArtifactError, RunError, describe

_FLOOR = math.log(1.1754944e-38)  # float32's smallest normal: the log of an underflowed probability
SCORE_TOP = 64  # tokens asked for per position when scoring text (a whole row only when the next token is not among them)


class LlamaCppSession:
    """One conversation's decoder state in llama.cpp (``edgeq.llm.session.LMSession``)."""

    returns_log_probs = True  # rows are log-softmax(logits): verification compares them with the reference's
    partial_rows = True  # prefill/decode take top=k (see the module docstring)

    def __init__(self, server: Any, meta: dict[str, Any], runtime: str) -> None:
        self._server = server
        self.max_context: int = meta["max_context"]
        self.vocab_size: int = meta["vocab_size"]
        self._plain = meta["plain_token"]
        self.runtime = runtime
        self._ids: list[int] = []
        self.timings: list[dict[str, Any]] = []  # the server's own per-request timings

    @property
    def length(self) -> int:
        return len(self._ids)

    def reset(self) -> None:
        self._ids = []

    def prefill(self, token_ids: list[int], *, all_logits: bool = False, top: int | None = None) -> Any:
        """Start from an empty cache and feed the prompt; with ``all_logits`` one row per position
        (the prefix grows one token per request, the server reusing the cached prefix), whole
        rows; else the next token's row, with ``top`` its ``top`` most likely tokens only."""
        import numpy as np

        ids = [int(t) for t in token_ids]
        if not ids:
            raise RunError("the prompt has no tokens", "give a non-empty prompt")
        self._check(ids, 0)
        self.reset()
        if not all_logits:
            out = self._step(ids, top)
            self._ids = ids
            return out
        rows = [self._step(ids[: i + 1]) for i in range(len(ids))]
        self._ids = ids
        return np.stack(rows)

    def next_token_log_probs(self, token_ids: list[int]) -> Any:
        """``log p(ids[i + 1] | ids[:i + 1])`` for each position (teacher-forced, from an empty
        cache): each step asks for the ``SCORE_TOP`` most likely tokens, and again for the whole
        row when the next token is not among them (the server re-evaluates only the last token)."""
        import numpy as np

        ids = [int(t) for t in token_ids]
        if len(ids) < 2:
            raise RunError("scoring needs at least two tokens", "give a longer text")
        self._check(ids, 0)
        self.reset()
        out = np.empty(len(ids) - 1, dtype=np.float64)
        for i in range(len(ids) - 1):
            row = self._step(ids[: i + 1], SCORE_TOP)
            if row[ids[i + 1]] <= _FLOOR:
                row = self._step(ids[: i + 1])
            out[i] = row[ids[i + 1]]
        self._ids = ids
        return out

    def decode(self, token_id: int, *, top: int | None = None) -> Any:
        """Append one token; return the next token's log-probabilities (with ``top``, of the
        ``top`` most likely tokens only)."""
        ids = self._ids + [int(token_id)]
        self._check([int(token_id)], len(self._ids))
        out = self._step(ids, top)
        self._ids = ids
        return out

    def close(self) -> None:
        self._server = None

    def _check(self, ids: list[int], held: int) -> None:
        if self._server is None:
            raise RunError("the session is closed", "open the artifact again")
        if held + len(ids) > self.max_context:
            raise RunError(f"{held + len(ids)} tokens exceed the artifact's max context of {self.max_context}",
                           "shorten the prompt or lower --max-new-tokens, or re-export with a larger --max-context")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RunError(f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}",
                           "use the artifact's own tokenizer")

    def _step(self, ids: list[int], top: int | None = None) -> Any:
        import numpy as np

        wanted = self.vocab_size if top is None else max(1, min(int(top), self.vocab_size))
        request = {"prompt": ids, "n_predict": 1, "temperature": 0.0, "n_probs": wanted,
                   "cache_prompt": True, "ignore_eos": True, "logit_bias": [[self._plain, 1e9]],
                   "post_sampling_probs": False}
        try:
            response = self._server.handle_completions(request)
        except Exception as exc:
            raise RunError(f"llama.cpp failed to run the LM: {describe(exc, 200)}",
                           "re-export the artifact; re-run with --debug for details") from exc
        try:
            if "error" in response:
                raise ValueError(str(response["error"])[:200])
            entries = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            self.timings.append(response.get("timings", {}))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RunError(f"llama.cpp returned no next-token probabilities ({describe(exc, 120)})",
                           "re-run with --debug for details") from None
        out = np.full(self.vocab_size, _FLOOR, dtype=np.float32)
        for e in entries:
            i, lp = int(e["id"]), float(e["logprob"])
            if 0 <= i < self.vocab_size and math.isfinite(lp):
                out[i] = max(lp, _FLOOR)
        return out


def runtime_name() -> str:
    import xllamacpp

    return f"llama.cpp via xllamacpp {xllamacpp.__version__} (CPU)"


def read_meta(path: Path) -> dict[str, Any]:
    """The ``edgeq.lm`` metadata of an edgeq GGUF, read with the bounded header reader and checked."""
    from edgeq.backends.gguf.writer import GGUF_META_KEY, GGUF_META_VERSION
    from edgeq.errors import ModelLoadError
    from edgeq.models.gguf_header import read_gguf_header

    hint = "re-export it with 'edgeq export' to a gguf target"
    try:
        header = read_gguf_header(path)
    except ModelLoadError as exc:
        raise ArtifactError(f"{path} is not a readable GGUF: {exc}",
                            hint) from None
    meta = read_lm_meta(header.metadata.get(GGUF_META_KEY), path, GGUF_META_KEY, GGUF_META_VERSION,
                        {"max_context": (1, 1 << 24), "vocab_size": (1, 1 << 24), "plain_token": (0, 1 << 24)}, hint)
    if meta["plain_token"] >= meta["vocab_size"]:
        raise ArtifactError(f"{path}'s {GGUF_META_KEY} metadata names a token outside its vocabulary", hint)
    declared = header.metadata.get(f"{header.architecture}.vocab_size")
    if declared is not None and declared != meta["vocab_size"]:
        raise ArtifactError(f"{path}'s vocabulary ({declared}) differs from its {GGUF_META_KEY} metadata", hint)
    return meta


def _params(path: Path, meta: dict[str, Any], threads: int) -> Any:
    import os

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = meta["max_context"]
    params.n_batch = meta["max_context"]  # a prompt is one batch, as the other formats' prefill
    params.n_ubatch = meta["max_context"]
    params.n_parallel = 1
    params.warmup = False
    n = threads or (os.cpu_count() or 1)
    params.cpuparams.n_threads = n
    params.cpuparams_batch.n_threads = n
    params.cache_ram_mib = 0  # no server-side copies of past prompts' KV states: one conversation
    params.fit_params = False  # no trial load to fit the context to free memory: the artifact's context is fixed
    if os.environ.get("EDGEQ_DEBUG") != "1":
        params.verbosity = -1
    return params


# llama.cpp's log lines for what it allocates at context creation (MiB, two decimals)
_BUFFER_LINES = {"kv": "KV buffer size", "compute": "compute buffer size", "output": "output buffer size",
                 "repack": "REPACK model buffer size"}
_BUFFERS_ALWAYS = ("kv", "compute")  # must be in the log; the others count when logged


def reserved_buffers(model_file: Path, threads: int = 0) -> dict[str, int]:
    """What llama.cpp allocates for ``model_file`` at its artifact's context, as llama.cpp reports
    it when it creates the context: bytes of the KV cache (``kv``, at llama.cpp's context, which
    it rounds up to 256 cells), the compute buffers (``compute``, planned for the largest batch),
    the logits (``output``) and weights repacked beside the mapped file (``repack``)."""
    import os
    import re
    import sys
    import tempfile

    import xllamacpp

    path = Path(model_file)
    meta = read_meta(path)
    params = _params(path, meta, threads)
    params.verbosity = 4  # info and above: the buffer lines
    found = {k: 0 for k in _BUFFER_LINES}
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            server = xllamacpp.Server(params)
            session = LlamaCppSession(server, meta, runtime_name())
            session._step([meta["plain_token"]])
            del session, server
            text = _logged(log, [_BUFFER_LINES[k] for k in _BUFFERS_ALWAYS])
        except Exception as exc:
            raise ArtifactError(f"llama.cpp cannot load {path}: {describe(exc, 200)}", "re-run 'edgeq export'") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    for key, label in _BUFFER_LINES.items():
        for m in re.finditer(re.escape(label) + r"\s*=\s*([0-9.]+) MiB", text):
            found[key] += int(float(m.group(1)) * 2**20)
    if not all(found[k] for k in _BUFFERS_ALWAYS):
        raise ArtifactError(f"llama.cpp did not report its buffers for {path}", "re-run with --debug")
    return found


def _logged(log: Any, labels: list[str], wait_s: float = 5.0) -> str:
    """What llama.cpp has written to ``log`` once every one of ``labels`` is in it, or after
    ``wait_s``: llama.cpp logs from a thread of its own, whose lines can land after the call
    that caused them returns (the file descriptor must stay redirected until they have)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        log.seek(0)
        text = log.read(1 << 24).decode("utf-8", "replace")
        if all(label in text for label in labels) or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


def open_lm(artifact_dir: Path | str, model_file: Path | str | None = None, *, threads: int = 0) -> LlamaCppSession:
    """Open an edgeq GGUF in llama.cpp: ``open_lm(model_file)`` or ``open_lm(artifact_dir, model_file)``."""
    import xllamacpp

    from edgeq.backends import silence_native_stderr

    path = Path(artifact_dir) if model_file is None else Path(artifact_dir) / model_file
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist", "give an artifact directory written by 'edgeq export' to a gguf target")
    meta = read_meta(path)
    params = _params(path, meta, threads)
    try:
        with silence_native_stderr():
            server = xllamacpp.Server(params)
    except Exception as exc:
        raise ArtifactError(f"llama.cpp cannot load {path}: {describe(exc, 200)}",
                            "the file is corrupt or not a GGUF llama.cpp reads; re-run 'edgeq export'") from None
    session = LlamaCppSession(server, meta, runtime_name())
    # One step at once: it checks the model runs, and a server destroyed before its first
    # request can hang in llama.cpp's shutdown when torch's OpenMP pool is in the process.
    session._step([meta["plain_token"]])
    session.timings.clear()
    return session
