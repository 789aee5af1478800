"""The tensors a ``.pt2`` carries, built without unpickling anything from the file.

Every weight and constant is built from raw bytes with ``torch.frombuffer``; the configs must
say so (no ``use_pickle``, no custom or opaque objects) and each view must fit its entry. The
example inputs, the one pickle in a plain archive, are opcode-scanned (tensor rebuild globals
only), re-zipped under canonical names and read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import math
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError
from edgeq.models.pt2.archive import INNER, PAYLOAD, checked_entries, read_entry
from edgeq.models.pt2.limits import MAX_DIMS, MAX_ELEMENTS, MAX_SAMPLE_INPUTS_BYTES, MAX_TOTAL_BYTES, NO_PICKLE, bad, first_line
from edgeq.models.pt2.program import FQN

# torch.save of a tuple of plain tensors uses these and nothing else
_PICKLE_OPS = {
    "PROTO", "GLOBAL", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "MEMOIZE", "MARK", "STOP", "BINUNICODE",
    "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE",
    "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_LIST", "APPEND", "APPENDS",
    "SETITEM", "SETITEMS", "BINPERSID", "REDUCE",
}
_PICKLE_GLOBALS = {"torch._utils _rebuild_tensor_v2", "collections OrderedDict"} | {
    f"torch {n}Storage" for n in
    "Float Double Half BFloat16 Long Int Short Char Byte Bool ComplexFloat ComplexDouble".split()}


def payloads(path: Path, doc: Any, directory: str, read: Any, entries: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Tensors named by a weights/constants config, built from raw bytes; and the entries used."""
    import torch
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    config = doc.get("config") if isinstance(doc, dict) and set(doc) == {"config"} else None
    if not isinstance(config, dict):
        raise bad(path, f"{directory.split('/')[1]} config is malformed")
    flat: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for fqn, meta in config.items():
        if not FQN.fullmatch(fqn):
            raise bad(path, f"payload name '{fqn[:80]}' is not a parameter path")
        if not isinstance(meta, dict) or not set(meta) <= {"path_name", "is_param", "use_pickle", "tensor_meta"}:
            raise bad(path, f"payload '{fqn}' is malformed")
        entry = directory + str(meta.get("path_name"))
        if meta.get("use_pickle") is not False:
            raise bad(path, f"payload '{fqn}' is a pickled object", NO_PICKLE)
        if not PAYLOAD.fullmatch(entry):
            raise bad(path, f"payload '{fqn}' is stored at '{entry[:80]}', not as a plain tensor in {directory}",
                      NO_PICKLE)
        if entry not in entries:
            raise bad(path, f"payload '{fqn}' refers to missing entry '{entry}'")
        dtype_code, sizes, strides, offset, requires_grad = _tensor_meta(path, fqn, meta.get("tensor_meta"))
        dtype = _SERIALIZE_TO_TORCH_DTYPE.get(dtype_code)
        if dtype is None:
            raise bad(path, f"payload '{fqn}' has unknown dtype {dtype_code}")
        if entry not in flat:
            data = read(entry, MAX_TOTAL_BYTES)
            if len(data) % torch.empty((), dtype=dtype).element_size():
                raise bad(path, f"entry '{entry}' is not a whole number of {dtype} elements")
            flat[entry] = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype) if data else \
                torch.empty(0, dtype=dtype)
        base = flat[entry]
        if base.dtype != dtype:
            raise bad(path, f"payload '{fqn}' reads '{entry}' as a second dtype")
        if math.prod(sizes) > MAX_ELEMENTS:
            raise bad(path, f"payload '{fqn}' claims {math.prod(sizes)} elements")
        if all(sizes) and offset + sum((n - 1) * s for n, s in zip(sizes, strides)) >= base.numel():
            raise bad(path, f"payload '{fqn}' reaches past the end of '{entry}'")
        tensor = torch.as_strided(base, sizes, strides, offset if all(sizes) else 0)
        out[fqn] = torch.nn.Parameter(tensor, requires_grad=requires_grad) if meta.get("is_param") is True else tensor
    return out, {directory + str(m["path_name"]) for m in config.values()}


