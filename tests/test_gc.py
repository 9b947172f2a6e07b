"""`mlvc gc`: what is reachable is kept (branches, tags, HEAD, reflogs, delta bases), unreachable objects past
the grace period go, young ones and the objects a commit in flight dedupes against stay, temp files and stale
locks are cleared, and a crash at any step leaves a repository fsck finds intact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import flip_byte, make_repo, random_state_dict, write_safetensors_np
from mlvc import lockfile
from mlvc.cli import cli
from mlvc.errors import ConfigError, GcRefusedError, LockBusyError
from mlvc.objects import Commit, FileEntry, Manifest
from mlvc.ops.gc import DEFAULT_GRACE, DEFAULT_TEMP_GRACE, parse_grace
from mlvc.refs import HEADS
from mlvc.repo import Repo
from mlvc.store import MemoryObjectStore
from mlvc.util import TMP_PREFIX, hash_bytes, utc_now

DAY = 86400.0
MONTH = 30 * DAY


def _model(seed: int) -> dict[str, np.ndarray]:
    return random_state_dict(seed)


def _commit(repo: Repo, seed: int, message: str | None = None) -> str:
    return repo.commit(_model(seed), message=message or f"seed {seed}", path="model.safetensors").commit.id


def _age(path: str, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def _age_objects(repo: Repo, seconds: float = MONTH) -> None:
    for oid in repo.store.ids():
        _age(repo.store.locate(oid), seconds)


def _junk(repo: Repo, n: int, seed: int = 99) -> list[str]:
    rng = np.random.default_rng(seed)
    return [repo.store.put(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()).id for _ in range(n)]


def _needs(repo: Repo, cid: str) -> set[str]:
    """Every object commit `cid` alone needs: itself, its manifest, its files' objects and their delta bases."""
    c = repo.read_commit(cid)
    out = {cid, c.manifest}
    for f in repo.read_manifest(c.manifest).files:
        out.update(f.object_ids())
    stack = list(out)
    while stack:
        for b in repo.store.bases(stack.pop()):
            if b not in out:
                out.add(b)
                stack.append(b)
    return out


def _drop_reflogs(repo: Repo) -> None:
    shutil.rmtree(os.path.join(repo.dir, "logs"))
    os.makedirs(os.path.join(repo.dir, "logs"))


def _readable(repo: Repo, cid: str) -> None:
    """Every tensor of the commit loads (through its delta chains, each object verified)."""
    assert repo.load(cid, framework="numpy")


@pytest.fixture
def repo(tmp_path) -> Repo:
    return make_repo(tmp_path / "repo", chunk_size=4096)


# -- what is reachable ------------------------------------------------------------------------------------


def test_branches_tags_and_detached_head_are_kept(repo):
    c1 = _commit(repo, 1)
    repo.create_tag("v1", c1)
    c2 = _commit(repo, 2)
    repo.switch("side", create=True, start=c1, force=True)
    c3 = _commit(repo, 3)
    repo.checkout(c2, force=True)  # detached
    c4 = _commit(repo, 4)
    assert repo.head_branch() is None and repo.head() == c4
    _drop_reflogs(repo)  # only the refs themselves keep these commits
    junk = _junk(repo, 4)
    _age_objects(repo)
    before = set(repo.store.ids())

    r = repo.gc()

    assert sorted(r.removed_objects) == sorted(junk) and r.objects_removed == 4
    assert set(repo.store.ids()) == before - set(junk)
    assert r.commits_reached == 4 and r.objects_missing == 0
    assert r.objects_kept == len(before) - 4 and r.objects_young == 0
    for cid in (c1, c2, c3, c4):
        assert _needs(repo, cid) <= set(repo.store.ids())
        _readable(repo, cid)
    assert repo.fsck().ok


