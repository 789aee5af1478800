"""Capture a module as a torch.export ExportedProgram, with errors a user can act on."""

from __future__ import annotations

from typing import Any

from edgeq.errors import ExportError, describe


def capture(module: Any, example_inputs: tuple[Any, ...], what: str = "the model") -> Any:
    """``torch.export.export`` (non-strict); failures become one-line ``ExportError``s."""
    import torch

    try:
        with torch.no_grad():
            return torch.export.export(module, example_inputs, strict=False)
    except Exception as exc:  # torch raises many types (UserError, GuardOnDataDependent…, RuntimeError)
        raise ExportError(
            f"torch.export cannot capture {what}: {describe(exc)}",
            "make forward() free of data-dependent Python control flow and non-tensor side effects "
            "(see https://pytorch.org/docs/stable/export.html), or re-run with --debug for details",
        ) from exc
