"""Model sources: what edgeq can export, loaded into one uniform ``LoadedModel``.

Sources: a local Hugging Face model directory, a Hugging Face Hub id (needs a network),
``package.module:factory`` returning ``(module, example_inputs)``, a saved ``.pt2``
ExportedProgram, or a GGUF file (or a directory holding one, without ``config.json``),
dequantized to float32 (``edgeq.models.gguf``). Nothing is unpickled from untrusted
files: Hugging Face weights load from safetensors (or through
``torch.load(weights_only=True)``), ``.pt2`` files through ``torch.export.load`` with its
unsafe pickle fallback switched off, and ``trust_remote_code`` stays off unless asked for.

This subpackage owns model sources and their data: ``hf`` / ``hf_checks`` (Hugging Face
directories and hub ids), ``pt2`` (saved programs, read without unpickling), ``capture``,
``gguf`` / ``gguf_header`` (GGUF files, header checked before transformers reads them),
``calib`` (user calibration data) and ``textdata`` (built-in text). It may import
``edgeq.errors``, ``edgeq.jsonio`` and ``edgeq.yamlio``; never a backend or the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeq.errors import EdgeqError, ModelLoadError, did_you_mean

TASKS = ("sentence-embedding", "sequence-classification", "image-classification", "causal-lm", "custom")

# How outputs are compared with eager FP32, per task.
METRICS = {
    "sentence-embedding": "cosine",
    "sequence-classification": "top1",
    "image-classification": "top1",
    "causal-lm": "top1",
    "custom": "cosine",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class LoadedModel:
    """An eval-mode module taking tensors, with what is needed to feed and judge it."""

    name: str
    task: str
    module: Any  # torch.nn.Module, or None for a .pt2 (see ``exported``)
    example_inputs: tuple[Any, ...]
    input_names: list[str]
    output_names: list[str]
    source: str
    source_kind: str  # hf-dir | hub | factory | pt2 | gguf
    # Make ``n`` input tuples from the built-in (or user) data of a split.
    make_inputs: Callable[[str, int], list[tuple[Any, ...]]]
    inputs_description: str = ""
    exported: Any = None  # the ExportedProgram when loaded from .pt2 (``module`` is its modularized copy)
    support_files: dict[str, Path] = field(default_factory=dict)  # copied into the artifact
    config: dict[str, Any] = field(default_factory=dict)
    encode_text: Callable[[list[str]], list[tuple[Any, ...]]] | None = None  # text → input tuples (tokenizer)
    encode_images: Callable[[list[Path]], list[tuple[Any, ...]]] | None = None  # image files → input tuples
    # whether ``module`` takes several input rows stacked along dim 0 (a .pt2 traced at a fixed
    # batch does not: its guard checks the size); planning runs such a model row by row
    batchable: bool = True
    notes: list[str] = field(default_factory=list)  # what loading did to the module (shown by export and plan)

    @property
    def metric(self) -> str:
        return METRICS[self.task]

    def eager(self, *inputs: Any) -> Any:
        """Run the FP32 reference on one input tuple."""
        if self.exported is not None:  # the saved program itself, not edgeq's rewrite of it
            return self.exported.module()(*inputs)
        return self.module(*inputs)


def load_model(
    source: str | Path,
    task: str | None = None,
    *,
    seq_len: int = 128,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load ``source`` (HF dir, hub id, ``pkg.mod:factory``, ``.pt2`` or ``.gguf``) for export.

    >>> m = load_model("tests.tiny_models:tiny_mlp")  # doctest: +SKIP
    >>> m.task
    'custom'
    """
    loaded = _load_any(source, task, seq_len=seq_len, trust_remote_code=trust_remote_code)
    if loaded.module is not None and loaded.exported is None:
        _split_attention(loaded)
    return loaded


def _split_attention(loaded: LoadedModel) -> None:
    """Each ``nn.MultiheadAttention`` of the model split into four linears (planned like any
    linear), kept only if the model's outputs on its example inputs stay the same."""
    from edgeq.models.attention import split_checked

    def first_tensor() -> Any:
        out = loaded.module(*loaded.example_inputs)
        return _first_output(out.to_tuple() if hasattr(out, "to_tuple") else out)  # a transformers ModelOutput too

    _, notes = _call_user_code(lambda: split_checked(loaded.module, first_tensor), f"the model from {loaded.source}",
                               "fix the model")
    loaded.notes.extend(notes)


def _first_output(out: Any) -> Any:
    """A model's first output: the first item of nested tuples / lists."""
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out


