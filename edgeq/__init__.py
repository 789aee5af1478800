"""edgeq: put trained PyTorch models on edge devices.

Quantize to fit a device's memory budget, lower to ExecuTorch (.pte) or ONNX with the
target's delegates, verify numerics in the real runtime, and profile.

>>> import edgeq
>>> result = edgeq.export("path/to/hf-model", target="snapdragon8")  # doctest: +SKIP
>>> result.artifact_dir  # doctest: +SKIP

Heavy libraries (torch, executorch, onnxruntime) are imported only by the functions that
need them, so importing edgeq and listing targets is instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgeq.errors import EdgeqError

__all__ = ["EdgeqError", "__version__", "export", "load_target"]


def __getattr__(name: str):  # lazy public API
    if name == "export":
        from edgeq.export import export

        return export
    if name == "load_target":
        from edgeq.targets import load_target

        return load_target
    raise AttributeError(name)
