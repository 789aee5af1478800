"""GPTQ (edgeq.algorithms): its grids are the runtimes' own quantizers bit for bit, it
reconstructs a layer's outputs better than those quantizers' RTN, and its results reach
the artifacts of both formats unchanged (the runtime computes what the planner measured)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeq.algorithms.gptq import HessianSum, QuantizedWeight, factor, gptq, gptq_many, reconstruction_error, rtn
from edgeq.algorithms.grids import AsymmetricUint4, SymmetricInt4


def _torchao_8da4w(weight: torch.Tensor, group: int, hqq: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's own (qdata, scale) for ``weight`` as ExecuTorch's 8da4w config quantizes it."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight.data = weight.clone()
    extra = {"intx_choose_qparams_algorithm": "hqq_scale_only"} if hqq else {}
    m = torch.nn.Sequential(lin)
    quantize_(m, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group),
                                                       **extra))
    return m[0].weight.qdata, m[0].weight.scale


def _ort_matmulnbits(weight: torch.Tensor, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX Runtime's MatMulNBits quantizer (MLAS, asymmetric): unpacked (ints, scales, zero points)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    n, k = weight.shape
    blocks = k // group
    packed = np.zeros((n, blocks, group // 2), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zeros = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, np.ascontiguousarray(weight.numpy().T), scales, zeros, group, n, k, False)
    ints = np.stack([packed & 0xF, packed >> 4], -1).reshape(n, k)
    zp = np.stack([zeros & 0xF, zeros >> 4], -1).reshape(n, -1)[:, :blocks]
    return ints, scales, zp


def _weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, :32] = 0.0  # an all-zero group: the scale's clamp
    w[1, 5] = 0.4  # an outlier
    return w


@pytest.mark.parametrize("group", [32, 64, 128])
def test_identity_hessian_gives_torchaos_8da4w_integers(group: int):
    w = _weight(48, 256)
    eye = torch.eye(256, dtype=torch.float64)
    qdata, scale = _torchao_8da4w(w, group)
    plain = gptq(w, eye, SymmetricInt4(bf16_scales=False), group)
    assert torch.equal(plain.ints, qdata.to(torch.int16)) and torch.equal(plain.scales, scale)
    # as XNNPACK stores them: the same scales rounded to bf16, torchao's quantize_affine onto them
    from torchao.quantization.quant_primitives import quantize_affine

    bf16 = scale.to(torch.bfloat16).float()
    expected = quantize_affine(w, (1, group), bf16, torch.zeros_like(bf16, dtype=torch.int8), torch.int8, -8, 7)
    stored = gptq(w, eye, SymmetricInt4(bf16_scales=True), group)
    assert torch.equal(stored.scales, bf16) and torch.equal(stored.ints, expected.to(torch.int16))
    assert not torch.equal(bf16, scale)  # the rounding is exercised


@pytest.mark.parametrize("group", [32, 64, 128])
def test_identity_hessian_gives_onnxruntimes_matmulnbits_integers(group: int):
    w = _weight(40, 384, seed=1)  # 384 / 128 = 3 blocks: an odd count pads the packed zero points
    ints, scales, zeros = _ort_matmulnbits(w, group)
    q = gptq(w, torch.eye(384, dtype=torch.float64), AsymmetricUint4(), group)
    assert np.array_equal(q.ints.numpy(), ints)
    assert np.array_equal(q.scales.numpy(), scales)
    assert np.array_equal(q.zeros.numpy(), zeros)


def _layer_inputs() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """The second linear of a small MLP and its inputs on calibration and held-out rows
    drawn from one correlated distribution (what a real layer's inputs look like)."""
    g = torch.Generator().manual_seed(5)
    first = torch.nn.Linear(64, 256)
    second = torch.nn.Linear(256, 96)
    with torch.no_grad():
        for p in (*first.parameters(), *second.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    mix = torch.randn(64, 64, generator=g) * torch.linspace(2.0, 0.02, 64)
    with torch.no_grad():
        calib = torch.relu(first(torch.randn(1024, 64, generator=g) @ mix))
        heldout = torch.relu(first(torch.randn(1024, 64, generator=g) @ mix))
    return second, calib, heldout


@pytest.mark.parametrize("group", [32, 128])
def test_gptq_reconstructs_the_layer_better_than_torchaos_rtn(group: int):
    """On the layer's calibration inputs and on held-out ones, GPTQ's output error is below
    both of torchao's RTNs (plain and the HQQ scale search edgeq's int4-gN uses), each with
    its scales in bf16 as XNNPACK computes."""
    layer, calib, heldout = _layer_inputs()
    w = layer.weight.detach()
    h = HessianSum(w.shape[1])
    h.add(calib)
    ours = gptq(w, h.matrix(), SymmetricInt4(), group).dequantized()
    for hqq in (False, True):
        qdata, scale = _torchao_8da4w(w, group, hqq=hqq)
        theirs = (qdata.float().view(w.shape[0], -1, group) * scale.to(torch.bfloat16).float()[..., None]).view_as(w)
        for x in (calib, heldout):
            assert reconstruction_error(w, ours, x) < 0.8 * reconstruction_error(w, theirs, x), (hqq, group)


@pytest.mark.parametrize("group", [32, 128])
def test_gptq_reconstructs_the_layer_better_than_onnxruntimes_rtn(group: int):
    layer, calib, heldout = _layer_inputs()
    w = layer.weight.detach()
    h = HessianSum(w.shape[1])
    h.add(calib)
    ours = gptq(w, h.matrix(), AsymmetricUint4(), group).dequantized()
    ints, scales, zeros = _ort_matmulnbits(w, group)
    theirs = torch.from_numpy(((ints.reshape(w.shape[0], -1, group).astype(np.float32) - zeros[..., None])
                               * scales[..., None]).reshape(w.shape))
    for x in (calib, heldout):
        assert reconstruction_error(w, ours, x) < 0.8 * reconstruction_error(w, theirs, x)


def test_act_order_keeps_groups_contiguous_and_beats_rtn():
    layer, calib, _ = _layer_inputs()
    w = layer.weight.detach()
    h = HessianSum(w.shape[1])
    h.add(calib)
    q = gptq(w, h.matrix(), SymmetricInt4(), 32, act_order=True)
    assert q.scales.shape == (w.shape[0], w.shape[1] // 32)
    assert reconstruction_error(w, q.dequantized(), calib) < reconstruction_error(w, rtn(w, SymmetricInt4(), 32).dequantized(), calib)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("grid", [SymmetricInt4(), AsymmetricUint4()], ids=["symmetric", "asymmetric"])
def test_one_sweep_for_several_weights_and_groups_equals_gptq_layer_by_layer(grid, act_order: bool):
    """Three weights reading one input (q/k/v) at three group sizes, in one sweep sharing one
    factorization, give each weight's own GPTQ result (within float rounding: a handful of
    values exactly between two grid points may round the other way)."""
    _, calib, _ = _layer_inputs()
    h = HessianSum(256)
    h.add(calib)
    weights = [_weight(24, 256, seed=s) for s in range(3)]
    shared = gptq_many(weights, factor(h.matrix(), act_order=act_order), grid, [32, 64, 128])
    for w, row in zip(weights, shared):
        for g, q in zip([32, 64, 128], row):
            ints, scales, zeros = _gptq_column_by_column(w, h.matrix(), grid, g, act_order=act_order)
            assert (q.ints != ints).float().mean() < 1e-3, (g, act_order)
            assert torch.allclose(q.scales, scales, rtol=1e-5, atol=0) and (q.zeros == zeros).float().mean() > 0.99
            ref = QuantizedWeight(ints, scales, zeros, g, grid).dequantized()
            mine, theirs = reconstruction_error(w, q.dequantized(), calib), reconstruction_error(w, ref, calib)
            assert abs(mine - theirs) <= 1e-3 * theirs



def _gptq_column_by_column(weight: Any, hessian: Any, grid: Any, group: int, *, act_order: bool = False,
         damping: float = 0.01) -> QuantizedWeight:
    """GPTQ as first written in edgeq (one weight, one group size, its own factorization):
    the reference the shared, stacked sweep must reproduce."""
    import torch

    w0 = weight.detach().float()
    rows, cols = w0.shape
    if cols % group:
        raise ValueError(f"{cols} input columns are not a multiple of the group size {group}")
    W = w0.double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = None
    if act_order:
        static = grid.params(W.view(rows, cols // group, group).permute(1, 0, 2).reshape(-1, group).float())
        static = (static[0].view(cols // group, rows), static[1].view(cols // group, rows))
        perm = torch.argsort(torch.diagonal(H), descending=True)
    else:
        perm = torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damping * torch.mean(torch.diagonal(H)) * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    ints = torch.zeros(rows, cols, dtype=torch.int16)
    scales = torch.zeros(cols // group, rows, dtype=torch.float32)
    zeros = torch.zeros(cols // group, rows, dtype=torch.int16)
    for i1 in range(0, cols, 128):
        i2 = min(i1 + 128, cols)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // group
            if static is not None:
                scale, zero = static[0][g], static[1][g]
            else:
                if col % group == 0:  # the group starts here: its scale from its current values
                    scales[g], zeros[g] = grid.params(W1[:, i:i + group].float())
                scale, zero = scales[g], zeros[g]
            w = W1[:, i]
            q = grid.quantize(w, scale, zero)
            ints[:, col] = q
            err = (w - grid.dequantize(q, scale, zero).double()) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ Hinv[i1:i2, i2:]
    if static is not None:
        scales, zeros = static
    return ints, scales.T.contiguous(), zeros.T.contiguous()




# ------------------------------------------------------------------ artifacts and plans


@pytest.fixture
def calib_npz(tmp_path: Path) -> Path:
    """tiny_mlp inputs with structure (a decaying low-rank mix), as real activations have."""
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(64, 64, generator=g) * torch.linspace(1.5, 0.05, 64)
    x = (torch.randn(256, 64, generator=g) @ mix).numpy().astype(np.float32)[:, None, :]
    path = tmp_path / "calib.npz"
    np.savez(path, arg0=x)
    return path


@pytest.mark.parametrize("target, tolerance", [("x86-executorch", 2e-3), ("x86", 0.02)])
def test_gptq_artifact_computes_the_gptq_stand_in(tmp_path: Path, calib_npz: Path, target: str, tolerance: float):
    """The exported program (8da4w in XNNPACK; MatMulNBits in ONNX Runtime) computes what
    the GPTQ stand-in the planner measured computes: the same integers and scales."""
    from tests.helpers import stand_in_distance

    distance, quant_error = stand_in_distance(tmp_path, "tiny_mlp", target, "0", "{'0': int4-g32-gptq, '2': fp32}",
                                              "int4-g32-gptq", calib=calib_npz)
    assert quant_error > 0
    assert distance < tolerance * quant_error, (distance, quant_error)  # measured: 2e-6 of it in both formats
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["precision"]["layers"]["0"] == "int4-g32-gptq"
    from edgeq.algorithms.calibrated import CALIB_SAMPLES

    record = manifest["precision"]["algorithms"]["0"]
    assert record["algorithm"] == "gptq" and str(calib_npz) in record["calibration"]
    assert record["samples"] == min(256, CALIB_SAMPLES) and len(record["calibration_sha256"]) == 64
    assert set(manifest["precision"]["algorithms"]) == {"0"}


def test_gptq_artifact_is_not_the_rtn_artifact(tmp_path: Path, calib_npz: Path):
    """The GPTQ artifact's output differs from the RTN stand-in's by far more than from its own
    stand-in (the values written are GPTQ's, not the quantizer's)."""
    from edgeq.algorithms.calibrated import for_plan
    from edgeq.backends import get_backend
    from edgeq.export import export
    from edgeq.models import load_model
    from edgeq.models.calib import with_calibration
    from edgeq.planning.sensitivity import _swapped
    from edgeq.schemes import parse
    from tests import tiny_models
    from tests.helpers import random_rows, run_onnx

    plan = tmp_path / "plan.yaml"
    plan.write_text("layers: {'0': int4-g32-gptq, '2': fp32}\n")
    export("tests.tiny_models:tiny_mlp", "x86", plan_file=plan, output=tmp_path / "a", calib=calib_npz)
    model, example = tiny_models.tiny_mlp()
    rows = random_rows(example, 8)
    got = np.stack(run_onnx(tmp_path / "a" / "model.onnx", rows))
    be = get_backend("onnx")
    weights = for_plan(with_calibration(load_model("tests.tiny_models:tiny_mlp"), calib_npz),
                       {"0": parse("int4-g32-gptq")}, be.gptq_grid())[0]["0"]

    def outputs(stand_in):
        with torch.no_grad(), _swapped(model, "0", stand_in):
            return np.stack([model(*r).numpy() for r in rows])

    to_gptq = np.abs(got - outputs(be.stand_in(model[0], parse("int4-g32-gptq"), weights))).max()
    to_rtn = np.abs(got - outputs(be.stand_in(model[0], parse("int4-g32")))).max()
    assert to_rtn > 100 * to_gptq, (to_rtn, to_gptq)


def test_plan_files_with_gptq_round_trip(tmp_path: Path):
    from edgeq.planning.planfile import PlanDocument, read_plan_file
    from edgeq.schemes import parse
    from edgeq.targets import load_target

    doc = PlanDocument(layers={"0": "int4-g32-gptq", "2": "int4-g128-gptq", "4": "int8"}, target="x86", format="onnx")
    path = tmp_path / "plan.yaml"
    path.write_text(doc.to_yaml())
    read = read_plan_file(path, load_target("x86").target)
    assert {f: s.name for f, s in read.schemes.items()} == {"0": "int4-g32-gptq", "2": "int4-g128-gptq", "4": "int8"}
    assert read.schemes["0"].algorithm == "gptq" and read.schemes["0"].group == 32
    assert parse("INT4-G64-GPTQ").name == "int4-g64-gptq"


def test_planner_measures_gptq_only_with_calibration_data(tmp_path: Path, calib_npz: Path, monkeypatch):
    """With --calib data the int4 linears get GPTQ candidates, measured on GPTQ's result
    (lower error than RTN on this layer); with synthetic inputs they are named as excluded."""
    from edgeq.models import load_model
    from edgeq.models.calib import with_calibration
    from edgeq.planning.costs import measure_costs
    from edgeq.planning.prepare import prepare
    from edgeq.targets import load_target

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    resolved = load_target("x86")
    loaded = load_model("tests.tiny_models:tiny_mlp")
    without = measure_costs(prepare(loaded, resolved), use_cache=False)
    assert "int4-g32-gptq" not in without.sensitivity["0"]
    assert "calibration data" in without.not_measured["gptq"] and "int4-g32-gptq" not in without.excluded.get("0", {})
    costs = measure_costs(prepare(with_calibration(loaded, calib_npz), resolved))
    sens = costs.sensitivity["0"]
    assert {"int4-g32-gptq", "int4-g64-gptq"} <= set(sens)
    assert sens["int4-g32-gptq"] < sens["int4-g32"]
    # the same bytes as the RTN scheme of its group
    stored = {str(c.scheme): c.bytes for c in costs.stored["0"]}
    assert stored["int4-g32-gptq"] == stored["int4-g32"]
    assert list((tmp_path / "cache" / "calibrated").glob("*.npz"))  # results cached per layer and scheme


@pytest.mark.parametrize("args", [
    ["export", "tests.tiny_models:tiny_mlp", "--target", "x86", "--rule", "^0$=int4-g32-gptq"],
    ["plan", "tests.tiny_models:tiny_mlp", "--target", "x86-executorch", "--rule", "^0$=int4-g32-gptq"],
])
def test_gptq_without_calibration_data_is_one_line_exit_2(tmp_path: Path, args: list[str]):
    from tests.conftest import cli_here

    proc = cli_here(*args, "--output" if args[0] == "export" else "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "int4-g32-gptq" in errors[0] and "--calib" in errors[0], proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0]) and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ decoder LLMs


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from tests.tiny_lms import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("lm") / "llama", "llama", init=0.02)


def _lm_gptq_plan(lm_dir: Path, path: Path) -> dict[str, str]:
    """Every decoder linear at int4-g32-gptq, the embedding and head fp32 (plan files name the
    loaded wrapper's layers: ``model.`` + the Hugging Face model's names)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    layers = {n: "int4-g32-gptq" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    path.write_text("layers:\n" + "".join(f"  model.{n}: {s}\n" for n, s in layers.items()))
    return {f"model.{n}": s for n, s in layers.items()}


# ~25 s (ONNX) and ~80 s (ExecuTorch) on 2 cores: both run with the slow tests.
@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86-executorch", "x86"])
def test_llm_gptq_artifact_computes_the_gptq_stand_ins(lm_dir: Path, tmp_path: Path, monkeypatch, target: str):
    """A decoder LLM planned at int4-g32-gptq: GPTQ calibrates on the calibration text run
    through the model (never the perplexity text), the artifact's next-token logits are
    those of the eager model with every linear replaced by its GPTQ stand-in (with the
    LLM's int8 dynamic activations), and the manifest records the algorithm per layer."""
    from transformers import AutoModelForCausalLM

    from edgeq.algorithms.calibrated import for_plan
    from edgeq.backends import get_backend
    from edgeq.export import export
    from edgeq.models import load_model
    from edgeq.planning.sensitivity import _swapped
    from edgeq.schemes import parse
    from edgeq.targets import load_target

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    planned = _lm_gptq_plan(lm_dir, tmp_path / "plan.yaml")
    out = tmp_path / "art"
    m = export(str(lm_dir), target, plan_file=tmp_path / "plan.yaml", max_context=32, output=out).manifest
    hf = {f.removeprefix("model."): s for f, s in planned.items()}
    assert {f: m.precision.layers[f] for f in hf} == hf
    assert set(m.precision.algorithms) == set(hf)
    record = next(iter(m.precision.algorithms.values()))
    assert record["algorithm"] == "gptq" and "docstrings" in record["calibration"] and record["rows"] > 0

    fmt = load_target(target).target.format
    be = get_backend(fmt)
    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    weights, _ = for_plan(load_model(str(lm_dir)), {f: parse(s) for f, s in hf.items()}, be.gptq_grid(), module=model)
    prompt = [1, 10, 20, 30, 40, 50, 60, 70, 12, 14]
    session = be.open_lm(out / m.model_file)
    try:
        got = np.asarray(session.prefill(prompt, all_logits=True), dtype=np.float64).reshape(len(prompt), -1)
    finally:
        session.close()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        fp32 = model(ids).logits[0].double().numpy()
        with be.lm_numerics():
            swaps = [_swapped(model, f, be.stand_in(model.get_submodule(f), parse(s), weights[f])) for f, s in hf.items()]
            for s in swaps:
                s.__enter__()
            try:
                stand_in = model(ids).logits[0].double().numpy()
            finally:
                for s in reversed(swaps):
                    s.__exit__(None, None, None)
    rows = min(len(got), len(stand_in))  # ExecuTorch programs return the last position only
    got, stand_in, fp32 = got[-rows:], stand_in[-rows:], fp32[-rows:]
    quant_error = np.abs(got - fp32).max()
    assert quant_error > 0
    assert np.abs(got - stand_in).max() < 0.1 * quant_error, (np.abs(got - stand_in).max(), quant_error)


def test_algorithms_option_limits_the_candidates(tmp_path: Path, calib_npz: Path, monkeypatch):
    """``algorithms=["rtn"]`` plans among RTN schemes alone even with calibration data; an
    unknown algorithm is a one-line error naming the known ones."""
    from edgeq.errors import ConfigError
    from edgeq.models import load_model
    from edgeq.models.calib import with_calibration
    from edgeq.planning.costs import measure_costs
    from edgeq.planning.prepare import prepare
    from edgeq.targets import load_target
    from tests.conftest import cli_here

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    prepared = prepare(with_calibration(load_model("tests.tiny_models:tiny_mlp"), calib_npz), load_target("x86"))
    rtn_only = measure_costs(prepared, algorithms=["rtn"])
    assert not any(s.endswith("-gptq") for v in rtn_only.sensitivity.values() for s in v)
    assert "int4-g32" in rtn_only.sensitivity["0"]
    with pytest.raises(ConfigError, match="unknown algorithm 'gtpq'; did you mean 'gptq'"):
        measure_costs(prepared, algorithms=["gtpq"])
    proc = cli_here("plan", "tests.tiny_models:tiny_mlp", "--target", "x86", "--calib", str(calib_npz),
                    "--algorithms", "rtn,spqr", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.rstrip().splitlines()[-1].startswith("error: unknown algorithm 'spqr'")


def test_hessians_are_accumulated_in_passes_within_a_memory_bound(monkeypatch):
    """Layers whose Hessians exceed the bound together are calibrated in several passes,
    with the same results as one pass (the same rows reach each layer)."""
    from edgeq.algorithms import calibrated
    from edgeq.schemes import parse

    class Loaded:
        name, inputs_description, encode_text = "mlp", "test rows", None
        config = {"calibration": "test rows"}

        def __init__(self):
            torch.manual_seed(0)
            self.module = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))

        def make_inputs(self, split, n):
            g = torch.Generator().manual_seed(1)
            return [(torch.randn(4, 64, generator=g),) for _ in range(n)]

    loaded, scheme = Loaded(), parse("int4-g32-gptq")
    wanted = {"0": [scheme], "2": [scheme]}
    one, _ = calibrated.solve(loaded, wanted, SymmetricInt4(), samples=8, use_cache=False)
    monkeypatch.setattr(calibrated, "HESSIAN_BYTES", 8 * 64 * 64)  # room for the first layer's alone
    assert calibrated._chunks(["0", "2"], {"0": 64, "2": 128}) == [["0"], ["2"]]
    two, _ = calibrated.solve(loaded, wanted, SymmetricInt4(), samples=8, use_cache=False)
    for key in one:
        assert torch.equal(one[key].ints, two[key].ints) and torch.equal(one[key].scales, two[key].scales)


def test_gptq_calibrates_on_rows_apart_from_the_sensitivity_rows(tmp_path: Path, calib_npz: Path, monkeypatch):
    """A GPTQ candidate is scored on rows it was not fitted to: the Hessians sum none of the
    rows sensitivity measures on (they fit those rows better than RTN by construction), and the
    record says where its rows start; data too small to hold them apart is used whole, said so."""
    from edgeq.algorithms import calibrated
    from edgeq.models import load_model
    from edgeq.models.calib import with_calibration
    from edgeq.schemes import parse

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    loaded = with_calibration(load_model("tests.tiny_models:tiny_mlp"), calib_npz)  # 256 rows
    seen = []
    real = calibrated.hessians

    def spy(module, fqns, rows, description):
        seen.extend(rows)
        return real(module, fqns, rows, description)

    monkeypatch.setattr(calibrated, "hessians", spy)
    _, calibration = calibrated.solve(loaded, {"0": [parse("int4-g32-gptq")]}, get_backend_grid("x86"), samples=64)
    sensitivity_rows = loaded.make_inputs("calib", calibrated.SENSITIVITY_ROWS)
    assert len(seen) == 64 and calibration.first_sample == calibrated.SENSITIVITY_ROWS
    assert not any(torch.equal(a[0], b[0]) for a in seen for b in sensitivity_rows)
    assert calibration.to_dict("gptq")["apart_from_sensitivity_rows"] is True

    small = tmp_path / "small.npz"
    np.savez(small, arg0=np.load(calib_npz)["arg0"][:40])  # 32 + 8 rows: too few to hold apart
    seen.clear()
    _, calibration = calibrated.solve(with_calibration(load_model("tests.tiny_models:tiny_mlp"), small),
                                      {"0": [parse("int4-g32-gptq")]}, get_backend_grid("x86"), samples=64)
    assert len(seen) == 40 and calibration.first_sample == 0
    assert calibration.to_dict("gptq")["apart_from_sensitivity_rows"] is False


def get_backend_grid(target: str):
    from edgeq.backends import get_backend
    from edgeq.targets import load_target

    return get_backend(load_target(target).target.format).gptq_grid()


@pytest.mark.parametrize("group", [32, 128])
def test_calibrated_gptq_on_executorchs_grid_is_never_worse_than_its_rtn(group: int):
    """ExecuTorch's int4-gN chooses HQQ scales; the GPTQ candidate (seeded with them, checked
    row by row) is at most torchao's HQQ RTN's output error on the calibration inputs, in
    total and for every output row, and below it on held-out inputs in total."""
    from edgeq.algorithms.calibrated import cached_gptq
    from edgeq.algorithms.gptq import format_rtn

    layer, calib, heldout = _layer_inputs()
    w = layer.weight.detach()
    h = HessianSum(w.shape[1])
    h.add(calib)
    grid = SymmetricInt4(bf16_scales=True, rtn="hqq_scale_only")
    q = cached_gptq({"l": w}, {"l": [group]}, h.matrix(), grid, use_cache=False)[("l", group)]
    qdata, scale = _torchao_8da4w(w, group, hqq=True)
    theirs = (qdata.float().view(w.shape[0], -1, group) * scale.to(torch.bfloat16).float()[..., None]).view_as(w)
    assert torch.equal(format_rtn(w, grid, group).dequantized(), theirs)  # the format's RTN, as ExecuTorch ships it
    ours = q.dequantized()
    rows_ours = ((calib.double() @ (w - ours).double().T) ** 2).sum(0)
    rows_theirs = ((calib.double() @ (w - theirs).double().T) ** 2).sum(0)
    assert bool((rows_ours <= rows_theirs * (1 + 1e-9)).all())
    assert reconstruction_error(w, ours, heldout) < reconstruction_error(w, theirs, heldout)


def test_the_sensitivity_key_changes_with_the_gptq_column_order(monkeypatch):
    """A sensitivity cache entry of a GPTQ candidate measured with one column order is not
    read back for the other: the order changes the candidate's values (cache revision 2 reused
    them, so a plan was scored on results it did not ship)."""
    import edgeq.algorithms.calibrated as calibrated

    solved = {("l", "int4-g32-gptq"): object()}
    keys = set()
    for order in (False, True):
        monkeypatch.setattr(calibrated, "ACT_ORDER", order)
        keys.add(calibrated.results_key(None, solved))
    assert len(keys) == 2
    assert calibrated.results_key(None, {}) == ""
