"""`mlvc check` and `mlvc bisect` as people and CI systems read them: a text table, JUnit XML, Markdown.

JUnit XML (`--junit FILE`) follows the schema that Jenkins, GitLab, GitHub test reporters and Azure read:
`<testsuites>` / `<testsuite>` / one `<testcase classname="mlvc.check.TASK" name="METRIC">` per row, with a
`<failure>` for a regression, an `<error>` for missing data and `<skipped>` for a metric recorded on one side
only. The XML is built with xml.etree, so every value is escaped. Markdown (`--markdown FILE`) is one
section for a pull-request comment or a GitHub job summary: a verdict line, the baseline, the table.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from ..util import atomic_write_bytes
from .text import first_line, fmt_change, fmt_number, fmt_percent, short, table

if TYPE_CHECKING:
    from ..metricrules import MetricRule
    from ..ops.bisect import BisectResult
    from ..ops.check import CheckResult, CheckRow

# each row verdict as shown in the table (text and Markdown)
VERDICT_TEXT = {"improved": "✓ improved", "unchanged": "= unchanged", "unknown": "? changed (direction unknown)",
                "regressed": "✗ REGRESSED", "missing": "MISSING", "skipped": "skipped"}
HEADERS = ["task", "metric", "better", "baseline", "new", "change", "relative", "tolerance", "verdict"]
STATUS_TITLE = {"passed": "passed", "regressed": "regression found", "missing": "missing data"}
STATUS_EMOJI = {"passed": "✅", "regressed": "❌", "missing": "⚠️"}
JUNIT_SUITE = "mlvc check"


def _better(rule: MetricRule) -> str:
    return rule.direction_word or "?"


def _tolerance(row: CheckRow) -> str:
    """The tolerance as configured and what it amounts to at this base: "±1% (0.0061)"."""
    text = row.rule.tolerance_text()
    if row.tolerance is not None and row.rule.rel_tol:
        text += f" ({fmt_number(row.tolerance)})"
    return text


def _verdict(row: CheckRow) -> str:
    text = VERDICT_TEXT.get(row.verdict, row.verdict)
    return f"{text}: {row.reason}" if row.reason else text


def _cells(row: CheckRow) -> list[str]:
    return [row.task, row.metric, _better(row.rule), fmt_number(row.base), fmt_number(row.new), fmt_change(row.delta),
            fmt_percent(row.rel_delta), _tolerance(row), _verdict(row)]


def summary_line(r: CheckResult) -> str:
    """One line: the outcome and its counts."""
    compared = len(r.compared)
    if r.status == "regressed":
        keys = ", ".join(x.key for x in r.regressions)
        return f"FAILED: {len(r.regressions)} of {compared} metric(s) regressed ({keys})"
    if r.status == "missing":
        return f"MISSING DATA: {len(r.missing_lines())} problem(s); {compared} metric(s) compared, none regressed"
    return f"PASSED: {compared} metric(s) compared, none regressed"


def check_text(r: CheckResult) -> str:
    """What `mlvc check` prints: which commits, the table, the outcome."""
    head = (f"mlvc check: {r.rev_label or r.rev} ({short(r.commit)}) against {r.against}\n"
            f"baseline: {r.base_reason}")
    body = table([_cells(row) for row in r.rows], HEADERS) if r.rows else "Nothing recorded for these commits."
    problems = "".join(f"\n  {p}" for p in r.problems)
    return f"{head}\n\n{body}\n\n{summary_line(r)}{problems}"


# -- JUnit XML ---------------------------------------------------------------------------------------------------
def _row_message(row: CheckRow) -> str:
    parts = [f"{row.key}: baseline {fmt_number(row.base) or '-'}, new {fmt_number(row.new) or '-'}"]
    if row.delta is not None:
        rel = f" ({fmt_percent(row.rel_delta)})" if row.rel_delta is not None else ""
        parts.append(f"change {fmt_change(row.delta)}{rel}")
    parts.append(row.rule.describe())
    if row.reason:
        parts.append(row.reason)
    return "; ".join(parts)


def check_junit(r: CheckResult) -> str:
    """The result as JUnit XML: one testcase per task/metric (plus one per problem not tied to a row)."""
    failures = len(r.regressions)
    errors = len(r.missing) + len(r.problems)
    skipped = sum(1 for row in r.rows if row.verdict == "skipped")
    tests = len(r.rows) + len(r.problems)
    counts = {"tests": str(tests), "failures": str(failures), "errors": str(errors), "skipped": str(skipped)}
    root = ET.Element("testsuites", {"name": JUNIT_SUITE, **counts})
    suite = ET.SubElement(root, "testsuite", {"name": f"{JUNIT_SUITE} {r.rev_label or r.rev} against {r.against}",
                                              **counts,
                                              "time": "0"})
    props = ET.SubElement(suite, "properties")
    for name, value in (("commit", r.commit), ("against", r.against_commit), ("baseline", r.base),
                        ("baseline_reason", r.base_reason), ("status", r.status)):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for row in r.rows:
        case = ET.SubElement(suite, "testcase", {"classname": f"mlvc.check.{row.task}", "name": row.metric,
                                                 "time": "0"})
        message = _row_message(row)
        if row.verdict == "regressed":
            ET.SubElement(case, "failure", {"message": message, "type": "regression"}).text = message
        elif row.verdict == "missing":
            ET.SubElement(case, "error", {"message": message, "type": "missing-data"}).text = message
        elif row.verdict == "skipped":
            ET.SubElement(case, "skipped", {"message": message})
        else:
            ET.SubElement(case, "system-out").text = f"{row.verdict}: {message}"
    for problem in r.problems:
        case = ET.SubElement(suite, "testcase", {"classname": "mlvc.check", "name": "data", "time": "0"})
        ET.SubElement(case, "error", {"message": problem, "type": "missing-data"}).text = problem
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- Markdown ----------------------------------------------------------------------------------------------------
def _md(text: str) -> str:
    """A table cell: pipes escaped, line breaks flattened, HTML-significant characters as entities."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\r", " ").replace("\n", " "))


