"""File-level diff and the one tensor key: added, removed, renamed (by content hash) and modified files with
their sizes (Python, text, --json, --name-status), tensors moved between files (re-sharding), and the same
keys in diff, revert and merge (property tests over random pairs of trees)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_repo, write_safetensors_np
from mlvc.cli import cli
from mlvc.errors import NothingToCommitError
from mlvc.ops.treebuild import describe, keyed, pair_keys, whole_paths


def write_tree(folder: str, tree: dict[str, object]) -> None:
    """Make `folder` hold exactly `tree`: path -> bytes (a blob) or {tensor name: array} (a safetensors file)."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    for rel, content in tree.items():
        full = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if isinstance(content, bytes):
            with open(full, "wb") as f:
                f.write(content)
        else:
            assert isinstance(content, dict)
            write_safetensors_np(full, content)


def commit_tree(repo, tree: dict[str, object], message: str) -> str:
    folder = os.path.join(repo.root, "m")
    write_tree(folder, tree)
    return repo.commit(folder, message=message, allow_empty=True).commit.id


def run(*args, code=0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def arr(seed: int, n: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.fixture
def two_trees(small_repo, monkeypatch):
    """Commit A and B of a folder: every kind of file-level change between them."""
    monkeypatch.chdir(small_repo.root)
    a = {"config.json": b'{"hidden": 8}', "vocab.txt": b"a\nb\nc\n" * 50, "gone.txt": b"bye",
         "model.safetensors": {"x.w": arr(1), "x.b": arr(2)}, "extra.safetensors": {"y.w": arr(3)}}
    b = {"config.json": b'{"hidden": 16}', "words.txt": b"a\nb\nc\n" * 50, "tokenizer.json": b'{"v": 1}',
         "model.safetensors": {"x.w": arr(1), "x.b": arr(9)}}
    ida = commit_tree(small_repo, a, "A")
    idb = commit_tree(small_repo, b, "B")
    return small_repo, ida, idb


def test_file_changes_with_sizes(two_trees):
    repo, ida, idb = two_trees
    d = repo.diff(ida, idb)
    got = {f.path: (f.status, f.old_path, f.kind_a, f.kind_b) for f in d.changed_files}
    assert got == {"m/config.json": ("modified", None, "blob", "blob"),
                   "m/words.txt": ("renamed", "m/vocab.txt", "blob", "blob"),
                   "m/gone.txt": ("removed", None, "blob", None),
                   "m/tokenizer.json": ("added", None, None, "blob"),
                   "m/model.safetensors": ("modified", None, "safetensors", "safetensors"),
                   "m/extra.safetensors": ("removed", None, "safetensors", None)}
    files_a = {f.path: f.size for f in repo.read_manifest(repo.read_commit(ida).manifest).files}
    files_b = {f.path: f.size for f in repo.read_manifest(repo.read_commit(idb).manifest).files}
    for f in d.changed_files:
        assert f.size_a == (files_a[f.old_path or f.path] if f.kind_a else None)
        assert f.size_b == (files_b[f.path] if f.kind_b else None)
    assert files_b["m/tokenizer.json"] == os.path.getsize(os.path.join(repo.root, "m/tokenizer.json"))
    assert {f.letter for f in d.changed_files} == {"M", "R100", "D", "A"}
    # the tensors: x.b changed, y.w removed with its file
    assert {(t.name, t.status) for t in d.changed} == {("x.b", "changed"), ("y.w", "removed")}


def test_name_status_text_and_json(two_trees):
    repo, ida, idb = two_trees
    out = run("diff", ida, idb, "--name-status")
    assert out.splitlines() == ["M\tm/config.json", "D\tm/extra.safetensors", "D\tm/gone.txt",
                                "M\tm/model.safetensors", "A\tm/tokenizer.json", "R100\tm/vocab.txt\tm/words.txt"]
    text = run("diff", ida, idb)
    assert "m/vocab.txt -> m/words.txt" in text and "renamed" in text and "added" in text
    assert "6 of 6 file(s) changed (1 added, 2 modified, 2 removed, 1 renamed)" in text
    data = json.loads(run("diff", ida, idb, "--json"))
    by_path = {f["path"]: f for f in data["files"]}
    assert by_path["m/words.txt"]["letter"] == "R100" and by_path["m/words.txt"]["old_path"] == "m/vocab.txt"
    assert by_path["m/tokenizer.json"]["size_b"] == len(b'{"v": 1}') and by_path["m/tokenizer.json"]["size_a"] is None
    assert by_path["m/gone.txt"]["size_a"] == 3 and by_path["m/gone.txt"]["status"] == "removed"
    assert len(data["files"]) == 6  # every file of either side, a renamed pair once
    # show and log carry the same file changes
    shown = json.loads(run("show", idb, "--json"))
    assert shown["diff"]["files"] == data["files"]
    assert run("show", idb, "--name-status").splitlines()[-6:] == out.splitlines()
    logged = json.loads(run("log", "-n", "1", "--json", "--name-status"))
    assert [f["path"] for f in logged[0]["files"]] == [f["path"] for f in data["files"] if f["status"] != "unchanged"]
    assert "6 file(s) changed" in run("log", "--oneline", "--stat", "-n", "1")
    assert "m/vocab.txt -> m/words.txt" in run("show", idb)


def test_globs_limit_files_to_those_holding_a_selected_tensor(two_trees):
    repo, ida, idb = two_trees
    d = repo.diff(ida, idb, tensors=["y.*"])
    assert [f.path for f in d.files] == ["m/extra.safetensors"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([b"one", b"two", b"three", b"x" * 100]), min_size=1, max_size=4),
       st.data())
def test_rename_is_found_by_content_hash(contents, data):
    """Files renamed with the same content are R100 (several identical ones paired in path order); a file
    renamed and edited is a removal and an addition."""
    names = [f"f{i}.dat" for i in range(len(contents))]
    a = {n: c for n, c in zip(names, contents, strict=True)}
    renamed = data.draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
    edited = data.draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
    b = {}
    for n, c, r, e in zip(names, contents, renamed, edited, strict=True):
        b[("new-" + n) if r else n] = c + (b"!" if e else b"")
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(os.path.join(tmp, "r"))
        d = repo.diff(commit_tree(repo, a, "A"), commit_tree(repo, b, "B"))
    status = {f.path: f for f in d.files}
    for n, c, r, e in zip(names, contents, renamed, edited, strict=True):
        new = "m/" + (("new-" + n) if r else n)
        f = status[new]
        if not r:
            assert f.status == ("modified" if e else "unchanged")
        elif e:
            assert f.status == "added" and status["m/" + n].status == "removed"
        else:  # renamed with its content: paired with a removed file of the same content
            assert f.status == "renamed" and a[f.old_path[2:]] == c and f.letter == "R100"
    assert sum(f.status == "renamed" for f in d.files) == sum(r and not e for r, e in zip(renamed, edited,
                                                                                         strict=True))


def test_resharded_tensors_are_the_same_tensors(small_repo, monkeypatch):
    """Two shards re-cut into three: every tensor is found again (moved), a changed one is compared by value."""
    t = {f"layer.{i}.w": arr(i) for i in range(6)}
    a = {"model-00001-of-00002.safetensors": {k: t[k] for k in list(t)[:3]},
         "model-00002-of-00002.safetensors": {k: t[k] for k in list(t)[3:]}}
    t2 = {**t, "layer.4.w": t["layer.4.w"] * 2}
    b = {f"model-0000{j + 1}-of-00003.safetensors": {k: t2[k] for k in list(t2)[2 * j: 2 * j + 2]} for j in range(3)}
    ida, idb = commit_tree(small_repo, a, "A"), commit_tree(small_repo, b, "B")
    monkeypatch.chdir(small_repo.root)
    d = small_repo.diff(ida, idb)
    assert len(d.tensors) == 6
    by = {t.name: t for t in d.tensors}
    assert by["layer.0.w"].status == "moved" and by["layer.0.w"].old_path == "m/model-00001-of-00002.safetensors"
    assert by["layer.0.w"].path == "m/model-00001-of-00003.safetensors" and by["layer.0.w"].l2 == 0
    assert by["layer.4.w"].status == "changed" and by["layer.4.w"].rel_change == pytest.approx(1.0)
    assert by["layer.4.w"].old_path == "m/model-00002-of-00002.safetensors"
    out = run("diff", ida, idb, "--json")
    assert {t["status"] for t in json.loads(out)["tensors"]} == {"moved", "changed"}


# -- one key for diff, revert and merge -----------------------------------------------------------------------

VALUES = [arr(s) for s in range(3)] + [arr(7, 4), np.arange(8, dtype=np.int32)]
SHARDS = ["a.safetensors", "b.safetensors", "c.safetensors"]
BLOBS = {"config.json": [b'{"h": 1}', b'{"h": 2}'], "vocab.txt": [b"abc", b"abcd"], "notes.txt": [b"abc", b"n"]}


@st.composite
def trees(draw):
    """A random checkpoint folder: some of three shards, each with some of five tensor names (a name in one
    shard only, so that moves between shards happen), and some blobs (identical contents make renames)."""
    tree: dict[str, object] = {}
    placement = draw(st.lists(st.sampled_from([None, *SHARDS]), min_size=5, max_size=5))
    for i, shard in enumerate(placement):
        if shard is not None:
            v = draw(st.integers(0, len(VALUES) - 1))
            tree.setdefault(shard, {})[f"layer.{i}.w"] = VALUES[v]  # type: ignore[index]
    for name, options in BLOBS.items():
        choice = draw(st.integers(-1, len(options) - 1))
        if choice >= 0:
            tree[name] = options[choice]
    if not tree:
        tree["config.json"] = BLOBS["config.json"][0]
    return tree


def content(repo, cid) -> dict:
    """A tree's values by key as revert and merge see them: tensors' hash/dtype/shape, whole files' hash."""
    m = repo.read_manifest(repo.read_commit(repo.resolve(cid)).manifest)
    whole = whole_paths(m, m)
    return {k: (v.hash, getattr(v, "dtype", None), tuple(getattr(v, "shape", ()))) for k, v in keyed(m, whole).items()}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), trees())
