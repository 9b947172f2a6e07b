"""Rewriting the working checkpoint is all or nothing.

checkout, switch, reset --hard, revert and merge write and verify every file into temp files first, then move
the ref by compare-and-swap, and only then rename the temp files into place. A bad object found while writing,
or a ref that another process moved in between, leaves the working files, HEAD and the branches as they were,
with no temp file behind. `checkout --output` refuses a folder inside .mlvc/.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import flip_byte, make_repo, tree_hashes
from mlvc.cli import cli
from mlvc.errors import CorruptObjectError, PathError, RefConflictError
from mlvc.ops.treebuild import values
from mlvc.refs import HEADS, RefStore
from mlvc.repo import Repo
from mlvc.snapshot import read_tensor_bytes, tensor_chunks
from weights_util import write_st

FILES = ("a.safetensors", "b.safetensors")


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((32, 64)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)}


def commit_files(repo: Repo, seeds: dict[str, int], message: str) -> str:
    for name, seed in seeds.items():
        write_st(os.path.join(repo.root, name), weights(seed))
    return repo.commit(paths=[os.path.join(repo.root, n) for n in FILES], message=message).commit.id


@pytest.fixture
def two(tmp_path, monkeypatch):
    """c0: a and b; c1: both changed. Returns (repo, [c0, c1])."""
    repo = make_repo(tmp_path / "repo", chunk_size=4096)
    monkeypatch.chdir(repo.root)
    c0 = commit_files(repo, {"a.safetensors": 1, "b.safetensors": 2}, "c0")
    c1 = commit_files(repo, {"a.safetensors": 3, "b.safetensors": 4}, "c1")
    return repo, [c0, c1]


def chunks_of(repo: Repo, cid: str, path: str | None = None) -> set[str]:
    m = repo.read_manifest(repo.read_commit(cid).manifest)
    out = set()
    for f in m.files:
        if path is None or f.path == path:
            out |= set(f.header or []) | set(f.chunks or []) | {c for t in f.tensors for c in t.chunks}
    return out


def damage_old_b(repo: Repo, ids: list[str]) -> Repo:
    """Flip a byte in a chunk only c0's b.safetensors uses; a fresh Repo (no decoded-object cache)."""
    only_b = chunks_of(repo, ids[0], "b.safetensors") - chunks_of(repo, ids[0], "a.safetensors") \
        - chunks_of(repo, ids[1])
    victim = sorted(only_b)[-1]
    where = repo.store.locate(victim)
    flip_byte(where, os.path.getsize(where) - 3)
    return Repo(repo.root)


def snapshot(repo: Repo) -> dict:
    """Working files byte for byte, HEAD, every ref, every reflog."""
    refs = {}
    for base, _dirs, files in os.walk(os.path.join(repo.dir, "refs")):
        for name in files:
            with open(os.path.join(base, name)) as f:
                refs[os.path.relpath(os.path.join(base, name), repo.dir)] = f.read()
    with open(os.path.join(repo.dir, "HEAD")) as f:
        head = f.read()
    return {"work": tree_hashes(repo.root), "HEAD": head, "refs": refs,
            "logs": tree_hashes(os.path.join(repo.dir, "logs"))}


def leftovers(repo: Repo) -> list[str]:
    """Temp and lock files anywhere in the working tree or under .mlvc/refs."""
    out = []
    for base, _dirs, files in os.walk(repo.root):
        out += [os.path.join(base, n) for n in files if n.startswith(".tmp") or n.endswith(".lock")]
    return out


def assert_unchanged(repo: Repo, before: dict) -> None:
    assert snapshot(repo) == before
    assert leftovers(repo) == []
    st = Repo(repo.root).status()
    assert st.clean, st.changed


# -- a bad object: nothing changes ------------------------------------------------------------------------


def test_checkout_cli_bad_object_changes_nothing(two):
    repo, ids = two
    repo = damage_old_b(repo, ids)
    before = snapshot(repo)
    r = CliRunner().invoke(cli, ["checkout", "HEAD~1"])
    assert r.exit_code == 5, r.output
    assert "corrupt" in r.output
    assert_unchanged(repo, before)
    assert repo.head() == ids[1] and repo.head_branch() == "main"


def test_checkout_bad_object_changes_nothing(two):
    repo, ids = two
    repo = damage_old_b(repo, ids)
    before = snapshot(repo)
    with pytest.raises(CorruptObjectError):
        repo.checkout(ids[0])
    assert_unchanged(repo, before)


