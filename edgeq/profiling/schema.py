"""The profile report: typed and versioned at the library's boundary.

``edgeq.profiling.profile_artifacts`` returns, and ``edgeq profile --json`` prints, one
report per artifact: a **measured** report (``mode`` host or device: the runner's timings
in a fresh process, or a board's) or an **estimated** one (``mode`` emulated: always
``estimate: true``). Each is checked against these models before it leaves the library,
so a report from a runner on a device that is malformed is an error, not a wrong table.
Blocks that depend on the runtime or the transport (``ops``, ``remote``, ``transfer``,
``golden``, ``factors`` ...) are kept as they come (``extra="allow"``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REPORT_SCHEMA_VERSION = 1


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow")


class LatencyStats(_Block):
    """Milliseconds over the timed runs."""

    min: float = Field(ge=0)
    p50: float = Field(ge=0)
    p90: float = Field(ge=0)
    max: float = Field(ge=0)
    mean: float = Field(ge=0)
    stdev: float = Field(ge=0)


class Threads(_Block):
    used: Optional[int] = None
    requested: Optional[int] = None


class LLMDecodeEstimate(_Block):
    """One device's estimated decode speed for an LLM artifact (``edgeq.llm.profile``)."""

    device: str
    estimate: Literal[True]
    label: str
    tokens_per_s: float = Field(ge=0)
    ms_per_token: float = Field(ge=0)
    bytes_per_token: int = Field(ge=0)
    flops_per_token: int = Field(ge=0)
    bound: Literal["memory", "compute"]


class LLMEstimated(_Block):
    """An emulated LLM report's block: decode estimates for every built-in device profile."""

    position: int = Field(ge=0)
    decode_estimates: list[LLMDecodeEstimate]


class LLMMeasured(_Block):
    """A host LLM report's block: generation measured in the artifact's runtime."""

    prompt_tokens: int = Field(ge=1)
    new_tokens: int = Field(ge=1)
    max_context: int = Field(ge=2)
    prefill_tokens_per_s: float = Field(ge=0)
    decode_tokens_per_s: float = Field(ge=0)
    time_to_first_token_ms: float = Field(ge=0)
    generated_tokens: list[int]
    predicted_memory: Optional[dict[str, Any]] = None  # the manifest's prediction, beside the measurement


class EstimatedReport(_Block):
    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    mode: Literal["emulated"]
    estimate: Literal[True]
    device: str
    artifact: str
    format: str
    threads: Threads
    latency_ms: float = Field(ge=0)  # the estimate's total
    bound_share: dict[str, float]
    assumptions: list[str]
    llm: Optional[LLMEstimated] = None  # LLM artifacts: latency_ms is per decoded token


class MeasuredReport(_Block):
    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    mode: Literal["host", "device"]
    estimate: Literal[False]
    artifact: str
    model_file: str
    format: str
    runtime: str
    precision: Optional[str] = None
    target: Optional[str] = None
    threads: Threads
    runs: int = Field(ge=1)
    warmup: int = Field(ge=0)
    load_ms: float = Field(ge=0)
    latency_ms: LatencyStats
    samples_ms: list[float]
    memory: dict[str, Any]
    host: dict[str, Any]
    emulated: Optional[EstimatedReport] = None  # with --with-estimate
    llm: Optional[LLMMeasured] = None  # LLM artifacts: latency_ms is per decoded token


ProfileReport = Union[MeasuredReport, EstimatedReport]


def typed_report(report: dict[str, Any]) -> ProfileReport:
    """``report`` checked as a measured or an estimated report; ``ValueError`` says what is wrong."""
    model = EstimatedReport if report.get("mode") == "emulated" else MeasuredReport
    try:
        return model.model_validate({**report, "schema_version": REPORT_SCHEMA_VERSION})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ValueError(f"{where}: {err['msg']}") from None


def report_dict(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` checked and returned as JSON-ready data, with its schema version."""
    data = typed_report(report).model_dump(mode="json", exclude_none=False)
    for block in (data, data.get("emulated") or {}):
        if block.get("llm", 0) is None:  # encoder reports keep the keys they always had
            block.pop("llm")
    return data
