"""Hostile ``.pt2`` files: every one is refused with a ModelLoadError, and nothing in them runs.

Each archive is a real ``torch.export.save`` output, mutated. The payloads are pickles whose
``__reduce__`` touches a marker file, so a test fails if anything unpickles them; controls show
that the same payloads do fire under plain unpickling and under ``torch.export.load``.
"""

from __future__ import annotations

import io
import json
import pickle
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from edgeq.errors import ModelLoadError
from edgeq.models.pt2 import safe_load
from edgeq.models.pt2.limits import MAX_ENTRIES
from tests.conftest import run_cli
from tests.hostile import assert_clean_failure
from tests.tiny_models import tiny_mlp

Entries = list[list]  # [name, bytes, external_attr, flag_bits, compress_type]


class Touch:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class WithConstants(nn.Module):
    """A parameter, a persistent buffer, a non-persistent buffer and a tensor constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))
        self.register_buffer("shift", torch.arange(4.0), persistent=False)
        self.c = torch.tensor([1.0, 2.0, 3.0, 4.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale + self.c + self.shift


class NoGradInside(nn.Module):
    """A no_grad region (exported as a wrap_with_set_grad_enabled subgraph) and a constant bool input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, twice: bool = False) -> torch.Tensor:
        with torch.no_grad():
            y = x * 2
        return self.fc(y * 2 if twice else y)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Real archives from torch.export.save: a plain MLP, one with constants, one with a dynamic
    batch, one with a subgraph and a constant input."""
    root = tmp_path_factory.mktemp("pt2")
    model, example = tiny_mlp()
    out = {"mlp": root / "mlp.pt2", "const": root / "const.pt2", "dyn": root / "dyn.pt2", "nograd": root / "nograd.pt2"}
    torch.export.save(torch.export.export(NoGradInside().eval(), (torch.randn(1, 8),), {"twice": False}), out["nograd"])
    torch.export.save(torch.export.export(model, example), out["mlp"])
    torch.export.save(torch.export.export(WithConstants().eval(), (torch.randn(2, 4),)), out["const"])
    batch = torch.export.Dim("batch", max=64)
    torch.export.save(torch.export.export(model, (torch.randn(3, 64),), dynamic_shapes=({0: batch},)), out["dyn"])
    return out


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "unpickled-marker"


def pickled(marker: Path) -> bytes:
    return pickle.dumps(Touch(marker), protocol=4)


def torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def read_entries(path: Path) -> Entries:
    with zipfile.ZipFile(path) as z:
        return [[i.filename, z.read(i), i.external_attr, i.flag_bits & 0x800, zipfile.ZIP_STORED] for i in z.infolist()]


def write_entries(path: Path, entries: Entries) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": intended
        with zipfile.ZipFile(path, "w") as z:
            for name, data, attr, flags, method in entries:
                info = zipfile.ZipInfo(name)
                info.external_attr, info.compress_type = attr, method
                info.flag_bits |= flags
                z.writestr(info, data)
    for name, _, _, flags, _ in entries:
        if flags & 0x1:  # zipfile will not write an encryption flag itself
            _set_flag(path, name, 0x1)
    return path


def _set_flag(path: Path, name: str, bit: int) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local, pos = z.getinfo(name).header_offset, z.start_dir
    data[local + 6] |= bit
    while data[pos:pos + 4] == b"PK\x01\x02":
        n, extra, comment = struct.unpack("<HHH", data[pos + 28:pos + 34])
        if data[pos + 46:pos + 46 + n] == name.encode():
            data[pos + 8] |= bit
        pos += 46 + n + extra + comment
    path.write_bytes(bytes(data))


def find(entries: Entries, suffix: str) -> list:
    return next(e for e in entries if e[0].endswith(suffix))


def edit_json(entries: Entries, suffix: str, change: Callable[[dict], None]) -> None:
    entry = find(entries, suffix)
    doc = json.loads(entry[1])
    change(doc)
    entry[1] = json.dumps(doc).encode()


def pickle_weight(marker: Path, config: str = "model_weights_config.json", fqn: str = "0.weight"):
    """Flag one payload use_pickle (as torch.export.save does for tensor subclasses) and make it the payload."""
    def mutate(entries: Entries) -> None:
        def flag(doc: dict) -> None:
            doc["config"][fqn]["use_pickle"] = True
        edit_json(entries, config, flag)
        name = json.loads(find(entries, config)[1])["config"][fqn]["path_name"]
        find(entries, "/" + name)[1] = torch_saved(Touch(marker))
    return mutate


def add(name: str, data: bytes | Callable[[Entries], bytes], **fields) -> Callable[[Entries], None]:
    def mutate(entries: Entries) -> None:
        content = data(entries) if callable(data) else data
        entries.append([name, content, fields.get("attr", 0), fields.get("flags", 0), zipfile.ZIP_STORED])
    return mutate


def evil_config(marker_path_name: str = "weight_9") -> Callable[[Entries], bytes]:
    """The weights config with every payload asking for pickle."""
    def build(entries: Entries) -> bytes:
        doc = json.loads(find(entries, "model_weights_config.json")[1])
        for meta in doc["config"].values():
            meta["use_pickle"], meta["path_name"] = True, marker_path_name
        return json.dumps(doc).encode()
    return build


def model_json(change: Callable[[dict], None]) -> Callable[[Entries], None]:
    return lambda entries: edit_json(entries, "models/model.json", change)


def first_node(doc: dict) -> dict:
    return doc["graph_module"]["graph"]["nodes"][0]


def set_attr(suffix: str, **fields) -> Callable[[Entries], None]:
    def mutate(entries: Entries) -> None:
        entry = find(entries, suffix)
        entry[2] = fields.get("attr", entry[2])
        entry[3] = fields.get("flags", entry[3])
    return mutate


def replace(suffix: str, data: Callable[[Path], bytes]) -> Callable[[Entries, Path], None]:
    return lambda entries, marker: find(entries, suffix).__setitem__(1, data(marker))


def zip_bomb(entries: Entries) -> None:
    entry = find(entries, "weights/weight_0")
    entry[1], entry[4] = bytes(8 << 20), zipfile.ZIP_DEFLATED


def sample_inputs_with(extra: dict[str, bytes]) -> Callable[[Entries], None]:
    def mutate(entries: Entries) -> None:
        entry = find(entries, "sample_inputs/model.pt")
        inner = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(entry[1])) as src, zipfile.ZipFile(inner, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, src.read(info))
            for name, data in extra.items():
                dst.writestr(name, data)
        entry[1] = inner.getvalue()
    return mutate


def nested_zip(marker: Path) -> bytes:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("payload.pkl", pickled(marker))
    return inner.getvalue()


ROOT = "mlp/"
# (id, base archive, mutation(entries, marker), text the error must contain)
CASES: list[tuple[str, str, Callable, str]] = [
    ("case-variant-weights-config", "mlp", lambda e, m: (
        add(ROOT + "data/weights/MODEL_weights_config.json", evil_config())(e),
        add(ROOT + "data/weights/weight_9", torch_saved(Touch(m)))(e)), "duplicates another"),
    ("same-name-twice", "mlp", lambda e, m: add(ROOT + "data/weights/model_weights_config.json", evil_config("weight_0"))(e),
     "duplicates another"),
    ("duplicate-after-backslash", "mlp", lambda e, m: add("mlp\\data\\weights\\model_weights_config.json",
                                                          evil_config("weight_0"))(e), "duplicates another"),
    ("duplicate-after-nfc", "mlp", lambda e, m: [e.__setitem__(i, [x[0].replace("mlp/", "mod\u00e8le/"), *x[1:]])
                                                 for i, x in enumerate(e)] + [add("mode\u0300le/data/weights/model_weights_config.json",
                                                                                  evil_config("weight_0"))(e)],
     "duplicates another"),
    ("dot-dot", "mlp", lambda e, m: add(ROOT + "../../evil.pkl", pickled(m))(e), "leaves the archive"),
    ("absolute", "mlp", lambda e, m: add("/tmp/evil.pkl", pickled(m))(e), "absolute"),
    ("extra-entry", "mlp", lambda e, m: add(ROOT + "extra/notes.txt", b"hello")(e), "unexpected entry"),
    ("aotinductor-entry", "mlp", lambda e, m: add(ROOT + "data/aotinductor/model/model.so", b"\x7fELF")(e), "unexpected entry"),
    ("unreferenced-payload", "mlp", lambda e, m: add(ROOT + "data/weights/weight_99", bytes(16))(e), "no config refers to"),
    ("nested-zip", "mlp", lambda e, m: add(ROOT + "data/weights/inner.zip", nested_zip(m))(e), "unexpected entry"),
    ("nested-zip-in-example-inputs", "mlp", lambda e, m: sample_inputs_with({"archive/data/evil.zip": nested_zip(m)})(e),
     "unexpected entry"),
    ("symlink-entry", "mlp", lambda e, m: set_attr("weights/weight_0", attr=(stat.S_IFLNK | 0o777) << 16)(e), "symlink"),
    ("directory-entry", "mlp", lambda e, m: add(ROOT + "data/", b"", attr=(stat.S_IFDIR | 0o755) << 16 | 0x10)(e),
     "directory"),
    ("zip-bomb", "mlp", lambda e, m: zip_bomb(e), "zip bomb"),
    ("encrypted-flag", "mlp", lambda e, m: set_attr("models/model.json", flags=0x1)(e), "encrypted"),
    ("control-char-name", "mlp", lambda e, m: add(ROOT + "data/weights/weight_0\r.pkl", pickled(m))(e), "control"),
    ("use-pickle-weights", "mlp", lambda e, m: pickle_weight(m)(e), "pickled"),
    ("use-pickle-constants", "const", lambda e, m: pickle_weight(m, "model_constants_config.json", "c")(e), "pickled"),
    ("path-name-outside-prefix", "mlp", lambda e, m: edit_json(
        e, "model_weights_config.json", lambda d: d["config"]["0.weight"].update(path_name="../constants/tensor_0")),
     "not as a plain tensor"),
    ("custom-object-constant", "const", lambda e, m: (
        edit_json(e, "model_constants_config.json", lambda d: d["config"]["c"].update(
            path_name="custom_obj_0", use_pickle=True, tensor_meta=None)),
        add("const/data/constants/custom_obj_0", pickled(m))(e)), "unexpected entry"),
    ("opaque-object-constant", "const", lambda e, m: edit_json(
        e, "model_constants_config.json", lambda d: d["config"]["c"].update(path_name="opaque_obj_0", use_pickle=True)),
     "pickled object"),
    ("duplicate-json-key", "mlp", lambda e, m: find(e, "model_weights_config.json").__setitem__(
        1, find(e, "model_weights_config.json")[1].replace(b'"use_pickle": false', b'"use_pickle": false, "use_pickle": true', 1)),
     "repeats a key"),
    ("payload-claims-huge-size", "mlp", lambda e, m: edit_json(
        e, "model_weights_config.json", lambda d: d["config"]["0.weight"]["tensor_meta"].update(
            sizes=[{"as_int": 1 << 30}, {"as_int": 1 << 30}], strides=[{"as_int": 0}, {"as_int": 0}])), "elements"),
    ("payload-past-its-data", "mlp", lambda e, m: edit_json(
        e, "model_weights_config.json", lambda d: d["config"]["0.weight"]["tensor_meta"]["sizes"][0].update(as_int=4096)),
     "reaches past the end"),
    ("pickled-example-inputs", "mlp", lambda e, m: replace("sample_inputs/model.pt", lambda mk: torch_saved(((Touch(mk),), {})))(e, m),
     "not a tensor"),
    ("bare-pickle-example-inputs", "mlp", lambda e, m: replace("sample_inputs/model.pt", pickled)(e, m), "bare pickle"),
    ("guard-code", "mlp", lambda e, m: model_json(lambda d: d.update(
        guards_code=[f"__import__('pathlib').Path({str(m)!r}).touch() is None"]))(e), "guard code"),
    ("node-name-injection", "mlp", lambda e, m: model_json(lambda d: first_node(d)["outputs"][0]["as_tensor"].update(
        name=f"x = __import__('pathlib').Path({str(m)!r}).touch()\n    y"))(e), "control characters"),
    ("node-name-keyword", "mlp", lambda e, m: model_json(lambda d: first_node(d)["outputs"][0]["as_tensor"].update(
        name="lambda"))(e), "not an identifier"),
    ("node-name-not-identifier", "mlp", lambda e, m: model_json(lambda d: first_node(d)["outputs"][0]["as_tensor"].update(
        name="x;__import__('os')"))(e), "not an identifier"),
    ("forward-arg-name-injection", "mlp", lambda e, m: model_json(lambda d: d["graph_module"]["module_call_graph"][0][
        "signature"].update(forward_arg_names=[f"input, _=__import__('pathlib').Path({str(m)!r}).touch()"]))(e),
     "argument name"),
    ("treespec-key-injection", "mlp", lambda e, m: model_json(lambda d: d["graph_module"]["module_call_graph"][0][
        "signature"].update(in_spec=d["graph_module"]["module_call_graph"][0]["signature"]["in_spec"].replace(
            '"context": "[]"', '"context": "[\\"k\': __import__(\'os\'), \'j\\"]"')))(e), "input or output structure"),
    ("op-target-torch-load", "mlp", lambda e, m: model_json(lambda d: first_node(d).update(target="torch.load"))(e),
     "aten operators only"),
    ("op-target-from-file", "mlp", lambda e, m: model_json(lambda d: first_node(d).update(
        target="torch.ops.aten.from_file.default"))(e), "aten operators only"),
    ("call-inside-a-subgraph", "nograd", lambda e, m: model_json(lambda d: next(
        n for n in d["graph_module"]["graph"]["nodes"] if "higher_order" in n["target"])["inputs"][1]["arg"][
        "as_graph"]["graph"]["nodes"][0].update(target="torch.load"))(e), "aten operators only"),
    ("control-flow-op", "nograd", lambda e, m: model_json(lambda d: next(
        n for n in d["graph_module"]["graph"]["nodes"] if "higher_order" in n["target"]).update(
        target="torch.ops.higher_order.cond"))(e), "aten operators only"),
    ("string-constant-input", "nograd", lambda e, m: model_json(lambda d: next(
        s for s in d["graph_module"]["signature"]["input_specs"] if "constant_input" in s)["constant_input"].update(
        value={"as_string": "x' or __import__('os') or '"}))(e), "not a tensor, number"),
    ("custom-object-input", "mlp", lambda e, m: model_json(lambda d: d["graph_module"]["signature"]["input_specs"].append(
        {"custom_obj": {"arg": {"name": "obj", "class_fqn": "evil"}, "custom_obj_name": "obj"}}))(e), "tensors only"),
    ("sympy-eval", "dyn", lambda e, m: find(e, "models/model.json").__setitem__(1, find(e, "models/model.json")[1].replace(
        b"Symbol('s", f"__import__('pathlib').Path({str(m)!r}).touch() or Symbol('s".encode())), "symbolic expression"),
    ("sympy-eval-without-quotes", "dyn", lambda e, m: find(e, "models/model.json").__setitem__(1, find(
        e, "models/model.json")[1].replace(b"Symbol('s", b"eval(chr(49)) + Symbol('s")), "symbolic expression"),
    ("json-10k-deep", "mlp", lambda e, m: find(e, "models/model.json").__setitem__(1, b"[" * 10_000 + b"]" * 10_000),
     "nested more than"),
    ("not-pt2-version", "mlp", lambda e, m: find(e, "archive_version").__setitem__(1, b"1"), "version-0"),
    ("missing-model", "mlp", lambda e, m: e.remove(find(e, "models/model.json")), "missing entry"),
]


def build(case_base: Path, tmp: Path, mutate: Callable, marker: Path) -> Path:
    entries = read_entries(case_base)
    mutate(entries, marker)
    return write_entries(tmp / "hostile.pt2", entries)


@pytest.mark.parametrize("case_id, base, mutate, expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_archive_is_refused_and_nothing_runs(saved, tmp_path, marker, case_id, base, mutate, expected):
    path = build(saved[base], tmp_path, mutate, marker)
    with pytest.raises(ModelLoadError) as err:
        safe_load(path)
    line = err.value.one_line()
    assert expected in line and "\n" not in line, line
    assert not marker.exists(), "a payload was unpickled or executed"


def _raw(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


@pytest.mark.parametrize("case_id, make, expected", [
    ("empty-file", lambda t, good: _raw(t, "empty.pt2", b""), "empty"),
    ("not-a-zip", lambda t, good: _raw(t, "text.pt2", b"just some text, no zip here" * 10), "not a zip"),
    ("truncated", lambda t, good: _raw(t, "cut.pt2", good.read_bytes()[: good.stat().st_size * 2 // 3]), "not a valid .pt2"),
    ("truncated-tail", lambda t, good: _raw(t, "tail.pt2", good.read_bytes()[:-30]), "not a valid .pt2"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_broken_files_are_refused(saved, tmp_path, case_id, make, expected):
    with pytest.raises(ModelLoadError) as err:
        safe_load(make(tmp_path, saved["mlp"]))
    assert expected in err.value.one_line()


def test_too_many_entries_are_refused_before_reading(saved, tmp_path):
    entries = read_entries(saved["mlp"])
    entries += [[f"{ROOT}extra/{i}", b"", 0, 0, zipfile.ZIP_STORED] for i in range(MAX_ENTRIES)]
    with pytest.raises(ModelLoadError, match="entries, over edgeq's limit"):
        safe_load(write_entries(tmp_path / "many.pt2", entries))


def test_entry_count_that_lies_is_caught_by_the_directory_size(saved, tmp_path):
    """The end record may understate the entry count; zipfile reads the whole directory anyway."""
    from edgeq.models.pt2.limits import MAX_DIRECTORY_BYTES

    entries = read_entries(saved["mlp"])
    long_name = ROOT + "extra/" + "n" * 1000
    entries += [[f"{long_name}{i}", b"", 0, 0, zipfile.ZIP_STORED] for i in range(MAX_DIRECTORY_BYTES // 1000)]
    path = write_entries(tmp_path / "lying.pt2", entries)
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    data[end + 8:end + 12] = struct.pack("<HH", 13, 13)  # entries on this disk, entries in total
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="central directory"):
        safe_load(path)


def test_payloads_fire_when_unpickled_the_ordinary_way(saved, tmp_path, marker):
    """Controls: the payloads above are live, and torch's own loader runs them."""
    pickle.loads(pickled(marker))
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(torch_saved(Touch(marker))), weights_only=False)
    assert marker.exists()
    marker.unlink()
    path = build(saved["mlp"], tmp_path, lambda e, m: pickle_weight(m)(e), marker)
    with pytest.raises(Exception):  # noqa: B017 - it fails after the payload ran
        torch.export.load(str(path))
    assert marker.exists(), "torch.export.load should unpickle a use_pickle weight"
    marker.unlink()
    import sympy

    sympy.sympify(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    assert marker.exists(), "sympy.sympify evaluates what it parses"


def test_unpickling_and_sympy_eval_refuse_during_deserialization(marker, tmp_path):
    """Second line of defence: inside the window where torch's serde runs, the unpickling entry
    points raise and sympy parses only checked expressions; outside it they work again."""
    import sympy

    from edgeq.models.pt2.guard import only_checked_deserialization

    attempts = [
        lambda: pickle.loads(pickled(marker)),
        lambda: pickle.Unpickler(io.BytesIO(pickled(marker))).load(),
        lambda: torch.load(io.BytesIO(torch_saved(Touch(marker))), weights_only=False),
        lambda: torch._C._pickle_load_obj(b"not used"),
        lambda: sympy.sympify(f"__import__('pathlib').Path({str(marker)!r}).touch()"),
    ]
    with only_checked_deserialization(tmp_path / "x.pt2"):
        for attempt in attempts:
            with pytest.raises(ModelLoadError):
                attempt()
        assert sympy.sympify("Max(s0, 2*s1 + 1)") == sympy.Max(sympy.Symbol("s0"), 2 * sympy.Symbol("s1") + 1)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps([1, 2])) == [1, 2]  # restored afterwards
    assert torch.equal(torch.load(io.BytesIO(torch_saved(torch.ones(2))), weights_only=True), torch.ones(2))


