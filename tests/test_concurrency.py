"""Many processes on one repository at once (scripts/concurrencylib.py; docs/reliability.md).

CI runs 8 writers x MLVC_CONCURRENCY_COMMITS (default 10) commits or ledger appends each, with readers
meanwhile; `python scripts/crash_harness.py --no-crash` runs the full 8 x 50.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))

import concurrencylib
import crashlib

WRITERS = 8
EACH = int(os.environ.get("MLVC_CONCURRENCY_COMMITS", "10"))


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="mlvc-conc-", dir=crashlib.scratch_root())
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("separate", [False, True], ids=["one-branch", "separate-branches"])
def test_concurrent_commits_with_readers(separate, workdir):
    r = concurrencylib.run_commits(workdir, WRITERS, EACH, separate_branches=separate)
    assert not r["failures"], "\n".join(r["failures"][:20])
    assert r["landed"] == WRITERS * EACH
    assert r["in_history"] == WRITERS * EACH
    assert r["reads"] > 0


def test_concurrent_ledger_appends_with_compaction(workdir):
    r = concurrencylib.run_ledger(workdir, WRITERS, EACH)
    assert not r["failures"], "\n".join(r["failures"][:20])
    assert r["landed"] == WRITERS * EACH
    assert r["in_history"] == WRITERS * EACH


def test_concurrent_commits_with_gc_running(workdir):
    """gc in a loop (default grace periods) beside 8 committing processes: nothing reachable goes."""
    r = concurrencylib.run_commits(workdir, WRITERS, EACH, separate_branches=False, readers=False, gc={})
    assert not r["failures"], "\n".join(r["failures"][:20])
    assert r["landed"] == WRITERS * EACH
    assert r["gc_runs"] > 0


def test_concurrent_commits_with_gc_prune_now_stress(workdir):
    """`gc --prune=now --prune-temp=now` in a loop beside committing processes. Whether the race is hit
    depends on timing, so this only checks that nothing unexpected happens besides the race the two tests
    below force (scripts/crash_harness.py reports what it hits)."""
    r = concurrencylib.run_commits(workdir, 4, 5, separate_branches=False, readers=False,
                                   gc={"prune": "now", "prune_temp": "now"})
    expected = ("is missing from the store", "FileNotFoundError", "No such file or directory", "does not check out",
                "missing from the history", "nobody reported", "fsck:", "does not end at the initial commit",
                "cannot be read after the run", "exited 1")
    unexpected = [f for f in r["failures"] if not any(e in f for e in expected)]
    assert not unexpected, "\n".join(f[-400:] for f in unexpected[:5])


def _gc_during(monkeypatch, when, **gc_args):
    """Run gc (in this process, with `gc_args`) once, the first time `when(point name)` is true at a fault
    point of whatever runs next: the interleaving of a gc in another process, forced at that instant."""
    from mlvc import faults
    from mlvc.repo import Repo

    state = {"done": False, "root": None}

    def hook(name):
        if not state["done"] and when(name):
            state["done"] = True
            Repo(state["root"]).gc(**gc_args)

    monkeypatch.setattr(faults, "point", hook)
    return state


def test_gc_prune_now_between_a_commits_objects_and_its_ref_move(workdir, monkeypatch):
    """The whole of a `gc --prune=now` run between a commit's object writes and its branch move: the commit's
    objects are unreachable then, and must still be kept (the in-flight fence, Repo.writing)."""
    from mlvc.repo import Repo

    root = os.path.join(workdir, "repo")
    crashlib.init_repo(root).commit(concurrencylib.tensors(0, 0), message="w0-0", path=concurrencylib.MODEL)
    wrote = []
    state = _gc_during(monkeypatch, lambda name: wrote.append(name) or (name == "lock.acquired" and
                                                                        "write.renamed" in wrote),
                       prune="now", prune_temp="now")
    state["root"] = root
    Repo(root).commit(concurrencylib.tensors(0, 1), message="w0-1", path=concurrencylib.MODEL)
    monkeypatch.undo()
    assert state["done"]
    report = Repo(root).fsck()
    assert not report.problems, [p.detail for p in report.problems]
    out = os.path.join(workdir, "out")
    Repo(root).checkout("HEAD", output=out)
    with open(os.path.join(out, concurrencylib.MODEL), "rb") as f:
        assert f.read() == concurrencylib.file_bytes(0, 1)


class _PausedCommit:
    """A commit in a thread of this process that writes (or dedupes) its objects and then waits, its ref not
    moved and its in-flight marker held, until `land()`: a commit of another process caught between the two."""

    def __init__(self, root: str, state: dict, message: str, path: str = concurrencylib.MODEL):
        import threading

        from mlvc.repo import Repo

        self.written, self.go, self.landed = threading.Event(), threading.Event(), {}

        def run():
            repo = Repo(root)
            flush = repo.store.flush

            def paused():
                self.written.set()
                self.go.wait(60)
                flush()

            repo.store.flush = paused
            self.landed["id"] = repo.commit(state, message=message, path=path).commit.id

        self.thread = threading.Thread(target=run)

    def start(self) -> None:
        self.thread.start()
        assert self.written.wait(60)

    def land(self) -> None:
        self.go.set()
        if self.thread.is_alive():
            self.thread.join(60)


def _landed_intact(root: str, commit_id: str, model: bytes, path: str = concurrencylib.MODEL) -> None:
    """The branch names the commit, nothing is missing (fsck, and a gc after), and it checks out as committed."""
    from mlvc.repo import Repo

    repo = Repo(root)
    assert repo.head() == commit_id
    report = repo.fsck()
    assert not report.problems, [p.detail for p in report.problems]
    repo.gc(prune="now")  # a reachable commit with a missing object would stop it (GcRefusedError)
    out = os.path.join(os.path.dirname(root), "out")
    shutil.rmtree(out, ignore_errors=True)
    repo.checkout("HEAD", output=out)
    with open(os.path.join(out, path), "rb") as f:
        assert f.read() == model


def _reset_away(root: str) -> str:
    """A repository whose branch was reset from w0-1 back to w0-0: w0-1's objects are reachable only from the
    reflog (a gc run with `expire_reflog="now"` finds them unreachable). w0-0's id."""
    from mlvc.repo import Repo

    repo = crashlib.init_repo(root)
    first = repo.commit(concurrencylib.tensors(0, 0), message="w0-0", path=concurrencylib.MODEL).commit.id
    repo.commit(concurrencylib.tensors(0, 1), message="w0-1", path=concurrencylib.MODEL)
    Repo(root).reset(first, hard=True, force=True)
    return first


