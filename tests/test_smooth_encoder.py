"""An encoder's per-tensor int8 linears (ONNX Runtime's ``MatMulInteger``) with their input
divided by a searched scale (``edgeq.algorithms.smooth.smooth_encoder``): the divisions
leave the model's function unchanged in fp32, and where LayerNorm makes an outlier channel
the smoothed artifact is closer to the fp32 model in ONNX Runtime than the unsmoothed one
(cosines measured by the export on held-out inputs), and the planner's predicted error,
measured with the same scales, follows it; q/k/v's equal divisions are merged, so
the graph quantizes their input once, as without smoothing. Also: the exact int16 pair
saturation of an AVX2 host without VNNI, against the pairs summed one by one."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("onnxruntime")

RULES = ["encoder=int8@matmulinteger", "embeddings=int8"]


@pytest.fixture(scope="module")
def outlier_bert_dir(tmp_path_factory):
    """The tiny sentence-BERT with weights large enough that its linears, not the residual,
    shape the output, and channel 3 of every LayerNorm's output scaled up 12×: the outlier
    channel real encoders have (MiniLM's LayerNorms make them too)."""
    from transformers import BertModel

    from tests.tiny_models import save_tiny_sentence_bert

    path = save_tiny_sentence_bert(tmp_path_factory.mktemp("outlier-bert"))
    model = BertModel.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("dense.weight") or name.rsplit(".", 2)[-2] in ("query", "key", "value"):
                p.normal_(0, 0.15)
            if "LayerNorm.weight" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
                p[3] *= 12
    model.save_pretrained(path)
    return path


def test_encoder_folds_keep_the_function():
    from transformers import BertConfig, BertModel

    from edgeq.algorithms.scale_search import fold_scale
    from edgeq.algorithms.smooth import statistics
    from edgeq.algorithms.smooth_encoder import divide_input, encoder_folds, scale_columns

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=40)).eval()
    folds = encoder_folds(model)
    assert [(f.source, len(f.linears)) for f in folds] == [
        (f"encoder.layer.{i}.{s}", n) for i in range(2)
        for s, n in (("attention.self", 3), ("intermediate.dense", 1), ("output.dense", 1))]
    rows = [(torch.randint(5, 300, (1, 12)), torch.ones(1, 12, dtype=torch.long)) for _ in range(3)]
    stats = statistics(model, sorted({x for f in folds for x in f.linears}), rows, trim=False)
    # each fold as the export makes it (smooth_encoder): columns times s, the input divided by s
    scaled = copy.deepcopy(model)
    modules, copied = dict(model.named_modules()), dict(scaled.named_modules())
    with torch.no_grad():
        for fold in folds:
            s = fold_scale(model, fold, stats, modules, 0.5)
            for f in fold.linears:
                scale_columns(copied[f], s)
                divide_input(copied[f], s)
    ids, mask = torch.randint(5, 300, (1, 20)), torch.ones(1, 20, dtype=torch.long)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = scaled(input_ids=ids, attention_mask=mask).last_hidden_state
        # the scales are not all 1: the weights did change
        q = "encoder.layer.0.attention.self.query"
        assert not torch.allclose(dict(model.named_modules())[q].weight, dict(scaled.named_modules())[q].weight)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_smoothing_brings_matmulinteger_closer_to_fp32_in_onnx_runtime(outlier_bert_dir, tmp_path):
    from edgeq.backends.onnx.numerics import host_u8s8_exact
    from edgeq.export import export

    plain = export(str(outlier_bert_dir), "x86", output=tmp_path / "rtn", seq_len=32, rules=RULES,
                   algorithms=["rtn"]).manifest
    smooth = export(str(outlier_bert_dir), "x86", output=tmp_path / "smooth", seq_len=32, rules=RULES).manifest
    assert plain.precision.smoothing is None
    record = smooth.precision.smoothing
    assert record["folds"], record  # the outlier makes each fold worth making
    covered = {f for fold in record["folds"].values() for f in fold["linears"]} | set(record["skipped"])
    assert covered == {f"model.encoder.layer.{i}.{s}" for i in range(2) for s in (
        "attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense", "output.dense")}
    assert all(fold["scheme"] == "int8@matmulinteger" for fold in record["folds"].values())
    # measured in ONNX Runtime against the fp32 model on held-out inputs the search never saw
    assert 1 - smooth.numerics.cosine_mean < 0.7 * (1 - plain.numerics.cosine_mean), (
        smooth.numerics.cosine_mean, plain.numerics.cosine_mean)
    # the planner measured the kernels scaled as they ship: its prediction follows the artifact
    # (the unsmoothed artifact's too where ONNX Runtime's product is exact; on an AVX2 host
    # without VNNI its error is mostly saturated pairs, which that check was never run on)
    for m in (plain, smooth) if host_u8s8_exact() else (smooth,):
        verified = 1 - m.numerics.cosine_mean
        assert 1 / 3 < m.plan.predicted_error / verified < 3, (m.plan.predicted_error, verified)
    # the gain the planner predicts: where MLAS sums pairs of products in int16 (AVX2 without
    # VNNI) the unsmoothed outlier saturates them, and the gain is over 10x; with VNNI the
    # product is exact and the gain is the rounding's alone (about 4x on this model)
    gain = plain.plan.predicted_error / smooth.plan.predicted_error
    assert gain > (1 / 0.7 if host_u8s8_exact() else 10), gain
    ops_plain, ops_smooth = plain.delegation.op_types, smooth.delegation.op_types
    assert ops_smooth["DynamicQuantizeLinear"] == ops_plain["DynamicQuantizeLinear"]  # q/k/v share one
    assert ops_smooth.get("Div", 0) == ops_plain.get("Div", 0) + len(record["folds"])
    assert smooth.precision.layers == plain.precision.layers  # same kernels: only the values moved


