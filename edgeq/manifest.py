"""The artifact manifest (``manifest.json``) as a typed, versioned value.

``edgeq export`` builds a ``Manifest`` and writes ``model_dump(mode="json")``; every reader
gets one back from ``edgeq.artifact.load_manifest`` and uses attributes
(``manifest.target.format``, ``manifest.files``), never string keys. A manifest an older
edgeq wrote is brought to the current schema by ``upgrade`` (the one place that knows the
history); one from a newer edgeq is refused.

>>> from edgeq.artifact import load_manifest
>>> m = load_manifest(Path("dist/mlp-x86"))  # doctest: +SKIP
>>> m.target.format, m.sizes.artifact_bytes  # doctest: +SKIP
('onnx', 40960)

``edgeq/profiling/runner.py`` (copied onto boards alone) still reads the JSON as a dict: the keys it
reads (``model_file``, ``target.format/threads``, ``files``, ``versions``, ``model.inputs``,
``delegation.used``, ``precision.requested``) are unchanged between schema 1 and 2.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_serializer

from edgeq.targets.schema import Strict

MANIFEST_SCHEMA_VERSION = 2


class Target(Strict):
    name: str
    device: str  # the device profile's name
    device_name: str
    format: str
    delegates: list[str]  # the target's delegate chain at export
    threads: int


class InputSpec(Strict):
    name: str
    shape: list[int]
    dtype: str  # torch dtype name without "torch." (int64, float32)


class ModelInfo(Strict):
    name: str
    source: str
    source_kind: str
    task: str
    inputs: list[InputSpec]
    outputs: list[str]


class LayerRecord(Strict):
    """One row of the layer inventory (``edgeq.planning.inventory.layers_to_json``)."""

    fqn: str
    kind: str
    shape: list[int]
    params: int
    bias: bool
    tied: str | None = None  # only written for a head tied to an embedding

    @model_serializer(mode="wrap")
    def _without_absent_tied(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if self.tied is None:
            data.pop("tied", None)
        return data


class Precision(Strict):
    requested: str  # a precision name, or "planned"
    layer_counts: dict[str, int]  # scheme → number of layers
    layers: dict[str, str]  # fqn → scheme as lowered
    notes: dict[str, str]  # fqn → why the plan chose its scheme
    inventory: list[LayerRecord] | None  # None: schema-1 artifacts written before it was recorded
    # fqn → the calibrated algorithm that chose its values and the data it used (absent: RTN everywhere)
    algorithms: dict[str, dict[str, Any]] | None = None
    # edgeq.algorithms.smooth.smooth_encoder: the explicit input divisions made before per-tensor
    # int8 linears (None: not tried: no linear at such a scheme, RTN only, or from before edgeq did)
    smoothing: dict[str, Any] | None = None


class Sizes(Strict):
    fp32_weight_bytes: int
    artifact_bytes: int
    ratio_to_fp32: float | None


class Budgets(Strict):
    runtime_memory_mb: float
    storage_mb: float
    latency_ms: float | None


class Delegation(Strict):
    """What the runtime's delegates took. ``used`` and ``delegated_ops`` are common to every
    backend; the rest is the backend's own summary (e.g. ``portable_ops``, ``op_types``,
    ``expected_execution_providers``), kept as written."""

    model_config = ConfigDict(extra="allow")

    used: list[str]
    delegated_ops: dict[str, int]  # delegate (or execution provider) → op count

    @property
    def details(self) -> dict[str, Any]:
        """The backend-specific keys beyond ``used`` and ``delegated_ops``."""
        return dict(self.model_extra or {})

    @property
    def portable_ops(self) -> dict[str, int]:
        """Op type → count on the portable CPU path ({} when the backend records none)."""
        value = self.details.get("portable_ops") or {}
        return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}

    @property
    def expected_execution_providers(self) -> list[str]:
        value = self.details.get("expected_execution_providers") or []
        return [str(p) for p in value] if isinstance(value, list) else []


class PredictedMemory(Strict):
    """``edgeq.planning.memory.MemoryEstimate.to_dict()`` for the lowered artifact, always an estimate."""

    format: str
    weights_bytes: int
    activation_bytes: int
    load_bytes: int
    runtime_overhead_bytes: int
    total_bytes: int
    estimate: bool
    peak_rss_with_python_runtime_bytes: int


class Memory(Strict):
    planned_activation_bytes: int  # the runtime's planned arena (0 when it plans none)
    tokens: int | None  # None: not recorded (schema-1 artifacts before memory planning)
    attention_heads: int | None
    folded_layers: dict[str, int]  # fqn → bytes of the fp32 constant stored instead
    budget_bytes: int | None
    predicted: PredictedMemory | None


class Numerics(Strict):
    """``edgeq.numerics.Numerics.to_dict()``: artifact vs eager fp32 on held-out inputs."""

    model_config = ConfigDict(allow_inf_nan=True)  # a degenerate output's cosine is nan; say so, not refuse

    samples: int
    inputs: str
    runtime: str
    cosine_mean: float
    cosine_min: float
    max_abs: float
    top1_agreement: float | None
    kl_mean: float | None


class FileEntry(Strict):
    bytes: int = Field(ge=0)
    sha256: str


class PlanRecord(Strict):
    """What the planner predicted for a planned export, beside what was verified."""

    budget_bytes: int | None
    memory_budget_bytes: int | None
    binding: str | None  # storage | memory | max-drop | none; None: not recorded (schema 1)
    predicted_bytes: int
    predicted_peak_memory_bytes: int | None
    predicted_error: float
    verified_error: float | None
    error_metric: str
    # With a latency budget or a balanced objective (edgeq.planning.latency): the plan's
    # predicted whole-model p50 beside the artifact's p50 measured here after export.
    objective: str | None = None
    latency_budget_ms: float | None = None
    predicted_latency_ms: float | None = None
    measured_latency_ms: float | None = None
    latency_source: str | None = None
    # The fp32 graph the prediction's figures anchor on: its p50 when the layers were timed, and
    # timed again in turn with the artifact (None for an estimate): their ratio is the host's drift.
    latency_reference_ms: float | None = None
    latency_reference_now_ms: float | None = None


class LLMVerification(Strict):
    """The artifact's greedy tokens against eager transformers (``edgeq.llm.verify``)."""

    prompts: int
    new_tokens: int
    identical_prompts: int
    prefix_match: float


