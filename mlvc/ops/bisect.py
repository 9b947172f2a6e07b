"""bisect: find the first commit that regressed a task metric (or that makes any command fail).

The search runs over the first-parent history from BAD back to GOOD, as `git bisect --first-parent` does: a
merge commit is one step (its first parent is the branch it was made on), so a regression brought in by a
merge names the merge. Every probe halves the range, so a history of n commits needs about log2(n) verdicts.

Two ways to judge a commit:
- a task metric: its value is read from the ledger when one is recorded (no evaluator runs), else the task's
  command runs through `repo.eval_run` (and the result is recorded, as `mlvc eval run` would). A commit is
  bad when its value regresses against GOOD's by the metric's rule (direction and tolerances from mlvc.toml,
  mlvc/metricrules.py), or, with a threshold, when it is worse than the threshold. An evaluation that fails
  or times out is skipped (it can tell nothing), as is a commit whose result lacks the metric.
- a command, like `git bisect run`: each commit is checked out into a temporary folder and the command runs
  with `{checkpoint}` (and `{commit}`, `{python}`) filled in; exit 0 is good, 125 skip, 1-127 bad, and
  anything else (128 and up, a signal, a command that cannot start) stops the bisection.

Both endpoints are judged first (a GOOD that is bad, or a BAD that is good, is an error rather than a wrong
answer). Commits already judged from the ledger cost nothing, so they are probed first when they fall inside
the range. When skipped commits leave more than one candidate, all of them are returned.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BisectError, EvalError
from ..ledger import STATUS_OK
from ..metricrules import MetricRule, Verdict, verdict
from ..progress import NULL, Progress
from ..tasks import PLACEHOLDERS, effective_rule, fill, load_rules
from .treebuild import changed_paths

if TYPE_CHECKING:
    from ..objects import Commit
    from ..repo import Repo
    from .diff import TreeDiff

GOOD, BAD, SKIP = "good", "bad", "skip"
SKIP_EXIT = 125  # `git bisect run`: this exit status means "cannot test this commit"
METRIC, COMMAND = "metric", "command"


@dataclass
class BisectStep:
    """One commit judged: its verdict, the value it had (metric mode) or the command's exit status."""

    commit: str
    verdict: str  # good, bad or skip
    role: str = "probe"  # "good" / "bad" (the endpoints) or "probe"
    value: float | None = None
    exit_status: int | None = None
    evaluated: bool = True  # False: the value came from the ledger, no evaluator ran
    reason: str | None = None  # why it was skipped, or how it compared

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BisectResult:
    good: str
    bad: str
    mode: str  # "metric" or "command"
    chain: list[str]  # the candidates, oldest first: first-parent commits after GOOD's history, up to BAD
    steps: list[BisectStep] = field(default_factory=list)
    first_bad: str | None = None  # None when skipped commits leave several candidates
    candidates: list[str] = field(default_factory=list)  # the commits the first bad one may be (oldest first)
    task: str | None = None
    metric: str | None = None
    rule: MetricRule | None = None
    threshold: float | None = None
    good_value: float | None = None
    command: list[str] | None = None
    commit: Commit | None = None  # the first bad commit
    files: list[str] = field(default_factory=list)  # files it changed against its first parent
    diff: TreeDiff | None = None  # its tensors and layer groups against its first parent

    @property
    def evaluations(self) -> int:
        """How many times an evaluator (or the command) ran; values read from the ledger are not counted."""
        return sum(1 for s in self.steps if s.evaluated)

    @property
    def found(self) -> bool:
        return self.first_bad is not None

    def to_json(self) -> dict[str, Any]:
        return {"good": self.good, "bad": self.bad, "mode": self.mode, "task": self.task, "metric": self.metric,
                "rule": self.rule.to_json() if self.rule is not None else None, "threshold": self.threshold,
                "good_value": self.good_value, "command": self.command, "first_bad": self.first_bad,
                "candidates": self.candidates, "chain_length": len(self.chain),
                "evaluations": self.evaluations, "steps": [s.to_json() for s in self.steps],
                "commit": self.commit.to_json() if self.commit else None, "files": self.files,
                "diff": self.diff.to_json() if self.diff else None}


