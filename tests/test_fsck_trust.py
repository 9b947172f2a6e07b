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
