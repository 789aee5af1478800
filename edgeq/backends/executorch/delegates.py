"""ExecuTorch delegates: which can lower here, which can run here, their partitioners.

Lowering and running are different questions. On Linux, XNNPACK lowers and runs;
Core ML (with coremltools installed) and Vulkan lower but their runtimes exist only on
Apple OSes and GPU devices; QNN lowers only with Qualcomm's QNN SDK (``QNN_SDK_ROOT``),
which edgeq never downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKEND_IDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend", "vulkan": "VulkanBackend", "qnn": "QnnBackend"}


@dataclass(frozen=True)
class Availability:
    can_lower: bool
    can_run_here: bool
    reason: str = ""  # why it cannot lower (or run), in words a user can act on


def availability(delegate: str) -> Availability:
    if delegate == "xnnpack":
        return Availability(True, True)
    if delegate == "coreml":
        try:
            import coremltools  # noqa: F401
        except ImportError:
            return Availability(False, False, "coremltools is not installed (pip install 'edgeq[coreml]')")
        return Availability(True, False, "the Core ML runtime exists only on Apple OSes")
    if delegate == "vulkan":
        return Availability(True, _registered("VulkanBackend"), "this host's ExecuTorch runtime has no Vulkan backend")
    if delegate == "qnn":
        sdk = qnn_sdk_root()
        if sdk is None:
            return Availability(False, False, "Qualcomm's QNN SDK was not found (set QNN_SDK_ROOT to an installed QNN SDK)")
        return Availability(True, False, "QNN artifacts run only on Qualcomm devices")
    return Availability(False, False, f"unknown delegate {delegate}")


def qnn_sdk_root() -> Path | None:
    """The QNN SDK root if ``QNN_SDK_ROOT`` points at one with the HTP library, else None."""
    root = os.environ.get("QNN_SDK_ROOT")
    if not root:
        return None
    path = Path(root)
    return path if (path / "lib" / "x86_64-linux-clang" / "libQnnHtp.so").exists() else None


def _registered(backend_id: str) -> bool:
    try:
        from executorch.runtime import Runtime

        return backend_id in Runtime.get().backend_registry.registered_backend_names
    except Exception:  # pybindings missing or broken: nothing beyond XNNPACK is assumed
        return False


def partitioner(delegate: str, precision: str, soc: str | None = None) -> Any:
    """The ExecuTorch partitioner for ``delegate`` configured for ``precision``."""
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()
    if delegate == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        # The Neural Engine computes in fp16; int4 weights need iOS 18 / macOS 15.
        specs = CoreMLBackend.generate_compile_specs(
            compute_unit=ct.ComputeUnit.ALL,
            minimum_deployment_target=ct.target.iOS18 if precision == "int4" else ct.target.iOS17,
            compute_precision=ct.precision.FLOAT16,
            model_type=CoreMLBackend.MODEL_TYPE.MODEL,
        )
        return CoreMLPartitioner(compile_specs=specs)
    if delegate == "vulkan":
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return VulkanPartitioner({"force_fp16": precision == "fp16"})
    if delegate == "qnn":
        return _qnn_partitioner(precision, soc)
    raise ValueError(delegate)


def _qnn_partitioner(precision: str, soc: str | None) -> Any:
    """QNN HTP partitioner; only reached when ``qnn_sdk_root()`` found an SDK."""
    from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
    from executorch.backends.qualcomm.utils.utils import (
        generate_htp_compiler_spec,
        generate_qnn_executorch_compiler_spec,
        get_soc_to_chipset_map,
    )

    backend = generate_htp_compiler_spec(use_fp16=precision in ("fp16", "fp32"))
    chip = get_soc_to_chipset_map()[soc or "SM8650"]
    return QnnPartitioner(generate_qnn_executorch_compiler_spec(soc_model=chip, backend_options=backend))
