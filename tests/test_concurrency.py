"""Many processes on one repository at once (scripts/concurrencylib.py; docs/reliability.md).

CI runs 8 writers x MLVC_CONCURRENCY_COMMITS (default 10) commits or ledger appends each, with readers
meanwhile; `python scripts/crash_harness.py --no-crash` runs the full 8 x 50.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

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
