"""What a captured program does with each layer's weight.

Two facts change what a layer costs in an artifact, whatever scheme a plan gives it:

- **unused**: no op reads the weight (a pooler the wrapper never calls). Exporters drop
  it, so it costs nothing and its scheme changes nothing.
- **folded** (ExecuTorch): every op that reads the weight reads only constants (BERT's
  position and token-type lookups: the position ids are a buffer, the token types default
  to zeros). ExecuTorch's constant propagation replaces that subgraph with its fp32 result,
  so the layer is stored as that result's bytes at any scheme, and quantizing it only adds
  error. ONNX export keeps such lookups as they are.

Both are read from a ``torch.export`` capture of the fp32 model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def unused_layers(program: Any) -> set[str]:
    """Layers whose weight no op of ``program`` (dead code eliminated) reads."""
    unused = set()
    to_param = program.graph_signature.inputs_to_parameters
    state = program.state_dict

    def storage(name: str) -> int | None:  # tied weights (an LM head sharing the embedding): one tensor
        t = state.get(name)
        return id(t) if t is not None else None

    read = {storage(to_param[n.name]) for n in program.graph.nodes
            if n.op == "placeholder" and n.users and n.name in to_param}
    for node in program.graph.nodes:
        name = to_param.get(node.name, "")
        if node.op == "placeholder" and not node.users and name.endswith(".weight") and storage(name) not in read:
            unused.add(name.removesuffix(".weight"))
    return unused


def folded_layers(program: Any, fqns: list[str]) -> dict[str, int]:
    """``{layer: bytes}`` for layers whose every reader depends on constants only; the bytes
    are those of the fp32 constants the folded subgraph leaves behind (its results that
    input-dependent ops read), each counted once, under the first layer that feeds it."""
    sig = program.graph_signature
    user_inputs = set(sig.user_inputs)
    to_param = sig.inputs_to_parameters
    layer_of = {}
    for node in program.graph.nodes:
        name = to_param.get(node.name, "") if node.op == "placeholder" else ""
        if name.endswith(".weight") and name.removesuffix(".weight") in fqns:
            layer_of[node] = name.removesuffix(".weight")
    dynamic: set[Any] = set()
    for node in program.graph.nodes:
        if (node.op == "placeholder" and node.name in user_inputs) or any(
                n in dynamic for n in node.all_input_nodes):
            dynamic.add(node)
    upstream: dict[Any, set[str]] = {}
    for node in program.graph.nodes:
        up = {layer_of[node]} if node in layer_of else set()
        for n in node.all_input_nodes:
            up |= upstream.get(n, set())
        upstream[node] = up
    folded: dict[str, int] = {}
    for node, fqn in layer_of.items():
        if node.users and not any(u in dynamic for u in node.users):
            folded[fqn] = 0
    for node in program.graph.nodes:
        if node.op != "call_function" or node in dynamic or not any(u in dynamic for u in node.users):
            continue
        layers = sorted(upstream[node] & set(folded), key=fqns.index)
        val = node.meta.get("val")
        if layers and val is not None and hasattr(val, "numel"):
            folded[layers[0]] += int(val.numel()) * 4
    return folded


@dataclass(frozen=True)
class GraphFacts:
    unused: set[str]
    folded: dict[str, int]  # fqn → bytes of the fp32 constants left in its place (ExecuTorch)
    ops: int  # call_function nodes of the captured program
    placeholders: int  # its inputs, parameters, buffers and constants


def analyse(module: Any, example_inputs: tuple[Any, ...], fqns: list[str]) -> GraphFacts:
    """The facts above for ``module`` captured on ``example_inputs``."""
    from edgeq.models.capture import capture

    program = capture(module, example_inputs)
    program.graph.eliminate_dead_code()
    nodes = list(program.graph.nodes)
    return GraphFacts(unused_layers(program), folded_layers(program, fqns),
                      ops=sum(1 for n in nodes if n.op == "call_function"),
                      placeholders=sum(1 for n in nodes if n.op == "placeholder"))
