"""AWQ (edgeq.algorithms.awq): its searched input scale lowers a layer's output error below
RTN's on held-out inputs; the scale is folded into the linear before the layer only where
that is exact (BERT's value → attention.output.dense, Llama's up → down and, without
grouped-query attention, v → o) and refused elsewhere with the reason; the artifacts of
both formats compute the AWQ stand-in the planner measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeq.algorithms.awq import fold, predecessor, search
from edgeq.algorithms.gptq import HessianSum, reconstruction_error, rtn
from edgeq.algorithms.grids import AsymmetricUint4, SymmetricInt4
from tests.test_gptq import _layer_inputs

LAYER = "model.encoder.layer.0.attention.output.dense"


@pytest.mark.parametrize("grid", [SymmetricInt4(), AsymmetricUint4()], ids=["8da4w", "matmulnbits"])
@pytest.mark.parametrize("group", [32, 128])
def test_awq_reconstructs_the_layer_better_than_rtn_on_heldout_inputs(grid, group: int):
    """The grid's RTN of W·diag(s), computed with the input divided by s, against the grid's
    RTN of W: lower output error on the calibration rows and on held-out rows (measured
    3-6% lower); the scale is not 1 (α > 0 was chosen)."""
    layer, calib, heldout = _layer_inputs()
    w = layer.weight.detach()
    h = HessianSum(w.shape[1])
    h.add(calib)
    q, s, alpha = search(w, h.matrix(), h.absmean(), grid, group)
    assert alpha > 0 and float(s.max() / s.min()) > 1.1
    ours = q.dequantized() / s[None, :]
    theirs = rtn(w, grid, group).dequantized()
    for x in (calib, heldout):
        assert reconstruction_error(w, ours, x) < 0.985 * reconstruction_error(w, theirs, x)


def _bert(tmp_path: Path):
    from edgeq.models import load_model
    from tests.tiny_models import save_tiny_bert

    return load_model(str(save_tiny_bert(tmp_path / "bert")), seq_len=16)


def _llama(tmp_path: Path, kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=kv_heads)
    return LlamaForCausalLM(cfg)


def test_predecessors_and_refusals(tmp_path: Path):
    bert = _bert(tmp_path).module
    found = {f: predecessor(bert, f) for f, m in bert.named_modules() if isinstance(m, torch.nn.Linear)}
    takes = {f: p.predecessor for f, (p, _) in found.items() if p}
    assert takes == {f"model.encoder.layer.{i}.attention.output.dense": f"model.encoder.layer.{i}.attention.self.value"
                     for i in (0, 1)}
    assert "residual" in found["model.encoder.layer.0.attention.self.query"][1]
    assert "residual" in found["model.encoder.layer.0.intermediate.dense"][1]
    assert "GELU" in found["model.encoder.layer.0.output.dense"][1]
    mha, gqa = _llama(tmp_path, 4), _llama(tmp_path, 2)
    assert predecessor(mha, "model.layers.0.self_attn.o_proj")[0].predecessor == "model.layers.0.self_attn.v_proj"
    assert predecessor(mha, "model.layers.0.mlp.down_proj")[0].predecessor == "model.layers.0.mlp.up_proj"
    assert "grouped-query" in predecessor(gqa, "model.layers.0.self_attn.o_proj")[1]
    assert "share the scale" in predecessor(mha, "model.layers.0.self_attn.q_proj")[1]


def test_fold_keeps_the_function_and_scales_only_the_predecessors_rows(tmp_path: Path):
    """Folding s changes no output (fp32, within rounding) and multiplies the value layer's
    output rows by 1/s: a per-row scaling its per-row quantization scales follow."""
    import copy

    loaded = _bert(tmp_path)
    model = loaded.module
    folded_model = copy.deepcopy(model)
    s = torch.linspace(0.5, 2.0, 64)
    fold(folded_model, LAYER, s)
    rows = loaded.make_inputs("calib", 4)
    with torch.no_grad():
        for r in rows:
            torch.testing.assert_close(folded_model(*r), model(*r), rtol=1e-4, atol=1e-5)
    v0 = model.get_submodule("model.encoder.layer.0.attention.self.value").weight
    v1 = folded_model.get_submodule("model.encoder.layer.0.attention.self.value").weight
    torch.testing.assert_close(v1 * s[:, None], v0)
    # the value layer's own int4 error scales with its rows: RTN(W / s) = RTN(W) / s per row
    a = rtn(v1.detach(), AsymmetricUint4(), 32).dequantized()
    b = rtn(v0.detach(), AsymmetricUint4(), 32).dequantized() / s[:, None]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.fixture
def bert_calib(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (96, 1, 16), generator=g).numpy()
    path = tmp_path / "calib.npz"
    np.savez(path, arg0=ids, arg1=np.ones_like(ids))
    return path


@pytest.mark.parametrize("target, tolerance", [("x86-executorch", 0.02), ("x86", 0.02)])
def test_awq_artifact_computes_the_awq_stand_in(tmp_path: Path, bert_calib: Path, monkeypatch, target: str,
                                                tolerance: float):
    """The exported artifact (the scale folded into the value linear; the AWQ integers in
    8da4w / MatMulNBits) computes what the stand-in the planner measured computes (the
    unfolded model with that layer's input divided by s), far closer than the RTN stand-in."""
    from edgeq.algorithms.calibrated import for_plan
    from edgeq.backends import get_backend
    from edgeq.export import export
    from edgeq.models.calib import with_calibration
    from edgeq.planning.sensitivity import _swapped
    from edgeq.schemes import parse
    from edgeq.targets import load_target
    from tests.helpers import run_onnx, run_pte

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    loaded = with_calibration(_bert(tmp_path), bert_calib)
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"layers: {{'{LAYER}': int4-g32-awq}}\n")
    result = export(str(tmp_path / "bert"), target, plan_file=plan, output=tmp_path / "a", calib=bert_calib,
                    seq_len=16)
    fmt = load_target(target).target.format
    be = get_backend(fmt)
    weights = for_plan(loaded, {LAYER: parse("int4-g32-awq")}, be.gptq_grid())[0][LAYER]
    g = torch.Generator().manual_seed(11)
    rows = [(torch.randint(0, 512, (1, 16), generator=g), torch.ones(1, 16, dtype=torch.int64)) for _ in range(6)]
    run = run_pte if fmt == "executorch" else run_onnx
    got = np.stack(run(tmp_path / "a" / result.manifest.model_file, rows))
    model = loaded.module

    def outputs(stand_in=None):
        with torch.no_grad():
            if stand_in is None:
                return np.stack([model(*r).numpy() for r in rows])
            with _swapped(model, LAYER, stand_in):
                return np.stack([model(*r).numpy() for r in rows])

    layer = model.get_submodule(LAYER)
    to_awq = np.abs(got - outputs(be.stand_in(layer, parse("int4-g32-awq"), weights))).max()
    to_rtn = np.abs(got - outputs(be.stand_in(layer, parse("int4-g32")))).max()
    quant_error = np.abs(got - outputs()).max()
    assert quant_error > 0 and to_awq < tolerance * quant_error, (to_awq, quant_error)
    assert to_rtn > 10 * to_awq, (to_rtn, to_awq)
    record = json.loads((tmp_path / "a" / "manifest.json").read_text())["precision"]["algorithms"][LAYER]
    assert record["algorithm"] == "awq" and str(bert_calib) in record["calibration"]
    assert record["scale_folded_into"] == "model.encoder.layer.0.attention.self.value"