def _tensor_meta(path: Path, fqn: str, meta: Any) -> tuple[int, list[int], list[int], int, bool]:
    def ints(items: Any) -> list[int]:
        if not isinstance(items, list) or len(items) > MAX_DIMS:
            raise ValueError
        return [_as_int(i) for i in items]

    try:
        if meta["device"] != {"type": "cpu", "index": None} or meta["layout"] != 7:  # 7: torch.strided
            raise bad(path, f"payload '{fqn}' is not a dense CPU tensor", "move the program to CPU and re-save it")
        sizes, strides = ints(meta["sizes"]), ints(meta["strides"])
        if len(sizes) != len(strides) or not isinstance(meta["dtype"], int):
            raise ValueError
        return meta["dtype"], sizes, strides, _as_int(meta["storage_offset"]), meta["requires_grad"] is True
    except (KeyError, TypeError, ValueError):
        raise bad(path, f"payload '{fqn}' has malformed tensor metadata") from None


def _as_int(item: Any) -> int:
    if not isinstance(item, dict) or set(item) != {"as_int"} or type(item["as_int"]) is not int:
        raise ValueError
    if not 0 <= item["as_int"] < 1 << 40:
        raise ValueError
    return item["as_int"]


def example_inputs(path: Path, data: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The saved example inputs: plain tensors, through the weights_only unpickler only."""
    import torch

    if not data.startswith(b"PK\x03\x04"):
        raise bad(path, "the example inputs are a bare pickle, not a torch.save archive", NO_PICKLE)
    where = "example inputs: "
    with zipfile.ZipFile(io.BytesIO(data)) as inner:
        found = checked_entries(path, inner, len(data), where)
        for name in found:
            if not INNER.fullmatch(name):
                raise bad(path, f"{where}unexpected entry '{name}'")
        if "data.pkl" not in found:
            raise bad(path, f"{where}no data.pkl")
        files = {n: read_entry(path, inner, info, MAX_SAMPLE_INPUTS_BYTES) for n, info in found.items()}
    _scan_pickle(path, files["data.pkl"])
    canonical = io.BytesIO()  # torch's reader sees only the names checked above
    with zipfile.ZipFile(canonical, "w", zipfile.ZIP_STORED) as out:
        for name, content in files.items():
            out.writestr(f"archive/{name}", content)
    canonical.seek(0)
    try:
        loaded = torch.load(canonical, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError, RuntimeError…
        raise bad(path, f"{where}{first_line(exc)}", NO_PICKLE) from None
    ok = (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], tuple)
          and isinstance(loaded[1], dict) and len(loaded[0]) + len(loaded[1]) <= 1024
          and all(type(t) in (torch.Tensor, bool, int, float, type(None)) for t in (*loaded[0], *loaded[1].values()))
          and all(type(k) is str for k in loaded[1]))
    if not ok:
        raise bad(path, f"{where}not tensors, numbers, booleans or None", NO_PICKLE)
    return loaded


def _scan_pickle(path: Path, data: bytes) -> None:
    """Refuse any opcode or global that a torch.save of plain tensors would not write."""
    try:
        end = -1
        for op, arg, pos in pickletools.genops(data):
            if op.name not in _PICKLE_OPS:
                raise bad(path, f"example inputs use pickle opcode {op.name}", NO_PICKLE)
            if op.name == "GLOBAL" and arg not in _PICKLE_GLOBALS:
                raise bad(path, f"example inputs pickle '{str(arg)[:80]}', not a tensor", NO_PICKLE)
            end = pos
        if end + 1 != len(data):
            raise bad(path, "example inputs have data after the pickle's end", NO_PICKLE)
    except ModelLoadError:
        raise
    except Exception as exc:  # ValueError on a malformed opcode stream
        raise bad(path, f"example inputs are not a valid pickle ({first_line(exc)})", NO_PICKLE) from None
