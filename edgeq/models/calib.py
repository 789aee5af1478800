"""User calibration data (``--calib PATH``) in place of the built-in calibration split.

Accepted, by what ``PATH`` is:

- a ``.txt`` file (one sample per non-empty line) or a directory of ``.txt`` files, for
  text models with a tokenizer: each line is tokenized like the built-in sentences;
- a directory of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``) for image
  classifiers: preprocessed with the model's own image processor
  (``preprocessor_config.json``);
- a ``.npz`` file for any model: one array per model input, keyed by the input's name
  (``edgeq plan`` prints them) or ``arg0``, ``arg1``...; the first axis indexes samples,
  the rest must match the model's example input.

What is read is bounded: at most ``MAX_SAMPLES`` samples, ``MAX_TEXT_BYTES`` of text and
``MAX_DIR_ENTRIES`` directory entries; when data is left out, the calibration description
says so. Every sample is checked against the model's inputs (dtype, token ids within the
vocabulary, finite floats) and the samples holding each input's extreme values are run
through the model once, so bad data fails here, in one line, not deep inside a plan.

Only calibration (sensitivity, static int8 convolutions) uses it; fidelity is still
checked on the built-in held-out split, so plans made with different data compare fairly.

>>> loaded = with_calibration(load_model("./model"), "my_sentences.txt")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError, EdgeqError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_SAMPLES = 4096  # far more than sensitivity or static quantization ever draws
MAX_TEXT_BYTES = 16 * 1024 * 1024
MAX_LINE_CHARS = 16 * 1024  # the tokenizer truncates to --seq-len tokens long before this
MAX_DIR_ENTRIES = 100_000
MAX_NPZ_BYTES = 1024 * 1024 * 1024
MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_BYTES = 1024 * 1024 * 1024
MAX_NPZ_ARRAYS = 1000
_HINT = "pass a .txt, .npz or a directory of them / images"


def with_calibration(loaded: Any, path: str | Path) -> Any:
    """A copy of ``loaded`` whose ``make_inputs("calib", n)`` draws from ``path``."""
    samples, note = load_samples(loaded, Path(path))
    builtin = loaded.make_inputs

    def make(split: str, n: int) -> list[tuple[Any, ...]]:
        if split != "calib":
            return builtin(split, n)
        return [samples[i % len(samples)] for i in range(min(n, len(samples)))]

    return dataclasses.replace(loaded, make_inputs=make,
                               config={**loaded.config, "calibration": f"{path} ({len(samples)} samples{note})"})


def load_samples(loaded: Any, path: Path) -> tuple[list[tuple[Any, ...]], str]:
    """The checked samples in ``path`` and a note on what was left out (``""`` when nothing)."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:
        raise ConfigError(f"--calib {path}: cannot read it ({exc.strerror or type(exc).__name__})", _HINT) from None
    if not exists:
        raise ConfigError(f"--calib {path}: no such file or directory", _HINT)
    if path.suffix == ".npz" and not is_dir:
        samples, note = _npz(loaded, path)
    else:
        files, note = _list(path) if is_dir else ([path], "")
        texts = [f for f in files if f.suffix == ".txt"]
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if texts and images:
            raise ConfigError(f"--calib {path} mixes text files and images", "keep one kind of data per directory")
        if texts:
            samples, more = _texts(loaded, path, texts)
        elif images:
            samples, more = _images(loaded, path, images)
        else:
            raise ConfigError(f"--calib {path}: no .txt, .npz or image files found", "pass a .txt, .npz or a directory of images")
        note = note or more
    _check_samples(loaded, path, samples)
    return samples, note


def _list(path: Path) -> tuple[list[Path], str]:
    try:
        with os.scandir(path) as entries:
            names = [e.name for e in itertools.islice(entries, MAX_DIR_ENTRIES + 1)]
    except OSError as exc:
        raise ConfigError(f"--calib {path}: cannot list it ({exc.strerror or type(exc).__name__})", _HINT) from None
    if len(names) > MAX_DIR_ENTRIES:
        raise ConfigError(f"--calib {path} holds more than {MAX_DIR_ENTRIES:,} entries",
                          f"pass a directory with fewer files; at most {MAX_SAMPLES} samples are used")
    files = [path / n for n in sorted(names) if (path / n).is_file()]
    return files, ""


