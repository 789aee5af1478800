"""Every built-in target plans and exports within a storage budget (a file of its own, so
the test workers share the planning tests between them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.export import export


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """One sensitivity / fp32-probe cache for this module (as in test_plan.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEQ_CACHE_DIR", str(tmp_path_factory.mktemp("plan-cache")))
        yield


# A target whose format, delegates and device class another one shares runs with the slow tests.
COVERED_BY = {"apple-mac": "apple", "rpi4": "rpi5", "snapdragon8-gen1": "snapdragon8", "x86-server": "x86",
              "rpi5-onnx": "x86", "x86-executorch": "rpi5", "apple-gguf": "x86-gguf", "rpi5-gguf": "x86-gguf"}
TARGETS = [pytest.param(t, marks=pytest.mark.slow) if t in COVERED_BY else t
           for t in sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "targets").glob("*.yaml"))]


@pytest.mark.parametrize("target", TARGETS)
def test_every_builtin_target_honours_a_budget(tmp_path: Path, target: str):
    from edgeq.targets import load_target

    if load_target(target).target.format == "gguf":  # decoder LLMs only: a tiny Llama (fp32 GGUF 386 KB)
        from tests import tiny_lms

        budget = 150_000
        model = tiny_lms.save_tiny_bpe_lm(tmp_path / "lm", "llama", init=0.02)
        m = export(model, target, budget_bytes=budget, output=tmp_path / "a", max_context=64, samples=2).manifest
        assert m.sizes.artifact_bytes <= budget and m.plan.predicted_bytes <= budget
        assert m.plan.predicted_peak_memory_bytes <= m.memory.budget_bytes
        assert set(m.precision.layers.values()) - {"fp32", "unused"}
        return
    # Core ML's file overhead (the mlpackage inside the .pte) is ~35 KB on this 132 KB model
    budget = 80_000 if target.startswith("apple") and target != "apple-onnx" else 45_000
    exported = export("tests.tiny_models:tiny_text", target, budget_bytes=budget, output=tmp_path / "a", samples=4)
    m = exported.manifest
    assert m.sizes.artifact_bytes <= budget and m.plan.predicted_bytes <= budget
    assert m.memory.predicted.total_bytes <= m.memory.budget_bytes
    assert m.plan.predicted_peak_memory_bytes <= m.memory.budget_bytes
    assert set(m.precision.layers.values()) - {"fp32", "unused"}  # something was quantized
