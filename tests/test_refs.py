"""Refs: compare-and-swap updates under O_EXCL lock files, reflogs, name rules, deletion."""

from __future__ import annotations

import json
import os
import socket

import pytest

from mlvc import lockfile
from mlvc.errors import LockBusyError, MlvcError, RefConflictError, RefError
from mlvc.refs import HEAD, HEADS, TAGS, RefStore, check_name

A, B, C = "a" * 32, "b" * 32, "c" * 32
MAIN = HEADS + "main"


@pytest.fixture
def refs(tmp_path) -> RefStore:
    d = tmp_path / ".mlvc"
    d.mkdir()
    return RefStore(str(d))


def _ref_file(refs: RefStore, ref: str) -> str:
    return os.path.join(refs.dir, *ref.split("/"))


def test_create_and_resolve(refs):
    assert refs.resolve(MAIN) is None
    refs.set_if_equals(MAIN, None, A, message="create")
    assert refs.resolve(MAIN) == A
    with open(_ref_file(refs, MAIN)) as f:
        assert f.read() == A + "\n"
    assert not os.path.exists(_ref_file(refs, MAIN) + ".lock")


def test_compare_and_swap_moves_when_expected_matches(refs):
    refs.set_if_equals(MAIN, None, A)
    refs.set_if_equals(MAIN, A, B)
    assert refs.resolve(MAIN) == B


@pytest.mark.parametrize("stale", [None, A, C])
def test_stale_expected_value_is_a_conflict_and_changes_nothing(refs, stale):
    refs.set_if_equals(MAIN, None, A)
    refs.set_if_equals(MAIN, A, B)
    log_before = refs.reflog(MAIN)
    with pytest.raises(RefConflictError) as e:
        refs.set_if_equals(MAIN, stale, C, message="should not land")
    assert isinstance(e.value, MlvcError)
    assert e.value.ref == MAIN
    assert refs.resolve(MAIN) == B
    assert refs.reflog(MAIN) == log_before
    assert not os.path.exists(_ref_file(refs, MAIN) + ".lock")


def test_create_when_it_exists_is_a_conflict(refs):
    refs.set_if_equals(MAIN, None, A)
    with pytest.raises(RefConflictError):
        refs.set_if_equals(MAIN, None, B)
    assert refs.resolve(MAIN) == A


def test_a_lock_held_by_a_live_process_is_a_conflict(refs, monkeypatch):
    monkeypatch.setattr(lockfile, "DEFAULT_WAIT", 0.1)
    refs.set_if_equals(MAIN, None, A)
    lock = _ref_file(refs, MAIN) + ".lock"
    held = lockfile.acquire(lock, "test")  # a second open file: its flock conflicts as another process's would
    with open(lock, "rb") as f:
        record = f.read()
    with pytest.raises(LockBusyError) as e:
        refs.set_if_equals(MAIN, A, B)
    assert f"pid {os.getpid()}" in str(e.value) and "main.lock" in str(e.value)
    assert refs.resolve(MAIN) == A
    with open(lock, "rb") as f:  # someone else's lock is never removed or overwritten
        assert f.read() == record
    held.release()
    refs.set_if_equals(MAIN, A, B)
    assert refs.resolve(MAIN) == B


def test_lock_on_a_ref_that_does_not_exist_yet(refs, monkeypatch):
    monkeypatch.setattr(lockfile, "DEFAULT_WAIT", 0.1)
    os.makedirs(os.path.dirname(_ref_file(refs, MAIN)), exist_ok=True)
    with lockfile.locked(_ref_file(refs, MAIN) + ".lock", "test"):
        with pytest.raises(LockBusyError):
            refs.set_if_equals(MAIN, None, A)
        assert refs.resolve(MAIN) is None
        assert refs.list(HEADS) == {}  # the lock file is not listed as a branch


def test_a_dead_holders_lock_is_cleared(refs):
    """A lock left by a process killed while holding it (here: a file no process holds) does not block."""
    refs.set_if_equals(MAIN, None, A)
    lock = _ref_file(refs, MAIN) + ".lock"
    with open(lock, "w") as f:
        f.write(json.dumps({"pid": 999999, "host": socket.gethostname(), "since": "then", "command": "mlvc commit"}))
    assert lockfile.is_stale(lock)
    refs.set_if_equals(MAIN, A, B)
    assert refs.resolve(MAIN) == B and not os.path.exists(lock)


def test_another_hosts_lock_is_never_cleared(refs, monkeypatch):
    monkeypatch.setattr(lockfile, "DEFAULT_WAIT", 0.1)
    refs.set_if_equals(MAIN, None, A)
    lock = _ref_file(refs, MAIN) + ".lock"
    with open(lock, "w") as f:
        f.write('{"pid": 1, "host": "elsewhere.example", "since": "then", "command": "mlvc commit"}')
    assert not lockfile.is_stale(lock)
    with pytest.raises(LockBusyError, match="elsewhere.example"):
        refs.set_if_equals(MAIN, A, B)
    assert refs.resolve(MAIN) == A and os.path.exists(lock)


def test_refuses_a_value_that_is_not_a_commit_id(refs):
    for bad in ("", "main", "A" * 32, "a" * 31, "a" * 33):
        with pytest.raises(RefError):
            refs.set_if_equals(MAIN, None, bad)
    assert refs.resolve(MAIN) is None


