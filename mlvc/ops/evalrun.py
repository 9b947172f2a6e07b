"""eval run and eval record: measure commits and write the results to the ledger.

`run` checks each commit out into a temporary folder, runs each task's command there with a timeout, reads the
metrics it wrote as JSON, and appends one ledger row per metric. A command that fails, times out or writes
unusable output is recorded as one failure row with the reason and its stderr tail. Work already in the ledger
(an "ok" row for the same commit, task and spec hash) is skipped unless `force`; failures are tried again.

Every row carries its metric's direction when one is known: the configured one (tasks.load_rules), else the
one the ledger remembers (Ledger.directions). A direction that contradicts the configuration or the ledger is
refused (MetricDirectionError) before anything is run or written.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import EvalError, MetricDirectionError
from ..ledger import STATUS_FAILED, STATUS_OK, STATUS_TIMEOUT, Record
from ..metricrules import MetricRule, rule_for
from ..progress import NULL, Progress
from ..tasks import PROJECT_FILE, TaskSpec, get_task, load_rules, load_tasks
from ..util import canonical_json, hash_bytes

if TYPE_CHECKING:
    from ..repo import Repo

STDERR_TAIL_CHARS = 4000
SKIPPED = "skipped"


@dataclass
class EvalOutcome:
    commit: str
    task: str
    status: str  # "ok", "failed", "timeout" or "skipped" (already in the ledger)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    stderr_tail: str | None = None
    duration_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalRunResult:
    outcomes: list[EvalOutcome]

    @property
    def failures(self) -> list[EvalOutcome]:
        return [o for o in self.outcomes if o.status in (STATUS_FAILED, STATUS_TIMEOUT)]

    @property
    def skipped(self) -> list[EvalOutcome]:
        return [o for o in self.outcomes if o.status == SKIPPED]

    def to_json(self) -> dict[str, Any]:
        return {"outcomes": [o.to_json() for o in self.outcomes]}


@dataclass
class RecordResult:
    commit: str
    task: str
    metrics: dict[str, float]
    spec_hash: str
    path: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run(repo: Repo, revs: Iterable[str] | None = None, tasks: Iterable[str] | None = None, force: bool = False,
        progress: Progress = NULL, on_outcome: Callable[[EvalOutcome], None] | None = None) -> EvalRunResult:
    """Evaluate each revision (default HEAD) on each task (default all); `progress` shows the checkouts,
    `on_outcome` is called with each outcome as soon as it is known (and recorded)."""
    revs, tasks = (list(revs) if revs else None), (list(tasks) if tasks else None)
    configured = load_tasks(repo)
    if not configured:
        raise EvalError("no evaluation tasks are configured; add a [tasks.NAME] table to mlvc.toml or "
                        ".mlvc/config.toml (docs/ledger.md)")
    chosen = [get_task(repo, t, configured) for t in dict.fromkeys(tasks)] if tasks else list(configured.values())
    commits = list(dict.fromkeys(repo.resolve(r) for r in (revs or ["HEAD"])))
    rules = load_rules(repo)
    records = repo.ledger.records()
    _check_known_directions(repo, {(t.name, m): s.higher_is_better for t in chosen for m, s in t.metrics.items()},
                            records)
    done = set()
    if not force:
        done = {(r.commit, r.task, r.spec_hash) for r in records if r.ok}
    outcomes: list[EvalOutcome] = []

    def done_with(outcome: EvalOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    for cid in commits:
        todo = [t for t in chosen if (cid, t.name, t.spec_hash) not in done]
        for t in chosen:
            if t not in todo:
                done_with(EvalOutcome(cid, t.name, SKIPPED))
        if not todo:
            continue
        scratch = tempfile.mkdtemp(prefix="eval-", dir=_tmp_dir(repo))
        try:
            checkpoint = os.path.join(scratch, "checkpoint")
            repo.checkout(cid, output=checkpoint, progress=progress)
            for task in todo:
                outcome, rows = run_task(repo, task, cid, checkpoint, scratch, rules)
                repo.ledger.append(rows)
                done_with(outcome)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return EvalRunResult(outcomes)


def run_task(repo: Repo, task: TaskSpec, commit: str, checkpoint: str, scratch: str,
             rules: dict[tuple[str, str], MetricRule] | None = None) -> tuple[EvalOutcome, list[Record]]:
    """Run one task's command on one checked-out commit; the outcome and the ledger rows it yields.

    A metric's row carries its configured direction (the task's, else a [check.metrics] rule in `rules`);
    the ledger remembers it from there."""
    output = os.path.join(scratch, f"{task.name}.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(output)
    values = {"checkpoint": checkpoint, "output": output, "commit": commit, "task": task.name,
              "seed": "" if task.seed is None else str(task.seed), "python": sys.executable}
    argv = task.argv(values)
    env = dict(os.environ)
    env.update(task.env)
    env.update({"MLVC_EVAL_CHECKPOINT": checkpoint, "MLVC_EVAL_OUTPUT": output, "MLVC_EVAL_COMMIT": commit,
                "MLVC_EVAL_TASK": task.name})
    cwd = os.path.join(repo.root, task.cwd)
    started = time.monotonic()
    status, error, stdout, stderr = _execute(argv, cwd, env, task.timeout)
    duration = time.monotonic() - started
    metrics: dict[str, float] = {}
    notes = None
    if status == STATUS_OK:
        try:
            metrics, notes = parse_output(task, output, stdout)
        except EvalError as e:
            status, error = STATUS_FAILED, str(e)
    make_record = functools.partial(Record, spec_hash=task.spec_hash, spec=task.spec_json(), dataset=task.dataset,
                                    dataset_hash=task.dataset_hash, seed=task.seed, duration_s=duration,
                                    source="run")
    tail = _tail(stderr)
    if status != STATUS_OK:
        rec = make_record(commit, task.name, None, None, None, status=status, error=error, stderr_tail=tail,
                          notes=notes)
        return EvalOutcome(commit, task.name, status, {}, error, tail, duration), [rec]
    records = []
    for name, value in metrics.items():
        spec = task.metrics.get(name)
        direction = spec.higher_is_better if spec else rule_for(rules or {}, task.name, name).direction
        records.append(make_record(commit, task.name, name, value, direction, notes=notes))
    return EvalOutcome(commit, task.name, STATUS_OK, metrics, None, None, duration), records


def _execute(argv: list[str], cwd: str, env: dict[str, str], timeout: float
             ) -> tuple[str, str | None, bytes, bytes]:
    """Run without a shell, in its own process group so that a timeout kills its children too."""
    if not os.path.isdir(cwd):  # else the error below would blame the command
        return STATUS_FAILED, f"the task's folder (cwd) {cwd} is not a folder", b"", b""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        return STATUS_FAILED, f"cannot start {argv[0]!r}: {e.strerror or e}", b"", b""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return STATUS_TIMEOUT, f"timed out after {timeout:g} s and was killed", stdout, stderr
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exited with code {proc.returncode}")
        return STATUS_FAILED, f"the evaluator {how}", stdout, stderr
    return STATUS_OK, None, stdout, stderr


def parse_output(task: TaskSpec, output: str, stdout: bytes) -> tuple[dict[str, float], str | None]:
    """The metrics an evaluator reported: a JSON object of numbers, or {"metrics": {...}, "notes": "..."}."""
    if task.uses_output_file():
        try:
            with open(output, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise EvalError(f"the evaluator exited 0 but wrote no output file ({output})") from None
        where = "its output file"
    else:
        data, where = stdout, "its standard output"
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise EvalError(f"{where} is not JSON ({e})") from None
    except RecursionError:
        raise EvalError(f"{where} is JSON nested too deeply to be metrics") from None
    notes = None
    if isinstance(obj, dict) and isinstance(obj.get("metrics"), dict):
        notes = obj.get("notes") if isinstance(obj.get("notes"), str) else None
        obj = obj["metrics"]
    if not isinstance(obj, dict) or not obj:
        raise EvalError(f"{where} must be a JSON object of metric values, like {{\"accuracy\": 0.91}}")
    metrics = {}
    for name, value in obj.items():
        try:  # an integer past a float's range (10**400) is not finite as a float: OverflowError
            number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:60] + "..."
            raise EvalError(f"metric {name!r} in {where} is not a finite number: {shown}")
        metrics[str(name)] = number
    missing = [m for m in task.metrics if m not in metrics]
    if missing:
        raise EvalError(f"{where} lacks the configured metric(s) {', '.join(missing)} "
                        f"(it reported: {', '.join(metrics)})")
    return metrics, notes


def record(repo: Repo, rev: str, task: str, metrics: dict[str, float], *,
           higher_is_better: dict[str, bool] | None = None, dataset: str | None = None,
           dataset_hash: str | None = None, seed: int | None = None, notes: str | None = None,
           spec: dict[str, Any] | None = None) -> RecordResult:
    """Record metrics measured elsewhere (a training loop, a notebook) for commit `rev` and `task`.

    A metric's direction is remembered: the one given in `higher_is_better` must agree with the configured
    one (tasks.load_rules) and with the one the ledger remembers (its first row that gave one), else
    MetricDirectionError and nothing is written. Each row is written with the direction given, else the
    configured, else the remembered one; a metric with none of them stays without (shown without marks
    until a direction is given once). The spec defaults to {"source": "record", "task": task, "dataset":
    ..., "seed": ...}: recorded results never count as done work for `eval run`, whose spec is the
    configured command.
    """
    if not metrics:
        raise EvalError("nothing to record: give at least one metric=value")
    cid = repo.resolve(rev)
    rules = load_rules(repo)
    given = dict(higher_is_better or {})
    for name, hib in given.items():
        configured = rule_for(rules, task, name).direction
        if configured is not None and configured != hib:
            raise MetricDirectionError(task, name, hib, configured, "the configuration (mlvc.toml or "
                                       ".mlvc/config.toml)", f"Give no direction for it, or fix its rule in "
                                       f"{PROJECT_FILE}")
    records = repo.ledger.records()
    remembered = repo.ledger.directions(records)
    directions = {name: (given[name] if name in given else rule_for(rules, task, name).direction)
                  for name in metrics}
    directions = {name: (d if d is not None else remembered.get((task, name))) for name, d in directions.items()}
    spec = spec if spec is not None else {"source": "record", "task": task, "dataset": dataset,
                                          "dataset_hash": dataset_hash, "seed": seed}
    try:
        spec_bytes = canonical_json(spec)
    except (TypeError, ValueError) as e:
        raise EvalError(f"the spec must be plain JSON data ({e})") from None
    spec_hash = hash_bytes(spec_bytes)
    recs = [Record(cid, task, name, value, directions.get(name), spec_hash, spec=spec_bytes.decode(),
                   dataset=dataset, dataset_hash=dataset_hash, seed=seed, notes=notes, source="record")
            for name, value in metrics.items()]
    res = repo.ledger.append(recs)
    return RecordResult(cid, task, dict(metrics), spec_hash, res.path)


def _check_known_directions(repo: Repo, configured: dict[tuple[str, str], bool], records: list[Record]) -> None:
    """Refuse before running anything when a configured direction contradicts the one the ledger remembers."""
    first = repo.ledger.first_directions(records)
    for (task, metric), hib in sorted(configured.items()):
        row = first.get((task, metric))
        if row is not None and row.higher_is_better != hib:
            raise MetricDirectionError(task, metric, hib, bool(row.higher_is_better),
                                       f"the ledger (fixed by its first row with a direction, for commit "
                                       f"{row.commit[:12]})", f"Fix the metric's direction in [tasks.{task}], "
                                       "or rename the metric if its meaning changed")


def _tail(data: bytes) -> str | None:
    if not data:
        return None
    text = data.decode("utf-8", errors="replace")
    return text[-STDERR_TAIL_CHARS:]


def _tmp_dir(repo: Repo) -> str:
    path = os.path.join(repo.dir, "tmp")
    os.makedirs(path, exist_ok=True)
    return path
