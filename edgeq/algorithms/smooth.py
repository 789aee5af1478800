"""Activation-aware scaling of a decoder LLM's quantized linears: SmoothQuant's and AWQ's scales.

Both divide each input channel ``j`` of a group of linears by a scale ``s_j``, multiply the
weights' column ``j`` by it, and fold the division into the op that produces the input: the
same function in fp32, with different rounding once quantized.

- **SmoothQuant** (``s_j = max|x_j|^α / max|W_:,j|^(1-α)``) is for the int8 dynamic
  activations every quantized decoder linear rounds its input to (ExecuTorch's 8da8w /
  8da4w per token; ONNX Runtime's ``MatMulNBits`` at ``accuracy_level=4`` per block): a few
  input channels carry far larger values than the rest (the norms' weights amplify them),
  and one scale per token spends int8's range on them. The scale moves those outliers into
  the weight, whose own (per-channel or per-group) scales absorb them better.
- **AWQ** (``s_j = mean|x_j|^α``, over the geometric mean of its extremes) is for the
  weights' rounding: the channels that carry large inputs are the salient ones, and scaling
  their weight columns up before rounding gives them finer steps of the grid.

The scale is searched per fold (``edgeq.algorithms.scale_search``) among ``CANDIDATES``
(either method at each of its exponents) and no scaling at all, on sampled calibration
inputs through the format's own stand-in of each linear at its planned scheme (weight and
activation rounding; a large linear's on evenly spaced output rows, which its stand-in
computes exactly), so a fold is made only where it reproduces the fp32 outputs better; ``--algorithms`` may narrow the methods
(``methods_offered``). The division is folded into the op that produces the input, so no op
is added:

- q/k/v (one shared ``s``) into the layer's input RMSNorm weight; gate/up into the MLP's
  input RMSNorm weight (post-attention; Gemma 2 / 3's pre-feedforward); the LM head into the
  final norm's weight (the head then holds its own copy of a tied table, which ExecuTorch
  stores anyway);
- down_proj into up_proj's output rows (``act(gate) * up`` is linear in up);
- o_proj into v_proj's output rows, one ``s`` per value channel shared by the query heads
  that read it (grouped-query attention).

A BERT-style encoder's folds (``kind="input"``: an explicit division before the linears)
are ``edgeq.algorithms.smooth_encoder``'s.

The statistics (``max|x_j|``, ``mean|x_j|``) and the sampled inputs come from the calibration
text (never the perplexity text), one forward of the fp32 model over it in sequences of up
to ``SEQUENCE`` tokens. A fold is made only where every linear reading that input is at a
round-to-nearest integer scheme (a calibrated layer's values were chosen for its unscaled
input) and the fold's source is an op edgeq knows how to scale exactly (``NORMS``, or a
linear whose values are its own rounding: up_proj / v_proj at fp32 or RTN, not GPTQ's); the
rest stay as they are, and ``Smoothing.skipped`` says why. The result is checked to
compute the model's own logits in fp32 (tests/test_smooth.py).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeq.algorithms.scale_search import CANDIDATES, METHODS, as_choice, choose_scale, fold_scale, per_row

REVISION = 2
# RMSNorms that compute ``weight * normalized(x)``: dividing ``weight`` by s divides the output by s.
NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm", "SmolLM3RMSNorm")
# Gemma's compute ``(1 + weight) * normalized(x)``: ``weight`` becomes ``(1 + weight) / s - 1``.
SHIFTED_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


@dataclass(frozen=True)
class Fold:
    source: str  # the module whose output the linears read
    kind: str  # "norm" | "rows" (up_proj → down_proj) | "value" (v_proj → o_proj) | "input" (an explicit Div)
    linears: tuple[str, ...]


def folds(module: Any) -> tuple[list[Fold], dict[str, str]]:
    """The folds of a Llama-style decoder ``module`` (a transformers ``*ForCausalLM``), and
    for each place that has none, why."""
    from torch import nn

    modules = dict(module.named_modules())
    out: list[Fold] = []
    skipped: dict[str, str] = {}
    config = getattr(module, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    kv = getattr(text, "num_key_value_heads", None) or heads

    def linear(name: str) -> bool:
        return isinstance(modules.get(name), nn.Linear)

    def norm(source: str, linears: tuple[str, ...]) -> None:
        if source not in modules or not all(linear(f) for f in linears):
            return
        if type(modules[source]).__name__ not in NORMS + SHIFTED_NORMS:
            skipped[source] = f"{type(modules[source]).__name__} is not a norm edgeq scales exactly"
            return
        out.append(Fold(source, "norm", linears))

    for name, layer in modules.items():
        if not (hasattr(layer, "input_layernorm") and hasattr(layer, "self_attn") and hasattr(layer, "mlp")):
            continue
        attn, mlp = f"{name}.self_attn", f"{name}.mlp"
        norm(f"{name}.input_layernorm", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"))
        # the MLP's input norm (Gemma 2 / 3 normalize the attention's output with post_attention_layernorm)
        mlp_in = ("pre_feedforward_layernorm" if hasattr(layer, "pre_feedforward_layernorm")
                  else "post_attention_layernorm")
        norm(f"{name}.{mlp_in}", (f"{mlp}.gate_proj", f"{mlp}.up_proj"))
        if linear(f"{mlp}.up_proj") and linear(f"{mlp}.down_proj"):
            out.append(Fold(f"{mlp}.up_proj", "rows", (f"{mlp}.down_proj",)))
        if linear(f"{attn}.v_proj") and linear(f"{attn}.o_proj"):
            if heads and kv and heads % kv == 0 and modules[f"{attn}.o_proj"].in_features % heads == 0:
                out.append(Fold(f"{attn}.v_proj", "value", (f"{attn}.o_proj",)))
            else:
                skipped[f"{attn}.v_proj"] = "attention heads edgeq cannot map onto the value channels"
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    final = next((f"{n}.norm" for n, m in modules.items() if hasattr(m, "layers") and f"{n}.norm" in modules), None)
    head_name = next((n for n, m in modules.items() if m is head), None)
    if final is not None and head_name is not None:
        norm(final, (head_name,))
    return out, skipped


@dataclass
class Statistics:
    """A calibration pass: each linear's per-input-channel ``max|x|`` and ``mean|x|`` over
    every token, and up to ``SAMPLE_TOKENS`` of its input rows (spread over the text) to
    judge a fold by."""

    absmax: dict[str, Any]
    samples: dict[str, Any]
    tokens: int
    digest: str
    absmean: dict[str, Any] = field(default_factory=dict)


SAMPLE_TOKENS = 512
SEQUENCE = 512  # calibration sentences joined into sequences of this many tokens (long-context activations)


def methods_offered(algorithms: list[str] | None) -> tuple[str, ...]:
    """The scale forms an export searches: both unless ``--algorithms`` names some (``rtn``
    alone: none, the plain round-to-nearest values)."""
    return METHODS if algorithms is None else tuple(m for m in METHODS if m in algorithms)


def statistics(module: Any, linears: list[str], rows: list[tuple[Any, ...]], trim: bool = True) -> Statistics:
    """One fp32 forward of ``module`` over each of ``rows`` (calibration ids), recording what
    each named linear reads. ``trim``: cut each row to its real tokens first (False: as the
    artifact runs them, padding included: a per-tensor int8 input's range spans it too)."""
    import torch

    from edgeq.algorithms.calibrated import _trimmed

    modules = dict(module.named_modules())
    rows = [_trimmed(r) for r in rows] if trim else list(rows)
    total = sum(int(r[0].numel()) for r in rows)
    stride = max(1, -(-total // SAMPLE_TOKENS))
    absmax: dict[str, Any] = {}
    abssum: dict[str, Any] = {}
    picked: dict[str, list[Any]] = {f: [] for f in linears}
    offset = [0]

    def take(name: str, x: Any) -> None:
        flat = x.detach().flatten(0, -2).float()
        a = flat.abs().amax(0)
        absmax[name] = a if name not in absmax else torch.maximum(absmax[name], a)
        b = flat.abs().sum(0, dtype=torch.float64)
        abssum[name] = b if name not in abssum else abssum[name] + b
        first = (-offset[0]) % stride
        picked[name].append(flat[first::stride].clone())

    hooks = [modules[f].register_forward_pre_hook(lambda _m, args, f=f: take(f, args[0])) for f in linears]
    digest = hashlib.sha256()
    try:
        with torch.no_grad():
            for row in rows:
                for t in row:
                    digest.update(t.contiguous().numpy().tobytes())
                module(*row)
                offset[0] += int(row[0].numel())
    finally:
        for h in hooks:
            h.remove()
    samples = {f: torch.cat(v) for f, v in picked.items() if v}
    absmean = {f: (v / max(total, 1)).float() for f, v in abssum.items()}
    return Statistics(absmax, samples, total, digest.hexdigest(), absmean)


def smoothed(module: Any, stats: Statistics, takes: Callable[[str], str],
             alpha: Callable[[Fold], tuple[str, float] | float | None],
             keeps: Callable[[str], str] = lambda fqn: "", in_place: bool = False,
             ) -> tuple[Any, dict[str, dict[str, Any]], dict[str, str]]:
    """A copy of ``module`` with each fold whose linears all take smoothing applied with the
    scale ``alpha(fold)`` names (a method of ``CANDIDATES`` and its exponent, a bare α meaning
    SmoothQuant's; None: not made). ``takes(fqn)``: why linear ``fqn`` is not to be smoothed
    ("" when it is); ``keeps(fqn)``: why linear ``fqn`` may not be the fold's source, whose
    output rows take the division ("" when it may: e.g. a GPTQ layer's values were computed
    for its unscaled weights and would drop it). Returns the copy, the folds made (source →
    linears, α, range of s) and the ones not made (source → why). ``in_place``: ``module``
    itself takes the folds (a copy its caller made and needs no more unscaled)."""
    import torch

    plan, skipped = folds(module)
    modules = dict(module.named_modules())
    chosen: list[tuple[Fold, tuple[str, float]]] = []
    for fold in plan:
        why = next((f"{f}: {w}" for f in fold.linears if (w := takes(f))), "")
        if not why and fold.kind != "norm" and (w := keeps(fold.source)):
            why = f"{fold.source}: {w}"
        if not why and any(f not in stats.absmax for f in fold.linears):
            why = "no calibration statistics for its linears"
        if why:
            skipped[fold.source] = why
            continue
        a = alpha(fold)
        if a is None:
            skipped[fold.source] = "no scale reproduced the calibration outputs better than none"
        else:
            chosen.append((fold, as_choice(a)))
    if not chosen:
        return module, {}, skipped
    scales = {fold.source: fold_scale(module, fold, stats, modules, a) for fold, a in chosen}
    out = module if in_place else copy.deepcopy(module)
    copied = dict(out.named_modules())
    made: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for fold, a in chosen:
            s = scales[fold.source]
            made[fold.source] = {"linears": list(fold.linears), "method": a[0], "alpha": a[1],
                                 "scale_range": [round(float(s.min()), 4), round(float(s.max()), 4)]}
            for f in fold.linears:
                lin = copied[f]
                lin.weight = torch.nn.Parameter(lin.weight.detach() * s.to(lin.weight.dtype), requires_grad=False)
            src = copied[fold.source]
            inv = (1 / per_row(out, fold, s)).to(src.weight.dtype)
            if fold.kind == "norm" and type(src).__name__ in SHIFTED_NORMS:
                shifted = ((1 + src.weight.detach().double()) * inv.double() - 1).to(src.weight.dtype)
                src.weight = torch.nn.Parameter(shifted, requires_grad=False)
            elif fold.kind == "norm":
                src.weight = torch.nn.Parameter(src.weight.detach() * inv, requires_grad=False)
            else:  # a linear's output rows
                src.weight = torch.nn.Parameter(src.weight.detach() * inv[:, None], requires_grad=False)
            if getattr(src, "bias", None) is not None:
                src.bias = torch.nn.Parameter(src.bias.detach() * inv, requires_grad=False)
    head = out.get_output_embeddings() if hasattr(out, "get_output_embeddings") else None
    if head is not None and any(copied.get(f) is head for fold, _ in chosen for f in fold.linears):
        for config in {id(c): c for c in (out.config, out.config.get_text_config())}.values():
            config.tie_word_embeddings = False  # the head now holds its own scaled copy
    return out, made, skipped


def joined(rows: list[tuple[Any, ...]], length: int = SEQUENCE) -> list[tuple[Any, ...]]:
    """Calibration rows (one sentence each, ``(ids, mask)`` or ``(ids,)``) joined end to end
    into sequences of up to ``length`` tokens: a decoder's activations deep into a context
    are what its quantized linears see when generating."""
    import torch

    from edgeq.algorithms.calibrated import _trimmed

    ids = [int(t) for r in rows for t in _trimmed(r)[0].reshape(-1)]
    return [(torch.tensor([ids[i:i + length]]),) for i in range(0, len(ids), length)]


class PlanSmoothing:
    """Smoothing for one export: the calibration pass once (``statistics``), then per plan the
    module to lower and the manifest's record (``llm.smoothing``)."""

    def __init__(self, loaded: Any, model: Any, backend: Any, steps: Any, methods: tuple[str, ...] = METHODS,
                 in_place: bool = False) -> None:
        self.loaded, self.model, self.backend, self.steps = loaded, model, backend, steps
        self.methods, self.in_place = methods, in_place  # in_place: ``model`` is a copy one plan may scale
        self._stats: Statistics | None = None

    def _statistics(self) -> Statistics:
        if self._stats is None:
            from edgeq.algorithms.calibrated import LM_CALIB_SAMPLES

            linears = sorted({f for fold in folds(self.model)[0] for f in fold.linears})
            rows = joined(self.loaded.make_inputs("calib", LM_CALIB_SAMPLES))
            self._stats = statistics(self.model, linears, rows)
        return self._stats

    def apply(self, plan: Any) -> tuple[Any, dict[str, Any] | None]:
        from edgeq.algorithms.calibrated import calibration_source

        source = calibration_source(self.loaded)
        if source is None:
            self.steps.note("no smoothing of int8 activations: the model has no calibration text (pass --calib)")
            return self.model, None
        schemes, be = plan.schemes, self.backend
        tied = _tied_head(self.model)

        def takes(fqn: str) -> str:
            s = schemes.get(fqn)
            if s is None or not s.is_quantized:
                return "not quantized"
            if s.algorithm != "rtn":
                return f"{s.name}'s values were chosen for its unscaled input"
            if fqn in tied and schemes.get(tied[fqn]) == s and be.tied_head_shares_table(s):
                return "shares the table's tensor (a scaled head would need a copy of its own)"
            return ""

        def keeps(fqn: str) -> str:  # a linear whose output rows a fold divides
            s = schemes.get(fqn)
            if s is not None and s.is_quantized and s.algorithm != "rtn":
                return f"{s.name}'s values were computed for its unscaled weights"
            return ""

        if not any(all(not takes(f) for f in fold.linears) for fold in folds(self.model)[0]):
            return self.model, None  # nothing to smooth (e.g. an fp32 export): no calibration pass

        def quantize(linear: Any, fqn: str) -> Any:
            with be.lm_numerics():
                return be.stand_in(linear, schemes[fqn])

        with self.steps.step("Activation-aware scaling of the quantized linears (calibration text)") as info:
            stats = self._statistics()
            modules = dict(self.model.named_modules())
            module, made, skipped = smoothed(
                self.model, stats, takes, lambda fold: choose_scale(fold, stats, modules, quantize, self.model, self.methods),
                keeps, in_place=self.in_place)
            methods: dict[str, int] = {}
            for fold in made.values():
                methods[fold["method"]] = methods.get(fold["method"], 0) + 1
            info.detail = (f"{len(made)} of {len(made) + len(skipped)} folds made "
                           f"({', '.join(f'{n} {m}' for m, n in sorted(methods.items())) or 'none'}), "
                           f"{stats.tokens} tokens")
        record = {"method": "activation-aware scaling", "revision": REVISION, "calibration": source,
                  "tokens": stats.tokens, "sha256": stats.digest,
                  "searched": {m: [a for c, a in CANDIDATES if c == m] for m in self.methods},
                  "folds": made, "skipped": skipped}
        return module, record


def _tied_head(module: Any) -> dict[str, str]:
    """``{head fqn: table fqn}`` when the output head shares the input table's weight, else {}."""
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    table = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    if head is None or table is None or head.weight is not table.weight:
        return {}
    names = {id(m): n for n, m in module.named_modules()}
    return {names[id(head)]: names[id(table)]}
