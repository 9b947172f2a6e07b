"""The ledger's views as text and CSV: the effect table, compare, eval run outcomes and the task list."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..ops.evals import IMPROVED, REGRESSED, UNCHANGED
from .text import first_line, fmt_change, fmt_number, fmt_percent, short, table

# each effect's mark, in tables and in the report (here, not in text.py: importing ops.evals has a cost that
# every command would pay through text.py)
MARKS = {IMPROVED: "✓", REGRESSED: "✗", UNCHANGED: "="}

if TYPE_CHECKING:
    from ..metricrules import MetricRule
    from ..ops.evalrun import EvalRunResult
    from ..ops.evals import Cell, Column, Comparison, EffectTable
    from ..tasks import TaskSpec

LEGEND = ("✓ improvement, ✗ regression (by each metric's direction), = change within tolerance; "
          "changes are against the nearest evaluated first-parent ancestor")
NO_RESULTS = "No results in the ledger for these commits; `mlvc eval run` or `mlvc eval record` adds some."
NO_TASKS = "No tasks configured; see docs/ledger.md for [tasks.NAME] in mlvc.toml."


# -- the one number format of every eval view: 4 significant digits, changes signed ------------------------------
def cell_text(cell: Cell) -> str:
    """One cell of the effect table: "0.585 (+0.005 ✓)", the value alone without a baseline, FAILED /
    TIMEOUT where the last try failed, "" where nothing was measured."""
    if cell.value is None:
        return "" if cell.status == "missing" else cell.status.upper()
    if cell.delta is None:
        return fmt_number(cell.value)
    mark = MARKS.get(cell.effect or "", "")
    return f"{fmt_number(cell.value)} ({fmt_change(cell.delta)}{' ' + mark if mark else ''})"


def direction_text(col: Column) -> str:
    """"higher is better, ±0.01 or ±1%", "lower is better (remembered)", "direction unknown"."""
    text = col.rule.describe()
    return text + (" (remembered)" if col.direction_from == "ledger" else "")


WIDTH = 120  # the text effect table is cut into blocks of columns that each fit this many characters
HEADER_WIDTH = 24  # a column header's task and metric lines are cut to this many characters
MESSAGE_MIN = 16  # the message column gets at least this many characters (more when the first block has room)
_GAP = 2  # tabulate's "simple" style: two spaces between columns, and headers padded by two


def _cells(ch: str) -> int:
    """How many terminal columns a character takes: 2 for East Asian wide ones, 0 for combining marks."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _cut(text: str, width: int) -> str:
    """`text` on one line, control characters as spaces, cut with "…" to at most `width` terminal columns."""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    if _display(text) <= width:
        return text
    out, used = [], 1  # room for the ellipsis
    for ch in text:
        if used + _cells(ch) > width:
            break
        out.append(ch)
        used += _cells(ch)
    return "".join(out) + "…"


def _header(col: Column) -> str:
    return f"{_cut(col.task, HEADER_WIDTH)}\n{_cut(col.metric, HEADER_WIDTH)}"


def _display(text: str) -> int:
    return sum(map(_cells, text))


def _width(header: str, cells: list[str]) -> int:
    return max([_display(line) + _GAP for line in header.split("\n")] + [_display(c) for c in cells])


