"""edgeq.planning.memory: peak-RSS measurement in a fresh process, and the prediction's arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.planning import memory

from edgeq.profiling.rss import measure_peak_rss
from edgeq.export import export
from edgeq.backends import get_backend
from edgeq.planning.inventory import LayerInfo
from edgeq.schemes import parse as S

MIB = 2**20
EMBED = LayerInfo("embed", "embedding", (30522, 384), 30522 * 384)
FC = LayerInfo("fc", "linear", (1536, 384), 1536 * 384)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memory")
    out = {}
    for fmt, target in (("onnx", "x86"), ("executorch", "x86-executorch")):
        out[fmt] = export("tests.tiny_models:tiny_text", target, precision="int8", output=root / fmt,
                          samples=2).artifact_dir
    return out


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_measure_peak_rss_returns_sane_numbers(artifacts, fmt):
    r = measure_peak_rss(artifacts[fmt], runs=2)
    assert r["runs"] == 2 and r["peak_reset"] is True
    assert 10 * MIB < r["baseline_rss_bytes"] < 4096 * MIB  # a Python process with the runtime imported
    assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"]
    assert r["model_attributable_bytes"] == r["peak_rss_bytes"] - r["baseline_rss_bytes"]
    assert 0 <= r["model_attributable_bytes"] < 200 * MIB  # a 40 KB model
    assert r["peak_rss_bytes"] >= r["final_rss_bytes"] >= r["baseline_rss_bytes"] - 8 * MIB


def test_measure_peak_rss_fails_clearly_on_a_missing_artifact(tmp_path):
    with pytest.raises(RuntimeError, match="measuring"):
        measure_peak_rss(tmp_path / "nope")


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_predict_from_artifact_reads_the_manifest(artifacts, fmt):
    from edgeq.planning.inventory import layer_inventory
    from tests.tiny_models import tiny_text

    est = memory.predict_from_artifact(artifacts[fmt])  # layers from the model source
    given = memory.predict_from_artifact(artifacts[fmt], layer_inventory(tiny_text()[0]))
    assert est.format == fmt and est.weights_bytes == given.weights_bytes
    # int8 + scales + fp32 biases: well under the fp32 size of the layers (~99 KB), above int8 alone
    assert 256 * 64 + 2 * 64 * 128 < est.weights_bytes < 4 * (256 * 64 + 2 * 64 * 128)
    assert est.activation_bytes > 0  # 16 tokens x widest linear (128)
    assert est.total_bytes < 100 * MIB


@pytest.fixture(scope="module")
def wide_artifacts(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("wide")
    return {(fmt, precision): export("tests.tiny_models:wide_mlp", target, precision=precision,
                                     output=root / f"{fmt}-{precision}", samples=2).artifact_dir
            for fmt, target in (("onnx", "x86"), ("executorch", "x86-executorch"))
            for precision in ("fp32", "int8")}


# The ExecuTorch row (a known defect, ~50 s of lowering and measuring) runs with the slow tests.
@pytest.mark.parametrize("fmt", ["onnx", pytest.param("executorch", marks=[pytest.mark.slow, pytest.mark.xfail(strict=True, reason=(
    "known defect of the ExecuTorch memory model: it counts one load-time copy of the largest *layer*; "
    "measured here, XNNPACK holds the .pte bytes of a whole delegate partition (four fused 1024² fp32 "
    "linears: 34.4 MB attributable, 24.9 MB predicted) while it packs them"))])])
def test_prediction_bounds_the_measured_rss_and_int8_saves(wide_artifacts, fmt):
    """What a fresh process running each artifact really holds (peak RSS above the runtime's
    baseline, the worst of three processes) against the prediction from its manifest, on
    16.8 MB of fp32 weights: never more than 10% above it (a budget fitted to the prediction
    holds), and int8 saves at least 30% of what the prediction says it saves (the low mode
    below takes more off fp32 than off int8: 7.6 MB of a predicted 19.6 at worst).

    Not tighter, because ONNX Runtime's peak depends on the C allocator: ORT frees each
    linear's unpacked weights after prepacking them, and whether glibc keeps them resident
    depends on which malloc arena each thread got. The same fp32 file measured 43.4 MB
    alone on a quiet host and 30.8 to 35.0 MB inside the test suite (``MALLOC_ARENA_MAX=1``
    reproduces the low value exactly); the prediction is the high one."""
    measured = {p: measure_peak_rss(wide_artifacts[fmt, p], runs=2, repeats=3)["model_attributable_bytes"]
                for p in ("fp32", "int8")}
    predicted = {p: memory.predict_from_artifact(wide_artifacts[fmt, p]).total_bytes for p in ("fp32", "int8")}
    for p in ("fp32", "int8"):
        assert measured[p] <= 1.1 * predicted[p] + 2 * MIB, (p, measured, predicted)  # not under-predicted
        assert predicted[p] <= 1.5 * measured[p] + 2 * MIB, (p, measured, predicted)  # the low mode included
    saving_predicted = predicted["fp32"] - predicted["int8"]
    assert saving_predicted > 10 * MIB
    assert measured["fp32"] - measured["int8"] >= 0.3 * saving_predicted, (measured, predicted)


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_prediction_grows_with_precision(fmt):
    def predict(scheme: str) -> memory.MemoryEstimate:
        return memory.predict_peak(fmt, [(EMBED, S(scheme)), (FC, S(scheme))], nonlayer_bytes=0, tokens=128)

    int4, int8, fp16, fp32 = (predict(s) for s in ("int4-g32", "int8", "fp16", "fp32"))
    assert int4.weights_bytes < int8.weights_bytes < fp16.weights_bytes <= fp32.weights_bytes
    assert int4.total_bytes < int8.total_bytes < fp32.total_bytes
    assert int4.activation_bytes == fp32.activation_bytes  # activations are fp32 whatever the weights
    assert predict("int4-g128").weights_bytes < int4.weights_bytes  # fewer scales


def test_runtime_and_held_bytes_follow_the_formats():
    p, rows = FC.params, FC.shape[0]
    et, ort = get_backend("executorch"), get_backend("onnx")
    assert et.runtime_bytes(FC, S("fp32")) == 4 * p
    assert et.runtime_bytes(FC, S("fp16")) == 2 * p
    assert et.runtime_bytes(FC, S("int8")) == p + 4 * rows
    assert et.runtime_bytes(FC, S("int4-g32")) == p // 2 + 2 * p // 32
    assert ort.runtime_bytes(FC, S("int8")) == p + 4 * p // 128
    assert ort.runtime_bytes(FC, S("fp16")) == 4 * p  # ORT CPU upcasts to fp32
    assert ort.runtime_bytes(EMBED, S("fp16")) == 2 * EMBED.params
    assert memory.predict_peak("onnx", [(FC, None)], nonlayer_bytes=0).weights_bytes == 0  # unused
    # ExecuTorch holds what it stores; ORT keeps MLAS's prepacked copy of linears beside it
    from edgeq.backends.onnx.costs import LINEAR_HELD

    assert et.held_bytes(FC, S("int8")) == et.runtime_bytes(FC, S("int8"))
    assert ort.held_bytes(FC, S("int8")) == int((p + 4 * p // 128) * LINEAR_HELD["int8"])
    assert ort.held_bytes(FC, S("fp32"), bias=False) == 4 * p
    assert ort.held_bytes(FC, S("fp32"), bias=True) == int(4 * p * LINEAR_HELD["fp32-bias"])
    assert ort.held_bytes(EMBED, S("int8")) == ort.runtime_bytes(EMBED, S("int8"))


def test_activations_grow_with_tokens_heads_and_the_plan():
    base = memory.predict_peak("executorch", [(FC, S("int8"))], nonlayer_bytes=0, tokens=128)
    longer = memory.predict_peak("executorch", [(FC, S("int8"))], nonlayer_bytes=0, tokens=512)
    heads = memory.predict_peak("executorch", [(FC, S("int8"))], nonlayer_bytes=0, tokens=128, attention_heads=12)
    planned = memory.predict_peak("executorch", [(FC, S("int8"))], nonlayer_bytes=0, tokens=128,
                                  planned_activation_bytes=5 * MIB)
    assert base.activation_bytes < longer.activation_bytes
    assert base.activation_bytes < heads.activation_bytes
    assert planned.activation_bytes == base.activation_bytes + 5 * MIB


def test_unknown_format_is_an_error():
    from edgeq.errors import ConfigError

    with pytest.raises(ConfigError, match="format"):
        memory.predict_peak("tflite", [], nonlayer_bytes=0)


def test_workload_counts_a_vits_patches_as_tokens():
    import torch

    config = {"patch_size": 16, "num_attention_heads": 12}
    assert memory.workload([torch.zeros(1, 3, 224, 224)], config) == (14 * 14 + 1, 12)  # patches + class token
    assert memory.workload([torch.zeros(2, 3, 224, 160)], config) == (2 * (14 * 10 + 1), 12)
    assert memory.workload([torch.zeros(1, 3, 224, 224)], {"num_attention_heads": 12}) == (0, 12)  # a CNN
    assert memory.workload([torch.zeros(1, 128, dtype=torch.long)], config) == (128, 12)  # token ids
    assert memory.patch_tokens({"patch_size": [16, 8], "n_head": 2}, [1, 3, 32, 32]) == 2 * 4 + 1
    assert memory.patch_tokens({"patch_size": 4}, [1, 3, 224, 224]) == 0  # a ConvNeXt: a stem stride, no attention


def test_a_tied_lm_head_is_found_and_costs_an_fp32_linear():
    embed = LayerInfo("model.embed_tokens", "embedding", (1000, 64), 64_000)
    fc = LayerInfo("model.layers.0.mlp", "linear", (256, 64), 256 * 64)
    tied = {"tie_word_embeddings": True, "vocab_size": 1000}
    assert memory.tied_head([embed, fc], tied, "causal-lm") is embed
    assert memory.tied_head([embed, fc], {**tied, "tie_word_embeddings": False}, "causal-lm") is None
    assert memory.tied_head([embed, fc], tied, "sentence-embedding") is None  # no LM head
    untied_head = LayerInfo("lm_head", "linear", (1000, 64), 64_000)
    assert memory.tied_head([embed, fc, untied_head], tied, "causal-lm") is None
    head = memory.LayerHead(embed)
    assert (head.kind, head.shape, head.params) == ("linear", (1000, 64), 64_000)
    with_head = memory.predict_peak("executorch", [(embed, S("int8")), (fc, S("int8")), (head, S("fp32"))], nonlayer_bytes=0)
    without = memory.predict_peak("executorch", [(embed, S("int8")), (fc, S("int8"))], nonlayer_bytes=0)
    assert with_head.weights_bytes - without.weights_bytes == 4 * 64_000


def test_with_tied_head_adds_one_fp32_head_or_two_on_onnx_with_a_quantized_table():
    embed = LayerInfo("embed", "embedding", (1000, 64), 64_000)
    tied = {"tie_word_embeddings": True, "vocab_size": 1000}
    for fmt, scheme, copies in (("executorch", "int8", 1), ("onnx", "fp32", 1), ("onnx", "int8", 2),
                                ("onnx", "int4-g32", 2)):
        pairs = memory.with_tied_head(fmt, [(embed, S(scheme)), (FC, S(scheme))], tied, "causal-lm")
        heads = [(x, s) for x, s in pairs if isinstance(x, memory.LayerHead)]
        assert len(heads) == copies and all(s == S("fp32") and x.embedding is embed for x, s in heads)
    assert memory.with_tied_head("onnx", [(embed, S("int8"))], tied, "sentence-embedding") == [(embed, S("int8"))]
