"""Running a .pte on an Android device with ExecuTorch's ``executor_runner`` (built by the
user for the device; ``edgeq profile --device adb:SERIAL``): its command line and its output."""

from __future__ import annotations

import re
from typing import Any

ANDROID_RUNNER = "ExecuTorch's executor_runner"
ANDROID_LOG_TAG = "ExecuTorch"  # Android's PAL logs to logcat, not stdout


def android_command(workdir: str, runner: str, model: str, runs: int, warmup: int, threads: int | None) -> str:
    cmd = f"cd {workdir} && ./{runner} --model_path={model} --num_executions={warmup + runs}"
    return cmd + (f" --cpu_threads={threads}" if threads else "")


def android_output_complete(text: str) -> bool:
    """Whether the timings are in the runner's own output (else they are in logcat)."""
    return "Model executed successfully" in text


def parse_android_output(text: str, warmup: int) -> dict[str, Any] | None:
    """Timings from ``executor_runner``'s log lines; None if it printed none."""
    from edgeq.profiling.runner import latency_stats

    total = re.findall(r"Model executed successfully (\d+) time\(s\) in ([0-9.]+) ms", text)
    if not total:
        return None
    count, total_ms = int(total[-1][0]), float(total[-1][1])
    loaded = re.findall(r"Model loaded in ([0-9.]+) ms", text)
    iters = [float(ms) for _, ms in re.findall(r"Iteration (\d+) of \d+: ([0-9.]+) ms", text)]
    out: dict[str, Any] = {"load_ms": float(loaded[-1]) if loaded else None, "memory": {"available": False}}
    if len(iters) == count and count > warmup:
        samples = iters[warmup:]
        out.update(warmup=warmup, runs=len(samples), latency_ms=latency_stats(samples), samples_ms=samples)
    else:
        mean = total_ms / max(count, 1)
        out.update(warmup=0, runs=count, samples_ms=[],
                   latency_ms={"min": None, "p50": None, "p90": None, "max": None, "mean": mean, "stdev": None},
                   note=f"this executor_runner prints only its total time: the mean over all {count} iterations "
                        "(warm-up included) is reported; a newer build prints each iteration")
    return out