def first_parent_chain(repo: Repo, good: str, bad: str) -> list[str]:
    """The commits to search, oldest first: BAD and its first-parent ancestors that GOOD does not reach."""
    if repo.merge_base(good, bad) != good:
        raise BisectError(f"the good commit {good[:12]} is not an ancestor of the bad commit {bad[:12]}; "
                          "give a --good that the bad commit's history contains (see `mlvc log`)")
    reached = {c.id for c in repo.log(good)}
    chain = []
    cid: str | None = bad
    while cid is not None and cid not in reached:
        chain.append(cid)
        parents = repo.read_commit(cid).parents
        cid = parents[0] if parents else None
    if not chain:
        raise BisectError(f"the good and bad commits are the same ({bad[:12]}): there is nothing to search")
    return chain[::-1]


def bisect(repo: Repo, good: str, bad: str, task: str | None = None, metric: str | None = None, *,
           threshold: float | None = None, higher_is_better: bool | None = None,
           abs_tol: float | None = None, rel_tol: float | None = None,
           command: Sequence[str] | None = None, timeout: float | None = None, with_diff: bool = True,
           progress: Progress = NULL, on_step: Callable[[BisectStep], None] | None = None) -> BisectResult:
    """Binary search for the first commit between GOOD (exclusive) and BAD (inclusive), on BAD's first-parent
    history, that is bad: by `task`/`metric` (ledger values reused, missing ones evaluated; bad = regressed
    against GOOD's value by the metric's rule, or worse than `threshold`), or by `command`'s exit status.

    `higher_is_better`, `abs_tol` and `rel_tol` override the metric's rule from mlvc.toml and the ledger.
    `on_step` is called with each verdict as soon as it is known."""
    if command is not None and (task is not None or metric is not None):
        raise EvalError("bisect judges commits by a task metric or by a command, not both")
    if command is None and (not task or not metric):
        raise EvalError("bisect needs --task and --metric (or a command after `--`)")
    if command is not None and not list(command):
        raise EvalError("the bisect command is empty: give it after `--`")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise EvalError(f"the timeout must be a positive number of seconds, not {timeout!r}")
    good_id, bad_id = repo.resolve(good), repo.resolve(bad)
    chain = first_parent_chain(repo, good_id, bad_id)
    judge: _Judge
    if command is not None:
        judge = _CommandJudge(repo, list(command), timeout, progress)
        result = BisectResult(good_id, bad_id, COMMAND, chain, command=list(command))
    else:
        assert task is not None and metric is not None
        judge = _MetricJudge(repo, task, metric, threshold, higher_is_better, abs_tol, rel_tol, progress)
        result = BisectResult(good_id, bad_id, METRIC, chain, task=task, metric=metric, rule=judge.rule,
                              threshold=threshold)

    def record(step: BisectStep) -> BisectStep:
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
        return step

    # the endpoints: a wrong GOOD or BAD would make any answer meaningless
    g = record(judge.judge(good_id, "good"))
    if g.verdict != GOOD:
        raise BisectError(f"the good commit {good_id[:12]} is not good ({g.reason}); bisect needs a --good "
                          "commit that passes")
    result.good_value = g.value
    b = record(judge.judge(bad_id, "bad"))
    if b.verdict != BAD:
        hint = ("the command passes there" if command is not None else
                "nothing regressed between the two, or the rule is too lenient (see --abs-tol, --rel-tol, "
                "--threshold)")
        raise BisectError(f"the bad commit {bad_id[:12]} is not bad ({b.reason}); {hint}")

    def probe(i: int) -> str:
        return record(judge.judge(chain[i], "probe")).verdict

    lo, hi = search(len(chain), probe, lambda i: judge.known(chain[i]))
    result.candidates = chain[lo + 1: hi + 1]
    if len(result.candidates) == 1:
        result.first_bad = chain[hi]
        result.commit = repo.read_commit(chain[hi])
        parent = result.commit.parents[0] if result.commit.parents else None
        result.files = sorted(changed_paths(repo.read_manifest(repo.read_commit(parent).manifest, resolve=False)
                                            if parent else None,
                                            repo.read_manifest(result.commit.manifest, resolve=False)))
        if with_diff:
            result.diff = repo.diff_commit(chain[hi], progress=progress)
    return result


