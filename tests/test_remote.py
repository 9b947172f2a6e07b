"""Remotes (docs/remotes.md): push, fetch, pull and clone through a folder remote and through a real S3 API
server on loopback (tests/s3server.py), the same tests for both; S3-only checks are in test_remote_s3.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from conftest import flip_byte, random_state_dict, tree_hashes, write_safetensors_np
from mlvc.errors import CorruptObjectError, ObjectNotFoundError, PushRejectedError, RemoteError, RevisionError
from mlvc.remote import (
    PACKS,
    REFS,
    FolderBackend,
    Remote,
    RemoteSpec,
    decode_index,
    load_remotes,
    read_tracking,
    save_remotes,
)
from mlvc.repo import Repo

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("moto.server", reason="the test extra installs moto[server]")
    from s3server import s3_server

    with s3_server() as endpoint:
        yield endpoint


_BUCKETS = iter(range(1_000_000))


@pytest.fixture(params=["folder", "s3"])
def new_remote(request, tmp_path):
    """Makes (url, endpoint) of a new, empty remote: a folder, or a fresh bucket on the loopback S3 server."""
    if request.param == "folder":
        names = iter(range(1000))
        return lambda: (str(tmp_path / f"remote-{next(names)}"), None)
    endpoint = request.getfixturevalue("s3_endpoint")
    from s3server import make_bucket

    def make():
        bucket = f"mlvc-test-{next(_BUCKETS)}"
        make_bucket(endpoint, bucket)
        return f"s3://{bucket}/team/models", endpoint

    return make


@pytest.fixture
def where(new_remote):
    """(url, endpoint) of an empty remote (both kinds: new_remote)."""
    return new_remote()


def _model(folder, seed=0, bump=0.0, scale=4):
    sd = random_state_dict(seed, scale=scale)
    if bump:
        sd = {k: v + np.float32(bump) for k, v in sd.items()}
    os.makedirs(folder, exist_ok=True)
    write_safetensors_np(os.path.join(folder, "model.safetensors"), sd)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"bump": bump, "seed": seed}, f)


def make_history(root) -> Repo:
    """main: 3 commits (a lightweight tag and an annotated tag on them), exp: 2 more from main~1."""
    repo = Repo.init(str(root))
    model = os.path.join(str(root), "model")
    _model(model)
    repo.commit(os.path.join(repo.root, "model"), message="base")
    _model(model, bump=0.01)
    repo.commit(os.path.join(repo.root, "model"), message="step 1")
    repo.create_tag("v1")
    _model(model, bump=0.02)
    repo.commit(os.path.join(repo.root, "model"), message="step 2")
    repo.create_tag("v2", message="release two")
    repo.switch("exp", create=True, start="HEAD~1")
    for i in (1, 2):
        _model(model, seed=i, bump=0.5 * i)
        repo.commit(os.path.join(repo.root, "model"), message=f"exp {i}")
    repo.switch("main")
    return repo


def add_origin(repo: Repo, where) -> None:
    url, endpoint = where
    repo.remote_add("origin", url, endpoint=endpoint)


def clone_of(path, where) -> Repo:
    url, endpoint = where
    repo = Repo.init(str(path))
    repo.clone(url, endpoint=endpoint)
    return repo


def checkout_hashes(repo: Repo, rev: str, out) -> dict[str, str]:
    repo.checkout(rev, output=str(out))
    return tree_hashes(out)


# -- clone, push, fetch --------------------------------------------------------------------------------------


def test_clone_of_branches_and_tags_is_byte_identical(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    a.push("origin", "exp")
    b = clone_of(tmp_path / "b", where)
    assert b.head() == a.head() and b.head_branch() == "main"
    assert tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a")  # the work tree, checked out
    assert b.tags() == a.tags()  # the annotated tag's object too
    assert b.read_tag(b.refs.read_raw("refs/tags/v2")).message == "release two"
    tracking = read_tracking(b.dir, "origin")
    assert tracking == {"main": a.branches()["main"], "exp": a.branches()["exp"]}
    for i, rev in enumerate([tracking["exp"], tracking["exp"] + "~1", "v1", "v2", "HEAD~2"]):
        assert checkout_hashes(b, rev, tmp_path / f"b{i}") == checkout_hashes(a, rev, tmp_path / f"a{i}")
    assert b.fsck().ok
    assert [c.message for c in b.log(tracking["exp"])] == [c.message for c in a.log("exp")]


def test_second_push_sends_nothing_and_a_new_commit_sends_only_its_objects(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    first = a.push()
    assert first.objects_sent > 0 and first.packs_sent >= 2  # data, then metadata
    again = a.push()
    assert again.up_to_date and again.objects_sent == 0 and again.bytes_sent == 0
    before = set(a.store.ids())
    _model(os.path.join(a.root, "model"), bump=0.03)
    a.commit(os.path.join(a.root, "model"), message="step 3")
    new = set(a.store.ids()) - before
    third = a.push()
    assert third.objects_sent == len(new)
    assert third.object_bytes_sent == sum(a.store.stored_size(o) for o in new)
    b = clone_of(tmp_path / "b", where)
    assert tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a")
    assert b.head() == a.head()


def test_fetch_and_pull_bring_new_commits_and_tracking_refs_follow(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    b = clone_of(tmp_path / "b", where)
    _model(os.path.join(a.root, "model"), bump=0.04)
    a.commit(os.path.join(a.root, "model"), message="step 3")
    a.push()
    f = b.fetch()
    assert f.updated == {"origin/main": [b.head(), a.head()]} and f.objects_received > 0
    assert b.head() != a.head()  # fetch moves no local branch
    # the tracking ref is a revision like any other: log, diff and check name it as `origin/main`
    assert b.resolve("origin/main") == a.head() and b.resolve("origin/main~1") == b.head()
    assert b.resolve("refs/remotes/origin/main") == a.head()
    assert [c.id for c in b.log("origin/main", 2)] == [a.head(), b.head()]
    assert b.diff("HEAD", "origin/main").b == a.head()
    with pytest.raises(RevisionError, match="origin/main"):
        b.resolve("origin/mian")  # a typo gets the nearest tracking ref
    p = b.pull()
    assert p.merged.fast_forward and b.head() == a.head()
    assert tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a")
    assert b.fetch().objects_received == 0  # nothing new: nothing moves


def test_gc_in_a_clone_keeps_what_remote_tracking_refs_name(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push("origin", "exp")
    a.push("origin", "main")
    b = clone_of(tmp_path / "b", where)
    exp = read_tracking(b.dir, "origin")["exp"]
    b.gc(prune="now")
    before = checkout_hashes(a, "exp", tmp_path / "a-exp")
    assert checkout_hashes(b, exp, tmp_path / "b-exp") == before


# -- refusing to lose commits --------------------------------------------------------------------------------


def test_push_of_a_diverged_branch_is_refused_and_succeeds_after_pull(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    b = clone_of(tmp_path / "b", where)
    _model(os.path.join(a.root, "model"), bump=0.05)
    a.commit(os.path.join(a.root, "model"), message="alice")
    a.push()
    with open(os.path.join(b.root, "model", "bob.txt"), "w") as f:
        f.write("bob's notes")
    b.commit(os.path.join(b.root, "model"), message="bob")
    with pytest.raises(PushRejectedError, match="pull"):
        b.push()
    assert _remote(where).read_refs()[0].refs["refs/heads/main"] == a.head()  # nothing moved
    b.pull()
    assert b.read_commit(b.head()).parents == [b.read_commit(b.head()).parents[0], a.head()]
    assert b.push().updated["refs/heads/main"] == [a.head(), b.head()]
    a.pull()
    assert a.head() == b.head() and tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")


def _remote(url_or_where, endpoint=None) -> Remote:
    from mlvc.remote import open_backend

    url, endpoint = url_or_where if isinstance(url_or_where, tuple) else (url_or_where, endpoint)
    return Remote(open_backend(RemoteSpec("x", url, endpoint)))


def test_two_pushes_racing_for_the_ref_one_wins_the_other_is_refused(tmp_path, where, monkeypatch):
    """The second pusher read the refs before the first moved them: its compare-and-swap fails, and it is
    refused without anything changed; deterministic (the first push runs inside the second's swap)."""
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    b = clone_of(tmp_path / "b", where)
    c = clone_of(tmp_path / "c", where)
    for repo, word in ((b, "bob"), (c, "carol")):
        with open(os.path.join(repo.root, "model", f"{word}.txt"), "w") as f:
            f.write(json.dumps({word: 1}))
        repo.commit(os.path.join(repo.root, "model"), message=word)
    original = Remote.write_refs
    ran = []

    def racing(self, refs, token):
        if not ran:  # c's push lands between b's read of the refs and b's write
            ran.append(1)
            monkeypatch.setattr(Remote, "write_refs", original)
            c.push()
        return original(self, refs, token)

    monkeypatch.setattr(Remote, "write_refs", racing)
    with pytest.raises(PushRejectedError, match="moved while this push ran"):
        b.push()
    assert _remote(where).read_refs()[0].refs["refs/heads/main"] == c.head()
    b.pull()
    b.push()
    assert _remote(where).read_refs()[0].refs["refs/heads/main"] == b.head()
    assert c.head() in b.read_commit(b.head()).parents


def test_concurrent_pushes_in_threads_exactly_one_wins(tmp_path):
    """Three pushes at once, for real. On the folder remote only: the loopback S3 server (moto) checks
    If-Match and writes in two steps, not atomically as S3 does, so only the deterministic race above runs on
    it (tests/test_remote_s3.py checks its conditional writes one at a time)."""
    where = (str(tmp_path / "remote"), None)
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    clones = [clone_of(tmp_path / f"c{i}", where) for i in range(3)]
    for i, repo in enumerate(clones):
        _model(os.path.join(repo.root, "model"), seed=10 + i)
        repo.commit(os.path.join(repo.root, "model"), message=f"writer {i}")
    outcome: dict[int, object] = {}
    barrier = threading.Barrier(len(clones))

    def go(i):
        barrier.wait()
        try:
            outcome[i] = clones[i].push()
        except PushRejectedError as e:
            outcome[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(clones))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in outcome.items() if not isinstance(r, Exception)]
    assert len(winners) == 1, outcome
    assert _remote(where).read_refs()[0].refs["refs/heads/main"] == clones[winners[0]].head()


