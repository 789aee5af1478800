"""``edgeq run``: generate text from an LLM artifact in its real runtime.

>>> from edgeq.llm.run import open_artifact, run_prompt  # doctest: +SKIP
>>> lm = open_artifact("dist/smollm2-x86")  # doctest: +SKIP
>>> result = run_prompt(lm, "What is the capital of France?", chat=True, on_text=print)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeq.errors import ArtifactError, ConfigError, RunError
from edgeq.llm.generate import GenerationConfig, GenerationResult, generate


@dataclass
class LMArtifact:
    """An opened LLM artifact: its manifest, session and tokenizer."""

    path: Path
    manifest: Any
    session: Any
    tokenizer: Any

    def close(self) -> None:
        self.session.close()


def open_artifact(path: str | Path) -> LMArtifact:
    """Open an artifact written by ``edgeq export`` for a causal LM (hashes checked)."""
    from edgeq.artifact import read_artifact
    from edgeq.backends import get_backend

    path = Path(path)
    manifest, model_file = read_artifact(path)
    root = model_file.parent
    if manifest.llm is None:
        raise ArtifactError(f"{root} is not an LLM artifact (task {manifest.model.task}, no KV-cache decoder)",
                            "'edgeq run' generates text with artifacts exported from a causal LM")
    tokenizer = _tokenizer(root, manifest)
    be = get_backend(manifest.target.format)
    if not hasattr(be, "open_lm"):
        raise ArtifactError(f"this edgeq cannot run {manifest.target.format} LLM artifacts",
                            "use an edgeq with that format's LLM runtime")
    return LMArtifact(path=root, manifest=manifest, session=be.open_lm(model_file), tokenizer=tokenizer)


def encode_prompt(lm: LMArtifact, prompt: str, *, chat: bool) -> list[int]:
    """Token ids of ``prompt``, wrapped in the artifact's chat template with ``chat``."""
    tok = lm.tokenizer
    if chat:
        if not getattr(tok, "chat_template", None):
            raise ArtifactError(f"{lm.path} has no chat template (no chat_template in its tokenizer files)",
                                "run without --chat, or export a model that ships a chat template")
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding in newer transformers
            ids = ids["input_ids"]
    else:
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
    ids = [int(i) for i in ids]
    context = lm.session.max_context
    if len(ids) >= context:
        raise RunError(f"the prompt is {len(ids)} tokens, and the artifact's context holds {context} "
                       "(with room for at least one new token)",
                       "shorten the prompt, or re-export with a larger --max-context")
    return ids


def run_prompt(lm: LMArtifact, prompt: str, config: GenerationConfig = GenerationConfig(), *, chat: bool = False,
               on_text: Callable[[str], None] | None = None) -> tuple[str, GenerationResult]:
    """Generate after ``prompt``; ``on_text`` gets each new piece of decoded text as it comes."""
    config.check()
    ids = encode_prompt(lm, prompt, chat=chat)
    streamer = _Streamer(lm.tokenizer, on_text)
    result = generate(lm.session, ids, config, eos_ids=lm.manifest.llm.eos_token_ids, on_token=streamer.add)
    streamer.finish()
    return streamer.text, result


class _Streamer:
    """Turns tokens into text as they come: decodes everything so far and emits what is
    new, holding back an incomplete UTF-8 sequence (shown as U+FFFD) until it completes."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[int] = []
        self.text = ""

    def add(self, token: int) -> None:
        self.tokens.append(token)
        self._emit(final=False)

    def finish(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if text.startswith(self.text):
            new = text[len(self.text):]
        else:  # a tokenizer that re-spaces earlier text: emit nothing twice
            new = ""
        self.text = text
        if new and self.on_text is not None:
            self.on_text(new)


def _tokenizer(root: Path, manifest: Any) -> Any:
    files = manifest.llm.tokenizer_files
    if not files or not any((root / f).exists() for f in files):
        raise ArtifactError(f"{root} has no tokenizer (tokenizer.json or similar) beside its model",
                            "export from a model directory that ships its tokenizer files")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(root)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ArtifactError(f"the tokenizer in {root} cannot be loaded ({type(exc).__name__}: "
                            f"{text[0][:160] if text else ''})", "re-run 'edgeq export'") from None


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def check_sampling(temperature: float, top_p: float, seed: int | None) -> None:
    """Options that only mean something when sampling are refused under greedy decoding."""
    if temperature == 0.0 and (top_p != 1.0 or seed is not None):
        raise ConfigError("--top-p and --seed apply to sampling, and --temperature 0 (the default) is greedy",
                          "pass --temperature T > 0 to sample")
