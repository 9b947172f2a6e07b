"""The ledger's views as text and CSV: the effect table, compare, eval run outcomes and the task list."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..ops.evals import IMPROVED, REGRESSED, UNCHANGED
from .text import first_line, fmt_delta, fmt_rel, fmt_value, short, table

# each effect's mark, in tables and in the report (here, not in text.py: importing ops.evals has a cost that
# every command would pay through text.py)
MARKS = {IMPROVED: "✓", REGRESSED: "✗", UNCHANGED: "="}

if TYPE_CHECKING:
    from ..ops.evalrun import EvalRunResult
    from ..ops.evals import Cell, Column, Comparison, EffectTable
    from ..tasks import TaskSpec

LEGEND = ("✓ improvement, ✗ regression (by each metric's direction), = change within tolerance; "
          "changes are against the nearest evaluated first-parent ancestor")
NO_RESULTS = "No results in the ledger for these commits; `mlvc eval run` or `mlvc eval record` adds some."
NO_TASKS = "No tasks configured; see docs/ledger.md for [tasks.NAME] in mlvc.toml."


def cell_text(cell: Cell) -> str:
    """One cell of the effect table: "0.5850 (+0.0050 ✓)", the value alone without a baseline, FAILED /
    TIMEOUT where the last try failed, "" where nothing was measured."""
    if cell.value is None:
        return "" if cell.status == "missing" else cell.status.upper()
    if cell.delta is None:
        return fmt_value(cell.value)
    mark = MARKS.get(cell.effect or "", "")
    return f"{fmt_value(cell.value)} ({fmt_delta(cell.delta)}{' ' + mark if mark else ''})"


def direction_text(col: Column) -> str:
    """"higher is better, ±0.01", "lower is better", "direction unknown"."""
    if col.higher_is_better is None:
        return "direction unknown"
    tol = f", ±{col.tolerance:g}" if col.tolerance else ""
    return ("higher is better" if col.higher_is_better else "lower is better") + tol


def effect_table_text(t: EffectTable, message_width: int = 32) -> str:
    """What `mlvc eval show` prints: commits as rows, task/metric as columns, then the legend."""
    if not t.rows:
        return NO_RESULTS
    headers = ["commit", "message"] + [c.key for c in t.columns]
    rows = [[short(r.commit), first_line(r.message, message_width)] + [cell_text(r.cells[c.key]) for c in t.columns]
            for r in t.rows]
    return table(rows, headers) + "\n\n" + LEGEND


def effect_table_csv(t: EffectTable) -> str:
    """`mlvc eval show --csv`: one row per commit; per column its value, delta and effect (or failure)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["commit", "parent", "time", "message"]
    for c in t.columns:
        head += [c.key, f"{c.key}:delta", f"{c.key}:effect"]
    w.writerow(head)
    for r in t.rows:
        line = [r.commit, r.parent or "", r.time, first_line(r.message)]
        for c in t.columns:
            cell = r.cells[c.key]
            line += ["" if cell.value is None else repr(cell.value),
                     "" if cell.delta is None else repr(cell.delta),
                     cell.effect or ("" if cell.status in ("ok", "missing") else cell.status)]
        w.writerow(line)
    return buf.getvalue()


def comparison_text(c: Comparison, a_name: str, b_name: str) -> str:
    """`mlvc eval compare A B`: which commits A and B are, then one row per task and metric."""
    rows = [[r.task, r.metric, {True: "higher", False: "lower", None: "?"}[r.higher_is_better],
             fmt_value(r.a), fmt_value(r.b), fmt_delta(r.delta), fmt_rel(r.rel_delta),
             f"{MARKS.get(r.effect or '', '')} {r.effect or ''}".strip()] for r in c.rows]
    return (f"A = {short(c.a)} ({a_name}), B = {short(c.b)} ({b_name})\n"
            + table(rows, ["task", "metric", "better", "A", "B", "delta", "relative", "effect"]))


def eval_run_text(result: EvalRunResult) -> str:
    """`mlvc eval run`: one row per (commit, task) with its status, time and metrics or reason."""
    rows = []
    for o in result.outcomes:
        if o.status == "ok":
            detail = ", ".join(f"{k}={v:.6g}" for k, v in o.metrics.items())
        elif o.status == "skipped":
            detail = "already in the ledger (--force runs it again)"
        else:
            detail = o.error or ""
        took = f"{o.duration_s:.1f} s" if o.duration_s is not None else ""
        rows.append([short(o.commit), o.task, o.status, took, detail])
    return table(rows, ["commit", "task", "status", "time", "result"])


def failure_tails_text(result: EvalRunResult, lines: int = 10) -> str:
    """The last lines of stderr of each failed evaluator ("" when none left any), for the error stream."""
    blocks = []
    for o in result.failures:
        if o.stderr_tail:
            tail = o.stderr_tail.rstrip().splitlines()[-lines:]
            blocks.append("\n".join([f"\n{o.task} on {short(o.commit)}: last lines of stderr:"]
                                    + [f"  {line}" for line in tail]))
    return "\n".join(blocks)


def recorded_text(task: str, commit: str, metrics: Mapping[str, float]) -> str:
    """`mlvc eval record`: what was written."""
    return (f"recorded {len(metrics)} metric(s) for {task} on {short(commit)}: "
            + ", ".join(f"{k}={v:.6g}" for k, v in metrics.items()))


def tasks_json(tasks: Mapping[str, TaskSpec]) -> dict[str, Any]:
    """`mlvc eval tasks --json`."""
    return {name: {"command": t.command, "timeout": t.timeout, "source": t.source, "spec_hash": t.spec_hash,
                   "dataset": t.dataset, "seed": t.seed,
                   "metrics": {m.name: {"direction": m.direction, "tolerance": m.tolerance}
                               for m in t.metrics.values()}}
            for name, t in tasks.items()}


def tasks_text(tasks: Mapping[str, TaskSpec]) -> str:
    """`mlvc eval tasks`: name, metrics with direction and tolerance, timeout, command."""
    if not tasks:
        return NO_TASKS
    rows = [[t.name, ", ".join(f"{m.name} ({m.direction}{f' ±{m.tolerance:g}' if m.tolerance else ''})"
                               for m in t.metrics.values()), f"{t.timeout:g} s", " ".join(t.command)]
            for t in tasks.values()]
    return table(rows, ["task", "metrics", "timeout", "command"])
