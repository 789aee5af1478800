"""Outputs of ``edgeq check``: a rich table, JUnit XML, GitHub Actions annotations and a
Markdown job summary. JSON is ``results.to_json``."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from edgeq.check.results import CheckResult

_MARK = {"pass": "PASS", "fail": "FAIL", "skipped": "skip"}


def print_table(results: list[CheckResult]) -> None:
    """One row per gate per artifact, then one summary row per artifact."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    for r in results:
        table = Table(title=f"{r.artifact} (target {r.target})", title_justify="left")
        for col in ("gate", "status", "figure", "limit", "limit from", "detail"):
            table.add_column(col, overflow="fold")
        for g in r.gates:
            style = {"pass": "green", "fail": "bold red", "skipped": "yellow"}[g.status]
            table.add_row(g.gate, f"[{style}]{_MARK[g.status]}[/]", g.figure, g.limit, g.source, g.message)
        console.print(table)
    if len(results) > 1:
        summary = Table(title="Summary", title_justify="left")
        for col in ("artifact", "target", "passed", "failed", "skipped", "seconds"):
            summary.add_column(col)
        for r in results:
            count = {s: sum(g.status == s for g in r.gates) for s in ("pass", "fail", "skipped")}
            failed = ", ".join(g.gate for g in r.failures) or "0"
            summary.add_row(r.artifact, r.target, str(count["pass"]), f"[bold red]{failed}[/]" if r.failures else "0",
                            str(count["skipped"]), f"{r.seconds:.2f}")
        console.print(summary)
    n_fail = sum(not r.passed for r in results)
    console.print(f"{len(results)} artifact(s) checked: {len(results) - n_fail} passed, {n_fail} failed")


def junit_xml(results: list[CheckResult]) -> str:
    """One ``<testsuite>`` per artifact, one ``<testcase>`` per gate; a failing gate's
    ``<failure message>`` is its figure and limit, a skipped gate has ``<skipped>``."""
    suites = ET.Element("testsuites", name="edgeq check", tests=str(sum(len(r.gates) for r in results)),
                        failures=str(sum(len(r.failures) for r in results)), errors="0",
                        time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        suite = ET.SubElement(suites, "testsuite", name=r.artifact, tests=str(len(r.gates)),
                              failures=str(len(r.failures)), errors="0",
                              skipped=str(sum(g.status == "skipped" for g in r.gates)), time=f"{r.seconds:.3f}")
        for g in r.gates:
            case = ET.SubElement(suite, "testcase", name=g.gate, classname=f"edgeq.check.{Path(r.artifact).name}",
                                 time="0")
            if g.status == "fail":
                failure = ET.SubElement(case, "failure", message=g.message, type=f"edgeq.{g.gate}")
                failure.text = f"figure: {g.figure}\nlimit: {g.limit}\nlimit from: {g.source}\n{g.message}"
            elif g.status == "skipped":
                ET.SubElement(case, "skipped", message=g.message)
            else:
                out = ET.SubElement(case, "system-out")
                out.text = g.message
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def github_commands(results: list[CheckResult]) -> list[str]:
    """``::error``/``::notice`` workflow commands, one per failing or skipped gate."""
    lines = []
    for r in results:
        where = f"{r.artifact}/manifest.json"
        for g in r.gates:
            if g.status == "fail":
                lines.append(f"::error file={_prop(where)},title={_prop(f'edgeq check: {g.gate}')}::{_data(g.message)}")
            elif g.status == "skipped":
                lines.append(f"::notice file={_prop(where)},title={_prop(f'edgeq check: {g.gate} skipped')}::"
                             f"{_data(g.message)}")
    return lines


def markdown_summary(results: list[CheckResult]) -> str:
    icon = {"pass": "✅", "fail": "❌", "skipped": "⏭️"}
    out = ["## edgeq check", ""]
    for r in results:
        out += [f"### `{r.artifact}` (target {r.target}): {'passed' if r.passed else 'FAILED'}", "",
                "| gate | status | figure | limit | limit from | detail |", "|---|---|---|---|---|---|"]
        for g in r.gates:
            cells = [g.gate, f"{icon[g.status]} {g.status}", g.figure, g.limit, g.source, g.message]
            out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def write_github(results: list[CheckResult]) -> None:
    for line in github_commands(results):
        print(line)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown_summary(results))


def _data(text: str) -> str:  # GitHub's escaping of a command's message
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:  # ... and of its properties
    return _data(text).replace(":", "%3A").replace(",", "%2C")
