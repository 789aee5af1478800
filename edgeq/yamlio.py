"""Read YAML with line numbers kept, so errors can point at the offending line."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgeq.errors import ConfigError, did_you_mean

LineMap = dict[tuple[str | int, ...], int]


MAX_YAML_BYTES = 1 << 20  # targets and plans are a few KB; a plan for a 1,000-layer model is ~100 KB
MAX_NODES = 100_000  # nodes after expanding aliases: bounds "billion laughs" and million-key files
MAX_DEPTH = 64


def read_yaml(path: Path) -> tuple[Any, LineMap]:
    """Parse ``path``; return the data and a map from key path to 1-based line number.

    The file is untrusted: its size, its node count after alias expansion and its nesting
    depth are bounded, and a mapping may not repeat a key (YAML would keep the last one
    silently). Only plain YAML types are built (no Python tags).
    """
    import yaml

    try:
        st = path.stat()
        if not path.is_file():
            raise ConfigError(f"{path}: not a regular file", "pass a YAML file")
        if st.st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {st.st_size / 2**20:.1f} MiB is over edgeq's {MAX_YAML_BYTES >> 20} MiB "
                              "limit for a YAML file", "targets and plans are small; check you passed the right file")
        with path.open("rb") as f:
            text = f.read(MAX_YAML_BYTES + 1).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})", "check the file") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_bounds(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}", "fix the YAML at that line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}", "fix the YAML") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply", "flatten the YAML") from None
    finally:
        loader.dispose()
    lines: LineMap = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return data, lines


def _check_bounds(root: Any, path: Path) -> None:
    """Walk the node graph as the data would be built (an alias re-visits what it names)."""
    import yaml

    visits = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        visits += 1
        if visits > MAX_NODES:
            raise ConfigError(f"{path}: the YAML expands to more than {MAX_NODES:,} values (aliases or a huge file)",
                              "edgeq's YAML files are small; remove the anchors/aliases")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep",
                              "flatten the YAML")
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ConfigError(f"{path}:{key.start_mark.line + 1}: key '{key.value[:80]}' is repeated "
                                          f"(first at line {seen[key.value]})", "keep one of them")
                    seen[key.value] = key.start_mark.line + 1
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)


def _collect_lines(node: Any, prefix: tuple[str | int, ...], out: LineMap) -> None:
    import yaml

    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # a complex key: schemas reject it; it has no line of its own to report
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


def validate_yaml(model: type[BaseModel], data: Any, lines: LineMap, path: Path) -> Any:
    """``model`` validated from YAML ``data``; the first problem (a misspelt key first) as one
    ``ConfigError`` naming the file and line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # A misspelt key shows up as both "unknown" and "missing": report the typo.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        loc = tuple(err["loc"])
        where = f"{path}:{line_of(lines, loc) or 1}"
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            known = _fields_at(model, loc[:-1])
            msg = f"{where}: unknown key '{dotted}'{did_you_mean(key, known)}"
            hint = f"allowed keys here: {', '.join(sorted(known))}" if known else "remove it"
        elif err["type"] == "missing":
            msg = f"{where}: missing required key '{dotted}'"
            hint = "add it"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{where}: {dotted}: {text}"
            hint = "fix the value"
            if "input" in err and not isinstance(err["input"], (dict, list)):
                msg += f" (got {err['input']!r})"
        extra = len(errors) - 1
        if extra:
            hint += f"; {extra} more problem{'s' if extra > 1 else ''} in this file"
        raise ConfigError(msg, hint) from None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model reached by following ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
