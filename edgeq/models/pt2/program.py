"""What a loaded program may contain: the program JSON checked before torch's serde sees it,
and the deserialized graphs checked again after.

torch evaluates symbolic-shape strings with ``sympy.sympify`` (``eval``), ``exec``s guard code
from the file, resolves targets by name, and FX writes node names and pytree keys into the
Python source it generates. So the JSON is checked for depth; aten targets (in subgraphs
too) outside a deny-list of ops that reach files or raw memory; identifiers wherever FX
writes names into generated source; symbolic expressions built from symbols, numbers,
operators and a fixed set of sympy functions; no guard code; inputs that are tensors or
plain constants. Free-form annotations are dropped.
"""

from __future__ import annotations

import builtins
import io
import json
import keyword
import re
import tokenize
import unicodedata
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError
from edgeq.models.pt2.limits import MAX_EXPR_CHARS, MAX_JSON_DEPTH, NO_PICKLE, bad

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
FQN = re.compile(r"[A-Za-z0-9_]{1,128}(?:\.[A-Za-z0-9_]{1,128}){0,63}")  # a parameter path, e.g. fc1.weight
_ATEN = re.compile(r"torch\.ops\.aten\.([a-z_][a-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
# aten ops that reach files or raw memory: a graph from a file must not call them
_ATEN_DENIED = re.compile(r"from_file|set_|_unsafe.*|_index_put_impl_|_local_scalar_dense_?|_nested.*|_debug.*|.*_out")
_BUILTIN_TARGETS = {f"_operator.{n}" for n in (
    "getitem add sub mul floordiv truediv mod pow neg pos abs eq ne lt le gt ge and_ or_ not_".split())} | {
    f"torch.{n}" for n in "sym_float sym_int sym_max sym_min sym_not sym_ite sym_sqrt sym_sum".split()} | {
    f"math.{n}" for n in "ceil floor trunc sqrt".split()}
# no_grad regions inside forward (e.g. rotary embeddings) export as this; its subgraph is checked like the graph
_HOP_TARGETS = {"torch.ops.higher_order.wrap_with_set_grad_enabled"}
_SYMBOL = re.compile(r"(?:s|u|zf|zuf)[0-9]{1,9}")
_SYMPY_NAMES = {
    "Symbol", "Integer", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Abs",
    "floor", "ceiling", "oo", "True", "False", "true", "false",
    "CeilDiv", "CeilToInt", "CleanDiv", "FloatPow", "FloatTrueDiv", "FloorDiv", "FloorToInt", "Identity",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "LShift", "Mod", "ModularIndexing", "PowByNatural",
    "PythonMod", "RShift", "RoundDecimal", "RoundToInt", "ToFloat", "TruncToFloat", "TruncToInt", "Where",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero",
}
_EXPR_OPS = {"+", "-", "*", "/", "//", "%", "**", "(", ")", ",", "=", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"}
_SPEC_IN = {"parameter", "buffer", "tensor_constant", "user_input", "constant_input"}
_CONSTANT_KINDS = {"as_none", "as_int", "as_float", "as_bool"}
_SPEC_OUT = {"user_output", "buffer_mutation", "user_input_mutation"}
_TOP_KEYS = {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers", "torch_version",
             "guards_code"}


def check_program(path: Path, doc: Any) -> None:
    """Refuse anything in the program JSON that torch would eval, exec or resolve by name."""
    if not isinstance(doc, dict) or "graph_module" not in doc or not set(doc) <= _TOP_KEYS:
        raise bad(path, "models/model.json is not a saved ExportedProgram")
    if doc.get("guards_code"):
        raise bad(path, "the program carries guard code (Python source torch would exec)")
    if not set(doc.get("verifiers") or []) <= {"", "ATEN", "TRAINING"}:
        raise bad(path, f"unknown verifier dialect in {str(doc.get('verifiers'))[:80]}")
    for name, bounds in (doc.get("range_constraints") or {}).items():
        if not _SYMBOL.fullmatch(name) or not isinstance(bounds, dict) or any(
                type(v) not in (int, type(None)) for v in bounds.values()):
            raise bad(path, f"range constraint '{name[:40]}' is malformed")
    module = doc["graph_module"]
    if not isinstance(module, dict) or not isinstance(module.get("graph"), dict):
        raise bad(path, "the program has no graph")
    module["metadata"] = {}  # free-form annotations (JSON inside a string); nothing edgeq needs
    signature = module.get("signature") or {}
    for specs, kinds in ((signature.get("input_specs"), _SPEC_IN), (signature.get("output_specs"), _SPEC_OUT)):
        for spec in specs or []:
            kind = next(iter(spec), None) if isinstance(spec, dict) and len(spec) == 1 else None
            if kind not in kinds:
                raise bad(path, f"the program's signature has a '{kind}' entry; edgeq loads tensors only", NO_PICKLE)
            if kind == "user_input" and set((spec[kind].get("arg") or {})) != {"as_tensor"} or \
                    kind == "constant_input" and not set(spec[kind].get("value") or {"?": 0}) <= _CONSTANT_KINDS:
                raise bad(path, "the program takes an input that is not a tensor, number, boolean or None")
    if not module["graph"].get("nodes"):
        raise bad(path, "the program's graph is empty")
    _check_values(path, doc)


def _check_node(path: Path, node: dict[str, Any]) -> None:
    target = node["target"]
    op = _ATEN.fullmatch(target) if isinstance(target, str) else None
    if not (op and not _ATEN_DENIED.fullmatch(op.group(1)) or target in _BUILTIN_TARGETS | _HOP_TARGETS):
        raise bad(path, f"the graph calls '{str(target)[:80]}'; edgeq loads programs of aten operators only")
    if isinstance(node.get("metadata"), dict):  # the rest is debug text FX may copy into generated source
        node["metadata"] = {k: v for k, v in node["metadata"].items() if k in _NODE_METADATA_KEPT}


_IDENT_KEYS = {"name", "as_name", "user_input_name"}  # become Python identifiers in FX-generated source
_FQN_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name"}
_NAME_MAPS = {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"}
_REFUSED_KEYS = {"as_operator": "operators passed as values",
                 "as_custom_obj": "custom objects", "class_fqn": "custom objects",
                 "as_string_to_argument": "dict arguments"}
_NODE_METADATA_KEPT = {"nn_module_stack", "source_fn_stack", "torch_fn"}
# pytree node types are looked up in torch's registry of registered types, never imported
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}(?:\.[A-Za-z_][A-Za-z0-9_]{0,127}){0,15}")


def _check_values(path: Path, doc: Any) -> None:
    """Every string clean; names that reach generated Python source are identifiers; symbolic
    expressions and pytree specs checked; nothing that needs more than aten operators on tensors."""
    stack = [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:  # torch's serde walks it recursively
            raise bad(path, f"models/model.json is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, dict) and "target" in item:  # a graph node, at any depth (subgraphs too)
            _check_node(path, item)
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            if isinstance(key, str):
                _check_text(path, key)
                if key in _REFUSED_KEYS:
                    raise bad(path, f"the program has {_REFUSED_KEYS[key]}; edgeq loads plain programs only")
            if key in _NAME_MAPS and isinstance(value, dict) and not all(map(_is_ident, value)):
                raise bad(path, f"a {key} name is not an identifier")
            if key == "forward_arg_names" and value is not None and not (
                    isinstance(value, list) and all(isinstance(v, str) and _is_ident(v) for v in value)):
                raise bad(path, "an argument name is not an identifier")
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif isinstance(value, str):
                _check_text(path, value)
                if key in _IDENT_KEYS and not _is_ident(value) and not (key == "name" and value == ""):  # "": positional
                    raise bad(path, f"node name '{value[:60]}' is not an identifier")
                if key in _FQN_KEYS and not FQN.fullmatch(value) or key == "fqn" and value and not FQN.fullmatch(value):
                    raise bad(path, f"'{value[:60]}' is not a parameter path")
                if key == "expr_str":
                    check_expr(path, value)
                if key in ("in_spec", "out_spec"):
                    _check_treespec(path, value)


def _is_ident(name: str) -> bool:
    return bool(_IDENT.fullmatch(name)) and not keyword.iskeyword(name)


def _check_treespec(path: Path, text: str) -> None:
    """A pytree spec: tuples, lists and dicts with identifier keys (FX writes dict keys into source)."""
    try:
        spec = json.loads(text)
        stack = [(spec[1], 1)] if isinstance(spec, list) and len(spec) == 2 else [(None, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_JSON_DEPTH or not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"} \
                    or not (node["type"] is None or isinstance(node["type"], str) and _DOTTED.fullmatch(node["type"])) \
                    or not isinstance(node["children_spec"], list):
                raise ValueError
            context = json.loads(node["context"]) if isinstance(node["context"], str) else node["context"]
            if context is not None and not (isinstance(context, list) and all(
                    isinstance(k, int) or isinstance(k, str) and _is_ident(k) for k in context)):
                raise ValueError
            stack.extend((child, depth + 1) for child in node["children_spec"])
    except (ValueError, TypeError, IndexError, RecursionError):
        raise bad(path, "the program's input or output structure is not tuples, lists and dicts of tensors") from None


def _check_text(path: Path, text: str) -> None:
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise bad(path, "a string in the program has control characters")


def check_expr(path: Path, expr: str) -> None:
    """A symbolic-shape expression sympy may parse: sympy parses by ``eval``, so only symbols,
    numbers, operators and a fixed set of sympy functions are let through."""
    def refuse(why: str) -> ModelLoadError:
        return bad(path, f"symbolic expression '{expr[:60]}' {why}")

    if len(expr) > MAX_EXPR_CHARS:
        raise refuse(f"is over {MAX_EXPR_CHARS} characters")
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(expr).readline)
                  if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError):
        raise refuse("does not tokenize") from None
    powers = 0
    for i, tok in enumerate(tokens):
        text = tok.string
        if tok.type == tokenize.NAME:
            symbol = _SYMBOL.fullmatch(text) and text not in vars(builtins)
            if text not in _SYMPY_NAMES and not symbol:
                raise refuse(f"uses '{text[:40]}'")
        elif tok.type == tokenize.NUMBER:
            if not re.fullmatch(r"[0-9]{1,30}(?:\.[0-9]{1,30})?", text):
                raise refuse(f"has number '{text[:40]}'")
        elif tok.type == tokenize.STRING:
            if text[0] not in "'\"" or not _SYMBOL.fullmatch(text[1:-1]) or text[-1] != text[0]:
                raise refuse(f"has string {text[:40]}")
        elif tok.type == tokenize.OP and text in _EXPR_OPS:
            if text == "**":  # bounded: 2 powers, small integer exponents
                powers += 1
                nxt = tokens[i + 1].string if i + 1 < len(tokens) else ""
                if powers > 2 or not (nxt.isdigit() and int(nxt) <= 64):
                    raise refuse("has an unbounded power")
        else:
            raise refuse(f"has '{text[:40]}'")


def check_graph(path: Path, program: Any) -> None:
    """The deserialized graphs (and subgraphs) call aten operators and pure builtins only (second check)."""
    import torch

    allowed = _builtin_callables() + [torch.ops.higher_order.wrap_with_set_grad_enabled]
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            raise bad(path, f"the program holds a {type(module).__name__}, not only graphs")
        for node in module.graph.nodes:
            if node.op == "call_module" or node.op == "get_attr" and not isinstance(
                    _attribute(module, str(node.target)), (torch.Tensor, torch.fx.GraphModule)):
                raise bad(path, f"graph node '{node.name}' refers to a module or non-tensor attribute")
            if node.op != "call_function":
                continue
            target = node.target
            aten = isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
            if not (aten and not _ATEN_DENIED.fullmatch(target._schema.name.split("::")[1]) or target in allowed):
                raise bad(path, f"the graph calls '{str(target)[:80]}'; edgeq loads programs of aten operators only")


def _attribute(module: Any, dotted: str) -> Any:
    try:
        return fetch(module, dotted)
    except AttributeError:
        return None


def _builtin_callables() -> list[Any]:
    import math
    import operator

    import torch

    modules = {"_operator": operator, "torch": torch, "math": math}
    return [getattr(modules[t.split(".")[0]], t.split(".")[1]) for t in _BUILTIN_TARGETS]


def fetch(gm: Any, dotted: str) -> Any:
    """The attribute at a dotted path such as ``fc1.weight``."""
    obj = gm
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
