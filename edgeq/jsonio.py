"""Bounded JSON reading for files a user (or a downloaded model) controls.

``json.loads`` trusts its input: a multi-gigabyte file is read whole, and nesting a few
thousand levels deep ends in ``RecursionError``. ``read_json`` caps the size, refuses deep
nesting and a top level of the wrong kind, and turns every failure into an ``EdgeqError``
(the caller picks the subclass) naming the file and the fix.

>>> config = read_json(Path("model/config.json"), expect=dict)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError, ModelLoadError

MAX_JSON_BYTES = 16 * 1024 * 1024  # the largest real tokenizer.json files are a few MB
MAX_JSON_DEPTH = 64  # real configs nest 3-5 levels


def read_json(path: Path, *, expect: type | None = dict, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH, error: type[EdgeqError] = ModelLoadError,
              fix: str = "fix or re-download the model") -> Any:
    """The parsed JSON in ``path``, or ``error`` saying what is wrong with it.

    ``expect``: the type the top level must have (``dict``, ``list``), or None for any.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror or type(exc).__name__})", fix) from None
    if len(raw) > max_bytes:
        raise error(f"{path} is larger than {max_bytes // (1024 * 1024)} MB, too large for a JSON config", fix)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text, so it is not JSON", fix) from None
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", fix) from None
    except RecursionError:
        raise error(f"{path} nests JSON too deeply", fix) from None
    if _depth_over(data, max_depth):
        raise error(f"{path} nests JSON more than {max_depth} levels deep", fix)
    if expect is not None and not isinstance(data, expect):
        kinds = {dict: "a JSON object", list: "a JSON list"}
        raise error(f"{path} must hold {kinds.get(expect, expect.__name__)}, not {_kind(data)}", fix)
    return data


def _depth_over(data: Any, limit: int) -> bool:
    """True when ``data`` nests containers more than ``limit`` deep (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _kind(data: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(data), type(data).__name__)
