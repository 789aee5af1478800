"""``safe_load``: a ``.pt2`` file's ExportedProgram, loaded without running anything it carries.

Wires the steps together: bounded archive reading and the expected entry set
(:mod:`edgeq.models.pt2.archive`), tensors from raw bytes and checked example inputs
(:mod:`edgeq.models.pt2.tensors`), the program-JSON checks (:mod:`edgeq.models.pt2.program`), torch's serde
inside the guarded window (:mod:`edgeq.models.pt2.guard`), then a second check of the graphs torch built.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError
from edgeq.models.pt2.archive import (CONSTANTS, MODEL, PAYLOAD, SAMPLE, WEIGHTS, check_directory_size, parse_json,
                               program_entries, read_entry)
from edgeq.models.pt2.guard import only_checked_deserialization
from edgeq.models.pt2.limits import MAX_FILE_BYTES, MAX_JSON_BYTES, MAX_SAMPLE_INPUTS_BYTES, bad, first_line
from edgeq.models.pt2.program import check_graph, check_program
from edgeq.models.pt2.tensors import example_inputs, payloads


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
        raise bad(path, "the file is empty")
    if size > MAX_FILE_BYTES:
        raise bad(path, f"{size} bytes, over edgeq's {MAX_FILE_BYTES >> 30} GiB limit for .pt2 files")
    try:
        with open(path, "rb") as fh:
            check_directory_size(path, fh)
            with zipfile.ZipFile(fh) as archive:
                return _load(path, archive, size)
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, ValueError) as exc:
        raise bad(path, first_line(exc) or "not a zip archive") from None
    except RecursionError:
        raise bad(path, "structure nested too deeply") from None
    except Exception as exc:  # torch rejecting a tensor or graph the checks let through: still the file's fault
        raise bad(path, f"{type(exc).__name__}: {first_line(exc)}") from None


def _load(path: Path, archive: zipfile.ZipFile, archive_bytes: int) -> Any:
    import torch._export.serde.schema as schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    entries = program_entries(path, archive, archive_bytes)
    read = lambda name, limit=MAX_JSON_BYTES: read_entry(path, archive, entries[name], limit)  # noqa: E731
    weights, used = payloads(path, parse_json(path, WEIGHTS, read(WEIGHTS)), "data/weights/", read, entries)
    constants, used_c = payloads(path, parse_json(path, CONSTANTS, read(CONSTANTS)), "data/constants/", read,
                                 entries)
    stray = sorted(n for n in entries if PAYLOAD.fullmatch(n) and n not in used | used_c)
    if stray:
        raise bad(path, f"unexpected entry '{stray[0]}' that no config refers to")
    example = example_inputs(path, read(SAMPLE, MAX_SAMPLE_INPUTS_BYTES))
    doc = parse_json(path, MODEL, read(MODEL))
    check_program(path, doc)
    try:
        with only_checked_deserialization(path):
            serialized = _dict_to_dataclass(schema.ExportedProgram, doc)
            program = ExportedProgramDeserializer().deserialize(serialized, weights, constants, example)
    except ModelLoadError:
        raise
    except Exception as exc:  # serde raises AssertionError, KeyError, SerializeError…
        raise bad(path, f"the program does not deserialize: {first_line(exc)}",
                  "re-save it with torch.export.save from torch 2.13") from None
    check_graph(path, program)
    return program
