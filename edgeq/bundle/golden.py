"""The golden check: one held-out input, the host runtime's output for it, and a tolerance.

Any runtime on any device runs the bundled model on ``golden/input_<i>.bin`` and compares
its output with ``golden/output.bin``. Tensors are stored as raw little-endian arrays
(shape and dtype in ``edgeq_bundle.json``, sha256 beside each), which C++, Java and
Kotlin read without a parser.

Tolerance, and why: a device runs the *same* artifact, but its kernels may round
differently (Arm vs x86 int8 paths, another thread split). Such a runtime should not be
further from the host's output than the artifact itself is from fp32, so ``max_abs`` is
the export's measured max |artifact - fp32| over its held-out inputs (floored at 1e-4 x
the output's scale, for fp32 artifacts whose export difference is near zero);
``min_cosine`` 0.999 catches a wrong model or input layout whose values are small.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeq.errors import ArtifactError

if TYPE_CHECKING:
    from edgeq.manifest import Manifest

GOLDEN_DIR = "golden"
MIN_COSINE = 0.999
RELATIVE_FLOOR = 1e-4


def make_golden(desc: dict[str, Any], manifest: Manifest, bundle_dir: Path) -> dict[str, Any]:
    """Run the bundled model here on one held-out input; write the golden tensors; return
    the ``golden`` section (or a ``skipped`` reason when the artifact cannot run here)."""
    import numpy as np

    from edgeq.backends import get_backend as backend
    from edgeq.bundle.describe import export_numerics, skipped_reason, token_id_bound

    numerics = export_numerics(manifest)
    if numerics is None:
        return {"skipped": f"no golden output: {skipped_reason(manifest)}"}
    text, arrays = _heldout_input(desc, bundle_dir, token_id_bound(manifest))
    import torch

    threads = desc["threads"] or 0
    try:
        outs = backend(desc["format"]).run(bundle_dir / desc["model_file"],
                                           [tuple(torch.from_numpy(a) for a in arrays)], threads)
    except ArtifactError:
        raise
    except Exception as exc:  # the runtimes raise RuntimeError and friends for inputs the model rejects
        raise ArtifactError(f"the artifact does not run on inputs shaped as its manifest says "
                            f"({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__})",
                            "re-run 'edgeq export'") from None
    output = np.ascontiguousarray(np.asarray(outs[0], dtype=np.float32))
    if not np.all(np.isfinite(output)):
        raise ArtifactError("the artifact's output on the golden input is not finite", "re-run 'edgeq export'")
    (bundle_dir / GOLDEN_DIR).mkdir()
    scale = float(np.max(np.abs(output))) if output.size else 1.0
    max_abs = max(float(numerics.get("max_abs") or 0.0), RELATIVE_FLOOR * max(scale, 1.0))
    return {
        "text": text,
        "inputs": [_write(bundle_dir, f"input_{i}", spec["name"], a) for i, (spec, a) in enumerate(zip(desc["inputs"], arrays))],
        "output": _write(bundle_dir, "output", (desc["outputs"] or [{"name": "output"}])[0]["name"], output),
        "tolerance": {
            "max_abs": max_abs,
            "min_cosine": MIN_COSINE,
            "how": ("max_abs: the export's max |artifact - fp32| on its held-out inputs "
                    f"({numerics.get('max_abs')}), floored at {RELATIVE_FLOOR:g} x max(1, max |output|); "
                    f"min_cosine: {MIN_COSINE} between this output and the expected one"),
        },
        "host": {"runtime": f"{desc['runtime']['name']} {desc['runtime']['version']}", "machine": platform.machine(),
                 "threads_requested": threads},
    }


def _heldout_input(desc: dict[str, Any], bundle_dir: Path, id_bound: int) -> tuple[str | None, list[Any]]:
    """A held-out sentence through the bundled tokenizer, or deterministic synthetic tensors."""
    import numpy as np

    tok = desc.get("tokenizer")
    names = [i["name"] for i in desc["inputs"]]
    if tok and tok.get("max_length") and names[:2] == ["input_ids", "attention_mask"] and len(names) == 2:
        from transformers import AutoTokenizer

        from edgeq.models.textdata import sentences

        text = sentences("heldout", 1)[0]
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(bundle_dir))
        except Exception as exc:  # transformers raises many kinds for a broken tokenizer
            raise ArtifactError(f"the artifact's tokenizer cannot be loaded ({str(exc).splitlines()[0][:160]})",
                                "re-run 'edgeq export'") from None
        enc = tokenizer(text, padding="max_length", truncation=True, max_length=tok["max_length"], return_tensors="np")
        return text, [enc["input_ids"].astype(desc["inputs"][0]["dtype"]),
                      enc["attention_mask"].astype(desc["inputs"][1]["dtype"])]
    rng = np.random.default_rng(1_000_003)  # the held-out seed: never the calibration inputs
    arrays = []
    for spec in desc["inputs"]:
        shape, dtype, name = spec["shape"], spec["dtype"], spec["name"].lower()
        if dtype == "bool":
            arrays.append(np.ones(shape, dtype=bool))
        elif dtype.startswith(("int", "uint")):
            if "mask" in name:
                arrays.append(np.ones(shape, dtype=dtype))
            elif "type" in name:
                arrays.append(np.zeros(shape, dtype=dtype))
            else:
                arrays.append(rng.integers(0, id_bound, size=shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return None, arrays


def _write(bundle_dir: Path, stem: str, name: str, array: Any) -> dict[str, Any]:
    import numpy as np

    from edgeq.artifact import sha256

    rel = f"{GOLDEN_DIR}/{stem}.bin"
    data = np.ascontiguousarray(array)
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    (bundle_dir / rel).write_bytes(data.tobytes())
    return {"name": name, "dtype": str(array.dtype), "shape": list(array.shape), "file": rel,
            "bytes": data.nbytes, "sha256": sha256(bundle_dir / rel)}
