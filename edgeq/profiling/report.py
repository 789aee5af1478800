"""Rendering profile reports: a rich table in the terminal, and a self-contained HTML page
with matplotlib plots (PNG, base64-embedded): latency distribution, per-op bars, and
estimated vs measured latency when both are there.

Reports are the dicts of ``edgeq.profiling`` (``mode`` host / device: measured;
``mode`` emulated: an estimate, always labelled so).
"""

from __future__ import annotations

import html
import sys
from pathlib import Path
from typing import Any

from edgeq.profiling import compare, label, p50_ms
from edgeq.export_report import human_bytes

TOP_OPS = 12
BACKEND_COLORS = {"portable": "#d62728", "CPU": "#1f77b4", "xnnpack": "#2ca02c", "delegate": "#9467bd"}
BOUND_COLORS = {"compute": "#ff7f0e", "memory": "#1f77b4"}


# ---------------------------------------------------------------------------- terminal


def print_profiles(reports: list[dict[str, Any]]) -> None:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    for report in reports:
        if report.get("estimate"):
            _print_estimate(console, report)
        else:
            _print_measured(console, report)
        console.print()
    if len(reports) > 1:
        _print_compare(console, reports)


def _kv_table() -> Any:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    return table


def _print_measured(console: Any, r: dict[str, Any]) -> None:
    where = f"device {r['device']}" if r.get("mode") == "device" else "this machine"
    console.print(f"[bold]{label(r)}[/] — measured on {where}")
    t = _kv_table()
    t.add_row("artifact", f"{r['artifact']}  ({r['model_file']}, {r.get('runtime')}, {r.get('precision')}, "
                          f"target {r.get('target')})")
    h = r.get("host") or {}
    load = " ".join(f"{x:g}" for x in h.get("loadavg") or [])
    t.add_row("host", f"{h.get('cpu_model')}, {h.get('usable_cores')} cores, {h.get('machine')}"
                      + (f", load average {load}" if load else ""))
    th = r.get("threads") or {}
    threads = f"{th.get('used') if th.get('used') is not None else 'runtime default'} ({th.get('source')})"
    if th.get("note"):
        threads = f"{th.get('used')} ({th['note']})"
    t.add_row("threads", threads)
    t.add_row("runs", f"{r['runs']} timed after {r['warmup']} warm-up" + (" generations" if r.get("llm") else ""))
    lat = r["latency_ms"]
    lm = r.get("llm")
    if lm:
        t.add_row("generation", f"prompt {lm['prompt_tokens']} tokens (seeded ids), {lm['new_tokens']} new tokens "
                                f"(greedy, no stop token); context {lm['max_context']}")
        t.add_row("tokens/s", f"prefill [bold]{lm['prefill_tokens_per_s']:.1f}[/], decode [bold]"
                              f"{lm['decode_tokens_per_s']:.1f}[/]; time to first token {_ms(lm['time_to_first_token_ms'])} ms "
                              "(medians over the timed runs)")
    t.add_row("latency" if not lm else "per token", f"min {_ms(lat['min'])}  p50 [bold]{_ms(lat['p50'])}[/]  p90 {_ms(lat['p90'])}  "
                         f"max {_ms(lat['max'])}  mean {_ms(lat['mean'])} ms (sd {_ms(lat['stdev'])})")
    t.add_row("load", f"{_ms(r['load_ms'])} ms")
    mem = r.get("memory") or {}
    if mem.get("available"):
        t.add_row("peak RSS", f"{human_bytes(mem['peak_rss_bytes'])}  (baseline {human_bytes(mem['baseline_rss_bytes'])} "
                              f"with the runtime imported; +{human_bytes(mem['model_attributable_bytes'])} for the model)")
    predicted = (lm or {}).get("predicted_memory")
    if predicted and mem.get("available"):
        t.add_row("predicted", f"{human_bytes(predicted['total_bytes'])} for the model (estimate at export, generating up to "
                               f"{predicted['context']} tokens; this run reached {lm['prompt_tokens'] + lm['new_tokens']})")
    ops = r.get("ops")
    if isinstance(ops, dict) and "error" not in ops:
        split = ", ".join(f"{k} {_ms(v)} ms" for k, v in ops["by_backend_ms"].items())
        t.add_row("delegates", f"{ops['delegate_share']:.1%} of op time inside delegates ({split}; "
                               f"{ops['source']}, median of {ops['steady_runs']} profiled runs)")
    elif isinstance(ops, dict):
        t.add_row("per-op", f"[yellow]{ops['error']}[/]")
    est = r.get("emulated")
    if est:
        ratio = lat["p50"] / est["latency_ms"] if est.get("latency_ms") else float("nan")
        t.add_row("estimate", f"ESTIMATE for {est.get('device')}: {_ms(est['latency_ms'])} ms "
                              f"(measured p50 / estimate = {ratio:.2f})")
    console.print(t)
    if isinstance(ops, dict) and ops.get("by_op"):
        console.print(_ops_table(ops))


