"""Crash harness: kill an mlvc command at every fault-injection point of its transaction, then check the repo.

Shared by tests/test_crash.py (the CI subset) and scripts/crash_harness.py (the longer variant); the
scenarios are in scripts/crash_scenarios.py, docs/reliability.md says it all in prose.

1. a *scenario* builds a small repository in a case folder (`case/repo`, with `case/out` free for
   `checkout --output`), remembering the bytes of every commit it made;
2. a dry run of its command with `MLVC_FAULT_LOG` counts the K steps (the `faults.point` calls it passed;
   nothing is hard-coded, so points added to the library are picked up) and shows the state it reaches;
3. for N = 1..K: a fresh copy of the case folder, the command with `MLVC_FAULT_AT=N` (it SIGKILLs itself
   at its N-th step), then `check_kill`: `mlvc status` works (it is the first command after the crash, and
   finishes or rolls back an interrupted work-tree transaction), then the refs are in the old or the new
   state, never elsewhere, and the work tree matches them (all old or all new);
   `mlvc fsck --json` reports no problem; every commit checks out byte-exact; the next operation (the same
   command again, or a follow-up when the first one landed) succeeds with no manual cleanup and reaches the
   new state; fsck is clean after it.

Commands run in child processes (scripts/mlvcrun.py). The checks read refs and files straight from disk,
never through an mlvc command that could repair what it reads (scripts/crashstate.py, which also builds the
setups).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from crashstate import (  # noqa: F401 - re-exported: the scenarios and the tests import them from here
    ID,
    Labeller,
    Setup,
    checkout_bytes,
    init_repo,
    ledger_raw_row_ids,
    ledger_rows,
    leftovers,
    read_refs,
    scratch_root,
    sha256_file,
    tree,
    weights,
    write_blob,
    write_st,
)
from mlvcrun import Result

# -- scenarios and their baseline -------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    build: Callable[[Setup], None]
    cmd: list[str]  # run in case/repo; "{c1}" fields are replaced by the ids of the setup's commits
    again: list[str] | None = None  # next operation when the first one landed (None: `cmd` again)
    rows_added: int | None = None  # ledger rows one run adds (None: the ledger is not checked)
    chunk_size: int = 512
    requires: str | None = None  # an mlvc command that must exist (the scenario is skipped otherwise)
    prelude: Callable[[Any, str], None] | None = None  # (runner, repo root): run in each copy before `cmd`

    def argv(self, ids: dict[str, str], which: list[str] | None = None) -> list[str]:
        return [a.format(**ids) for a in (self.cmd if which is None else which)]


@dataclass
class Baseline:
    """A scenario's case folder before the command, and the state the command reaches (the dry run)."""

    scenario: Scenario
    case: str
    ids: dict[str, str]
    labeller: Labeller
    expected: dict[str, dict[str, str]]  # commit label -> {path: sha256}
    old_refs: dict[str, str]
    new_refs: dict[str, str]
    old_tree: dict[str, str]
    new_tree: dict[str, str]
    old_rows: int
    points: list[str]

    @property
    def argv(self) -> list[str]:
        return self.scenario.argv(self.ids)

    @property
    def distinguishable(self) -> bool:
        """Whether the new state differs from the old one in refs, ledger rows or files (not so for gc)."""
        return self.old_refs != self.new_refs or bool(self.scenario.rows_added) or self.old_tree != self.new_tree


def command_exists(runner, name: str, cwd: str) -> bool:
    return runner.run([name, "--help"], cwd).rc == 0


