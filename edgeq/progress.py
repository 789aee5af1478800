"""Step timing and progress display for slow operations.

``Steps`` times each named step (the timings go into the manifest) and, unless quiet,
shows a live spinner on stderr and a line with the elapsed time when the step ends.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Steps:
    def __init__(self, show: bool = False) -> None:
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self._console = None
        if show:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator["StepInfo"]:
        info = StepInfo()
        start = time.perf_counter()
        status = self._console.status(f"{name}…", spinner="dots") if self._console else contextlib.nullcontext()
        try:
            with status:
                yield info
        except BaseException:
            if self._console:
                self._console.print(f"[red]✗[/] {name}  [dim]{time.perf_counter() - start:.1f}s[/]")
            raise
        elapsed = time.perf_counter() - start
        self.timings[name] = round(elapsed, 3)
        if self._console:
            detail = f"  [dim]{info.detail}[/]" if info.detail else ""
            self._console.print(f"[green]✓[/] {name:<34} [cyan]{elapsed:6.1f}s[/]{detail}")

    def note(self, message: str) -> None:
        """A message the user must see (e.g. a delegate fallback), kept for the summary."""
        self.notes.append(message)
        if self._console:
            self._console.print(f"[yellow]![/] {message}")


class StepInfo:
    """Filled in by the step's body: a short detail shown after the timing."""

    detail: str = ""


def quiet_libraries() -> None:
    """Keep third-party warnings and progress bars out of the user's terminal."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import sys

    if "transformers" in sys.modules:  # imported before this call: its environment was read already
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