def test_reflog_newest_first(refs):
    refs.set_if_equals(MAIN, None, A, who="alice", message="one")
    refs.set_if_equals(MAIN, A, B, who="bob", message="two")
    refs.set_if_equals(MAIN, B, C, who="carol", message="three")
    log = refs.reflog(MAIN)
    assert [(e.old, e.new, e.who, e.message) for e in log] == [
        (B, C, "carol", "three"), (A, B, "bob", "two"), (None, A, "alice", "one")]
    assert all(e.ref == MAIN and e.time.endswith("Z") for e in log)
    assert log[0].time >= log[1].time >= log[2].time


def test_reflog_lines_are_appended(refs):
    refs.set_if_equals(MAIN, None, A, message="one")
    path = os.path.join(refs.dir, "logs", "refs", "heads", "main")
    with open(path) as f:
        first = f.read()
    refs.set_if_equals(MAIN, A, B, message="two")
    with open(path) as f:
        both = f.read()
    assert both.startswith(first)
    assert both.count("\n") == 2


def test_reflog_skips_a_torn_line_and_keeps_the_next_entry(refs):
    refs.set_if_equals(MAIN, None, A, message="one")
    path = os.path.join(refs.dir, "logs", "refs", "heads", "main")
    with open(path, "a") as f:
        f.write('{"old": "aaaa", "new": ')  # a crash mid-append
    assert [e.message for e in refs.reflog(MAIN)] == ["one"]
    refs.set_if_equals(MAIN, A, B, message="two")  # the next append must not be glued to the torn line
    assert [e.message for e in refs.reflog(MAIN)] == ["two", "one"]
    assert refs.reflog_lines(MAIN)[1] == 1


def test_non_utf8_ref_and_reflog_are_errors_not_tracebacks(refs):
    refs.set_if_equals(MAIN, None, A, message="one")
    with open(os.path.join(refs.dir, "logs", "refs", "heads", "main"), "ab") as f:
        f.write(b"\xff\xfe garbage\n")
    assert [e.message for e in refs.reflog(MAIN)] == ["one"]
    with open(_ref_file(refs, MAIN), "wb") as f:
        f.write(b"\xff" * 32 + b"\n")
    with pytest.raises(RefError, match="not text"):
        refs.resolve(MAIN)


def test_delete(refs):
    ref = HEADS + "feature/deep/x"
    refs.set_if_equals(ref, None, A)
    assert refs.list(HEADS) == {"feature/deep/x": A}
    refs.remove_if_equals(ref, A, message="deleted")
    assert refs.resolve(ref) is None
    assert not os.path.exists(_ref_file(refs, ref))
    assert not os.path.exists(os.path.join(refs.dir, "refs", "heads", "feature"))  # empty folders pruned
    assert refs.list(HEADS) == {}
    assert refs.reflog(ref) == []  # the reflog goes with the ref, as in git
    assert not os.path.exists(os.path.join(refs.dir, "logs", "refs", "heads", "feature"))


def test_delete_with_stale_expected_is_a_conflict(refs):
    refs.set_if_equals(MAIN, None, A)
    with pytest.raises(RefConflictError):
        refs.remove_if_equals(MAIN, B)
    assert refs.resolve(MAIN) == A


def test_list_branches_and_tags(refs):
    refs.set_if_equals(HEADS + "main", None, A)
    refs.set_if_equals(HEADS + "dev/x", None, B)
    refs.set_if_equals(TAGS + "v1", None, C)
    assert refs.list(HEADS) == {"dev/x": B, "main": A}
    assert refs.list(TAGS) == {"v1": C}


def test_symbolic_head_and_detached_head(refs):
    refs.set_symbolic(HEAD, MAIN, None, message="init")
    assert refs.head_target() == MAIN
    assert refs.resolve(HEAD) is None  # unborn branch
    refs.set_if_equals(MAIN, None, A)
    assert refs.resolve(HEAD) == A
    refs.set_if_equals(HEAD, A, B, message="detach")
    assert refs.head_target() is None
    assert refs.resolve(HEAD) == B
    assert refs.resolve(MAIN) == A


def test_garbage_in_a_ref_file_is_reported(refs):
    os.makedirs(os.path.dirname(_ref_file(refs, MAIN)), exist_ok=True)
    with open(_ref_file(refs, MAIN), "w") as f:
        f.write("not a commit\n")
    with pytest.raises(RefError, match="mlvc fsck"):
        refs.resolve(MAIN)


@pytest.mark.parametrize("name", [
    "main", "dev", "feature/x", "v1.0", "release-1", "a_b", "x.y.z", "user/feature/deep", "caf\u00e9",
])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", [
    "", "has space", "tab\there", "a..b", "..", "~x", "x~1", "x^", "a^b", "a:b", "-leading", ".hidden",
    "x.lock", "dir/x.lock", "ends/", "a//b", "a/.b", "x.", "q?", "st*r", "br[acket", "back\\slash",
    "at@{1}", "@", "nul\x00", "del\x7f",
])
def test_invalid_names(name):
    with pytest.raises(RefError) as e:
        check_name(name)
    assert isinstance(e.value, ValueError)
    assert "not a valid branch name" in str(e.value)


def test_invalid_name_message_names_the_kind():
    with pytest.raises(RefError, match="not a valid tag name"):
        check_name("bad name", "tag")