def test_force_push_overwrites_and_a_moved_tag_needs_force(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    b = clone_of(tmp_path / "b", where)
    b.reset("HEAD~1", hard=True)
    b.delete_tag("v1")
    b.create_tag("v1", "HEAD~1")  # another commit than the remote's v1
    with pytest.raises(PushRejectedError, match="does not contain"):
        b.push()
    assert _remote(where).read_refs()[0].refs["refs/heads/main"] == a.head()
    r = b.push(force=True)
    assert r.updated["refs/heads/main"] == [a.head(), b.head()]
    assert _remote(where).read_refs()[0].refs["refs/tags/v1"] == b.refs.read_raw("refs/tags/v1")
    a.create_tag("v9", "HEAD~2")
    r = a.push(force=False, branch="exp")
    assert r.tags_skipped == ["v1"]  # the remote's v1 is b's now: not moved back without --force
    assert "refs/tags/v9" in r.updated and "refs/tags/v1" not in r.updated


# -- interrupted transfers and damage ------------------------------------------------------------------------


def _run_killed(dry_code: str, code: str, cwd, at: str) -> None:
    """Count the fault points of `dry_code` (the same operation on a copy, mlvc.faults), then run `code` in a
    child process killed with SIGKILL right after it passes point `at` for the first time."""
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = os.path.join(str(cwd), "faults.log")
    subprocess.run([sys.executable, "-c", dry_code], cwd=cwd, env=dict(env, MLVC_FAULT_LOG=log), check=True)
    with open(log) as f:
        names = f.read().split()
    os.unlink(log)
    assert at in names, (at, names)
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=dict(env, MLVC_FAULT_AT=str(names.index(at) + 1)))
    assert p.returncode == -9


