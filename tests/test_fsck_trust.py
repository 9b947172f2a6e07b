"""fsck finds every kind of damage the trust issue lists, and lists what killed processes leave behind."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_repo
from mlvc.cli import cli
from mlvc.repo import Repo
from weights_util import write_st


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Repo:
    r = make_repo(tmp_path / "repo", chunk_size=4096)
    monkeypatch.chdir(r.root)
    os.makedirs("model")
    write_st("model/a.safetensors", {"w": np.arange(100, dtype=np.float32)})
    r.commit("model", message="one")
    return r


def kinds(report, attr="problems") -> set[str]:
    return {p.problem for p in getattr(report, attr)}


def test_a_clean_repository_has_no_problems_and_no_leftovers(repo):
    report = repo.fsck()
    assert report.ok and not report.leftovers


def test_head_naming_a_branch_that_does_not_exist(repo):
    with open(os.path.join(repo.dir, "HEAD"), "w") as f:
        f.write("ref: refs/heads/nope\n")
    report = repo.fsck()
    assert not report.ok and "bad ref" in kinds(report)
    assert any("refs/heads/nope" in p.detail for p in report.problems)
    r = CliRunner().invoke(cli, ["fsck"])
    assert r.exit_code == 5 and "Traceback" not in r.output


def test_an_unborn_branch_in_a_new_repository_is_fine(tmp_path):
    assert make_repo(tmp_path / "new").fsck().ok


@pytest.mark.parametrize("content", [b"\xff\xfe\n", b"ref: refs/heads/../../x\n", b"zzzz\n"])
def test_damaged_head_is_a_problem_not_a_traceback(repo, content):
    with open(os.path.join(repo.dir, "HEAD"), "wb") as f:
        f.write(content)
    assert "bad ref" in kinds(Repo(repo.root).fsck())
    r = CliRunner().invoke(cli, ["log"])
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_stale_locks_temp_files_and_torn_reflog_lines_are_leftovers(repo):
    lock = os.path.join(repo.dir, "refs", "heads", "main.lock")
    with open(lock, "w") as f:  # a holder that is gone
        json.dump({"pid": 999999, "host": socket.gethostname(), "since": "x", "command": "mlvc commit"}, f)
    with open(os.path.join(repo.dir, "objects", ".tmp-mlvc-abc"), "wb") as f:
        f.write(b"half an object")
    with open(os.path.join("model", ".tmp-mlvc-0123-0"), "wb") as f:
        f.write(b"half a checkout")
    with open(os.path.join(repo.dir, "logs", "refs", "heads", "main"), "a") as f:
        f.write('{"old": null, "ne')
    report = repo.fsck()
    assert report.ok  # nothing is lost
    assert kinds(report, "leftovers") == {"stale lock", "temp file", "damaged reflog line"}
    assert len([p for p in report.leftovers if p.problem == "temp file"]) == 2
    r = CliRunner().invoke(cli, ["fsck"])
    assert r.exit_code == 0 and "stale lock" in r.output and "mlvc gc" in r.output
    data = json.loads(CliRunner().invoke(cli, ["fsck", "--json"]).output)
    assert data["ok"] and len(data["leftovers"]) == 4


def test_a_live_lock_is_not_a_leftover(repo):
    from mlvc import lockfile

    with lockfile.locked(os.path.join(repo.dir, "refs", "heads", "main.lock"), "test"):
        assert not repo.fsck().leftovers


def _model(seed: int) -> dict[str, np.ndarray]:
    """Large tensors (chunks), small ones (bundled), and empty ones that share an offset with each other."""
    rng = np.random.default_rng(seed)
    out = {"a": rng.standard_normal(2000).astype(np.float32), "b": rng.standard_normal(2000).astype(np.float32)}
    out.update({f"n.{i:02d}": rng.standard_normal(i % 3 + 1).astype(np.float32) for i in range(40)})
    out.update({"z.empty": np.zeros(0, np.uint8), "e.empty": np.zeros((0, 3), np.float32),
                "m.empty": np.zeros((2, 0), np.int64)})
    return out


def _with_entry(repo: Repo, change) -> str:
    """A commit on HEAD whose tree is HEAD's with `change(file entry)` applied to the safetensors file's entry
    (the header's chunks untouched): what a faulty tool writing manifests could make. Its commit id."""
    from mlvc.objects import Commit

    head = repo.read_commit(repo.head())
    m = repo.read_manifest(head.manifest)
    change(next(f for f in m.files if f.path == "model.safetensors"))
    bad = repo.write_commit(Commit(repo.write_manifest(m), [head.id], "t", head.time, "tampered"))
    repo.refs.set_if_equals("refs/heads/main", head.id, bad, who="t", message="tampered")
    return bad


def _rename(entry, old: str, new: str) -> None:
    for t in entry.tensors:
        if t.name == old:
            t.name = new


def _swap(entry, x: str, y: str) -> None:
    _rename(entry, x, "\0")
    _rename(entry, y, x)
    _rename(entry, "\0", y)


def _set(entry, name: str, **fields) -> None:
    for t in entry.tensors:
        if t.name == name:
            for k, v in fields.items():
                setattr(t, k, v)


@pytest.mark.parametrize("change", [
    lambda e: _swap(e, "a", "b"),  # two large tensors: same dtype and shape, each one's bytes under the other's name
    lambda e: _swap(e, "n.00", "n.03"),  # two bundled ones
    lambda e: _rename(e, "n.05", "n.5"),
    lambda e: _set(e, "a", dtype="I32"),  # the same bytes as another dtype
    lambda e: _set(e, "b", shape=[40, 50]),
    lambda e: _set(e, "n.07", shape=[1, 2]),
    lambda e: _swap(e, "z.empty", "e.empty"),  # empty tensors, each with the other's shape and dtype
], ids=["large names", "bundled names", "a name", "dtype", "shape", "bundled shape", "empty names"])
def test_fsck_finds_an_entry_that_disagrees_with_its_header(tmp_path, change):
    """Every tensor of a safetensors file's entry is compared with the file's stored header: name, dtype, shape and
    place, in data order. Such a tree checks out byte for byte (the header, then the bytes in the entry's order),
    but anything reading a tensor by name would read another's bytes."""
    repo = make_repo(tmp_path / "repo")
    write_st(os.path.join(repo.root, "model.safetensors"), _model(0))
    repo.commit(os.path.join(repo.root, "model.safetensors"), message="one")
    assert repo.fsck().ok
    bad = _with_entry(repo, change)
    report = Repo(repo.root).fsck()
    problems = [p for p in report.problems if p.problem == "corrupt"]
    assert len(problems) == 1 and problems[0].object_id == repo.read_commit(bad).manifest, report.problems
    assert "model.safetensors" in problems[0].detail and "in the file's header" in problems[0].detail
    r = CliRunner().invoke(cli, ["-C", repo.root, "fsck"])
    assert r.exit_code == 5 and "Traceback" not in r.output


def test_fsck_finds_an_entry_with_a_tensor_more_or_fewer(tmp_path):
    repo = make_repo(tmp_path / "repo")
    write_st(os.path.join(repo.root, "model.safetensors"), _model(0))
    repo.commit(os.path.join(repo.root, "model.safetensors"), message="one")
    _with_entry(repo, lambda e: setattr(e, "tensors", [t for t in e.tensors if t.name != "z.empty"]))
    (problem,) = Repo(repo.root).fsck().problems
    assert "lists 44 tensors, the file's header 45" in problem.detail


def test_trees_mlvc_makes_agree_with_their_headers(tmp_path):
    """No tree that commit, revert, merge or a state_dict commit writes is reported: empty tensors at one offset may
    be listed in another order than the parser's (revert and merge build headers of their own), and are compared
    in the parser's order."""
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "model.safetensors")
    write_st(path, _model(0))
    repo.commit(path, message="one")
    repo.create_branch("side")
    write_st(path, {k: v + 1 if v.dtype == np.float32 else v for k, v in _model(0).items()})
    repo.commit(path, message="two")
    repo.revert("HEAD")
    repo.switch("side")
    write_st(path, dict(_model(1), extra=np.zeros(0, np.float16)))
    repo.commit(path, message="side")
    repo.switch("main")
    repo.merge("side", strategy="theirs")
    repo.commit({"w": np.ones(5000, np.float32), "x.empty": np.zeros(0, np.float32), "b.empty": np.zeros(0, np.int8),
                 "s": np.arange(3, dtype=np.int64)}, message="state", path="state.safetensors")
    report = Repo(repo.root).fsck()
    assert report.ok, report.problems
    assert report.commits_reached == 6


