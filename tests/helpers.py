"""Run artifacts in their real runtimes directly (not through edgeq) and compare with eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def run_pte(path: Path, rows: list[tuple]) -> list[np.ndarray]:
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return [method.execute(list(r))[0].float().numpy() for r in rows]


def run_onnx(path: Path, rows: list[tuple]) -> list[np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return [s.run(None, {n: t.numpy() for n, t in zip(names, r)})[0] for r in rows]


def cosines(model, rows: list[tuple], outs: list[np.ndarray]) -> list[float]:
    result = []
    with torch.no_grad():
        for r, o in zip(rows, outs):
            ref = model(*r)
            ref = ref[0] if isinstance(ref, tuple) else ref
            a, b = ref.flatten().double().numpy(), np.asarray(o, dtype=np.float64).flatten()
            result.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return result


def random_rows(example: tuple, n: int, seed: int = 7) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        row = []
        for x in example:
            if x.is_floating_point():
                row.append(torch.randn(x.shape, generator=g))
            else:
                row.append(torch.randint(0, int(x.max()) + 1, x.shape, generator=g, dtype=x.dtype))
        rows.append(tuple(row))
    return rows


def stand_in_distance(tmp_path: Path, factory: str, target: str, layer: str, plan_yaml: str,
                      scheme: str, calib: Path | None = None) -> tuple[float, float]:
    """Export ``tests.tiny_models:<factory>`` for ``target`` with ``plan_yaml``, then run it and
    the eager model with ``layer`` replaced by the target format's sensitivity stand-in:
    (max |artifact − stand-in|, max |artifact − fp32 eager|). ``calib``: the export's
    ``--calib`` data, from which a calibrated scheme's stand-in gets its weights."""
    from edgeq.backends import get_backend
    from edgeq.export import export
    from edgeq.planning.sensitivity import _swapped
    from edgeq.schemes import parse
    from edgeq.targets import load_target
    from tests import tiny_models

    f = tmp_path / "plan.yaml"
    f.write_text(f"layers: {plan_yaml}\n")
    result = export(f"tests.tiny_models:{factory}", target, plan_file=f, output=tmp_path / "a", calib=calib)
    fmt = load_target(target).target.format
    weights = None
    if parse(scheme).algorithm != "rtn":
        from edgeq.algorithms.calibrated import for_plan
        from edgeq.models import load_model
        from edgeq.models.calib import with_calibration

        loaded = load_model(f"tests.tiny_models:{factory}")
        loaded = with_calibration(loaded, calib) if calib else loaded  # HQQ needs no data
        weights = for_plan(loaded, {layer: parse(scheme)}, get_backend(fmt).gptq_grid())[0][layer]
    model, example = getattr(tiny_models, factory)()
    rows = random_rows(example, 8)
    run = run_pte if fmt == "executorch" else run_onnx
    got = np.stack(run(tmp_path / "a" / result.manifest.model_file, rows))
    with torch.no_grad():
        fp32 = np.stack([model(*r).numpy() for r in rows])
        stand = get_backend(fmt).stand_in(model.get_submodule(layer), parse(scheme), *([weights] if weights else []))
        with _swapped(model, layer, stand):
            stand_in = np.stack([model(*r).numpy() for r in rows])
    return float(np.abs(got - stand_in).max()), float(np.abs(got - fp32).max())


def hf_continuation(lm_dir: Path, ids: list[int], n: int) -> list[int]:
    """Eager transformers' greedy continuation of ``ids`` by the model saved in ``lm_dir`` (stops at EOS)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()

