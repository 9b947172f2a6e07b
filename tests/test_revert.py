"""Rollback: revert (later changes kept, conflicts leave everything untouched), reset and the reflog, and
`checkout REV -- GLOB` restoring single tensors into the working checkpoint."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import sha256_file
from mlvc.cli import cli
from mlvc.errors import ConflictError, DirtyWorkingCheckpointError, MlvcError, RevisionError
from weights_util import read_st, repo_state, write_st, write_st_raw

NAMES = ("embed.w", "layer.0.w", "layer.0.b", "layer.1.w", "head.w")


def base_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((16, 64) if n.endswith(".w") else 64).astype(np.float32) for n in NAMES}


@pytest.fixture
def history(small_repo, monkeypatch):
    """c0 base; c1 changes layer.0.w; c2 changes head.w; c3 changes embed.w and adds extra.w."""
    monkeypatch.chdir(small_repo.root)
    path = os.path.join(small_repo.root, "model.safetensors")
    w = base_weights()
    states = [dict(w)]
    write_st(path, w, {"format": "pt"})
    ids = [small_repo.commit(path, message="c0").commit.id]
    for i, change in enumerate([{"layer.0.w": w["layer.0.w"] + 1}, {"head.w": w["head.w"] * 2},
                                {"embed.w": w["embed.w"] - 1, "extra.w": np.ones(8, np.float32)}], start=1):
        w = {**w, **change}
        states.append(dict(w))
        write_st(path, w, {"format": "pt"})
        ids.append(small_repo.commit(path, message=f"c{i}").commit.id)
    return small_repo, path, ids, states


def assert_weights(path, want: dict[str, np.ndarray]) -> None:
    got = read_st(path)
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def test_revert_a_middle_commit_keeps_later_changes(history):
    repo, path, ids, states = history
    r = repo.revert(ids[1])
    assert r.commit.parents == [ids[3]] and repo.head() == r.commit.id
    assert r.commit.metadata == {"revert": {"commit": ids[1], "parent": ids[0]}}
    assert r.commit.message.startswith('Revert "c1"') and r.restored == ["layer.0.w (model.safetensors)"]
    want = dict(states[3])
    want["layer.0.w"] = states[0]["layer.0.w"]
    assert_weights(path, want)
    assert repo.status().clean
    assert read_st(path).keys() == states[3].keys()
    # the working file is exactly what checking the new commit out writes
    out = os.path.join(repo.root, "..", "out")
    repo.checkout("HEAD", output=out)
    assert sha256_file(os.path.join(out, "model.safetensors")) == sha256_file(path)
    assert repo.diff("HEAD~1", "HEAD").changed[0].name == "layer.0.w"


def test_reverting_an_addition_and_everything_back_to_the_parent_bytes(history):
    repo, path, ids, states = history
    repo.revert(ids[3])  # removes extra.w, gives embed.w back
    assert_weights(path, states[2])
    # the file is byte for byte the one committed at c2: the header is reused, not rebuilt
    c2_file = repo.read_manifest(repo.read_commit(ids[2]).manifest).files[0]
    head_file = repo.read_manifest(repo.read_commit(repo.head()).manifest).files[0]
    assert head_file.hash == c2_file.hash and head_file.header == c2_file.header
    repo.revert("HEAD")  # reverting the revert brings c3's values back
    assert_weights(path, states[3])


def test_revert_dtype_and_shape_changes_and_keeps_metadata(small_repo, monkeypatch):
    monkeypatch.chdir(small_repo.root)
    path = os.path.join(small_repo.root, "m.safetensors")
    w = base_weights()
    write_st(path, w, {"note": "kept"})
    small_repo.commit(path, message="a")
    w2 = {**w, "layer.1.w": w["layer.1.w"].astype(ml_dtypes.bfloat16), "head.w": w["head.w"][:4]}
    write_st(path, w2, {"note": "kept"})
    c = small_repo.commit(path, message="cast and cut").commit.id
    w3 = {**w2, "layer.0.b": w["layer.0.b"] * 0}
    write_st(path, w3, {"note": "kept"})
    small_repo.commit(path, message="later")
    small_repo.revert(c)
    assert_weights(path, {**w3, "layer.1.w": w["layer.1.w"], "head.w": w["head.w"]})
    with open(path, "rb") as f:
        from mlvc.formats import safetensors as st

        assert st.read_layout(f, path).metadata == {"note": "kept"}
    assert small_repo.status().clean


def test_revert_conflicts_are_all_reported_and_nothing_is_written(history):
    repo, path, ids, states = history
    w = {**states[3], "layer.0.w": states[3]["layer.0.w"] * 3, "head.w": states[3]["head.w"] + 1}
    write_st(path, w, {"format": "pt"})
    repo.commit(path, message="c4 touches layer.0.w and head.w again")
    before = repo_state(repo)
    for rev in (ids[1], ids[2]):
        with pytest.raises(ConflictError) as e:
            repo.revert(rev)
        assert len(e.value.conflicts) == 1
    # a commit that changed two tensors, both changed again: both reported
    write_st(path, {**w, "layer.1.w": w["layer.1.w"] + 1, "layer.0.b": w["layer.0.b"] + 1}, {"format": "pt"})
    both = repo.commit(path, message="c5").commit.id
    write_st(path, {**w, "layer.1.w": w["layer.1.w"] + 2, "layer.0.b": w["layer.0.b"] + 2}, {"format": "pt"})
    repo.commit(path, message="c6")
    before = repo_state(repo)
    with pytest.raises(ConflictError) as e:
        repo.revert(both)
    assert sorted(c.tensor for c in e.value.conflicts) == ["layer.0.b", "layer.1.w"]
    assert "changed again later" in str(e.value) and "nothing was written" in str(e.value)
    assert repo_state(repo) == before


def test_revert_refuses_a_dirty_working_file(history):
    repo, path, ids, states = history
    write_st(path, {**states[3], "head.w": states[3]["head.w"] * 0}, {"format": "pt"})
    before = repo_state(repo)
    with pytest.raises(DirtyWorkingCheckpointError):
        repo.revert(ids[1])
    assert repo_state(repo) == before


def test_revert_refuses_the_first_commit(history):
    repo, _path, ids, _states = history
    with pytest.raises(MlvcError, match="first commit"):
        repo.revert(ids[0])


# -- reset and reflog ------------------------------------------------------------------------------------------


def test_reset_moves_the_branch_and_the_reflog_goes_back(history):
    repo, path, ids, states = history
    before_file = sha256_file(path)
    r = repo.reset(ids[1])
    assert (r.branch, r.old, r.new, r.hard) == ("main", ids[3], ids[1], False)
    assert repo.head() == ids[1] and repo.branches()["main"] == ids[1]
    assert sha256_file(path) == before_file  # soft: the working file is untouched ...
    assert not repo.status().clean  # ... so it now differs from HEAD
    lines = repo.reflog()
    assert lines[0].selector == "HEAD@{0}" and lines[0].entry.new == ids[1] and lines[1].entry.new == ids[3]
    assert repo.reflog("main")[0].entry.message.startswith("reset: moving to")
    assert repo.resolve("HEAD@{1}") == ids[3] and repo.resolve("main@{1}~1") == ids[2]
    repo.reset("HEAD@{1}")
    assert repo.head() == ids[3] and repo.status().clean


def test_reset_hard_rewrites_and_refuses_to_lose_changes(history):
    repo, path, ids, states = history
    repo.reset(ids[0], hard=True)
    assert_weights(path, states[0])
    assert repo.status().clean
    write_st(path, {**states[0], "head.w": states[0]["head.w"] + 9}, {"format": "pt"})
    before = repo_state(repo)
    with pytest.raises(DirtyWorkingCheckpointError):
        repo.reset(ids[3], hard=True)
    assert repo_state(repo) == before
    repo.reset(ids[3], hard=True, force=True)
    assert_weights(path, states[3])
    assert repo.status().clean
    with pytest.raises(RevisionError, match="only"):
        repo.resolve("HEAD@{99}")


def test_cli_reset_reflog_and_revert(history):
    repo, path, ids, states = history
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    out = run("reset", "--hard", "HEAD~2")
    assert f"main is now at {ids[1][:12]}" in out and "Undo with `mlvc reset --hard" in out
    out = run("reflog")
    assert "HEAD@{0}: reset: moving to HEAD~2" in out and "HEAD@{1}: commit: c3" in out
    assert json.loads(run("reflog", "main", "--json", "-n", "1"))[0]["new"] == ids[1]
    run("reset", "--hard", "HEAD@{1}")
    assert repo.head() == ids[3]
    assert "--force only makes sense" in run("reset", "--force", "HEAD", code=2)
    write_st(path, {**states[3], "head.w": states[3]["head.w"] + 9}, {"format": "pt"})
    assert "uncommitted changes" in run("reset", "--hard", "HEAD~1", code=6)
    run("reset", "--hard", "--force", "HEAD")
    out = run("revert", ids[1])
    assert "1 tensor(s)/file(s) restored" in out and "layer.0.w" in out
    write_st(path, {**read_st(path), "head.w": states[3]["head.w"] * 7}, {"format": "pt"})
    repo.commit(path, message="head again")
    out = run("revert", ids[2], code=16)
    assert "head.w (model.safetensors): changed by" in out and "nothing was written" in out
    assert "no such branch or tag" in run("reflog", "nosuch", code=4)


# -- checkout REV -- GLOB ---------------------------------------------------------------------------------------


def test_restore_tensors_keeps_other_uncommitted_changes(history):
    repo, path, ids, states = history
    head = repo.head()
    w = {**states[3], "layer.1.w": states[3]["layer.1.w"] + 5}  # an uncommitted change elsewhere
    write_st(path, w, {"format": "pt"})
    r = repo.checkout(ids[0], tensors=["layer.0.*", "embed.*"])
    assert sorted(r.tensors) == ["embed.w", "layer.0.b", "layer.0.w"] and r.files == ["model.safetensors"]
    assert repo.head() == head
    assert_weights(path, {**w, "layer.0.w": states[0]["layer.0.w"], "embed.w": states[0]["embed.w"]})
    st = repo.status()
    assert sorted(st.changed[0].tensors_changed) == ["embed.w", "layer.0.w", "layer.1.w"]
    with pytest.raises(MlvcError, match="no tensor in"):
        repo.restore(ids[0], ["nothing.*"])
    with pytest.raises(MlvcError, match="drop --output"):
        repo.checkout(ids[0], output="x", tensors=["head.*"])


def test_restore_a_tensor_the_working_file_lacks_or_reshaped(history):
    repo, path, ids, states = history
    w = {k: v for k, v in states[3].items() if k != "head.w"}
    w["layer.1.w"] = w["layer.1.w"][:2]
    write_st(path, w, {"format": "pt"})
    repo.restore(ids[3], ["head.w", "layer.1.w"])
    assert_weights(path, states[3])
    from mlvc.formats import safetensors as st

    with open(path, "rb") as f:
        assert st.read_layout(f, path).metadata == {"format": "pt"}
    assert repo.status().clean


def test_cli_checkout_with_globs(history):
    repo, path, ids, states = history
    runner = CliRunner()
    result = runner.invoke(cli, ["checkout", ids[0], "--", "head.*"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Restored 1 tensor(s)" in result.output and "HEAD did not move" in result.output
    assert np.array_equal(read_st(path)["head.w"], states[0]["head.w"])
    assert repo.head() == ids[3]
    result = runner.invoke(cli, ["checkout", ids[0], "--"], catch_exceptions=False)
    assert result.exit_code == 2 and "name the tensors" in result.output


def test_revert_of_a_tensor_of_unknown_dtype_that_changed_size_under_one_shape(small_repo):
    """A tensor of a dtype mlvc does not know may change its byte count while its shape stays: the reverted
    file's header is then a new one, not the template's (whose offsets no longer fit: the work tree file was
    unreadable and fsck found the tree's entry disagreeing with its header)."""
    from mlvc.formats import safetensors as st_format
    from mlvc.repo import Repo

    repo = small_repo
    path = os.path.join(repo.root, "model.safetensors")
    big = np.arange(3000, dtype=np.float32).tobytes()
    write_st_raw(path, [("a", "XQ9", [2], b"abc"), ("b", "F32", [3000], big)])
    repo.commit(path, message="one")
    write_st_raw(path, [("a", "XQ9", [2], b"abcde"), ("b", "F32", [3000], big)])
    repo.commit(path, message="two")
    big2 = (np.arange(3000, dtype=np.float32) + 1).tobytes()
    write_st_raw(path, [("a", "XQ9", [2], b"abcde"), ("b", "F32", [3000], big2)])
    repo.commit(path, message="three")
    repo.revert("HEAD~1")  # undoes "two": a back to 3 bytes, b as "three" left it
    with open(path, "rb") as f:
        layout = st_format.read_layout(f, "model.safetensors")
        f.seek(layout.data_start)
        data = f.read()
    assert (layout.names, layout.ends) == (["a", "b"], [3, 3 + len(big2)])
    assert data == b"abc" + big2
    assert Repo(repo.root).fsck().ok
