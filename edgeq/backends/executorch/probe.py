"""What an fp32 lowering tells the planner before it plans: ExecuTorch's planned
activation arena and the .pte's bytes beyond the weights.

The arena holds the tensors passed between delegated subgraphs and portable ops; it does
not depend on the weights' schemes (equal, to the byte, for MiniLM at fp32, int8 and
int4), so one fp32 lowering plans it for every plan. Cached on disk beside the
sensitivity results.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from edgeq.backends import Probe
from edgeq.errors import ConfigError
from edgeq.progress import Steps


def fp32_probe(loaded: Any, resolved: Any, facts: Any, fp32_weight_bytes: int, steps: Steps,
               use_cache: bool = True) -> Probe:
    arena, file_bytes = planned_arena(loaded, resolved, steps, use_cache)
    return Probe(activation_bytes=arena, file_overhead_bytes=max(0, file_bytes - fp32_weight_bytes))


def planned_arena(loaded: Any, resolved: Any, steps: Steps, use_cache: bool = True) -> tuple[int, int]:
    """The planned arena for ``loaded`` on ``resolved``'s delegate chain, and the fp32 .pte's size."""
    from edgeq import __version__
    from edgeq.planning import sensitivity
    from edgeq.backends.executorch.lowering import lower
    from edgeq.planning.inventory import layer_inventory
    from edgeq.planning.plan import QuantPlan
    from edgeq.schemes import FP32
    from edgeq.yamlio import write_text_atomic

    tgt = resolved.target
    h = hashlib.sha256(f"arena2|{__version__}|{tgt.delegates}|{resolved.profile.name}".encode())
    h.update(sensitivity.cache_key(loaded.module, [tuple(loaded.example_inputs)], {}, "arena", None, "executorch").encode())
    path = sensitivity.cache_dir() / f"arena-{h.hexdigest()[:32]}.json"
    if use_cache and path.exists():
        try:
            data = json.loads(path.read_text())
            return int(data["planned_activation_bytes"]), int(data["file_bytes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cache file {path} is corrupt ({exc})", "delete it and re-run") from None
    with steps.step("Planning ExecuTorch's activation memory (fp32 lowering)") as info:
        plan = QuantPlan(schemes={x.fqn: FP32 for x in layer_inventory(loaded.module)})
        with tempfile.TemporaryDirectory(prefix="edgeq-arena-") as tmp:
            lowered = lower(loaded, tgt, plan, Path(tmp), Steps(show=False), False, resolved.profile)
            arena = lowered.planned_activation_bytes
            size = lowered.model_file.stat().st_size
        info.detail = f"{arena / 1e6:.2f} MB"
    if use_cache:
        write_text_atomic(path, json.dumps({"planned_activation_bytes": arena, "file_bytes": size}))
    return arena, size
