"""Refs can only be HEAD, refs/heads/* and refs/tags/*; odd revisions and roots never damage a repository;
a file rewritten while it is committed is refused; a busy ref lock is waited for."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_repo, write_safetensors_np
from mlvc import lockfile, snapshot
from mlvc.cli import cli
from mlvc.errors import FileChangedError, LockBusyError, RefError
from mlvc.refs import HEAD


@pytest.fixture
def cli_repo(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "r")
    write_safetensors_np(str(tmp_path / "r" / "m.safetensors"), {"a": np.ones(3, np.float32)})
    repo.commit(str(tmp_path / "r" / "m.safetensors"), message="one")
    repo.create_tag("v1")
    monkeypatch.chdir(repo.root)
    return repo


@pytest.mark.parametrize("rev", ["../tags/v1", "../../HEAD", "refs/../../config.toml", "refs/heads/../../HEAD"])
def test_revisions_cannot_reach_outside_the_ref_folders(cli_repo, rev):
    before = open(os.path.join(cli_repo.dir, "HEAD")).read()
    tag = cli_repo.tags()["v1"]
    r = CliRunner().invoke(cli, ["checkout", rev])
    assert r.exit_code in (4, 7), r.output
    assert open(os.path.join(cli_repo.dir, "HEAD")).read() == before
    write_safetensors_np(os.path.join(cli_repo.root, "m.safetensors"), {"a": np.zeros(3, np.float32)})
    assert CliRunner().invoke(cli, ["commit", "-m", "two"]).exit_code == 0
    assert cli_repo.tags()["v1"] == tag  # the commit moved main, not the tag


def test_ref_store_refuses_paths_outside_refs(cli_repo):
    for ref in ("refs/heads/../tags/v1", "refs/../config.toml", "config.toml", "refs/heads", "refs/heads//x"):
        with pytest.raises(RefError):
            cli_repo.refs.resolve(ref)
        with pytest.raises(RefError):
            cli_repo.refs.set_if_equals(ref, None, cli_repo.head())


def test_a_symbolic_ref_pointing_anywhere_but_a_branch_is_an_error(cli_repo):
    with open(os.path.join(cli_repo.dir, "HEAD"), "w") as f:
        f.write("ref: HEAD\n")
    with pytest.raises(RefError, match="only HEAD may point at a branch"):
        cli_repo.refs.resolve(HEAD)
    r = CliRunner().invoke(cli, ["log"])
    assert r.exit_code == 7 and "Traceback" not in r.output


def test_commit_of_the_repository_root_is_readable(cli_repo):
    r = CliRunner().invoke(cli, ["commit", ".", "-m", "everything", "--allow-empty"])
    assert r.exit_code == 0, r.output
    assert cli_repo.read_manifest(cli_repo.read_commit(cli_repo.head()).manifest).roots == ["."]
    assert CliRunner().invoke(cli, ["status"]).exit_code == 0
    assert cli_repo.fsck().ok


def test_a_file_rewritten_during_commit_is_refused(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "r")
    path = str(tmp_path / "r" / "m.safetensors")
    write_safetensors_np(path, {"a": np.arange(1000, dtype=np.float32)})
    real = snapshot._snapshot_safetensors

    def rewrite_meanwhile(pipe, abs_path, rel, history):
        entry = real(pipe, abs_path, rel, history)
        write_safetensors_np(path, {"a": np.zeros(1000, dtype=np.float32)})  # a trainer saving again
        return entry

    monkeypatch.setattr(snapshot, "_snapshot_safetensors", rewrite_meanwhile)
    with pytest.raises(FileChangedError, match="changed while it was being read"):
        repo.commit(path, message="racy")
    assert repo.head() is None  # nothing committed, no ref moved


def test_a_busy_ref_lock_is_waited_for(cli_repo):
    lock = os.path.join(cli_repo.dir, "refs", "heads", "main.lock")
    held = lockfile.acquire(lock, "test")
    threading.Timer(0.3, held.release).start()  # the other process finishes
    cli_repo.create_branch("side")
    cli_repo.refs.set_if_equals("refs/heads/main", cli_repo.head(), cli_repo.head(), message="same")
    assert not os.path.exists(lock)


def test_a_lock_that_stays_is_reported_with_its_holder(cli_repo, monkeypatch):
    monkeypatch.setattr(lockfile, "DEFAULT_WAIT", 0.2)
    lock = os.path.join(cli_repo.dir, "refs", "heads", "main.lock")
    with lockfile.locked(lock, "test"):
        with pytest.raises(LockBusyError, match=f"pid {os.getpid()}") as e:
            cli_repo.refs.set_if_equals("refs/heads/main", cli_repo.head(), cli_repo.head())
        assert "remove" in str(e.value)
        r = CliRunner().invoke(cli, ["commit", "-m", "x", "--allow-empty"])
        assert r.exit_code == 7 and "Traceback" not in r.output


def test_a_deleted_branch_takes_its_reflog_and_frees_the_name(cli_repo):
    cli_repo.create_branch("q")
    log = os.path.join(cli_repo.dir, "logs", "refs", "heads", "q")
    assert os.path.exists(log)
    cli_repo.delete_branch("q")
    assert not os.path.exists(log)
    cli_repo.create_branch("q/r")  # would clash with a leftover logs/refs/heads/q file
    cli_repo.delete_branch("q/r")
    assert not os.path.exists(os.path.join(cli_repo.dir, "logs", "refs", "heads", "q"))
    cli_repo.create_branch("q")
    assert cli_repo.branches()["q"] == cli_repo.head()