@pytest.mark.parametrize("case_id", ["case-variant-weights-config", "use-pickle-weights", "zip-bomb", "guard-code"])
def test_cli_refuses_hostile_pt2_with_one_line(saved, tmp_path, marker, case_id):
    _, base, mutate, expected = next(c for c in CASES if c[0] == case_id)
    path = build(saved[base], tmp_path, mutate, marker)
    proc = run_cli("export", str(path), "-t", "x86", "-o", str(tmp_path / "out"))
    assert_clean_failure(proc, expected)
    assert not (tmp_path / "out").exists()
    assert not marker.exists()


def test_valid_archives_load_like_torch_does(saved):
    """Weights, constants, aliasing, example inputs and outputs match torch.export.load on the same file."""
    for path in saved.values():
        ours, theirs = safe_load(path), torch.export.load(str(path))
        assert ours.state_dict.keys() == theirs.state_dict.keys()
        assert all(torch.equal(ours.state_dict[k], theirs.state_dict[k]) for k in theirs.state_dict)
        assert ours.constants.keys() == theirs.constants.keys()
        assert all(torch.equal(ours.constants[k], theirs.constants[k]) for k in theirs.constants)
        assert str(ours.graph) == str(theirs.graph)
        args, kwargs = theirs.example_inputs
        assert torch.equal(ours.module()(*ours.example_inputs[0], **ours.example_inputs[1]),
                           theirs.module()(*args, **kwargs))
    assert set(safe_load(saved["const"]).constants) == {"c", "shift"}
    assert safe_load(saved["nograd"]).example_inputs[1] == {"twice": False}