def test_switch_bad_object_changes_nothing(two):
    repo, ids = two
    repo.create_branch("old", ids[0])
    repo = damage_old_b(repo, ids)
    before = snapshot(repo)
    with pytest.raises(CorruptObjectError):
        repo.switch("old")
    assert_unchanged(repo, before)
    assert repo.head_branch() == "main"


def test_switch_create_bad_object_creates_no_branch(two):
    repo, ids = two
    repo = damage_old_b(repo, ids)
    before = snapshot(repo)
    with pytest.raises(CorruptObjectError):
        repo.switch("old", create=True, start=ids[0])
    assert_unchanged(repo, before)
    assert "old" not in repo.branches()


def test_reset_hard_bad_object_changes_nothing(two):
    repo, ids = two
    repo = damage_old_b(repo, ids)
    before = snapshot(repo)
    r = CliRunner().invoke(cli, ["reset", "--hard", "HEAD~1"])
    assert r.exit_code == 5, r.output
    assert_unchanged(repo, before)
    assert repo.head() == ids[1]


def test_checkout_output_bad_object_writes_nothing(two, tmp_path):
    repo, ids = two
    repo = damage_old_b(repo, ids)
    out = tmp_path / "out"
    with pytest.raises(CorruptObjectError):
        repo.checkout(ids[0], output=str(out))
    assert not out.exists() or os.listdir(out) == []


def test_restore_bad_object_changes_nothing(two):
    repo, ids = two
    repo = damage_old_b(repo, ids)
    before = snapshot(repo)
    with pytest.raises(CorruptObjectError):
        repo.restore(ids[0], ["*"])
    assert_unchanged(repo, before)


def test_checkout_succeeds_after_the_failed_try(two):
    repo, ids = two
    r = repo.checkout(ids[0])
    assert sorted(r.written) == list(FILES) and repo.head() == ids[0]
    assert leftovers(repo) == []
    assert repo.status().clean


# -- another process moves the ref between planning and the move: nothing changes -------------------------


@pytest.fixture
def race(monkeypatch):
    """Make the next ref update lose a race: just before it, "another process" (a second Repo object)
    points `ref` at `to`. Returns a function arming it, and a record of what the working tree held then."""
    seen = {}

    def arm(repo: Repo, ref: str, to: str) -> None:
        original = RefStore._swap

        def racing(self, *args, **kwargs):
            if "work" not in seen:
                seen["work"] = {k: v for k, v in tree_hashes(repo.root).items()
                                if not os.path.basename(k).startswith(".tmp")}
                seen["tmp"] = leftovers(repo)
                other = Repo(repo.root)
                other.refs.set_if_equals(ref, other.refs.resolve(ref), to, who="other", message="another process")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(RefStore, "_swap", racing)

    return arm, seen


def test_revert_ref_race_changes_nothing(two, race):
    repo, ids = two
    c2 = commit_files(repo, {"b.safetensors": 5}, "c2")  # c1 changed a; c2 changes b again
    arm, seen = race
    before = snapshot(repo)
    arm(repo, HEADS + "main", ids[0])
    with pytest.raises(RefConflictError):
        repo.revert(c2)
    after = snapshot(repo)
    assert after["work"] == before["work"] == seen["work"]
    assert seen["tmp"], "the new files should be staged before the ref moves"
    assert after["refs"] == {**before["refs"], "refs/heads/main": ids[0] + "\n"}
    assert after["HEAD"] == before["HEAD"]
    assert leftovers(repo) == []


def test_merge_ref_race_changes_nothing(two, race):
    repo, ids = two
    repo.switch("feature", create=True, start=ids[1])
    c_feat = commit_files(repo, {"b.safetensors": 7}, "feature: b")
    repo.switch("main")
    c_main = commit_files(repo, {"a.safetensors": 8}, "main: a")
    arm, seen = race
    before = snapshot(repo)
    arm(repo, HEADS + "main", ids[0])
    with pytest.raises(RefConflictError):
        repo.merge("feature")
    after = snapshot(repo)
    assert after["work"] == before["work"] == seen["work"] and seen["tmp"]
    assert after["refs"] == {**before["refs"], "refs/heads/main": ids[0] + "\n"}
    assert leftovers(repo) == []
    assert c_feat != c_main