def _dated(monkeypatch, days_ago: float) -> None:
    """Reflog lines written from now on carry a time `days_ago` days in the past."""
    import datetime as dt

    import mlvc.refs

    t = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    monkeypatch.setattr(mlvc.refs, "utc_now", lambda: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def test_old_reflog_entries_expire_and_what_only_they_named_is_collected(repo, monkeypatch):
    """Entries older than gc.reflog_expire (default 90 days) are dropped before the mark; a commit that only
    such entries named is then garbage, while one a younger entry names is kept. A dry run counts the entries
    and changes nothing; 'never' keeps every entry."""
    _dated(monkeypatch, 200)
    c1 = _commit(repo, 1)
    c2 = _commit(repo, 2)
    repo.reset(c1, hard=True, force=True)  # c2: named by old entries only (its commit's, the reset's old)
    _dated(monkeypatch, 10)
    repo.switch("exp", create=True, force=True)
    c3 = _commit(repo, 3)  # named by young entries of HEAD's log (exp's log goes with exp)
    repo.switch("main", force=True)
    repo.delete_branch("exp")
    monkeypatch.undo()
    _age_objects(repo)
    logs = {ref: repo.refs.reflog(ref) for ref in repo.refs.reflog_refs()}
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 90 * DAY))
    n_old = sum(e.time < cutoff for entries in logs.values() for e in entries)
    only_c2 = _needs(repo, c2) - _needs(repo, c1) - _needs(repo, c3)
    assert n_old == 6 and only_c2  # commit c1, commit c2, the reset: each logged by main and by HEAD

    dry = repo.gc(dry_run=True)
    assert dry.reflog_entries_expired == n_old and set(dry.removed_objects) == only_c2
    assert {ref: repo.refs.reflog(ref) for ref in repo.refs.reflog_refs()} == logs  # nothing rewritten
    never = repo.gc(expire_reflog="never")
    assert never.reflog_entries_expired == 0 and never.objects_removed == 0

    r = repo.gc()
    assert r.reflog_entries_expired == n_old and set(r.removed_objects) == only_c2
    after = {ref: repo.refs.reflog(ref) for ref in repo.refs.reflog_refs()}
    assert after == {ref: [e for e in entries if e.time >= cutoff] for ref, entries in logs.items()}
    assert _needs(repo, c1) | _needs(repo, c3) <= set(repo.store.ids()) and repo.fsck().ok