def test_smoothing_is_offered_only_where_a_format_has_per_tensor_int8_linears(outlier_bert_dir, tmp_path):
    from tests.conftest import cli_here

    r = cli_here("export", str(outlier_bert_dir), "--target", "x86-executorch", "--seq-len", "32",
                 "--budget", "1MB", "--algorithms", "smoothquant", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "executorch encoders have no linear" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("k", [64, 383])
def test_pair_saturation_matches_the_pairs_summed_one_by_one(k):
    """``_pair_saturating_int`` (the exact product corrected where a pair can saturate) against
    pmaddubsw's arithmetic written out: each adjacent pair of products clamped to int16."""
    from edgeq.backends.onnx.numerics import _pair_saturating_int

    g = torch.Generator().manual_seed(k)
    x = torch.randint(0, 256, (2, 5, k), generator=g).float()
    bell = torch.randn(40, k, generator=g)
    for w, saturates in ((torch.randint(-127, 128, (40, k), generator=g).float(), True),  # most pairs can
                         ((bell / bell.abs().amax(1, keepdim=True) * 127).round(), None),  # a few can
                         ((bell / bell.abs().amax(1, keepdim=True) * 64).round(), False)):  # none can (reduce_range)
        want = torch.zeros(2, 5, 40, dtype=torch.float64)
        xs, ws = x.double().tolist(), w.double().tolist()
        for b in range(2):
            for r in range(5):
                for o in range(40):
                    total = 0.0
                    for i in range(0, k, 2):
                        pair = xs[b][r][i] * ws[o][i] + (xs[b][r][i + 1] * ws[o][i + 1] if i + 1 < k else 0.0)
                        total += min(32767.0, max(-32768.0, pair))
                    want[b, r, o] = total
        got = _pair_saturating_int(copy.deepcopy(x), w)
        assert torch.equal(got, want)
        if saturates is not None:
            assert torch.equal(want, x.double() @ w.double().T) != saturates