def _load_any(source: str | Path, task: str | None, *, seq_len: int, trust_remote_code: bool) -> LoadedModel:
    if task is not None and task not in TASKS:
        raise ModelLoadError(
            f"unknown task '{task}'{did_you_mean(task, TASKS)}", f"choose one of: {', '.join(TASKS)}"
        )
    text = str(source)
    if not text or "\0" in text or len(text) > 4096:
        raise ModelLoadError(f"model source {text[:80]!r} is not a valid path or name", "check the model argument")
    path = Path(text).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name component too long: not a usable path
        raise ModelLoadError(f"cannot use model path {text[:200]} ({exc.strerror or type(exc).__name__})",
                             "check the path") from None
    if exists:
        from edgeq.models.gguf import gguf_in_dir, load_gguf

        if path.is_file() and path.suffix.lower() == ".gguf":
            return load_gguf(path, task, seq_len=seq_len)
        if path.is_dir() and (gguf := gguf_in_dir(path)) is not None:
            return load_gguf(gguf, task, seq_len=seq_len)
        if path.is_dir():
            from edgeq.models.hf import load_hf_dir

            return load_hf_dir(path, task, seq_len=seq_len, trust_remote_code=trust_remote_code)
        if path.suffix == ".pt2":
            return _load_pt2(path, task)
        raise ModelLoadError(
            f"{path} is a file edgeq cannot load",
            "pass a Hugging Face model directory, a .gguf file, a .pt2 ExportedProgram, or package.module:factory",
        )
    if _FACTORY.match(text):
        return _load_factory(text, task)
    similar = _similar_path(path, text)
    if text.endswith((".pt2", ".gguf")) or similar or _looks_like_path(text):
        kind = "file" if text.endswith((".pt2", ".gguf")) else "directory"
        raise ModelLoadError(f"model path {text} does not exist: no such {kind}{similar}", "check the path")
    if _HUB_ID.match(text):
        from edgeq.models.hf import load_hub

        return load_hub(text, task, seq_len=seq_len, trust_remote_code=trust_remote_code)
    raise ModelLoadError(
        f"model '{text}' is not a path, a hub id (org/name) or package.module:factory",
        "check the spelling; local paths must exist",
    )


