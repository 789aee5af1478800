"""Peak resident memory of generating with an LLM artifact, predicted from its manifest.

The scenario: a prompt of ``prompt_tokens`` tokens, then decoding until ``context`` tokens
(default: the artifact's max context) are in the KV cache. The prediction is the memory the
artifact adds to a process that has its runtime imported (measured by
``edgeq.llm.measure.measure_generation`` as ``model_attributable_bytes``), plus that
runtime's baseline for the process's peak RSS:

- **weights** as the runtime holds them, per layer from the manifest's inventory and the
  schemes actually lowered (the backend's ``held_bytes``: ExecuTorch holds each weight
  once; ONNX Runtime keeps prepacked copies of linears), tied heads as
  ``edgeq.planning.memory`` counts them;
- **KV cache** at ``context`` tokens in its dtype (``edgeq.llm.costs.kv_cache_bytes``), times
  the copies the runtime holds at once (``edgeq.backends.LMMemoryTerms.kv_copies``) for a cache
  grown per call; a cache held as one buffer of max-context positions (``KV_STATIC``: ONNX
  Runtime's GroupQueryAttention writing in place) is that buffer, from the load on;
- **activations**: a runtime that plans its arena ahead of time (ExecuTorch: the planned
  bytes recorded in the manifest, which hold the static KV cache and the activations of a
  prefill as long as the context) holds that arena from the load on, plus what its delegate
  allocates beside it on the first run (measured per byte of the arena's activations other
  than logits), plus the logits handed to the caller (the prompt's, for a program returning
  every position's; one row for ExecuTorch's, which returns the last position's); a runtime
  that allocates as it goes (ONNX Runtime) holds the prefill's activations
  (``edgeq.llm.costs.prefill_arena_bytes``, with the logits its program returns) times a
  measured factor;
- **the load**, for a runtime that converts weights as it loads them (``LMMemoryTerms.load_copy``):
  every weight as stored, a second copy of the largest one and an arena planned ahead of time
  (``edgeq.planning.memory.load_bytes``, the encoders' load term). ExecuTorch's peak is there
  when the model's largest weight, usually the head, is packed last: SmolLM2-135M's program
  holds 15-108 MB (its head's stored bytes) of mapped file pages more at the end of the load
  than after it, the Llama-3.2-1B shape 141 MB (its int4 head: 148 MB), and neither grows
  past that peak while it generates. The peak is the higher of the load and the generation;
- **runtime overhead**: the backend's measured intercept (``MEMORY.overhead_bytes``, fitted
  on encoder artifacts in fresh processes) corrected by what an LLM session holds beyond it
  or short of it (measured, ``edgeq.backends.LMMemoryTerms.session_overhead_bytes``;
  ``benchmarks/fit_lm_memory.py`` fits ONNX Runtime's), and the runtime's measured baseline.

The per-runtime factors below were measured here (``tests/test_llm_memory.py`` re-checks
them on a model they were not taken from) and say so.

>>> est = predict_lm_peak("dist/smollm2-x86")  # doctest: +SKIP
>>> est.total_bytes, est.peak_rss_bytes  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeq.backends import EVERY_POSITION, KV_GROWN, KV_STATIC
from edgeq.errors import ArtifactError
from edgeq.llm.costs import LMShape, kv_cache_bytes, logits_bytes, prefill_arena_bytes

DEFAULT_PROMPT_TOKENS = 128  # capped at context // 2: the recorded scenario's prompt


@dataclass(frozen=True)
class LMMemoryEstimate:
    """Predicted peak memory of generating ``context`` tokens after a ``prompt_tokens`` prompt.

    ``total_bytes`` is beyond the runtime's own baseline (what ``edgeq.llm.measure`` reports as
    ``model_attributable_bytes``); ``peak_rss_bytes`` adds the baseline. Always an estimate."""

    format: str
    context: int
    prompt_tokens: int
    weights_bytes: int
    kv_cache_bytes: int  # the cache at ``context`` tokens, as the runtime holds it (copies included)
    activation_bytes: int  # planned arena without the cache, or the prefill's activations
    runtime_overhead_bytes: int
    baseline_bytes: int
    kv_cache_dtype: str = "float32"
    # the peak while the artifact loads, beyond the baseline, with the runtime's intercept (an LLM
    # session's own overhead comes with generating); 0: the runtime converts nothing as it loads
    load_bytes: int = 0

    @property
    def generating_bytes(self) -> int:
        """The peak while generating, beyond the baseline."""
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.runtime_overhead_bytes

    @property
    def total_bytes(self) -> int:
        return max(self.generating_bytes, self.load_bytes)

    @property
    def at_load(self) -> bool:
        """Whether the peak is the load's, not the generation's."""
        return self.load_bytes > self.generating_bytes

    @property
    def peak_rss_bytes(self) -> int:
        return self.baseline_bytes + self.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes, "peak_rss_bytes": self.peak_rss_bytes,
                "estimate": True}


def plans_arena(fmt: str) -> bool:
    """Whether ``fmt``'s runtime plans the LLM's arena (static cache + activations) ahead of time."""
    from edgeq.backends import get_backend

    return get_backend(fmt).LM_MEMORY.planned_arena


def scenario_prompt(context: int) -> int:
    """The prompt length of the recorded scenario for ``context`` tokens."""
    return max(1, min(DEFAULT_PROMPT_TOKENS, context // 2))


def predict_lm_memory(fmt: str, layers: list[Any], schemes: dict[str, str], shape: LMShape, *, context: int,
                      prompt_tokens: int, planned_activation_bytes: int, kv_dtype: str | None = None,
                      nonlayer_bytes: int = 0, arena_positions: int | None = None,
                      program_logits: str | None = None, kv_layout: str | None = None) -> LMMemoryEstimate:
    """The prediction from its parts: ``layers`` (``edgeq.planning.inventory.LayerInfo``), the
    lowered ``schemes`` (fqn → name, as the manifest's ``precision.layers``), the model's
    ``shape``, the scenario, and the runtime's planned arena (0: none), planned for prefills of
    up to ``arena_positions`` tokens (default: ``context``), returning the logits of
    ``program_logits`` (default: what the format's lowering does now), with the KV cache in
    ``kv_dtype`` (default: the runtime's, ``LM_MEMORY.kv_dtype``) held as ``kv_layout``
    (default: the runtime's, ``LM_MEMORY.kv_layout``)."""
    from edgeq.backends import get_backend
    from edgeq.planning.memory import with_tied_head
    from edgeq.schemes import applied

    be = get_backend(fmt)
    terms = be.LM_MEMORY
    kv_dtype = kv_dtype or terms.kv_dtype
    every = (program_logits or terms.program_logits) == EVERY_POSITION
    static_kv = (kv_layout or terms.kv_layout) == KV_STATIC
    pairs = with_tied_head(fmt, [(x, applied(schemes.get(x.fqn, "fp32"))) for x in layers], {}, "causal-lm")
    # a tied head the format stores as its table's tensor, and the runtime holds once, holds nothing of its own
    free = {x.fqn for x in layers if x.tied and schemes.get(x.fqn, "fp32") == schemes.get(x.tied, "fp32")
            and terms.tied_head_held_once
            and (s := applied(schemes.get(x.fqn, "fp32"))) is not None and be.tied_head_shares_table(s)}
    weights = nonlayer_bytes + sum(be.held_bytes(x, s, bool(x.bias), decoder_lm=True)
                                   for x, s in pairs if s is not None and x.fqn not in free)
    if planned_activation_bytes > 0:
        # The static cache is planned inside the arena, every position of it whatever the
        # generation's length; the arena is held from the load on.
        # The delegate's workspace mirrors the activations inside its partitions, not the
        # head's output: a program returning every position's logits has them in the arena
        # at its boundary (SmolLM2: 100.7 of 101.9 MB planned activations), and the prompt's
        # logits handed back to the caller are a copy beside the arena.
        arena = arena_positions or context
        kv = kv_cache_bytes(shape, arena, kv_dtype)
        planned = max(0, planned_activation_bytes - kv)
        inside = max(0, planned - logits_bytes(shape, arena if every else 1))
        returned = logits_bytes(shape, prompt_tokens if every else 1)
        activations = planned + int(terms.delegate_workspace * inside) + returned
    else:
        # Prefill: the prompt's activations beside its cache; end of decoding: the full cache.
        # A prefill starts from an empty past, so its cache is the one present it returns; the
        # logits it returns are held once (the factor covers the runtime's intermediates, not
        # its outputs: SmolLM2 at int4, 500-token prompt, 93.8 MB of logits, measured 124.6 MB
        # over the loaded model where the factor on the logits too predicted 171 MB).
        body = prefill_arena_bytes(shape, prompt_tokens) - logits_bytes(shape, 1)
        prefill = int(terms.prefill_factor * body) + logits_bytes(shape, prompt_tokens if every else 1)
        if static_kv:  # one buffer of every position, allocated when the session opens
            kv, activations = kv_cache_bytes(shape, arena_positions or context, kv_dtype), prefill
        else:
            kv_prefill = kv_cache_bytes(shape, prompt_tokens, kv_dtype)
            kv_end = int(terms.kv_copies * kv_cache_bytes(shape, context, kv_dtype))
            kv, activations = (kv_end, 0) if kv_end >= kv_prefill + prefill else (kv_prefill, prefill)
    load = 0
    if terms.load_copy:
        from edgeq.planning.memory import load_bytes

        load = be.MEMORY.overhead_bytes + load_bytes(fmt, [(x, s) for x, s in pairs if x.fqn not in free],
                                                     nonlayer_bytes=nonlayer_bytes,
                                                     planned_activation_bytes=max(0, planned_activation_bytes))
    return LMMemoryEstimate(format=fmt, context=context, prompt_tokens=prompt_tokens, weights_bytes=int(weights),
                            kv_cache_bytes=int(kv), activation_bytes=int(activations),
                            runtime_overhead_bytes=int(be.MEMORY.overhead_bytes + terms.session_overhead_bytes),
                            baseline_bytes=int(be.MEMORY.baseline_bytes), kv_cache_dtype=kv_dtype,
                            load_bytes=int(load))


def predict_lm_peak(manifest_or_artifact_dir: Any, context: int | None = None, *, prompt_tokens: int | None = None,
                    config: dict[str, Any] | None = None) -> LMMemoryEstimate:
    """The peak-memory prediction for an LLM artifact directory (or its typed ``Manifest`` plus
    the model's ``config``, as ``edgeq export`` has them before writing): generation up to
    ``context`` tokens (default: the artifact's max context) after a prompt of ``prompt_tokens``
    (default: ``scenario_prompt(context)``)."""
    from edgeq.planning.inventory import layers_from_json

    manifest = manifest_or_artifact_dir
    if not hasattr(manifest, "llm"):
        from edgeq.artifact import load_manifest

        root = Path(manifest_or_artifact_dir)
        manifest = load_manifest(root)
        if config is None:
            from edgeq.planning.memory import artifact_config

            config = artifact_config(root, manifest)
    if manifest.llm is None:
        raise ArtifactError("the artifact is not an LLM artifact (its manifest has no llm block)",
                            "predict encoder memory with edgeq.planning.memory")
    if manifest.precision.inventory is None or not config:
        raise ArtifactError("the artifact records no layer inventory or model config",
                            "re-export it with this edgeq")
    context = manifest.llm.max_context if context is None else int(context)
    if not 1 <= context <= manifest.llm.max_context:
        raise ArtifactError(f"context {context} is outside the artifact's 1..{manifest.llm.max_context}",
                            "give a context up to the artifact's max context")
    prompt = scenario_prompt(context) if prompt_tokens is None else int(prompt_tokens)
    layers = layers_from_json([row.model_dump() for row in manifest.precision.inventory])
    counted = sum(x.params * 4 for x in layers if not x.tied)
    nonlayer = max(0, manifest.sizes.fp32_weight_bytes - counted)  # norms, biases outside the inventory
    return predict_lm_memory(manifest.target.format, layers, manifest.precision.layers, LMShape.from_config(config),
                             context=context, prompt_tokens=prompt,
                             planned_activation_bytes=manifest.memory.planned_activation_bytes,
                             kv_dtype=manifest.llm.kv_cache_dtype, nonlayer_bytes=nonlayer,
                             arena_positions=manifest.llm.max_context,
                             program_logits=manifest.llm.logits or EVERY_POSITION,
                             kv_layout=manifest.llm.kv_cache_layout or KV_GROWN)
