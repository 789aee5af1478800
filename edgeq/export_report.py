"""Rendering results for people: the export summary."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def print_export_summary(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result.manifest.model_dump(mode="json")  # the rows below read the JSON they describe
    sizes = m["sizes"]
    num = m.get("numerics") or {}
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("target", f"{m['target']['name']} ({m['target']['device']}, {m['target']['format']})")
    table.add_row("model", f"{m['model']['name']} ({m['model']['task']})")
    table.add_row("precision", f"{m['precision']['requested']}  ({_counts(m['precision']['layer_counts'])})")
    table.add_row("FP32 weights", human_bytes(sizes["fp32_weight_bytes"]))
    cut = 1 - sizes["artifact_bytes"] / sizes["fp32_weight_bytes"]
    change = f"{cut:.1%} smaller" if cut >= 0 else f"{-cut:.1%} larger"
    table.add_row("artifact", f"{human_bytes(sizes['artifact_bytes'])}  ({change} than the FP32 weights)")
    deleg = m["delegation"]
    used = ", ".join(f"{d} ({n} ops)" for d, n in deleg["delegated_ops"].items()) or "none"
    table.add_row("delegates", f"{used}; portable CPU path: {deleg['portable_op_count']} ops")
    if num:
        fidelity = f"cosine mean {num['cosine_mean']:.4f}, min {num['cosine_min']:.4f}, max-abs {num['max_abs']:.3g}"
        if num.get("top1_agreement") is not None:
            fidelity += f", top-1 {num['top1_agreement']:.1%}"
        table.add_row("fidelity", f"{fidelity}\n[dim]{num['samples']} held-out inputs ({num['inputs']}); ran in {num['runtime']}[/]")
    else:
        table.add_row("fidelity", "[yellow]not verified[/] (" + m.get("numerics_skipped", "") + ")")
    b = m["budgets"]
    plan = m.get("plan") or {}
    storage_mb = plan["budget_bytes"] / 1e6 if plan.get("budget_bytes") else b["storage_mb"]
    table.add_row("storage budget", _budget(sizes["artifact_bytes"], storage_mb))
    mem = m.get("memory", {})
    if mem.get("predicted"):
        p = mem["predicted"]
        table.add_row("memory budget", _budget(p["total_bytes"], mem["budget_bytes"] / 1e6) + (
            f"\n[dim]predicted peak (estimate): weights as held {human_bytes(p['weights_bytes'])} + activations "
            f"{human_bytes(p['activation_bytes'])} + runtime {human_bytes(p['runtime_overhead_bytes'])}[/]"))
    lm_mem = (m.get("llm") or {}).get("predicted_memory")
    if lm_mem:
        budget_mb = (mem.get("budget_bytes") or 0) / 1e6
        fit = _budget(lm_mem["total_bytes"], budget_mb) if budget_mb else human_bytes(lm_mem["total_bytes"])
        load = lm_mem.get("load_bytes", 0)  # the total is the higher of the load and the generation
        at_load = (f"; the peak is the load's, {human_bytes(load)}: weights as stored, the largest converted twice, "
                   "the arena and the runtime" if load and load >= lm_mem["total_bytes"] else "")
        table.add_row("LLM memory", f"{fit}\n[dim]predicted peak (estimate) generating up to {lm_mem['context']} tokens "
                      f"after a {lm_mem['prompt_tokens']}-token prompt: weights as held {human_bytes(lm_mem['weights_bytes'])}"
                      f" + KV cache {human_bytes(lm_mem['kv_cache_bytes'])} ({lm_mem['kv_cache_dtype']}) + activations "
                      f"{human_bytes(lm_mem['activation_bytes'])} + runtime {human_bytes(lm_mem['runtime_overhead_bytes'])}"
                      f"{at_load}; process peak RSS with a Python runtime {human_bytes(lm_mem['peak_rss_bytes'])}[/]")
    ppl = (m.get("llm") or {}).get("perplexity")
    if ppl:
        table.add_row("perplexity", f"{ppl['perplexity']:.3f} ({ppl['increase']:+.2%} over "
                      f"{ppl['reference_perplexity']:.3f} in transformers)\n[dim]{ppl['tokens']} tokens in "
                      f"{ppl['windows']} windows of {ppl['text']}; ran in {ppl['runtime']}[/]")
    if plan:
        table.add_row("plan", f"predicted error {plan['predicted_error']:.4g}, verified "
                      + (f"{plan['verified_error']:.4g}" if plan.get("verified_error") is not None else "n/a")
                      + f" ({plan['error_metric']}); decided by: {plan.get('binding') or 'n/a'}")
        if plan.get("predicted_latency_ms") is not None:
            budget = f", budget {plan['latency_budget_ms']:g} ms" if plan.get("latency_budget_ms") else ""
            drift = ""
            if plan.get("latency_reference_now_ms") and plan.get("latency_reference_ms"):
                ratio = plan["latency_reference_now_ms"] / plan["latency_reference_ms"]
                drift = (f"\n[dim]the host ran the fp32 graph {ratio:.2f}× as long as when the layers were "
                         f"timed: {plan['predicted_latency_ms'] * ratio:.2f} ms predicted at its speed now[/]")
            table.add_row("latency", f"p50 {plan['predicted_latency_ms']:.2f} ms predicted, "
                          f"{plan['measured_latency_ms']:.2f} ms measured on this host{budget}{drift}")
    table.add_row("written to", str(result.artifact_dir))
    console = Console()
    console.print(table)
    for note in m.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in counts.items()) + " layers"


def _budget(actual_bytes: float, budget_mb: float) -> str:
    share = actual_bytes / (budget_mb * 1e6)
    mark = "[green]fits[/]" if share <= 1 else "[red]over[/]"
    return f"{mark}: {human_bytes(actual_bytes)} of {budget_mb:g} MB ({share:.0%})"


def print_plan(result: Any, written_to: Any = None) -> None:
    from rich.console import Console

    from edgeq.planning.latency_bound import BALANCED_MARGIN
    from rich.table import Table

    table = Table(title=f"Plan for {result.model} on {result.target} ({result.fmt})", title_justify="left")
    timings = result.latency.layers if result.latency is not None else None
    for col in ("layer", "scheme", "bytes", "sensitivity", "cumulative") + (("ms",) if timings else ()):
        table.add_column(col, justify="right" if col != "layer" else "left")
    total = result.other_bytes
    for layer in result.layers:
        scheme = result.plan.schemes[layer.fqn].name
        total += result.layer_bytes[layer.fqn]
        pinned = " (pinned)" if layer.fqn in result.pinned else ""
        ms = (f"{timings[layer.fqn][scheme]:.3f}",) if timings else ()
        table.add_row(layer.fqn, scheme + pinned, human_bytes(result.layer_bytes[layer.fqn]),
                      f"{result.sensitivity[layer.fqn][scheme]:.2e}", human_bytes(total), *ms)
    console = Console()
    console.print(table)
    src = result.budget_sources
    budget = f" of a {human_bytes(result.budget_bytes)} budget ({src.get('storage', '')})" if result.budget_bytes else ""
    console.print(f"predicted size {human_bytes(result.predicted_bytes)}{budget} "
                  f"(other constants {human_bytes(result.other_bytes)}, file overhead "
                  f"{human_bytes(result.file_overhead_bytes)} estimated); predicted error {result.predicted_error:.4g}")
    for fqn, why in result.plan.reasons.items():
        if fqn not in result.pinned:
            console.print(f"  {fqn}: {why}")
    if result.memory is not None:
        m = result.memory
        budget = (f" of a {human_bytes(result.memory_budget_bytes)} budget ({src.get('memory', '')})"
                  if result.memory_budget_bytes else "")
        console.print(f"predicted peak memory {human_bytes(m.total_bytes)}{budget} \\[estimate: weights as held "
                      f"{human_bytes(m.weights_bytes)} + activations {human_bytes(m.activation_bytes)} + runtime "
                      f"{human_bytes(m.runtime_overhead_bytes)}; beyond the runtime's own baseline]")
    if result.excluded:
        console.print(f"{len(result.excluded)} layer(s) cannot take every scheme the target allows:")
        for line in excluded_lines(result.excluded):
            console.print("  " + line)
    for algorithm, why in getattr(result, "not_measured", {}).items():
        console.print(f"{algorithm} schemes were not candidates: {why}")
    if result.predicted_latency_ms is not None:
        budget = (f" of a {result.latency_budget_ms:g} ms budget ({src.get('latency', '')})"
                  if result.latency_budget_ms is not None else "")
        gap = (f"; within {result.latency_gap:.2g} predicted error of the best plan in the budget (Lagrangian bound)"
               if result.latency_gap else "")
        console.print(f"predicted latency p50 {result.predicted_latency_ms:.2f} ms{budget} \[rest of the graph "
                      f"{result.latency.remainder_ms:.2f} ms; {result.latency.source}]{gap}")
    if result.binding:
        console.print({"storage": "the storage budget decided the plan",
                       "memory": "the memory budget decided the plan",
                       "max-drop": "--max-drop decided the plan (smallest within the error bound)",
                       "latency": "the latency budget decided the plan",
                       "latency + storage/memory": "the latency budget and the storage or memory budget decided the plan",
                       "none": "neither budget binds: every layer has its most accurate scheme"}.get(
                          result.binding, f"decided by: {result.binding}"))
    if result.objective == "balanced" and result.latency_budget_ms is None:
        within = f" at the target's default precision ({', '.join(result.families)})" if result.families else ""
        console.print(f"objective balanced: the fastest plan{within} within a predicted error of "
                      f"{BALANCED_MARGIN:g} of the most accurate one")
    if written_to:
        console.print(f"plan written to {written_to}; use it with 'edgeq export --plan {written_to}'")


def excluded_lines(excluded: dict[str, dict[str, str]], shown: int = 3) -> list[str]:
    """One line per (scheme, reason) with the layers it excludes (a few named, the rest
    counted): a 30-block LLM repeats the same reason for ~200 layers."""
    groups: dict[tuple[str, str], list[str]] = {}
    for fqn, why in excluded.items():
        for scheme, reason in why.items():
            groups.setdefault((scheme, reason), []).append(fqn)
    lines = []
    for (scheme, reason), fqns in groups.items():
        named = ", ".join(fqns[:shown]) + (f" and {len(fqns) - shown} more" if len(fqns) > shown else "")
        lines.append(f"{scheme} ({reason}): {named}")
    return lines