def search(n: int, probe: Callable[[int], str], free: Callable[[int], bool] = lambda i: False) -> tuple[int, int]:
    """Binary search over positions 0..n-1 (oldest first) where n-1 is known bad and the position before 0
    known good; `probe(i)` says "good", "bad" or "skip". Returns (lo, hi): lo the last known good position
    (-1: none probed), hi the first known bad one; the first bad commit is one of lo+1..hi (exactly hi when
    no skipped position lies between). Positions where `free(i)` (their verdict costs nothing) are probed
    first when inside the range; otherwise the one nearest the middle, so about log2(n) probes are made."""
    lo, hi = -1, n - 1
    skipped: set[int] = set()
    while hi - lo > 1:
        inside = [i for i in range(lo + 1, hi) if i not in skipped]
        if not inside:
            break
        mid = (lo + hi) // 2
        cheap = [i for i in inside if free(i)]
        i = min(cheap or inside, key=lambda k: (abs(k - mid), k))
        v = probe(i)
        if v == GOOD:
            lo = i
        elif v == BAD:
            hi = i
        elif v == SKIP:
            skipped.add(i)
        else:
            raise ValueError(f"a verdict is good, bad or skip, not {v!r}")
    return lo, hi


class _Judge:
    def known(self, commit: str) -> bool:
        return False

    def judge(self, commit: str, role: str) -> BisectStep:  # pragma: no cover - overridden
        raise NotImplementedError


class _MetricJudge(_Judge):
    """Verdicts from a task metric: the ledger's value when there is one, else an `eval run` of the task."""

    def __init__(self, repo: Repo, task: str, metric: str, threshold: float | None,
                 higher_is_better: bool | None, abs_tol: float | None, rel_tol: float | None, progress: Progress):
        self.repo, self.task, self.metric, self.threshold, self.progress = repo, task, metric, threshold, progress
        if threshold is not None and not math.isfinite(threshold):
            raise EvalError(f"the threshold must be a finite number, not {threshold!r}")
        self.values: dict[str, float] = {}
        records = repo.ledger.records()
        for r in records:  # oldest first: the newest ok value of each commit wins
            if r.status == STATUS_OK and r.task == task and r.metric == metric and r.value is not None:
                self.values[r.commit] = r.value
        given = MetricRule(higher_is_better, abs_tol, rel_tol)  # flags over mlvc.toml over the ledger's memory
        self.rule = given.over(effective_rule(load_rules(repo), repo.ledger.directions(records), task, metric))
        if self.rule.direction is None:
            raise EvalError(f"which direction is better for {task}/{metric} is not known; pass --higher or "
                            f"--lower (or set it in mlvc.toml)")
        self.good_value: float | None = None

    def known(self, commit: str) -> bool:
        return commit in self.values

    def judge(self, commit: str, role: str) -> BisectStep:
        evaluated = commit not in self.values
        if evaluated:
            run = self.repo.eval_run([commit], [self.task], progress=self.progress)
            outcome = next(o for o in run.outcomes if o.task == self.task)
            if outcome.status == "skipped":  # done under this spec, but not with this metric
                return BisectStep(commit, SKIP, role, evaluated=False,
                                  reason=f"the ledger's result of {self.task} has no metric {self.metric}")
            if outcome.status != STATUS_OK:
                return BisectStep(commit, SKIP, role, reason=f"evaluation {outcome.status}: {outcome.error}")
            if self.metric not in outcome.metrics:
                return BisectStep(commit, SKIP, role, reason=f"{self.task} reported no metric {self.metric} "
                                  f"(it reported {', '.join(outcome.metrics) or 'nothing'})")
            self.values[commit] = outcome.metrics[self.metric]
        value = self.values[commit]
        if role == "good" and self.threshold is None:
            self.good_value = value
            return BisectStep(commit, GOOD, role, value, evaluated=evaluated, reason="the reference value")
        if self.threshold is not None:
            # worse than the threshold at all (no tolerance) is bad
            worse = verdict(MetricRule(self.rule.direction), self.threshold, value) == Verdict.REGRESSED
            how = f"{'worse' if worse else 'not worse'} than the threshold {self.threshold:g}"
            return BisectStep(commit, BAD if worse else GOOD, role, value, evaluated=evaluated, reason=how)
        assert self.good_value is not None  # the good endpoint is judged first
        v = verdict(self.rule, self.good_value, value)
        return BisectStep(commit, BAD if v == Verdict.REGRESSED else GOOD, role, value, evaluated=evaluated,
                          reason=f"{v.value} against the good commit's {self.good_value:g}")


