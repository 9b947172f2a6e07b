"""Messages and verbs people reach for (issue 9): init twice, checkout into an earlier --output checkout,
restores from HEAD, `switch` to the current branch, `reset --hard` onto an equal tree, short prefixes, typo
suggestions, fsck's advice, annotated tags, `mlvc config`, `mlvc restore`, and no empty folders left behind."""

from __future__ import annotations

import json
import os
import random
import string

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli_runner, flip_byte, make_repo, tree_hashes
from fuzz_util import check_all, fuzz_settings, mutate_bytes, mutate_json, random_json, seed_batches
from mlvc.cli import cli
from mlvc.errors import (
    EXIT_CODES,
    ConfigError,
    CorruptObjectError,
    DirtyWorkingCheckpointError,
    GcRefusedError,
    MlvcError,
    PathError,
    RefError,
    RevisionError,
)
from mlvc.objects import TAG_FORMAT, Tag
from mlvc.repo import Repo
from mlvc.util import canonical_json, hash_bytes
from weights_util import write_st

DIRTY = EXIT_CODES[DirtyWorkingCheckpointError]
REV = EXIT_CODES[RevisionError]


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Run `mlvc ARGS` in tmp_path/repo (stdout and stderr together); returns the click Result."""
    root = tmp_path / "repo"
    root.mkdir()
    return cli_runner(root, monkeypatch)


def weights(seed: int, layers: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.w": rng.standard_normal((8, 4)).astype(np.float32) for i in range(layers)}


@pytest.fixture
def hist(run, tmp_path):
    """A repository with two commits: `one` (model/w.safetensors, model/config.json) and `two` (w changed,
    model/extra/notes.txt added). Returns the root."""
    root = tmp_path / "repo"
    run("init")
    os.makedirs("model")
    write_st("model/w.safetensors", weights(0))
    (root / "model" / "config.json").write_text('{"a": 1}')
    run("commit", "model", "-m", "one")
    write_st("model/w.safetensors", weights(1))
    os.makedirs("model/extra")
    (root / "model" / "extra" / "notes.txt").write_text("notes")
    run("commit", "-m", "two")
    return root


def snapshot(folder) -> dict[str, str]:
    """Every file under `folder` (.mlvc included) and its hash, and every folder."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), folder) + "/"] = "dir"
        for name in files:
            full = os.path.join(base, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, folder)] = hash_bytes(f.read())
    return out


# -- init ---------------------------------------------------------------------------------------------------


