"""Saved ExportedPrograms (``.pt2``): load them without running anything they carry.

A ``.pt2`` is untrusted input, and ``torch.export.load`` is not safe on one: it unpickles
(weights and constants flagged ``use_pickle``, torchbind and opaque constants, a
``weights_only=False`` fallback for example inputs), evaluates symbolic-shape strings with
``sympy.sympify`` (``eval``), ``exec``s guard code from the file when ``program.module()`` is
called, and sets FX node names from the file that end up in generated Python source. Its C++
zip reader also looks names up case-insensitively, so what a scan sees need not be what it reads.

``safe_load`` therefore never hands the file to torch's loader or zip reader:

1. the archive is read with :mod:`zipfile` under fixed bounds (file size, entry count,
   declared and actual decompressed sizes, compression ratio); encrypted, symlink, directory
   and oddly named entries are refused, and names are compared after normalisation
   (NFC, case-fold, ``\\`` → ``/``) so no two entries can be confused;
2. the entries must be exactly those ``torch.export.save`` writes for one plain program;
3. every weight and constant is built from raw bytes with ``torch.frombuffer`` (the configs
   must say so: no ``use_pickle``, no custom or opaque objects);
4. the example inputs, the one pickle in a plain archive, are opcode-scanned (tensor rebuild
   globals only), re-zipped under canonical names and read with ``weights_only=True``;
5. the program JSON is checked (depth; aten targets, in subgraphs too; identifiers wherever FX
   writes names into generated source; symbolic expressions; no guard code; inputs are tensors
   or plain constants) and then deserialized by torch's serde from those tensors, while every
   unpickling entry point raises and sympy's string parser only accepts checked expressions.

Every refusal is a ``ModelLoadError`` naming what is wrong. ``modularize`` turns the program's
``aten.linear`` / ``aten.embedding`` / ``aten.conv2d`` calls on parameters back into
``nn.Linear`` / ``nn.Embedding`` / ``nn.Conv2d`` submodules, so the same per-layer quantization
applies as for a model given as Python code (``fc1.weight`` → ``fc1``).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import keyword
import math
import pickletools
import re
import stat
import tokenize
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

_INDEX = r"(?:0|[1-9][0-9]{0,8})"
_PAYLOAD = re.compile(rf"data/(?:weights/weight|constants/tensor)_{_INDEX}")
_SMALL = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_MODEL, _SAMPLE = "models/model.json", "data/sample_inputs/model.pt"
_WEIGHTS, _CONSTANTS = "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"
_REQUIRED = {"archive_format", "archive_version", _MODEL, _SAMPLE, _WEIGHTS, _CONSTANTS}
_INNER = re.compile(rf"data\.pkl|\.format_version|\.storage_alignment|byteorder|version|\.data/serialization_id|data/{_INDEX}")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_FQN = re.compile(r"[A-Za-z0-9_]{1,128}(?:\.[A-Za-z0-9_]{1,128}){0,63}")
_ATEN = re.compile(r"torch\.ops\.aten\.([a-z_][a-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
# aten ops that reach files or raw memory: a graph from a file must not call them
_ATEN_DENIED = re.compile(r"from_file|set_|_unsafe.*|_index_put_impl_|_local_scalar_dense_?|_nested.*|_debug.*|.*_out")
_BUILTIN_TARGETS = {f"_operator.{n}" for n in (
    "getitem add sub mul floordiv truediv mod pow neg pos abs eq ne lt le gt ge and_ or_ not_".split())} | {
    f"torch.{n}" for n in "sym_float sym_int sym_max sym_min sym_not sym_ite sym_sqrt sym_sum".split()} | {
    f"math.{n}" for n in "ceil floor trunc sqrt".split()}
# no_grad regions inside forward (e.g. rotary embeddings) export as this; its subgraph is checked like the graph
_HOP_TARGETS = {"torch.ops.higher_order.wrap_with_set_grad_enabled"}
_SYMBOL = re.compile(r"(?:s|u|zf|zuf)[0-9]{1,9}")
_SYMPY_NAMES = {
    "Symbol", "Integer", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Abs",
    "floor", "ceiling", "oo", "True", "False", "true", "false",
    "CeilDiv", "CeilToInt", "CleanDiv", "FloatPow", "FloatTrueDiv", "FloorDiv", "FloorToInt", "Identity",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "LShift", "Mod", "ModularIndexing", "PowByNatural",
    "PythonMod", "RShift", "RoundDecimal", "RoundToInt", "ToFloat", "TruncToFloat", "TruncToInt", "Where",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero",
}
_EXPR_OPS = {"+", "-", "*", "/", "//", "%", "**", "(", ")", ",", "=", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"}
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
_SPEC_IN = {"parameter", "buffer", "tensor_constant", "user_input", "constant_input"}
_CONSTANT_KINDS = {"as_none", "as_int", "as_float", "as_bool"}
_SPEC_OUT = {"user_output", "buffer_mutation", "user_input_mutation"}
_TOP_KEYS = {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers", "torch_version",
             "guards_code"}


def _bad(path: Path, what: str, hint: str = RESAVE) -> ModelLoadError:
    return ModelLoadError(f"{path} is not a valid .pt2 file ({what})", hint)


def safe_load(path: Path) -> Any:
    """The ``torch.export.ExportedProgram`` saved in ``path``, loaded without unpickling or
    executing anything from the file; a ``ModelLoadError`` for anything else.

    >>> program = safe_load(Path("model.pt2"))  # doctest: +SKIP
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} ({exc.strerror})", "check the path and its permissions") from None
    if size == 0:
        raise _bad(path, "the file is empty")
    if size > MAX_FILE_BYTES:
        raise _bad(path, f"{size} bytes, over edgeq's {MAX_FILE_BYTES >> 30} GiB limit for .pt2 files")
    try:
        with open(path, "rb") as fh:
            _check_directory_size(path, fh)
            with zipfile.ZipFile(fh) as archive:
                return _load(path, archive, size)
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, ValueError) as exc:
        raise _bad(path, _first_line(exc) or "not a zip archive") from None
    except RecursionError:
        raise _bad(path, "structure nested too deeply") from None
    except Exception as exc:  # torch rejecting a tensor or graph the checks let through: still the file's fault
        raise _bad(path, f"{type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:120] if text else type(exc).__name__)


def _check_directory_size(path: Path, fh: Any) -> None:
    """Refuse a central directory claiming too many entries before zipfile parses it."""
    end = zipfile._EndRecData(fh)  # the End Of Central Directory record (stable since Python 2)
    if end is None:
        raise _bad(path, "not a zip archive")
    if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ENTRIES:
        raise _bad(path, f"{end[zipfile._ECD_ENTRIES_TOTAL]} entries, over edgeq's limit of {MAX_ENTRIES}")
    if end[zipfile._ECD_SIZE] > MAX_DIRECTORY_BYTES:  # zipfile reads the directory, whatever the count says
        raise _bad(path, f"a {end[zipfile._ECD_SIZE]}-byte central directory, over edgeq's limit of "
                         f"{MAX_DIRECTORY_BYTES}")
    fh.seek(0)


def _entries(path: Path, archive: zipfile.ZipFile, archive_bytes: int, where: str = "") -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by normalised name relative to its one root folder, checked."""
    infos = archive.infolist()
    if not infos or len(infos) > MAX_ENTRIES:
        raise _bad(path, f"{where}{len(infos)} entries; a plain program has a few per weight")
    declared = compressed = 0
    roots: set[str] = set()
    out: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        raw = info.orig_filename
        shown = raw.encode("unicode_escape").decode("ascii")[:80]
        if info.flag_bits & 0x2041:  # encrypted, strong encryption, masked local header
            raise _bad(path, f"{where}entry '{shown}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _bad(path, f"{where}entry '{shown}' uses compression method {info.compress_type}")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG) or info.external_attr & 0x10 or raw.endswith(("/", "\\")):
            raise _bad(path, f"{where}entry '{shown}' is a symlink, directory or special file")
        if any(unicodedata.category(c)[0] == "C" for c in raw):
            raise _bad(path, f"{where}entry name '{shown}' has control or format characters")
        name = unicodedata.normalize("NFC", raw.replace("\\", "/")).casefold()
        parts = name.split("/")
        if name.startswith("/") or re.match(r"[a-z]:", name) or any(p in ("", ".", "..") for p in parts):
            raise _bad(path, f"{where}entry name '{shown}' is absolute or leaves the archive")
        if len(parts) < 2:
            raise _bad(path, f"{where}entry '{shown}' is outside the archive's root folder")
        roots.add(parts[0])
        rel = "/".join(parts[1:])
        if rel in out or len(roots) > 1:
            raise _bad(path, f"{where}entry '{shown}' duplicates another once case, Unicode form and "
                             "separators are normalised" if rel in out else f"{where}entries under several root folders")
        if not rel.isascii():
            raise _bad(path, f"{where}unexpected entry '{shown}'")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise _bad(path, f"{where}entry '{shown}' has inconsistent sizes")
        if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _bad(path, f"{where}entry '{shown}' expands {info.file_size // max(info.compress_size, 1)}x "
                             f"(a zip bomb?); edgeq allows {MAX_RATIO}x")
        declared += info.file_size
        compressed += info.compress_size
        out[rel] = info
    if declared > MAX_RATIO * archive_bytes + (1 << 20):
        raise _bad(path, f"{where}entries expand to {declared} bytes from {archive_bytes} (a zip bomb?); "
                         f"edgeq allows {MAX_RATIO}x")
    if declared > MAX_TOTAL_BYTES:
        raise _bad(path, f"{where}entries expand to {declared} bytes, over edgeq's {MAX_TOTAL_BYTES >> 30} GiB limit")
    if compressed > archive_bytes:
        raise _bad(path, f"{where}entries overlap (they claim more data than the archive holds)")
    return out


def _read(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """An entry's bytes, never decompressing more than ``limit`` (or than it declares)."""
    if info.file_size > limit:
        raise _bad(path, f"entry '{info.orig_filename[:80]}' is {info.file_size} bytes, over the {limit} allowed")
    with archive.open(info) as f:  # checks the local header's name and the CRC
        data = f.read(limit + 1)
    if len(data) != info.file_size:
        raise _bad(path, f"entry '{info.orig_filename[:80]}' is truncated")
    return data


def _load(path: Path, archive: zipfile.ZipFile, archive_bytes: int) -> Any:
    import torch._export.serde.schema as schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    entries = _entries(path, archive, archive_bytes)
    for name in entries:
        if name not in _REQUIRED | _SMALL and not _PAYLOAD.fullmatch(name):
            raise _bad(path, f"unexpected entry '{name}'; edgeq loads only plain programs (no AOTInductor, "
                             "ExecuTorch, extra or custom-object files)")
    missing = sorted(_REQUIRED - set(entries))
    if missing:
        raise _bad(path, f"missing entry '{missing[0]}'")
    small = {n: _read(path, archive, entries[n], MAX_SMALL_BYTES) for n in _SMALL if n in entries}
    if small["archive_format"] != b"pt2" or small["archive_version"] != b"0":
        raise _bad(path, "not a version-0 pt2 archive")
    if small.get("byteorder", b"little") != b"little":
        raise _bad(path, "big-endian weights", "re-save the program on a little-endian machine")

    read = lambda name, limit=MAX_JSON_BYTES: _read(path, archive, entries[name], limit)  # noqa: E731
    weights, used = _payloads(path, _json(path, _WEIGHTS, read(_WEIGHTS)), "data/weights/", read, entries)
    constants, used_c = _payloads(path, _json(path, _CONSTANTS, read(_CONSTANTS)), "data/constants/", read,
                                  entries)
    stray = sorted(n for n in entries if _PAYLOAD.fullmatch(n) and n not in used | used_c)
    if stray:
        raise _bad(path, f"unexpected entry '{stray[0]}' that no config refers to")
    example = _example_inputs(path, read(_SAMPLE, MAX_SAMPLE_INPUTS_BYTES))
    doc = _json(path, _MODEL, read(_MODEL))
    _check_program(path, doc)
    try:
        with _only_checked_deserialization(path):
            serialized = _dict_to_dataclass(schema.ExportedProgram, doc)
            program = ExportedProgramDeserializer().deserialize(serialized, weights, constants, example)
    except ModelLoadError:
        raise
    except Exception as exc:  # serde raises AssertionError, KeyError, SerializeError…
        raise _bad(path, f"the program does not deserialize: {_first_line(exc)}",
                   "re-save it with torch.export.save from torch 2.13") from None
    _check_graph(path, program)
    return program


def _json(path: Path, name: str, data: bytes) -> Any:
    """Parsed JSON, refused if nested deeper than MAX_JSON_DEPTH or with repeated keys."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise _bad(path, f"{name} repeats a key")
        return out

    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=pairs)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise _bad(path, f"{name} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:  # ValueError: over-long numbers
        raise _bad(path, f"{name} is not valid JSON: {_first_line(exc)}") from None
    return doc


def _payloads(path: Path, doc: Any, directory: str, read: Any, entries: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Tensors named by a weights/constants config, built from raw bytes; and the entries used."""
    import torch
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    config = doc.get("config") if isinstance(doc, dict) and set(doc) == {"config"} else None
    if not isinstance(config, dict):
        raise _bad(path, f"{directory.split('/')[1]} config is malformed")
    flat: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for fqn, meta in config.items():
        if not _FQN.fullmatch(fqn):
            raise _bad(path, f"payload name '{fqn[:80]}' is not a parameter path")
        if not isinstance(meta, dict) or not set(meta) <= {"path_name", "is_param", "use_pickle", "tensor_meta"}:
            raise _bad(path, f"payload '{fqn}' is malformed")
        entry = directory + str(meta.get("path_name"))
        if meta.get("use_pickle") is not False:
            raise _bad(path, f"payload '{fqn}' is a pickled object", NO_PICKLE)
        if not _PAYLOAD.fullmatch(entry):
            raise _bad(path, f"payload '{fqn}' is stored at '{entry[:80]}', not as a plain tensor in {directory}",
                       NO_PICKLE)
        if entry not in entries:
            raise _bad(path, f"payload '{fqn}' refers to missing entry '{entry}'")
        dtype_code, sizes, strides, offset, requires_grad = _tensor_meta(path, fqn, meta.get("tensor_meta"))
        dtype = _SERIALIZE_TO_TORCH_DTYPE.get(dtype_code)
        if dtype is None:
            raise _bad(path, f"payload '{fqn}' has unknown dtype {dtype_code}")
        if entry not in flat:
            data = read(entry, MAX_TOTAL_BYTES)
            if len(data) % torch.empty((), dtype=dtype).element_size():
                raise _bad(path, f"entry '{entry}' is not a whole number of {dtype} elements")
            flat[entry] = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype) if data else \
                torch.empty(0, dtype=dtype)
        base = flat[entry]
        if base.dtype != dtype:
            raise _bad(path, f"payload '{fqn}' reads '{entry}' as a second dtype")
        if math.prod(sizes) > MAX_ELEMENTS:
            raise _bad(path, f"payload '{fqn}' claims {math.prod(sizes)} elements")
        if all(sizes) and offset + sum((n - 1) * s for n, s in zip(sizes, strides)) >= base.numel():
            raise _bad(path, f"payload '{fqn}' reaches past the end of '{entry}'")
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
            raise _bad(path, f"payload '{fqn}' is not a dense CPU tensor", "move the program to CPU and re-save it")
        sizes, strides = ints(meta["sizes"]), ints(meta["strides"])
        if len(sizes) != len(strides) or not isinstance(meta["dtype"], int):
            raise ValueError
        return meta["dtype"], sizes, strides, _as_int(meta["storage_offset"]), meta["requires_grad"] is True
    except (KeyError, TypeError, ValueError):
        raise _bad(path, f"payload '{fqn}' has malformed tensor metadata") from None


