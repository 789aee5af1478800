"""This host's CPUs as a process sees them: the ones it may run on, and how many of them are idle."""

from __future__ import annotations

import os
import time
from pathlib import Path


def usable_cpus() -> set[int]:
    """The CPUs this process may run on."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def idle_cpus(seconds: float = 0.1, stat: Path = Path("/proc/stat")) -> float | None:
    """How many of the usable CPUs were idle over ``seconds`` (``/proc/stat``'s idle and
    iowait time), or, where that file is not there, the CPUs the 1-minute load average
    leaves free; None if neither can be read."""
    def snapshot() -> dict[int, tuple[int, int]] | None:
        try:
            return parse_proc_stat(stat.read_text())
        except (OSError, ValueError):
            return None

    before = snapshot()
    if before is None:
        try:
            return max(0.0, len(usable_cpus()) - os.getloadavg()[0])
        except (AttributeError, OSError):
            return None
    time.sleep(seconds)
    after = snapshot()
    return None if after is None else idle_between(before, after, usable_cpus())


def idle_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: set[int]) -> float:
    """The idle CPUs (a sum of fractions) among ``cpus`` between two ``parse_proc_stat``
    snapshots; a CPU with no tick counted between them ran nothing."""
    idle = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after:
            busy = after[cpu][0] - before[cpu][0]
            free = after[cpu][1] - before[cpu][1]
            idle += free / (busy + free) if busy + free > 0 else 1.0
    return idle


def parse_proc_stat(text: str) -> dict[int, tuple[int, int]]:
    """``{cpu: (busy ticks, idle ticks)}`` from ``/proc/stat``'s per-CPU lines (idle: idle +
    iowait; busy: user, nice, system, irq, softirq and steal — guest time is inside user)."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in rest.split()[:8]]
            ticks += [0] * (8 - len(ticks))
            user, nice, system, idle, iowait, irq, softirq, steal = ticks
            out[int(name[3:])] = (user + nice + system + irq + softirq + steal, idle + iowait)
    return out
