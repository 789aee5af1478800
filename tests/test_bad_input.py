"""Bad input, table-driven: one line naming problem and fix, exit 2, no traceback, no output."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.conftest import cli_here, run_cli


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _corrupt_pt2(tmp: Path) -> str:
    p = tmp / "broken.pt2"
    p.write_bytes(b"this is not a zip archive at all")
    return str(p)


def _truncated_pt2(tmp: Path) -> str:
    import torch

    from tests.tiny_models import tiny_mlp

    model, example = tiny_mlp()
    good = tmp / "good.pt2"
    torch.export.save(torch.export.export(model, example), good)
    data = good.read_bytes()
    p = tmp / "truncated.pt2"
    p.write_bytes(data[: len(data) // 2])
    return str(p)


def _pickle_pt2(tmp: Path) -> str:
    """A .pt2 whose constants pickle an arbitrary object: edgeq must refuse to unpickle it."""
    import io
    import pickle

    import torch

    from tests.tiny_models import tiny_mlp

    model, example = tiny_mlp()
    good = tmp / "good2.pt2"
    torch.export.save(torch.export.export(model, example), good)
    p = tmp / "pickle.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(p, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "sample_inputs" in info.filename:
                buf = io.BytesIO()
                pickle.dump({"evil": Path("/")}, buf)  # not a tensor: weights_only refuses it
                data = buf.getvalue()
            dst.writestr(info, data)
    return str(p)


def _hf_dir_without_config(tmp: Path) -> str:
    d = tmp / "not-a-model"
    d.mkdir()
    (d / "weights.bin").write_bytes(b"\0" * 16)
    return str(d)


def _file_as_parent(tmp: Path) -> str:
    f = tmp / "a-file"
    f.write_text("x")
    return str(f / "out")


# (id, argv builder, expected text in the error line). {tmp} is a per-test directory;
# every case writes to {tmp}/out unless it is about the output itself.
CASES = [
    ("malformed-yaml", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: x86\nbudgets: [1,\n")], "YAML syntax error"),
    ("unknown-key", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: x86\nbudget:\n  storage_mb: 1\n")], "unknown key 'budget'; did you mean 'budgets'?"),
    ("wrong-type", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: x86\nbudgets:\n  storage_mb: lots\n")], "budgets.storage_mb"),
    ("unknown-target", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", "snapdragn8"], "did you mean 'snapdragon8'"),
    ("unknown-delegate", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: snapdragon8\ndelegates: [qnn, xnnpak]\n")], "did you mean 'xnnpack'"),
    ("missing-model-path", lambda t: ["export", str(t / "no-such-model"), "-t", "x86"], "does not exist"),
    ("hub-id-offline", lambda t: ["export", "sentence-transformers/all-MiniLM-L6-v2", "-t", "x86"], "no network"),
    ("not-exportable", lambda t: ["export", "tests.tiny_models:not_exportable", "-t", "x86"], "cannot export the model"),
    ("not-exportable-et", lambda t: ["export", "tests.tiny_models:not_exportable", "-t", "rpi5"], "cannot capture"),
    ("factory-missing", lambda t: ["export", "tests.tiny_models:no_such_factory", "-t", "x86"], "has no callable 'no_such_factory'"),
    ("factory-bad-return", lambda t: ["export", "tests.tiny_models:not_a_module", "-t", "x86"], "must return (torch.nn.Module"),
    ("corrupt-pt2", lambda t: ["export", _corrupt_pt2(t), "-t", "x86"], "not a valid .pt2"),
    ("truncated-pt2", lambda t: ["export", _truncated_pt2(t), "-t", "x86"], "not a valid .pt2"),
    ("pickle-in-pt2", lambda t: ["export", _pickle_pt2(t), "-t", "x86"], "does not unpickle arbitrary objects"),
    ("not-hf-dir", lambda t: ["export", _hf_dir_without_config(t), "-t", "x86"], "no config.json"),
    ("unknown-precision", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-p", "int7"], "unknown precision 'int7'"),
    ("precision-of-another-format", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-p", "int3"],
     "does not allow precision int3"),
    ("precision-not-allowed", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", "rpi4", "-p", "fp16"], "does not allow precision fp16"),
    ("unknown-task", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", "x86", "--task", "classify"], "unknown task 'classify'"),
    ("over-storage-budget", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: x86\nbudgets:\n  storage_mb: 0.001\n")], "over target 't' storage budget"),
    ("strict-without-qnn", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", "snapdragon8", "--strict"], "QNN"),
    ("output-is-under-a-file", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-o", _file_as_parent(t)], "is a file, not a directory"),
    ("default-rule-syntax", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: x86\nquantization:\n  default_rules: ['0:int8']\n")], "is not of the form REGEX=SCHEME"),
    ("default-rule-scheme", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: x86\nquantization:\n  default_rules: ['0=int9']\n")], "int9"),
    ("default-rule-precision", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: x86\nprecisions: [fp32, int8]\nquantization:\n  default_rules: ['0=int4-g32']\n")], "int4 is not in precisions"),
    ("default-rule-kernel", lambda t: ["export", "tests.tiny_models:tiny_mlp", "-t", _write(t / "t.yaml", "extends: rpi5\nquantization:\n  default_rules: ['0=int8@matmulinteger']\n")], "default_rules"),
    ("validate-bad-profile", lambda t: ["targets", "validate", _write(t / "p.yaml", "schema_version: 1\nname: p\ncpu: {arch: riscv}\n")], "missing required key 'display_name'"),
]


@pytest.mark.parametrize("case_id, build, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path: Path, case_id: str, build, expected: str):
    argv = build(tmp_path)
    if argv[0] == "export" and "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    before = set(tmp_path.rglob("*"))
    proc = cli_here(*argv)
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert err_lines and err_lines[-1].startswith("error: "), proc.stderr
    assert sum(1 for line in err_lines if line.startswith("error:")) == 1
    assert expected in err_lines[-1], err_lines[-1]
    assert not (tmp_path / "out").exists()
    leftovers = [p for p in set(tmp_path.rglob("*")) - before if ".partial-" in p.name or p.name == "out"]
    assert not leftovers, leftovers


def test_existing_output_needs_force(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = run_cli("export", "tests.tiny_models:tiny_mlp", "-t", "x86", "-o", str(out))
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_failed_export_leaves_existing_artifact_untouched(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = run_cli("export", "tests.tiny_models:not_exportable", "-t", "x86", "-o", str(out), "--force")
    assert proc.returncode == 2
    assert (out / "keep.txt").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_debug_shows_traceback(tmp_path: Path):
    proc = run_cli("--debug", "export", "tests.tiny_models:tiny_mlp", "-t", "snapdragn8")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
