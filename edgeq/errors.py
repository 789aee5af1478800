"""Errors edgeq raises for problems a user can fix.

Every ``EdgeqError`` carries a one-line message saying what is wrong and a hint saying
what to do. The CLI prints ``error: <message> (<hint>)`` and exits with code 2; no
traceback is shown unless ``--debug`` is given.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """A problem with the user's input or environment, with a fix to suggest."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f" ({self.hint.rstrip('.')})"
        return " ".join(text.split())  # collapse newlines: always one line


class ConfigError(EdgeqError):
    """A profile, target or plan file is malformed or names something unknown."""


class ModelLoadError(EdgeqError):
    """The model source cannot be found or loaded."""


class ExportError(EdgeqError):
    """The model cannot be captured, quantized or lowered for the target."""


class BackendUnavailableError(EdgeqError):
    """A delegate or runtime the target asks for is not installed here."""


class OutputError(EdgeqError):
    """The output location cannot be written, or already exists."""


class ArtifactError(EdgeqError):
    """An artifact directory is missing, corrupt or of an unexpected kind."""


class Interrupted(BaseException):
    """SIGINT / SIGTERM arrived: unwind (staging directories are removed on the way out)
    and exit 128 + the signal number. A ``BaseException`` so no ``except Exception``
    in edgeq or a library can swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or anything in its chain (a library re-raising it as its own error)
    is the disk running out of space."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe(exc: BaseException, limit: int = 240) -> str:
    """``"TypeName: first line of the message"``, cut at a word boundary with an ellipsis
    when longer than ``limit`` characters (never mid-word, never several lines)."""
    import re

    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    # Libraries point at log output edgeq hides ("see the warnings above"): drop those
    # sentences and say where the details are instead.
    kept = [s for s in re.split(r"(?<=[.!?])\s+", text) if not re.search(r"\babove\b", s, re.I)]
    if len(kept) < len(re.split(r"(?<=[.!?])\s+", text)):
        text = " ".join(kept + ["Details are in the log shown with --debug."])
    text = clip(text, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def clip(text: str, limit: int = 300) -> str:
    """``text`` if it fits in ``limit`` characters, else cut at a word boundary + " …"."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    import difflib

    by_lower = {c.lower(): c for c in sorted(choices, reverse=True)}
    close = difflib.get_close_matches(str(name).lower(), sorted(by_lower), n=1, cutoff=0.6)
    return f"; did you mean '{by_lower[close[0]]}'?" if close else ""


class RunError(EdgeqError):
    """An artifact cannot run the request (e.g. more tokens than its context holds)."""
