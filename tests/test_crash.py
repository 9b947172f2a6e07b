"""Crash safety: every command killed at every step of its transaction leaves a repository that fsck calls
clean, whose commits all check out byte-exact, whose refs and work tree are all old or all new, and on which
the next command succeeds with no manual cleanup.

The harness is scripts/crashlib.py (scenarios: scripts/crash_scenarios.py; docs/reliability.md explains
it). This runs the CI set of scenarios; `python scripts/crash_harness.py` runs them all, and more.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))

import crash_scenarios
import crashlib
import mlvcrun

# Scenarios that still fail, with the bug (docs/reliability.md); strict: a fix makes the test fail until
# the entry is removed.
XFAIL: dict[str, str] = {}

RESULTS: dict[str, crashlib.ScenarioResult] = {}


@pytest.fixture(scope="module")
def runner():
    r = mlvcrun.make_runner("fork")
    yield r
    r.close()


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="mlvc-crash-", dir=crashlib.scratch_root())
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _params():
    for sc in crash_scenarios.CI:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[sc.name])] if sc.name in XFAIL else []
        yield pytest.param(sc, id=sc.name, marks=marks)


@pytest.mark.parametrize("scenario", _params())
def test_killed_at_every_step(scenario, runner, workdir):
    res = crashlib.run_scenario(scenario, runner, workdir)
    if res.skipped:
        pytest.skip(res.skipped)
    RESULTS[scenario.name] = res
    assert res.steps > 0, "the dry run passed no fault point"
    assert res.kills + res.completed == res.steps
    assert res.kills > 0
    assert not res.failures, crashlib.failure_text(res)


def test_a_spawned_mlvc_dies_at_the_same_steps(workdir):
    """The fork server is only a faster way to start a process: one `python -m mlvc` per command gives the
    same steps and the same verdicts."""
    sc = next(s for s in crash_scenarios.CI if s.name == "branch-delete")
    spawned = crashlib.run_scenario(sc, mlvcrun.SpawnRunner(), workdir)
    forker = mlvcrun.make_runner("fork")
    try:
        assert forker.name == "fork", "the fork server did not start (see the message above)"
        forked = crashlib.run_scenario(sc, forker, workdir)
    finally:
        forker.close()
    assert spawned.points == forked.points
    assert (spawned.kills, spawned.landed, spawned.failures) == (forked.kills, forked.landed, forked.failures)
    assert not spawned.failures, crashlib.failure_text(spawned)


def test_kill_count():
    """The CI set alone kills mlvc at least 200 times (when every scenario ran: not under `-k`)."""
    ran = {s.name for s in crash_scenarios.CI} - set(XFAIL)
    if not ran <= set(RESULTS) | {s.name for s in crash_scenarios.CI if s.requires}:
        pytest.skip("counts the kills of the scenario tests: run the whole module")
    assert sum(r.kills for r in RESULTS.values()) >= 200


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_an_interrupted_checkout_recovers_where_the_repository_is_now(how, workdir):
    """A checkout killed half-way through its renames, then the repository folder moved (or copied, as a
    backup would): the next command there must finish the update in *that* work tree, and touch nothing
    in the folder the repository came from."""
    case = os.path.join(workdir, f"moved-{how}")
    setup = crashlib.Setup(case)
    crash_scenarios.branches(setup)
    runner = mlvcrun.make_runner("fork")
    try:
        crash_scenarios.KilledCommand(["checkout", "other"], "worktree.renamed")(runner, setup.root)
        before = crashlib.tree(setup.root)
        there = os.path.join(workdir, f"moved-{how}-there")
        (shutil.move if how == "moved" else lambda a, b: shutil.copytree(a, b, symlinks=True))(setup.root, there)
        r = runner.run(["status", "--json"], there)
        assert r.rc == 0, r.describe()
        files, temps = crashlib.tree(there)
        want = {p: h for p, h in setup.expected["o1"].items()}
        assert (files, temps) == (want, []), "the work tree is not all new after the recovery"
        if how == "copied":
            assert crashlib.tree(setup.root) == before, "the recovery changed the folder the copy came from"
    finally:
        runner.close()
