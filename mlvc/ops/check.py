"""check: compare a revision's ledger entries against a baseline; the CI regression gate.

The baseline of `check(REV, against=BASE)` is the merge base of REV and BASE (what a pull-request reviewer
means by "against main": the commit the branch started from, so that updates landed on main since do not
count for or against the branch), or BASE itself with `merge_base=False`. Every task and metric that has a
value at both commits is judged by its rule (mlvc/metricrules.py: direction, absolute and relative
tolerance; from mlvc.toml, the ledger's remembered direction and the caller's overrides). A row is:

- improved / unchanged / unknown (changed beyond the tolerance, direction not known): passes;
- regressed: fails the gate;
- missing: a required metric (or a task, "TASK/*") without a value at either commit, or a task whose last
  evaluation there failed (or, with `run`, a configured task that could not be evaluated); the gate cannot
  decide;
- skipped: a metric recorded at one commit only, not required; shown, not judged.

Nothing compared at all is missing data too. With `run`, configured tasks that have no result at either
commit are evaluated first (through `repo.eval_run`, recorded in the ledger). No torch is needed unless an
evaluation runs: the comparison reads only the ledger and the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import EvalError, RevisionError
from ..ledger import STATUS_OK, Record
from ..metricrules import (
    ALL_METRICS,
    UNRULED,
    MetricRule,
    Verdict,
    change,
    required_keys,
    rule_for,
    split_key,
    verdict,
)
from ..progress import NULL, Progress
from ..tasks import load_rules, load_tasks

if TYPE_CHECKING:
    from ..repo import Repo
    from .evalrun import EvalOutcome

# row verdicts beyond metricrules.Verdict's
MISSING, SKIPPED = "missing", "skipped"
PASSED, REGRESSED, MISSING_DATA = "passed", "regressed", "missing"  # CheckResult.status
PASSING = (Verdict.IMPROVED.value, Verdict.UNCHANGED.value, Verdict.UNKNOWN.value)
EVERY = "*"  # an override key for every metric of every task


@dataclass
class CheckRow:
    task: str
    metric: str  # "*" for a required task with no value at all
    base: float | None
    new: float | None
    rule: MetricRule
    verdict: str  # improved, unchanged, unknown, regressed, missing, skipped
    delta: float | None = None
    rel_delta: float | None = None  # delta / |base|; None when base is 0
    tolerance: float | None = None  # the largest change that counts as unchanged, at this base
    reason: str | None = None  # why missing or skipped

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "key": self.key, "base": self.base, "new": self.new,
                "delta": self.delta, "rel_delta": self.rel_delta, "tolerance": self.tolerance,
                "rule": self.rule.to_json(), "verdict": self.verdict, "reason": self.reason}


@dataclass
class CheckResult:
    rev: str  # as given
    commit: str
    against: str  # as given
    against_commit: str
    base: str  # the commit compared against
    base_reason: str  # which commit that is, in words ("the merge base of HEAD and main")
    rows: list[CheckRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # missing data not tied to a row
    evaluated: list[EvalOutcome] = field(default_factory=list)  # what `run` evaluated
    rev_label: str = ""  # REV as people name it: the current branch for HEAD

    @property
    def regressions(self) -> list[CheckRow]:
        return [r for r in self.rows if r.verdict == Verdict.REGRESSED.value]

    @property
    def missing(self) -> list[CheckRow]:
        return [r for r in self.rows if r.verdict == MISSING]

    @property
    def compared(self) -> list[CheckRow]:
        return [r for r in self.rows if r.verdict not in (MISSING, SKIPPED)]

    @property
    def status(self) -> str:
        """"regressed" when any row regressed (it wins over missing data), else "missing" when the gate
        cannot decide, else "passed"."""
        if self.regressions:
            return REGRESSED
        return MISSING_DATA if self.missing or self.problems else PASSED

    def missing_lines(self) -> list[str]:
        return [f"{r.key}: {r.reason}" for r in self.missing] + list(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {"rev": self.rev, "rev_label": self.rev_label or self.rev, "commit": self.commit,
                "against": self.against, "against_commit": self.against_commit, "base": self.base,
                "base_reason": self.base_reason,
                "status": self.status, "regressions": [r.key for r in self.regressions],
                "missing": self.missing_lines(), "rows": [r.to_json() for r in self.rows],
                "evaluated": [o.to_json() for o in self.evaluated]}


def check(repo: Repo, rev: str = "HEAD", against: str = "main", *, merge_base: bool = True, run: bool = False,
          tasks: Iterable[str] | None = None, abs_tol: Mapping[str, float] | None = None,
          rel_tol: Mapping[str, float] | None = None, directions: Mapping[str, bool] | None = None,
          require: Iterable[str] = (), progress: Progress = NULL,
          on_outcome: Callable[[EvalOutcome], None] | None = None) -> CheckResult:
    """Judge every task/metric recorded for both `rev` and its baseline (the merge base of `rev` and
    `against`, or `against` itself when not `merge_base`); a CheckResult whose `status` is "passed",
    "regressed" or "missing".

    `abs_tol`, `rel_tol` and `directions` (True: higher is better) override mlvc.toml per key: "TASK/METRIC",
    "TASK/*" (every metric of a task) or "*" (every metric); `require` adds required keys ("TASK/METRIC" or
    "TASK/*"). `tasks` limits the check to those tasks. With `run`, configured tasks without a result at
    either commit are evaluated first."""
    only = list(dict.fromkeys(tasks)) if tasks else None
    overrides = _overrides(abs_tol or {}, rel_tol or {}, directions or {}, require)
    commit, against_commit = repo.resolve(rev), repo.resolve(against)
    branch = repo.head_branch() if rev in ("HEAD", "@") else None
    label = branch or rev  # what people call REV: the current branch's name rather than "HEAD"
    base, base_reason = _baseline(repo, label, commit, against, against_commit, merge_base)
    result = CheckResult(rev, commit, against, against_commit, base, base_reason, rev_label=label)
    configured = load_tasks(repo)
    records = repo.ledger.records()
    if only:
        unknown = [t for t in only if t not in configured and not any(r.task == t for r in records)]
        if unknown:
            raise EvalError(f"no task named {', '.join(map(repr, unknown))} is configured or recorded; "
                            f"configured: {', '.join(sorted(configured)) or 'none'}")
    ran: set[str] = set()
    if run:
        wanted = [t for t in configured if not only or t in only]
        if not wanted:
            raise EvalError("--run evaluates the tasks configured in mlvc.toml, and none is configured "
                            "(docs/ledger.md)")
        for cid in dict.fromkeys((base, commit)):
            have = {r.task for r in records if r.commit == cid and r.status == STATUS_OK}
            todo = [t for t in wanted if t not in have]
            if todo:
                outcome = repo.eval_run([cid], todo, progress=progress, on_outcome=on_outcome)
                result.evaluated.extend(outcome.outcomes)
        ran = set(wanted)
        if result.evaluated:
            records = repo.ledger.records()
    result.rows = _rows(repo, records, base, commit, only, overrides, configured, ran)
    if not result.compared:
        result.problems.append(f"no task/metric has a value at both {short(base)} (baseline) and "
                               f"{short(commit)} ({label})")
    return result


def short(cid: str) -> str:
    return cid[:12]


def _baseline(repo: Repo, rev: str, commit: str, against: str, against_commit: str,
              merge_base: bool) -> tuple[str, str]:
    if not merge_base:
        return against_commit, f"{against} ({short(against_commit)}) as it is"
    base = repo.merge_base(commit, against_commit)
    if base is None:
        raise RevisionError(against, f"{rev} and {against} have no common history, so they have no merge base; "
                            "compare with it as it is (--no-merge-base)")
    if base == against_commit:
        return base, f"{against} ({short(base)}), which {rev} descends from"
    if base == commit:
        return base, (f"{rev} itself: it is already in {against}'s history, so there is nothing of its own to "
                      f"check (--no-merge-base compares with {against} as it is)")
    return base, f"the merge base of {rev} and {against} ({short(base)}; {against} is at {short(against_commit)})"


def _overrides(abs_tol: Mapping[str, float], rel_tol: Mapping[str, float], directions: Mapping[str, bool],
               require: Iterable[str]) -> dict[tuple[str, str], MetricRule]:
    """The caller's rules by (task, metric), (task, "*") or ("*", "*")."""
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    for attr, given in (("abs_tol", abs_tol), ("rel_tol", rel_tol), ("direction", directions)):
        for key, value in given.items():
            fields.setdefault(_key(key), {})[attr] = value
    for key in require:
        k = _key(key)
        if k == (EVERY, EVERY):
            raise EvalError("require names a task or a metric (TASK/* or TASK/METRIC), not every metric")
        fields.setdefault(k, {})["required"] = True
    return {k: MetricRule(**v) for k, v in fields.items()}  # MetricRule checks each value (ConfigError)