def test_reflog_expiry_keeps_undatable_lines_and_reads_the_config(repo):
    c1 = _commit(repo, 1)
    c2 = _commit(repo, 2)
    log = os.path.join(repo.dir, "logs", "refs", "heads", "main")
    with open(log, "rb") as f:
        lines = f.read().splitlines()
    lines[1] = lines[1].replace(b'"time": "', b'"time": "not a time ')  # c2's line cannot be dated
    with open(log, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    config = os.path.join(repo.dir, "config.toml")
    with open(config, "a", encoding="utf-8") as f:
        f.write('\n[gc]\nreflog_expire = "now"\n')
    repo = Repo(repo.root)
    r = repo.gc()
    assert r.reflog_expire_seconds == 0 and r.reflog_entries_expired == 3  # main's c1 line, HEAD's two
    assert [e.new for e in repo.refs.reflog(HEADS + "main")] == [c2] and repo.refs.reflog("HEAD") == []
    assert _needs(repo, c1) <= set(repo.store.ids())  # c2's parent: reachable from main still
    with open(config, "a", encoding="utf-8") as f:
        f.write('[other]\n')
    with open(config, encoding="utf-8") as f:
        text = f.read().replace('reflog_expire = "now"', 'reflog_expire = "soon"')
    with open(config, "w", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(ConfigError, match="gc.reflog_expire"):
        Repo(repo.root).gc()


def test_expire_log_rewrites_under_the_ref_lock(repo, monkeypatch):
    """expire_log rewrites while holding the ref's lock: a move of the ref meanwhile waits (here: gives up), so
    no line it would append can be lost; the kept lines are exactly the ones not dropped."""
    import mlvc.refs

    c1 = _commit(repo, 1)
    c2 = _commit(repo, 2)
    ref = HEADS + "main"
    real = mlvc.refs.atomic_write_bytes
    tried = []

    def write(path, data, *a, **k):
        if path.endswith(os.path.join("logs", "refs", "heads", "main")):
            with pytest.raises(LockBusyError):
                repo.refs.set_if_equals(ref, c2, c1, "x", "concurrent move")
            tried.append(path)
        return real(path, data, *a, **k)

    monkeypatch.setattr(mlvc.refs, "atomic_write_bytes", write)
    assert repo.refs.expire_log(ref, lambda e: e.new == c1) == 1
    assert tried and [e.new for e in repo.refs.reflog(ref)] == [c2] and repo.refs.resolve(ref) == c2
    assert repo.refs.expire_log(ref, lambda e: False) == 0 and len(tried) == 1  # nothing to drop: untouched


def test_reflog_only_commits_are_kept(repo):
    c1 = _commit(repo, 1)
    c2 = _commit(repo, 2)
    repo.switch("exp", create=True, force=True)
    c3 = _commit(repo, 3)
    repo.switch("main", force=True)
    repo.delete_branch("exp")  # its reflog goes with it; HEAD's reflog still names c3
    repo.reset(c1, hard=True, force=True)  # c2: named by main's and HEAD's reflogs only
    _age_objects(repo)
    r = repo.gc()
    assert r.objects_removed == 0
    for cid in (c1, c2, c3):
        assert _needs(repo, cid) <= set(repo.store.ids())
    # without the reflogs the same commits are garbage (which shows the reflogs were what kept them)
    only_c2_c3 = (_needs(repo, c2) | _needs(repo, c3)) - _needs(repo, c1)
    _drop_reflogs(repo)
    r = repo.gc()
    assert set(r.removed_objects) == only_c2_c3
    assert repo.fsck().ok and _needs(repo, c1) <= set(repo.store.ids())


def _delta_commit(repo: Repo) -> tuple[str, str, str, str]:
    """A commit whose one blob chunk is a delta on a delta on an object no manifest names."""
    rng = np.random.default_rng(5)
    raw0 = rng.standard_normal(8192).astype(np.float32)
    raw1, raw2 = raw0.copy(), raw0.copy()
    raw1[:4] += 1
    raw2[:4] += 1
    raw2[100:104] += 1
    x = repo.store.put(raw0.tobytes(), width=4).id
    d1 = repo.store.put(raw1.tobytes(), width=4, base=x).id
    d2 = repo.store.put(raw2.tobytes(), width=4, base=d1).id
    assert repo.store.bases(d2) == [d1] and repo.store.bases(d1) == [x]
    data = raw2.tobytes()
    m = Manifest(["blob.bin"], [FileEntry("blob.bin", "blob", len(data), hash_bytes(data), chunks=[d2])], 4096)
    mid = repo.write_manifest(m)
    cid = repo.write_commit(Commit(mid, [], "t", utc_now(), "delta"))
    repo.refs.add_if_new(HEADS + "deltas", cid)
    return cid, x, d1, d2


def test_delta_bases_of_reachable_objects_are_kept(repo):
    _commit(repo, 1)
    cid, x, d1, d2 = _delta_commit(repo)
    junk = _junk(repo, 2)
    _age_objects(repo)
    r = repo.gc(prune="now")
    assert sorted(r.removed_objects) == sorted(junk)
    assert {x, d1, d2} <= set(repo.store.ids())
    assert repo.fsck().ok
    assert repo.store.get(d2)  # the whole chain decodes


def test_unreachable_deltas_go_before_their_bases_and_young_deltas_keep_old_bases(repo):
    _commit(repo, 1)
    rng = np.random.default_rng(7)
    raw = rng.standard_normal(8192).astype(np.float32)
    base = repo.store.put(raw.tobytes(), width=4).id
    raw[:3] += 1
    delta = repo.store.put(raw.tobytes(), width=4, base=base).id
    assert repo.store.bases(delta) == [base]
    _age_objects(repo)
    _age(repo.store.locate(delta), 60)  # young: written by a commit in flight, on an old unreachable base
    r = repo.gc()
    assert r.objects_removed == 0 and r.objects_young == 2
    assert repo.store.get(delta)
    r = repo.gc(prune="now")
    assert r.removed_objects == [delta, base]  # deepest first
    assert repo.fsck().ok


# -- grace periods and the commit in flight -------------------------------------------------------------


def test_young_unreachable_objects_are_kept(repo):
    _commit(repo, 1)
    old, young = _junk(repo, 3, seed=1), _junk(repo, 2, seed=2)
    _age_objects(repo)
    for oid in young:
        _age(repo.store.locate(oid), DEFAULT_GRACE - DAY)
    r = repo.gc()
    assert sorted(r.removed_objects) == sorted(old) and r.objects_young == 2
    assert all(repo.store.has(o) for o in young)
    r = repo.gc(prune="1.week.ago")
    assert sorted(r.removed_objects) == sorted(young)
    assert repo.fsck().ok


def test_gc_during_a_commit_keeps_its_new_objects(repo):
    _commit(repo, 1)
    _age_objects(repo)
    results = []
    flush = repo.store.flush

    def gc_then_flush():  # objects written, ref not moved yet: the moment a gc must not hurt
        results.append(Repo(repo.root).gc())
        flush()

    repo.store.flush = gc_then_flush
    c2 = _commit(repo, 2)
    repo.store.flush = flush
    assert results[0].objects_removed == 0 and results[0].objects_young > 0
    assert repo.fsck().ok and _needs(repo, c2) <= set(repo.store.ids())


def _unreachable_old_commit(repo: Repo) -> tuple[str, set[str]]:
    """A commit whose branch and reflogs are gone, all its objects a month old."""
    c1 = _commit(repo, 1)
    needed = _needs(repo, c1)
    os.unlink(os.path.join(repo.dir, "refs", "heads", "main"))
    _drop_reflogs(repo)
    _age_objects(repo)
    return c1, needed


@pytest.mark.parametrize("freshen", [True, False])
def test_a_commit_deduping_against_old_unreachable_objects_freshens_them(repo, freshen):
    """The race: a commit whose chunks already exist (old and unreachable) writes nothing new for them; a gc
    between its writes and its ref move must not remove them. Freshening (the store touching what it dedupes
    against) closes it; with freshening off the same gc breaks the commit, which is the race it closes."""
    c1, needed = _unreachable_old_commit(repo)
    if not freshen:
        repo.store.freshen_after = float("inf")
    results = []
    flush = repo.store.flush

    def gc_then_flush():
        results.append(Repo(repo.root).gc())
        flush()

    repo.store.flush = gc_then_flush
    c2 = _commit(repo, 1, message="same weights again")  # dedupes against every chunk of c1
    repo.store.flush = flush
    if freshen:
        assert results[0].removed_objects == [c1]  # only the old commit object: c2 has its own
        assert repo.fsck().ok and _needs(repo, c2) <= set(repo.store.ids())
        assert _needs(repo, c2) - {c2} == needed - {c1}  # it wrote nothing but its commit: the rest was deduped
        _readable(repo, c2)
    else:
        assert len(results[0].removed_objects) == len(needed)
        assert not repo.fsck().ok


def test_put_freshens_old_objects_cheaply(repo):
    oid = repo.store.put(b"x" * 5000).id
    path = repo.store.locate(oid)
    _age(path, 10)
    t10 = os.stat(path).st_mtime
    assert repo.store.put(b"x" * 5000).stored_size == 0
    assert os.stat(path).st_mtime == t10  # young enough: not touched (one stat, no write)
    _age(path, MONTH)
    assert repo.store.put(b"x" * 5000).stored_size == 0
    assert time.time() - os.stat(path).st_mtime < 60
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o444)  # still read-only


def test_a_new_delta_freshens_its_base(repo):
    raw = np.random.default_rng(3).standard_normal(8192).astype(np.float32)
    base = repo.store.put(raw.tobytes(), width=4).id
    _age(repo.store.locate(base), MONTH)
    raw[:2] += 1
    delta = repo.store.put(raw.tobytes(), width=4, base=base).id
    assert repo.store.bases(delta) == [base]
    assert time.time() - repo.store.mtime(base) < 60


def test_memory_store_freshens_too():
    s = MemoryObjectStore()
    oid = s.put(b"a" * 100).id
    s._mtimes[oid] -= MONTH
    assert s.put(b"a" * 100).stored_size == 0 and time.time() - s.mtime(oid) < 60
    s.delete(oid)
    assert not s.freshen(oid)


def test_put_rewrites_an_object_removed_under_it(repo):
    oid = repo.store.put(b"y" * 5000).id
    repo.store.delete(oid)
    assert repo.store.put(b"y" * 5000).new and repo.store.get(oid) == b"y" * 5000


# -- refusal --------------------------------------------------------------------------------------------


def test_refuses_with_a_missing_reachable_commit(repo):
    c1 = _commit(repo, 1)
    _commit(repo, 2)
    junk = _junk(repo, 2)
    _age_objects(repo)
    repo.store.delete(c1)  # the parent of HEAD
    with pytest.raises(GcRefusedError, match="mlvc fsck") as e:
        repo.gc(prune="now")
    assert e.value.object_id == c1
    assert all(repo.store.has(o) for o in junk)  # nothing was deleted


def test_refuses_with_a_damaged_commit_or_manifest(repo):
    c1 = _commit(repo, 1)
    junk = _junk(repo, 1)
    flip_byte(repo.store.locate(c1), 40)
    with pytest.raises(GcRefusedError, match="damaged"):
        repo.gc(prune="now")
    flip_byte(repo.store.locate(c1), 40)
    manifest = repo.read_commit(c1).manifest
    repo.store.delete(manifest)
    with pytest.raises(GcRefusedError, match="manifest"):
        repo.gc(prune="now")
    assert repo.store.has(junk[0])


def test_refuses_with_a_missing_reflog_commit(repo):
    _commit(repo, 1)
    ghost = "ab" * 16
    repo.refs.append_log("HEAD", None, ghost, "t", "a commit that is gone")
    with pytest.raises(GcRefusedError, match="reflog"):
        repo.gc(dry_run=True)


def test_other_ref_namespaces_are_kept(repo):
    """The remote-tracking hook: a ref file outside heads/ and tags/ keeps its commit."""
    c1 = _commit(repo, 1)
    os.makedirs(os.path.join(repo.dir, "refs", "remotes", "origin"))
    with open(os.path.join(repo.dir, "refs", "remotes", "origin", "main"), "w") as f:
        f.write(c1 + "\n")
    os.unlink(os.path.join(repo.dir, "refs", "heads", "main"))
    _drop_reflogs(repo)
    _age_objects(repo)
    r = repo.gc(prune="now")
    assert r.objects_removed == 0 and _needs(repo, c1) <= set(repo.store.ids())


# -- dry run --------------------------------------------------------------------------------------------


def test_dry_run_deletes_nothing(repo):
    _commit(repo, 1)
    junk = _junk(repo, 3)
    _age_objects(repo)
    tmp = os.path.join(repo.dir, "objects", junk[0][:2], TMP_PREFIX + "dead")
    with open(tmp, "wb") as f:
        f.write(b"partial")
    _age(tmp, 2 * DAY)
    lock = os.path.join(repo.dir, "refs", "heads", "main.lock")
    with open(lock, "w") as f:
        f.write("{}")
    before = sorted(os.listdir(repo.dir)), set(repo.store.ids())

    r = repo.gc(prune="now", dry_run=True)

    assert r.dry_run and sorted(r.removed_objects) == sorted(junk) and r.object_bytes_freed > 0
    assert r.temp_files_removed == 1 and r.locks_cleared == 1
    assert (sorted(os.listdir(repo.dir)), set(repo.store.ids())) == before
    assert os.path.exists(tmp) and os.path.exists(lock)


# -- locks ----------------------------------------------------------------------------------------------


def test_stale_lock_removed_live_lock_kept(repo):
    _commit(repo, 1)
    stale = os.path.join(repo.dir, "refs", "heads", "main.lock")
    with open(stale, "w") as f:  # a holder killed with SIGKILL: the file stays, its flock is gone
        f.write(json.dumps({"pid": 999999, "host": os.uname().nodename, "since": "x", "command": "mlvc"}))
    live = lockfile.acquire(os.path.join(repo.dir, "refs", "tags", "v1.lock"), "tag v1")
    foreign = os.path.join(repo.dir, "refs", "heads", "other.lock")
    with open(foreign, "w") as f:  # another host's: never broken from here
        f.write(json.dumps({"pid": 1, "host": "elsewhere.invalid", "since": "x", "command": "mlvc"}))
    try:
        r = repo.gc()
        assert r.locks_cleared == 1 and r.cleared_locks == [os.path.join(".mlvc", "refs", "heads", "main.lock")]
        assert not os.path.exists(stale) and os.path.exists(live.path) and os.path.exists(foreign)
    finally:
        live.release()


def test_two_gcs_never_run_at_once(repo):
    _commit(repo, 1)
    with lockfile.locked(os.path.join(repo.dir, "gc.lock"), "gc"):
        with pytest.raises(LockBusyError):
            Repo(repo.root).gc()


# -- temp files -----------------------------------------------------------------------------------------


def _touch(path: str, age: float, data: bytes = b"tmp") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    _age(path, age)
    return path


def test_temp_files_under_mlvc_old_removed_young_kept(repo):
    _commit(repo, 1)
    d = repo.dir
    old_obj = _touch(os.path.join(d, "objects", "ab", TMP_PREFIX + "x1"), 2 * DAY, b"z" * 100)
    old_ref = _touch(os.path.join(d, "refs", "heads", TMP_PREFIX + "x2"), 2 * DAY)
    legacy = _touch(os.path.join(d, "refs", ".tmp-legacy"), 2 * DAY)  # any .tmp-* inside .mlvc/ is ours
    young = _touch(os.path.join(d, "objects", "ab", TMP_PREFIX + "x3"), 60)
    other = _touch(os.path.join(d, "objects", "ab", "tmp-other"), 2 * DAY)  # not a temp name
    # scratch: an old evaluation folder goes; one whose folder is old but a file inside is young stays
    old_eval = os.path.join(d, "tmp", "eval-old")
    _touch(os.path.join(old_eval, "checkpoint", "model.safetensors"), 2 * DAY, b"w" * 1000)
    _age(os.path.join(old_eval, "checkpoint"), 2 * DAY)
    _age(old_eval, 2 * DAY)
    busy_eval = os.path.join(d, "tmp", "eval-busy")
    _touch(os.path.join(busy_eval, "out.json"), 60)
    _age(busy_eval, 2 * DAY)
    old_file = _touch(os.path.join(d, "tmp", "stray.pt"), 2 * DAY)

    r = repo.gc()

    rel = lambda p: os.path.relpath(p, repo.root)  # noqa: E731
    assert sorted(r.removed_temp) == sorted(map(rel, [old_obj, old_ref, legacy, old_eval, old_file]))
    assert r.temp_files_removed == 5 and r.temp_bytes_freed >= 1100
    for p in (old_obj, old_ref, legacy, old_eval, old_file):
        assert not os.path.lexists(p)
    for p in (young, other, busy_eval):
        assert os.path.exists(p)
    assert repo.fsck().ok


def test_work_tree_temp_files_only_under_tracked_paths_and_never_through_symlinks(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=4096)
    root = repo.root
    os.makedirs(os.path.join(root, "model")), os.makedirs(os.path.join(root, "data"))
    write_safetensors_np(os.path.join(root, "model", "model.safetensors"), _model(1))
    write_safetensors_np(os.path.join(root, "data", "d.safetensors"), _model(2))
    write_safetensors_np(os.path.join(root, "top.safetensors"), _model(3))
    repo.commit(paths=[os.path.join(root, p) for p in ("model", "data", "top.safetensors")], message="tracked")
    outside = tmp_path / "outside"
    outside.mkdir()
    out_tmp = _touch(str(outside / (TMP_PREFIX + "o")), 2 * DAY)
    removed = [
        _touch(os.path.join(root, "model", TMP_PREFIX + "a"), 2 * DAY, b"a" * 4096),  # a killed checkout's
        _touch(os.path.join(root, "model", "sub", TMP_PREFIX + "b"), 2 * DAY),
        _touch(os.path.join(root, TMP_PREFIX + "c"), 2 * DAY),  # beside top.safetensors (the top folder)
    ]
    kept = [
        _touch(os.path.join(root, "model", TMP_PREFIX + "young"), 60),
        _touch(os.path.join(root, "untracked", TMP_PREFIX + "d"), 2 * DAY),  # not a tracked path
        _touch(os.path.join(root, "model", ".tmp-notmlvc"), 2 * DAY),
        _touch(os.path.join(root, "model", "weights" + TMP_PREFIX), 2 * DAY),
    ]
    os.symlink(outside, os.path.join(root, "model", "link"))  # a symlinked folder inside a tracked one
    os.symlink(out_tmp, os.path.join(root, "model", TMP_PREFIX + "symlink"))  # a symlink with a temp name
    shutil.rmtree(os.path.join(root, "data"))
    os.symlink(outside, os.path.join(root, "data"))  # a tracked folder replaced by a symlink

    r = repo.gc()

    assert sorted(r.removed_temp) == sorted(os.path.relpath(p, root) for p in removed)
    for p in removed:
        assert not os.path.exists(p)
    for p in kept + [out_tmp, os.path.join(root, "model", TMP_PREFIX + "symlink")]:
        assert os.path.lexists(p)
    assert os.path.exists(out_tmp)  # the target of a symlink is never touched


def test_work_tree_temp_files_named_by_a_pending_journal_are_kept_in_a_dry_run(repo):
    _commit(repo, 1)
    tmp = _touch(os.path.join(repo.root, TMP_PREFIX + "staged"), 2 * DAY)
    os.makedirs(os.path.join(repo.dir, "txn"), exist_ok=True)
    with open(os.path.join(repo.dir, "txn", "abc.json"), "w") as f:
        json.dump({"base": repo.root, "state": "staging", "head": None,
                   "renames": [[TMP_PREFIX + "staged", "model.safetensors", None]], "removes": []}, f)
    r = repo.gc(dry_run=True)
    assert r.removed_temp == [] and os.path.exists(tmp)
    r = repo.gc()  # recovery undoes the interrupted update first (removing its temp file itself)
    assert r.recovered and not os.path.exists(tmp)


# -- grace periods ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("now", 0), ("never", float("inf")), ("2.weeks.ago", 14 * DAY), ("2 weeks ago", 14 * DAY), ("14d", 14 * DAY),
    ("3 days", 3 * DAY), ("12h", 12 * 3600), ("1.hour.ago", 3600), ("30m", 1800), ("90s", 90), ("3600", 3600),
    ("1.5h", 5400), (120, 120),
])
def test_parse_grace(text, seconds):
    assert parse_grace(text, "x") == seconds