def prepare(sc: Scenario, runner, workdir: str) -> Baseline:
    """Build the scenario's case folder; the dry run counts the steps and shows the new state."""
    top = os.path.join(workdir, sc.name)
    shutil.rmtree(top, ignore_errors=True)
    case = os.path.join(top, "base")
    os.makedirs(case)
    setup = Setup(case, sc.chunk_size)
    sc.build(setup)
    labeller = Labeller(setup.names)
    pre = os.path.join(top, "pre")
    shutil.copytree(case, pre, symlinks=True)
    if sc.prelude:
        sc.prelude(runner, os.path.join(pre, "repo"))
    old_refs = labeller.refs_state(os.path.join(pre, "repo"))
    old_rows = ledger_rows(os.path.join(pre, "repo")) if sc.rows_added is not None else 0
    old_tree = tree(pre)[0]
    shutil.rmtree(pre)
    dry = os.path.join(top, "dry")
    shutil.copytree(case, dry, symlinks=True)
    if sc.prelude:
        sc.prelude(runner, os.path.join(dry, "repo"))
    log = os.path.join(top, "dry.points")
    r = runner.run(sc.argv(setup.ids), os.path.join(dry, "repo"), {"MLVC_FAULT_LOG": log})
    if r.rc != 0:
        raise RuntimeError(f"scenario {sc.name}: the dry run failed: {r.describe()}\n{r.stdout}\n{r.stderr}")
    with open(log, encoding="utf-8") as f:
        points = [line.strip() for line in f if line.strip()]
    dry_root = os.path.join(dry, "repo")
    new_refs = labeller.refs_state(dry_root)
    expected = dict(setup.expected)
    raw = read_refs(dry_root)
    for ref, lab in new_refs.items():
        if lab.startswith("new(") and lab not in expected:
            got = checkout_bytes(dry_root, raw[ref], top)
            if isinstance(got, str):
                raise RuntimeError(f"scenario {sc.name}: the dry run's new commit does not check out: {got}")
            expected[lab] = got
    base = Baseline(sc, case, dict(setup.ids), labeller, expected, old_refs, new_refs, old_tree, tree(dry)[0],
                    old_rows, points)
    shutil.rmtree(dry, ignore_errors=True)
    return base


# -- checking one kill ------------------------------------------------------------------------------------


@dataclass
class KillRecord:
    scenario: str
    n: int
    point: str | None  # the fault point the process died at (None: it finished before its n-th step)
    rc: int
    state: str = ""  # "old", "new", or "?" (neither)
    problems: list[str] = field(default_factory=list)
    corrupt: bool = False  # fsck problems, refs in neither state, duplicated ledger rows
    torn: bool = False  # the work tree matched neither state (after `mlvc status` had its chance to recover)
    lost: int = 0  # commits that no longer check out byte-exact
    next_failed: bool = False  # `mlvc status` or the next operation failed
    torn_after_kill: bool = False  # mixed right after the kill, before any recovery (information)
    refs_mid_after_kill: bool = False  # refs in neither state right after the kill (the recovery must fix them)
    second: str | None = None  # recovery-kill runs: what was killed second ("status@M", "next@M")
    second_killed: bool = False  # ... and whether it died there (else it finished before its M-th step)
    leftovers_after_kill: list[str] = field(default_factory=list)
    leftovers_after_next: list[str] = field(default_factory=list)


def classify(base: Baseline, case: str, shift: int = 0) -> tuple[str, str]:
    """("old" | "new" | "?", why) for a case folder: by its refs when the command moves refs, else by its
    ledger rows (`shift` rows more than the setup's when the command already ran once), else by its files;
    a command that changes none of these (gc) is always "old"."""
    root = os.path.join(case, "repo")
    refs = base.labeller.refs_state(root)
    sc = base.scenario
    if refs not in (base.old_refs, base.new_refs):
        diff = {k: (base.old_refs.get(k), base.new_refs.get(k), refs.get(k))
                for k in sorted(set(refs) | set(base.old_refs) | set(base.new_refs))
                if not (refs.get(k) == base.old_refs.get(k) == base.new_refs.get(k))}
        return "?", f"refs in neither the old nor the new state: {{ref: (old, new, found)}} = {diff}"
    if base.old_refs != base.new_refs:
        return ("old" if refs == base.old_refs else "new"), ""
    if sc.rows_added is not None:
        try:
            rows, old = ledger_rows(root), base.old_rows + shift
        except Exception as e:  # noqa: BLE001
            return "?", f"the ledger cannot be read: {type(e).__name__}: {e}"
        if rows in (old, old + sc.rows_added):
            return ("old" if rows == old else "new"), ""
        return "?", f"the ledger has {rows} rows, not {old} or {old + sc.rows_added}"
    if base.old_tree != base.new_tree:
        files = tree(case)[0]
        if files in (base.old_tree, base.new_tree):
            return ("old" if files == base.old_tree else "new"), ""
        return "?", "torn"
    return "old", ""