def test_merge_fast_forward_ref_race_changes_nothing(two, race):
    repo, ids = two
    repo.switch("behind", create=True, start=ids[0])
    arm, seen = race
    before = snapshot(repo)
    arm(repo, HEADS + "behind", ids[1])  # the other process moves it away from c0 first
    with pytest.raises(RefConflictError):
        repo.merge("main")
    after = snapshot(repo)
    assert after["work"] == before["work"] == seen["work"] and seen["tmp"]
    assert after["refs"]["refs/heads/behind"] == ids[1] + "\n"
    assert leftovers(repo) == []


def test_reset_hard_ref_race_changes_nothing(two, race):
    repo, ids = two
    arm, seen = race
    c2 = commit_files(repo, {"a.safetensors": 9}, "c2")
    before = snapshot(repo)
    arm(repo, HEADS + "main", ids[1])
    with pytest.raises(RefConflictError):
        repo.reset(ids[0], hard=True)
    after = snapshot(repo)
    assert after["work"] == before["work"] == seen["work"] and seen["tmp"]
    assert after["refs"] == {**before["refs"], "refs/heads/main": ids[1] + "\n"}
    assert repo.head() == ids[1] != c2
    assert leftovers(repo) == []


def test_checkout_head_race_changes_nothing(two, race):
    repo, ids = two
    arm, seen = race
    c2 = commit_files(repo, {"a.safetensors": 9}, "c2")
    before = snapshot(repo)
    arm(repo, HEADS + "main", ids[1])  # HEAD follows main: it moves from c2 to c1 under the checkout
    with pytest.raises(RefConflictError):
        repo.checkout(ids[0])
    after = snapshot(repo)
    assert after["work"] == before["work"] == seen["work"] and seen["tmp"]
    assert after["HEAD"] == before["HEAD"] and repo.head_branch() == "main"
    assert repo.head() == ids[1] != c2
    assert leftovers(repo) == []


def test_switch_create_ref_race_leaves_no_branch(two, race):
    repo, ids = two
    arm, seen = race
    c2 = commit_files(repo, {"a.safetensors": 9}, "c2")
    before = snapshot(repo)
    arm(repo, HEADS + "main", ids[1])
    with pytest.raises(RefConflictError):
        repo.switch("old", create=True, start=ids[0])
    after = snapshot(repo)
    assert after["work"] == before["work"] and seen["tmp"]
    assert "old" not in repo.branches() and repo.head_branch() == "main" and repo.head() == ids[1] != c2
    assert leftovers(repo) == []


# -- --output inside .mlvc/ ---------------------------------------------------------------------------------


def test_checkout_output_inside_mlvc_is_refused(two):
    repo, ids = two
    target = os.path.join(repo.dir, "x")
    with pytest.raises(PathError, match="outside"):
        repo.checkout("HEAD", output=target)
    assert not os.path.exists(target)
    for inside in (repo.dir, os.path.join(repo.dir, "objects"), os.path.join(repo.dir, "tmp")):
        with pytest.raises(PathError):
            repo.checkout("HEAD", output=inside)


def test_checkout_output_inside_mlvc_cli(two):
    repo, ids = two
    before = snapshot(repo)
    r = CliRunner().invoke(cli, ["checkout", "HEAD", "--output", ".mlvc/x"])
    assert r.exit_code == 10, r.output
    assert ".mlvc" in r.output
    assert not os.path.exists(os.path.join(repo.dir, "x"))
    assert snapshot(repo) == before


def test_checkout_output_through_symlink_into_mlvc_is_refused(two, tmp_path):
    repo, ids = two
    link = tmp_path / "sneaky"
    os.symlink(os.path.join(repo.dir, "refs"), link)
    with pytest.raises(PathError):
        repo.checkout("HEAD", output=str(link / "x"))
    assert not os.path.exists(os.path.join(repo.dir, "refs", "x"))


def test_checkout_output_elsewhere_still_works(two, tmp_path):
    repo, ids = two
    r = repo.checkout(ids[0], output=str(tmp_path / "out"))
    assert sorted(r.written) == list(FILES)
    assert leftovers(repo) == []


# -- one helper reads a tensor's chunks and checks its hash ---------------------------------------------------


