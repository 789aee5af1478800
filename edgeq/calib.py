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

Only calibration (sensitivity, static int8 convolutions) uses it; fidelity is still
checked on the built-in held-out split, so plans made with different data compare fairly.

>>> loaded = with_calibration(load_model("./model"), "my_sentences.txt")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def with_calibration(loaded: Any, path: str | Path) -> Any:
    """A copy of ``loaded`` whose ``make_inputs("calib", n)`` draws from ``path``."""
    samples = load_samples(loaded, Path(path))
    builtin = loaded.make_inputs

    def make(split: str, n: int) -> list[tuple[Any, ...]]:
        if split != "calib":
            return builtin(split, n)
        return [samples[i % len(samples)] for i in range(min(n, len(samples)))]

    return dataclasses.replace(loaded, make_inputs=make,
                               config={**loaded.config, "calibration": f"{path} ({len(samples)} samples)"})


def load_samples(loaded: Any, path: Path) -> list[tuple[Any, ...]]:
    if not path.exists():
        raise ConfigError(f"--calib {path}: no such file or directory", "pass a .txt, .npz or a directory of them / images")
    if path.suffix == ".npz":
        return _npz(loaded, path)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    texts = [f for f in files if f.suffix == ".txt"]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if texts and not images:
        return _texts(loaded, path, texts)
    if images and not texts:
        return _images(loaded, path, images)
    if texts and images:
        raise ConfigError(f"--calib {path} mixes text files and images", "keep one kind of data per directory")
    raise ConfigError(f"--calib {path}: no .txt, .npz or image files found", "pass a .txt, .npz or a directory of images")


def _texts(loaded: Any, path: Path, files: list[Path]) -> list[tuple[Any, ...]]:
    lines = []
    for f in files:
        try:
            lines += [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ConfigError(f"--calib {f} is not UTF-8 text", "save it as UTF-8") from None
    if not lines:
        raise ConfigError(f"--calib {path} has no non-empty lines", "put one calibration sample per line")
    if loaded.encode_text is None:
        raise ConfigError(f"--calib {path}: text calibration needs a text model with a tokenizer; "
                          f"{loaded.name} ({loaded.task}) has none", "pass a .npz with the model's inputs instead")
    return loaded.encode_text(lines)


def _images(loaded: Any, path: Path, files: list[Path]) -> list[tuple[Any, ...]]:
    if loaded.encode_images is None:
        raise ConfigError(f"--calib {path}: image calibration needs an image model with a preprocessor_config.json; "
                          f"{loaded.name} ({loaded.task}) has none", "pass a .npz with the model's inputs instead")
    return loaded.encode_images(files)


def _npz(loaded: Any, path: Path) -> list[tuple[Any, ...]]:
    import numpy as np
    import torch

    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--calib {path} is not a readable .npz ({exc})", "write it with numpy.savez") from None
    columns = []
    for i, (name, example) in enumerate(zip(loaded.input_names, loaded.example_inputs)):
        key = name if name in arrays else f"arg{i}"
        if key not in arrays:
            raise ConfigError(f"--calib {path} has no array '{name}' (or 'arg{i}'); it has: {', '.join(arrays) or 'none'}",
                              f"save one array per input: {', '.join(loaded.input_names)}")
        a = arrays[key]
        if tuple(a.shape[1:]) != tuple(example.shape):
            raise ConfigError(f"--calib {path}: '{key}' has samples of shape {list(a.shape[1:])}, the model takes "
                              f"{list(example.shape)}", "the first axis indexes samples; the rest must match")
        columns.append(torch.from_numpy(np.ascontiguousarray(a)).to(example.dtype))
    counts = {len(c) for c in columns}
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(f"--calib {path}: inputs have different or zero sample counts", "give every input the same number of samples")
    return [tuple(c[j] for c in columns) for j in range(counts.pop())]