class _CommandJudge(_Judge):
    """Verdicts from a command's exit status, run on each commit checked out into a temporary folder."""

    def __init__(self, repo: Repo, command: list[str], timeout: float | None, progress: Progress):
        self.repo, self.command, self.timeout, self.progress = repo, command, timeout, progress

    def judge(self, commit: str, role: str) -> BisectStep:
        scratch = tempfile.mkdtemp(prefix="bisect-", dir=_tmp_dir(self.repo))
        try:
            checkpoint = os.path.join(scratch, "checkpoint")
            self.repo.checkout(commit, output=checkpoint, progress=self.progress)
            values = dict.fromkeys(PLACEHOLDERS, "") | {
                "checkpoint": checkpoint, "commit": commit, "python": sys.executable,
                "output": os.path.join(scratch, "output.json")}
            argv = [fill(a, values) for a in self.command]
            env = dict(os.environ, MLVC_BISECT_CHECKPOINT=checkpoint, MLVC_BISECT_COMMIT=commit)
            status, reason = _run(argv, self.repo.root, env, self.timeout)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if status is None:  # timed out: it tells nothing about this commit
            return BisectStep(commit, SKIP, role, reason=reason)
        if status == 0:
            return BisectStep(commit, GOOD, role, exit_status=0, reason="exit 0")
        if status == SKIP_EXIT:
            return BisectStep(commit, SKIP, role, exit_status=status, reason=f"exit {SKIP_EXIT} (skip)")
        if 0 < status < 128:
            return BisectStep(commit, BAD, role, exit_status=status, reason=f"exit {status}")
        raise BisectError(f"the bisect command {reason or f'exited {status}'} on {commit[:12]}; exit 0 means "
                          f"good, {SKIP_EXIT} skip, 1-127 bad, and anything else stops the bisection")


def _run(argv: list[str], cwd: str, env: dict[str, str], timeout: float | None) -> tuple[int | None, str | None]:
    """(exit status, reason): status None when it timed out; a signal or a failure to start gives a status of
    128 or more, which stops the bisection. Runs in its own process group so a timeout kills its children."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        return 255, f"cannot start {argv[0]!r} ({e.strerror or e})"
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, f"timed out after {timeout:g} s and was killed"
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode < 0:
        return 128 - proc.returncode, f"was killed by signal {-proc.returncode}"
    return proc.returncode, None


def _tmp_dir(repo: Repo) -> str:
    path = os.path.join(repo.dir, "tmp")
    os.makedirs(path, exist_ok=True)
    return path