def test_planner_offers_awq_only_where_it_folds(tmp_path: Path, bert_calib: Path, monkeypatch):
    from edgeq.models.calib import with_calibration
    from edgeq.planning.costs import measure_costs
    from edgeq.planning.prepare import prepare
    from edgeq.targets import load_target

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    loaded = with_calibration(_bert(tmp_path), bert_calib)
    costs = measure_costs(prepare(loaded, load_target("x86")))
    with_awq = {f for f, v in costs.sensitivity.items() if "int4-g32-awq" in v}
    assert with_awq == {LAYER, LAYER.replace("layer.0", "layer.1")}
    assert "residual" in costs.not_measured["awq"] and "GELU" in costs.not_measured["awq"]
    # measured on AWQ's result: not RTN's error
    assert costs.sensitivity[LAYER]["int4-g32-awq"] != costs.sensitivity[LAYER]["int4-g32"]


def test_awq_where_it_cannot_fold_is_one_line_exit_2(tmp_path: Path, bert_calib: Path):
    from tests.conftest import cli_here
    from tests.tiny_models import save_tiny_bert

    save_tiny_bert(tmp_path / "bert")
    proc = cli_here("export", str(tmp_path / "bert"), "--target", "x86", "--seq-len", "16", "--calib", str(bert_calib),
                    "--rule", "intermediate=int4-g32-awq", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error:") and "AWQ" in last and "Traceback" not in proc.stderr, proc.stderr