def _looks_like_path(text: str) -> bool:
    """A string meant as a local path rather than a hub id (``org/name``)."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.endswith("/"):
        return True
    if "/" in text:
        if not _HUB_ID.match(text):
            return True
        first = Path(text.split("/")[0])
        return first.is_dir()  # models/bert where ./models exists: a path, not the hub org "models"
    return False


def _similar_path(path: Path, text: str) -> str:
    """``"; did you mean 'x'?"`` when the parent directory holds a close name, else ``""``."""
    import itertools
    import os

    parent = path.parent
    try:
        if not path.name or not parent.is_dir():
            return ""
        with os.scandir(parent) as entries:  # bounded: a huge directory is not listed whole
            names = [e.name for e in itertools.islice(entries, 10_000) if e.is_dir() or e.name.endswith((".pt2", ".gguf"))]
    except OSError:
        return ""
    close = did_you_mean(path.name, names).removeprefix("; did you mean '").removesuffix("'?")
    if not close:
        return ""
    typed = str(text).rstrip("/")
    return f"; did you mean '{typed[: len(typed) - len(path.name)]}{close}'?"


# ------------------------------------------------------------------- factory and .pt2


def _call_user_code(call: Callable[[], Any], what: str, hint: str) -> Any:
    """Run the user's Python; whatever it raises becomes a ModelLoadError, except an interrupt.

    ``SystemExit`` is caught too: a factory calling ``sys.exit(0)`` must not end a failed
    export with exit code 0.
    """
    try:
        return call()
    except (KeyboardInterrupt, EdgeqError):
        raise
    except SystemExit as exc:
        raise ModelLoadError(f"{what} called sys.exit({exc.code!r})", hint) from None
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else ""
        raise ModelLoadError(f"{what} raised {type(exc).__name__}" + (f": {first}" if first else ""), hint) from None


def _load_factory(spec: str, task: str | None) -> LoadedModel:
    import importlib

    import torch

    module_name, func_name = spec.split(":")
    def import_it() -> Any:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # the factory's own module, not one it imports
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise ModelLoadError(f"cannot import '{module_name}' (no module named '{exc.name}')",
                                     "check the module is on PYTHONPATH") from None
            raise

    mod = _call_user_code(import_it, f"importing '{module_name}'", "fix the module or install what it imports")
    factory = getattr(mod, func_name, None)
    if not callable(factory):
        raise ModelLoadError(f"'{module_name}' has no callable '{func_name}'", "check the factory name")
    fix = "a factory must return (torch.nn.Module, example_inputs_tuple)"
    made = _call_user_code(factory, f"factory {spec}", fix)
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
        raise ModelLoadError(
            f"factory {spec} must return (torch.nn.Module, example_inputs_tuple)", "fix the factory's return value"
        )
    module, example = made
    example = _check_example(spec, example)
    _call_user_code(module.eval, f"the module from {spec}: eval()", "fix the module")

    def run() -> Any:
        with torch.no_grad():
            return module(*example)

    out = _first_output(_call_user_code(run, f"the module from {spec} run on its example inputs",
                                        "fix the factory's example inputs"))
    if not isinstance(out, torch.Tensor) or out.is_complex():
        raise ModelLoadError(f"the module from {spec} returns {type(out).__name__}, not a real-valued tensor",
                             "return a tensor (or a tuple whose first item is one) from forward()")
    return LoadedModel(
        name=func_name,
        task=task or "custom",
        module=module,
        example_inputs=example,
        input_names=[f"input_{i}" for i in range(len(example))],
        output_names=["output"],
        source=spec,
        source_kind="factory",
        make_inputs=lambda split, n: synthetic_inputs(example, split, n),
        inputs_description="synthetic inputs shaped like the factory's example inputs",
    )


def _load_pt2(path: Path, task: str | None) -> LoadedModel:
    from edgeq.models.pt2 import modularize, safe_load

    ep = safe_load(path)
    example = ep.example_inputs[0] if ep.example_inputs else None
    if not example:
        raise ModelLoadError(f"{path} has no example inputs saved",
                             "save it with torch.export.save after torch.export.export(model, args)")
    example = tuple(example)
    return LoadedModel(
        name=path.stem,
        task=task or "custom",
        module=modularize(ep),
        exported=ep,
        example_inputs=example,
        input_names=[s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"],
        output_names=["output"],
        source=str(path),
        source_kind="pt2",
        make_inputs=lambda split, n: synthetic_inputs(example, split, n),
        inputs_description="synthetic inputs shaped like the program's example inputs",
        batchable=_dynamic_batch(ep),
    )


def _dynamic_batch(ep: Any) -> bool:
    """Whether every tensor input of the program ``ep`` has a symbolic (exported-as-dynamic) dim 0."""
    import torch

    users = {s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"}
    shapes = [n.meta["val"].shape for n in ep.graph.nodes
              if n.op == "placeholder" and n.name in users and hasattr(n.meta.get("val"), "shape")]
    return bool(shapes) and all(len(shape) > 0 and isinstance(shape[0], torch.SymInt) for shape in shapes)


_EXAMPLE_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
MAX_EXAMPLE_ELEMENTS = 1 << 28


def _check_example(spec: str, example: Any) -> tuple[Any, ...]:
    """The factory's example inputs as a tuple of plain CPU tensors, or a ModelLoadError."""
    import torch

    items = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    hint = "return a tuple of CPU tensors, one per forward() argument"
    if not items:
        raise ModelLoadError(f"factory {spec} returned no example inputs", hint)
    for i, x in enumerate(items):
        if not isinstance(x, torch.Tensor):
            raise ModelLoadError(f"factory {spec}: example input {i} is {type(x).__name__}, not a tensor", hint)
        if x.layout != torch.strided or x.device.type != "cpu" or str(x.dtype).removeprefix("torch.") not in _EXAMPLE_DTYPES:
            raise ModelLoadError(f"factory {spec}: example input {i} is a {x.dtype} {x.layout} tensor on {x.device}",
                                 f"{hint}, of dtype {', '.join(_EXAMPLE_DTYPES)}")
        if x.numel() > MAX_EXAMPLE_ELEMENTS:
            raise ModelLoadError(f"factory {spec}: example input {i} has {x.numel():,} elements", "use a smaller example")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ModelLoadError(f"factory {spec}: example input {i} holds NaN or infinity", "use finite example values")
    return tuple(x.detach() for x in items)


def synthetic_inputs(example: tuple[Any, ...], split: str, n: int) -> list[tuple[Any, ...]]:
    """``n`` input tuples shaped like ``example``; seeds differ per split so they never match."""
    import torch

    gen = torch.Generator().manual_seed(0 if split == "calib" else 1_000_003)
    out = []
    for _ in range(n):
        row = []
        for x in example:
            if not isinstance(x, torch.Tensor):
                row.append(x)
            elif x.is_floating_point():
                row.append(torch.randn(x.shape, generator=gen, dtype=x.dtype))
            elif x.dtype == torch.bool:
                row.append(torch.randint(0, 2, x.shape, generator=gen).bool())
            else:
                hi = int(x.max()) + 1 if x.numel() else 1
                row.append(torch.randint(0, max(hi, 1), x.shape, generator=gen, dtype=x.dtype))
        out.append(tuple(row))
    return out
