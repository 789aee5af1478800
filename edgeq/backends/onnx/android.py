"""Running an .onnx model on an Android device with ONNX Runtime's ``onnxruntime_perf_test``
(built by the user for the device): its command line and its output."""

from __future__ import annotations

import re
from typing import Any

ANDROID_RUNNER = "ONNX Runtime's onnxruntime_perf_test"
ANDROID_LOG_TAG = ""


def android_command(workdir: str, runner: str, model: str, runs: int, warmup: int, threads: int | None) -> str:
    cmd = f"cd {workdir} && LD_LIBRARY_PATH={workdir} ./{runner} -I -m times -r {runs} -s"
    return cmd + (f" -x {threads}" if threads else "") + f" {model}"


def android_output_complete(text: str) -> bool:
    return True


def parse_android_output(text: str, warmup: int = 0) -> dict[str, Any] | None:
    """Timings from ``onnxruntime_perf_test -s``; None if it printed none."""
    def seconds(label: str) -> float | None:
        found = re.findall(rf"^{label}: ([0-9.eE+-]+) s\s*$", text, re.MULTILINE)
        return float(found[-1]) * 1e3 if found else None

    mean = re.findall(r"Average inference time cost(?: total)?: ([0-9.eE+-]+) ms", text)
    requests = re.findall(r"Total inference requests: (\d+)", text)
    if not mean or not requests:
        return None
    peak = re.findall(r"Peak working set size: (\d+) bytes", text)
    latency = {"min": seconds("Min Latency"), "p50": seconds("P50 Latency"), "p90": seconds("P90 Latency"),
               "max": seconds("Max Latency"), "mean": float(mean[-1]), "stdev": None}
    return {
        "warmup": 1, "runs": int(requests[-1]), "load_ms": seconds("Session creation time cost"),
        "latency_ms": latency, "samples_ms": [],
        "memory": {"available": True, "peak_rss_bytes": int(peak[-1])} if peak else {"available": False},
        "note": "onnxruntime_perf_test runs one warm-up of its own and feeds random inputs",
    }
