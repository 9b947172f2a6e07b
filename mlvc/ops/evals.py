"""Ledger queries: the effect table (each commit's metrics and their change against its parent) and compare.

The value of (commit, task, metric) is the newest "ok" row for it. A commit's baseline for a metric is its
nearest first-parent ancestor that has a value for that metric (normally the parent itself), so the change
shown is the effect of the updates since that measurement. A change is an improvement or a regression by the
metric's direction, and "unchanged" when its size is within the metric's tolerance (metricrules.verdict).

A metric's rule (direction, absolute and relative tolerance) is the configured one (tasks.load_rules:
[tasks.NAME] metrics and [check.metrics]); where the configuration gives no direction, the ledger's
remembered one (Ledger.directions: the first row that carried one). `Column.direction_from` says which.

This module returns data (EffectTable, Comparison, with to_json); mlvc/render/evals.py turns it into text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import EvalError, RevisionError
from ..ledger import STATUS_OK, Record
from ..metricrules import MetricRule, Verdict, change, rule_for, verdict
from ..tasks import load_rules, load_tasks

if TYPE_CHECKING:
    from ..objects import Commit
    from ..repo import Repo

IMPROVED, REGRESSED, UNCHANGED = Verdict.IMPROVED.value, Verdict.REGRESSED.value, Verdict.UNCHANGED.value


@dataclass
class Column:
    task: str
    metric: str
    higher_is_better: bool | None
    tolerance: float = 0.0  # absolute
    rel_tolerance: float = 0.0  # a fraction of |base|; the larger of the two tolerances counts
    direction_from: str | None = None  # "config", "ledger" (remembered from its first row) or None (unknown)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def rule(self) -> MetricRule:
        return MetricRule(self.higher_is_better, self.tolerance, self.rel_tolerance)


@dataclass
class Cell:
    value: float | None  # None: no "ok" measurement
    status: str  # "ok", "failed", "timeout" (no value, the last try failed) or "missing"
    base: float | None = None
    base_commit: str | None = None
    delta: float | None = None
    rel_delta: float | None = None  # delta / |base|; None when base is 0
    effect: str | None = None  # improved / regressed / unchanged; None without a base or a direction
    error: str | None = None  # why the last try failed (status "failed" or "timeout")
    stderr_tail: str | None = None


@dataclass
class EffectRow:
    commit: str
    parent: str | None
    time: str
    author: str
    message: str
    cells: dict[str, Cell]  # by Column.key

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit, "parent": self.parent, "time": self.time, "author": self.author,
                "message": self.message, "cells": {k: asdict(c) for k, c in self.cells.items()}}


@dataclass
class EffectTable:
    columns: list[Column]
    rows: list[EffectRow]  # newest first, like `mlvc log`

    def to_json(self) -> dict[str, Any]:
        return {"columns": [asdict(c) | {"key": c.key} for c in self.columns],
                "rows": [r.to_json() for r in self.rows]}


@dataclass
class CompareRow:
    task: str
    metric: str
    a: float | None
    b: float | None
    delta: float | None
    rel_delta: float | None
    effect: str | None
    higher_is_better: bool | None
    tolerance: float = 0.0
    rel_tolerance: float = 0.0
    direction_from: str | None = None


@dataclass
class Comparison:
    a: str
    b: str
    rows: list[CompareRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "rows": [asdict(r) for r in self.rows]}


class _Index:
    """The ledger as {(commit, task, metric): newest ok row} plus failures and the column list."""

    def __init__(self, repo: Repo, records: list[Record] | None = None):
        records = repo.ledger.records() if records is None else records  # oldest first
        self.values: dict[tuple[str, str, str], Record] = {}
        self.last_try: dict[tuple[str, str], Record] = {}
        seen_cols: set[tuple[str, str]] = set()
        for r in records:
            self.last_try[(r.commit, r.task)] = r
            if r.status == STATUS_OK and r.metric is not None:
                self.values[(r.commit, r.task, r.metric)] = r
                seen_cols.add((r.task, r.metric))
        configured = load_tasks(repo)
        # Tasks that only ever failed still get columns (their configured metrics, else one named "-"),
        # so that a failing evaluator shows up in the table instead of vanishing from it.
        for task in sorted({t for _, t in self.last_try} - {t for t, _ in seen_cols}):
            metrics = configured[task].metrics if task in configured else {}
            for metric in metrics or ["-"]:
                seen_cols.add((task, metric))
        rules = load_rules(repo)
        remembered = repo.ledger.directions(records)
        self.columns: dict[tuple[str, str], Column] = {}
        for task, metric in sorted(seen_cols):
            rule = rule_for(rules, task, metric)
            source = "config" if rule.direction is not None else None
            if rule.direction is None and (task, metric) in remembered:
                rule, source = rule.with_direction(remembered[(task, metric)]), "ledger"
            self.columns[(task, metric)] = Column(task, metric, rule.direction, rule.abs_tol or 0.0,
                                                  rule.rel_tol or 0.0, source)
        self.commits = {r.commit for r in records}

    def value(self, commit: str, col: Column) -> float | None:
        r = self.values.get((commit, col.task, col.metric))
        return r.value if r else None


def judge(col: Column, base: float | None, value: float | None) -> tuple[float | None, float | None, str | None]:
    """(delta, relative delta, effect) of moving from `base` to `value` on a column."""
    if base is None or value is None:
        return None, None, None
    delta, rel = change(base, value)
    v = verdict(col.rule, base, value)
    return delta, rel, (v.value if v in (Verdict.IMPROVED, Verdict.REGRESSED, Verdict.UNCHANGED) else None)


def commits_in_range(repo: Repo, rev_range: str | None) -> list[Commit]:
    """`A..B`: reachable from B but not from A; `REV`: reachable from REV; None: from HEAD. Newest first."""
    if not rev_range:
        return repo.log("HEAD") if repo.head() else []
    if ".." in rev_range:
        a, _, b = rev_range.partition("..")
        if not a or not b or ".." in b:
            raise RevisionError(rev_range, "a range is A..B")
        excluded = {c.id for c in repo.log(a)}
        return [c for c in repo.log(b) if c.id not in excluded]
    return repo.log(rev_range)


def effect_table(repo: Repo, rev_range: str | None = None, include_all: bool = False,
                 tasks: Iterable[str] | None = None) -> EffectTable:
    """Commits as rows, task/metric as columns, each value with its change against the commit's baseline."""
    tasks = list(tasks) if tasks else None
    idx = _Index(repo)
    cols = [c for c in idx.columns.values() if not tasks or c.task in tasks]
    commits = commits_in_range(repo, rev_range)
    cache = {c.id: c for c in commits}
    rows = []
    for c in commits:
        evaluated = c.id in idx.commits
        if not include_all and not evaluated:
            continue
        cells = {}
        for col in cols:
            value = idx.value(c.id, col)
            if value is None:
                last = idx.last_try.get((c.id, col.task))
                if last is not None and last.status != STATUS_OK:  # its last try failed
                    cells[col.key] = Cell(None, last.status, error=last.error, stderr_tail=last.stderr_tail)
                else:
                    cells[col.key] = Cell(None, "missing")
                continue
            base_commit = _baseline(repo, c, col, idx, cache)
            base = idx.value(base_commit, col) if base_commit else None
            delta, rel, effect = judge(col, base, value)
            cells[col.key] = Cell(value, STATUS_OK, base, base_commit, delta, rel, effect)
        rows.append(EffectRow(c.id, c.parents[0] if c.parents else None, c.time, c.author, c.message, cells))
    return EffectTable(cols, rows)


