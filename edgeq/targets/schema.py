"""Strict schemas for the two kinds of YAML: device profiles (facts) and targets (choices).

Unknown keys are errors. Only pydantic is imported here, so validating a file never
pulls in torch or a runtime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

Precision = Literal["fp32", "fp16", "int8", "int6", "int5", "int4", "int3", "int2"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int6", "int5", "int4", "int3", "int2")
# The artifact formats and each one's delegates come from the backend registry (data only).
Format = str

DtypeKey = Literal["fp32", "fp16", "bf16", "int8", "int4"]


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # names become parts of output paths


class Strict(BaseModel):
    # strict: no coercion (`true` is not a number, "12" is not an int); no inf / nan anywhere
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- profiles


class CpuCluster(Strict):
    name: str
    count: int = Field(gt=0)
    max_ghz: float = Field(gt=0)
    # Per core: splits peak_gops among clusters when fewer threads than cores run
    # (big cores first). Optional; without it the split goes by clock alone.
    fp32_flops_per_cycle: float | None = Field(default=None, gt=0)


Isa = Literal[
    "neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2", "sme",
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx",
]


class Cpu(Strict):
    arch: Literal["arm64", "x86_64"]
    clusters: list[CpuCluster] = Field(min_length=1)
    isa: list[Isa]
    peak_gops: dict[DtypeKey, float]

    @property
    def cores(self) -> int:
        return sum(c.count for c in self.clusters)

    @model_validator(mode="after")
    def _needs_fp32_and_int8(self) -> "Cpu":
        missing = {"fp32", "int8"} - set(self.peak_gops)
        if missing:
            raise ValueError(f"cpu.peak_gops needs {sorted(missing)}")
        return self


class Memory(Strict):
    ram_gb: float = Field(gt=0)
    app_share: float = Field(gt=0, le=1)
    bandwidth_gbps: float = Field(gt=0)
    storage_gb: float = Field(gt=0)

    @property
    def app_budget_mb(self) -> float:
        return self.ram_gb * 1024 * self.app_share


Api = Literal["vulkan", "opencl", "metal", "coreml", "qnn", "nnapi", "directml", "openvino"]


class Accelerator(Strict):
    kind: Literal["gpu", "npu", "neural-engine"]
    name: str
    apis: list[Api]
    peak_gops: dict[DtypeKey, float]


class Os(Strict):
    name: Literal["android", "ios", "macos", "linux", "windows"]
    min_version: str


class DeviceProfile(Strict):
    """What a device is: facts only, each with a source comment in its YAML."""

    schema_version: Literal[1]
    name: str = Field(pattern=NAME_PATTERN)
    display_name: str
    family: Literal["snapdragon", "apple", "raspberry-pi", "x86"]
    vendor: str
    cpu: Cpu
    memory: Memory
    accelerators: list[Accelerator] = []
    os: Os
    notes: str = ""


# ---------------------------------------------------------------------------- targets


MAX_BUDGET_MB = 1e9  # a petabyte: anything above is a typo, and would overflow byte arithmetic


class Budgets(Strict):
    runtime_memory_mb: float = Field(gt=0, le=MAX_BUDGET_MB)
    storage_mb: float = Field(gt=0, le=MAX_BUDGET_MB)
    latency_ms: float | None = Field(default=None, gt=0, le=1e9)


class Quantization(Strict):
    int4_group_size: Literal[32, 64, 128] = 32
    # Layers matching these regexes keep full precision (e.g. a classifier head).
    keep_fp32: list[str] = Field(default=[], max_length=1000)
    # Schemes the planner never offers, by name (e.g. int4-g32-asym: GGUF's Q4_1), within the
    # precision families ``precisions`` allows; a rule pinning one is refused.
    exclude_schemes: list[str] = Field(default=[], max_length=100)
    # The target's default export (no --precision, plan, budget or rule): default_precision,
    # then these REGEX=SCHEME rules (as --rule; later ones win) on the layers they match and
    # whose kind and shape take the scheme (e.g. x86: the linears at MatMulInteger kernels).
    default_rules: list[str] = Field(default=[], max_length=100)

    @field_validator("default_rules")
    @classmethod
    def _rules_parse(cls, rules: list[str]) -> list[str]:
        """Each ``REGEX=SCHEME`` well formed, as a ``--rule`` (the format's kernels are checked by
        the export, which knows the backend: ``edgeq.planning.rules.check_default_rules``)."""
        from edgeq.errors import ConfigError
        from edgeq.schemes import parse_rule

        for rule in rules:
            try:
                parse_rule(rule)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return rules

    @field_validator("exclude_schemes")
    @classmethod
    def _schemes_known(cls, names: list[str]) -> list[str]:
        from edgeq.errors import ConfigError
        from edgeq.schemes import parse

        out = []
        for name in names:
            try:
                out.append(parse(name).name)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return out

    @field_validator("keep_fp32")
    @classmethod
    def _regexes_compile(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            if len(pattern) > 500:
                raise ValueError(f"pattern '{pattern[:40]}…' is longer than 500 characters")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a valid regular expression ({exc})") from None
        return patterns


class Runtime(Strict):
    threads: int = Field(default=0, ge=0, le=1024, description="0 = let the runtime decide")
    max_context: int | None = Field(default=None, ge=2, le=1_048_576,
                                    description="KV-cache positions of a decoder LLM (--max-context overrides)")


class FidelityChecks(Strict):
    """Fidelity limits per metric; the gate applies those of the model's task."""

    cosine_min: float | None = Field(default=None, ge=-1, le=1, description="worst held-out cosine vs eager FP32")
    top1_min: float | None = Field(default=None, ge=0, le=1, description="top-1 agreement with eager FP32 (logits)")
    kl_max: float | None = Field(default=None, ge=0, description="mean KL(FP32 || artifact) of the softmax (logits)")


