"""Shared checks for the hostile-input suites (``tests/test_hostile_*.py``).

Every bad input must end the same way: exit code 2, exactly one ``error:`` line on stderr
naming the input and the fix, no traceback, and nothing written, changed or left behind.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def assert_clean_failure(proc: subprocess.CompletedProcess, expected: str | tuple[str, ...], *,
                         code: int = 2) -> str:
    """``proc`` failed as a user error should; returns its error line.

    ``expected``: text the error line must contain (any of them, if a tuple).
    """
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, f"exit {proc.returncode}, want {code}:\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"want one error line, got {len(errors)}:\n{proc.stderr[-2000:]}"
    assert lines[-1] == errors[0], f"the error line must come last:\n{proc.stderr[-2000:]}"
    wanted = (expected,) if isinstance(expected, str) else expected
    assert any(w in errors[0] for w in wanted), f"{wanted!r} not in {errors[0]!r}"
    assert "internal error" not in errors[0], errors[0]
    return errors[0]


def tree_state(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under ``root`` with its size, mode and (for small files) content."""
    state: dict[str, tuple[int, int, bytes | None]] = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        content = p.read_bytes() if p.is_file() and not p.is_symlink() and st.st_size < 1 << 20 else None
        state[p.relative_to(root).as_posix()] = (st.st_size, st.st_mode, content)
    return state


def assert_tree_unchanged(root: Path, before: dict[str, tuple[int, int, bytes | None]],
                          allow: tuple[str, ...] = ()) -> None:
    """Nothing under ``root`` was added, removed or modified (paths starting with ``allow`` excepted)."""
    after = tree_state(root)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not k.startswith(allow))
    assert not changed, f"changed on disk: {changed[:20]}"