def test_init_twice_reinitializes_and_keeps_everything(run, hist):
    run("branch", "exp")
    run("tag", "-m", "first release", "v1", "HEAD~1")
    run("config", "set", "core.threads", "3")
    before = snapshot(hist / ".mlvc")
    r = run("init")
    assert "Reinitialized existing mlvc repository" in r.output
    assert snapshot(hist / ".mlvc") == before
    r = run("init", "-b", "other")  # like git: the option is ignored on a re-init, and says so
    assert "ignored --initial-branch=other" in r.output
    assert (hist / ".mlvc" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert json.loads(run("init", "--json").stdout)["reinitialized"] is True
    # what a re-init repairs: the folders init makes, and a missing config.toml
    os.rmdir(hist / ".mlvc" / "tmp")
    os.unlink(hist / ".mlvc" / "config.toml")
    run("init")
    assert (hist / ".mlvc" / "tmp").is_dir() and Repo(str(hist)).config.threads == 0
    assert snapshot(hist / ".mlvc").keys() == before.keys()
    assert json.loads(run("log", "--json").stdout)[0]["message"] == "two"


def test_init_in_python_raises_unless_exist_ok(tmp_path):
    repo = Repo.init(str(tmp_path))
    with pytest.raises(MlvcError, match="already exists"):
        Repo.init(str(tmp_path))
    assert Repo.init(str(tmp_path), branch="ignored", exist_ok=True).head_branch() == repo.head_branch() == "main"
    r = CliRunner().invoke(cli, ["init", "--json", str(tmp_path / "new")])
    assert r.exit_code == 0 and json.loads(r.output) == {"root": str(tmp_path / "new"), "branch": "main",
                                                          "reinitialized": False}


def test_branch_and_tag_json_for_create_and_delete(run, hist):
    head = json.loads(run("log", "--json").stdout)[0]["id"]
    assert json.loads(run("branch", "exp", "--json").stdout) == {"name": "exp", "kind": "branch", "commit": head}
    assert json.loads(run("branch", "-d", "exp", "--json").stdout) == {"name": "exp", "kind": "branch",
                                                                        "deleted": True, "was": head}
    assert json.loads(run("tag", "t", "--json").stdout) == {"name": "t", "commit": head, "annotated": False}
    data = json.loads(run("tag", "a", "-m", "note", "--json").stdout)
    assert data["annotated"] and data["commit"] == head and data["message"] == "note" and data["object"] != head
    assert json.loads(run("tag", "-d", "t", "--json").stdout)["was"] == head


# -- checkout --output --------------------------------------------------------------------------------------


def test_output_folder_holding_an_earlier_checkout_is_updated(run, hist, tmp_path):
    out = tmp_path / "out"
    run("checkout", "HEAD", "-o", str(out))
    r = run("checkout", "HEAD~1", "-o", str(out))
    assert "Updated the checkout of" in r.output and "commit them first" not in r.output
    assert sorted(tree_hashes(out)) == ["model/config.json", "model/w.safetensors"]
    assert not (out / "model" / "extra").exists()  # the file HEAD~1 lacks, and its emptied folder, are gone
    data = json.loads(run("checkout", "HEAD", "-o", str(out), "--json").stdout)
    assert data["previous"] and data["removed"] == [] and data["written"] == ["model/extra/notes.txt",
                                                                               "model/w.safetensors"]
    assert (out / "model" / "extra" / "notes.txt").read_text() == "notes"


def test_output_folder_with_other_files_is_refused_and_kept(run, hist, tmp_path):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("mine")
    (out / "unrelated.txt").write_text("keep me")
    r = run("checkout", "HEAD", "-o", str(out), code=DIRTY)
    assert "not an earlier mlvc checkout" in r.output and "--force" in r.output
    assert "commit them first" not in r.output
    assert (out / "model" / "config.json").read_text() == "mine" and not (out / "model" / "w.safetensors").exists()
    run("checkout", "HEAD", "-o", str(out), "--force")
    assert (out / "model" / "config.json").read_text() == '{"a": 1}'
    assert (out / "unrelated.txt").read_text() == "keep me"  # never in the way: left alone
    # the folder now holds HEAD's checkout (and one file of its own): updated, that file still left alone
    r = run("checkout", "HEAD~1", "-o", str(out))
    assert "Updated the checkout of" in r.output
    assert (out / "unrelated.txt").read_text() == "keep me" and not (out / "model" / "extra").exists()


def test_an_edited_earlier_checkout_is_refused(run, hist, tmp_path):
    out = tmp_path / "out"
    run("checkout", "HEAD~1", "-o", str(out))
    (out / "model" / "config.json").write_text("edited by hand")
    r = run("checkout", "HEAD", "-o", str(out), code=DIRTY)
    assert "config.json" in r.output and "--force" in r.output
    assert (out / "model" / "config.json").read_text() == "edited by hand"


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.dictionaries(st.sampled_from(["a.txt", "d/b.txt", "d/e/c.txt", "f/g.txt"]),
                                st.sampled_from(["x", "y", "zz"]), min_size=1), min_size=2, max_size=4),
       st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_checkouts_into_one_folder_always_leave_exactly_that_commit(tmp_path_factory, trees, order):
    """Any sequence of commits checked out into one --output folder leaves exactly the last one's files:
    no file of an earlier one, no empty folder, nothing refused."""
    base = tmp_path_factory.mktemp("seq")
    repo = make_repo(base / "repo")
    ids = []
    for tree in trees:
        data = base / "repo" / "data"
        if data.exists():
            for p in sorted(data.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        for rel, text in tree.items():
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            (data / rel).write_text(text)
        ids.append(repo.commit(str(data), message="c", allow_empty=True).commit.id)
    out = base / "out"
    for i in order:
        cid = ids[i % len(ids)]
        repo.checkout(cid, output=str(out))
        want = {f"data/{k}" for k in trees[i % len(trees)]}
        assert set(tree_hashes(out)) == want
        folders = {os.path.relpath(d, out) for d, _, _ in os.walk(out)} - {"."}
        assert all(any(w.startswith(f + "/") for w in want) for f in folders), folders


def test_checkout_in_place_leaves_no_empty_folders(run, hist):
    run("checkout", "HEAD~1")
    assert not (hist / "model" / "extra").exists()
    run("checkout", "main")
    assert (hist / "model" / "extra" / "notes.txt").exists()


# -- restore messages ---------------------------------------------------------------------------------------


def test_restoring_tensors_says_how_they_stand_against_head(run, hist):
    r = run("checkout", "HEAD~1", "--", "layer.0.*")
    assert "status" in r.output and "changed" in r.output
    r = run("checkout", "HEAD", "--", "layer.0.*")  # back to HEAD's values: nothing shows as changed
    assert "now matches HEAD" in r.output and "shows them as changed" not in r.output
    assert "matches HEAD" in run("status").output
    data = json.loads(run("restore", "-s", "HEAD~1", "--json", "--", "layer.*").stdout)
    assert sorted(data["differs_from_head"]) == ["layer.0.w", "layer.1.w"]
    data = json.loads(run("restore", "--json", "--", "layer.*").stdout)
    assert data["differs_from_head"] == [] and data["head"] == data["commit"]


# -- switch, checkout of the current branch, reset --hard -----------------------------------------------------


def test_switch_to_the_current_branch_is_a_no_op(run, hist):
    before = snapshot(hist)
    r = run("switch", "main")
    assert "Already on 'main'" in r.output
    assert run("checkout", "main").output.strip() == "Already on 'main'"
    assert json.loads(run("switch", "main", "--json").stdout)["already"] is True
    assert snapshot(hist) == before
    # with uncommitted changes, as git: they stay, and nothing is refused
    (hist / "model" / "config.json").write_text("dirty")
    run("switch", "main")
    assert (hist / "model" / "config.json").read_text() == "dirty"
    run("checkout", "main", "--force")  # as `git checkout -f main`: the changes are discarded
    assert (hist / "model" / "config.json").read_text() == '{"a": 1}'


def test_reset_hard_onto_a_tree_that_already_equals_the_target(run, hist):
    run("reset", "HEAD~1")  # the branch moves back; the working files stay those of `two`
    r = run("reset", "--hard", "HEAD@{1}")
    assert "uncommitted" not in r.output
    assert "matches HEAD" in run("status").output
    # a file that differs from both HEAD and the target is still refused
    run("reset", "HEAD~1")
    (hist / "model" / "config.json").write_text("mine")
    r = run("reset", "--hard", "HEAD@{1}", code=DIRTY)
    assert "config.json" in r.output and "w.safetensors" not in r.output
    assert (hist / "model" / "config.json").read_text() == "mine"


def test_checkout_in_place_onto_an_equal_tree_is_not_refused(run, hist):
    run("reset", "HEAD~1")
    run("branch", "ahead", "main@{1}")
    run("checkout", "ahead")  # the working files already are `ahead`'s
    assert "On branch ahead" in run("status").output


# -- revisions: short prefixes, suggestions -------------------------------------------------------------------


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_a_prefix_shorter_than_four_digits_says_the_minimum(run, hist, digits):
    head = json.loads(run("log", "--json").stdout)[0]["id"]
    r = run("show", head[:digits], code=REV)
    assert "at least 4" in r.output and "unknown" not in r.output
    assert json.loads(run("show", head[:4], "--json", "--no-diff").stdout)["commit"]["id"] == head


def test_a_branch_named_like_a_short_prefix_still_resolves(run, hist):
    run("branch", "abc", "HEAD~1")
    assert run("show", "abc", "--no-diff").output.startswith("commit ")


@pytest.mark.parametrize("args, typo, want", [
    (("show",), "mian", "main"), (("log",), "mian~1", "main~1"), (("checkout",), "expp", "exp"),
    (("switch",), "exq", "exp"), (("branch", "-d"), "exq", "exp"), (("tag", "-d"), "relase", "release"),
    (("reflog",), "mian", "main"), (("show",), "relaese@{0}", "release"), (("diff", "HEAD"), "mian", "main"),
])
def test_revision_typos_get_the_nearest_names(run, hist, args, typo, want):
    run("branch", "exp")
    run("tag", "release")
    r = run(*args, typo, code=r_code(args))
    assert f"did you mean '{want}'" in r.output, r.output


def r_code(args) -> int:
    return EXIT_CODES[RefError] if args[0] in ("switch", "branch", "tag") else REV


NAME = st.text(string.ascii_lowercase + string.digits + "-_", min_size=4, max_size=14).filter(
    lambda s: not s.startswith("-"))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(NAME, st.integers(0, 100), st.sampled_from(["swap", "drop", "double", "replace"]))
def test_one_edit_away_from_a_branch_name_suggests_it(tmp_path_factory, name, pos, edit):
    from mlvc.revparse import suggest

    repo = _suggest_repo(tmp_path_factory)
    repo.refs.add_if_new("refs/heads/" + name, repo.head())
    try:
        i = pos % len(name)
        typo = {"swap": name[:i] + name[i + 1:i + 2] + name[i:i + 1] + name[i + 2:],
                "drop": name[:i] + name[i + 1:], "double": name[:i] + name[i] + name[i:],
                "replace": name[:i] + ("x" if name[i] != "x" else "y") + name[i + 1:]}[edit]
        if typo == name:
            return
        assert name in suggest(repo, typo)
        with pytest.raises(RevisionError, match="did you mean"):
            repo.resolve(typo)
    finally:
        repo.refs.remove_if_equals("refs/heads/" + name, repo.head())


_SUGGEST_REPO: list[Repo] = []


def _suggest_repo(factory) -> Repo:
    if not _SUGGEST_REPO:
        repo = make_repo(factory.mktemp("suggest"))
        repo.commit({"w": np.zeros(2, np.float32)}, message="m")
        _SUGGEST_REPO.append(repo)
    return _SUGGEST_REPO[0]


# -- fsck's advice ------------------------------------------------------------------------------------------


def test_fsck_advice_is_true_for_a_repository_without_remotes(run, hist):
    victim = max((p for p in (hist / ".mlvc" / "objects").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    flip_byte(victim, victim.stat().st_size - 3)
    r = run("fsck", code=5)
    assert "remote" not in r.output and "backup" in r.output


# -- annotated tags -------------------------------------------------------------------------------------------


def test_annotated_tag_create_list_resolve_peel_and_show(run, hist):
    repo = Repo(str(hist))
    first = repo.resolve("HEAD~1")
    r = run("tag", "-m", "first release\n\nwith notes", "v1", "HEAD~1")
    assert "Created annotated tag v1" in r.output
    run("tag", "light")
    tags = {t["name"]: t for t in json.loads(run("tag", "--json").stdout)}
    assert tags["v1"]["annotated"] and tags["v1"]["commit"] == first and tags["v1"]["tagger"] == "tester"
    assert tags["v1"]["message"] == "first release\n\nwith notes" and not tags["light"]["annotated"]
    assert "v1  " + first[:12] + "  first release" in run("tag").output
    oid = tags["v1"]["object"]
    assert (hist / ".mlvc" / "refs" / "tags" / "v1").read_text() == oid + "\n"
    for rev in ("v1", "refs/tags/v1", oid, oid[:8], "v1@{0}", "v1~0", "v1^0"):
        assert repo.resolve(rev) == first, rev
    assert repo.peel(oid) == first and repo.peel(first) == first
    tag = repo.tag_of("v1")
    assert tag is not None and tag.id == oid and tag.message.startswith("first release")
    assert repo.tag_of(oid) == tag and repo.tag_of("light") is None and repo.tag_of("main") is None
    assert repo.read_tag(oid).to_json()["object"] == first
    with pytest.raises(CorruptObjectError):
        repo.read_tag(first)
    # commands that take a revision take the tag
    assert json.loads(run("log", "v1", "--json").stdout)[0]["id"] == first
    # labels, `log --all` and `show` see the annotated tag as the commit it names
    assert repo.tags()["v1"] == first
    all_ids = [c["id"] for c in json.loads(run("log", "--all", "--json").stdout)]
    assert first in all_ids and oid not in all_ids
    assert "tag: v1" in run("log", "--all", "--oneline").output
    shown = run("show", "v1", "--no-diff").output
    assert shown.startswith("tag v1\nTagger:  tester\n") and "    with notes" in shown
    assert f"commit {first}" in shown and shown.index("with notes") < shown.index(f"commit {first}")
    assert json.loads(run("show", "v1", "--no-diff", "--json").stdout)["tag"]["id"] == oid
    assert "tag" not in json.loads(run("show", "light", "--no-diff", "--json").stdout)
    out = hist.parent / "v1-out"
    run("checkout", "v1", "-o", str(out))
    assert sorted(tree_hashes(out)) == ["model/config.json", "model/w.safetensors"]
    # moving and deleting it
    r = run("tag", "-m", "again", "v1", "HEAD", code=EXIT_CODES[RefError])
    assert "--force" in r.output
    run("tag", "-f", "-m", "moved", "v1", "HEAD")
    assert repo.resolve("v1") == repo.head()
    data = json.loads(run("tag", "-d", "v1", "--json").stdout)
    assert data["deleted"] and data["was"] != oid
    r = run("tag", "-m", "", "empty", code=1)
    assert "must not be empty" in r.output


def test_an_annotated_tags_object_is_durable_before_its_ref_names_it(hist, monkeypatch):
    """The tag object and its folder are fsynced (store.flush) before refs/tags/NAME is written, as a commit's
    objects are before its branch moves: a power cut in between must not leave a ref to a lost object."""
    from mlvc.refs import RefStore
    from mlvc.store import LooseObjectStore

    events = []
    real_flush, real_set = LooseObjectStore.flush, RefStore.set_if_equals
    monkeypatch.setattr(LooseObjectStore, "flush", lambda self: events.append("flush") or real_flush(self))
    monkeypatch.setattr(RefStore, "set_if_equals",
                        lambda self, ref, *a, **k: events.append(ref) or real_set(self, ref, *a, **k))
    repo = Repo(str(hist))
    repo.create_tag("v9", "HEAD", message="a release")
    assert "refs/tags/v9" in events and "flush" in events[: events.index("refs/tags/v9")]


def test_annotated_tag_survives_gc_and_fsck_verifies_it(run, hist):
    repo = Repo(str(hist))
    run("switch", "-c", "side")
    write_st("model/w.safetensors", weights(7))
    run("commit", "-m", "only the tag keeps this")
    side = repo.head()
    run("tag", "-m", "keep", "kept", "side")
    run("switch", "main")
    run("branch", "-d", "side")
    # only the tag names `side` now: drop HEAD's reflog (and the tag's own) as if they had expired
    os.unlink(hist / ".mlvc" / "logs" / "HEAD")
    os.unlink(hist / ".mlvc" / "logs" / "refs" / "tags" / "kept")
    run("gc", "--prune=now")
    assert repo.resolve("kept") == side
    assert Repo(str(hist)).load("kept")["layer.0.w"].tolist() == weights(7)["layer.0.w"].tolist()
    report = json.loads(run("fsck", "--json").stdout)
    assert report["ok"] and report["commits_reached"] == 3
    # a tag object flipped on disk: fsck names it; gc refuses rather than guess
    oid = (hist / ".mlvc" / "refs" / "tags" / "kept").read_text().strip()
    where = Repo(str(hist)).store.locate(oid)
    assert where is not None and where.endswith(oid[2:])  # a loose object, damaged below
    flip_byte(where, os.path.getsize(where) - 2)
    report = json.loads(run("fsck", "--json", code=5).stdout)
    assert any(p["object_id"] == oid for p in report["problems"])
    r = run("gc", "--prune=now", code=EXIT_CODES[GcRefusedError])
    assert oid in r.output


@pytest.mark.parametrize("doc", [
    {"object": "nothex"}, {"object_type": "manifest"}, {"tag": 5}, {"message": None}, {"format": TAG_FORMAT + 1},
])
def test_a_malformed_tag_object_is_found_by_fsck_and_refused_by_gc(run, hist, doc):
    repo = Repo(str(hist))
    good = Tag(repo.head(), "bad", "x", "2026-01-01T00:00:00.000000Z", "m")
    body = {**json.loads(good.to_bytes()), **doc}
    oid = repo.store.put(canonical_json(body)).id
    (hist / ".mlvc" / "refs" / "tags" / "bad").write_text(oid + "\n")
    report = repo.fsck()
    assert [p.problem for p in report.problems if p.object_id == oid] == ["corrupt"]
    assert "tag" in next(p.detail for p in report.problems if p.object_id == oid)
    with pytest.raises(GcRefusedError):
        repo.gc(prune="now")
    with pytest.raises(CorruptObjectError):
        repo.resolve("bad")
    assert [t.error is not None for t in repo.list_tags() if t.name == "bad"] == [True]
    assert "damaged" in run("tag").output


def test_the_tag_section_of_the_format_is_what_is_written():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "format.md"), encoding="utf-8").read()
    section = text.split("\n## Tag\n", 1)[1].split("\n## ", 1)[0]
    example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    written = json.loads(Tag("a" * 32, "v1", "alice", "2026-11-27T17:31:13.061379Z", "m").to_bytes())
    assert set(example) == set(written)
    assert example["type"] == written["type"] == "tag" and example["format"] == written["format"] == TAG_FORMAT
    rows = [line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")]
    assert set(rows) == set(written)


# fuzzing the tag parser: only mlvc errors, and what parses writes back the same


def _tag_docs() -> list[dict]:
    return [json.loads(Tag(hash_bytes(bytes([i])), name, who, "2026-11-27T17:31:13.061379Z", msg).to_bytes())
            for i, (name, who, msg) in enumerate([("v1", "alice", "release"), ("a/b-ü", "bob", "x\n\ny" * 20)])]


def _check_tag(data: bytes) -> None:
    from mlvc.objects import parse_object

    oid = hash_bytes(data)
    try:
        tag = Tag.from_dict(parse_object(data, oid, "tag"), oid)
    except MlvcError:
        return
    assert Tag.from_dict(json.loads(tag.to_bytes()), oid) == tag


TAG_KEYS = ("type", "format", "object", "object_type", "tag", "tagger", "time", "message")


@fuzz_settings(2_000)
@given(seed_batches())
def test_fuzz_tag_structural_mutations(seeds):
    docs = _tag_docs()
    check_all(seeds, lambda rng: _dumps(mutate_json(rng, rng.choice(docs), keys=TAG_KEYS)), _check_tag)


@fuzz_settings(2_000)
@given(seed_batches())
def test_fuzz_tag_byte_mutations(seeds):
    raw = [canonical_json(d) for d in _tag_docs()]
    check_all(seeds, lambda rng: mutate_bytes(rng, rng.choice(raw)), _check_tag)


@fuzz_settings(1_000)
@given(seed_batches())
def test_fuzz_tag_random_documents(seeds):
    def make(rng: random.Random) -> bytes:
        doc = random_json(rng)
        if isinstance(doc, dict) and rng.random() < 0.7:
            doc["type"] = "tag"
        return _dumps(doc)

    check_all(seeds, make, _check_tag)


def _dumps(doc) -> bytes:
    try:
        return json.dumps(doc).encode()  # \\u escapes for lone surrogates
    except ValueError:  # an integer past the digit limit cannot even be written
        return b"{}"


# -- mlvc config ----------------------------------------------------------------------------------------------


def test_config_get_set_round_trip_keeps_comments(run, hist):
    path = hist / ".mlvc" / "config.toml"
    comments = [line for line in path.read_text().splitlines() if "#" in line]
    assert run("config", "get", "core.threads").output.strip() == "0"
    assert run("config", "set", "core.threads", "4").output.strip() == "core.threads = 4"
    assert run("config", "get", "core.threads").output.strip() == "4"
    assert Repo(str(hist)).config.threads == 4
    text = path.read_text()
    assert "threads = 4  # 0: two per core, up to 16" in text
    assert all(c.split("#", 1)[1] in text for c in comments)
    run("config", "set", "user.name", 'Ada "the" Lovelace ü')
    assert Repo(str(hist)).config.user_name == 'Ada "the" Lovelace ü'
    run("config", "set", "core.zstd_level", "-3")  # a negative value is a value, not an option
    assert Repo(str(hist)).config.zstd_level == -3
    run("config", "set", "gc.grace", "3.days.ago")
    assert json.loads(run("config", "get", "gc.grace", "--json").stdout) == {
        "key": "gc.grace", "value": "3.days.ago", "set": True, "default": "2.weeks.ago"}
    listed = {v["key"]: v for v in json.loads(run("config", "list", "--json").stdout)}
    assert listed["core.threads"]["value"] == 4 and listed["core.zstd_level"]["set"] is True
    assert "default" in run("config", "list").output


@pytest.mark.parametrize("key, value", [
    ("core.threads", "abc"), ("core.threads", "1000"), ("core.threads", "true"), ("core.threads", "2.0"),
    ("core.chunk_size", "100"), ("core.zstd_level", "-8"), ("user.name", ""), ("user.name", "a\nb"),
    ("gc.grace", "soon"), ("gc.temp_grace", "-1"),
])
def test_config_set_refuses_bad_values_and_leaves_the_file(run, hist, key, value):
    path = hist / ".mlvc" / "config.toml"
    before = path.read_bytes()
    r = run("config", "set", key, value, code=EXIT_CODES[ConfigError])
    assert key in r.output
    assert path.read_bytes() == before


def test_config_unknown_keys_are_refused_with_a_suggestion(run, hist):
    r = run("config", "set", "core.thread", "4", code=EXIT_CODES[ConfigError])
    assert "did you mean 'core.threads'" in r.output
    r = run("config", "get", "user.nmae", code=EXIT_CODES[ConfigError])
    assert "did you mean 'user.name'" in r.output
    run("config", "set", "tasks.acc", "x", code=EXIT_CODES[ConfigError])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_config_set_then_load_gives_the_value(tmp_path_factory, data):
    """Any in-range value of any setting, set from its text, is what Config.load then reads; other lines stay."""
    from mlvc.config import CORE_RANGES, SETTINGS

    repo = make_repo(tmp_path_factory.mktemp("cfg"))
    path = os.path.join(repo.dir, "config.toml")
    with open(path, "a", encoding="utf-8") as f:
        f.write('\n[tasks.acc]\ncommand = "python eval.py"  # keep me\n')
    for _ in range(3):
        key = data.draw(st.sampled_from(sorted(SETTINGS)))
        if key.startswith("core."):
            low, high, _, _ = CORE_RANGES[key[5:]]
            value = data.draw(st.integers(low, high))
            if key == "core.chunk_size":
                value = max(low, value - value % 8)
            text = str(value)
        elif key == "user.name":
            text = value = data.draw(st.text(min_size=1, max_size=20).filter(
                lambda s: s.strip() and "\n" not in s and "\r" not in s
                and all(not (0xD800 <= ord(c) <= 0xDFFF) for c in s)))
        else:
            value = data.draw(st.integers(0, 10 ** 6))
            text = str(value)
        repo.config_set(key, text)
        assert repo.config_get(key).value == value
        cfg = Repo(repo.root).config
        if key.startswith("core."):
            assert getattr(cfg, key[5:]) == value
        elif key == "user.name":
            assert cfg.user_name == value
    with open(path, encoding="utf-8") as f:
        assert 'command = "python eval.py"  # keep me' in f.read()


def test_config_set_adds_a_missing_table_and_refuses_layouts_it_cannot_edit(tmp_path):
    repo = make_repo(tmp_path / "r")
    path = os.path.join(repo.dir, "config.toml")
    repo.config_set("user.name", "ada")
    with open(path, encoding="utf-8") as f:
        assert '[user]\nname = "ada"\n' in f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write("core = { threads = 2 }\n")
    with pytest.raises(ConfigError, match="by hand"):
        repo.config_set("core.threads", "3")
    with open(path, encoding="utf-8") as f:
        assert f.read() == "core = { threads = 2 }\n"


# -- mlvc restore ---------------------------------------------------------------------------------------------


def test_restore_files_from_head_and_from_another_commit(run, hist):
    w = hist / "model" / "w.safetensors"
    head_w = w.read_bytes()
    (hist / "model" / "config.json").write_text("edited")
    os.unlink(w)
    (hist / "model" / "untracked.txt").write_text("mine")
    r = run("restore", "model")
    assert "now matches HEAD" in r.output
    assert w.read_bytes() == head_w and (hist / "model" / "config.json").read_text() == '{"a": 1}'
    assert (hist / "model" / "untracked.txt").read_text() == "mine"
    status = run("status").output
    assert "untracked.txt" in status and "config.json" not in status and "w.safetensors" not in status
    # from HEAD~1, which lacks model/extra/notes.txt: the folder ends as it was there
    data = json.loads(run("restore", "--source", "HEAD~1", "model", "--json").stdout)
    assert data["removed"] == ["model/extra/notes.txt"] and data["files"] == ["model/w.safetensors"]
    assert not (hist / "model" / "extra").exists()
    assert data["unchanged"] == ["model/config.json"]
    assert sorted(data["differs_from_head"]) == ["model/extra/notes.txt", "model/w.safetensors"]
    out = hist.parent / "old"
    run("checkout", "HEAD~1", "-o", str(out))
    assert w.read_bytes() == (out / "model" / "w.safetensors").read_bytes()
    run("restore", ".")
    assert w.read_bytes() == head_w and (hist / "model" / "extra" / "notes.txt").exists()


def test_restore_tensors_limited_to_paths(run, hist):
    from safetensors.numpy import load_file

    os.makedirs("other")
    write_st("other/o.safetensors", {"layer.0.w": np.ones((8, 4), np.float32)})
    run("commit", "other", "model", "-m", "three")  # both files now hold a tensor named layer.0.w
    write_st("other/o.safetensors", {"layer.0.w": np.zeros((8, 4), np.float32)})
    write_st("model/w.safetensors", weights(5))
    data = json.loads(run("restore", "other", "--json", "--", "*layer.0.w").stdout)
    assert data["files"] == ["other/o.safetensors"] and data["tensors"] == ["other/o.safetensors:layer.0.w"]
    assert (load_file("other/o.safetensors")["layer.0.w"] == 1).all()
    assert (load_file("model/w.safetensors")["layer.0.w"] == weights(5)["layer.0.w"]).all()  # outside: untouched
    data = json.loads(run("restore", "-s", "HEAD~2", "model", "--json", "--", "layer.0.w").stdout)
    assert data["tensors"] == ["layer.0.w"] and data["files"] == ["model/w.safetensors"]
    assert (load_file("model/w.safetensors")["layer.0.w"] == weights(0)["layer.0.w"]).all()
    assert (load_file("model/w.safetensors")["layer.1.w"] == weights(5)["layer.1.w"]).all()
    r = run("restore", "other", "--", "layer.1.*", code=1)
    assert "under other" in r.output


def test_restore_usage_and_path_errors(run, hist):
    r = run("restore", code=2)
    assert "mlvc restore ." in r.output
    r = run("restore", "nowhere", code=EXIT_CODES[PathError])
    assert "nowhere" in r.output
    run("restore", "--", code=2)
    r = run("restore", "-s", "mian", "model", code=REV)
    assert "did you mean 'main'" in r.output
    before = snapshot(hist)
    run("restore", "-s", "HEAD~1", "--", "nope.*", code=1)
    assert snapshot(hist) == before