def _texts(loaded: Any, path: Path, files: list[Path]) -> tuple[list[tuple[Any, ...]], str]:
    lines: list[str] = []
    budget, note = MAX_TEXT_BYTES, ""
    for f in files:
        if len(lines) >= MAX_SAMPLES or budget <= 0:
            note = f"; read the first {len(lines)} lines, the rest left out (at most {MAX_SAMPLES} lines, {MAX_TEXT_BYTES >> 20} MB)"
            break
        try:
            with open(f, "rb") as fh:
                raw = fh.read(budget + 1)
        except OSError as exc:
            raise ConfigError(f"--calib {f}: cannot read it ({exc.strerror or type(exc).__name__})", _HINT) from None
        if len(raw) > budget:
            raw = raw[:budget].rsplit(b"\n", 1)[0]  # whole lines only
            note = f"; read the first {MAX_TEXT_BYTES >> 20} MB of text, the rest left out"
        budget -= len(raw)
        if b"\0" in raw:
            raise ConfigError(f"--calib {f} is binary, not text", "pass one calibration sentence per line, as UTF-8 text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"--calib {f} is not UTF-8 text", "save it as UTF-8") from None
        if _mostly_control(text):
            raise ConfigError(f"--calib {f} is binary, not text", "pass one calibration sentence per line, as UTF-8 text")
        lines += [line.strip()[:MAX_LINE_CHARS] for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_SAMPLES:
        note = f"; used the first {MAX_SAMPLES} of {len(lines)} lines"
        lines = lines[:MAX_SAMPLES]
    if not lines:
        raise ConfigError(f"--calib {path} has no non-empty lines", "put one calibration sample per line")
    if loaded.encode_text is None:
        raise ConfigError(f"--calib {path}: text calibration needs a text model with a tokenizer; "
                          f"{loaded.name} ({loaded.task}) has none", "pass a .npz with the model's inputs instead")
    try:
        return loaded.encode_text(lines), note
    except EdgeqError:
        raise
    except Exception as exc:
        raise ConfigError(f"--calib {path}: the tokenizer cannot encode it ({type(exc).__name__}: {str(exc)[:120]})",
                          "pass plain sentences, one per line") from None


def _mostly_control(text: str) -> bool:
    """Text with many control characters (not tab/newline) is binary data that happens to decode."""
    sample = text[:65536]
    control = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f\v")
    return control > max(8, len(sample) // 100)


def _images(loaded: Any, path: Path, files: list[Path]) -> tuple[list[tuple[Any, ...]], str]:
    if loaded.encode_images is None:
        raise ConfigError(f"--calib {path}: image calibration needs an image model with a preprocessor_config.json; "
                          f"{loaded.name} ({loaded.task}) has none", "pass a .npz with the model's inputs instead")
    note = ""
    if len(files) > MAX_SAMPLES:
        note = f"; used the first {MAX_SAMPLES} of {len(files)} images"
        files = files[:MAX_SAMPLES]
    total = 0
    for i, f in enumerate(files):
        size = f.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise ConfigError(f"--calib {f} is larger than {MAX_IMAGE_FILE_BYTES >> 20} MB", "use smaller images")
        total += size
        if total > MAX_IMAGE_BYTES:
            note = f"; used the first {i} of {len(files)} images (at most {MAX_IMAGE_BYTES >> 30} GB)"
            files = files[:i]
            break
    return loaded.encode_images(files), note


def _npz(loaded: Any, path: Path) -> tuple[list[tuple[Any, ...]], str]:
    import numpy as np
    import torch

    hint = "write it with numpy.savez"
    try:
        with np.load(path, allow_pickle=False) as data:
            shapes = _npz_headers(data)
            total = sum(nbytes for _, nbytes in shapes.values())
            if total > MAX_NPZ_BYTES:
                raise ConfigError(f"--calib {path} holds {total / 1e6:,.1f} MB of arrays, more than "
                                  f"{MAX_NPZ_BYTES / 1e6:,.1f} MB", f"keep at most {MAX_SAMPLES} samples")
            arrays = {k: data[k] for k in data.files}
    except EdgeqError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, ValueError (pickled objects), zlib.error, OSError...
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ConfigError(f"--calib {path} is not a readable .npz ({type(exc).__name__}: {detail})", hint) from None
    columns, note = [], ""
    for i, (name, example) in enumerate(zip(loaded.input_names, loaded.example_inputs)):
        key = name if name in arrays else f"arg{i}"
        if key not in arrays:
            raise ConfigError(f"--calib {path} has no array '{name}' (or 'arg{i}'); it has: {', '.join(arrays) or 'none'}",
                              f"save one array per input: {', '.join(loaded.input_names)}")
        a = arrays[key]
        if a.ndim == 0 or tuple(a.shape[1:]) != tuple(example.shape):
            raise ConfigError(f"--calib {path}: '{key}' has samples of shape {list(a.shape[1:])}, the model takes "
                              f"{list(example.shape)}", "the first axis indexes samples; the rest must match")
        _check_dtype(path, key, a, example)
        if len(a) > MAX_SAMPLES:
            note = f"; used the first {MAX_SAMPLES} of {len(a)} samples"
            a = a[:MAX_SAMPLES]
        columns.append(torch.from_numpy(np.ascontiguousarray(a).astype(_NUMPY_DTYPE.get(str(example.dtype), a.dtype),
                                                                       copy=False)).to(example.dtype))
    counts = {len(c) for c in columns}
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(f"--calib {path}: inputs have different or zero sample counts", "give every input the same number of samples")
    return [tuple(c[j] for c in columns) for j in range(counts.pop())], note


# numpy dtypes torch can take from_numpy (bfloat16 has none: it goes through float32).
_NUMPY_DTYPE = {"torch.float16": "float16", "torch.bfloat16": "float32", "torch.float32": "float32",
                "torch.float64": "float64", "torch.int8": "int8", "torch.uint8": "uint8", "torch.int16": "int16",
                "torch.int32": "int32", "torch.int64": "int64", "torch.bool": "bool"}


def _npz_headers(data: Any) -> dict[str, tuple[tuple[int, ...], int]]:
    """Shape and byte size of every array, read from the .npy headers without loading the data."""
    import numpy as np

    if len(data.files) > MAX_NPZ_ARRAYS:
        raise ConfigError(f"--calib {data.zip.filename} holds {len(data.files)} arrays",
                          "save one array per model input")
    members = set(data.zip.namelist())
    out = {}
    for name in data.files:
        with data.zip.open(name + ".npy" if name + ".npy" in members else name) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=10_000)
        out[name] = (shape, int(np.prod(shape, dtype=np.float64)) * dtype.itemsize)
    return out


def _check_dtype(path: Path, key: str, a: Any, example: Any) -> None:
    """Values of the kind the input takes: no float token ids, no NaN or infinity, no text."""
    import numpy as np
    import torch

    if example.is_floating_point():
        if a.dtype.kind not in "fiub":
            raise ConfigError(f"--calib {path}: '{key}' is {a.dtype}, the model takes {example.dtype}", "save numbers")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ConfigError(f"--calib {path}: '{key}' holds NaN or infinity", "save finite values")
    elif example.dtype != torch.bool:
        if a.dtype.kind not in "iub":
            raise ConfigError(f"--calib {path}: '{key}' is {a.dtype}, the model takes integers ({example.dtype})",
                              "save token ids and masks as integer arrays")
        info = torch.iinfo(example.dtype)
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise ConfigError(f"--calib {path}: '{key}' holds values outside {example.dtype}'s range", "save smaller values")
    elif a.dtype.kind not in "biu":  # bool inputs
        raise ConfigError(f"--calib {path}: '{key}' is {a.dtype}, the model takes {example.dtype}", "save a bool array")


def _check_samples(loaded: Any, path: Path, samples: list[tuple[Any, ...]]) -> None:
    """Token ids within the vocabulary, then one forward pass on the samples with extreme values."""
    import torch

    if not samples:
        raise ConfigError(f"--calib {path} holds no samples", _HINT)
    vocab = loaded.config.get("vocab_size")
    columns = list(zip(*samples))
    probes = {0}
    for i, (name, column) in enumerate(zip(loaded.input_names, columns)):
        if column[0].is_floating_point() or column[0].dtype == torch.bool:
            continue
        stacked = torch.stack(list(column))
        lo, hi = int(stacked.min()), int(stacked.max())
        if name == "input_ids" and isinstance(vocab, int) and (lo < 0 or hi >= vocab):
            raise ConfigError(f"--calib {path}: token ids range {lo}..{hi}, outside the model's vocabulary 0..{vocab - 1}",
                              "encode the samples with the model's own tokenizer")
        if name == "attention_mask" and (lo < 0 or hi > 1):
            raise ConfigError(f"--calib {path}: attention_mask values range {lo}..{hi}, not 0/1", "save a 0/1 mask")
        flat = stacked.reshape(len(column), -1)
        probes |= {int(flat.max(dim=1).values.argmax()), int(flat.min(dim=1).values.argmin())}
    for j in sorted(probes):
        try:
            with torch.no_grad():
                loaded.eager(*samples[j])
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise ConfigError(f"--calib {path}: the model cannot run on sample {j} ({type(exc).__name__}: {first})",
                              "check the values are valid for the model's inputs (e.g. token ids within its vocabulary)") from None
