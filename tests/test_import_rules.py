"""The import rules that keep the layers apart, checked on the real modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

EDGEQ = ROOT / "edgeq"
HEAVY = ("torch", "executorch", "onnxruntime", "onnx", "transformers", "torchao")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _loaded_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{HEAVY!r} or m.startswith(('edgeq.backends.executorch', 'edgeq.backends.onnx'))))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return eval(proc.stdout.strip().splitlines()[-1])


def test_schemas_and_solver_import_neither_torch_nor_a_backend():
    loaded = _loaded_after("from edgeq.targets import load_target\nfrom edgeq import schemes\nfrom edgeq.planning import solver\n"
                           "[load_target(n) for n in ('x86', 'rpi5', 'snapdragon8')]")
    assert loaded == [], loaded


def test_help_and_targets_list_import_no_runtime():
    for argv in (["--help"], ["targets", "list", "--json"]):
        loaded = _loaded_after(f"from edgeq.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
        assert loaded == [], (argv, loaded)


def test_backends_never_import_the_cli_and_only_backends_import_their_modules():
    for path in EDGEQ.rglob("*.py"):
        imports = _imports(path)
        inside = "backends" in path.relative_to(EDGEQ).parts
        if inside:
            assert not any(m.startswith("edgeq.cli") for m in imports), path
        else:  # the rest of edgeq reaches a backend through edgeq.backends.get_backend
            private = [m for m in imports if m.startswith(("edgeq.backends.executorch", "edgeq.backends.onnx"))]
            assert not private, (path, private)


# A format's name, its model file and its runtime's CPU provider name it as much as the format does.
FORMAT_NAMES = ("executorch", "onnx", "gguf", "model.pte", "model.onnx", "model.gguf", "pte", ".pte", ".onnx")


def test_no_module_outside_the_backends_names_a_format():
    """Format-specific behaviour belongs to a backend: outside it, no code compares a format
    with a format's name (the standalone runner, copied alone onto boards, excepted)."""
    offenders = []
    for path in EDGEQ.rglob("*.py"):
        rel = path.relative_to(EDGEQ)
        if rel.parts[0] == "backends" or rel.name == "runner.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                names = [c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)]
                if any(n in FORMAT_NAMES for n in names):
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


# What each stage subpackage may import from edgeq (as its module docstring says).
ALLOWED = {
    "models": ("edgeq.models", "edgeq.errors", "edgeq.jsonio", "edgeq.yamlio"),
    "targets": ("edgeq.targets", "edgeq.errors", "edgeq.yamlio", "edgeq.backends", "edgeq.schemes"),
    "planning": ("edgeq.planning", "edgeq.errors", "edgeq.schemes", "edgeq.progress", "edgeq.yamlio",
                 "edgeq.jsonio", "edgeq.atomic", "edgeq.artifact", "edgeq.manifest", "edgeq.backends", "edgeq.models",
                 "edgeq.targets", "edgeq.algorithms"),
    "llm": ("edgeq.llm", "edgeq.errors", "edgeq.schemes", "edgeq.artifact", "edgeq.manifest", "edgeq.backends",
            "edgeq.models", "edgeq.planning", "edgeq.numerics", "edgeq.jsonio", "edgeq.export",
            "edgeq.profiling.emulate", "edgeq.profiling.runner", "edgeq.progress", "edgeq.algorithms"),
    "algorithms": ("edgeq.algorithms", "edgeq.errors", "edgeq.schemes", "edgeq.models", "edgeq.planning.sensitivity"),
}


def _edgeq_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeq"):
            out |= ({f"{node.module}.{a.name}" for a in node.names} if node.module == "edgeq" else {node.module})
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("edgeq")}
    return out


def test_stage_subpackages_import_only_what_their_docstrings_allow():
    offenders = []
    for package, allowed in ALLOWED.items():
        for path in (EDGEQ / package).rglob("*.py"):
            for module in _edgeq_imports(path):
                if module != "edgeq.__version__" and not module.startswith(allowed):
                    offenders.append(f"{path.relative_to(EDGEQ)} imports {module}")
    assert not offenders, offenders


def test_only_the_entry_points_import_the_cli():
    offenders = [str(p.relative_to(EDGEQ)) for p in EDGEQ.rglob("*.py")
                 if p.name not in ("cli.py", "__main__.py") and any(m.startswith("edgeq.cli") for m in _edgeq_imports(p))]
    assert not offenders, offenders


def test_no_package_defines_a_name_its_submodules_would_shadow():
    """Importing ``edgeq.pkg.name`` rebinds ``edgeq.pkg.name`` to the submodule: a function of
    that name in the package's ``__init__`` would stop being callable after the first import
    (it happened to ``edgeq.profiling.emulate``)."""
    clashes = []
    for init in EDGEQ.rglob("__init__.py"):
        pkg = init.parent
        subs = {p.stem for p in pkg.glob("*.py") if p.name != "__init__.py"} | {
            p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
        dotted = ".".join(("edgeq",) + pkg.relative_to(EDGEQ).parts)
        loaded = set()  # submodules the package imports at its top level before the name is bound: safe
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(dotted + "."):
                loaded.add(node.module[len(dotted) + 1:].split(".")[0])
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
                t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            clashes += [f"{dotted}.{n}" for n in names if n in subs and n not in loaded]
    assert not clashes, clashes


def test_every_registered_backend_provides_the_whole_protocol():
    """What a format must implement is ``edgeq.backends.Backend``: each registered backend
    module has every name it declares (a new format that misses one fails here, not later)."""
    from edgeq.backends import FORMATS, Backend, get_backend, model_file_for

    wanted = set(Backend.__annotations__) | {n for n, v in vars(Backend).items()
                                             if callable(v) and not n.startswith("_")}
    for fmt in FORMATS:
        be = get_backend(fmt)
        missing = sorted(n for n in wanted if not hasattr(be, n))
        assert not missing, (fmt, missing)
        assert be.FORMAT == fmt and be.MODEL_FILE == model_file_for(fmt)
