"""Reading a ``.pt2`` zip archive under fixed bounds, and the entries a plain program has.

torch's C++ zip reader looks names up case-insensitively, so what a scan sees need not be
what it reads. Here the archive is read with :mod:`zipfile` only: file size, entry count,
central directory size, declared and actual decompressed sizes and compression ratio are
bounded; encrypted, symlink, directory and oddly named entries are refused; and names are
compared after normalisation (NFC, case-fold, ``\\`` → ``/``) so no two entries can be
confused. The entries must then be exactly those ``torch.export.save`` writes for one plain
program.
"""

from __future__ import annotations

import json
import re
import stat
import unicodedata
import zipfile
from pathlib import Path
from typing import Any

from edgeq.models.pt2.limits import (MAX_DIRECTORY_BYTES, MAX_ENTRIES, MAX_JSON_DEPTH, MAX_RATIO, MAX_SMALL_BYTES,
                              MAX_TOTAL_BYTES, bad, first_line)

_INDEX = r"(?:0|[1-9][0-9]{0,8})"
PAYLOAD = re.compile(rf"data/(?:weights/weight|constants/tensor)_{_INDEX}")
_SMALL = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
MODEL, SAMPLE = "models/model.json", "data/sample_inputs/model.pt"
WEIGHTS, CONSTANTS = "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"
_REQUIRED = {"archive_format", "archive_version", MODEL, SAMPLE, WEIGHTS, CONSTANTS}
# the entries of the torch.save archive that holds the example inputs
INNER = re.compile(rf"data\.pkl|\.format_version|\.storage_alignment|byteorder|version|\.data/serialization_id|data/{_INDEX}")


def check_directory_size(path: Path, fh: Any) -> None:
    """Refuse a central directory claiming too many entries before zipfile parses it."""
    end = zipfile._EndRecData(fh)  # the End Of Central Directory record (stable since Python 2)
    if end is None:
        raise bad(path, "not a zip archive")
    if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ENTRIES:
        raise bad(path, f"{end[zipfile._ECD_ENTRIES_TOTAL]} entries, over edgeq's limit of {MAX_ENTRIES}")
    if end[zipfile._ECD_SIZE] > MAX_DIRECTORY_BYTES:  # zipfile reads the directory, whatever the count says
        raise bad(path, f"a {end[zipfile._ECD_SIZE]}-byte central directory, over edgeq's limit of "
                        f"{MAX_DIRECTORY_BYTES}")
    fh.seek(0)


def checked_entries(path: Path, archive: zipfile.ZipFile, archive_bytes: int,
                    where: str = "") -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by normalised name relative to its one root folder, checked."""
    infos = archive.infolist()
    if not infos or len(infos) > MAX_ENTRIES:
        raise bad(path, f"{where}{len(infos)} entries; a plain program has a few per weight")
    declared = compressed = 0
    roots: set[str] = set()
    out: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        raw = info.orig_filename
        shown = raw.encode("unicode_escape").decode("ascii")[:80]
        if info.flag_bits & 0x2041:  # encrypted, strong encryption, masked local header
            raise bad(path, f"{where}entry '{shown}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise bad(path, f"{where}entry '{shown}' uses compression method {info.compress_type}")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG) or info.external_attr & 0x10 or raw.endswith(("/", "\\")):
            raise bad(path, f"{where}entry '{shown}' is a symlink, directory or special file")
        if any(unicodedata.category(c)[0] == "C" for c in raw):
            raise bad(path, f"{where}entry name '{shown}' has control or format characters")
        name = unicodedata.normalize("NFC", raw.replace("\\", "/")).casefold()
        parts = name.split("/")
        if name.startswith("/") or re.match(r"[a-z]:", name) or any(p in ("", ".", "..") for p in parts):
            raise bad(path, f"{where}entry name '{shown}' is absolute or leaves the archive")
        if len(parts) < 2:
            raise bad(path, f"{where}entry '{shown}' is outside the archive's root folder")
        roots.add(parts[0])
        rel = "/".join(parts[1:])
        if rel in out or len(roots) > 1:
            raise bad(path, f"{where}entry '{shown}' duplicates another once case, Unicode form and "
                            "separators are normalised" if rel in out else f"{where}entries under several root folders")
        if not rel.isascii():
            raise bad(path, f"{where}unexpected entry '{shown}'")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise bad(path, f"{where}entry '{shown}' has inconsistent sizes")
        if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise bad(path, f"{where}entry '{shown}' expands {info.file_size // max(info.compress_size, 1)}x "
                            f"(a zip bomb?); edgeq allows {MAX_RATIO}x")
        declared += info.file_size
        compressed += info.compress_size
        out[rel] = info
    if declared > MAX_RATIO * archive_bytes + (1 << 20):
        raise bad(path, f"{where}entries expand to {declared} bytes from {archive_bytes} (a zip bomb?); "
                        f"edgeq allows {MAX_RATIO}x")
    if declared > MAX_TOTAL_BYTES:
        raise bad(path, f"{where}entries expand to {declared} bytes, over edgeq's {MAX_TOTAL_BYTES >> 30} GiB limit")
    if compressed > archive_bytes:
        raise bad(path, f"{where}entries overlap (they claim more data than the archive holds)")
    return out


def program_entries(path: Path, archive: zipfile.ZipFile, archive_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """The checked entries of a ``.pt2`` that holds one plain version-0 program and nothing else."""
    found = checked_entries(path, archive, archive_bytes)
    for name in found:
        if name not in _REQUIRED | _SMALL and not PAYLOAD.fullmatch(name):
            raise bad(path, f"unexpected entry '{name}'; edgeq loads only plain programs (no AOTInductor, "
                            "ExecuTorch, extra or custom-object files)")
    missing = sorted(_REQUIRED - set(found))
    if missing:
        raise bad(path, f"missing entry '{missing[0]}'")
    small = {n: read_entry(path, archive, found[n], MAX_SMALL_BYTES) for n in _SMALL if n in found}
    if small["archive_format"] != b"pt2" or small["archive_version"] != b"0":
        raise bad(path, "not a version-0 pt2 archive")
    if small.get("byteorder", b"little") != b"little":
        raise bad(path, "big-endian weights", "re-save the program on a little-endian machine")
    return found


def read_entry(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """An entry's bytes, never decompressing more than ``limit`` (or than it declares)."""
    if info.file_size > limit:
        raise bad(path, f"entry '{info.orig_filename[:80]}' is {info.file_size} bytes, over the {limit} allowed")
    with archive.open(info) as f:  # checks the local header's name and the CRC
        data = f.read(limit + 1)
    if len(data) != info.file_size:
        raise bad(path, f"entry '{info.orig_filename[:80]}' is truncated")
    return data


def parse_json(path: Path, name: str, data: bytes) -> Any:
    """Parsed JSON, refused if nested deeper than MAX_JSON_DEPTH or with repeated keys."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise bad(path, f"{name} repeats a key")
        return out

    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=pairs)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise bad(path, f"{name} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:  # ValueError: over-long numbers
        raise bad(path, f"{name} is not valid JSON: {first_line(exc)}") from None
    return doc
