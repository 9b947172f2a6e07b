"""Refs: compare-and-swap updates under O_EXCL lock files, reflogs, name rules, deletion."""

from __future__ import annotations

import os

import pytest

from mlvc.errors import MlvcError, RefConflictError, RefError
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
    refs.update(MAIN, A, expected=None, message="create")
    assert refs.resolve(MAIN) == A
    with open(_ref_file(refs, MAIN)) as f:
        assert f.read() == A + "\n"
    assert not os.path.exists(_ref_file(refs, MAIN) + ".lock")


def test_compare_and_swap_moves_when_expected_matches(refs):
    refs.update(MAIN, A, expected=None)
    refs.update(MAIN, B, expected=A)
    assert refs.resolve(MAIN) == B


@pytest.mark.parametrize("stale", [None, A, C])
def test_stale_expected_value_is_a_conflict_and_changes_nothing(refs, stale):
    refs.update(MAIN, A, expected=None)
    refs.update(MAIN, B, expected=A)
    log_before = refs.reflog(MAIN)
    with pytest.raises(RefConflictError) as e:
        refs.update(MAIN, C, expected=stale, message="should not land")
    assert isinstance(e.value, MlvcError)
    assert e.value.ref == MAIN
    assert refs.resolve(MAIN) == B
    assert refs.reflog(MAIN) == log_before
    assert not os.path.exists(_ref_file(refs, MAIN) + ".lock")


def test_create_when_it_exists_is_a_conflict(refs):
    refs.update(MAIN, A, expected=None)
    with pytest.raises(RefConflictError):
        refs.update(MAIN, B, expected=None)
    assert refs.resolve(MAIN) == A


def test_existing_lock_file_is_a_conflict(refs):
    refs.update(MAIN, A, expected=None)
    lock = _ref_file(refs, MAIN) + ".lock"
    with open(lock, "w") as f:
        f.write("held by another process\n")
    with pytest.raises(RefConflictError) as e:
        refs.update(MAIN, B, expected=A)
    assert "lock" in str(e.value)
    assert refs.resolve(MAIN) == A
    with open(lock) as f:  # someone else's lock is never removed or overwritten
        assert f.read() == "held by another process\n"
    os.unlink(lock)
    refs.update(MAIN, B, expected=A)
    assert refs.resolve(MAIN) == B


def test_lock_on_a_ref_that_does_not_exist_yet(refs):
    os.makedirs(os.path.dirname(_ref_file(refs, MAIN)), exist_ok=True)
    open(_ref_file(refs, MAIN) + ".lock", "w").close()
    with pytest.raises(RefConflictError):
        refs.update(MAIN, A, expected=None)
    assert refs.resolve(MAIN) is None
    assert refs.list(HEADS) == {}  # the lock file is not listed as a branch


def test_unconditional_update(refs):
    refs.update(MAIN, A, expected=True)
    refs.update(MAIN, B)  # expected defaults to True: no check
    assert refs.resolve(MAIN) == B


def test_refuses_a_value_that_is_not_a_commit_id(refs):
    for bad in ("", "main", "A" * 32, "a" * 31, "a" * 33):
        with pytest.raises(RefError):
            refs.update(MAIN, bad)
    assert refs.resolve(MAIN) is None


def test_reflog_newest_first(refs):
    refs.update(MAIN, A, expected=None, who="alice", message="one")
    refs.update(MAIN, B, expected=A, who="bob", message="two")
    refs.update(MAIN, C, expected=B, who="carol", message="three")
    log = refs.reflog(MAIN)
    assert [(e.old, e.new, e.who, e.message) for e in log] == [
        (B, C, "carol", "three"), (A, B, "bob", "two"), (None, A, "alice", "one")]
    assert all(e.ref == MAIN and e.time.endswith("Z") for e in log)
    assert log[0].time >= log[1].time >= log[2].time


def test_reflog_lines_are_appended(refs):
    refs.update(MAIN, A, expected=None, message="one")
    path = os.path.join(refs.dir, "logs", "refs", "heads", "main")
    with open(path) as f:
        first = f.read()
    refs.update(MAIN, B, expected=A, message="two")
    with open(path) as f:
        both = f.read()
    assert both.startswith(first)
    assert both.count("\n") == 2


def test_reflog_skips_a_torn_last_line(refs):
    refs.update(MAIN, A, expected=None, message="one")
    path = os.path.join(refs.dir, "logs", "refs", "heads", "main")
    with open(path, "a") as f:
        f.write('{"old": "aaaa", "new": ')  # a crash mid-append
    assert [e.message for e in refs.reflog(MAIN)] == ["one"]


def test_delete(refs):
    ref = HEADS + "feature/deep/x"
    refs.update(ref, A, expected=None)
    assert refs.list(HEADS) == {"feature/deep/x": A}
    refs.update(ref, None, expected=A, message="deleted")
    assert refs.resolve(ref) is None
    assert not os.path.exists(_ref_file(refs, ref))
    assert not os.path.exists(os.path.join(refs.dir, "refs", "heads", "feature"))  # empty folders pruned
    assert refs.list(HEADS) == {}
    assert refs.reflog(ref) == []  # the reflog goes with the ref, as in git
    assert not os.path.exists(os.path.join(refs.dir, "logs", "refs", "heads", "feature"))


def test_delete_with_stale_expected_is_a_conflict(refs):
    refs.update(MAIN, A, expected=None)
    with pytest.raises(RefConflictError):
        refs.update(MAIN, None, expected=B)
    assert refs.resolve(MAIN) == A


def test_list_branches_and_tags(refs):
    refs.update(HEADS + "main", A, expected=None)
    refs.update(HEADS + "dev/x", B, expected=None)
    refs.update(TAGS + "v1", C, expected=None)
    assert refs.list(HEADS) == {"dev/x": B, "main": A}
    assert refs.list(TAGS) == {"v1": C}


def test_symbolic_head_and_detached_head(refs):
    refs.update(HEAD, None, symbolic=MAIN, message="init")
    assert refs.head_target() == MAIN
    assert refs.resolve(HEAD) is None  # unborn branch
    refs.update(MAIN, A, expected=None)
    assert refs.resolve(HEAD) == A
    refs.update(HEAD, B, message="detach")
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