def check_markdown(r: CheckResult) -> str:
    """One Markdown section: the verdict as a heading, the commits, the comparison table."""
    lines = [f"### {STATUS_EMOJI[r.status]} mlvc check: {STATUS_TITLE[r.status]}", "",
             f"`{_md(r.rev_label or r.rev)}` (`{short(r.commit)}`) against `{_md(r.against)}`; "
             f"baseline: {_md(r.base_reason)}.",
             "", f"**{_md(summary_line(r))}**", ""]
    if r.rows:
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "|".join("---" if h in ("task", "metric", "better", "verdict") else "---:"
                                    for h in HEADERS) + "|")
        for row in r.rows:
            cells = [_md(c) for c in _cells(row)]
            if row.verdict == "regressed":
                cells[-1] = f"**{cells[-1]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for p in r.problems:
        lines.append(f"- {_md(p)}")
    if r.problems:
        lines.append("")
    return "\n".join(lines)


# -- writing -----------------------------------------------------------------------------------------------------
def write_file(path: str, text: str) -> None:
    """Write a report file whole (temp file and rename: a reader never sees half of it)."""
    atomic_write_bytes(os.path.abspath(path), text.encode("utf-8"))


def append_file(path: str, text: str) -> None:
    """Append to a file others append to as well (a GitHub job summary), with a blank line after."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n\n")


# -- bisect --------------------------------------------------------------------------------------------------
def _step_value(step) -> str:
    if step.value is not None:
        return fmt_number(step.value)
    return "" if step.exit_status is None else f"exit {step.exit_status}"


def bisect_steps_text(b: BisectResult) -> str:
    rows = [[s.role, short(s.commit), s.verdict, _step_value(s), "ran" if s.evaluated else "ledger", s.reason or ""]
            for s in b.steps]
    return table(rows, ["step", "commit", "verdict", "value", "source", "why"])


def bisect_text(b: BisectResult) -> str:
    """What `mlvc bisect` prints: what was searched, every verdict, then the first bad commit and what it changed."""
    from .diff import GROUP_HEADERS, group_rows, summary

    what = (f"{b.task}/{b.metric} ({b.rule.describe() if b.rule else ''}"
            + (f"; bad when worse than {b.threshold:g}" if b.threshold is not None else
               f"; bad when it regresses against the good commit's {fmt_number(b.good_value)}") + ")"
            if b.mode == "metric" else f"the command `{' '.join(b.command or [])}` (exit 0 good, 125 skip)")
    lines = [f"bisect: {len(b.chain)} commit(s) on the first-parent history after {short(b.good)} (good) up to "
             f"{short(b.bad)} (bad), judged by {what}", "", bisect_steps_text(b), "",
             f"{b.evaluations} evaluation(s) run, {len(b.steps) - b.evaluations} verdict(s) from the ledger."]
    if b.first_bad is None:
        lines += ["", f"The first bad commit could not be told apart (skipped commits): it is one of "
                      f"{len(b.candidates)}:"] + [f"  {short(c)}" for c in b.candidates]
        return "\n".join(lines)
    c = b.commit
    assert c is not None
    lines += ["", f"first bad commit: {c.id}", f"  {c.time}  {c.author}  {first_line(c.message)}"]
    if len(c.parents) > 1:
        lines.append(f"  a merge of {', '.join(short(p) for p in c.parents)}: the change came in with it")
    lines.append(f"  files changed: {', '.join(b.files) if b.files else 'none'}")
    if b.diff is not None:
        changed = [g for g in b.diff.groups if g.changed_tensors]
        if changed:
            lines += ["", table(group_rows(changed), GROUP_HEADERS)]
        lines += ["", summary(b.diff)]
    return "\n".join(lines)