def _fsck(runner, root: str) -> list[str]:
    """The problems `mlvc fsck --json` reports, or why it could not say."""
    r = runner.run(["fsck", "--json"], root)
    try:
        report = json.loads(r.stdout)
        problems = report["problems"]
        assert isinstance(problems, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        return [f"fsck gave no usable JSON: {r.describe()}"]
    out = [f"fsck: {p.get('problem')} {str(p.get('object_id') or '')[:12]} {p.get('detail', '')} {p.get('path') or ''}"
           for p in problems]
    if not out and r.rc != 0:
        out = [f"fsck listed no problem but {r.describe()}"]
    return out


def check_state(base: Baseline, runner, case: str, rec: KillRecord, when: str, expect: str | None = None,
                shift: int = 0) -> str:
    """Everything about a case folder: its state (`expect`, or old or new), the work tree matching it,
    fsck clean, every commit byte-exact, ledger rows whole. Adds failures to `rec`; returns the state."""
    root = os.path.join(case, "repo")
    state, why = classify(base, case, shift)
    if why == "torn":
        rec.torn = True
        rec.problems.append(f"{when}: the work tree is neither all old nor all new")
    elif state == "?":
        rec.corrupt = True
        rec.problems.append(f"{when}: {why}")
    elif expect and state != expect and base.distinguishable:
        rec.problems.append(f"{when}: the state is {state}, not {expect}")
        if expect == "new":
            rec.next_failed = True
    if state in ("old", "new"):
        files = tree(case)[0]
        want = base.new_tree if state == "new" else base.old_tree
        if files != want:
            rec.torn = True
            mixed = sorted(p for p in set(files) | set(want) if files.get(p) != want.get(p))
            rec.problems.append(f"{when}: the state is {state} but the work tree is not: {mixed[:6]}")
    problems = _fsck(runner, root)
    if problems:
        rec.corrupt = True
        rec.problems += [f"{when}: {p}" for p in problems]
    scratch = tempfile.mkdtemp(prefix="verify-", dir=os.path.dirname(case))
    try:
        raw = read_refs(root)
        ids = dict(base.ids)
        for ref, lab in base.labeller.refs_state(root).items():
            if ID.match(raw.get(ref, "")) and lab in base.expected:
                ids.setdefault(lab, raw[ref])
        for lab, cid in ids.items():
            got = checkout_bytes(root, cid, scratch)
            want = base.expected.get(lab)
            if got != want:
                rec.lost += 1
                rec.problems.append(f"{when}: commit {lab} ({cid[:12]}) does not check out as committed: "
                                    f"{got if isinstance(got, str) else 'the files differ'}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if base.scenario.rows_added == 1:
        row_ids = ledger_raw_row_ids(root)
        if len(row_ids) != len(set(row_ids)):
            rec.corrupt = True
            rec.problems.append(f"{when}: the ledger holds a row twice ({len(row_ids)} rows, {len(set(row_ids))} ids)")
    return state


def _run_faulted(runner, argv: list[str], root: str, at: int | None, log: str) -> tuple[Result, list[str]]:
    """Run `argv`, killed at its step `at` (None: not killed); the points it passed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(log)
    r = runner.run(argv, root, {"MLVC_FAULT_AT": str(at) if at else None, "MLVC_FAULT_LOG": log})
    try:
        with open(log, encoding="utf-8") as f:
            passed = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        passed = []
    return r, passed


def _count_steps(runner, argv: list[str], case: str) -> int:
    """How many steps `argv` takes in `case` (run there, in place: a work-tree journal names its folder)."""
    _, passed = _run_faulted(runner, argv, os.path.join(case, "repo"), None, case + ".points")
    return len(passed)


def _kill_at(base: Baseline, runner, case: str, n: int, rec: KillRecord) -> None:
    """Run the scenario's command in `case`, killed at its step n; record how it ended."""
    root = os.path.join(case, "repo")
    r, passed = _run_faulted(runner, base.argv, root, n, case + ".points")
    rec.rc, rec.point = r.rc, (passed[-1] if r.killed and passed else None)
    if r.rc not in (0, -9):
        rec.problems.append(f"the command failed instead of dying or finishing: {r.describe()}")
    elif r.killed and len(passed) != n:
        rec.problems.append(f"killed after {len(passed)} step(s), not {n}")
    files, temps = tree(case)
    rec.torn_after_kill = files not in (base.old_tree, base.new_tree)
    rec.leftovers_after_kill = leftovers(root) + temps


def _after_crash(base: Baseline, runner, case: str, rec: KillRecord, status_at: int | None = None,
                 shift: int = 0) -> str:
    """`mlvc status` (the first command after the crash: it finishes or rolls back an interrupted work-tree
    transaction; with `status_at` it is itself killed at that step first, then run again), then every
    check. Returns the state."""
    root = os.path.join(case, "repo")
    refs0 = base.labeller.refs_state(root)
    if status_at:
        r, _ = _run_faulted(runner, ["status", "--json"], root, status_at, case + ".points")
        rec.second_killed = r.killed
        if r.rc not in (0, -9):
            rec.next_failed = True
            rec.problems.append(f"after the kill, the killed status: {r.describe()}")
    st = runner.run(["status", "--json"], root)
    if st.rc != 0:
        rec.next_failed = True
        rec.problems.append(f"after the kill: {st.describe()}")
    if refs0 in (base.old_refs, base.new_refs) and base.labeller.refs_state(root) != refs0:
        rec.corrupt = True  # (from neither state, the recovery may finish or undo a ref change: checked next)
        rec.problems.append("`mlvc status` after the kill moved a ref")
    rec.refs_mid_after_kill = refs0 not in (base.old_refs, base.new_refs)
    return check_state(base, runner, case, rec, "after the kill", shift=shift)


def _next_argv(base: Baseline, state: str) -> list[str]:
    sc = base.scenario
    return base.argv if state == "old" or sc.again is None else sc.argv(base.ids, sc.again)


def _next_op(base: Baseline, runner, case: str, rec: KillRecord, state: str, shift: int = 0) -> None:
    """The next operation from `state`: the command again (it must reach the new state), or the scenario's
    follow-up when the command had landed (it must succeed and leave fsck clean)."""
    root = os.path.join(case, "repo")
    nxt = _next_argv(base, state)
    shift += (base.scenario.rows_added or 0) if state == "new" else 0
    r2 = runner.run(nxt, root)
    if r2.rc != 0:
        rec.next_failed = True
        rec.problems.append(f"next operation: {r2.describe()}")
    elif nxt == base.argv:
        check_state(base, runner, case, rec, "after the next operation", expect="new", shift=shift)
    else:
        problems = _fsck(runner, root)
        if problems:
            rec.corrupt = True
            rec.problems += [f"after the next operation: {p}" for p in problems]
    rec.leftovers_after_next = leftovers(root) + tree(case)[1]


def _fresh_case(base: Baseline, workdir: str, label: str, runner=None) -> str:
    case = os.path.join(workdir, base.scenario.name, label)
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(base.case, case, symlinks=True)
    if base.scenario.prelude:
        base.scenario.prelude(runner, os.path.join(case, "repo"))
    return case


def _cleanup(case: str) -> None:
    shutil.rmtree(case, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(case + ".points")


def check_kill(base: Baseline, runner, workdir: str, n: int, keep: bool = False) -> KillRecord:
    """Kill the scenario's command at its step n in a fresh copy of the case folder, then check it all."""
    case = _fresh_case(base, workdir, f"kill-{n:03d}", runner)
    rec = KillRecord(base.scenario.name, n, None, 0)
    _kill_at(base, runner, case, n, rec)
    try:
        rec.state = _after_crash(base, runner, case, rec)
        if rec.state in ("old", "new"):
            _next_op(base, runner, case, rec, rec.state)
    except Exception as e:  # noqa: BLE001 - a repository the checks cannot even read is a corrupt one
        rec.corrupt = True
        rec.problems.append(f"the checks could not read the repository: {type(e).__name__}: {e}")
    if not keep:
        _cleanup(case)
    return rec


def check_recovery_kills(base: Baseline, runner, workdir: str, n: int, keep: bool = False) -> list[KillRecord]:
    """Kill the command at step n, then kill what follows at each of its own steps: the `mlvc status` that
    recovers, and the next operation. Each second kill is followed by the normal checks and next operation."""
    probe = _fresh_case(base, workdir, f"kill-{n:03d}-probe", runner)
    first = KillRecord(base.scenario.name, n, None, 0)
    _kill_at(base, runner, probe, n, first)
    out = []
    status_steps = _count_steps(runner, ["status", "--json"], probe)  # the probe is recovered now
    state, _ = classify(base, probe)
    nxt = _next_argv(base, state) if state in ("old", "new") else None
    next_steps = _count_steps(runner, nxt, probe) if nxt == base.argv else 0
    for m in range(1, status_steps + 1):
        case = _fresh_case(base, workdir, f"kill-{n:03d}-status-{m:03d}", runner)
        rec = KillRecord(base.scenario.name, n, None, 0, second=f"status@{m}")
        _kill_at(base, runner, case, n, rec)
        rec.state = _after_crash(base, runner, case, rec, status_at=m)
        if rec.state in ("old", "new"):
            _next_op(base, runner, case, rec, rec.state)
        out.append(rec)
        if not keep:
            _cleanup(case)
    # the next operation killed at each of its steps, when it is the command again (a follow-up after a
    # landed command goes beyond the old/new model: its kills are not counted here)
    if nxt == base.argv:
        shift = (base.scenario.rows_added or 0) if state == "new" else 0
        for m in range(1, next_steps + 1):
            case = _fresh_case(base, workdir, f"kill-{n:03d}-next-{m:03d}", runner)
            rec = KillRecord(base.scenario.name, n, None, 0, second=f"next@{m}")
            _kill_at(base, runner, case, n, rec)
            runner.run(["status", "--json"], os.path.join(case, "repo"))
            if classify(base, case)[0] != state:  # the first kill ended another way this time: not comparable
                _cleanup(case)
                continue
            r, _ = _run_faulted(runner, nxt, os.path.join(case, "repo"), m, case + ".points")
            rec.second_killed = r.killed
            if r.rc not in (0, -9):
                rec.next_failed = True
                rec.problems.append(f"the killed next operation: {r.describe()}")
            rec.state = _after_crash(base, runner, case, rec, shift=shift)
            if rec.state in ("old", "new"):
                _next_op(base, runner, case, rec, rec.state, shift)
            out.append(rec)
            if not keep:
                _cleanup(case)
    _cleanup(probe)
    return out


# -- running a scenario -----------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    name: str
    command: str
    steps: int
    points: list[str]
    kills: int = 0
    completed: int = 0  # runs that finished before their N-th step (the step count varied)
    corrupt: int = 0
    torn: int = 0
    lost: int = 0
    next_failed: int = 0
    landed: int = 0  # kills after which the state was already new
    torn_after_kill: int = 0
    refs_mid_after_kill: int = 0
    leftovers_after_next: int = 0  # kills after which a lock, temp file or journal was still there at the end
    leftover_kinds: dict[str, int] = field(default_factory=dict)  # what those were (random parts as *)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    recovery: bool = False  # run_scenario(recovery=True): `kills` counts runs (a kill, then a second kill or not)
    second_kills: int = 0  # recovery runs whose second command (status, next operation) was killed too

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tally(res: ScenarioResult, rec: KillRecord) -> None:
    res.kills += rec.rc == -9
    res.second_kills += rec.second_killed
    res.completed += rec.rc == 0
    res.corrupt += rec.corrupt
    res.torn += rec.torn
    res.lost += rec.lost
    res.next_failed += rec.next_failed
    res.landed += rec.state == "new"
    res.torn_after_kill += rec.torn_after_kill
    res.refs_mid_after_kill += rec.refs_mid_after_kill
    res.leftovers_after_next += bool(rec.leftovers_after_next)
    for path in rec.leftovers_after_next:
        kind = re.sub(r"^objects/[0-9a-f]{2}/", "objects/*/", re.sub(r"\.tmp-[^/]*$", ".tmp-*", path))
        kind = kind if kind.endswith(".tmp-*") else re.sub(r"^txn/[^/]*$", "txn/*", kind)
        kind = re.sub(r"[0-9a-f]{16,}", "*", kind)  # inflight/ID.lock and other random names
        res.leftover_kinds[kind] = res.leftover_kinds.get(kind, 0) + 1
    if rec.problems:
        res.failures.append(asdict(rec))


def run_scenario(sc: Scenario, runner, workdir: str, only: list[int] | None = None, keep: bool = False,
                 on_record: Callable[[KillRecord], None] | None = None, recovery: bool = False) -> ScenarioResult:
    """Kill `sc` at each of its steps (or those in `only`) and check the result. With `recovery`, each kill
    is followed by kills of the recovery and of the next operation at each of their steps
    (check_recovery_kills); `kills` then counts the second kills."""
    t0 = time.monotonic()
    probe = os.path.join(workdir, "probe")
    os.makedirs(probe, exist_ok=True)
    if sc.requires and not command_exists(runner, sc.requires, probe):
        return ScenarioResult(sc.name, " ".join(sc.cmd), 0, [], skipped=f"`mlvc {sc.requires}` does not exist yet")
    base = prepare(sc, runner, workdir)
    res = ScenarioResult(sc.name, "mlvc " + " ".join(sc.cmd), len(base.points), base.points, recovery=recovery)
    for n in only or range(1, len(base.points) + 1):
        records = check_recovery_kills(base, runner, workdir, n, keep) if recovery else \
            [check_kill(base, runner, workdir, n, keep)]
        for rec in records:
            _tally(res, rec)
            if on_record:
                on_record(rec)
    if not keep:
        shutil.rmtree(os.path.join(workdir, sc.name), ignore_errors=True)
    res.seconds = round(time.monotonic() - t0, 2)
    return res


def failure_text(res: ScenarioResult, limit: int = 5) -> str:
    lines = [f"{res.name}: {len(res.failures)} of {res.steps} kill(s) failed"]
    for f in res.failures[:limit]:
        second = f" then {f['second']}" if f.get("second") else ""
        lines.append(f"  step {f['n']} ({f['point']}){second}, state {f['state']}:")
        lines += [f"    {p}" for p in f["problems"][:6]]
        flag = " --recovery-kills" if res.recovery else ""
        lines.append(f"    reproduce: python scripts/crash_harness.py --scenario {res.name} --at {f['n']}{flag} --keep")
    return "\n".join(lines)
