"""Latency as a planning budget on a tiny model: each (layer, scheme) timed in ONNX Runtime,
the plan within --latency-budget, an infeasible budget named in one line, the export's
measured p50 recorded beside the prediction, and bad input refused before any work. No
test asserts a speed (timings on a shared machine are noisy): only that the plan is within
the budget it was solved for and that the records are consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeq.errors import ConfigError
from edgeq.planning.latency import host_threads
from edgeq.planning.planner import BudgetError, plan
from tests.conftest import cli_here

pytest.importorskip("onnxruntime")
MODEL = "tests.tiny_models:tiny_text"


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEQ_CACHE_DIR", str(tmp_path_factory.mktemp("latency-cache")))
        yield


def test_latency_budget_plan_is_within_it_and_the_kernels_are_candidates():
    loose = plan(MODEL, "x86", latency_budget_ms=1e6)
    timings = loose.latency
    assert timings is not None and "measured here" in timings.source
    linears = [x.fqn for x in loose.layers if x.kind == "linear"]
    assert linears and all({"int8", "int8@matmulinteger", "fp32"} <= set(timings.layers[f]) for f in linears)
    assert loose.predicted_latency_ms == pytest.approx(timings.predict(loose.plan.schemes))
    fastest = timings.fastest_ms()
    budget = (fastest + loose.predicted_latency_ms) / 2
    if budget < loose.predicted_latency_ms:  # the loose plan is not already the fastest
        tight = plan(MODEL, "x86", latency_budget_ms=budget)
        assert tight.predicted_latency_ms <= budget
        assert tight.predicted_error >= loose.predicted_error
    with pytest.raises(BudgetError, match=r"below the fastest achievable plan \(\d+\.\d\d ms predicted"):
        plan(MODEL, "x86", latency_budget_ms=fastest / 2)


def test_in_graph_offsets_by_hand():
    """Two linears (a, b) and a table (e): the fp32 graph 8.5 ms against 6.5 ms of its layers
    alone leaves 2 ms = R + 2·c_fp32; all-int8 5.0 ms against 3.5 ms leaves R + 2·c_int8 = 1.5.
    R is as large as keeps both offsets ≥ 0: 1.5, so c_fp32 = 0.25 and c_int8 = 0. When a
    plan's graph is faster than its layers alone, R is as large as keeps every layer's cost ≥ 0
    (below 0), and each uniform plan is still predicted at its measurement."""
    from edgeq.backends.timing import in_graph_offsets

    fp32 = {"a": 2.0, "b": 4.0, "e": 0.5}
    int8 = {"a": 1.0, "b": 2.0}
    assert in_graph_offsets(fp32, {"fp32": (8.5, fp32), "int8": (5.0, int8)}, {"a", "b"}) == {"fp32": 0.25, "int8": 0.0}
    # a plan where only a has int4: b stays fp32 (4.0 + its offset 0.25) in that graph
    got = in_graph_offsets(fp32, {"fp32": (8.5, fp32), "int8": (5.0, int8), "int4": (3.0, {"a": 0.5})}, {"a", "b"})
    # raw offsets (R = 0): fp32 1.0, int8 0.75, int4 3.0 - 0.5 - 0.5(e) - (4.0 + 1.0) = -3.0, which
    # would cost a at int4 0.5 - 3.0 = -2.5: R = 2 · -2.5 = -5.0 and every offset 2.5 higher
    assert got == {"fp32": 3.5, "int8": 3.25, "int4": -0.5}
    cost = {"a": {"fp32": 5.5, "int8": 4.25, "int4": 0.0}, "b": {"fp32": 7.5, "int8": 5.25}, "e": {"fp32": 0.5}}
    for name, whole, plan_ in [("fp32", 8.5, {}), ("int8", 5.0, {"a": "int8", "b": "int8"}), ("int4", 3.0, {"a": "int4"})]:
        assert -5.0 + sum(cost[f][plan_.get(f, "fp32")] for f in cost) == pytest.approx(whole), name
    assert in_graph_offsets({"e": 1.0}, {"fp32": (1.0, {"e": 1.0})}, set()) == {"fp32": 0.0}


def test_every_uniform_plan_is_predicted_at_its_whole_graph_measurement(tmp_path: Path, monkeypatch):
    """The plan's latency costs reproduce each whole-graph timing they were derived from:
    the fp32 graph and every uniform plan (a scheme on each linear that has it, the rest fp32).
    A cache of its own: another worker timing the same model would replace the entries read
    back below with its own measurement."""
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    from edgeq.backends.onnx.latency import _whole_ms
    from edgeq.backends.timing import uniform_plans
    from edgeq.planning.planner import load_for_planning
    from edgeq.schemes import parse

    result = plan(MODEL, "x86", latency_budget_ms=1e6)
    timings = result.latency
    linears = {x.fqn for x in result.layers if x.kind == "linear"}
    others = {x.fqn: "fp32" for x in result.layers if x.fqn not in linears}
    candidates = {f: [parse(n) for n in timings.layers[f]] for f in sorted(linears)}
    uniform = uniform_plans(candidates)
    assert {"fp32", "int8", "int8@matmulinteger"} <= set(uniform)
    loaded, _ = load_for_planning(MODEL, "x86")
    wholes = _whole_ms(loaded.module, loaded.example_inputs, host_threads(4), True, uniform)  # cached: no new timing
    for name, fqns in uniform.items():
        schemes = others | {f: "fp32" for f in linears} | {f: name for f in fqns}
        assert timings.predict(schemes) == pytest.approx(wholes[name], rel=1e-4), name



@pytest.mark.parametrize("seed", range(20))
def test_layer_costs_are_never_negative_and_reproduce_every_uniform_plan(seed):
    """Random one-layer timings and whole-graph timings, some plans' graphs faster than their
    layers alone (a tiny model's case): every cost is ≥ 0 and the rest of the graph (the fp32
    whole minus the layers' fp32 costs, as planning takes it) plus a uniform plan's costs is
    that plan's measurement."""
    import random

    from edgeq.backends.timing import with_in_graph_offsets
    from edgeq.schemes import parse

    rng = random.Random(seed)
    names = ["int8", "int4-g32", "int8@matmulinteger"]
    linears = [f"l{i}" for i in range(rng.randint(1, 6))]
    candidates = {f: [parse(n) for n in rng.sample(names, rng.randint(1, 3))] for f in linears}
    shape = ("linear", (4, 4), False, (1, 4))
    cases = [(f, s, shape) for f in linears for s in [parse("fp32"), *candidates[f]]]
    alone = {f: {s.name: rng.uniform(0.005, 0.05) for s in [parse("fp32"), *candidates[f]]} for f in linears}
    wholes = {}

    def measure(uniform):
        for name, fqns in uniform.items():
            wholes[name] = rng.uniform(0.2, 1.5) * sum(alone[f][name] for f in fqns)
        return dict(wholes)

    costs, whole_fp32, _ = with_in_graph_offsets({f: dict(v) for f, v in alone.items()}, cases, candidates, measure)
    assert all(ms >= -1e-9 for v in costs.values() for ms in v.values())
    rest = whole_fp32 - sum(v["fp32"] for v in costs.values())
    for name, whole in wholes.items():
        predicted = rest + sum(costs[f][name] if name in costs[f] else costs[f]["fp32"] for f in linears)
        assert predicted == pytest.approx(whole, abs=1e-7), name

def test_plan_file_records_the_latency_prediction(tmp_path: Path):
    out = tmp_path / "plan.yaml"
    r = cli_here("plan", MODEL, "-t", "x86", "--latency-budget", "10s", "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    import yaml

    doc = yaml.safe_load(out.read_text())
    assert doc["latency_budget_ms"] == 10_000
    assert doc["predicted"]["latency_ms"] > 0 and "measured here" in doc["predicted"]["latency_source"]


def test_export_records_measured_p50_beside_the_prediction(tmp_path: Path):
    out = tmp_path / "art"
    r = cli_here("export", MODEL, "-t", "x86", "--latency-budget", "10s", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "measured on this host" in r.stdout
    rec = json.loads((out / "manifest.json").read_text())["plan"]
    assert rec["latency_budget_ms"] == 10_000 and rec["predicted_latency_ms"] > 0 and rec["measured_latency_ms"] > 0
    assert "measured here" in rec["latency_source"]
    # the fp32 graph the prediction anchors on, timed when the layers were and again beside the artifact
    assert rec["latency_reference_ms"] > 0 and rec["latency_reference_now_ms"] > 0
    assert "fp32 graph" in r.stdout and not list(out.glob("latency-reference*"))


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_the_latency_reference_is_the_fp32_model_whose_timing_anchors_the_prediction(tmp_path: Path, fmt):
    """The graph a backend writes as the latency reference computes what the eager fp32 model
    does, and the plan's reference p50 is its whole-graph timing: the prediction of the plan
    that keeps every layer fp32."""
    pytest.importorskip(fmt)
    import torch

    from edgeq.backends import get_backend
    from edgeq.planning.planner import load_for_planning

    target = "x86" if fmt == "onnx" else "x86-executorch"
    loaded, _ = load_for_planning(MODEL, target)
    be = get_backend(fmt)
    path = be.write_latency_reference(loaded.module, loaded.example_inputs, tmp_path)
    with torch.no_grad():
        eager = loaded.module(*loaded.example_inputs)
    [ran] = be.run(path, [tuple(loaded.example_inputs)])
    ran = ran[0] if isinstance(ran, (list, tuple)) else ran
    assert torch.allclose(torch.as_tensor(ran), eager, atol=1e-4), fmt
    result = plan(MODEL, target, latency_budget_ms=1e6)
    all_fp32 = {x.fqn: "fp32" for x in result.layers}
    assert result.latency.reference_ms == pytest.approx(result.latency.predict(all_fp32), rel=1e-6)
    [ms] = be.time_artifacts([path], loaded.example_inputs, host_threads(4))
    assert ms > 0


@pytest.mark.parametrize("args,message", [
    (["--latency-budget", "fast"], "cannot read --latency-budget 'fast'"),
    (["--latency-budget", "0ms"], "cannot read --latency-budget '0ms'"),
    (["--latency-budget", "-3"], "cannot read --latency-budget '-3'"),
    (["--latency-budget", "1e400"], "cannot read --latency-budget"),
])
def test_bad_latency_budgets_are_one_line_errors(args, message):
    r = cli_here("plan", MODEL, "-t", "x86", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_infeasible_latency_budget_is_one_line_exit_2():
    r = cli_here("plan", MODEL, "-t", "x86", "--latency-budget", "1us")
    assert r.returncode == 2, r.stderr
    assert "below the fastest achievable plan" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("yaml_text,message", [
    ("extends: x86\nobjective: fastest\n", "objective"),
    ("extends: x86\nbudgets:\n  latency_ms: -1\n", "latency_ms"),
    ("extends: x86\nbudgets:\n  latency_ms: fast\n", "latency_ms"),
    ("extends: x86\nobjectve: balanced\n", "did you mean"),
])
def test_target_latency_keys_are_validated(tmp_path: Path, yaml_text, message):
    f = tmp_path / "t.yaml"
    f.write_text(yaml_text)
    r = cli_here("targets", "validate", str(f))
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_target_latency_budget_and_balanced_objective_steer_the_plan(tmp_path: Path):
    from edgeq.targets import load_target

    f = tmp_path / "fast.yaml"
    f.write_text("extends: x86\nname: x86-balanced\nobjective: balanced\n")
    assert load_target(str(f)).target.objective == "balanced"
    balanced = plan(MODEL, str(f))
    assert balanced.objective == "balanced" and balanced.predicted_latency_ms is not None
    # the default export of a balanced target stays at its default precision (int8): each
    # layer at one of the int8 kernels / variants, measured against the most accurate of those
    assert balanced.families == ("int8",)
    assert {s.precision for s in balanced.plan.schemes.values() if s.name not in ("fp32", "unused")} == {"int8"}
    only = tmp_path / "int8.yaml"
    only.write_text("extends: x86\nname: x86-int8-only\nprecisions: [int8]\nobjective: accuracy\n")
    accurate = plan(MODEL, str(only), latency_budget_ms=1e6)
    assert accurate.families is None and accurate.objective == "accuracy"
    # what balanced minimises: the layers' time plus their bytes at BALANCED_MS_PER_MB (the
    # rest of the graph is the same for both), within BALANCED_MARGIN of the accurate error
    from edgeq.planning.latency_bound import BALANCED_MARGIN, BALANCED_MS_PER_MB

    def cost(result):
        return result.predicted_latency_ms + sum(result.layer_bytes.values()) / 1e6 * BALANCED_MS_PER_MB

    assert cost(balanced) <= cost(accurate) + 2e-3  # + the µs grid's rounding of each layer
    assert balanced.predicted_error <= accurate.predicted_error + BALANCED_MARGIN + 1e-9
    # a budget or a rule of the user's plans across the target's precisions, as without the objective
    assert plan(MODEL, str(f), budget_bytes=10**9).families is None
    f.write_text("extends: x86\nname: x86-budget\nobjective: accuracy\nbudgets:\n  latency_ms: 1.0e-6\n")
    with pytest.raises(BudgetError, match="target x86-budget"):
        plan(MODEL, str(f))
    with pytest.raises(ConfigError):
        plan(MODEL, "x86", latency_budget_ms=8, algorithms=["nope"])


def test_device_target_latency_is_an_estimate_and_labelled_so():
    """An Arm board's ONNX target: the layers are costed by the emulator for its profile, and
    the plan says it is an estimate; the estimate of a bigger linear is larger."""
    result = plan(MODEL, "rpi5-onnx", latency_budget_ms=1e6)
    timings = result.latency
    assert timings.estimate and "ESTIMATE for" in timings.source and "rpi5" in timings.source
    assert result.to_yaml().count("ESTIMATE") == 1
    linears = [x for x in result.layers if x.kind == "linear"]
    small, big = min(linears, key=lambda x: x.params), max(linears, key=lambda x: x.params)
    if big.params > 2 * small.params:
        assert timings.layers[big.fqn]["fp32"] > timings.layers[small.fqn]["fp32"] > 0


def test_causal_lms_refuse_a_latency_budget_flag_and_plan_past_a_targets(tmp_path: Path, tiny_llama_dir):
    r = cli_here("plan", str(tiny_llama_dir), "-t", "x86", "--latency-budget", "8ms", "--max-context", "32")
    assert r.returncode == 2 and "--latency-budget is not available for causal LMs" in r.stderr
    f = tmp_path / "t.yaml"
    f.write_text("extends: x86\nname: x86-lm\nobjective: balanced\nbudgets:\n  latency_ms: 5\n")
    r = cli_here("plan", str(tiny_llama_dir), "-t", str(f), "--max-context", "32")
    assert r.returncode == 0, r.stderr
    assert "planned for accuracy" in r.stdout + r.stderr


def test_executorch_layers_are_timed_in_its_runtime_and_the_export_is_timed_beside_the_plan(tmp_path: Path):
    """x86-executorch: each layer lowered alone with XNNPACK and timed in the ExecuTorch
    runtime at every candidate; the plan's prediction is the remainder plus its layers'
    timings; the exported .pte's measured p50 is recorded beside it."""
    pytest.importorskip("executorch")
    target = tmp_path / "t.yaml"  # two precisions: each (shape, scheme) is one lowering
    target.write_text("extends: x86-executorch\nname: x86-et-two\nprecisions: [fp32, int8]\n")
    result = plan(MODEL, str(target), latency_budget_ms=1e6)
    timings = result.latency
    assert "measured here" in timings.source and "ExecuTorch" in timings.source and not timings.estimate
    linears = [x.fqn for x in result.layers if x.kind == "linear"]
    assert linears and all(set(timings.layers[f]) == {"fp32", "int8"} for f in linears)
    assert all(ms > 0 for f in linears for ms in timings.layers[f].values())
    assert result.predicted_latency_ms == pytest.approx(timings.predict(result.plan.schemes))
    out = tmp_path / "art"
    r = cli_here("export", MODEL, "-t", str(target), "--latency-budget", "10s", "-o", str(out))
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "manifest.json").read_text())["plan"]
    assert rec["predicted_latency_ms"] > 0 and rec["measured_latency_ms"] > 0 and "ExecuTorch" in rec["latency_source"]


def test_executorch_device_latency_is_an_estimate_for_its_delegate_chain(tmp_path: Path):
    """rpi5 (ExecuTorch, Arm): layers costed by the emulator for the board, labelled ESTIMATE;
    the estimate of a bigger linear is larger."""
    pytest.importorskip("executorch")
    target = tmp_path / "t.yaml"
    target.write_text("extends: rpi5\nname: rpi5-two\nprecisions: [fp32, int8]\n")
    result = plan(MODEL, str(target), latency_budget_ms=1e6)
    timings = result.latency
    assert timings.estimate and "ESTIMATE for rpi5" in timings.source
    linears = [x for x in result.layers if x.kind == "linear"]
    small, big = min(linears, key=lambda x: x.params), max(linears, key=lambda x: x.params)
    if big.params > 2 * small.params:
        assert timings.layers[big.fqn]["fp32"] > timings.layers[small.fqn]["fp32"] > 0