@pytest.mark.parametrize("text", ["banana", "2.fortnights", "-1d", "ago", "", "3 ago"])
def test_parse_grace_refuses_nonsense(text):
    with pytest.raises(ConfigError, match="grace period"):
        parse_grace(text, "--prune")


def test_config_sets_the_grace_periods(repo):
    with open(os.path.join(repo.dir, "config.toml"), "a") as f:
        f.write('\n[gc]\ngrace = "3.days.ago"\ntemp_grace = "1h"\n')
    repo = Repo(repo.root)
    _commit(repo, 1)
    junk = _junk(repo, 1)
    _age(repo.store.locate(junk[0]), 4 * DAY)
    tmp = _touch(os.path.join(repo.dir, TMP_PREFIX + "t"), 2 * 3600)
    r = repo.gc()
    assert (r.grace_seconds, r.temp_grace_seconds) == (3 * DAY, 3600)
    assert r.removed_objects == junk and not os.path.exists(tmp)
    assert repo.gc(prune="never").grace_seconds == float("inf")
    with open(os.path.join(repo.dir, "config.toml"), "a") as f:
        f.write('[gc.x]\n')
    with open(os.path.join(repo.dir, "config.toml")) as f:
        text = f.read().replace('grace = "3.days.ago"', 'grace = "soon"')
    with open(os.path.join(repo.dir, "config.toml"), "w") as f:
        f.write(text)
    with pytest.raises(ConfigError, match="gc.grace"):
        Repo(repo.root).gc()


