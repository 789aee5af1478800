"""Peak resident memory of an artifact, measured by edgeq's runner in fresh processes.

The measurement is the runner's own (``edgeq/profiling/runner.py``: import the runtime,
settle the heap, reset the kernel's peak counter, take the baseline, load, run; peak RSS
is ``VmHWM``), run with no warm-up so only ``runs`` executions follow the load. This
module adds what the memory model's benchmarks need: a fixed minimal environment (its size
shifts the process's layout, and with it how often ONNX Runtime lands in its low-RSS mode)
and the median of several fresh processes.

>>> measure_peak_rss("dist/all-MiniLM-L6-v2-x86")["model_attributable_bytes"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).with_name("runner.py")


def measure_peak_rss(artifact_dir: str | Path, runs: int = 3, *, repeats: int = 1,
                     timeout: float = 900) -> dict[str, Any]:
    """Peak RSS of loading and running ``artifact_dir`` ``runs`` times, in a fresh process.

    Returns the runner's memory block and its ``memory_detail``: ``baseline_rss_bytes`` (runtime imported, nothing
    loaded), ``peak_rss_bytes`` (``VmHWM`` after the runs), ``model_attributable_bytes``
    (peak − baseline), the RSS after loading and the final anonymous / file-backed growth.
    With ``repeats`` > 1, that many fresh processes are measured and the one with the
    most attributable bytes is returned (a budget must hold for every load), with the range
    in ``attributable_range_bytes``. The same file can measure differently in two processes:
    ONNX Runtime frees each linear's unpacked weights after prepacking them, and whether the
    C allocator hands those bytes back to the system depends on which malloc arena each
    thread got (the four-1024² fp32 model of tests/test_memory.py measured 43.4 MB alone and
    30.8 to 35.0 MB inside the test suite).
    """
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env.update(LANG="C.UTF-8", HF_HUB_OFFLINE="1")
    results = []
    for _ in range(max(1, repeats)):
        fd, out = tempfile.mkstemp(prefix="edgeq-rss-", suffix=".json")
        os.close(fd)
        try:
            proc = subprocess.run([sys.executable, str(RUNNER), str(Path(artifact_dir).resolve()), "--runs", str(runs),
                                   "--warmup", "0", "--json-out", out],
                                  env=env, capture_output=True, text=True, timeout=timeout)
            report = json.loads(Path(out).read_text()) if proc.returncode == 0 else None
        except (OSError, ValueError):
            report = None
        finally:
            Path(out).unlink(missing_ok=True)
        memory = (report or {}).get("memory") or {}
        if not memory.get("available"):
            raise RuntimeError(f"measuring {artifact_dir} failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-500:] or 'no memory figures from the runner'}")
        results.append({**memory, **((report or {}).get("memory_detail") or {}), "runs": runs})
    results.sort(key=lambda r: r["model_attributable_bytes"])
    chosen = results[-1]
    chosen["repeats"] = len(results)
    chosen["attributable_range_bytes"] = [results[0]["model_attributable_bytes"], results[-1]["model_attributable_bytes"]]
    return chosen