class DelegationChecks(Strict):
    min_share: float | None = Field(default=None, ge=0, le=1, description="share of ops on the intended delegate")
    delegate: str | None = Field(default=None, description="the intended delegate (default: first in the chain)")


class RegressionChecks(Strict):
    """How much worse than the baseline an artifact may be before the regression gate fails."""

    size_pct: float | None = Field(default=None, ge=0)
    memory_pct: float | None = Field(default=None, ge=0)
    latency_pct: float | None = Field(default=None, ge=0)
    fidelity_drop: float | None = Field(default=None, ge=0, description="absolute drop in the fidelity metric")


class Checks(Strict):
    """Thresholds per gate for ``edgeq check``; unset ones use edgeq's defaults."""

    fidelity: FidelityChecks = FidelityChecks()
    delegation: DelegationChecks = DelegationChecks()
    regression: RegressionChecks = RegressionChecks()


class Target(Strict):
    """How to deploy onto a device: format, delegate chain, precisions, budgets."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    device: str
    format: Format
    delegates: list[str] = Field(min_length=1)
    precisions: list[Precision] = Field(min_length=1)
    default_precision: Precision
    budgets: Budgets
    # accuracy: the most accurate plan within the budgets; balanced (without a latency budget):
    # the fastest plan within a small predicted-error margin of it (edgeq.planning.latency_bound)
    objective: Literal["accuracy", "balanced"] = "accuracy"
    quantization: Quantization = Quantization()
    runtime: Runtime = Runtime()
    seq_len: int = Field(default=128, gt=0, le=1_048_576, description="static sequence length for text models")
    checks: Checks = Checks()

    @model_validator(mode="after")
    def _check(self) -> "Target":
        from edgeq.errors import did_you_mean

        from edgeq.backends import FORMATS, delegates_for, precisions_for

        if self.format not in FORMATS:
            raise ValueError(f"unknown format '{self.format}'{did_you_mean(self.format, FORMATS)} "
                             f"(choose from {', '.join(FORMATS)})")
        allowed = delegates_for(self.format)
        for d in self.delegates:
            if d not in allowed:
                raise ValueError(
                    f"unknown {self.format} delegate '{d}'{did_you_mean(d, allowed)} "
                    f"(choose from {', '.join(allowed)})"
                )
        stored = precisions_for(self.format)
        for p in self.precisions:
            if p not in stored:
                raise ValueError(f"{self.format} artifacts store no {p} scheme (precisions for {self.format}: "
                                 f"{', '.join(stored)})")
        if len(set(self.delegates)) != len(self.delegates):
            raise ValueError("delegates lists a delegate twice")
        wanted = self.checks.delegation.delegate
        if wanted is not None and wanted not in self.delegates:
            raise ValueError(f"checks.delegation.delegate '{wanted}' is not in delegates {self.delegates}")
        if self.default_precision not in self.precisions:
            raise ValueError(
                f"default_precision '{self.default_precision}' is not in precisions {self.precisions}"
            )
        self._check_default_rules()
        return self

    def _check_default_rules(self) -> None:
        """Each default rule's scheme in ``precisions`` and not excluded (whether the format
        stores it: ``edgeq.planning.rules.check_default_rules``, at export)."""
        from edgeq.schemes import parse_rule

        for rule in self.quantization.default_rules:
            _regex, scheme = parse_rule(rule)
            if scheme.precision not in self.precisions:
                raise ValueError(f"quantization.default_rules '{rule}': {scheme.precision} is not in precisions "
                                 f"{self.precisions}")
            if scheme.name in self.quantization.exclude_schemes:
                raise ValueError(f"quantization.default_rules '{rule}': {scheme.name} is in exclude_schemes")

    @property
    def fallback(self) -> str:
        """The last delegate in the chain: what runs when the preferred ones cannot."""
        return self.delegates[-1]
