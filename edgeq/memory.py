"""Runtime memory of an artifact: measured in a fresh process, and predicted from its plan.

Measured (``measure_peak_rss``): a fresh Python process imports the runtime, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), records its resident set (the
*baseline*), loads the artifact, runs it ``runs`` times on zeros (ones for ``*mask*``
inputs) shaped as the manifest says, and reports the peak resident set (``VmHWM``).

Predicted (``predict_peak``): see ``MemoryEstimate`` and the constants below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def _status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _settle() -> None:
    """Collect garbage and hand free heap pages back to the OS (glibc ``malloc_trim``), so
    the baseline counts only memory in use and the model's allocations are all new pages."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _run_child(artifact_dir: str, runs: int) -> dict[str, Any]:
    """Body of the fresh measuring process (``python -m edgeq.memory DIR RUNS``)."""
    manifest = json.loads((Path(artifact_dir) / "manifest.json").read_text())
    model = Path(artifact_dir) / manifest["model_file"]
    inputs = manifest["model"]["inputs"]
    fill = [1 if "mask" in i["name"] else 0 for i in inputs]
    if model.suffix == ".pte":
        import executorch.kernels.quantized  # noqa: F401  quantized embedding kernels
        import torch
        from executorch.runtime import Runtime

        runtime = Runtime.get()
        feeds: Any = [torch.full(i["shape"], v, dtype=getattr(torch, i["dtype"])) for i, v in zip(inputs, fill)]
        _settle()
        reset = _reset_peak()
        base = _status()
        method = runtime.load_program(str(model)).load_method("forward")
        loaded = _status()
        for _ in range(runs):
            method.execute(feeds)
    else:
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(manifest["target"].get("threads") or 0)
        opts.log_severity_level = 3
        feeds = {i["name"]: np.full(i["shape"], v, dtype=i["dtype"]) for i, v in zip(inputs, fill)}
        _settle()
        reset = _reset_peak()
        base = _status()
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        loaded = _status()
        for _ in range(runs):
            session.run(None, feeds)
    end = _status()
    return {
        "baseline_rss_bytes": base["VmRSS"],
        "baseline_hwm_bytes": base["VmHWM"],
        "peak_rss_bytes": end["VmHWM"],
        "model_attributable_bytes": end["VmHWM"] - base["VmRSS"],
        "after_load_rss_bytes": loaded["VmRSS"],
        "after_load_hwm_bytes": loaded["VmHWM"],
        "final_rss_bytes": end["VmRSS"],
        "final_anon_bytes": end["RssAnon"] - base["RssAnon"],
        "final_file_bytes": end["RssFile"] - base["RssFile"],
        "peak_reset": reset,
        "runs": runs,
    }


def measure_peak_rss(artifact_dir: str | Path, runs: int = 3, timeout: float = 900) -> dict[str, Any]:
    """Peak RSS of loading and running ``artifact_dir`` ``runs`` times, in a fresh process.

    Returns ``baseline_rss_bytes`` (runtime imported, nothing loaded), ``peak_rss_bytes``
    (``VmHWM`` after the runs) and ``model_attributable_bytes`` (peak − baseline), plus
    the RSS after loading and the final anonymous / file-backed growth, for diagnosis.
    """
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "edgeq.memory", str(Path(artifact_dir).resolve()), str(runs)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {artifact_dir} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(_run_child(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)), flush=True)