def _as_int(item: Any) -> int:
    if not isinstance(item, dict) or set(item) != {"as_int"} or type(item["as_int"]) is not int:
        raise ValueError
    if not 0 <= item["as_int"] < 1 << 40:
        raise ValueError
    return item["as_int"]


def _example_inputs(path: Path, data: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The saved example inputs: plain tensors, through the weights_only unpickler only."""
    import torch

    if not data.startswith(b"PK\x03\x04"):
        raise _bad(path, "the example inputs are a bare pickle, not a torch.save archive", NO_PICKLE)
    where = "example inputs: "
    with zipfile.ZipFile(io.BytesIO(data)) as inner:
        entries = _entries(path, inner, len(data), where)
        for name in entries:
            if not _INNER.fullmatch(name):
                raise _bad(path, f"{where}unexpected entry '{name}'")
        if "data.pkl" not in entries:
            raise _bad(path, f"{where}no data.pkl")
        files = {n: _read(path, inner, info, MAX_SAMPLE_INPUTS_BYTES) for n, info in entries.items()}
    _scan_pickle(path, files["data.pkl"])
    canonical = io.BytesIO()  # torch's reader sees only the names checked above
    with zipfile.ZipFile(canonical, "w", zipfile.ZIP_STORED) as out:
        for name, content in files.items():
            out.writestr(f"archive/{name}", content)
    canonical.seek(0)
    try:
        loaded = torch.load(canonical, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError, RuntimeError…
        raise _bad(path, f"{where}{_first_line(exc)}", NO_PICKLE) from None
    ok = (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], tuple)
          and isinstance(loaded[1], dict) and len(loaded[0]) + len(loaded[1]) <= 1024
          and all(type(t) in (torch.Tensor, bool, int, float, type(None)) for t in (*loaded[0], *loaded[1].values()))
          and all(type(k) is str for k in loaded[1]))
    if not ok:
        raise _bad(path, f"{where}not tensors, numbers, booleans or None", NO_PICKLE)
    return loaded


def _scan_pickle(path: Path, data: bytes) -> None:
    """Refuse any opcode or global that a torch.save of plain tensors would not write."""
    try:
        end = -1
        for op, arg, pos in pickletools.genops(data):
            if op.name not in _PICKLE_OPS:
                raise _bad(path, f"example inputs use pickle opcode {op.name}", NO_PICKLE)
            if op.name == "GLOBAL" and arg not in _PICKLE_GLOBALS:
                raise _bad(path, f"example inputs pickle '{str(arg)[:80]}', not a tensor", NO_PICKLE)
            end = pos
        if end + 1 != len(data):
            raise _bad(path, "example inputs have data after the pickle's end", NO_PICKLE)
    except ModelLoadError:
        raise
    except Exception as exc:  # ValueError on a malformed opcode stream
        raise _bad(path, f"example inputs are not a valid pickle ({_first_line(exc)})", NO_PICKLE) from None


def _check_program(path: Path, doc: Any) -> None:
    """Refuse anything in the program JSON that torch would eval, exec or resolve by name."""
    if not isinstance(doc, dict) or "graph_module" not in doc or not set(doc) <= _TOP_KEYS:
        raise _bad(path, "models/model.json is not a saved ExportedProgram")
    if doc.get("guards_code"):
        raise _bad(path, "the program carries guard code (Python source torch would exec)")
    if not set(doc.get("verifiers") or []) <= {"", "ATEN", "TRAINING"}:
        raise _bad(path, f"unknown verifier dialect in {str(doc.get('verifiers'))[:80]}")
    for name, bounds in (doc.get("range_constraints") or {}).items():
        if not _SYMBOL.fullmatch(name) or not isinstance(bounds, dict) or any(
                type(v) not in (int, type(None)) for v in bounds.values()):
            raise _bad(path, f"range constraint '{name[:40]}' is malformed")
    module = doc["graph_module"]
    if not isinstance(module, dict) or not isinstance(module.get("graph"), dict):
        raise _bad(path, "the program has no graph")
    module["metadata"] = {}  # free-form annotations (JSON inside a string); nothing edgeq needs
    signature = module.get("signature") or {}
    for specs, kinds in ((signature.get("input_specs"), _SPEC_IN), (signature.get("output_specs"), _SPEC_OUT)):
        for spec in specs or []:
            kind = next(iter(spec), None) if isinstance(spec, dict) and len(spec) == 1 else None
            if kind not in kinds:
                raise _bad(path, f"the program's signature has a '{kind}' entry; edgeq loads tensors only", NO_PICKLE)
            if kind == "user_input" and set((spec[kind].get("arg") or {})) != {"as_tensor"} or \
                    kind == "constant_input" and not set(spec[kind].get("value") or {"?": 0}) <= _CONSTANT_KINDS:
                raise _bad(path, "the program takes an input that is not a tensor, number, boolean or None")
    if not module["graph"].get("nodes"):
        raise _bad(path, "the program's graph is empty")
    _check_values(path, doc)


def _check_node(path: Path, node: dict[str, Any]) -> None:
    target = node["target"]
    op = _ATEN.fullmatch(target) if isinstance(target, str) else None
    if not (op and not _ATEN_DENIED.fullmatch(op.group(1)) or target in _BUILTIN_TARGETS | _HOP_TARGETS):
        raise _bad(path, f"the graph calls '{str(target)[:80]}'; edgeq loads programs of aten operators only")
    if isinstance(node.get("metadata"), dict):  # the rest is debug text FX may copy into generated source
        node["metadata"] = {k: v for k, v in node["metadata"].items() if k in _NODE_METADATA_KEPT}


_IDENT_KEYS = {"name", "as_name", "user_input_name"}  # become Python identifiers in FX-generated source
_FQN_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name"}
_NAME_MAPS = {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"}
_REFUSED_KEYS = {"as_operator": "operators passed as values",
                 "as_custom_obj": "custom objects", "class_fqn": "custom objects",
                 "as_string_to_argument": "dict arguments"}
_NODE_METADATA_KEPT = {"nn_module_stack", "source_fn_stack", "torch_fn"}
# pytree node types are looked up in torch's registry of registered types, never imported
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}(?:\.[A-Za-z_][A-Za-z0-9_]{0,127}){0,15}")


def _check_values(path: Path, doc: Any) -> None:
    """Every string clean; names that reach generated Python source are identifiers; symbolic
    expressions and pytree specs checked; nothing that needs more than aten operators on tensors."""
    stack = [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:  # torch's serde walks it recursively
            raise _bad(path, f"models/model.json is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, dict) and "target" in item:  # a graph node, at any depth (subgraphs too)
            _check_node(path, item)
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            if isinstance(key, str):
                _check_text(path, key)
                if key in _REFUSED_KEYS:
                    raise _bad(path, f"the program has {_REFUSED_KEYS[key]}; edgeq loads plain programs only")
            if key in _NAME_MAPS and isinstance(value, dict) and not all(map(_is_ident, value)):
                raise _bad(path, f"a {key} name is not an identifier")
            if key == "forward_arg_names" and value is not None and not (
                    isinstance(value, list) and all(isinstance(v, str) and _is_ident(v) for v in value)):
                raise _bad(path, "an argument name is not an identifier")
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif isinstance(value, str):
                _check_text(path, value)
                if key in _IDENT_KEYS and not _is_ident(value) and not (key == "name" and value == ""):  # "": positional
                    raise _bad(path, f"node name '{value[:60]}' is not an identifier")
                if key in _FQN_KEYS and not _FQN.fullmatch(value) or key == "fqn" and value and not _FQN.fullmatch(value):
                    raise _bad(path, f"'{value[:60]}' is not a parameter path")
                if key == "expr_str":
                    _check_expr(path, value)
                if key in ("in_spec", "out_spec"):
                    _check_treespec(path, value)


def _is_ident(name: str) -> bool:
    return bool(_IDENT.fullmatch(name)) and not keyword.iskeyword(name)


def _check_treespec(path: Path, text: str) -> None:
    """A pytree spec: tuples, lists and dicts with identifier keys (FX writes dict keys into source)."""
    try:
        spec = json.loads(text)
        stack = [(spec[1], 1)] if isinstance(spec, list) and len(spec) == 2 else [(None, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_JSON_DEPTH or not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"} \
                    or not (node["type"] is None or isinstance(node["type"], str) and _DOTTED.fullmatch(node["type"])) \
                    or not isinstance(node["children_spec"], list):
                raise ValueError
            context = json.loads(node["context"]) if isinstance(node["context"], str) else node["context"]
            if context is not None and not (isinstance(context, list) and all(
                    isinstance(k, int) or isinstance(k, str) and _is_ident(k) for k in context)):
                raise ValueError
            stack.extend((child, depth + 1) for child in node["children_spec"])
    except (ValueError, TypeError, IndexError, RecursionError):
        raise _bad(path, "the program's input or output structure is not tuples, lists and dicts of tensors") from None


def _check_text(path: Path, text: str) -> None:
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise _bad(path, "a string in the program has control characters")


def _check_expr(path: Path, expr: str) -> None:
    """A symbolic-shape expression sympy may parse: sympy parses by ``eval``, so only symbols,
    numbers, operators and a fixed set of sympy functions are let through."""
    def refuse(why: str) -> ModelLoadError:
        return _bad(path, f"symbolic expression '{expr[:60]}' {why}")

    if len(expr) > MAX_EXPR_CHARS:
        raise refuse(f"is over {MAX_EXPR_CHARS} characters")
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(expr).readline)
                  if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError):
        raise refuse("does not tokenize") from None
    powers = 0
    for i, tok in enumerate(tokens):
        text = tok.string
        if tok.type == tokenize.NAME:
            symbol = _SYMBOL.fullmatch(text) and text not in vars(builtins)
            if text not in _SYMPY_NAMES and not symbol:
                raise refuse(f"uses '{text[:40]}'")
        elif tok.type == tokenize.NUMBER:
            if not re.fullmatch(r"[0-9]{1,30}(?:\.[0-9]{1,30})?", text):
                raise refuse(f"has number '{text[:40]}'")
        elif tok.type == tokenize.STRING:
            if text[0] not in "'\"" or not _SYMBOL.fullmatch(text[1:-1]) or text[-1] != text[0]:
                raise refuse(f"has string {text[:40]}")
        elif tok.type == tokenize.OP and text in _EXPR_OPS:
            if text == "**":  # bounded: 2 powers, small integer exponents
                powers += 1
                nxt = tokens[i + 1].string if i + 1 < len(tokens) else ""
                if powers > 2 or not (nxt.isdigit() and int(nxt) <= 64):
                    raise refuse("has an unbounded power")
        else:
            raise refuse(f"has '{text[:40]}'")


_LOADING: list[Path] = []  # the file being deserialized, while torch's serde runs


def _refuse_unpickling(*_: Any, **__: Any) -> Any:
    raise _bad(_LOADING[-1], "torch tried to unpickle part of the file", NO_PICKLE)


def _guarded(base: type) -> type:
    """A subclass of ``base`` whose ``load`` refuses while a .pt2 is deserialized. A class, not a
    function, because modules imported during that time may subclass ``pickle.Unpickler``."""
    def load(self: Any) -> Any:
        if _LOADING:
            _refuse_unpickling()
        return base.load(self)

    return type(base.__name__, (base,), {"load": load, "__module__": "pickle"})


@contextlib.contextmanager
def _only_checked_deserialization(path: Path) -> Iterator[None]:
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
        _check_expr(path, str(text))
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


def _check_graph(path: Path, program: Any) -> None:
    """The deserialized graphs (and subgraphs) call aten operators and pure builtins only (second check)."""
    import torch

    allowed = _builtin_callables() + [torch.ops.higher_order.wrap_with_set_grad_enabled]
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            raise _bad(path, f"the program holds a {type(module).__name__}, not only graphs")
        for node in module.graph.nodes:
            if node.op == "call_module" or node.op == "get_attr" and not isinstance(
                    _attribute(module, str(node.target)), (torch.Tensor, torch.fx.GraphModule)):
                raise _bad(path, f"graph node '{node.name}' refers to a module or non-tensor attribute")
            if node.op != "call_function":
                continue
            target = node.target
            aten = isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
            if not (aten and not _ATEN_DENIED.fullmatch(target._schema.name.split("::")[1]) or target in allowed):
                raise _bad(path, f"the graph calls '{str(target)[:80]}'; edgeq loads programs of aten operators only")


def _attribute(module: Any, dotted: str) -> Any:
    try:
        return _fetch(module, dotted)
    except AttributeError:
        return None


def _builtin_callables() -> list[Any]:
    import math
    import operator

    import torch

    modules = {"_operator": operator, "torch": torch, "math": math}
    return [getattr(modules[t.split(".")[0]], t.split(".")[1]) for t in _BUILTIN_TARGETS]


def modularize(program: Any) -> Any:
    """A GraphModule equivalent to ``program`` whose weighted ops are real submodules."""
    import torch
    from torch import nn

    with _only_checked_deserialization(Path("<the loaded program>")):  # module() generates and execs code
        gm = program.module()
    graph = gm.graph
    made: dict[str, nn.Module] = {}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        target = node.target
        if target == torch.ops.aten.linear.default:
            x, weight, bias = (list(node.args) + [None])[:3]
        elif target == torch.ops.aten.embedding.default:  # padding_idx only matters for training
            weight, x, bias = node.args[0], node.args[1], None
        elif target == torch.ops.aten.conv2d.default:
            x, weight, bias = (list(node.args) + [None])[:3]
        else:
            continue
        if getattr(weight, "op", None) != "get_attr" or (bias is not None and getattr(bias, "op", None) != "get_attr"):
            continue
        name = _owner_name(gm, weight.target, bias.target if bias is not None else None)
        if name is None or name in made:
            continue
        w = _fetch(gm, weight.target)
        if target == torch.ops.aten.linear.default:
            mod: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        elif target == torch.ops.aten.embedding.default:
            mod = nn.Embedding(w.shape[0], w.shape[1])
        else:
            args = list(node.args) + [None] * 7
            stride, padding, dilation, groups = args[3] or 1, args[4] or 0, args[5] or 1, args[6] or 1
            mod = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                            dilation=dilation, groups=groups, bias=bias is not None)
        mod.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
        if bias is not None:
            mod.bias = nn.Parameter(_fetch(gm, bias.target).detach().clone(), requires_grad=False)
        gm.set_submodule(name, mod, strict=False)
        made[name] = mod
        with graph.inserting_before(node):
            new = graph.call_module(name, (x,))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _owner_name(gm: Any, weight: str, bias: str | None) -> str | None:
    """The container holding exactly ``<name>.weight`` (and ``<name>.bias``), or None."""
    if not weight.endswith(".weight"):
        return None
    name = weight.removesuffix(".weight")
    if bias is not None and bias != f"{name}.bias":
        return None
    owner = _fetch(gm, name)
    params = {n for n, _ in owner.named_parameters(recurse=False)} | {n for n, _ in owner.named_buffers(recurse=False)}
    if list(owner.children()) or params != ({"weight", "bias"} if bias else {"weight"}):
        return None
    return name


def _fetch(gm: Any, dotted: str) -> Any:
    obj = gm
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
