"""The tracked set (docs/tracking.md): commits carry every tracked path over, `mlvc commit PATH` adds or
updates paths, untracking is `mlvc rm`, a missing tracked file is refused, `.mlvcignore` keeps files out of
folder commits, commits from memory are "not checked out" rather than deleted, and `branch=` commits leave
HEAD, the work tree and status alone. A property test runs random sequences of all of these against a small
model of the rules."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import cli_runner, random_state_dict, tree_hashes, write_safetensors_np
from mlvc.errors import (
    EXIT_CODES,
    ConfigError,
    DirtyWorkingCheckpointError,
    MissingTrackedFilesError,
    MlvcError,
    NothingToCommitError,
    PathError,
    RefConflictError,
)
from mlvc.repo import Repo
from mlvc.util import hash_bytes


def files_of(repo: Repo, rev: str = "HEAD") -> dict[str, str]:
    m = repo.read_manifest(repo.read_commit(repo.resolve(rev)).manifest)
    return {f.path: f.hash for f in m.files}


def roots_of(repo: Repo, rev: str = "HEAD") -> list[str]:
    return repo.read_manifest(repo.read_commit(repo.resolve(rev)).manifest).roots


def write(repo: Repo, rel: str, data: bytes | str) -> None:
    full = repo.abs_path(rel)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def hf_folder(repo: Repo, seed: int = 0) -> None:
    """A Hugging Face-like model folder: weights, config and tokenizer files."""
    write_safetensors_np(_mk(repo, "model/model.safetensors"), random_state_dict(seed))
    write(repo, "model/config.json", '{"hidden_size": 16}')
    write(repo, "model/tokenizer.json", '{"vocab": {"a": 0}}')
    write(repo, "model/tokenizer_config.json", '{"do_lower_case": true}')


def _mk(repo: Repo, rel: str) -> str:
    os.makedirs(os.path.dirname(repo.abs_path(rel)), exist_ok=True)
    return repo.abs_path(rel)


def rm(repo: Repo, *paths: str, **kw):
    return repo.rm([repo.abs_path(p) for p in paths], **kw)


def states(repo: Repo) -> dict[str, str]:
    return {f.path: f.state for f in repo.status().files}


@pytest.fixture
def cli_run(tmp_path, monkeypatch):
    return cli_runner(tmp_path, monkeypatch)


# -- the README's Quickstart and "From Python", literally -------------------------------------------------


def test_quickstart_keeps_config_and_tokenizer(cli_run, tmp_path):
    cli_run("init")
    repo = Repo(str(tmp_path))
    hf_folder(repo)
    cli_run("commit", "model/", "-m", "base model")
    base = files_of(repo)
    assert set(base) == {"model/model.safetensors", "model/config.json", "model/tokenizer.json",
                         "model/tokenizer_config.json"}
    # python train.py --out model/ : the weights change
    write_safetensors_np(repo.abs_path("model/model.safetensors"), random_state_dict(1))
    assert "modified" in cli_run("status").output
    cli_run("commit", "-m", "fine-tune 1k steps", "--step", "1000")
    tuned = files_of(repo)
    assert set(tuned) == set(base) and tuned["model/config.json"] == base["model/config.json"]
    assert tuned["model/model.safetensors"] != base["model/model.safetensors"]
    # the training loop, from memory
    for step in (1, 2):
        repo.commit(random_state_dict(10 + step), message=f"step {step}", metadata={"step": step},
                    path="ckpt/model.safetensors")
    after = files_of(repo)
    assert set(after) == set(base) | {"ckpt/model.safetensors"}
    assert all(after[p] == tuned[p] for p in tuned)
    assert not os.path.exists(repo.abs_path("ckpt/model.safetensors"))  # nothing written to the work tree
    st = repo.status()
    assert st.clean and states(repo)["ckpt/model.safetensors"] == "not_checked_out"
    assert "deleted" not in cli_run("status").output
    assert "committed from memory, not checked out" in cli_run("status").output
    # and a later commit of every tracked path keeps them all, and refuses nothing
    cli_run("commit", "-m", "again", code=EXIT_CODES[NothingToCommitError])
    write(repo, "model/config.json", '{"hidden_size": 16, "note": 1}')
    cli_run("commit", "-m", "config tweak")
    final = files_of(repo)
    assert set(final) == set(after) and final["ckpt/model.safetensors"] == after["ckpt/model.safetensors"]
    diff = json.loads(cli_run("log", "--json", "-n", "1").stdout)
    assert diff[0]["message"] == "config tweak"
    # checking out HEAD in place writes the file that was committed from memory; the mark goes
    cli_run("reset", "--hard", "HEAD")
    assert os.path.isfile(repo.abs_path("ckpt/model.safetensors"))
    assert repo.status().clean and "not_checked_out" not in states(repo).values()
    assert not os.path.exists(os.path.join(repo.dir, "worktree.json"))


README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _readme_block(heading: str, lang: str) -> str:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading):]
    start = section.index(f"```{lang}\n") + len(lang) + 4
    return section[start:section.index("```", start)]


def test_the_readme_followed_literally_keeps_config_and_tokenizer(cli_run, tmp_path, monkeypatch, torch):
    """Every line of the README's Quickstart, then its "From Python" block, run as written (the training
    script and train_step are stand-ins that change the weights); every commit keeps the config and tokenizer."""
    import shlex

    repo_dir = tmp_path
    os.makedirs(repo_dir / "model")
    write_safetensors_np(repo_dir / "model" / "model.safetensors", random_state_dict(0))
    (repo_dir / "model" / "config.json").write_text('{"hidden_size": 16}')
    (repo_dir / "model" / "tokenizer.json").write_text('{"vocab": {}}')
    (repo_dir / "eval.json").write_text('{"acc": 0.5}')
    out_dirs = {"/tmp/old": str(tmp_path / "old"), "/tmp/step7000": str(tmp_path / "step7000")}
    lines = [line.split("  #")[0].strip() for line in _readme_block("## Quickstart", "bash").splitlines()]
    for line in filter(None, lines):
        for cmd in line.split(" && "):
            argv = shlex.split(cmd)
            if argv[:2] == ["python", "train.py"]:
                write_safetensors_np(repo_dir / "model" / "model.safetensors", random_state_dict(1))
            elif argv[0] == "echo":
                (repo_dir / argv[3]).write_text(argv[1] + "\n")
            else:
                assert argv[0] == "mlvc", line
                cli_run(*[out_dirs.get(a, a) for a in argv[1:]])
    repo = Repo(str(repo_dir))
    assert repo.head_branch() == "main"
    commits = repo.log("HEAD")
    assert [c.message for c in commits] == ["untrack eval.json", "eval results", "fine-tune 1k steps", "base model"]
    assert "eval.json" in files_of(repo, "HEAD~1") and "eval.json" not in files_of(repo)
    for c in commits:
        assert {"model/config.json", "model/tokenizer.json", "model/model.safetensors"} <= set(files_of(repo, c.id))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.ModuleDict({"layer": torch.nn.ModuleList([torch.nn.Linear(4, 4)])})

    model = Model()

    def train_step(m):
        with torch.no_grad():
            m.encoder.layer[0].bias.add_(1)

    os.makedirs(repo_dir / "hf_model")
    (repo_dir / "hf_model" / "config.json").write_text("{}")
    code = _readme_block('From Python', "python")
    for a, b in out_dirs.items():
        code = code.replace(a, b)
    namespace = {"model": model, "train_step": train_step}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    assert len(namespace["weights"]) == 2 and set(namespace["part"]) == {"encoder.layer.0.weight",
                                                                          "encoder.layer.0.bias"}
    assert os.path.isfile(tmp_path / "step7000" / "ckpt" / "model.safetensors")
    main = repo.log("main")
    assert [c.message for c in main[:11]] == ["a HF folder"] + [f"step {s}" for s in range(10_000, 0, -1_000)]
    for c in main:
        assert {"model/config.json", "model/tokenizer.json"} <= set(files_of(repo, c.id))
    assert set(files_of(repo, "run-42")) == set(files_of(repo)) | {"model.safetensors"}
    st = repo.status()
    assert st.clean and states(repo)["ckpt/model.safetensors"] == "not_checked_out"
    assert "deleted" not in states(repo).values()

    # and the Tracker's block: ten background commits onto run-42, HEAD, work tree and status untouched
    def train_step_with_loss(m):
        train_step(m)
        return float(m.encoder.layer[0].bias.sum())

    head_before, run_before = repo.head(), repo.resolve("run-42")
    code = _readme_block("A training loop can also leave it to `mlvc.Tracker`", "python")
    exec(compile(code, "README.md (Tracker)", "exec"), {"model": model, "train_step": train_step_with_loss})
    run = repo.log("run-42")
    assert len(run) >= 11 and run[10].id == run_before and [c.metadata["step"] for c in run[:10]] == \
        list(range(10_000, 0, -1_000))
    assert repo.head() == head_before and repo.status().clean


def test_commit_of_another_file_keeps_the_rest(cli_run, tmp_path):
    cli_run("init")
    repo = Repo(str(tmp_path))
    hf_folder(repo)
    cli_run("commit", "model/", "-m", "base")
    write(repo, "other.pt.dat", b"\x01" * 100)
    r = json.loads(cli_run("commit", "other.pt.dat", "-m", "other", "--json").stdout)
    assert r["carried"] == 4 and r["files"] == 5 and r["removed"] == []
    assert set(files_of(repo)) == {"model/model.safetensors", "model/config.json", "model/tokenizer.json",
                                   "model/tokenizer_config.json", "other.pt.dat"}
    assert roots_of(repo) == ["model", "other.pt.dat"]


def test_commit_other_pt_file_keeps_the_rest(repo, torch):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    torch.save({"w": torch.ones(3)}, repo.abs_path("other.pt"))
    r = repo.commit(repo.abs_path("other.pt"), message="other")
    assert set(files_of(repo)) == {"model/model.safetensors", "model/config.json", "model/tokenizer.json",
                                   "model/tokenizer_config.json", "other.pt"}
    assert r.carried == 4
    assert repo.status().clean


def test_carried_files_are_not_read_again(repo, monkeypatch):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    write(repo, "notes.txt", "x")
    import mlvc.ops.commit as commit_mod

    read = []
    real = commit_mod.snapshot_path
    monkeypatch.setattr(commit_mod, "snapshot_path", lambda pipe, full, rel, **kw: read.append(rel) or
                        real(pipe, full, rel, **kw))
    repo.commit(repo.abs_path("notes.txt"), message="notes")
    assert read == ["notes.txt"]


# -- named folders, missing files, rm ------------------------------------------------------------------------


def test_a_file_gone_from_a_named_folder_leaves_the_tree(repo):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    os.unlink(repo.abs_path("model/tokenizer.json"))
    r = repo.commit(repo.abs_path("model"), message="no tokenizer")
    assert r.removed == ["model/tokenizer.json"]
    assert "model/tokenizer.json" not in files_of(repo)


def test_a_missing_tracked_file_is_reported_and_refused(repo, cli_run):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    head = repo.head()
    os.unlink(repo.abs_path("model/config.json"))
    assert states(repo)["model/config.json"] == "deleted"
    with pytest.raises(MissingTrackedFilesError) as e:
        repo.commit(message="lost config")
    assert e.value.paths == ["model/config.json"] and "mlvc rm" in str(e.value)
    assert repo.head() == head  # nothing committed
    os.chdir(repo.root)
    out = cli_run("commit", "-m", "x", code=EXIT_CODES[PathError]).output
    assert "model/config.json" in out and "mlvc rm PATH" in out
    # untrack it: the next commit records its absence
    cli_run("rm", "model/config.json")
    assert states(repo)["model/config.json"] == "removed"
    repo.commit(message="config dropped")
    assert "model/config.json" not in files_of(repo) and repo.status().clean
    assert not os.path.exists(os.path.join(repo.dir, "worktree.json"))


def test_rm_deletes_and_refuses_uncommitted_changes(repo):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    write(repo, "model/tokenizer.json", "changed")
    with pytest.raises(DirtyWorkingCheckpointError):
        rm(repo, "model/tokenizer.json")
    assert os.path.isfile(repo.abs_path("model/tokenizer.json"))
    r = rm(repo, "model/tokenizer.json", force=True)
    assert r.deleted == ["model/tokenizer.json"] and not os.path.exists(repo.abs_path("model/tokenizer.json"))
    with pytest.raises(MlvcError, match="-r"):
        rm(repo, "model")
    with pytest.raises(PathError, match="not tracked"):
        rm(repo, "nothing/here")
    repo.commit(message="rm tokenizer")
    assert set(files_of(repo)) == {"model/model.safetensors", "model/config.json", "model/tokenizer_config.json"}


def test_rm_recursive_root_and_cached(repo):
    hf_folder(repo)
    write(repo, "extra.dat", b"e")
    repo.commit(repo.abs_path("model"), message="base")
    repo.commit(repo.abs_path("extra.dat"), message="extra")
    r = rm(repo, "model", recursive=True, cached=True)
    assert r.deleted == [] and len(r.files) == 4 and os.path.isfile(repo.abs_path("model/config.json"))
    assert set(states(repo).values()) == {"untracked", "unchanged"}
    repo.commit(message="model untracked")
    assert set(files_of(repo)) == {"extra.dat"} and roots_of(repo) == ["extra.dat"]
    assert repo.status().clean  # the folder is no longer tracked: its files are not "added"


def test_rm_cached_inside_a_tracked_folder_needs_an_ignore_pattern(repo):
    hf_folder(repo)
    write(repo, "model/train.log", "loss 1")
    repo.commit(repo.abs_path("model"), message="base")
    with pytest.raises(PathError, match="mlvcignore"):
        rm(repo, "model/train.log", cached=True)
    write(repo, ".mlvcignore", "*.log\n")
    rm(repo, "model/train.log", cached=True)
    assert states(repo)["model/train.log"] == "untracked"
    repo.commit(message="log untracked")
    assert "model/train.log" not in files_of(repo) and os.path.isfile(repo.abs_path("model/train.log"))
    write(repo, "model/train.log", "loss 0.5")
    assert repo.status().clean  # ignored now


def test_naming_a_removed_path_tracks_it_again(repo):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    rm(repo, "model/config.json")
    write(repo, "model/config.json", "{}")
    assert states(repo)["model/config.json"] == "untracked"
    # naming the folder that holds it: the more specific removal wins
    repo.commit(repo.abs_path("model"), message="folder named")
    assert "model/config.json" not in files_of(repo)
    assert states(repo)["model/config.json"] == "added"  # the removal is recorded; the file is new again
    rm(repo, "model/tokenizer.json")
    write(repo, "model/tokenizer.json", "again")
    repo.commit(repo.abs_path("model/tokenizer.json"), message="named itself: tracked again")
    assert files_of(repo)["model/tokenizer.json"] == hash_bytes(b"again")
    assert "model/config.json" not in files_of(repo)  # the other pending removal went into that commit


# -- .mlvcignore -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patterns, kept, left_out", [
    (["*.log"], ["m/a.dat", "m/keep/x.dat"], ["m/run.log", "m/sub/deep.log"]),
    (["*.log", "!important.log"], ["m/important.log", "m/a.dat"], ["m/run.log"]),
    (["cache/"], ["m/a.dat", "m/cachefile"], ["m/cache/x.dat", "m/sub/cache/y.dat"]),
    (["/m/sub/"], ["m/a.dat", "m/cache/x.dat"], ["m/sub/deep.log", "m/sub/z.dat"]),
    (["m/**/z.dat"], ["m/a.dat"], ["m/sub/z.dat"]),
    (["logs/", "!logs/keep.dat"], ["m/a.dat"], ["m/logs/keep.dat", "m/logs/other.dat"]),  # git: no re-include
    (["# a comment", "", "\\#hash.dat"], ["m/a.dat"], ["m/#hash.dat"]),
])
def test_ignore_patterns(repo, patterns, kept, left_out):
    for rel in kept + left_out:
        write(repo, rel, rel)
    write(repo, ".mlvcignore", "\n".join(patterns) + "\n")
    repo.commit(repo.abs_path("m"), message="folder")
    got = set(files_of(repo))
    assert set(kept) <= got and not (set(left_out) & got)
    assert repo.status().clean  # ignored files are not "added" either


IGNORE_FILES = ["a.dat", "x.log", "keep.log", "logs/y.dat", "logs/keep.log", "d/a.dat", "d/keep.log",
                "d/e/b.dat", "a/b/c.log", "b/x.dat", "b/a/y.log", "sub/logs/z.dat", "sub/a"]
IGNORE_PATTERNS = ["*.log", "!keep.log", "logs/", "/a", "a/", "**/b", "d/*", "!d/keep.log", "*.dat", "x*",
                   "?.log", "b/**", "!b/x.dat", "sub/", "!sub/a", "/d/e", "e/", "!*.dat", "# note", "a/**/c.log",
                   "**/logs", "logs/**", "!logs/", "*/", "[ab].dat", "!d/", "!a/b/", "*/a", "!*/"]
# Not `d/**/`: pathspec reads it as `d/` (the folder d itself), git as the folders inside d.


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(files=["b/x.dat", "a.dat"], patterns=["b/**", "!*.dat"])  # `b/**` does not ignore the folder b
@example(files=["logs/keep.log", "logs/y.dat"], patterns=["logs/", "!logs/keep.log"])  # no re-include
@given(files=st.lists(st.sampled_from(IGNORE_FILES), min_size=1, unique=True),
       patterns=st.lists(st.sampled_from(IGNORE_PATTERNS), max_size=6))
def test_folder_walks_ignore_what_git_ignores(files, patterns):
    """Whatever the patterns, a walk of the whole tree lists exactly the files `git ls-files --others
    --exclude-from=.mlvcignore` lists: git itself is the oracle for .mlvcignore."""
    import subprocess

    folder = tempfile.mkdtemp(prefix="mlvc-ignore-")
    try:
        repo = Repo.init(folder)
        subprocess.run(["git", "init", "-q", folder], check=True)
        for rel in files:
            write(repo, rel, rel)
        write(repo, ".mlvcignore", "\n".join(patterns) + "\n")
        from mlvc.ops.workfiles import list_files

        git = subprocess.run(["git", "-C", folder, "ls-files", "--others", "--exclude-from=.mlvcignore"],
                             check=True, capture_output=True, text=True).stdout.split()
        want = {p for p in git if not p.startswith(".mlvc/")}
        assert set(list_files(repo, ["."])) == want
    finally:
        shutil.rmtree(folder)


def test_ignore_does_not_untrack_and_named_files_are_committed(repo):
    write(repo, "m/a.dat", "a")
    write(repo, "m/b.tmp", "b")
    repo.commit(repo.abs_path("m"), message="both")
    write(repo, ".mlvcignore", "*.tmp\n")
    write(repo, "m/b.tmp", "b2")
    write(repo, "m/c.tmp", "c")
    assert states(repo) == {"m/a.dat": "unchanged", "m/b.tmp": "modified"}  # tracked stays tracked
    repo.commit(message="tracked ignored file updated")
    assert files_of(repo)["m/b.tmp"] == hash_bytes(b"b2") and "m/c.tmp" not in files_of(repo)
    repo.commit(repo.abs_path("m/c.tmp"), message="named: committed although ignored")
    assert "m/c.tmp" in files_of(repo)
    write(repo, "m/logs/x.dat", "x")
    write(repo, ".mlvcignore", "*.tmp\nlogs/\n")
    with pytest.raises(PathError, match="ignores"):
        repo.commit(repo.abs_path("m/logs"), message="an ignored folder")


def test_a_bad_ignore_file_is_a_config_error(repo):
    write(repo, "m/a.dat", "a")
    with open(repo.abs_path(".mlvcignore"), "wb") as f:
        f.write(b"\xff\xfe*.log\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        repo.commit(repo.abs_path("m"), message="x")
    assert repo.head() is None


# -- commits from memory and the work tree ------------------------------------------------------------------


def test_status_never_says_deleted_for_a_path_committed_from_memory(repo):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    for i, at in enumerate(["ckpt/model.safetensors", "model.safetensors", "model/extra.safetensors"]):
        repo.commit(random_state_dict(i), message=f"mem {i}", path=at)
        s = states(repo)
        assert s[at] == "not_checked_out" and "deleted" not in s.values() and repo.status().clean
    # a commit of the named folder carries the path committed from memory into it, not "removes" it
    write(repo, "model/config.json", "{}")
    r = repo.commit(repo.abs_path("model"), message="folder")
    assert r.removed == [] and "model/extra.safetensors" in files_of(repo)
    # deleted by hand after a checkout: then it is "deleted"
    repo.reset("HEAD", hard=True)
    os.unlink(repo.abs_path("model/extra.safetensors"))
    assert states(repo)["model/extra.safetensors"] == "deleted"


def test_an_older_copy_on_disk_is_stale_not_modified_and_never_committed_back(repo):
    write_safetensors_np(_mk(repo, "model/model.safetensors"), random_state_dict(0))
    write(repo, "model/config.json", "{}")
    repo.commit(repo.abs_path("model"), message="base")
    old_disk = tree_hashes(repo.root)["model/model.safetensors"]
    for step in (1, 2):  # the training loop commits the same path from memory
        repo.commit(random_state_dict(step), message=f"step {step}", path="model/model.safetensors")
        assert states(repo)["model/model.safetensors"] == "stale" and repo.status().clean
    newest = files_of(repo)["model/model.safetensors"]
    write(repo, "model/config.json", '{"a": 1}')
    repo.commit(message="config")  # must not roll the weights back to the file on disk
    assert files_of(repo)["model/model.safetensors"] == newest
    assert tree_hashes(repo.root)["model/model.safetensors"] == old_disk
    repo.switch("main")  # the stale copy is not "uncommitted changes": checkouts go ahead
    repo.create_branch("other", "HEAD~3")
    repo.switch("other")
    assert repo.status().clean and "stale" not in states(repo).values()
    # uncommitted work at that path is never called stale
    repo.switch("main")
    write_safetensors_np(repo.abs_path("model/model.safetensors"), random_state_dict(7))
    repo.commit(random_state_dict(8), message="from memory over uncommitted work", path="model/model.safetensors")
    assert states(repo)["model/model.safetensors"] == "modified"


def test_cli_commit_branch_commits_paths_onto_another_branch(cli_run, tmp_path):
    """`mlvc commit PATHS -b NAME`: the commit lands on NAME (made at HEAD), HEAD, the work tree and status stay;
    without PATHS it is refused (exit 1 names what to do) and nothing moves."""
    cli_run("init")
    write_safetensors_np(str(tmp_path / "model.safetensors"), random_state_dict(1))
    cli_run("commit", "model.safetensors", "-m", "base")
    repo = Repo(str(tmp_path))
    head, status = repo.head(), repo.status().to_json()
    write_safetensors_np(str(tmp_path / "eval.safetensors"), random_state_dict(2))
    out = json.loads(cli_run("commit", "eval.safetensors", "-m", "side", "--branch", "exp", "--json").output)
    assert out["branch"] == "exp" and repo.refs.resolve("refs/heads/exp") == out["commit"]["id"]
    assert repo.head() == head and repo.head_branch() == "main"
    assert repo.read_commit(out["commit"]["id"]).parents == [head]
    assert set(files_of(repo, "exp")) == {"model.safetensors", "eval.safetensors"}
    assert repo.status().to_json() == status
    r = cli_run("commit", "-m", "all", "-b", "exp", code=None)
    assert r.exit_code != 0 and "name what to commit" in r.output
    assert repo.refs.resolve("refs/heads/exp") == out["commit"]["id"]


def test_branch_commits_leave_head_work_tree_and_status_alone(repo):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    write(repo, "model/config.json", '{"uncommitted": true}')
    head, before_tree = repo.head(), tree_hashes(repo.root)
    before_status = repo.status().to_json()
    before_index = open(os.path.join(repo.dir, "HEAD")).read()
    r1 = repo.commit(random_state_dict(1), "run step 1", {"step": 1}, path="ckpt/model.safetensors",
                     branch="run-42")
    r2 = repo.commit(random_state_dict(2), "run step 2", {"step": 2}, path="ckpt/model.safetensors",
                     branch="run-42")
    assert r1.branch == r2.branch == "run-42"
    assert repo.head() == head and repo.head_branch() == "main"
    assert open(os.path.join(repo.dir, "HEAD")).read() == before_index
    assert tree_hashes(repo.root) == before_tree and repo.status().to_json() == before_status
    assert not os.path.exists(os.path.join(repo.dir, "worktree.json"))
    # the run's branch starts at HEAD and keeps its files
    assert repo.read_commit(r1.commit.id).parents == [head]
    assert repo.read_commit(r2.commit.id).parents == [r1.commit.id]
    run_files = files_of(repo, "run-42")
    assert set(run_files) == set(files_of(repo)) | {"ckpt/model.safetensors"}
    assert [e.entry.message for e in repo.reflog("run-42")][:2] == ["commit: run step 2",
                                                                    f"commit (branch created at HEAD {head[:12]}): "
                                                                    "run step 1"]
    # a commit of every tracked path cannot go to another branch
    with pytest.raises(MlvcError, match="name what to commit"):
        repo.commit(message="x", branch="run-42")
    # the branch is moved by compare-and-swap
    import mlvc.ops.commit as commit_mod

    real = commit_mod._lineage

    def racing(r, parent, depth):
        out = real(r, parent, depth)
        r.refs.set_if_equals("refs/heads/run-42", r2.commit.id, head, message="someone else")
        return out

    commit_mod._lineage = racing
    try:
        with pytest.raises(RefConflictError):
            repo.commit(random_state_dict(3), "lost race", path="ckpt/model.safetensors", branch="run-42")
    finally:
        commit_mod._lineage = real
    assert repo.resolve("run-42") == head
    # branch= naming the current branch is an ordinary commit
    r = repo.commit(random_state_dict(4), "here", path="ckpt/model.safetensors", branch="main")
    assert repo.head() == r.commit.id and states(repo)["ckpt/model.safetensors"] == "not_checked_out"


@pytest.mark.parametrize("fail_at", ["mark", "move", "clear"])
def test_a_commit_from_memory_that_fails_midway_leaves_a_true_state(repo, monkeypatch, fail_at):
    """The mark is written before the branch moves and the removals are cleared after: a failure at any of
    the three steps leaves HEAD, status and the next commit as they should be."""
    import mlvc.ops.commit as commit_mod

    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    rm(repo, "model/tokenizer.json")
    head, before = repo.head(), repo.status().to_json()
    real_edit, real_move = commit_mod.edit_state, commit_mod.move_head
    calls = []

    def edit(r, locked=False):
        calls.append("edit")
        if (fail_at == "mark" and len(calls) == 1) or (fail_at == "clear" and len(calls) == 2):
            raise OSError(28, "No space left on device")
        return real_edit(r, locked)

    def move(*a):
        if fail_at == "move":
            raise OSError(28, "No space left on device")
        return real_move(*a)

    monkeypatch.setattr(commit_mod, "edit_state", edit)
    monkeypatch.setattr(commit_mod, "move_head", move)
    if fail_at == "clear":  # the commit is done; the state write that failed only tidies
        repo.commit(random_state_dict(1), message="mem", path="ckpt/w.safetensors")
        assert repo.head() != head and states(repo)["ckpt/w.safetensors"] == "not_checked_out"
        # the removal is still in the state file, but it untracks nothing of HEAD's: a new file there is new
        write(repo, "model/tokenizer.json", "new")
        assert states(repo)["model/tokenizer.json"] == "added"
        os.unlink(repo.abs_path("model/tokenizer.json"))
    else:
        with pytest.raises(OSError):
            repo.commit(random_state_dict(1), message="mem", path="ckpt/w.safetensors")
        assert repo.head() == head and repo.status().to_json() == before
    monkeypatch.setattr(commit_mod, "edit_state", real_edit)
    monkeypatch.setattr(commit_mod, "move_head", real_move)
    repo.commit(random_state_dict(2), message="mem again", path="ckpt/w.safetensors")
    assert "model/tokenizer.json" not in files_of(repo) and "model/config.json" in files_of(repo)
    assert states(repo)["ckpt/w.safetensors"] == "not_checked_out" and repo.status().clean


def test_memory_path_cannot_replace_a_tracked_folder(repo):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    with pytest.raises(PathError, match="tracked folder"):
        repo.commit(random_state_dict(0), message="x", path="model")
    with pytest.raises(PathError, match="under the tracked file"):
        repo.commit(random_state_dict(0), message="x", path="model/config.json/w.safetensors")
    assert set(files_of(repo)) == {"model/model.safetensors", "model/config.json", "model/tokenizer.json",
                                   "model/tokenizer_config.json"}


def test_a_damaged_state_file_loses_nothing(repo):
    hf_folder(repo)
    repo.commit(repo.abs_path("model"), message="base")
    repo.commit(random_state_dict(1), message="mem", path="ckpt/w.safetensors")
    with open(os.path.join(repo.dir, "worktree.json"), "w") as f:
        f.write('{"format": 1, "unmaterialized": {"../x": null}, "removals": []}')
    assert states(repo)["ckpt/w.safetensors"] == "deleted"  # reported, and a commit refuses to drop it
    with pytest.raises(MissingTrackedFilesError):
        repo.commit(message="x")
    assert "ckpt/w.safetensors" in files_of(repo)


# -- the property test: random sequences against a model of the rules --------------------------------------

DISK_PATHS = ["m/a.dat", "m/b.dat", "m/s/c.dat", "x.dat", "y.dat"]
MEMORY_PATHS = ["m/w.safetensors", "w.safetensors"]  # a state_dict is a safetensors file: named so
NAMES = ["m", "m/s", "m/a.dat", "x.dat", "y.dat", "m/w.safetensors", "w.safetensors"]

op = st.one_of(
    st.tuples(st.just("edit"), st.sampled_from(DISK_PATHS), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.sampled_from(DISK_PATHS + MEMORY_PATHS)),
    st.tuples(st.just("commit"), st.lists(st.sampled_from(NAMES), min_size=1, max_size=2)),
    st.tuples(st.just("commit_all")),
    st.tuples(st.just("memory"), st.sampled_from(MEMORY_PATHS), st.integers(0, 3)),
    st.tuples(st.just("rm"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("reset_hard")),
)


def _under(p: str, r: str) -> bool:
    return r == "." or p == r or p.startswith(r + "/")


class Model:
    """The rules of docs/tracking.md, written as plainly as possible."""

    def __init__(self):
        self.tree: dict[str, str] | None = None  # path -> whole-file hash; None before the first commit
        self.roots: set[str] = set()
        self.marks: dict[str, str | None] = {}
        self.removals: set[str] = set()

    def excluded(self, p: str, explicit: list[str]) -> bool:
        return any(_under(p, x) and not any(_under(p, n) and _under(n, x) for n in explicit) for x in self.removals)

    @staticmethod
    def normalize(roots: set[str]) -> list[str]:
        out: list[str] = []
        for r in sorted(roots, key=lambda r: (r.count("/"), r)):
            if not any(_under(r, o) for o in out):
                out.append(r)
        return sorted(out)


def _disk(root: str) -> dict[str, str]:
    out = {}
    for p in tree_hashes(root):
        with open(os.path.join(root, p), "rb") as f:
            out[p] = hash_bytes(f.read())
    return out


def _expect_commit(model: Model, disk: dict[str, str], named: list[str] | None):
    """(tree, roots, read) the model predicts, or the error class it predicts."""
    tree = model.tree or {}
    implicit = named is None
    kept = {r for r in model.roots if not model.excluded(r, [])}
    scope = sorted(kept) if implicit else named
    explicit = [] if implicit else named
    if not implicit:
        for n in named:
            if not any(_under(p, n) for p in disk) and n not in model.roots and not any(_under(p, n) for p in tree):
                return PathError
    new: dict[str, str] = {}
    in_scope = []
    for p, h in tree.items():
        if model.excluded(p, explicit):
            continue
        if any(_under(p, n) for n in scope):
            in_scope.append(p)
        else:
            new[p] = h
    on_disk = {p for p in disk if any(_under(p, n) for n in scope) and not model.excluded(p, explicit)}
    missing = []
    for p in in_scope:
        if p in on_disk and model.marks.get(p) not in (None, tree[p]) and disk[p] == model.marks[p]:
            new[p] = tree[p]
            on_disk.discard(p)
        elif p not in on_disk:
            if p in model.marks:
                new[p] = tree[p]
            elif implicit:
                missing.append(p)
    if missing:
        return MissingTrackedFilesError
    if implicit and model.tree is None:
        return PathError
    if not implicit:
        for n in named:
            if not any(_under(p, n) for p in list(on_disk) + list(tree)):
                return PathError
    for p in on_disk:
        new[p] = disk[p]
    if not new and model.tree is None:
        return PathError
    roots = model.normalize(kept | set(scope))
    if model.tree is not None and new == tree and roots == sorted(model.roots):
        return NothingToCommitError
    return new, roots, sorted(on_disk)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=14))
def test_random_sequences_follow_the_rules(ops):
    folder = tempfile.mkdtemp(prefix="mlvc-track-")
    try:
        _run_sequence(Repo.init(folder), ops)
    finally:
        shutil.rmtree(folder)


def _run_sequence(repo: Repo, ops) -> None:
    model = Model()
    for o in ops:
        kind = o[0]
        disk = _disk(repo.root)
        if kind == "edit":
            write(repo, o[1], f"{o[1]} v{o[2]}")
        elif kind == "delete":
            if os.path.isfile(repo.abs_path(o[1])):
                os.unlink(repo.abs_path(o[1]))
        elif kind in ("commit", "commit_all"):
            named = sorted(set(o[1])) if kind == "commit" else None
            want = _expect_commit(model, disk, named)
            if isinstance(want, type):
                with pytest.raises(want):
                    repo.commit(message="c", paths=[repo.abs_path(n) for n in named] if named else None)
                continue
            repo.commit(message="c", paths=[repo.abs_path(n) for n in named] if named else None)
            model.tree, roots, read = want
            model.roots = set(roots)
            model.removals = set()
            model.marks = {p: h for p, h in model.marks.items() if p in model.tree and p not in read}
        elif kind == "memory":
            rel, seed = o[1], o[2]
            tree = model.tree or {}
            sd = {"w": np.full((2, 2), seed, np.float32)}
            kept = {r for r in model.roots if not model.excluded(r, [])}
            new = {p: h for p, h in tree.items() if not model.excluded(p, [rel]) and not _under(p, rel)}
            try:
                r = repo.commit(sd, message="m", path=rel)
            except NothingToCommitError:
                assert tree.get(rel) is not None and set(new) | {rel} == set(tree) \
                    and model.normalize(kept | {rel}) == sorted(model.roots)
                continue
            entry = {f.path: f.hash for f in repo.read_manifest(r.commit.manifest).files}[rel]
            h = disk.get(rel)
            if h is None:
                model.marks[rel] = None
            elif h == entry:
                model.marks.pop(rel, None)
            elif h == model.marks.get(rel) or h == tree.get(rel):
                model.marks[rel] = h
            else:
                model.marks.pop(rel, None)
            new[rel] = entry
            model.tree, model.roots, model.removals = new, set(model.normalize(kept | {rel})), set()
            model.marks = {p: v for p, v in model.marks.items() if p in new}
        elif kind == "rm":
            rel, cached = o[1], o[2]
            tree = model.tree or {}
            files = [p for p in tree if _under(p, rel) and not model.excluded(p, [])]
            roots = [r for r in model.roots if _under(r, rel)]
            remaining = [r for r in model.roots if not _under(r, rel)]
            if model.tree is None or (not files and not roots):
                with pytest.raises(PathError):
                    rm(repo, rel, cached=cached, recursive=True)
                continue
            blocked = cached and any(_under(rel, r) for r in remaining) and any(p in disk for p in files)
            dirty = not cached and any(p in disk and disk[p] != tree[p] and model.marks.get(p) != disk[p]
                                       for p in files)
            if blocked or dirty:
                with pytest.raises(PathError if blocked else DirtyWorkingCheckpointError):
                    rm(repo, rel, cached=cached, recursive=True)
                continue
            rm(repo, rel, cached=cached, recursive=True)
            model.removals.add(rel)
            if not cached:
                assert not any(os.path.exists(repo.abs_path(p)) for p in files)
        elif kind == "reset_hard":
            if model.tree is None:
                continue
            repo.reset("HEAD", hard=True, force=True)
            after = _disk(repo.root)
            for p, h in model.tree.items():  # written or found right: as HEAD has it
                assert after.get(p) == h
                model.marks.pop(p, None)
                model.removals.discard(p)
        _check(repo, model)


def _check(repo: Repo, model: Model) -> None:
    if model.tree is None:
        assert repo.head() is None
        return
    assert files_of(repo) == model.tree
    assert roots_of(repo) == sorted(model.roots)
    s = states(repo)
    disk = _disk(repo.root)
    kept = [r for r in model.roots if not model.excluded(r, [])]
    added = {p for p in disk if p not in model.tree and any(_under(p, r) for r in kept) and not model.excluded(p, [])}
    assert set(s) == set(model.tree) | added
    assert all(s[p] == "added" for p in added)
    for p in model.tree:
        if model.excluded(p, []):
            assert s[p] == ("untracked" if p in disk else "removed")
        elif p in model.marks and p not in disk:
            assert s[p] == "not_checked_out"
        elif p in model.marks and model.marks[p] == disk.get(p) != model.tree[p]:
            assert s[p] == "stale"
        elif p not in disk:
            assert s[p] == "deleted"
        else:
            assert s[p] == ("unchanged" if disk[p] == model.tree[p] else "modified")


def test_diff_of_the_work_tree_agrees_with_status_on_a_path_committed_from_memory(tmp_path):
    """`mlvc diff` (HEAD against the working checkpoint) compares with the tree the next commit would make: a
    path committed from memory and not checked out is not "removed", as status does not call it "deleted"."""
    repo = Repo.init(str(tmp_path))
    hf_folder(repo)
    repo.commit(os.path.join(repo.root, "model"), message="base")
    repo.commit(random_state_dict(5), "from memory", path="ckpt/model.safetensors")
    d = repo.diff("HEAD")
    assert not [t for t in d.tensors if t.status != "unchanged"]
    assert all(f.status == "unchanged" for f in d.files)
    assert repo.status().clean
    # a real change in the work tree still shows
    write(repo, "model/config.json", b'{"hidden_size": 32}')
    assert [f.path for f in repo.diff("HEAD").files if f.status == "modified"] == ["model/config.json"]
