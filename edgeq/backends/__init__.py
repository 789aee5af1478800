"""Lowering backends: one module per artifact format.

Each backend module provides::

    lower(model: LoadedModel, target: Target, plan: QuantPlan, workdir: Path,
          steps: Steps, strict: bool) -> Lowered
    run(model_file: Path, inputs: list[tuple], threads: int) -> list[np.ndarray]

``run`` executes the artifact in its real runtime (ExecuTorch pybindings or ONNX
Runtime). Backends are imported lazily, so choosing one costs nothing up front.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Lowered:
    model_file: Path
    delegates_used: list[str]  # delegates that took at least one op, in chain order
    delegation: dict[str, Any]  # delegated_ops, portable_op_count, portable_ops, ...
    layer_schemes: dict[str, str]  # fqn → scheme actually applied
    runtime: str  # e.g. "ExecuTorch 1.5.1 pybindings"
    runnable_here: bool = True  # False when the delegate needs hardware/OS not present
    not_runnable_reason: str = ""
    reference_file: Path | None = None  # an equivalent artifact that does run here
    reference_runtime: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    extra_files: list[Path] = field(default_factory=list)  # shipped beside the model file (e.g. ops.json)


def backend(fmt: str) -> Any:
    """The backend module for an artifact format (``executorch`` or ``onnx``)."""
    return importlib.import_module(f"edgeq.backends.{'executorch' if fmt == 'executorch' else 'onnx'}")


def silence_native_stderr():
    """Hide what native runtimes print straight to fd 2 (e.g. XNNPACK's cpuinfo probing).

    Python-level errors still surface as exceptions; with ``EDGEQ_DEBUG=1`` (set by
    ``--debug``) nothing is hidden.
    """
    import contextlib
    import os
    import sys

    @contextlib.contextmanager
    def _silenced():
        if os.environ.get("EDGEQ_DEBUG") == "1":
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    return _silenced()