def test_empty_tensors_at_one_offset_may_be_listed_in_any_order(tmp_path):
    """A tree whose entry lists the empty tensors that share an offset in another order than the parser's (by
    name) describes the same file: not a problem."""
    repo = make_repo(tmp_path / "repo")
    write_st(os.path.join(repo.root, "model.safetensors"), {"w": np.ones(3000, np.float32), "s": np.zeros(0, np.int8),
                                                         "r": np.zeros((0, 2), np.float32), "q": np.zeros(0, np.int64)})
    repo.commit(os.path.join(repo.root, "model.safetensors"), message="one")

    def reorder(entry) -> None:
        names = [t.name for t in entry.tensors]
        empties = [i for i, t in enumerate(entry.tensors) if t.nbytes == 0]
        assert len(empties) == 3 and empties == list(range(empties[0], empties[0] + 3)), names  # one offset
        entry.tensors[empties[0] : empties[-1] + 1] = entry.tensors[empties[0] : empties[-1] + 1][::-1]
        assert [t.name for t in entry.tensors] != names

    _with_entry(repo, reorder)
    report = Repo(repo.root).fsck()
    assert report.ok and report.commits_reached == 2, report.problems


@pytest.mark.parametrize(("change", "says"), [
    (lambda e, w: setattr(e, "header", [*e.header, *w.chunks]), "header chunks hold"),
    (lambda e, w: setattr(e, "header", []), "names no header chunks"),
    (lambda e, w: setattr(e, "header", w.chunks * 300), "more than a header"),
], ids=["a chunk past the header", "no header chunk", "a chunk 300 times"])
def test_fsck_finds_header_chunks_that_are_not_the_files_header(tmp_path, change, says):
    """The entry's header chunks must hold the header and nothing more: a chunk past it (the file would check out
    longer than its entry says, its header not accounting for the bytes), no chunk at all, or a chunk named many
    times over (refused from the chunks' lengths before anything is joined) is a problem."""
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "model.safetensors")
    write_st(path, {"w": np.arange(3000, dtype=np.float32), "v": np.arange(5, dtype=np.float32)})
    repo.commit(path, message="one")
    entry = repo.read_manifest(repo.read_commit(repo.head()).manifest).files[0]
    (w,) = [t for t in entry.tensors if t.name == "w"]
    _with_entry(repo, lambda e: change(e, w))
    problems = Repo(repo.root).fsck().problems
    assert len(problems) == 1 and says in problems[0].detail, problems