def _gc_with(monkeypatch, root: str, commit: _PausedCommit, point=None, tips=None, **gc_args):
    """gc on `root` with a fault-point hook and a hook on each reading of the refs (after it), the paused commit
    landed at the end whatever happens; what gc returned."""
    from mlvc import faults
    from mlvc.ops import gc as gc_module
    from mlvc.repo import Repo

    real_tips = gc_module._tips

    def read_tips(*args):
        out = real_tips(*args)
        if tips is not None:
            tips()
        return out

    monkeypatch.setattr(faults, "point", point or (lambda name: None))
    monkeypatch.setattr(gc_module, "_tips", read_tips)
    try:
        return Repo(root).gc(**gc_args)
    finally:
        commit.land()
        monkeypatch.undo()


@pytest.mark.parametrize("at", [1, 2, "gc.checked"])
def test_gc_prune_now_keeps_a_commit_in_flight_at_its_start_that_lands_during_the_sweep(workdir, monkeypatch, at):
    """A commit in flight when `gc --prune=now` starts (its objects written, older than gc's start) whose ref moves
    while gc marks and sweeps (at gc's first or second look at delta bases: after the first walk of the refs,
    after the second; or in the sweep, before a deletion), its in-flight marker gone by the time gc reads the
    markers again: gc's limit never rises during a run, so the commit keeps its objects wherever it lands.
    (Found in review: gc read the markers anew for its limit after walking the refs again, and a commit that
    landed between the two lost its objects.)"""
    from mlvc.ops import gc as gc_module
    from mlvc.repo import Repo

    root = os.path.join(workdir, "repo")
    crashlib.init_repo(root).commit(concurrencylib.tensors(0, 0), message="w0-0", path=concurrencylib.MODEL)
    old = Repo(root).store.put(b"unreachable " * 100).id  # two hours old: gc deletes it, and so runs its sweep
    when = time.time() - 7200
    os.utime(Repo(root).store._path(old), (when, when))
    commit = _PausedCommit(root, concurrencylib.tensors(0, 1), "w0-1")
    commit.start()
    time.sleep(1.1)  # the commit's objects are older than gc's start: `--prune=now` alone would take them
    real, calls, landed_during = gc_module._close_bases, [], []

    def land() -> None:  # the commit lands now, and drops its marker
        commit.land()
        landed_during.append(True)
        assert not os.listdir(os.path.join(root, ".mlvc", "inflight"))

    def close_bases(*args):
        calls.append(1)
        if len(calls) == at:
            land()
        return real(*args)

    monkeypatch.setattr(gc_module, "_close_bases", close_bases)
    _gc_with(monkeypatch, root, commit, point=lambda name: name == at and not landed_during and land(), prune="now")
    assert landed_during and "id" in commit.landed
    _landed_intact(root, commit.landed["id"], concurrencylib.file_bytes(0, 1))


