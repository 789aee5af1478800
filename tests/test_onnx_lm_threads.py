"""Whether an ONNX LLM session's threads spin between kernels: the idle CPUs it reads."""

from __future__ import annotations

import subprocess
import sys
import time

from edgeq.backends.onnx.llm_session import spin_threads
from edgeq.hostcpu import idle_between, idle_cpus, parse_proc_stat, usable_cpus

STAT_BEFORE = """cpu  300 0 100 1000 0 0 0 0 0 0
cpu0 100 0 50 500 0 0 0 0 0 0
cpu1 200 0 50 500 0 0 0 0 0 0
intr 12345 0 0
"""
# cpu0: 30 busy ticks (user 20, irq 5, steal 5) and 70 idle (60 idle, 10 iowait) later;
# cpu1: 100 busy (user 80, nice 10, system 10), none idle
STAT_AFTER = """cpu  420 10 160 1070 10 5 0 5 0 0
cpu0 120 0 50 560 10 5 0 5 0 0
cpu1 280 10 60 500 0 0 0 0 0 0
intr 23456 0 0
"""


def test_idle_cpus_from_two_proc_stat_snapshots():
    before, after = parse_proc_stat(STAT_BEFORE), parse_proc_stat(STAT_AFTER)
    assert set(before) == {0, 1}  # the all-CPU line is not a CPU
    assert idle_between(before, after, {0, 1}) == 0.7  # 70/100 of cpu0 + 0/100 of cpu1
    assert idle_between(before, after, {1}) == 0.0
    assert idle_between(before, before, {0, 1}) == 2.0  # no tick counted: nothing ran


def test_cpus_kept_busy_are_not_idle_and_threads_then_sleep():
    cpus = usable_cpus()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in cpus]
    try:
        time.sleep(0.5)
        idle = idle_cpus(0.5)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert idle is not None and idle < 0.5 * len(cpus)
    assert not spin_threads(len(cpus), idle)
    assert spin_threads(2, 2.0) and not spin_threads(2, None)
