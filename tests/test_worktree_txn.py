"""The work-tree transaction: containment (never a write, rename or removal outside the work tree, whatever
symlinks the user put in it), shapes that change kind (a folder that becomes a file and back), the plan
refusing before anything moves, recovery of a transaction killed half-way, and what commit does with symlinks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_repo, tree_hashes
from mlvc.cli import cli
from mlvc.errors import PathError
from mlvc.ops import worktree
from mlvc.repo import Repo
from weights_util import write_st


def w(seed: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).standard_normal(64).astype(np.float32)}


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Repo:
    r = make_repo(tmp_path / "repo", chunk_size=4096)
    monkeypatch.chdir(r.root)
    return r


def _outside(tmp_path) -> str:
    victim = tmp_path / "outside"
    victim.mkdir()
    for name in ("a.safetensors", "b.safetensors", "keep.txt"):
        (victim / name).write_bytes(b"not yours to delete: " + name.encode())
    return str(victim)


def _two_commits(repo: Repo) -> tuple[str, str]:
    """c1: model/a and model/b; c2: model/b removed, model/a changed."""
    os.makedirs("model")
    write_st("model/a.safetensors", w(1))
    write_st("model/b.safetensors", w(2))
    c1 = repo.commit("model", message="two files").commit.id
    os.unlink("model/b.safetensors")
    write_st("model/a.safetensors", w(3))
    c2 = repo.commit(paths=["model"], message="one file").commit.id
    return c1, c2


VERBS = {
    "checkout --force": lambda repo, c1, c2: repo.checkout(c2, force=True),
    "checkout": lambda repo, c1, c2: repo.checkout(c2),
    "reset --hard --force": lambda repo, c1, c2: repo.reset(c2, hard=True, force=True),
    "switch": lambda repo, c1, c2: repo.switch("main", force=True),
    "revert": lambda repo, c1, c2: repo.revert("HEAD"),
    "merge": lambda repo, c1, c2: repo.merge("side"),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_folder_replaced_by_a_symlink_is_never_written_through(repo, tmp_path, verb):
    c1, c2 = _two_commits(repo)
    if verb == "revert":  # HEAD re-adds b: reverting it removes b again
        repo.revert("HEAD")
    elif verb == "merge":  # fast-forward from c1 to c2 removes b
        repo.reset(c1, hard=True)
        repo.create_branch("side", c2)
    elif verb != "switch":
        repo.checkout(c1)
    else:
        repo.checkout(c1)
    victim = _outside(tmp_path)
    # same bytes as the commit's files, so that even the "content matches" shortcut would apply
    for name in ("a.safetensors", "b.safetensors"):
        with open(os.path.join("model", name), "rb") as src, open(os.path.join(victim, name), "wb") as dst:
            dst.write(src.read())
    before_outside = tree_hashes(victim)
    head, raw = repo.head(), repo.refs.read_raw("HEAD")
    os.rename("model", str(tmp_path / "model-moved"))
    os.symlink(victim, "model")
    with pytest.raises(PathError, match="symlink"):
        VERBS[verb](repo, c1, c2)
    assert tree_hashes(victim) == before_outside  # nothing outside was removed, renamed or written
    assert (repo.head(), repo.refs.read_raw("HEAD")) == (head, raw)  # and no ref moved
    assert not worktree.pending(repo)
    assert not [n for n in os.listdir(victim) if n.startswith(".tmp")]


def test_checkout_output_refuses_a_symlinked_folder_inside_it(repo, tmp_path):
    _two_commits(repo)
    out = tmp_path / "out"
    out.mkdir()
    victim = _outside(tmp_path)
    os.symlink(victim, out / "model")
    before = tree_hashes(victim)
    with pytest.raises(PathError, match="symlink"):
        repo.checkout("HEAD", output=str(out), force=True)
    assert tree_hashes(victim) == before


def test_folder_and_file_of_the_same_name_swap_both_ways(repo):
    os.makedirs("x")
    write_st("x/w.safetensors", w(1))
    with open("cfg.json", "w") as f:
        f.write("{}")
    c1 = repo.commit(paths=["x", "cfg.json"], message="x is a folder").commit.id
    os.unlink("x/w.safetensors")
    os.rmdir("x")
    with open("x", "wb") as f:
        f.write(b"now a file")
    c2 = repo.commit(paths=["x", "cfg.json"], message="x is a file").commit.id
    for target, is_file in ((c1, False), (c2, True), (c1, False)):
        repo.checkout(target)
        assert repo.head() == target
        assert os.path.isfile("x") == is_file
        assert repo.status().clean
        assert not worktree.pending(repo)


def test_untracked_file_in_the_way_is_refused_before_anything_moves(repo):
    os.makedirs("x")
    write_st("x/w.safetensors", w(1))
    c1 = repo.commit(paths=["x"], message="folder").commit.id
    os.unlink("x/w.safetensors")
    os.rmdir("x")
    with open("x", "wb") as f:
        f.write(b"file")
    c2 = repo.commit(paths=["x"], message="file").commit.id
    repo.checkout(c1)
    with open("x/notes.txt", "w") as f:  # untracked, in the folder that must become a file
        f.write("mine")
    snapshot = tree_hashes(repo.root)
    with pytest.raises(PathError, match="notes.txt"):
        repo.checkout(c2)
    assert repo.head() == c1 and tree_hashes(repo.root) == snapshot


def test_checkout_removes_folders_it_emptied(repo):
    os.makedirs("m/deep")
    write_st("m/deep/w.safetensors", w(1))
    write_st("m/top.safetensors", w(2))
    c1 = repo.commit(paths=["m"], message="deep").commit.id
    os.unlink("m/deep/w.safetensors")
    os.rmdir("m/deep")
    repo.commit(paths=["m"], message="shallow")
    repo.checkout(c1)
    assert os.path.isfile("m/deep/w.safetensors")
    repo.switch("main")
    assert not os.path.exists("m/deep")


def test_commit_refuses_symlinked_folders_and_reads_symlinked_files(repo, tmp_path):
    victim = _outside(tmp_path)
    os.makedirs("model")
    write_st("model/a.safetensors", w(1))
    os.symlink(victim, "model/sys")
    with pytest.raises(PathError, match="symlink to a folder"):
        repo.commit("model", message="no")
    os.unlink("model/sys")
    os.symlink(victim, "linked")
    with pytest.raises(PathError, match="symlink to a folder"):
        repo.commit("linked", message="no")
    assert repo.head() is None
    write_st(str(tmp_path / "real.safetensors"), w(5))
    os.symlink(str(tmp_path / "real.safetensors"), "model/b.safetensors")
    c = repo.commit("model", message="file link read through").commit
    m = repo.read_manifest(c.manifest)
    assert [f.path for f in m.files] == ["model/a.safetensors", "model/b.safetensors"]
    out = tmp_path / "out"
    repo.checkout("HEAD", output=str(out))
    assert not os.path.islink(out / "model" / "b.safetensors")
    assert (out / "model" / "b.safetensors").read_bytes() == (tmp_path / "real.safetensors").read_bytes()


def _fault_points(repo: Repo, args: list[str], tmp_path) -> list[str]:
    log = tmp_path / "points.log"
    env = {**os.environ, "MLVC_FAULT_LOG": str(log)}
    r = subprocess.run([sys.executable, "-m", "mlvc", *args], cwd=repo.root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize("at", ["worktree.staged", "ref.moved", "worktree.removed", "worktree.renamed"])
def test_a_checkout_killed_half_way_is_finished_or_undone_by_the_next_command(repo, tmp_path, at):
    c1, c2 = _two_commits(repo)
    write_st("model/c.safetensors", w(9))  # c2 plus a new file: a checkout to c1 writes two, removes one
    c3 = repo.commit(paths=["model"], message="three").commit.id
    trees = {}
    for c in (c1, c3):
        repo.checkout(c)
        trees[c] = tree_hashes(repo.root)
    saved = str(tmp_path / "saved")
    shutil.copytree(repo.root, saved, symlinks=True)
    points = _fault_points(repo, ["checkout", c1], tmp_path)
    assert at in points
    shutil.rmtree(repo.root)
    shutil.copytree(saved, repo.root, symlinks=True)
    os.chdir(repo.root)  # the old folder is gone
    env = {**os.environ, "MLVC_FAULT_AT": str(points.index(at) + 1)}
    r = subprocess.run([sys.executable, "-m", "mlvc", "checkout", c1], cwd=repo.root, env=env)
    assert r.returncode == -9
    fresh = Repo(repo.root)
    st = fresh.status()  # recovers first
    assert st.clean, st.changed
    assert tree_hashes(repo.root) == trees[fresh.head()]
    assert fresh.head() in (c1, c3)
    assert not worktree.pending(fresh)
    assert not [p for p in tree_hashes(repo.root, skip=()) if os.path.basename(p).startswith(".tmp-mlvc-")
                and "/.mlvc/" not in "/" + p]
    assert CliRunner().invoke(cli, ["checkout", c1]).exit_code == 0


def test_a_torn_or_foreign_journal_is_dropped(repo):
    _two_commits(repo)
    os.makedirs(os.path.join(repo.dir, "txn"), exist_ok=True)
    with open(os.path.join(repo.dir, "txn", "junk.json"), "w") as f:
        f.write("{not json")
    with open(os.path.join(repo.dir, "txn", "gone.json"), "w") as f:
        json.dump({"base": "/nonexistent/folder", "state": "applying", "renames": [], "removes": []}, f)
    assert repo.status().clean
    assert not worktree.pending(repo)


def test_exit_status_says_what_happened_when_the_reflog_cannot_be_written(repo, monkeypatch):
    import errno

    from mlvc.refs import RefStore

    write_st("m.safetensors", w(1))
    first = repo.commit("m.safetensors", message="one").commit.id
    write_st("m.safetensors", w(2))
    real = RefStore.append_log

    def full_disk(self, ref, *args):
        raise OSError(errno.ENOSPC, "No space left on device", self._log_path(ref))

    monkeypatch.setattr(RefStore, "append_log", full_disk)
    r = CliRunner().invoke(cli, ["commit", "-m", "two"])
    assert r.exit_code == 17 and "No space left" in r.output
    assert repo.head() == first  # failed, and said so: the branch did not move
    # only HEAD's own log failing (the branch moved and logged it): success, and the status says so
    monkeypatch.setattr(RefStore, "append_log",
                        lambda self, ref, *a: full_disk(self, ref) if ref == "HEAD" else real(self, ref, *a))
    r = CliRunner().invoke(cli, ["commit", "-m", "two"])
    assert r.exit_code == 0, r.output
    assert repo.head() != first and repo.log()[0].message == "two"
