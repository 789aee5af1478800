"""The contract between generation/perplexity and a format's LLM artifact.

A backend's ``open_lm(artifact_dir, model_file)`` returns an ``LMSession``: a decoder
holding its own KV cache, fed token ids and returning next-token logits. Generation,
sampling, perplexity and profiling are written once against this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class LMSession(Protocol):
    """One conversation's decoder state in a real runtime.

    ``prefill`` starts from an empty cache; ``decode`` appends one token. Both return
    float32 logits of shape ``(vocab,)`` for the position after the last token fed
    (``prefill(..., all_logits=True)`` returns ``(len(ids), vocab)``, for perplexity).
    Feeding past ``max_context`` tokens in total is an error (``edgeq.errors.RunError``).

    A session whose runtime hands back a whole row slowly may declare ``partial_rows = True``
    and take ``top=k`` in ``prefill`` (without ``all_logits``) and ``decode``: the row then has
    the exact values of its ``k`` most likely tokens and a floor below them elsewhere, which
    is all a greedy decoding reads (``edgeq.llm.generate`` asks for ``top=1`` when greedy).
    Such a session may also provide ``next_token_log_probs(ids)``: ``log p(ids[i + 1] | ids[:i + 1])``
    for every position, teacher-forced, which is all perplexity reads.
    """

    max_context: int
    vocab_size: int
    runtime: str  # e.g. "ExecuTorch 1.5.1 pybindings (XNNPACK)"

    def prefill(self, token_ids: list[int], *, all_logits: bool = False) -> Any: ...
    def decode(self, token_id: int) -> Any: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class LoweredLM:
    """What a backend's ``lower_lm`` wrote into ``workdir``: the model file plus files
    that ship beside it, the schemes actually applied per layer, and the cache layout."""

    model_file: Path
    runtime: str
    delegates_used: list[str]
    layer_schemes: dict[str, str]  # fqn → applied scheme name
    max_context: int
    kv_cache_dtype: str  # "float32" | "float16" | "int8" ...
    kv_cache_bytes: int  # bytes the runtime holds for the cache at max_context (all layers, K and V)
    extra_files: list[Path] = field(default_factory=list)
    # scheme → how the linears at that scheme compute ("fp32", "int8 dynamic activations");
    # {} when the backend does not say
    linear_compute: dict[str, str] = field(default_factory=dict)
    algorithms: dict[str, dict[str, Any]] = field(default_factory=dict)  # fqn → calibrated algorithm and its data
    smoothing: dict[str, Any] | None = None  # edgeq.algorithms.smooth's record (llm.smoothing), None: not smoothed
    rotation: dict[str, Any] | None = None  # edgeq.algorithms.rotate's record (llm.rotation), None: not tried
    delegation: dict[str, Any] = field(default_factory=dict)


LINEAR_FP32, LINEAR_INT8_DYNAMIC = "fp32", "int8 dynamic activations"  # as the manifest's llm.linear_compute
LINEAR_FP16 = "fp16 activations"  # the input rounded to fp16 (llama.cpp's F16 weights)


def linears_with_int8_activations(module: Any, applied: dict[str, str]) -> dict[str, str]:
    """Scheme → how the linears at that scheme compute, for a lowering whose integer linears
    (int8 and int4-gN) take int8 dynamic activations and whose float linears compute in fp32
    (ExecuTorch's 8da8w / 8da4w, ONNX Runtime's ``MatMulNBits`` at ``accuracy_level=4``)."""
    from edgeq.planning.inventory import layer_inventory
    from edgeq.schemes import UNUSED, parse

    out: dict[str, str] = {}
    for x in layer_inventory(module):
        name = applied.get(x.fqn, "fp32")  # no plan: every layer fp32
        if x.kind == "linear" and name != UNUSED:
            out[name] = LINEAR_INT8_DYNAMIC if parse(name, x.fqn).is_quantized else LINEAR_FP32
    return dict(sorted(out.items()))


def head_storage(model: Any, schemes: dict[str, str]) -> dict[str, Any]:
    """What happened to the output head (``model``: the transformers causal LM the lowering
    took, ``schemes``: fqn → applied scheme name): tied or not, its scheme, and whether it still
    shares the embedding's storage in the artifact (only when both stay fp32: a quantized head
    or table is stored apart from the other)."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    names = {m: n for n, m in model.named_modules()}
    head_fqn, emb_fqn = names.get(head, ""), names.get(emb, "")
    head_scheme = schemes.get(head_fqn, "fp32")
    emb_scheme = schemes.get(emb_fqn, "fp32")
    shared = tied and head_scheme == emb_scheme == "fp32"
    return {"fqn": head_fqn, "tied": tied, "scheme": head_scheme,
            "storage": "shared with the embedding" if shared else "own copy"}