def _baseline(repo: Repo, commit: Commit, col: Column, idx: _Index, cache: dict[str, Commit]) -> str | None:
    """The nearest first-parent ancestor of `commit` with a value for `col`."""
    seen = set()
    c = commit
    while c.parents:
        pid = c.parents[0]
        if pid in seen:  # pragma: no cover - a cycle cannot exist in a content-addressed graph
            return None
        seen.add(pid)
        if idx.value(pid, col) is not None:
            return pid
        if pid not in cache:
            cache[pid] = repo.read_commit(pid)
        c = cache[pid]
    return None


def compare(repo: Repo, a: str, b: str, tasks: Iterable[str] | None = None) -> Comparison:
    """Per task and metric: the value at A, at B, B - A and (B - A) / |A|."""
    tasks = list(tasks) if tasks else None
    ca, cb = repo.resolve(a), repo.resolve(b)
    idx = _Index(repo)
    out = Comparison(ca, cb)
    for col in idx.columns.values():
        if tasks and col.task not in tasks:
            continue
        va, vb = idx.value(ca, col), idx.value(cb, col)
        if va is None and vb is None:
            continue
        delta, rel, effect = judge(col, va, vb)
        out.rows.append(CompareRow(col.task, col.metric, va, vb, delta, rel, effect, col.higher_is_better,
                                   col.tolerance, col.rel_tolerance, col.direction_from))
    if not out.rows:
        raise EvalError(f"neither {a} ({ca[:12]}) nor {b} ({cb[:12]}) has recorded results; run "
                        "`mlvc eval run REV` or `mlvc eval record REV --task T metric=value` first")
    return out