def test_defaults():
    assert DEFAULT_GRACE == 14 * DAY and DEFAULT_TEMP_GRACE == DAY


# -- command line ---------------------------------------------------------------------------------------


@pytest.fixture
def run(repo, monkeypatch):
    monkeypatch.chdir(repo.root)
    monkeypatch.setenv("MLVC_AUTHOR", "tester")

    def _run(*args, code=0):
        r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert r.exit_code == code, f"mlvc {' '.join(args)} -> {r.exit_code}\n{r.output}"
        return r

    return _run


def test_cli_table_json_dry_run_and_errors(run, repo):
    c1 = _commit(repo, 1)
    junk = _junk(repo, 2)
    _age_objects(repo)
    out = run("gc", "--dry-run").output
    assert "objects to remove" in out and "dry run: nothing was deleted" in out and "2 weeks" in out
    assert all(repo.store.has(o) for o in junk)
    d = json.loads(run("gc", "--json").output)
    assert d["objects_removed"] == 2 and d["bytes_freed"] > 0 and d["dry_run"] is False
    assert sorted(d["removed_objects"]) == sorted(junk)
    assert {"objects_kept", "temp_files_removed", "locks_cleared", "grace_seconds"} <= set(d)
    out = run("gc", "--prune=now").output
    assert "objects removed" in out and "freed 0 B" in out and "grace: objects now" in out
    assert run("gc", "--expire", "1.day.ago", "--json").output
    r = run("gc", "--prune=banana", code=2)
    assert "not a grace period" in r.output
    repo.store.delete(c1)
    r = run("gc", code=5)
    assert "mlvc fsck" in r.output