def test_tensor_chunks_checks_the_hash(two):
    repo, ids = two
    m = repo.read_manifest(repo.read_commit(ids[1]).manifest)
    t = values(m)[("a.safetensors", "w")]
    with repo.pipeline() as pipe:
        data = b"".join(bytes(c) for c in tensor_chunks(pipe, t))
        assert data == weights(3)["w"].tobytes() == bytes(read_tensor_bytes(pipe, t))
        bad = type(t)(t.name, t.dtype, t.shape, t.nbytes, "0" * 32, t.chunks)
        with pytest.raises(CorruptObjectError):
            for _ in tensor_chunks(pipe, bad):
                pass


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
@pytest.mark.parametrize("variant", ["cut short", "header only", "empty", "another file", "garbage length"])
def test_a_working_checkpoint_that_does_not_read_blocks_nothing_it_should_not(tmp_path, kind, variant):
    """A tracked checkpoint left unreadable (a save cut short by a crash, another file in its place): status lists
    it as modified and says why; diff says why and how to get HEAD's version back; a checkout, switch or reset
    refuses to overwrite it without --force (uncommitted work, exit 6), and with --force (or restore) writes the
    commit's version over it; a commit refuses it (exit 8). It used to stop every one of these with a format
    error, --force included."""
    torch = pytest.importorskip("torch") if kind == "pt" else None
    repo = make_repo(tmp_path / "repo")
    name = f"model.{kind}"
    path = os.path.join(repo.root, name)
    if torch is not None:
        torch.save({"w": torch.arange(4000, dtype=torch.float32), "b": torch.ones(3)}, path)
    else:
        write_st(path, weights(0))
    first = repo.commit(path, message="one").commit.id
    with open(path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(_unreadable_variants_of(good)[variant])
    runner = CliRunner()
    st = repo.status()
    (f,) = st.files
    assert (f.state, bool(f.unreadable)) == ("modified", True), f
    r = runner.invoke(cli, ["-C", repo.root, "status"])
    assert r.exit_code == 0 and "does not read as a checkpoint" in r.output and "mlvc restore" in r.output
    r = runner.invoke(cli, ["-C", repo.root, "diff"])
    assert r.exit_code == 8 and f"mlvc restore {name}" in r.output, r.output
    r = runner.invoke(cli, ["-C", repo.root, "commit", name, "-m", "broken"])
    assert r.exit_code in (8, 9) and repo.head() == first, r.output  # 9: a pickle that is not tensors
    with open(path, "rb") as fh:
        broken = fh.read()
    for args in (["reset", "--hard", "HEAD"], ["checkout", "HEAD"]):
        r = runner.invoke(cli, ["-C", repo.root, *args])
        assert r.exit_code == 6 and name in r.output, (args, r.output)
        assert open(path, "rb").read() == broken  # nothing overwritten without --force
    r = runner.invoke(cli, ["-C", repo.root, "reset", "--hard", "HEAD", "--force"])
    assert r.exit_code == 0, r.output
    assert open(path, "rb").read() == good and repo.status().clean


def _unreadable_variants_of(whole: bytes) -> dict[str, bytes]:
    return {"cut short": whole[: len(whole) // 3], "header only": whole[:120], "empty": b"",
            "another file": b"untracked precious notes\n" * 3, "garbage length": b"\xff" * 64}


def test_an_unreadable_file_where_the_target_commit_adds_one_is_uncommitted_work(tmp_path):
    """A file that is not a checkpoint at a path the target commit adds: switch refuses (exit 6, it would be
    overwritten) instead of failing to parse it (exit 8, --force included); --force overwrites it."""
    repo = make_repo(tmp_path / "repo")
    a = os.path.join(repo.root, "a.safetensors")
    write_st(a, weights(0))
    repo.commit(a, message="base")
    repo.create_branch("side")
    b = os.path.join(repo.root, "b.safetensors")
    write_st(b, weights(1))
    repo.commit(b, message="add b")
    runner = CliRunner()
    assert runner.invoke(cli, ["-C", repo.root, "switch", "side"]).exit_code == 0
    with open(b, "wb") as f:
        f.write(b"untracked precious\n")
    r = runner.invoke(cli, ["-C", repo.root, "switch", "main"])
    assert r.exit_code == 6 and "b.safetensors" in r.output, r.output
    assert open(b, "rb").read() == b"untracked precious\n"
    r = runner.invoke(cli, ["-C", repo.root, "switch", "main", "--force"])
    assert r.exit_code == 0 and repo.head_branch() == "main" and repo.status().clean, r.output
