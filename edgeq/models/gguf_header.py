"""A bounded reader for the header of a GGUF file (llama.cpp's model format).

A GGUF file is untrusted input. Its header declares how many metadata entries and
tensors follow, how long each string and array is, and where each tensor's data lies;
a library that trusts those numbers can be made to loop for hours, allocate gigabytes or
read past the end of a truncated file. This reader walks the header through a memory
map with every count, length and offset checked against fixed limits and the file's
real size, and reads nothing but the header: metadata scalars and short strings are
kept, arrays are skipped over (their element count and type recorded).

Layout (little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
``"GGUF"``, version u32, tensor count u64, metadata count u64; each metadata entry a
string key, a u32 value type and the value; each tensor a string name, u32 dimension
count, u64 dimensions, u32 ggml type, u64 offset; padding to ``general.alignment``
(default 32); the tensor data.

>>> header = read_gguf_header("model.gguf")  # doctest: +SKIP
>>> header.architecture, header.tensor_count, header.data_bytes  # doctest: +SKIP
('llama', 272, 96576768)
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 (2023, 32-bit counts) is read by neither transformers nor current llama.cpp
MAX_TENSORS = 1 << 16
MAX_METADATA_ENTRIES = 1 << 16
MAX_METADATA_BYTES = 64 << 20  # a 256k-token vocabulary with merges and scores is ~20 MB
MAX_STRING_BYTES = 1 << 20  # a key, a tensor name, one vocabulary entry or a chat template
MAX_ARRAY_ITEMS = 1 << 22
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 256
MAX_ALIGNMENT = 1 << 16
KEPT_STRING_BYTES = 1 << 16  # longer strings are skipped, not kept (only their length is recorded)
_FIX = "the file is not a complete GGUF model; re-download or re-convert it"

# GGUF metadata value types → struct format (fixed-size scalars), 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: the fastest-varying dimension first
    ggml_type: int
    type_name: str
    offset: int  # from the start of the data section
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFHeader:
    """What the header of a GGUF file declares, every figure checked against the file."""

    path: Path
    version: int
    file_bytes: int
    data_offset: int  # where the tensor data starts
    metadata: dict[str, Any] = field(default_factory=dict)  # scalars and strings up to KEPT_STRING_BYTES
    arrays: dict[str, tuple[int, int]] = field(default_factory=dict)  # key → (element type, count)
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)


class _Cursor:
    """Reads little-endian values from a buffer, refusing to pass ``limit``."""

    def __init__(self, buf: Any, path: Path, limit: int) -> None:
        self.buf, self.path, self.pos, self.limit = buf, path, 0, limit

    def take(self, n: int, what: str) -> bytes:
        self.skip(n, what)
        return bytes(self.buf[self.pos - n:self.pos])

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.limit:
            if self.limit < len(self.buf):
                raise ModelLoadError(f"{self.path}: the GGUF metadata is larger than "
                                     f"{MAX_METADATA_BYTES >> 20} MB (at {what})",
                                     "edgeq refuses oversize GGUF headers; check the file's origin")
            raise ModelLoadError(f"{self.path} is truncated: it ends inside the GGUF header (at {what})", _FIX)
        self.pos += n

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, most: int | None = None, keep: bool = True) -> str | None:
        most = MAX_STRING_BYTES if most is None else most
        n = self.scalar("Q", what)
        if n > most:
            raise ModelLoadError(f"{self.path}: GGUF {what} declares a string of {n:,} bytes (more than {most:,})",
                                 "the header is corrupt or hostile; check the file's origin")
        if not keep or n > KEPT_STRING_BYTES:
            self.skip(n, what)
            return None
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path}: GGUF {what} is not UTF-8 text", _FIX) from None


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Read and check the header of the GGUF file at ``path``; ``ModelLoadError`` if it is not
    a complete, sanely sized GGUF file (truncated, wrong magic or version, oversize counts,
    tensors whose data lies outside the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 24:
                raise ModelLoadError(f"{path} is {size} bytes, too short for a GGUF header", _FIX)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path, size)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} ({exc.strerror or type(exc).__name__})", "check the path") from None


def _parse(buf: Any, path: Path, size: int) -> GGUFHeader:
    cur = _Cursor(buf, path, min(size, MAX_METADATA_BYTES))
    magic = cur.take(4, "magic")
    if magic != MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not {MAGIC!r})",
                             "pass a .gguf model file")
    version = cur.scalar("I", "version")
    if version not in VERSIONS:
        if struct.unpack(">I", struct.pack("<I", version))[0] in VERSIONS:
            raise ModelLoadError(f"{path} is a big-endian GGUF file", "use the little-endian file llama.cpp writes")
        raise ModelLoadError(f"{path} is GGUF version {version}; edgeq reads versions {', '.join(map(str, VERSIONS))}",
                             "re-convert the model with a current llama.cpp")
    n_tensors, n_kv = cur.scalar("Q", "tensor count"), cur.scalar("Q", "metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_METADATA_ENTRIES:
        raise ModelLoadError(f"{path} declares {n_tensors:,} tensors and {n_kv:,} metadata entries (at most "
                             f"{MAX_TENSORS:,} and {MAX_METADATA_ENTRIES:,})",
                             "the header is corrupt or hostile; check the file's origin")
    header = GGUFHeader(path=path, version=version, file_bytes=size, data_offset=0)
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}", MAX_NAME_BYTES)
        if key in header.metadata or key in header.arrays:
            raise ModelLoadError(f"{path}: GGUF metadata key '{key}' appears twice", _FIX)
        vtype = cur.scalar("I", f"the type of '{key}'")
        _read_value(cur, header, key, vtype)
    names: set[str] = set()
    for i in range(n_tensors):
        info = _read_tensor_info(cur, i)
        if info.name in names:
            raise ModelLoadError(f"{path}: tensor '{info.name}' appears twice", _FIX)
        names.add(info.name)
        header.tensors.append(info)
    alignment = header.metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or not 0 < alignment <= MAX_ALIGNMENT \
            or alignment & (alignment - 1):
        raise ModelLoadError(f"{path}: general.alignment {alignment!r:.40} is not a power of two up to "
                             f"{MAX_ALIGNMENT}", _FIX)
    header.data_offset = -(-cur.pos // alignment) * alignment
    _check_tensor_data(header, alignment)
    return header


def _read_value(cur: _Cursor, header: GGUFHeader, key: str, vtype: int) -> None:
    if vtype in _SCALARS:
        header.metadata[key] = cur.scalar(_SCALARS[vtype], f"the value of '{key}'")
    elif vtype == _STRING:
        text = cur.string(f"the value of '{key}'")
        if text is not None:
            header.metadata[key] = text
    elif vtype == _ARRAY:
        etype, count = cur.scalar("I", f"the array type of '{key}'"), cur.scalar("Q", f"the length of '{key}'")
        if count > MAX_ARRAY_ITEMS:
            raise ModelLoadError(f"{cur.path}: GGUF metadata '{key}' declares {count:,} items (at most "
                                 f"{MAX_ARRAY_ITEMS:,})", "the header is corrupt or hostile; check the file's origin")
        if etype in _SCALARS:
            cur.skip(count * struct.calcsize(_SCALARS[etype]), f"the items of '{key}'")
        elif etype == _STRING:
            for j in range(count):
                cur.string(f"item {j} of '{key}'", keep=False)
        else:  # nested arrays: valid GGUF, but no model uses them and they would need a depth bound
            raise ModelLoadError(f"{cur.path}: GGUF metadata '{key}' is an array of type {etype}, which edgeq does "
                                 "not read", "check the file's origin")
        header.arrays[key] = (etype, count)
    else:
        raise ModelLoadError(f"{cur.path}: GGUF metadata '{key}' has unknown value type {vtype}", _FIX)


def _read_tensor_info(cur: _Cursor, i: int) -> TensorInfo:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    name = cur.string(f"tensor name {i}", MAX_NAME_BYTES) or ""
    n_dims = cur.scalar("I", f"the dimension count of tensor '{name}'")
    if not 1 <= n_dims <= MAX_DIMS:
        raise ModelLoadError(f"{cur.path}: tensor '{name}' has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})", _FIX)
    shape = tuple(cur.scalar("Q", f"the shape of tensor '{name}'") for _ in range(n_dims))
    ggml_type = cur.scalar("I", f"the type of tensor '{name}'")
    offset = cur.scalar("Q", f"the offset of tensor '{name}'")
    try:
        qtype = GGMLQuantizationType(ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelLoadError(f"{cur.path}: tensor '{name}' has unknown ggml type {ggml_type}",
                             "convert the model with a llama.cpp release this gguf package knows") from None
    numel = 1
    for d in shape:
        if not 0 < d < 1 << 40:
            raise ModelLoadError(f"{cur.path}: tensor '{name}' has dimension {d}", _FIX)
        numel *= d
    if numel >= 1 << 40 or shape[0] % block:
        raise ModelLoadError(f"{cur.path}: tensor '{name}' of shape {list(shape)} does not fit its type "
                             f"{qtype.name} (blocks of {block})", _FIX)
    return TensorInfo(name, shape, ggml_type, qtype.name, offset, numel // block * type_size)


def _check_tensor_data(header: GGUFHeader, alignment: int) -> None:
    """Every tensor's data aligned, inside the file and not overlapping another's."""
    end_of_data = header.file_bytes - header.data_offset
    previous_end, previous = 0, ""
    for t in sorted(header.tensors, key=lambda t: t.offset):
        if t.offset % alignment:
            raise ModelLoadError(f"{header.path}: tensor '{t.name}' starts at offset {t.offset}, not a multiple of "
                                 f"the alignment {alignment}", _FIX)
        if t.offset < previous_end:
            raise ModelLoadError(f"{header.path}: the data of tensors '{previous}' and '{t.name}' overlap", _FIX)
        if t.offset + t.nbytes > end_of_data:
            missing = t.offset + t.nbytes - end_of_data
            raise ModelLoadError(f"{header.path} is truncated: tensor '{t.name}' needs {missing:,} bytes beyond the "
                                 f"end of the file ({header.file_bytes:,} bytes)", _FIX)
        previous_end, previous = t.offset + t.nbytes, t.name
