"""The guarded window in which torch's serde deserializes a checked program.

The second line of defence, after :mod:`edgeq.models.pt2.tensors` and :mod:`edgeq.models.pt2.program`: inside
:func:`only_checked_deserialization` the unpickling entry points of :mod:`pickle`, ``torch.load``
and torch's serde raise, and sympy parses only expressions that pass
:func:`edgeq.models.pt2.program.check_expr`. ``modularize`` opens it too, because
``ExportedProgram.module()`` generates and execs code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeq.models.pt2.limits import NO_PICKLE, bad
from edgeq.models.pt2.program import check_expr

_LOADING: list[Path] = []  # the file being deserialized, while torch's serde runs


def _refuse_unpickling(*_: Any, **__: Any) -> Any:
    raise bad(_LOADING[-1], "torch tried to unpickle part of the file", NO_PICKLE)


def _guarded(base: type) -> type:
    """A subclass of ``base`` whose ``load`` refuses while a .pt2 is deserialized. A class, not a
    function, because modules imported during that time may subclass ``pickle.Unpickler``."""
    def load(self: Any) -> Any:
        if _LOADING:
            _refuse_unpickling()
        return base.load(self)

    return type(base.__name__, (base,), {"load": load, "__module__": "pickle"})


@contextlib.contextmanager
def only_checked_deserialization(path: Path) -> Iterator[None]:
    """While torch's serde runs: every unpickler raises, sympy parses only checked strings.

    The archive has already been reduced to tensors and checked JSON, so none of these should
    be reached; if torch took an unexpected branch, it fails here instead of running the file."""
    import pickle

    import sympy.parsing.sympy_parser as sympy_parser
    import torch
    import torch._export.serde.serialize as serde

    def artifact(serialized: Any) -> Any:  # serde is given tensors; bytes here mean a pickle
        return serialized if isinstance(serialized, (dict, tuple)) else _refuse_unpickling()

    original_parse = sympy_parser.parse_expr

    def parse_checked(text: Any, *args: Any, **kwargs: Any) -> Any:
        check_expr(path, str(text))
        return original_parse(text, *args, **kwargs)

    patches: list[tuple[Any, str, Any]] = [(pickle, n, _refuse_unpickling) for n in ("load", "loads", "_load", "_loads")]
    patches += [(pickle, "Unpickler", _guarded(pickle.Unpickler)), (pickle, "_Unpickler", _guarded(pickle._Unpickler)),
                (torch, "load", _refuse_unpickling), (torch.serialization, "load", _refuse_unpickling),
                (torch._C, "_pickle_load_obj", _refuse_unpickling), (serde, "deserialize_torch_artifact", artifact),
                (sympy_parser, "parse_expr", parse_checked)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    _LOADING.append(path)
    try:
        for obj, name, replacement in patches:
            setattr(obj, name, replacement)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        _LOADING.pop()
