"""Runtime memory of an artifact, predicted from its plan (measured by ``edgeq.profiling.rss``).

Measured (``edgeq.profiling.rss.measure_peak_rss``): edgeq's runner in a fresh process
imports the runtime, resets the kernel's peak-RSS counter, records its resident set (the
*baseline*), loads the artifact, runs it, and reports the peak resident set (``VmHWM``).

Predicted (``predict_peak``, ``predict_from_artifact``): weights as the runtime holds
them (per layer, from its shape and scheme), activations (ExecuTorch's planned arena plus
terms in tokens x widest linear and heads x tokens^2), the load-time copy of the largest
weight, and a per-runtime overhead; see ``MemoryEstimate``. The byte formulas per scheme
follow the formats; the coefficients below are fitted to measurements, and say so.

>>> est = predict_from_artifact("dist/all-MiniLM-L6-v2-x86")  # doctest: +SKIP
>>> from edgeq.profiling.rss import measure_peak_rss  # doctest: +SKIP
>>> est.total_bytes, measure_peak_rss("dist/all-MiniLM-L6-v2-x86")["model_attributable_bytes"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Sequence

from edgeq.schemes import FP32, Scheme, applied, for_precision

if TYPE_CHECKING:
    from edgeq.manifest import Manifest


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak runtime memory beyond the runtime's own baseline, in bytes.

    ``total_bytes = max(weights_bytes + activation_bytes, load_bytes) + runtime_overhead_bytes``:
    the peak is either while the model runs (weights as the runtime holds them, plus
    activations) or while it loads (weights as stored, plus a second copy of the largest
    one: ORT converts each initializer by copying it, XNNPACK packs a weight while its
    raw bytes are still mapped), whichever is higher.
    """

    format: str
    weights_bytes: int
    activation_bytes: int
    load_bytes: int
    runtime_overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return max(self.weights_bytes + self.activation_bytes, self.load_bytes) + self.runtime_overhead_bytes

    def peak_rss_bytes(self, baseline_bytes: int | None = None) -> int:
        """The process's predicted peak RSS: ``baseline_bytes`` (default: the runtime's
        measured baseline here, its backend's ``MEMORY.baseline_bytes``) plus ``total_bytes``."""
        if baseline_bytes is None:
            from edgeq.backends import get_backend

            baseline_bytes = get_backend(self.format).MEMORY.baseline_bytes
        return baseline_bytes + self.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def with_folded(pairs: Sequence[tuple[Any, Scheme | None]], folded: dict[str, int]) -> list[tuple[Any, Scheme | None]]:
    """``(layer, scheme)`` pairs with each folded layer (``edgeq.planning.graphfacts``) replaced by the
    fp32 constant ExecuTorch stores in its place (``folded``: fqn → bytes), whatever its scheme."""
    from dataclasses import replace

    return [(replace(x, kind="embedding", shape=(folded[x.fqn] // 4,), params=folded[x.fqn] // 4, bias=False), FP32)
            if x.fqn in folded else (x, s) for x, s in pairs]


# --- coefficients ---------------------------------------------------------------------
# Each runtime's terms are its backend's (``edgeq.backends.<format>.costs.MEMORY``), fitted
# (scipy least_squares on the relative error of model_attributable_bytes, one format at a
# time, intercept free) to the medians of measure_peak_rss over fresh processes (5 per
# ExecuTorch artifact, 9 per ONNX one) of the 24 artifacts of benchmarks/memory_model.py, on
# this host (x86-64, glibc, 2 cores; ExecuTorch 1.5.1 pybindings, ONNX Runtime 1.31.1 CPU
# EP, 4 intra-op threads): all-MiniLM-L6-v2 fp32/fp16/int8/int4 at seq 128 and fp32/int8
# at seq 512; a random BERT-base (110M) and a random Llama (58M) fp32/int8/int4 at seq 128.
# Nothing is fitted to the held-out rows of that benchmark (a random ViT-base, a random
# tied-head Qwen2-style LM, MiniLM memory-budget plans). Two structural terms were added
# after those rows missed, without new constants: a ViT's patches are its tokens
# (``patch_tokens``) and a tied LM head is a second, fp32 tensor (``tied_head``).
#
# act_wide x (tokens x widest linear output x 4 B): e.g. LM-head logits in the XNNPACK
# workspace / ORT arena plus the copy handed to Python (identified by the Llama rows alone);
# act_attn x (heads x tokens^2 x 4 B): attention scores (identified by MiniLM at seq 512 vs
# 128 alone). Held out, act_wide on ExecuTorch is the weak term: a small tied LM (seq 256,
# vocab 32000, 31 MiB of logits) measures 116 MiB in 8 fresh processes of 9 and 147 in the
# other, vs 150 predicted (+29%); the Llama int8 is the mirror image (111 usually, 97 once).
# Whether glibc keeps the logits-sized buffers freed between runs depends on the heap's
# layout, and these factors sit on the high mode (conservative for a budget). After 1, 2, 3
# runs the Llama int8 measures 96.6, 96.6, 111.2 MiB, the small tied LM 116.0, 116.1, 116.1:
# after one run both need ~1.2-1.3x logits, not 2.27. The overhead is the fitted intercept
# (kernel code paged in, thread pools, ORT's session and arena slack).


def predict_peak(fmt: str, layers: Sequence[tuple[Any, Scheme | None]], *, nonlayer_bytes: int, tokens: int = 0,
                 attention_heads: int = 0, planned_activation_bytes: int = 0,
                 biased: Collection[str] | None = None) -> MemoryEstimate:
    """Predict the peak memory an artifact adds to its runtime's process.

    ``layers``: ``(layer, scheme)`` pairs, ``layer`` with ``fqn``, ``kind``, ``shape``,
    ``params`` (an ``edgeq.planning.inventory.LayerInfo``), ``scheme`` a ``Scheme`` or None for a
    layer the artifact does not use; ``nonlayer_bytes``: the fp32 bytes of all other
    constants (biases, norms); ``tokens``/``attention_heads``: the sequence the model runs
    on; ``planned_activation_bytes``: the runtime's planned arena (manifest); ``biased``:
    names of the linears with a bias (ORT runs them as Gemm; None: all).
    """
    from edgeq.backends import get_backend

    be = get_backend(fmt)
    weights, widest = nonlayer_bytes, 0
    for layer, scheme in layers:
        if scheme is None:
            continue
        weights += be.held_bytes(layer, scheme, None if biased is None else layer.fqn in biased)
        if layer.kind == "linear":
            widest = max(widest, layer.shape[0])
    activations = activation_bytes(fmt, tokens=tokens, widest=widest, attention_heads=attention_heads,
                                   planned_activation_bytes=planned_activation_bytes)
    load = load_bytes(fmt, layers, nonlayer_bytes=nonlayer_bytes, planned_activation_bytes=planned_activation_bytes)
    return MemoryEstimate(fmt, int(weights), int(activations), load, be.MEMORY.overhead_bytes)


def load_bytes(fmt: str, layers: Sequence[tuple[Any, Scheme | None]], *, nonlayer_bytes: int,
               planned_activation_bytes: int = 0) -> int:
    """The peak while the artifact loads: every weight as stored, plus a second copy of the
    largest one the runtime converts (ORT copies each initializer; XNNPACK packs a weight while
    its raw bytes are still mapped, and unmaps them once it is packed), plus an arena the
    runtime allocates when the method loads, before weights are packed. ``layers`` as
    ``predict_peak`` takes them."""
    from edgeq.backends import get_backend

    be = get_backend(fmt)
    terms = be.MEMORY
    stored_total, transient = nonlayer_bytes, 0
    for layer, scheme in layers:
        if scheme is None:
            continue
        stored = be.runtime_bytes(layer, scheme)
        stored_total += stored
        if not (terms.maps_embedding_tables and layer.kind == "embedding"):  # a mapped table is not copied
            transient = max(transient, stored)
    return int(stored_total + transient + (planned_activation_bytes if terms.arena_at_load else 0))


def activation_bytes(fmt: str, *, tokens: int, widest: int, attention_heads: int,
                     planned_activation_bytes: int = 0) -> int:
    """Activations at the peak: the runtime's planned arena plus the fitted terms in
    tokens x widest linear output and heads x tokens^2 (the backend's ``MEMORY``)."""
    from edgeq.backends import get_backend

    terms = get_backend(fmt).MEMORY
    return int(planned_activation_bytes + terms.act_wide * tokens * widest * 4
               + terms.act_attn * attention_heads * tokens * tokens * 4)


def predict_from_artifact(artifact_dir: str | Path, layers: Sequence[Any] | None = None,
                          biased: Collection[str] | None = None, *, load_source: bool = False) -> MemoryEstimate:
    """``predict_peak`` for an artifact directory, from its ``manifest.json``.

    Layer shapes come from the manifest (``precision.inventory``). Schema-1 artifacts written
    before edgeq recorded it have none (``edgeq.manifest.upgrade`` cannot supply shapes): pass
    ``layers`` (``LayerInfo`` list of the source model), or ``load_source=True`` to load
    ``model.source`` (slow, needs the source, and imports it: only for sources you trust);
    otherwise ``ArtifactError``.
    """
    from edgeq.artifact import load_manifest

    root = Path(artifact_dir)
    manifest = load_manifest(root)
    model = manifest.model
    if layers is None and manifest.precision.inventory is not None:
        from edgeq.planning.inventory import layers_from_json

        layers = layers_from_json([row.model_dump() for row in manifest.precision.inventory])
        biased = {x.fqn for x in layers if x.bias} if biased is None else biased
    if layers is None:
        if not load_source:
            from edgeq.errors import ArtifactError

            raise ArtifactError(f"{root}/manifest.json records no layer inventory (written by an older edgeq)",
                                "re-export it with this edgeq, or pass the source model's layers")
        from edgeq.planning.inventory import layer_inventory
        from edgeq.models import load_model

        module = load_model(model.source, model.task, seq_len=manifest.seq_len or 128).module
        layers = layer_inventory(module)
        biased = {x.fqn for x in layers if x.bias}
    schemes = manifest.precision.layers
    config = artifact_config(root, manifest)
    nonlayer = max(0, manifest.sizes.fp32_weight_bytes - sum(layer.params * 4 for layer in layers
                                                             if not getattr(layer, "tied", "")))
    pairs = [(layer, applied(schemes.get(layer.fqn, "fp32"))) for layer in layers]
    tied = tied_head(layers, config, model.task)
    if tied is not None:
        # The lowered program names the shared weight after the head, so the embedding can be
        # recorded as "unused" although its gather reads it: it is stored at the precision asked.
        requested = manifest.precision.requested
        asked = for_precision(requested) if requested in ("fp32", "fp16", "int8") else FP32
        pairs = [(x, asked if s is None and x.fqn == tied.fqn else s) for x, s in pairs]
    recorded = manifest.memory
    pairs = with_folded(pairs, recorded.folded_layers)
    pairs = with_tied_head(manifest.target.format, pairs, config, model.task)
    first_dtype, first_shape = (model.inputs[0].dtype, model.inputs[0].shape) if model.inputs else ("float32", [])
    is_int = first_dtype.startswith(("int", "uint"))
    if recorded.tokens is not None and (is_int or recorded.tokens):
        tokens, heads = recorded.tokens, recorded.attention_heads or 0
    else:  # not recorded, or 0 for float inputs (manifests before edgeq counted patch tokens)
        tokens = _prod(first_shape) if is_int else patch_tokens(config, first_shape)
        heads = attention_heads(config)
    return predict_peak(manifest.target.format, pairs, nonlayer_bytes=nonlayer, tokens=tokens,
                        attention_heads=heads, biased=biased,
                        planned_activation_bytes=recorded.planned_activation_bytes)


def artifact_config(root: Path, manifest: Manifest) -> dict[str, Any]:
    """The model's ``config.json`` shipped in the artifact (a listed, regular, small file), or {}."""
    from edgeq.artifact import member
    from edgeq.errors import ArtifactError
    from edgeq.jsonio import read_json

    if "config.json" not in manifest.files:
        return {}
    config = read_json(member(root, "config.json"), expect=None, max_bytes=4 * 2**20, error=ArtifactError,
                       fix="re-run 'edgeq export'")
    return config if isinstance(config, dict) else {}


@dataclass(frozen=True)
class LayerHead:
    """A tied LM head as a layer of its own: the linear whose weight is the embedding's."""

    embedding: Any

    @property
    def fqn(self) -> str:
        return f"{self.embedding.fqn}#tied-head"

    kind = "linear"
    bias = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.embedding.shape)

    @property
    def params(self) -> int:
        return int(self.embedding.params)


def tied_head(layers: Sequence[Any], config: dict[str, Any], task: str | None) -> Any | None:
    """The embedding a causal LM's output head shares its weight with, or None.

    ``edgeq.planning.inventory`` counts a shared weight once (under the embedding), but both
    runtimes hold two tensors: the table the token gather reads and the head's matrix for
    the GEMM. ExecuTorch stores both in the .pte (a portable/quantized embedding and an
    XNNPACK linear); ONNX stores one initializer, read by a Gather and by a Transpose that
    ONNX Runtime constant-folds into a second, fp32 initializer when the session loads.
    Artifacts edgeq exported before it planned tied heads as layers of their own
    (``LayerInfo.tied``) have no entry for the head: it is an fp32 linear whatever the
    embedding's scheme (in the .pte files and ONNX graphs of a 50257 x 384 tied head at
    fp32, int8 and int4; ONNX with a quantized table holds a second fp32 copy).
    ``with_tied_head`` adds these tensors for such inventories. A head is tied when the
    config says ``tie_word_embeddings`` and no linear produces the vocabulary.
    """
    if task != "causal-lm" or not config.get("tie_word_embeddings", False):
        return None
    vocab = int(config.get("vocab_size") or 0)
    embeds = [x for x in layers if x.kind == "embedding" and x.shape and x.shape[0] == vocab]
    if not embeds or any(x.kind == "linear" and x.shape[0] == vocab for x in layers):
        return None
    return embeds[0]


def with_tied_head(fmt: str, pairs: Sequence[tuple[Any, Scheme | None]], config: dict[str, Any],
                   task: str | None) -> list[tuple[Any, Scheme | None]]:
    """``pairs`` (``(layer, scheme)``, as ``predict_peak`` takes them) plus the tensors a tied
    LM head adds (``tied_head``): one fp32 linear, plus the backend's
    ``tied_head_quantized_copies`` when the table is quantized (ONNX: a quantized table
    cannot feed the head's Transpose). Other models: ``pairs`` unchanged."""
    out = list(pairs)
    if any(getattr(x, "tied", "") for x, _ in pairs):
        # The head is planned as a layer of its own (edgeq.planning.inventory); edgeq's ONNX export
        # gives it its own initializer unless it shares the table's float scheme, in which
        # case ONNX Runtime folds the Transpose into a second copy at load: two tensors either way.
        return out
    head = tied_head([layer for layer, _ in pairs], config, task)
    if head is None:
        return out
    from edgeq.backends import get_backend

    out.append((LayerHead(head), FP32))
    if dict(pairs).get(head, FP32) not in (FP32, None):
        out += [(LayerHead(head), FP32)] * get_backend(fmt).MEMORY.tied_head_quantized_copies
    return out


def workload(example_inputs: Sequence[Any], config: dict[str, Any]) -> tuple[int, int]:
    """``(tokens, attention_heads)`` the activation terms need: the positions the model's
    transformer runs on (the element count of the first integer input, token ids; for
    float inputs, a vision transformer's patches plus its class token, from the input's
    height and width and the config's ``patch_size``; else 0, e.g. a CNN) and the config's heads."""
    first = example_inputs[0] if example_inputs else None
    if first is None:
        return 0, attention_heads(config)
    if not first.is_floating_point():
        return int(first.numel()), attention_heads(config)
    return patch_tokens(config, tuple(first.shape)), attention_heads(config)


def patch_tokens(config: dict[str, Any], shape: Sequence[int]) -> int:
    """Positions a ViT-style model runs on for an image input of ``shape`` (N, C, H, W):
    ``N x ((H/patch) x (W/patch) + 1)`` (patch grid plus class token; a DeiT's distillation
    token is not counted); 0 without a 4-D input, a ``patch_size`` or attention heads in the
    config (ConvNeXt-style CNNs have a ``patch_size`` too: their stem's stride)."""
    patch = config.get("patch_size")
    if not patch or len(shape) != 4 or not attention_heads(config):
        return 0
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[-1]))
    return int(shape[0]) * ((int(shape[2]) // ph) * (int(shape[3]) // pw) + 1)


def attention_heads(config: dict[str, Any]) -> int:
    return int(config.get("num_attention_heads") or config.get("n_head") or 0)


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out
