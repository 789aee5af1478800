"""Factories that misbehave on purpose, for the hostile-input suites (``tests.hostile_models:<name>``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn


class SlowToExport(nn.Module):
    """Sleeps while it is being captured for export (not in eager runs), so a test can
    signal the process while its staging directory exists."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            time.sleep(float(os.environ.get("EDGEQ_TEST_EXPORT_SLEEP", "0")))
        return self.fc(x)


def slow_to_export():
    torch.manual_seed(0)
    return SlowToExport().eval(), (torch.randn(1, 8),)


def slow_with_a_worker_thread():
    """``slow_to_export`` whose code also leaves a non-daemon thread running (as a library's
    worker pool can): an interrupted export must still end."""
    import threading
    import time

    threading.Thread(target=time.sleep, args=(3600,), name="library-worker").start()
    return slow_to_export()


def marks_loaded():
    """Writes the file named by ``EDGEQ_TEST_MARKER`` when called: shows whether a command
    loaded the model before refusing its other input."""
    Path(os.environ["EDGEQ_TEST_MARKER"]).write_text("loaded")
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64)).eval(), (torch.randn(1, 64),)