# -- crash safety -----------------------------------------------------------------------------------------


_GC_SCRIPT = "import sys; from mlvc.repo import Repo; Repo(sys.argv[1]).gc(prune='now')"


def _gc_child(root: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _GC_SCRIPT, root], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_gc_killed_at_every_step_leaves_a_consistent_repository(tmp_path):
    """The crash harness's way: count gc's fault points, then kill a fresh copy at each one; every copy is
    intact (fsck ok: no delta left without its base, nothing reachable touched) and a rerun finishes the job."""
    template = make_repo(tmp_path / "template", chunk_size=4096)
    c1, c2 = _commit(template, 1), _commit(template, 2)
    raw = np.random.default_rng(11).standard_normal(4096).astype(np.float32)
    base = template.store.put(raw.tobytes(), width=4).id  # an unreachable delta chain: base, then delta
    raw[:2] += 1
    assert template.store.bases(template.store.put(raw.tobytes(), width=4, base=base).id) == [base]
    _junk(template, 2)
    _touch(os.path.join(template.dir, TMP_PREFIX + "t"), 2 * DAY)
    with open(os.path.join(template.dir, "refs", "heads", "main.lock"), "w") as f:
        f.write("{}")
    log = tmp_path / "points.log"
    count = str(tmp_path / "count")
    shutil.copytree(template.root, count, symlinks=True)
    assert _gc_child(count, {"MLVC_FAULT_LOG": str(log)}).returncode == 0
    points = log.read_text().split()
    # the delta, then its base with the two junk objects: one batch per delta depth
    assert points.count("gc.deleted") == 2 and "gc.temp_removed" in points and "gc.lock_cleared" in points
    survivors = set(Repo(count).store.ids())
    assert len(set(template.store.ids()) - survivors) == 4
    for k in range(1, len(points) + 1):
        copy = str(tmp_path / f"crash{k}")
        shutil.copytree(template.root, copy, symlinks=True)
        p = _gc_child(copy, {"MLVC_FAULT_AT": str(k)})
        assert p.returncode == -9, (k, p.stderr)
        r = Repo(copy)
        report = r.fsck()
        assert report.ok, (k, points[k - 1], report.problems)
        assert all(_needs(r, cid) <= set(r.store.ids()) for cid in (c1, c2))
        left = set(r.store.ids())
        again = r.gc(prune="now")
        assert again.objects_removed == len(left - survivors) and set(r.store.ids()) == survivors
        assert r.fsck().ok
        shutil.rmtree(copy)


def test_prune_now_never_sweeps_the_objects_of_an_operation_in_flight(repo):
    """A commit writes its objects before a ref names them; `gc --prune=now` meanwhile must keep them."""
    with repo.writing():  # what commit, revert and merge hold while they write
        oid = repo.store.put(b"a chunk no ref names yet" * 100).id
        result = repo.gc(prune="now")
        assert repo.store.has(oid) and oid not in result.removed_objects
    result = repo.gc(prune="now")  # the operation is over (and its commit never landed): now it goes
    assert not repo.store.has(oid) and oid in result.removed_objects


def test_a_killed_operations_marker_does_not_hold_gc_back(repo):
    folder = os.path.join(repo.dir, "inflight")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "dead.lock"), "w") as f:  # no process holds it: its writer was killed
        json.dump({"pid": 999999, "host": __import__("socket").gethostname(), "since": "x", "command": "c"}, f)
    oid = repo.store.put(b"orphan of a killed commit" * 100).id
    result = repo.gc(prune="now")
    assert oid in result.removed_objects and not os.path.exists(os.path.join(folder, "dead.lock"))
