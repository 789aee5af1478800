"""Writing a file so that readers see the old content or the new, never half of it.

The one atomic-write helper of edgeq (``edgeq.artifact`` stages whole directories the
same way; the standalone ``edgeq/profiling/runner.py``, copied alone onto boards, keeps
its own few lines for its ``--json-out``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from edgeq.errors import OutputError


def write_text_atomic(path: Path, text: str, *, hint: str = "choose a writable location") -> None:
    """Write ``text`` to ``path`` via a temporary file beside it and a rename; the file gets
    the umask's mode (not mkstemp's 0600). Disk full is an ``OutputError``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror})", hint) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"no space left on device while writing {path}", "free some disk space") from None
        raise


def umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    current = os.umask(0o022)
    os.umask(current)
    return current
