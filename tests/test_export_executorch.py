"""ExecuTorch exports of tiny models: every artifact is run in the ExecuTorch runtime here
and compared with eager PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeq.export import export
from tests import tiny_models
from tests.helpers import cosines, random_rows, run_pte, stand_in_distance


def _fresh(factory):
    return getattr(tiny_models, factory)()


@pytest.mark.parametrize(
    "factory, precision, min_cos, max_ratio",
    [
        ("tiny_text", "fp32", 0.99999, 1.05),
        ("tiny_text", "int8", 0.999, 0.45),
        ("tiny_text", "int4", 0.99, 0.35),
        ("tiny_text", "fp16", 0.9999, 0.65),
        ("tiny_mlp", "int8", 0.999, 0.45),
        ("tiny_conv", "int8", 0.999, 0.65),
    ],
)
def test_xnnpack_export_runs_and_matches_eager(tmp_path: Path, factory, precision, min_cos, max_ratio):
    out = tmp_path / "art"
    result = export(f"tests.tiny_models:{factory}", "rpi5" if precision != "fp16" else "rpi5",
                    precision=precision, output=out)
    m = result.manifest
    pte = out / "model.pte"
    assert pte.exists() and m.model_file == "model.pte"
    model, example = _fresh(factory)
    rows = random_rows(example, 8)
    cos = cosines(model, rows, run_pte(pte, rows))
    assert min(cos) >= min_cos, cos
    assert m.delegation.delegated_ops["xnnpack"] > 0
    assert m.sizes.artifact_bytes == pte.stat().st_size
    assert m.sizes.artifact_bytes / m.sizes.fp32_weight_bytes <= max_ratio
    assert set(m.precision.layers.values()) <= {precision if precision != "int4" else "int4-g32", "int8"}
    assert m.numerics.cosine_min >= min_cos
    assert json.loads((out / "manifest.json").read_text())["files"]["model.pte"]["bytes"] == pte.stat().st_size


def test_int8_embeddings_are_stored_as_int8(tmp_path: Path):
    result = export("tests.tiny_models:tiny_text", "rpi5", precision="int8", output=tmp_path / "a")
    portable = result.manifest.delegation.portable_ops
    assert any("embedding_byte" in op for op in portable), portable
    fp32 = export("tests.tiny_models:tiny_text", "rpi5", precision="fp32", output=tmp_path / "b")
    # the 256x64 embedding table alone is 64 KB in fp32; int8 must save most of it
    assert fp32.manifest.sizes.artifact_bytes - result.manifest.sizes.artifact_bytes > 0.6 * 64 * 1024


def test_pt2_source_is_quantized_per_layer(tmp_path: Path):
    model, example = tiny_models.tiny_text()
    src = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, example), src)
    result = export(str(src), "rpi5", precision="int8", output=tmp_path / "out")
    assert result.manifest.precision.layers == {"embed": "int8", "fc1": "int8", "fc2": "int8"}
    rows = random_rows(example, 4)
    assert min(cosines(model, rows, run_pte(tmp_path / "out" / "model.pte", rows))) > 0.999


def test_qnn_falls_back_to_xnnpack_and_says_so(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    result = export("tests.tiny_models:tiny_mlp", "snapdragon8", output=tmp_path / "out")
    assert result.manifest.delegation.used == ["xnnpack"]
    assert any("qnn skipped" in n and "QNN_SDK_ROOT" in n for n in result.manifest.notes)


def test_coreml_lowers_and_is_verified_on_a_labelled_reference(tmp_path: Path):
    pytest.importorskip("coremltools")
    result = export("tests.tiny_models:tiny_mlp", "apple", precision="int8", output=tmp_path / "out")
    m = result.manifest
    assert m.delegation.used == ["coreml"]
    assert m.delegation.delegated_ops["coreml"] > 0
    assert "XNNPACK reference" in m.numerics.runtime and "not coreml" in m.numerics.runtime
    assert m.numerics.cosine_min > 0.999  # weight-only int8: tiny error, not XNNPACK's garbage
    assert not (tmp_path / "out" / "reference-xnnpack.pte").exists()  # the reference is not shipped
    with pytest.raises(RuntimeError):  # the Core ML runtime is not in Linux pybindings
        run_pte(tmp_path / "out" / "model.pte", [tiny_models.tiny_mlp()[1]])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_vulkan_lowers_with_xnnpack_reference(tmp_path: Path, precision):
    result = export("tests.tiny_models:tiny_mlp", "snapdragon8-gpu", precision=precision, output=tmp_path / "out")
    m = result.manifest
    assert m.delegation.delegated_ops.get("vulkan", 0) > 0
    assert m.numerics.cosine_min > 0.999
    assert "XNNPACK reference" in m.numerics.runtime


def test_hf_directory_classifier_reports_top1(tmp_path: Path):
    d = tiny_models.save_tiny_bert(tmp_path / "clf", task="sequence-classification")
    result = export(str(d), "rpi5", precision="int8", output=tmp_path / "out", seq_len=16, samples=8)
    m = result.manifest
    assert m.model.task == "sequence-classification"
    assert m.numerics.top1_agreement is not None and m.numerics.top1_agreement >= 0.75
    assert (tmp_path / "out" / "config.json").exists()


@pytest.mark.slow
def test_minilm_snapdragon8_int8_meets_size_and_fidelity(tmp_path: Path, minilm_dir: Path):
    from edgeq.models import textdata
    from edgeq.models import load_model

    out = tmp_path / "minilm"
    result = export(str(minilm_dir), "snapdragon8", precision="int8", output=out, samples=8)
    assert result.manifest.sizes.artifact_bytes <= 0.26 * result.manifest.sizes.fp32_weight_bytes
    assert (out / "tokenizer.json").exists() and (out / "1_Pooling" / "config.json").exists()
    loaded = load_model(minilm_dir)
    rows = loaded.make_inputs("heldout", 64)
    assert len(rows) == 64 and textdata.sentences("heldout", 1)
    cos = cosines(loaded.module, rows, run_pte(out / "model.pte", rows))
    assert sum(cos) / len(cos) >= 0.995 and min(cos) >= 0.99, (sum(cos) / len(cos), min(cos))


def test_tied_embedding_is_not_reported_unused(tmp_path):
    """torch.export gives a tied LM head's shared weight two placeholders; the embedding's
    has no users, but the gather reads the same tensor: the layer is used."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    from edgeq.export import export

    m = export(str(tmp_path / "m"), "x86-executorch", precision="fp32", output=tmp_path / "a", samples=2,
               seq_len=16).manifest
    assert m.precision.layers["model.embed_tokens"] == "fp32"  # decoder LLMs: the model's own layer names
    assert "unused" not in m.precision.layers.values()


@pytest.mark.parametrize("layer, plan_yaml, scheme", [
    ("0", "{'0': int4-g32, '2': fp32}", "int4-g32"),  # 8da4w: bf16 group scales in XNNPACK
    ("0", "{'0': int8, '2': fp32}", "int8"),  # 8da8w
])
def test_executorch_sensitivity_stand_ins_reproduce_the_lowered_program(tmp_path: Path, layer, plan_yaml, scheme):
    """The eager stand-in the planner measures ExecuTorch sensitivity with computes the
    .pte's numbers: its distance to the program's output is a tiny part of the quantization
    error (XNNPACK keeps 4-bit group scales in bf16; fp32 scales put the stand-in 2.5% of
    the error away)."""
    distance, quant_error = stand_in_distance(tmp_path, "tiny_mlp", "x86-executorch", layer, plan_yaml, scheme)
    assert quant_error > 0
    # measured: 4e-6 (int4) and 4e-5 (int8) of it; 2.5e-2 at int4 with fp32 group scales
    assert distance < 2e-3 * quant_error, (distance, quant_error)