def _key(key: str) -> tuple[str, str]:
    return (EVERY, EVERY) if key == EVERY else split_key(key)


def _rule(configured: Mapping[tuple[str, str], MetricRule], overrides: Mapping[tuple[str, str], MetricRule],
          remembered: Mapping[tuple[str, str], bool], task: str, metric: str) -> MetricRule:
    """The caller's overrides over mlvc.toml's rule, its direction filled in from the ledger where none."""
    given = rule_for(overrides, task, metric).over(overrides.get((EVERY, EVERY), UNRULED))
    return given.over(rule_for(configured, task, metric)).with_direction(remembered.get((task, metric)))


def _rows(repo: Repo, records: list[Record], base: str, commit: str, only: list[str] | None,
          overrides: Mapping[tuple[str, str], MetricRule], configured_tasks: Mapping[str, Any],
          ran: set[str]) -> list[CheckRow]:
    values: dict[str, dict[tuple[str, str], float]] = {base: {}, commit: {}}
    last_try: dict[tuple[str, str], Record] = {}
    for r in records:  # oldest first: the newest ok value wins
        if r.commit not in values or (only and r.task not in only):
            continue
        last_try[(r.commit, r.task)] = r
        if r.status == STATUS_OK and r.metric is not None and r.value is not None:
            values[r.commit][(r.task, r.metric)] = r.value
    configured = load_rules(repo)
    remembered = repo.ledger.directions(records)
    at_base, at_new = values[base], values[commit]
    keys = set(at_base) | set(at_new)
    for task in ran:  # evaluated for this check: every configured metric is expected at both commits
        keys |= {(task, m) for m in configured_tasks[task].metrics}
    measured = {t for t, _ in keys}
    for (_, task), r in last_try.items():  # a task that only failed: its metrics, or the task as a whole
        if r.status != STATUS_OK and task not in measured:
            spec = configured_tasks.get(task)
            keys |= {(task, m) for m in spec.metrics} if spec is not None else {(task, ALL_METRICS)}
    required = [k for k in required_keys(configured) if not only or k[0] in only]
    required += [k for k, r in overrides.items() if r.required and k not in required]
    for task, metric in required:
        if metric != ALL_METRICS:
            keys.add((task, metric))
    rows: list[CheckRow] = []
    for task, metric in sorted(keys):
        rule = _rule(configured, overrides, remembered, task, metric)
        b, n = at_base.get((task, metric)), at_new.get((task, metric))
        if b is not None and n is not None:
            delta, rel = change(b, n)
            v = verdict(rule, b, n)
            reason = "not a finite number" if v == Verdict.INVALID else None
            rows.append(CheckRow(task, metric, b, n, rule, MISSING if reason else v.value, delta, rel,
                                 rule.tolerance(b), reason))
            continue
        lacking = [(cid, side) for cid, side, v in ((base, "the baseline", b), (commit, "the revision", n))
                   if v is None]
        failed = [f"its evaluation at {side} {last_try[(cid, task)].status}: {last_try[(cid, task)].error}"
                  for cid, side in lacking
                  if (cid, task) in last_try and last_try[(cid, task)].status != STATUS_OK]
        where = " and ".join(side for _, side in lacking)
        if failed:
            rows.append(CheckRow(task, metric, b, n, rule, MISSING, reason="; ".join(failed)))
        elif rule.required or task in ran:
            why = "required, but" if rule.required else "evaluated for this check, but"
            rows.append(CheckRow(task, metric, b, n, rule, MISSING, reason=f"{why} no value at {where}"))
        else:
            rows.append(CheckRow(task, metric, b, n, rule, SKIPPED, reason=f"no value at {where}"))
    for task, metric in required:
        if metric == ALL_METRICS:
            for cid, side, have in ((base, "the baseline", at_base), (commit, "the revision", at_new)):
                if not any(t == task for t, _ in have):
                    rows.append(CheckRow(task, ALL_METRICS, None, None, rule_for(configured, task, ALL_METRICS),
                                         MISSING, reason=f"required, but the task has no value at {side} "
                                                         f"({short(cid)})"))
    return rows