def test_diff_reports_exactly_what_revert_restores(tree_a, tree_b):
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(os.path.join(tmp, "r"))
        ida = commit_tree(repo, tree_a, "A")
        idb = commit_tree(repo, tree_b, "B")
        d = repo.diff(ida, idb)
        keys = d.changed_keys()
        if not keys:
            with pytest.raises(NothingToCommitError):
                repo.revert(idb)
            return
        r = repo.revert(idb)
        assert set(r.restored) == {describe(k) for k in keys}
        assert content(repo, r.commit.id) == content(repo, ida)  # and it restored A, key by key
        # the same pairs as the matching function itself gives
        ma = repo.read_manifest(repo.read_commit(ida).manifest)
        mb = repo.read_manifest(repo.read_commit(idb).manifest)
        whole = whole_paths(ma, mb)
        pairs = pair_keys(keyed(ma, whole), keyed(mb, whole))
        assert all(pa is None or pb is None or pa[1] == pb[1] for pa, pb in pairs)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), trees())
def test_merge_takes_exactly_the_keys_diff_reports(tree_a, tree_b):
    """A branch that went from A to B merged into one that only added an unrelated file: what the merge takes
    from the branch is what diff A B reports, under the same keys."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(os.path.join(tmp, "r"))
        ida = commit_tree(repo, tree_a, "A")
        repo.create_branch("feat", ida)
        commit_tree(repo, {**tree_a, "zz-unrelated.txt": b"ours"}, "ours")
        repo.switch("feat")
        idb = commit_tree(repo, tree_b, "B")
        repo.switch("main")
        keys = repo.diff(ida, idb).changed_keys() - {("m/zz-unrelated.txt", None)}
        r = repo.merge("feat")
        assert set(r.from_theirs) == {describe(k) for k in keys} and not r.resolved
        want = {k: v for k, v in content(repo, idb).items()}
        want[("m/zz-unrelated.txt", None)] = content(repo, repo.resolve("main~1"))[("m/zz-unrelated.txt", None)]
        assert content(repo, r.head) == want


def test_revert_and_merge_follow_a_move(small_repo):
    """A tensor changed in one commit, then its file re-sharded unchanged: revert restores it where it is now;
    a merge of a change made on another branch lands where this branch moved the tensor."""
    repo = small_repo
    base = {"a.safetensors": {"layer.0.w": arr(0), "layer.1.w": arr(1)}}
    repo.create_branch("feat", commit_tree(repo, base, "base"))
    changed = commit_tree(repo, {"a.safetensors": {"layer.0.w": arr(5), "layer.1.w": arr(1)}}, "change layer 0")
    commit_tree(repo, {"a.safetensors": {"layer.1.w": arr(1)}, "b.safetensors": {"layer.0.w": arr(5)}}, "re-shard")
    r = repo.revert(changed)
    assert r.restored == ["layer.0.w (m/b.safetensors)"]
    assert content(repo, "HEAD")[("m/b.safetensors", "layer.0.w")] == content(repo, "feat")[("m/a.safetensors",
                                                                                               "layer.0.w")]
    repo.switch("feat")
    commit_tree(repo, {"a.safetensors": {"layer.0.w": arr(0), "layer.1.w": arr(6)}}, "change layer 1")
    repo.switch("main")
    m = repo.merge("feat")
    assert m.followed == [] and m.from_theirs == ["layer.1.w (m/a.safetensors)"]
    repo.switch("feat")
    commit_tree(repo, {"a.safetensors": {"layer.0.w": arr(8), "layer.1.w": arr(6)}}, "change layer 0 again")
    repo.switch("main")
    m = repo.merge("feat")  # main moved layer.0.w to b (and reverted it to arr(0)); feat changed it in a
    assert m.followed == ["layer.0.w (m/b.safetensors)"] and not m.resolved
    got = content(repo, "HEAD")
    assert ("m/a.safetensors", "layer.0.w") not in got
    assert got[("m/b.safetensors", "layer.0.w")][0] == content(repo, "feat")[("m/a.safetensors", "layer.0.w")][0]
