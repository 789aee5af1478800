"""Stage 1, ``prepare``: everything planning and export learn from the model, once.

``prepare`` takes a ``LoadedModel`` (it loads nothing itself) and records the layer
inventory, the fp32 sizes and the workload the memory model needs. Two costlier facts are
taken on first use and then kept, so planning and the budget-fitting loop after lowering
share them: what the captured program does with each layer (``graphfacts``; a uniform
export never needs it) and the backend's fp32 probe (for ExecuTorch, an fp32 lowering
that plans the activation arena; cached on disk too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeq.planning.inventory import LayerInfo, fp32_bytes, layer_inventory, nonlayer_bytes
from edgeq.progress import Steps


@dataclass
class Prepared:
    loaded: Any  # edgeq.models.LoadedModel
    resolved: Any  # edgeq.targets.ResolvedTarget
    layers: list[LayerInfo]
    fp32_weight_bytes: int
    other_bytes: int  # constants outside the planned layers (biases, norms), fp32
    tokens: int
    attention_heads: int
    _facts: Any = field(default=None, repr=False)
    _probe: Any = field(default=None, repr=False)

    decoder_lm = False  # lowered by the backend's lower_lm (``edgeq.llm.plan.LMPrepared``)

    @property
    def fmt(self) -> str:
        return self.resolved.target.format

    @property
    def facts(self) -> Any:
        """``edgeq.planning.graphfacts.GraphFacts`` of the captured program, taken once."""
        if self._facts is None:
            from edgeq.planning import graphfacts

            self._facts = graphfacts.analyse(self.loaded.module, self.loaded.example_inputs,
                                             [x.fqn for x in self.layers])
        return self._facts

    @property
    def unused(self) -> set[str]:
        """Layers the program never reads: 0 bytes at any scheme."""
        return self.facts.unused

    @property
    def folded(self) -> dict[str, int]:
        """Layers this format's lowering folds into an fp32 constant → that constant's bytes."""
        from edgeq.backends import get_backend

        return dict(self.facts.folded) if get_backend(self.fmt).FOLDS_CONSTANT_LOOKUPS else {}

    @property
    def fixed(self) -> dict[str, int]:
        """Layers whose bytes do not depend on their scheme."""
        return {f: 0 for f in self.unused} | self.folded

    def probe(self, steps: Steps, use_cache: bool = True) -> Any:
        """The backend's fp32 probe (``edgeq.backends.Probe``), taken once."""
        if self._probe is None:
            from edgeq.backends import get_backend

            fp32_weights = self.other_bytes + sum(self.fixed.get(x.fqn, x.fp32_bytes) for x in self.layers)
            self._probe = get_backend(self.fmt).fp32_probe(self.loaded, self.resolved, self.facts, fp32_weights,
                                                          steps, use_cache)
        return self._probe


def prepare(loaded: Any, resolved: Any) -> Prepared:
    """What the planner and export need to know about ``loaded`` for ``resolved``'s format."""
    from edgeq.backends import get_backend
    from edgeq.planning.memory import workload

    be = get_backend(resolved.target.format)
    if loaded.task != "causal-lm" and not be.TAKES_ENCODERS:  # a decoder-only format (GGUF)
        from edgeq.errors import ConfigError

        raise ConfigError(f"target '{resolved.target.name}' is {resolved.target.format}, which holds decoder LLMs only; "
                          f"this model's task is {loaded.task}", "use an executorch or onnx target for this model")
    layers = layer_inventory(loaded.module)
    fp32 = fp32_bytes(loaded.module)
    tokens, heads = workload(loaded.example_inputs, loaded.config)
    return Prepared(loaded=loaded, resolved=resolved, layers=layers, fp32_weight_bytes=fp32,
                    other_bytes=nonlayer_bytes(fp32, layers), tokens=tokens, attention_heads=heads)
