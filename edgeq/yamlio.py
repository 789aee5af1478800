"""Read YAML with line numbers kept, so errors can point at the offending line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError

LineMap = dict[tuple[str | int, ...], int]


def read_yaml(path: Path) -> tuple[Any, LineMap]:
    """Parse ``path``; return the data and a map from key path to 1-based line number."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})", "check the file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}", "fix the YAML at that line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}", "fix the YAML") from None
    lines: LineMap = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: Any, prefix: tuple[str | int, ...], out: LineMap) -> None:
    import yaml

    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            out[path] = key.start_mark.line + 1
            _collect_lines_children(value, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_lines(item, prefix + (i,), out)


def _collect_lines_children(node: Any, path: tuple[str | int, ...], out: LineMap) -> None:
    import yaml

    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        keep = out[path]
        _collect_lines(node, path, out)
        out[path] = keep  # a key's line is where the key is written, not its value


def line_of(lines: LineMap, loc: tuple[str | int, ...]) -> int | None:
    """The line of ``loc`` or of its closest ancestor that has one."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