def test_gc_prune_now_keeps_what_a_commit_begun_during_the_sweep_deduped_against(workdir, monkeypatch):
    """A commit that begins after `gc --prune=now` has read the refs and the operations in flight, dedupes
    against objects gc found unreachable (a branch reset away from them, its reflog expired; under an hour old,
    so not freshened) and lands before gc deletes them: gc reads the refs again last thing before each
    deletion, and keeps what the landed commit needs."""
    root = os.path.join(workdir, "repo")
    _reset_away(root)
    commit = _PausedCommit(root, concurrencylib.tensors(0, 1), "again")  # the same checkpoint: its objects dedupe

    def point(name):
        if name == "gc.checked" and not commit.written.is_set():
            commit.start()
            commit.land()

    result = _gc_with(monkeypatch, root, commit, point=point, prune="now", expire_reflog="now")
    assert "id" in commit.landed and result.removed_objects  # gc ran its deletion (the first w0-1 commit object went)
    _landed_intact(root, commit.landed["id"], concurrencylib.file_bytes(0, 1))


def test_gc_prune_now_keeps_what_a_commit_in_flight_at_its_last_look_deduped_against(workdir, monkeypatch):
    """A commit that begins in gc's sweep, after gc checked the objects of a depth, dedupes against some of them
    (unreachable, under an hour old, so not freshened) and lands while gc reads the refs a last time before
    deleting them (after the refs are read): gc read the operations in flight before the refs, saw it, and keeps
    what it deduped against."""
    from mlvc.repo import Repo

    root = os.path.join(workdir, "repo")
    first = _reset_away(root)
    commit = _PausedCommit(root, concurrencylib.tensors(0, 1), "again")

    def point(name):
        if name == "gc.checked" and not commit.written.is_set():
            commit.start()
            Repo(root).create_tag("moved", first)  # a ref changed: gc reads the refs again

    def tips():  # the refs read: the commit lands now
        if commit.written.is_set():
            commit.land()

    _gc_with(monkeypatch, root, commit, point=point, tips=tips, prune="now", expire_reflog="now")
    assert commit.written.is_set() and "id" in commit.landed
    _landed_intact(root, commit.landed["id"], concurrencylib.file_bytes(0, 1))


def test_gc_prune_now_keeps_what_a_commit_begun_while_it_reads_the_refs_deduped_against(workdir, monkeypatch):
    """A commit that begins while gc reads the refs a last time before a deletion (after they are read), dedupes
    against objects gc listed (unreachable, under an hour old, so not freshened) and lands after gc: gc reads
    the operations in flight again after the refs, sees it, and keeps what it deduped against."""
    from mlvc.repo import Repo

    root = os.path.join(workdir, "repo")
    first = _reset_away(root)
    commit = _PausedCommit(root, concurrencylib.tensors(0, 1), "again")
    checked = []

    def point(name):
        if name == "gc.checked" and not checked:
            checked.append(name)
            Repo(root).create_tag("moved", first)  # a ref changed: gc reads the refs again

    def tips():  # the refs read: the commit begins now, and dedupes
        if checked and not commit.written.is_set():
            commit.start()

    _gc_with(monkeypatch, root, commit, point=point, tips=tips, prune="now", expire_reflog="now")
    assert commit.written.is_set() and "id" in commit.landed
    _landed_intact(root, commit.landed["id"], concurrencylib.file_bytes(0, 1))


