"""Model sources: what edgeq can export, loaded into one uniform ``LoadedModel``.

Sources: a local Hugging Face model directory, a Hugging Face Hub id (needs a network),
``package.module:factory`` returning ``(module, example_inputs)``, or a saved ``.pt2``
ExportedProgram. Nothing is unpickled from untrusted files: Hugging Face weights load
from safetensors (or through ``torch.load(weights_only=True)``), ``.pt2`` files through
``torch.export.load`` with its unsafe pickle fallback switched off, and
``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeq.errors import ModelLoadError, did_you_mean

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
    source_kind: str  # hf-dir | hub | factory | pt2
    # Make ``n`` input tuples from the built-in (or user) data of a split.
    make_inputs: Callable[[str, int], list[tuple[Any, ...]]]
    inputs_description: str = ""
    exported: Any = None  # the ExportedProgram when loaded from .pt2 (``module`` is its modularized copy)
    support_files: dict[str, Path] = field(default_factory=dict)  # copied into the artifact
    config: dict[str, Any] = field(default_factory=dict)
    encode_text: Callable[[list[str]], list[tuple[Any, ...]]] | None = None  # text → input tuples (tokenizer)
    encode_images: Callable[[list[Path]], list[tuple[Any, ...]]] | None = None  # image files → input tuples

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
    """Load ``source`` (HF dir, hub id, ``pkg.mod:factory`` or ``.pt2``) for export.

    >>> m = load_model("tests.tiny_models:tiny_mlp")  # doctest: +SKIP
    >>> m.task
    'custom'
    """
    if task is not None and task not in TASKS:
        raise ModelLoadError(
            f"unknown task '{task}'{did_you_mean(task, TASKS)}", f"choose one of: {', '.join(TASKS)}"
        )
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            from edgeq.hf import load_hf_dir

            return load_hf_dir(path, task, seq_len=seq_len, trust_remote_code=trust_remote_code)
        if path.suffix == ".pt2":
            return _load_pt2(path, task)
        raise ModelLoadError(
            f"{path} is a file edgeq cannot load",
            "pass a Hugging Face model directory, a .pt2 ExportedProgram, or package.module:factory",
        )
    if _FACTORY.match(text):
        return _load_factory(text, task)
    if text.endswith(".pt2") or "/" in text and (text.startswith((".", "/", "~")) or not _HUB_ID.match(text)):
        raise ModelLoadError(f"model path {text} does not exist", "check the path")
    if _HUB_ID.match(text):
        from edgeq.hf import load_hub

        return load_hub(text, task, seq_len=seq_len, trust_remote_code=trust_remote_code)
    raise ModelLoadError(
        f"model '{text}' is not a path, a hub id (org/name) or package.module:factory",
        "check the spelling; local paths must exist",
    )


# ------------------------------------------------------------------- factory and .pt2


def _load_factory(spec: str, task: str | None) -> LoadedModel:
    import importlib

    import torch

    module_name, func_name = spec.split(":")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import '{module_name}' ({exc})", "check the module is on PYTHONPATH") from None
    factory = getattr(mod, func_name, None)
    if not callable(factory):
        raise ModelLoadError(f"'{module_name}' has no callable '{func_name}'", "check the factory name")
    made = factory()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
        raise ModelLoadError(
            f"factory {spec} must return (torch.nn.Module, example_inputs_tuple)", "fix the factory's return value"
        )
    module, example = made
    example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    module.eval()
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
    from edgeq.pt2 import modularize, safe_load

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
    )


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