def test_free_form_metadata_is_dropped_before_fx_generates_code(saved, tmp_path, marker):
    """Node annotations (JSON inside a string) can hold newlines that FX would copy into source."""
    from edgeq.models.pt2 import modularize

    evil = json.dumps({"note": f"x\nimport pathlib; pathlib.Path({str(marker)!r}).touch()"})

    def annotate(doc: dict) -> None:
        for node in doc["graph_module"]["graph"]["nodes"]:
            node["metadata"].update(custom=evil, from_node=evil)
        doc["graph_module"]["metadata"] = {"custom": evil}

    program = safe_load(build(saved["mlp"], tmp_path, lambda e, m: model_json(annotate)(e), marker))
    assert all("custom" not in n.meta and "from_node" not in n.meta for n in program.graph.nodes)
    assert any("nn_module_stack" in n.meta for n in program.graph.nodes)  # what edgeq uses is kept
    modularize(program)(*program.example_inputs[0])
    assert not marker.exists()


def test_valid_pt2_exports_and_verifies_on_x86(saved, tmp_path):
    proc = run_cli("export", str(saved["mlp"]), "-t", "x86", "-o", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["numerics"]["cosine_min"] > 0.99


# ---------------------------------------------------------------- property test

def _mutations(marker: Path):
    def rename(entries: Entries, i: int, how: int) -> None:
        name = entries[i][0]
        entries[i][0] = [name.upper(), name.replace("/", "\\"), name + "/", "../" + name, name.replace("mlp/", "MLP/")][how]

    def duplicate(entries: Entries, i: int, how: int) -> None:
        entries.append(list(entries[i]))

    def drop(entries: Entries, i: int, how: int) -> None:
        del entries[i]

    def flip(entries: Entries, i: int, how: int) -> None:
        data = bytearray(entries[i][1])
        if data:
            data[how * 7919 % len(data)] ^= 1 << (how % 8)
        entries[i][1] = bytes(data)

    def payload(entries: Entries, i: int, how: int) -> None:
        entries[i][1] = [pickled(marker), torch_saved(Touch(marker)), torch_saved(((Touch(marker),), {}))][how % 3]

    nasty = [None, -1, 1 << 70, "x; __import__('os')", "__import__('os').system('true')", "s0\r", [[[]]], {},
             "torch.load", "custom_obj_0", "../weight_0", True, 1.5e308, "Symbol('s0') + eval('1')"]

    def json_value(entries: Entries, i: int, how: int) -> None:
        try:
            doc = json.loads(entries[i][1])
        except (UnicodeDecodeError, ValueError):
            return
        node, target = doc, None
        for step in range(how + 3):  # walk down a path chosen by `i` and `how`
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
            if not items:
                break
            key, child = items[(i + step * 31 + how) % len(items)]
            target = (node, key)
            node = child
        if target is not None:
            target[0][target[1]] = nasty[(i + how) % len(nasty)]
        entries[i][1] = json.dumps(doc).encode()

    return st.lists(st.tuples(st.sampled_from([rename, duplicate, drop, flip, payload, json_value, json_value]),
                              st.integers(0, 1000), st.integers(0, 4)), min_size=1, max_size=4)


def test_random_mutations_never_run_anything(saved, tmp_path_factory):
    work = tmp_path_factory.mktemp("mutations")
    marker = work / "unpickled-marker"
    original = read_entries(saved["mlp"])
    raw_original = saved["mlp"].read_bytes()

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ops=_mutations(marker), archive_flips=st.lists(st.integers(0, len(raw_original) - 1), max_size=3))
    def check(ops, archive_flips):
        entries = [list(e) for e in original]
        for op, index, how in ops:
            if entries:
                op(entries, index % len(entries), how)
        path = write_entries(work / "m.pt2", entries)
        if archive_flips:
            data = bytearray(path.read_bytes())
            for pos in archive_flips:
                data[pos % len(data)] ^= 0xFF
            path.write_bytes(bytes(data))
        try:
            program = safe_load(path)
        except ModelLoadError as err:
            assert "\n" not in err.one_line()
            outcomes["refused"] += 1
        else:
            assert isinstance(program, torch.export.ExportedProgram)
            outcomes["loaded"] += 1
        assert not marker.exists()

    outcomes = {"refused": 0, "loaded": 0}
    check()
    assert outcomes["refused"] and outcomes["loaded"], outcomes  # both branches were exercised