class LLMPredictedMemory(Strict):
    """``edgeq.llm.memory.LMMemoryEstimate.to_dict()``: peak memory of generating up to ``context``
    tokens after a ``prompt_tokens`` prompt, predicted at export; always an estimate."""

    format: str
    context: int
    prompt_tokens: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    runtime_overhead_bytes: int
    baseline_bytes: int
    kv_cache_dtype: str
    load_bytes: int = 0  # the peak while loading, when the runtime converts weights as it loads (0: none)
    total_bytes: int  # beyond the runtime's baseline (what a fresh process measures as model-attributable)
    peak_rss_bytes: int  # with the baseline of a Python process that imported the runtime
    estimate: bool


class LLMPerplexity(Strict):
    """Perplexity on held-out text at export (``edgeq.llm.perplexity.score_artifact``): the
    artifact in its runtime, and the source model in transformers on the same windows."""

    perplexity: float
    reference_perplexity: float
    increase: float  # perplexity / reference_perplexity - 1
    reference: str
    tokens: int  # tokens scored (each window's after its first)
    windows: int
    window: int  # tokens per window at most
    text: str  # where the text came from
    text_sha256: str  # of the text's UTF-8 bytes (before tokenizing)
    python: str  # edgeq's own text depends on the Python version
    runtime: str


# How an LLM's linears at one scheme compute: in fp32 (float weights, or integer weights
# dequantized), or with their input rounded to int8 at run time (8da4w / 8da8w).
LinearCompute = Literal["fp32", "int8 dynamic activations", "fp16 activations"]


class LLMInfo(Strict):
    """A decoder LLM artifact: its KV cache, vocabulary, stop tokens and tokenizer files."""

    max_context: int
    kv_cache_dtype: str
    kv_cache_bytes: int  # all layers, K and V, at max_context
    vocab_size: int
    eos_token_ids: list[int]
    bos_token_id: int | None
    tokenizer_files: list[str]  # beside the manifest; [] when the model has no tokenizer
    chat_template: bool
    prefill: str  # how a prompt is fed ("whole prompt in one call" / "one token per call")
    # the positions a call returns logits for: "every position" / "last position" (None: from
    # before edgeq recorded it, every position)
    logits: str | None = None
    # how the runtime holds the KV cache: "grown per call" / "one buffer at max context" (None:
    # from before edgeq recorded it, grown per call)
    kv_cache_layout: str | None = None
    head: dict[str, Any]  # the output head: tied or not, its scheme, shared or own storage
    verification: LLMVerification | None
    predicted_memory: LLMPredictedMemory | None = None  # absent in artifacts from before edgeq predicted it
    # absent in artifacts from before edgeq scored held-out text; None when not scored (no tokenizer, --eval-tokens 0)
    perplexity: LLMPerplexity | None = None
    # scheme → how the linears at that scheme compute (None: not recorded by this artifact's backend / edgeq)
    linear_compute: dict[str, LinearCompute] | None = None
    # edgeq.algorithms.smooth: the folds made against int8 activations' outlier channels (None:
    # not tried: the format's linears do not round their input, or from before edgeq smoothed)
    smoothing: dict[str, Any] | None = None
    # edgeq.algorithms.rotate: whether the residual stream was rotated and the KL it was chosen
    # by (None: not tried: the format's head shares the table, or from before edgeq rotated)
    rotation: dict[str, Any] | None = None


