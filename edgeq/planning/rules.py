"""Which schemes a layer may take: the target's precisions, the layer's shape, and the
user's ``REGEX=SCHEME`` rules (checked without the model, applied to its layers)."""

from __future__ import annotations

import re
from typing import Any, Iterable

from edgeq.errors import ConfigError
from edgeq.planning.inventory import LayerInfo
from edgeq.schemes import Scheme, allowed, parse_rule


def candidate_schemes(layer: LayerInfo, precisions: list[str], offered: Iterable[Scheme] | None = None) -> list[Scheme]:
    """Schemes of ``offered`` (the format's ``SCHEMES``; default ``edgeq.schemes.SCHEMES``) the
    target's ``precisions`` allow that this layer's kind and shape can take."""
    return [s for s in allowed(precisions, offered) if layer.fits(s) and not (layer.kind == "conv" and s.bits == 4)]


def excluded_schemes(layer: LayerInfo, precisions: list[str], offered: Iterable[Scheme] | None = None) -> dict[str, str]:
    """Schemes the target allows that ``layer`` cannot take, with the reason."""
    out = {}
    for scheme in allowed(precisions, offered):
        if scheme.is_float:
            continue
        if layer.kind == "conv" and scheme.bits == 4:
            out[scheme.name] = "no int4 convolution kernels in the backends"
        elif not layer.fits(scheme):
            out[scheme.name] = f"reduction dim {layer.params // layer.shape[0]} is not a multiple of {scheme.group}"
    return out


def check_rules(rules: list[str]) -> list[tuple[str, "re.Pattern[str]", Scheme]]:
    """Parse ``["regex=scheme", ...]`` without the model: ``(rule, regex, scheme)`` each."""
    return [(rule, *parse_rule(rule)) for rule in rules]


def parse_rules(rules: list[str], layers: list[LayerInfo]) -> dict[str, Scheme]:
    """``["regex=scheme", ...]`` → pinned ``{fqn: scheme}``; every rule must match a layer."""
    pinned: dict[str, Scheme] = {}
    names = [layer.fqn for layer in layers]
    for rule, regex, scheme in check_rules(rules):
        matched = [n for n in names if regex.search(n)]
        if not matched:
            from edgeq.errors import did_you_mean

            raise ConfigError(f"rule '{rule}' matches no layer{did_you_mean(rule.rsplit('=', 1)[0], names)}",
                              "run 'edgeq plan' to see the layer names")
        for n in matched:
            pinned[n] = scheme
    return pinned


def with_default_rules(plan: Any, layers: list[LayerInfo], rules: list[str], target: str, cannot: Any,
                       keep_fp32: list[str]) -> tuple[Any, list[str]]:
    """``plan`` (the target's uniform default) with its ``quantization.default_rules`` applied:
    each rule's scheme on the layers it matches (later rules win) that ``keep_fp32`` (the
    target's patterns) does not keep and
    whose kind and shape take it (``cannot(layer, scheme)``: the format's reason it cannot).
    Returns the plan and one note per rule (a target's rules are generic: one may match no layer
    of this model)."""
    from dataclasses import replace

    schemes, reasons, notes = dict(plan.schemes), dict(plan.reasons), []
    keep = [re.compile(p) for p in keep_fp32]
    kept = {x.fqn for x in layers if any(p.search(x.fqn) for p in keep)}
    for rule, regex, scheme in check_rules(rules):
        took, refused = 0, 0
        for layer in layers:
            if not regex.search(layer.fqn) or layer.fqn in kept:
                continue
            why = "" if layer.fits(scheme) else f"its shape {list(layer.shape)} does not take it"
            why = why or cannot(layer, scheme)
            if why:
                refused += 1
                continue
            schemes[layer.fqn] = scheme
            reasons.pop(layer.fqn, None)
            took += 1
        if took or refused:
            notes.append(f"target {target}'s default rule '{rule}': {took} layer(s)"
                         + (f" ({refused} matched but cannot take {scheme.name}: left as they were)" if refused else ""))
        else:
            notes.append(f"target {target}'s default rule '{rule}' matches no layer of this model")
    return replace(plan, schemes=schemes, reasons=reasons), notes


def check_default_rules(target: Any) -> None:
    """``ConfigError`` for a ``quantization.default_rules`` scheme ``target``'s format does not
    store, or a kernel it does not have (asked of the format for a linear, kernels' only kind)."""
    from edgeq.backends import check_stored, get_backend

    backend = get_backend(target.format)
    for rule, _regex, scheme in check_rules(target.quantization.default_rules):
        where = f"target {target.name}: quantization.default_rules '{rule}'"
        try:
            check_stored([scheme], backend)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", exc.hint) from None
        if scheme.kernel and (why := backend.scheme_fits(LayerInfo("linear", "linear", (64, 64), 64 * 64), scheme)):
            raise ConfigError(f"{where}: {why}", "fix the rule in the target's YAML")