def test_a_fixed_batch_program_is_measured_row_by_row(saved):
    """A program traced at batch 1 (its guard refuses a stacked batch) gets each layer's
    error measured one row at a time; the same weights exported with a dynamic batch,
    measured on the same rows stacked, give the same errors."""
    from edgeq.models import load_model
    from edgeq.planning import sensitivity
    from edgeq.schemes import parse

    static, dynamic = load_model(str(saved["mlp"])), load_model(str(saved["dyn"]))
    assert not static.batchable and dynamic.batchable
    rows = static.make_inputs("calib", 8)
    with pytest.raises(Exception, match="Guard failed"):
        static.module(torch.cat([r[0] for r in rows]))
    names = [n for n, m in static.module.named_modules() if isinstance(m, nn.Linear)]
    assert names == [n for n, m in dynamic.module.named_modules() if isinstance(m, nn.Linear)]
    candidates = {n: [parse("int8"), parse("int4-g32")] for n in names}

    def errors(loaded, batchable):
        return sensitivity.measure(loaded.module, [], candidates, rows, "cosine", use_cache=False, fmt="onnx",
                                   batchable=batchable)

    one_by_one, stacked = errors(static, False), errors(dynamic, True)
    for n in names:
        assert stacked[n]["int4-g32"] > 0
        for scheme in ("int8", "int4-g32"):
            assert one_by_one[n][scheme] == pytest.approx(stacked[n][scheme], rel=1e-4, abs=1e-7)
