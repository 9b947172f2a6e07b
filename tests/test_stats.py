"""mlvc stats: logical against stored bytes, per commit and in total."""

from __future__ import annotations

import json
import os

import numpy as np
from click.testing import CliRunner

from conftest import make_repo, write_safetensors_np
from mlvc.cli import cli


def _series(tmp_path, n=3):
    repo = make_repo(tmp_path / "repo", chunk_size=8192)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 64)).astype(np.float32)
    path = str(tmp_path / "repo" / "m.safetensors")
    for step in range(n):
        write_safetensors_np(path, {"w": x, "frozen": np.ones(100, np.float32)})
        repo.commit(path, message=f"step {step}")
        x = (x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(1e-4)).astype(np.float32)
    return repo, path


def test_stats_add_up_to_the_store(tmp_path):
    repo, path = _series(tmp_path)
    s = repo_stats(repo)
    all_objects = list(repo.store.ids())
    assert s.objects == len(all_objects)
    assert s.stored_bytes == sum(repo.store.stored_size(o) for o in all_objects)
    assert s.logical_bytes == 3 * os.path.getsize(path)
    first, *later = reversed(s.commits)
    assert first.message == "step 0" and first.ratio > 0.8  # random floats: a full copy, barely compressed
    assert all(c.new_stored_bytes < first.new_stored_bytes for c in later)  # deltas and the frozen tensor's dedupe
    assert sum(s.encodings.values()) == s.objects
    assert s.max_depth >= 1


def repo_stats(repo, rev=None):
    from mlvc.ops.stats import stats

    return stats(repo, rev)


def test_stats_of_one_history_and_cli(tmp_path, monkeypatch):
    repo, _ = _series(tmp_path)
    assert len(repo_stats(repo, "HEAD~1").commits) == 2
    monkeypatch.chdir(repo.root)
    r = CliRunner().invoke(cli, ["stats"])
    assert r.exit_code == 0, r.output
    assert "step 2" in r.output and "of logical" in r.output and "longest delta chain" in r.output
    data = json.loads(CliRunner().invoke(cli, ["stats", "HEAD~1", "--json"]).stdout)
    assert [c["message"] for c in data["commits"]] == ["step 1", "step 0"]
    assert data["stored_bytes"] == sum(c["new_stored_bytes"] for c in data["commits"])
    r = CliRunner().invoke(cli, ["stats", "nosuch"])
    assert r.exit_code == 4


def test_stats_on_empty_repo(tmp_path, monkeypatch):
    make_repo(tmp_path / "empty")
    monkeypatch.chdir(tmp_path / "empty")
    r = CliRunner().invoke(cli, ["stats"])
    assert r.exit_code == 2 and "no commits yet" in r.output