def effect_table_text(t: EffectTable, message_width: int = 32, width: int = WIDTH) -> str:
    """What `mlvc eval show` prints: commits as rows, task/metric as columns, then the legend.

    The columns are cut into blocks that each fit `width` characters (like a wide pandas frame): every block
    starts with the commit column, the first one also has the message (as much of it as fits, at most
    `message_width`); headers are the task over the metric, each cut to HEADER_WIDTH characters, the task
    named once over its columns in a block.
    """
    if not t.rows:
        return NO_RESULTS
    commits = [short(r.commit) for r in t.rows]
    lead = _width("commit", commits)
    heads = [_header(c) for c in t.columns]
    texts = [[cell_text(r.cells[c.key]) for r in t.rows] for c in t.columns]
    full = [_width(h, cells) for h, cells in zip(heads, texts, strict=True)]  # with the task's name over it
    sparse = [_width(h.split("\n", 1)[1], cells) for h, cells in zip(heads, texts, strict=True)]  # without
    # the first block also holds the message: at least MESSAGE_MIN characters of it, more where room is left
    msg_min = min(message_width, MESSAGE_MIN)
    blocks: list[list[int]] = [[]]
    widths: dict[int, int] = {}
    used = lead + _GAP + msg_min
    for i in range(len(t.columns)):
        block = blocks[-1]
        w = sparse[i] if block and t.columns[block[-1]].task == t.columns[i].task else full[i]
        if block and used + _GAP + w > width:
            blocks.append([])
            used, w = lead, full[i]
        blocks[-1].append(i)
        widths[i] = w
        used += _GAP + w
    room = width - lead - _GAP - sum(_GAP + widths[i] for i in blocks[0])
    msg_width = max(msg_min, min(message_width, room))
    out = []
    for n, block in enumerate(blocks):
        # a task's name heads its first column in each block only (like pandas' sparse column index)
        shown = [heads[i] if k == 0 or t.columns[i].task != t.columns[block[k - 1]].task
                 else "\n" + heads[i].split("\n", 1)[1] for k, i in enumerate(block)]
        headers = ["commit"] + (["message"] if n == 0 else []) + shown
        rows = []
        for j, r in enumerate(t.rows):
            msg = [_cut(first_line(r.message), msg_width)] if n == 0 else []
            rows.append([commits[j]] + msg + [texts[i][j] for i in block])
        out.append(table(rows, headers))
    return "\n\n".join(out) + "\n\n" + LEGEND


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
             fmt_number(r.a), fmt_number(r.b), fmt_change(r.delta), fmt_percent(r.rel_delta),
             f"{MARKS.get(r.effect or '', '')} {r.effect or ''}".strip()] for r in c.rows]
    return (f"A = {short(c.a)} ({a_name}), B = {short(c.b)} ({b_name})\n"
            + table(rows, ["task", "metric", "better", "A", "B", "delta", "relative", "effect"]))


def eval_run_text(result: EvalRunResult) -> str:
    """`mlvc eval run`: one row per (commit, task) with its status, time and metrics or reason."""
    rows = []
    for o in result.outcomes:
        if o.status == "ok":
            detail = ", ".join(f"{k}={fmt_number(v)}" for k, v in o.metrics.items())
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
            + ", ".join(f"{k}={fmt_number(v)}" for k, v in metrics.items()))


def tasks_json(tasks: Mapping[str, TaskSpec]) -> dict[str, Any]:
    """`mlvc eval tasks --json`."""
    return {name: {"command": t.command, "timeout": t.timeout, "source": t.source, "spec_hash": t.spec_hash,
                   "dataset": t.dataset, "seed": t.seed,
                   "metrics": {m.name: {"direction": m.direction, "tolerance": m.tolerance,
                                        "rel_tolerance": m.rel_tolerance, "required": m.required}
                               for m in t.metrics.values()}}
            for name, t in tasks.items()}


def tasks_text(tasks: Mapping[str, TaskSpec]) -> str:
    """`mlvc eval tasks`: name, metrics with direction and tolerance, timeout, command."""
    if not tasks:
        return NO_TASKS
    rows = [[t.name, ", ".join(f"{m.name} ({_rule_brief(m.rule)})" for m in t.metrics.values()),
             f"{t.timeout:g} s", " ".join(t.command)]
            for t in tasks.values()]
    return table(rows, ["task", "metrics", "timeout", "command"])


def _rule_brief(rule: MetricRule) -> str:
    """"higher ±0.002", "lower ±0.001 or ±1%, required"."""
    tol = rule.tolerance_text()
    return f"{rule.direction_word or '?'}{' ' + tol if tol else ''}{', required' if rule.required else ''}"