class Manifest(Strict):
    """An artifact's ``manifest.json`` (schema 2). Field names and order are the JSON's."""

    schema_version: Literal[2]
    created: str  # UTC, ISO 8601
    model_file: str
    target: Target
    model: ModelInfo
    precision: Precision
    sizes: Sizes
    budgets: Budgets
    delegation: Delegation
    memory: Memory
    numerics: Numerics | None
    numerics_skipped: str  # why numerics is None ("" when it is not)
    files: dict[str, FileEntry]  # every file beside the manifest: path → size and sha256
    versions: dict[str, str]  # package → version at export
    timings_s: dict[str, float]  # export step → seconds
    notes: list[str]
    plan: PlanRecord | None = None  # only planned exports (--plan/--budget/--max-drop/--rule) have one
    llm: LLMInfo | None = None  # only decoder LLMs exported with a KV cache have one

    @model_serializer(mode="wrap")
    def _without_absent_plan(self, handler: Any) -> dict[str, Any]:
        # An unplanned export has no "plan" key at all (as edgeq has always written it);
        # likewise "llm" for everything but a KV-cache LLM.
        data = handler(self)
        if self.plan is None:
            data.pop("plan", None)
        if self.llm is None:
            data.pop("llm", None)
        return data

    @property
    def seq_len(self) -> int | None:
        """The last dimension of the first input (the sequence length of token inputs)."""
        shapes = [i.shape for i in self.model.inputs]
        return shapes[0][-1] if shapes and shapes[0] else None


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A manifest dict at ``MANIFEST_SCHEMA_VERSION``, from one at this or an older version.

    Schema 1 → 2 changes nothing edgeq wrote; it only names what older schema-1 artifacts
    lacked (keys added while the schema stayed at 1), so that schema 2 can require every key:

    - ``memory``: absent before per-format memory extras (→ ``{}``); then
      ``planned_activation_bytes`` absent for backends that plan no arena (→ 0);
      ``tokens``, ``attention_heads``, ``budget_bytes``, ``predicted`` absent before memory
      planning (→ None); ``folded_layers`` absent before folded constants were recorded (→ {}).
    - ``precision.inventory``: absent before memory planning (→ None; the layer shapes need
      the source model, so edgeq cannot supply them here).
    - ``numerics.kl_mean``: absent before plans (→ None).
    - ``plan.memory_budget_bytes``, ``plan.binding``, ``plan.predicted_peak_memory_bytes``:
      absent before memory planning (→ None).

    Raises ``ValueError`` for a version it does not know (newer, or not an integer); the
    result still has to pass ``Manifest.model_validate``. ``data`` is not modified.
    """
    version = data.get("schema_version")
    if type(version) is not int:  # True == 1 in Python
        raise ValueError("the manifest has no integer schema_version")
    if version > MANIFEST_SCHEMA_VERSION:
        raise ValueError(f"manifest schema {version} is newer than this edgeq's ({MANIFEST_SCHEMA_VERSION})")
    if version == MANIFEST_SCHEMA_VERSION:
        return data
    if version != 1:
        raise ValueError(f"manifest schema {version} is not one edgeq ever wrote")
    out = copy.deepcopy(data)
    out["schema_version"] = 2
    memory = out.setdefault("memory", {})
    if isinstance(memory, dict):
        memory.setdefault("planned_activation_bytes", 0)
        for key in ("tokens", "attention_heads"):
            memory.setdefault(key, None)
        memory.setdefault("folded_layers", {})
        for key in ("budget_bytes", "predicted"):
            memory.setdefault(key, None)
    if isinstance(out.get("precision"), dict):
        out["precision"].setdefault("inventory", None)
    if isinstance(out.get("numerics"), dict):
        out["numerics"].setdefault("kl_mean", None)
    if isinstance(out.get("plan"), dict):
        for key in ("memory_budget_bytes", "binding", "predicted_peak_memory_bytes"):
            out["plan"].setdefault(key, None)
    return out


def first_problem(exc: Any) -> str:
    """One line naming the first thing a ``pydantic.ValidationError`` found wrong."""
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    err = errors[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {err.get('msg', 'invalid')}{more}"
