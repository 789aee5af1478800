"""Quantization schemes: one value type, parsed once.

A ``Scheme`` says how one layer's weight is stored: float (fp32, fp16) or integer (int8
per output channel, int4 in groups along the reduction dimension), and by which
algorithm its integer values are chosen. Plans, rules, plan files and manifests name
schemes (``"int4-g32"``); ``parse`` turns a name into the value, once, at the boundary;
everything inside edgeq asks the value (``scheme.bits``, ``scheme.group``), never the
string. What a scheme costs in bytes is each backend's own table
(``edgeq.backends.<format>.costs``).

Where a format has more than one kernel for a scheme (ONNX Runtime's int8 linears:
8-bit ``MatMulNBits`` or ``MatMulInteger``), the kernel is part of the scheme:
``int8@matmulinteger`` is ``int8`` computed by the kernel its backend calls
``matmulinteger``; plain ``int8`` is the format's default kernel. Kernels and the
schemes only some formats store (``EXTRA``, e.g. ``int8-g32``) are candidates only where
the backend offers them (its ``extra_schemes``), and its ``scheme_fits`` refuses the rest.

>>> parse("int4-g32").group, parse("INT8").bits
(32, 8)
>>> [s.name for s in allowed(["fp32", "int8"])]
['fp32', 'int8']
>>> parse("int8@matmulinteger").kernel, parse("int8-g32").group
('matmulinteger', 32)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Literal

from edgeq.errors import ConfigError, did_you_mean

INT4_GROUPS = (32, 64, 128)
KERNEL_NAME = re.compile(r"^[a-z][a-z0-9]{0,31}$")  # what may follow '@' in a scheme name


@dataclass(frozen=True)
class Scheme:
    """How one layer's weight is stored. ``algorithm`` ``"rtn"`` means the backend's own
    rounding (ExecuTorch: HQQ scale search for int4; ONNX Runtime: round to nearest)."""

    kind: Literal["float", "int"]
    bits: int
    group: int | None = None  # int: None = one scale per output channel; N = groups of N along K
    symmetric: bool = True
    algorithm: str = "rtn"
    # llama.cpp's K-quant layout: super-blocks of ``group`` (256) weights whose sub-block
    # scales are themselves quantized (named ``int4-k``: the bits say which K type)
    superblock: bool = False
    kernel: str = ""  # "": the format's default kernel for this storage; else one its backend names

    @property
    def name(self) -> str:
        if self.kind == "float":
            return f"fp{self.bits}"
        if self.superblock:
            base = f"int{self.bits}-k"
        else:
            base = f"int{self.bits}" + (f"-g{self.group}" if self.group else "") + ("" if self.symmetric else "-asym")
        base = base if self.algorithm == "rtn" else f"{base}-{self.algorithm}"
        return f"{base}@{self.kernel}" if self.kernel else base

    @property
    def precision(self) -> str:
        """The precision family a target allows it under: fp32, fp16, int8 or int4."""
        return f"{'fp' if self.kind == 'float' else 'int'}{self.bits}"

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_quantized(self) -> bool:
        return self.kind == "int"

    def __str__(self) -> str:
        return self.name


FP32 = Scheme("float", 32)
FP16 = Scheme("float", 16)
INT8 = Scheme("int", 8)
INT4 = {g: Scheme("int", 4, g) for g in INT4_GROUPS}
SCHEMES: tuple[Scheme, ...] = (FP32, FP16, INT8, *INT4.values())
# Schemes whose values an algorithm chooses from calibration data (edgeq.algorithms), in the
# same storage as the RTN scheme of their bits and group: candidates only where there is
# calibration data and the backend declares the algorithm (``CALIBRATED_ALGORITHMS``).
INT4_GPTQ = {g: Scheme("int", 4, g, algorithm="gptq") for g in INT4_GROUPS}
# HQQ (edgeq.algorithms.hqq) needs no data: its scales and zero points come from the weight alone.
INT4_HQQ = {g: Scheme("int", 4, g, algorithm="hqq") for g in INT4_GROUPS}
# AWQ (edgeq.algorithms.awq): a searched input scale, folded into the linear before the layer.
INT4_AWQ = {g: Scheme("int", 4, g, algorithm="awq") for g in INT4_GROUPS}
ALGORITHMS: tuple[str, ...] = ("rtn", "gptq", "hqq", "awq")
DATA_FREE: tuple[str, ...] = ("hqq",)  # algorithms offered without calibration data
CALIBRATED: tuple[Scheme, ...] = (*INT4_GPTQ.values(), *INT4_HQQ.values(), *INT4_AWQ.values())
# Block schemes only some formats store (GGUF: llama.cpp's tensor types beyond Q8_0 / Q4_0):
# int4 / int5 in groups of 32 with an offset (Q4_1, Q5_1) or without (Q5_0), and the
# K-quants: super-blocks of 256 with quantized sub-block scales (int2-k … int6-k = Q2_K …
# Q6_K). A backend offers a scheme only when it lists it in its ``SCHEMES`` (or, as ONNX
# does int4-g32-asym for a decoder's linears, in its ``EXTRA_SCHEMES``).
INT4_G32_ASYM = Scheme("int", 4, 32, symmetric=False)
INT5_G32 = Scheme("int", 5, 32)
INT5_G32_ASYM = Scheme("int", 5, 32, symmetric=False)
K_QUANTS = {b: Scheme("int", b, 256, symmetric=b in (3, 6), superblock=True) for b in (2, 3, 4, 5, 6)}
BLOCK_SCHEMES: tuple[Scheme, ...] = (INT4_G32_ASYM, INT5_G32, INT5_G32_ASYM, *K_QUANTS.values())
# every precision family a scheme belongs to (what a target's ``precisions`` may list)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int6", "int5", "int4", "int3", "int2")
# Stored by some formats only: candidates where a backend's ``extra_schemes`` offers them.
# int8-g32: symmetric 8-bit blocks of 32 along K (ONNX Runtime's 8-bit MatMulNBits at block
# 32; the storage of GGUF's Q8_0).
INT8_G32 = Scheme("int", 8, 32)
EXTRA: tuple[Scheme, ...] = (INT8_G32,)
NAMES: tuple[str, ...] = tuple(s.name for s in SCHEMES + CALIBRATED + BLOCK_SCHEMES + EXTRA)
_BY_NAME = {s.name: s for s in SCHEMES + CALIBRATED + BLOCK_SCHEMES + EXTRA}


def parse(text: object, where: str = "") -> Scheme:
    """The scheme named ``text`` (case-insensitive); ``ConfigError`` naming ``where`` otherwise."""
    if isinstance(text, Scheme):
        return text
    found = None
    if isinstance(text, str):
        base, at, kernel = text.strip().lower().partition("@")
        found = _BY_NAME.get(base)
        if found is not None and at:
            found = replace(found, kernel=kernel) if KERNEL_NAME.match(kernel) and found.is_quantized else None
    if found is None:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown scheme '{text}'{did_you_mean(str(text), NAMES)}",
                          f"schemes: {', '.join(NAMES)}")
    return found


MAX_RULE_PATTERN = 500  # characters: a rule is a layer-name pattern, not a program


def parse_rule(rule: str) -> tuple[re.Pattern[str], Scheme]:
    """A ``REGEX=SCHEME`` rule (``--rule``, a target's ``quantization.default_rules``) as its
    compiled pattern and scheme; ``ConfigError`` saying what is wrong otherwise."""
    if "=" not in rule:
        raise ConfigError(f"rule '{rule}' is not of the form REGEX=SCHEME", "e.g. --rule 'attention.output=int8'")
    pattern, name = rule.rsplit("=", 1)
    scheme = parse(name, f"rule '{rule}'")
    if len(pattern) > MAX_RULE_PATTERN:
        raise ConfigError(f"rule '{rule[:40]}…': the pattern is longer than {MAX_RULE_PATTERN} characters", "shorten it")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"rule '{rule}': bad regular expression ({exc})", "fix the pattern") from None
    return regex, scheme


UNUSED = "unused"  # what manifests record for a layer the artifact never calls


def applied(name: str) -> Scheme | None:
    """A manifest's per-layer entry: the scheme, or None for ``"unused"``."""
    return None if name == UNUSED else parse(name)


def for_precision(precision: str, int4_group: int = 32) -> Scheme:
    """The scheme a uniform ``--precision`` means (int4 at the target's group size; a family
    only block formats store: its first block scheme, e.g. int5 → int5-g32, int6 → int6-k)."""
    if precision == "int4":
        return INT4[int4_group]
    if precision in _BY_NAME:
        return _BY_NAME[precision]
    return next(s for s in BLOCK_SCHEMES if s.precision == precision)


def allowed(precisions: Iterable[str], offered: Iterable[Scheme] | None = None) -> list[Scheme]:
    """Every scheme of ``offered`` (a backend's ``SCHEMES``; default ``SCHEMES``) whose
    precision family is in ``precisions``, in ``offered``'s order.

    >>> [s.name for s in allowed(["int5"], BLOCK_SCHEMES)]
    ['int5-g32', 'int5-g32-asym', 'int5-k']
    """
    wanted = set(precisions)
    return [s for s in (SCHEMES if offered is None else offered) if s.precision in wanted]


def calibrated(precisions: Iterable[str], algorithms: Iterable[str]) -> list[Scheme]:
    """The calibrated schemes (``CALIBRATED``) of ``algorithms`` whose precision family is
    in ``precisions``.

    >>> [s.name for s in calibrated(["int4"], ["gptq"])]
    ['int4-g32-gptq', 'int4-g64-gptq', 'int4-g128-gptq']
    >>> [s.name for s in calibrated(["int4"], ["hqq"])]
    ['int4-g32-hqq', 'int4-g64-hqq', 'int4-g128-hqq']
    """
    wanted, names = set(precisions), set(algorithms)
    return [s for s in CALIBRATED if s.precision in wanted and s.algorithm in names]


def rtn_of(scheme: Scheme) -> Scheme:
    """The round-to-nearest scheme with ``scheme``'s storage (itself when it is one)."""
    return replace(scheme, algorithm="rtn")


def default_kernel(scheme: Scheme) -> Scheme:
    """``scheme`` computed by its format's default kernel (``int8@matmulinteger`` → ``int8``)."""
    return replace(scheme, kernel="")