def test_a_push_killed_midway_moves_nothing_and_resumes_without_resending(tmp_path, new_remote):
    where, probe_where = new_remote(), new_remote()
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    shutil.copytree(tmp_path / "a", tmp_path / "probe")
    probe = Repo(str(tmp_path / "probe"))
    probe.remote_remove("origin")
    add_origin(probe, probe_where)
    _run_killed("from mlvc import Repo; Repo('probe').push()", "from mlvc import Repo; Repo('a').push()",
                tmp_path, "remote.index.uploaded")
    r = _remote(where)
    assert r.read_refs()[0].refs == {}  # no ref moved: nothing of the push is visible
    data = {o for o, e in r.index().items() if e.kind == "d"}
    assert data and len(data) == len(r.index())  # the data pack arrived, the commits' pack did not
    resumed = a.push()
    assert resumed.objects_sent == len(_remote(where).index()) - len(data)  # only what had not arrived
    full = _remote(probe_where).index()
    assert len(_remote(where).index()) == len(full)
    b = clone_of(tmp_path / "b", where)
    assert b.head() == a.head() and tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a")


def test_a_clone_killed_midway_leaves_no_ref_and_the_next_fetch_completes(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    a.push("origin", "exp")
    for name in ("b", "probe"):
        Repo.init(str(tmp_path / name))
    code = "from mlvc import Repo; Repo({!r}).clone(" + f"{where[0]!r}, endpoint={where[1]!r})"
    _run_killed(code.format("probe"), code.format("b"), tmp_path, "fetch.data.written")
    b = Repo(str(tmp_path / "b"))
    assert read_tracking(b.dir, "origin") == {} and b.head() is None and b.tags() == {}
    here = set(b.store.ids())
    assert here and here < set(a.store.ids())  # the data arrived, the commits did not
    got = b.fetch()
    assert got.objects_received == len(set(a.store.ids()) - here)  # nothing that arrived is fetched again
    assert read_tracking(b.dir, "origin")["main"] == a.head()
    assert checkout_hashes(b, a.head(), tmp_path / "p") == checkout_hashes(a, "main", tmp_path / "q")


def _damage_cases(r: Remote) -> list[tuple[str, int]]:
    """(key, offset) inside objects of every pack: an object's first header byte, its middle, its last byte."""
    cases = []
    for key, _size, _t in r.backend.list(PACKS):
        if not key.endswith(".idx"):
            continue
        pid = key[len(PACKS):-4]
        entries = decode_index(r.backend.get(key), pid)
        for e in list(entries.values())[:2]:
            for off in (e.offset, e.offset + e.length // 2, e.offset + e.length - 1):
                cases.append((f"{PACKS}{pid}.pack", off))
    return cases


def _flip(r: Remote, key: str, offset: int) -> None:
    data = bytearray(r.backend.get(key))
    data[offset] ^= 0xFF
    r.backend.put(key, bytes(data))


def test_a_corrupted_pack_is_detected_and_nothing_is_written(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    r = _remote(where)
    cases = _damage_cases(r)
    assert len(cases) >= 6
    for i, (key, off) in enumerate(cases):
        _flip(r, key, off)
        b = Repo.init(str(tmp_path / f"b{i}"))
        with pytest.raises((CorruptObjectError, RemoteError)):
            b.clone(where[0], endpoint=where[1])
        assert b.head() is None and read_tracking(b.dir, "origin") == {} and b.tags() == {}
        for oid in b.store.ids():  # whatever arrived before the damage was found is intact
            b.store.verify(oid)
        _flip(r, key, off)  # undo


def test_a_corrupted_index_or_refs_document_is_refused(tmp_path):
    where = (str(tmp_path / "remote"), None)
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    idx = next(n for n in sorted(os.listdir(os.path.join(where[0], "packs"))) if n.endswith(".idx"))
    flip_byte(os.path.join(where[0], "packs", idx), 5)
    with pytest.raises(CorruptObjectError, match="does not match its hash"):
        Repo.init(str(tmp_path / "b")).clone(where[0])
    flip_byte(os.path.join(where[0], "packs", idx), 5)
    with open(os.path.join(where[0], REFS), "w") as f:
        f.write("{not json")
    with pytest.raises(RemoteError, match="not an mlvc remote's refs"):
        Repo.init(str(tmp_path / "c")).clone(where[0])


# -- partial fetch, ledger -----------------------------------------------------------------------------------


def test_partial_fetch_of_one_commit_and_some_tensors(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    b = Repo.init(str(tmp_path / "b"))
    b.remote_add("origin", *where[:1], endpoint=where[1])
    r = b.fetch("origin", rev="v1", tensors=["encoder.0.*"])
    assert r.partial == a.resolve("v1")
    assert read_tracking(b.dir, "origin") == {} and b.head() is None  # no ref moved
    got = b.load(r.partial, tensors=["encoder.0.*"])
    want = a.load("v1", tensors=["encoder.0.*"])
    assert set(got) == set(want) == {"encoder.0.weight", "encoder.0.bias"}
    for k in want:
        assert np.array_equal(np.asarray(got[k]), np.asarray(want[k]))
    with pytest.raises(ObjectNotFoundError):  # a large tensor not chosen: its chunks were not fetched
        b.load(r.partial, tensors=["encoder.1.weight"])
    # head.weight is small: it came in the bundle that holds encoder.0.bias (docs/format.md "Bundles")
    assert np.array_equal(np.asarray(b.load(r.partial, tensors=["head.*"])["head.weight"]),
                          np.asarray(a.load("v1", tensors=["head.*"])["head.weight"]))
    full = b.fetch("origin", rev="v1")  # the whole commit: only what is missing
    assert 0 < full.objects_received
    assert checkout_hashes(b, r.partial, tmp_path / "p") == checkout_hashes(a, "v1", tmp_path / "q")
    b.fetch()  # then everything: the partial commit's history arrives too
    assert [c.id for c in b.log(read_tracking(b.dir, "origin")["main"])] == [c.id for c in a.log("main")]


def test_the_ledger_travels_and_merges_without_duplicates(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.record_eval("HEAD", "sst2", {"accuracy": 0.9}, higher_is_better={"accuracy": True})
    assert a.push().ledger_parts_sent == 1
    b = clone_of(tmp_path / "b", where)
    assert [r.row_id for r in b.ledger.records()] == [r.row_id for r in a.ledger.records()]
    b.record_eval("HEAD~1", "sst2", {"accuracy": 0.8})
    assert b.push().ledger_parts_sent == 1
    assert a.fetch().ledger_parts_received == 1
    assert a.fetch().ledger_parts_received == 0
    rows = a.ledger.records()
    assert len(rows) == 2 and len({r.row_id for r in rows}) == 2
    assert sorted(r.row_id for r in rows) == sorted(r.row_id for r in b.ledger.records())


# -- settings ------------------------------------------------------------------------------------------------


def test_remote_settings_errors_and_removal(tmp_path):
    a = Repo.init(str(tmp_path / "a"))
    with pytest.raises(RemoteError, match="no remote"):
        a.push()
    with pytest.raises(RemoteError, match="not a valid remote name"):
        a.remote_add("-x", str(tmp_path / "r"))
    with pytest.raises(RemoteError, match="S3 URL"):
        a.remote_add("s", "s3://B/x")
    with pytest.raises(RemoteError, match="folders or s3"):
        a.remote_add("h", "https://example.com/x")
    a.remote_add("origin", str(tmp_path / "r"))
    with pytest.raises(RemoteError, match="exists"):
        a.remote_add("origin", str(tmp_path / "r2"))
    with pytest.raises(RemoteError, match="not an mlvc remote"):
        a.fetch()
    with pytest.raises(RemoteError, match="no branch"):
        a.push()
    assert [s.name for s in a.remote_list()] == ["origin"]
    a.remote_remove("origin")
    assert a.remote_list() == [] and not os.path.exists(os.path.join(a.dir, "refs", "remotes", "origin"))


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
                       st.tuples(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
                                 st.none() | st.text(max_size=30), st.none() | st.text(max_size=10)),
                       max_size=4))
def test_remote_settings_round_trip(tmp_path, remotes):
    folder = tmp_path / "cfg"
    folder.mkdir(exist_ok=True)
    specs = {n: RemoteSpec(n, u, e or None, r or None) for n, (u, e, r) in remotes.items()}
    save_remotes(str(folder), specs)
    assert load_remotes(str(folder)) == specs


def test_folder_backend_compare_and_swap(tmp_path):
    b = FolderBackend(str(tmp_path / "r"))
    assert b.put_if("refs.json", b"one", None)
    assert not b.put_if("refs.json", b"two", None)  # must not exist
    data, token = b.get_versioned("refs.json")
    assert data == b"one"
    assert b.put_if("refs.json", b"two", token)
    assert not b.put_if("refs.json", b"three", token)  # stale token
    assert b.get("refs.json") == b"two"
    assert b.list(PACKS) == []


# -- pruning the remote --------------------------------------------------------------------------------------


def test_prune_removes_only_unreferenced_packs_and_waits_for_pushes(tmp_path, where):
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    a.push("origin", "exp")
    r = _remote(where)
    before = set(r.index())
    assert a.remote_prune(prune="now").packs_removed == []  # everything is referenced
    # exp is deleted on the remote by a force-push of main onto it: its own packs become unreferenced
    a.switch("exp")
    a.reset("main", hard=True)
    a.push(force=True)
    dry = a.remote_prune(prune="now", dry_run=True)
    assert dry.packs_removed and set(_remote(where).index()) == before  # a dry run removes nothing
    assert a.remote_prune(prune="never").packs_removed == []  # younger than the grace: kept
    with _remote(where).lease():  # a push in flight: nothing is removed
        assert a.remote_prune(prune="now").busy
    done = a.remote_prune(prune="now")
    assert sorted(done.packs_removed) == sorted(dry.packs_removed)
    assert set(_remote(where).index()) < before
    b = clone_of(tmp_path / "b", where)  # what the refs need is all there
    assert tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a") and b.fsck().ok


def test_a_push_that_races_a_prune_uploads_again_what_was_removed(tmp_path, monkeypatch):
    """A prune that listed the leases just before the push took its own removes a pack the push counted on
    (the objects of an old branch it now pushes again): the push looks its objects up again before it moves
    the ref, so the remote never names a commit whose objects are gone."""
    where = (str(tmp_path / "remote"), None)
    a = make_history(tmp_path / "a")
    add_origin(a, where)
    a.push()
    a.push("origin", "exp")  # the packs of this push hold only exp's own objects
    old_exp = a.branches()["exp"]
    a.switch("exp")
    a.reset("main", hard=True)
    a.push(force=True, branch="exp")  # the remote's exp no longer needs the old exp commits
    a.create_branch("again", old_exp)
    # run the prune between the push's upload and its refs write: via _send_objects' second call
    import mlvc.ops.sync as sync

    send = sync._send_objects
    calls = []

    def send_then_prune(repo, r, tips, result, progress):
        send(repo, r, tips, result, progress)
        calls.append(result.objects_sent)
        if len(calls) == 1:
            monkeypatch.setattr(Remote, "live_leases", lambda self, now=None: [])
            assert a.remote_prune(prune="now").packs_removed

    monkeypatch.setattr(sync, "_send_objects", send_then_prune)
    a.push("origin", "again")
    assert len(calls) == 2 and calls[1] > calls[0]  # it found the removal and uploaded again
    b = Repo.init(str(tmp_path / "b"))
    b.remote_add("origin", where[0])
    b.fetch()
    assert checkout_hashes(b, old_exp, tmp_path / "p") == checkout_hashes(a, old_exp, tmp_path / "q")


# -- the command line ----------------------------------------------------------------------------------------


def test_cli_remote_push_clone_pull_and_exit_codes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mlvc.cli import cli
    from mlvc.errors import EXIT_CODES

    runner = CliRunner()
    make_history(tmp_path / "a")
    remote = str(tmp_path / "remote")

    def run(*args, code=0):
        r = runner.invoke(cli, list(args), catch_exceptions=False)
        assert r.exit_code == code, f"mlvc {' '.join(args)} -> {r.exit_code}\n{r.output}"
        return r.output

    monkeypatch.chdir(tmp_path / "a")
    assert "added remote origin" in run("remote", "add", "origin", remote)
    assert run("remote", "-v").startswith(f"origin\t{remote}")
    out = run("push", "-q")
    assert "refs/heads/main: (new) ->" in out and "pack(s)" in out
    assert "everything up to date" in run("push", "-q")
    monkeypatch.chdir(tmp_path)
    assert "cloned" in run("clone", "-q", remote, "b")
    assert tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a")
    run("clone", remote, "b", code=2)  # not an empty folder: a usage error, nothing touched
    run("clone", str(tmp_path / "nowhere"), "c", code=EXIT_CODES[RemoteError])
    assert not os.path.exists(tmp_path / "c")  # a failed clone leaves no folder behind
    monkeypatch.chdir(tmp_path / "a")
    with open("model/new.txt", "w") as f:
        f.write("more")
    run("commit", "model", "-m", "more")
    run("push", "-q")
    monkeypatch.chdir(tmp_path / "b")
    with open("model/other.txt", "w") as f:
        f.write("other")
    run("commit", "model", "-m", "other")
    assert "pull" in run("push", "-q", code=EXIT_CODES[PushRejectedError])
    assert "merged into" in run("pull", "-q")
    run("push", "-q")
    data = json.loads(run("remote", "prune", "--prune", "now", "--json"))
    assert data["busy"] is False and data["packs_removed"] == []


def test_fetch_into_a_store_that_holds_the_same_chunks_encoded_otherwise(tmp_path):
    """The remote's delta names a base that is here too, but stored full (committed independently): its depth
    in the remote's header does not follow from the local base's, so it is stored re-encoded, and every read
    and fsck of the store stays valid."""
    where = (str(tmp_path / "remote"), None)
    a = Repo.init(str(tmp_path / "a"))
    sds = [random_state_dict(0, scale=8)]
    for step in (1, 2, 3):
        sds.append({k: v + np.float32(1e-3 * step) for k, v in sds[0].items()})
    for i, sd in enumerate(sds):
        a.commit(sd, f"step {i}", path="model.safetensors")
    depths = {a.store.header(o).depth for o in a.store.ids()}
    assert max(depths) >= 2  # a chain of deltas on the remote
    add_origin(a, where)
    a.push()
    b = Repo.init(str(tmp_path / "b"))
    b.commit(sds[2], "the same weights, committed here first", path="model.safetensors")  # full objects
    b.remote_add("origin", where[0])
    b.fetch()
    assert b.fsck().ok
    for cid in (c.id for c in a.log("main")):
        assert checkout_hashes(b, cid, tmp_path / f"b-{cid}") == checkout_hashes(a, cid, tmp_path / f"a-{cid}")


def test_transfer_order_puts_bases_first_and_refuses_cycles():
    from mlvc.remote import transfer_order

    levels = transfer_order({"d": ("c",), "c": ("b", "a"), "b": ("a",), "a": (), "x": ("outside",)})
    where = {o: i for i, ids in enumerate(levels) for o in ids}
    assert where["a"] < where["b"] < where["c"] < where["d"] and where["x"] == 0
    with pytest.raises(RemoteError, match="cycle"):
        transfer_order({"a": ("b",), "b": ("a",)})
