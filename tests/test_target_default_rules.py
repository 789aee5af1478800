"""A target's ``quantization.default_rules``: its default export (no --precision, plan, budget
or rule) is the default precision with the rules' schemes on the layers they match (x86: the
linears at ONNX Runtime's MatMulInteger). The reference is the exported ONNX graph itself: which
operators compute the linears, counted with the ``onnx`` package."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import cli_here

onnx = pytest.importorskip("onnx")


def _ops(out: Path) -> Counter:
    manifest = json.loads((out / "manifest.json").read_text())
    graph = onnx.load(str(out / manifest["model_file"]), load_external_data=False).graph
    return Counter(n.op_type for n in graph.node)


def _export_for(tmp_path: Path, target_yaml: str, model: str):
    """``model`` exported for a target that extends x86 with ``target_yaml``: (process, out dir)."""
    target = tmp_path / "t.yaml"
    target.write_text("extends: x86\n" + target_yaml)
    out = tmp_path / "out"
    r = cli_here("export", model, "-t", str(target), "-o", str(out), "--samples", "4")
    assert r.returncode == 0, r.stderr
    return r, out


def test_x86_default_export_runs_its_linears_as_matmulinteger_and_p_int8_does_not(tmp_path, tiny_bert_dir):
    default, int8 = tmp_path / "default", tmp_path / "int8"
    r = cli_here("export", str(tiny_bert_dir), "-t", "x86", "--seq-len", "32", "-o", str(default), "--samples", "4")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "default rule 'attention|attn=int8@matmulinteger7'" in out
    manifest = json.loads((default / "manifest.json").read_text())
    layers = manifest["precision"]["layers"]
    linears = [x["fqn"] for x in manifest["precision"]["inventory"]
               if x["kind"] == "linear" and layers[x["fqn"]] != "unused"]  # e.g. a pooler the output skips
    tables = [x["fqn"] for x in manifest["precision"]["inventory"] if x["kind"] == "embedding"]
    assert linears and tables
    assert manifest["precision"]["requested"] == "planned"
    for fqn in linears:
        want = "int8@matmulinteger7" if "attention" in fqn else "int8@matmulinteger"
        assert layers[fqn] == want, (fqn, layers[fqn])
    assert {layers[f] for f in tables} <= {"int8-g32", "unused"}
    ops = _ops(default)
    assert ops["MatMulInteger"] == len(linears)
    assert ops["MatMulNBits"] == 0

    r = cli_here("export", str(tiny_bert_dir), "-t", "x86", "-p", "int8", "--seq-len", "32", "-o", str(int8), "--samples", "4")
    assert r.returncode == 0, r.stderr
    assert "default rule" not in r.stdout + r.stderr
    assert json.loads((int8 / "manifest.json").read_text())["precision"]["requested"] == "int8"
    ops = _ops(int8)
    assert ops["MatMulInteger"] == 0
    assert ops["MatMulNBits"] >= len(linears)


def test_a_rule_that_matches_no_layer_is_noted_and_a_layer_that_cannot_take_it_keeps_its_scheme(tmp_path):
    r, out = _export_for(tmp_path, "name: x86-rules\nquantization:\n"
                         "  default_rules: ['no_such_layer=int8@matmulinteger', '.=int8@matmulinteger']\n",
                         "tests.tiny_models:tiny_text")
    text = " ".join((r.stdout + r.stderr).split())
    assert "default rule 'no_such_layer=int8@matmulinteger' matches no layer of this model" in text
    assert "cannot take int8@matmulinteger: left as they were" in text  # the embedding table
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = {x["fqn"]: x["kind"] for x in manifest["precision"]["inventory"]}
    layers = manifest["precision"]["layers"]
    assert all(layers[f] == "int8@matmulinteger" for f, k in kinds.items() if k == "linear")
    assert all(layers[f] in ("int8", "unused") for f, k in kinds.items() if k == "embedding")


def test_a_causal_lm_ignores_the_rules(tmp_path, tiny_llama_dir):
    out = tmp_path / "lm"
    r = cli_here("export", str(tiny_llama_dir), "-t", "x86", "--max-context", "32", "--samples", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "default_rules are for encoders" in " ".join((r.stdout + r.stderr).split())
    assert _ops(out)["MatMulInteger"] == 0


def test_keep_fp32_wins_over_a_default_rule(tmp_path):
    _r, out = _export_for(tmp_path, "name: x86-keep\nquantization:\n  keep_fp32: ['^2$']\n"
                          "  default_rules: ['.=int8@matmulinteger']\n", "tests.tiny_models:tiny_mlp")
    layers = json.loads((out / "manifest.json").read_text())["precision"]["layers"]
    assert layers == {"0": "int8@matmulinteger", "2": "fp32"}
    ops = _ops(out)
    assert ops["MatMulInteger"] == 1 and ops["MatMulNBits"] == 0