def _ops_table(ops: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"top ops by time (per run, {ops['source']})", title_justify="left")
    for col, just in (("op", "left"), ("backend", "left"), ("count", "right"), ("ms", "right"), ("share", "right")):
        table.add_column(col, justify=just)
    for row in ops["by_op"][:TOP_OPS]:
        table.add_row(row["op"], row["backend"], str(row["count"]), _ms(row["ms"]), f"{row['share']:.1%}")
    return table


def _print_estimate(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(f"[bold yellow]ESTIMATE[/] [bold]{label(r)}[/] — emulated on {r.get('device')} "
                  "(roofline from the device profile; not a measurement)")
    t = _kv_table()
    t.add_row("latency", f"[bold]{_ms(r['latency_ms'])} ms[/] (estimate" + (", per decoded token)" if r.get("llm") else ")"))
    share = r.get("bound_share") or {}
    if share:
        dominant = max(share, key=lambda k: share[k])
        t.add_row("bound", f"{dominant}-bound dominates: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    console.print(t)
    if r.get("llm"):
        _print_lm_estimates(console, r)
        return
    ops = sorted(r.get("ops") or [], key=lambda o: -float(o.get("ms") or 0))
    if ops:
        table = Table(title="top ops (estimate)", title_justify="left")
        for col in ("name", "op", "dtype", "unit", "FLOPs", "bytes moved", "bound", "ms"):
            table.add_column(col, justify="right" if col in ("FLOPs", "bytes moved", "ms") else "left")
        for o in ops[:TOP_OPS]:
            table.add_row(str(o.get("name")), str(o.get("op")), str(o.get("dtype")), str(o.get("unit")),
                          _si(o.get("flops")), _si(o.get("bytes")), str(o.get("bound")), _ms(o.get("ms") or 0))
        console.print(table)


def _print_lm_estimates(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    lm = r["llm"]
    table = Table(title=f"ESTIMATED decode speed, {lm['position']} tokens in the KV cache (roofline upper bounds)",
                  title_justify="left")
    for col in ("device", "GB/s", "MB/token", "GFLOP/token", "tokens/s (estimate)", "bound"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for row in lm["decode_estimates"]:
        table.add_row(row["device"], f"{row.get('bandwidth_gbps', 0):g}", f"{row['bytes_per_token'] / 1e6:.1f}",
                      f"{row['flops_per_token'] / 1e9:.2f}", f"{row['tokens_per_s']:.1f}", row["bound"])
    console.print(table)
    for line in r.get("assumptions") or []:
        console.print(f"[dim]assumes: {line}[/]")


def _print_compare(console: Any, reports: list[dict[str, Any]]) -> None:
    from rich.table import Table

    cmp = compare(reports)
    table = Table(title=f"comparison (ratio to {cmp['baseline']})", title_justify="left")
    table.add_column("metric")
    for name in cmp["labels"]:
        table.add_column(name, justify="right")
    for row in cmp["rows"]:
        cells = []
        for i, (v, ratio) in enumerate(zip(row["values"], row["ratios"])):
            text = _fmt_metric(row["metric"], v)
            if i and ratio is not None:
                text += f"  ({ratio:.2f}×)"
            cells.append(text)
        table.add_row(row["title"], *cells)
    console.print(table)


def _fmt_metric(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key.endswith("bytes"):
        return human_bytes(v)
    if key == "delegate_share":
        return f"{v:.1%}"
    return _ms(v)


def _si(v: Any) -> str:
    """1.2e9 → '1.2 G' (FLOPs, bytes)."""
    v = float(v or 0)
    for unit in ("", " k", " M", " G", " T"):
        if abs(v) < 1000 or unit == " T":
            return f"{v:.3g}{unit}"
        v /= 1000
    return f"{v:.3g}"


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


# -------------------------------------------------------------------------------- HTML


HTML_GENERATOR = "<meta name='generator' content='edgeq profile'>"


def check_html_path(path: str | Path) -> None:
    """Fail before any measuring if ``path`` cannot be written."""
    import os

    from edgeq.errors import OutputError

    path = Path(path).absolute()
    if path.is_dir():
        raise OutputError(f"--html {path} is a directory", "pass a file name, e.g. profile.html")
    if path.exists() or path.is_symlink():  # replace only a report edgeq wrote
        try:
            with path.open("rb") as f:
                head = f.read(4096)
        except OSError:
            head = b""
        if path.is_symlink() or not path.is_file() or HTML_GENERATOR.encode() not in head:
            raise OutputError(f"--html {path} exists and is not an edgeq profile report",
                              "choose another file name; edgeq replaces only its own reports")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write --html {path} ({parent} is not a writable directory)", "choose another path")


def write_html(reports: list[dict[str, Any]], path: str | Path) -> Path:
    """Write one self-contained HTML page for ``reports`` atomically (temp file + rename)."""
    from edgeq.atomic import write_text_atomic

    path = Path(path)
    text = render_html(reports)
    write_text_atomic(path, text, hint="choose another --html path")
    return path


def render_html(reports: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    measured = [r for r in reports if not r.get("estimate")]
    estimates = [r for r in reports if r.get("estimate")]
    parts = [f"<h1>edgeq profile</h1><p>{len(measured)} measured, {len(estimates)} estimated "
             "(estimates come from a roofline model of the device profile and are labelled ESTIMATE).</p>"]
    if len(reports) > 1:
        parts.append(_html_compare(reports))
    if measured:
        parts.append("<h2>Latency distribution (measured)</h2>" + _img(_latency_figure(measured)))
    pairs = _estimate_pairs(reports)
    if pairs:
        parts.append("<h2>Estimated vs measured p50</h2>" + _img(_estimate_figure(pairs)))
    for r in reports:
        parts.append(_html_report(r))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left}td.n{text-align:right}.est{color:#b35900;font-weight:bold}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'>{HTML_GENERATOR}<title>edgeq profile</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _html_report(r: dict[str, Any]) -> str:
    e = html.escape
    if r.get("estimate"):
        rows = [("device", r.get("device")), ("latency", f"{_ms(r['latency_ms'])} ms (ESTIMATE)")]
        rows += [(f"{k}-bound share", f"{v:.0%}") for k, v in (r.get("bound_share") or {}).items()]
        head = f"<h2><span class='est'>ESTIMATE</span> {e(label(r))}</h2>"
        body = _html_kv(rows)
        ops = sorted(r.get("ops") or [], key=lambda o: -float(o.get("ms") or 0))
        if ops:
            body += _img(_estimate_ops_figure(ops)) + _html_table(
                ["name", "op", "dtype", "unit", "FLOPs", "bytes moved", "bound", "ms"],
                [[o.get("name"), o.get("op"), o.get("dtype"), o.get("unit"), _si(o.get("flops")), _si(o.get("bytes")),
                  o.get("bound"), _ms(o.get("ms") or 0)] for o in ops[:TOP_OPS]])
        return head + body
    lat, mem, h = r["latency_ms"], r.get("memory") or {}, r.get("host") or {}
    rows = [("artifact", r["artifact"]), ("runtime", r.get("runtime")), ("precision", r.get("precision")),
            ("where", f"device {r['device']}" if r.get("mode") == "device" else "this machine"),
            ("host CPU", f"{h.get('cpu_model')} ({h.get('usable_cores')} cores, load average {h.get('loadavg')})"),
            ("threads", f"{(r.get('threads') or {}).get('used')} ({(r.get('threads') or {}).get('source')})"),
            ("runs", f"{r['runs']} timed after {r['warmup']} warm-up"),
            ("latency ms", "  ".join(f"{k} {_ms(lat[k])}" for k in ("min", "p50", "p90", "max", "mean"))),
            ("load", f"{_ms(r['load_ms'])} ms")]
    if mem.get("available"):
        rows.append(("peak RSS", f"{human_bytes(mem['peak_rss_bytes'])} (+{human_bytes(mem['model_attributable_bytes'])} "
                                 f"over the {human_bytes(mem['baseline_rss_bytes'])} baseline)"))
    ops = r.get("ops") if isinstance(r.get("ops"), dict) else {}
    if ops and "error" not in ops:
        rows.append(("inside delegates", f"{ops['delegate_share']:.1%} ({ops['source']})"))
    body = _html_kv(rows)
    if ops.get("by_op"):
        body += _img(_ops_figure(ops, label(r))) + _html_table(
            ["op", "backend", "count", "ms", "share"],
            [[o["op"], o["backend"], o["count"], _ms(o["ms"]), f"{o['share']:.1%}"] for o in ops["by_op"][:TOP_OPS]])
    elif ops.get("error"):
        body += f"<p>{e(ops['error'])}</p>"
    return f"<h2>{e(label(r))} (measured)</h2>{body}"


def _html_compare(reports: list[dict[str, Any]]) -> str:
    cmp = compare(reports)
    rows = []
    for row in cmp["rows"]:
        cells = [row["title"]]
        for i, (v, ratio) in enumerate(zip(row["values"], row["ratios"])):
            cells.append(_fmt_metric(row["metric"], v) + (f" ({ratio:.2f}×)" if i and ratio is not None else ""))
        rows.append(cells)
    return f"<h2>Comparison (ratio to {html.escape(cmp['baseline'])})</h2>" + _html_table(["metric", *cmp["labels"]], rows)


def _html_kv(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _estimate_pairs(reports: list[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
    """(artifact, measured p50, estimated ms, device) for each measured report with an
    estimate beside it, or with an emulated report of the same artifact in the list."""
    pairs = []
    emulated = {Path(str(r.get("artifact"))).resolve(): r for r in reports if r.get("estimate")}
    for r in reports:
        if r.get("estimate"):
            continue
        est = r.get("emulated") or emulated.get(Path(str(r.get("artifact"))).resolve())
        if est and est.get("latency_ms"):
            pairs.append((label(r), float(p50_ms(r)), float(est["latency_ms"]), str(est.get("device"))))
    return pairs


# ----------------------------------------------------------------------------- figures


def _img(fig: Any) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f"<p><img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'></p>"


def _latency_figure(reports: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    fig, (hist, box) = plt.subplots(1, 2, figsize=(11, 3.6))
    samples = [r["samples_ms"] for r in reports]
    names = [label(r) for r in reports]
    for s, n in zip(samples, names):
        hist.hist(s, bins=min(30, max(5, len(s) // 2)), alpha=0.55, label=n)
    hist.set_xlabel("latency per run (ms)")
    hist.set_ylabel("runs")
    hist.legend(fontsize=8)
    box.boxplot(samples, vert=False)
    box.set_yticks(range(1, len(names) + 1), [n[:28] for n in names], fontsize=8)
    box.set_xlabel("latency per run (ms)")
    fig.suptitle("measured latency: histogram and box plot (whiskers 1.5 IQR)")
    return fig


def _ops_figure(ops: dict[str, Any], title: str) -> Any:
    import matplotlib.pyplot as plt

    rows = list(reversed(ops["by_op"][:TOP_OPS]))
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2))
    colors = [BACKEND_COLORS.get(r["backend"], "#7f7f7f") for r in rows]
    ax.barh([f"{r['op'][:48]} [{r['backend']}]" for r in rows], [r["ms"] for r in rows], color=colors)
    ax.set_xlabel("ms per run (median of profiled runs)")
    ax.set_title(f"{title}: top ops by time ({ops['delegate_share']:.0%} inside delegates)", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return fig


def _estimate_ops_figure(ops: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    rows = list(reversed(ops[:TOP_OPS]))
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2))
    ax.barh([f"{str(o.get('name'))[:40]} ({o.get('op')})" for o in rows], [float(o.get("ms") or 0) for o in rows],
            color=[BOUND_COLORS.get(str(o.get("bound")), "#7f7f7f") for o in rows])
    ax.set_xlabel("estimated ms (ESTIMATE; orange: compute-bound, blue: memory-bound)")
    ax.tick_params(axis="y", labelsize=8)
    return fig


def _estimate_figure(pairs: list[tuple[str, float, float, str]]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.6 * len(pairs) + 1.5))
    ys = range(len(pairs))
    ax.barh([y + 0.2 for y in ys], [p[1] for p in pairs], height=0.4, label="measured p50", color="#1f77b4")
    ax.barh([y - 0.2 for y in ys], [p[2] for p in pairs], height=0.4, label="ESTIMATE", color="#ff7f0e")
    ax.set_yticks(list(ys), [f"{p[0][:36]}\n(est. for {p[3]})" for p in pairs], fontsize=8)
    ax.set_xlabel("latency (ms)")
    ax.legend(fontsize=8)
    return fig