@pytest.mark.parametrize("prune, age", [("now", 7200), (None, 30 * 86400)], ids=["prune-now", "default-grace"])
def test_gc_keeps_the_bases_of_an_object_a_commit_in_its_sweep_deduped_against(workdir, monkeypatch, prune, age):
    """A commit that begins in gc's sweep after gc checked a depth-2 delta X, dedupes against X (which freshens X
    alone) and is still in flight when gc looks a last time before deleting X's batch: gc keeps X, and X's
    delta bases with it (they are deleted in later batches otherwise), so the commit lands whole. With
    `--prune=now` and with the default grace (everything older than it). (Found in review.)"""
    from mlvc.repo import Repo

    root = os.path.join(workdir, "repo")
    repo = crashlib.init_repo(root)
    rng = np.random.default_rng(0)
    a0 = rng.standard_normal(32768).astype(np.float32)  # one 128 KiB chunk: a loose object, delta-coded
    a1 = a0.copy()
    a1[:50] += 1
    a2 = a1.copy()
    a2[100:150] += 1
    first = repo.commit({"w": a0}, message="c0", path="m.safetensors").commit.id
    Repo(root).commit({"w": a1}, message="c1", path="m.safetensors")
    third = Repo(root).commit({"w": a2}, message="c2", path="m.safetensors").commit.id
    store = Repo(root).store
    deltas = [o for f in Repo(root).read_manifest(Repo(root).read_commit(third).manifest, resolve=False).files
              for o in f.object_ids() if store.bases(o)]
    assert deltas and max(store.header(o).depth for o in deltas) == 2
    Repo(root).reset(first, hard=True, force=True)
    when = time.time() - age  # every object older than the grace
    for folder, _, names in os.walk(os.path.join(root, ".mlvc", "objects")):
        for name in names:
            os.utime(os.path.join(folder, name), (when, when))
    commit = _PausedCommit(root, {"w": a2}, "again", path="m.safetensors")

    def point(name):  # after gc checked the deepest batch (X among it), before its last look
        if name == "gc.checked" and not commit.written.is_set():
            commit.start()

    _gc_with(monkeypatch, root, commit, point=point, prune=prune, expire_reflog="now")
    assert commit.written.is_set() and "id" in commit.landed
    repo = Repo(root)
    report = repo.fsck()
    assert not report.problems, [p.detail for p in report.problems]
    assert np.asarray(repo.load("HEAD", path="m.safetensors")["w"]).tobytes() == a2.tobytes()


def test_gc_prune_temp_now_while_a_lock_is_being_taken(workdir, monkeypatch):
    """A `gc --prune-temp=now` run between a lock's temp file being written and its link to NAME.lock."""
    from mlvc import lockfile
    from mlvc.repo import Repo

    root = os.path.join(workdir, "repo")
    crashlib.init_repo(root).commit(concurrencylib.tensors(0, 0), message="w0-0", path=concurrencylib.MODEL)
    real_link = os.link
    done = []

    def link(src, dst, *args, **kwargs):
        if not done and str(dst).endswith(lockfile.LOCK_SUFFIX) and "gc.lock" not in str(dst):
            done.append(dst)
            Repo(root).gc(prune_temp="now")  # another process's gc, between the temp file and its link
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(lockfile.os, "link", link)
    Repo(root).commit(concurrencylib.tensors(0, 1), message="w0-1", path=concurrencylib.MODEL)
    monkeypatch.undo()
    assert done


def test_gc_prune_temp_now_while_an_object_is_being_written(workdir, monkeypatch):
    """A `gc --prune-temp=now` run between an object's temp file being synced and its rename."""
    from mlvc.repo import Repo

    root = os.path.join(workdir, "repo")
    crashlib.init_repo(root).commit(concurrencylib.tensors(0, 0), message="w0-0", path=concurrencylib.MODEL)
    state = _gc_during(monkeypatch, lambda name: name == "write.synced", prune_temp="now")
    state["root"] = root
    Repo(root).commit(concurrencylib.tensors(0, 1), message="w0-1", path=concurrencylib.MODEL)
    monkeypatch.undo()
    assert state["done"]
