"""Bounds on what a ``.pt2`` file controls, and how a refusal is worded.

Every check in :mod:`edgeq.models.pt2` refuses through :func:`bad`, so each refusal is one
``ModelLoadError`` that names the file and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import ModelLoadError

# Bounds on what the file controls. Edge models are at most a few GB; a plain program's
# JSON is kilobytes to a few MB and about 10 levels deep.
MAX_FILE_BYTES = 8 << 30
MAX_ENTRIES = 16_384
MAX_DIRECTORY_BYTES = 16 << 20  # 16,384 entries with names of up to ~1 KB
MAX_TOTAL_BYTES = 8 << 30
MAX_JSON_BYTES = 64 << 20
MAX_SAMPLE_INPUTS_BYTES = 1 << 30
MAX_SMALL_BYTES = 256  # archive_format, versions, byteorder, serialization id
MAX_RATIO = 64  # decompressed / compressed, for deflated entries over 1 MiB
MAX_JSON_DEPTH = 64
MAX_EXPR_CHARS = 1024
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 34  # per tensor view; strides of 0 could otherwise claim any size

RESAVE = "re-save the program with torch.export.save"
NO_PICKLE = "edgeq does not unpickle arbitrary objects; re-export the program with plain tensors and torch.export.save"


def bad(path: Path, what: str, hint: str = RESAVE) -> ModelLoadError:
    """The error for a ``.pt2`` file refused because of ``what``."""
    return ModelLoadError(f"{path} is not a valid .pt2 file ({what})", hint)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 120 characters), or its type's name."""
    text = str(exc).strip()
    return (text.splitlines()[0][:120] if text else type(exc).__name__)
