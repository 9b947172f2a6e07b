"""The command line through click's runner: every core command, its exit codes and its messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from conftest import cli_runner
from mlvc.cli import cli
from mlvc.errors import (
    EXIT_CODES,
    DirtyWorkingCheckpointError,
    NotARepositoryError,
    RefError,
    RevisionError,
)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Run `mlvc ARGS` inside tmp_path; returns the click Result."""
    return cli_runner(tmp_path, monkeypatch)


def write_model(path, seed=0, scale=1.0, extra=False):
    rng = np.random.default_rng(seed)
    tensors = {
        "encoder.layer.0.weight": (rng.standard_normal((64, 32)) * scale).astype(np.float32),
        "encoder.layer.1.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "head.bias": np.zeros(8, np.float16),
    }
    if extra:
        tensors["head.extra"] = np.ones(3, np.int64)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(tensors, path, metadata={"format": "np"})


def bump(path, name="encoder.layer.0.weight"):
    t = load_file(path)
    t[name] = t[name] + 1
    save_file(t, path, metadata={"format": "np"})


@pytest.fixture
def repo(run, tmp_path):
    run("init")
    write_model(tmp_path / "model" / "model.safetensors")
    (tmp_path / "model" / "config.json").write_text('{"hidden": 32}')
    run("commit", "model", "-m", "first")
    return tmp_path


def test_version_and_help_do_not_import_heavy_modules():
    code = ("import sys; from mlvc.cli import main; sys.argv=['mlvc','--help'];\n"
            "try:\n    main()\nexcept SystemExit: pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'pyarrow', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "Commands:" in out
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and "mlvc, version" in r.output


def test_init_twice_and_outside_repo(run, tmp_path):
    run("init")
    assert (tmp_path / ".mlvc" / "HEAD").read_text() == "ref: refs/heads/main\n"
    r = run("init")  # like git: a re-init, which changes nothing (tests/test_verbs.py checks every file)
    assert "Reinitialized existing mlvc repository" in r.output
    assert (tmp_path / ".mlvc" / "HEAD").read_text() == "ref: refs/heads/main\n"
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    r = CliRunner().invoke(cli, ["-C", str(sub.parent.parent), "status"])
    assert r.exit_code == EXIT_CODES[NotARepositoryError]
    assert "mlvc init" in r.output


def test_commit_messages_and_json(run, repo):
    bump(repo / "model" / "model.safetensors")
    r = run("commit", "-m", "second", "--step", "5", "--meta", "lr=0.001", "--meta", "note=warm", "--json")
    data = json.loads(r.stdout)
    assert data["commit"]["metadata"]["step"] == 5
    assert data["commit"]["metadata"]["lr"] == 0.001
    assert data["commit"]["metadata"]["note"] == "warm"
    assert data["files"] == 2 and data["tensors"] == 3
    assert 0 < data["new_bytes"] < data["raw_bytes"]
    assert data["new_chunks"] == 1  # only the changed tensor: the header bytes are the same
    r = run("commit", "-m", "again", code=6)
    assert "nothing to commit" in r.output
    r = run("commit", "-m", "again", "--allow-empty")
    assert r.output.startswith("[main ")
    r = run("commit", "-m", "x", "--meta", "novalue", code=2)
    assert "KEY=VALUE" in r.output


def test_commit_errors(run, tmp_path):
    run("init")
    r = run("commit", "-m", "nothing", code=10)
    assert "nothing is tracked yet" in r.output
    r = run("commit", "missing.safetensors", "-m", "x", code=10)
    assert "does not exist" in r.output
    r = run("commit", "/etc/hostname", "-m", "x", code=10)
    assert "outside the repository" in r.output
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    r = run("commit", "bad.safetensors", "-m", "x", code=8)
    assert "bad.safetensors" in r.output and "JSON" in r.output
    assert not (tmp_path / ".mlvc" / "refs" / "heads" / "main").exists()
    r = run("commit", "bad.safetensors", code=2)  # -m is required
    assert "--message" in r.output


def test_status_lists_changed_tensors(run, repo):
    r = run("status")
    assert "matches HEAD" in r.output
    bump(repo / "model" / "model.safetensors")
    (repo / "model" / "new.txt").write_text("hello")
    r = run("status")
    assert "modified" in r.output and "encoder.layer.0.weight" in r.output
    assert "added" in r.output and "model/new.txt" in r.output
    data = json.loads(run("status", "--json").stdout)
    assert data["clean"] is False
    files = {f["path"]: f for f in data["files"]}
    assert files["model/model.safetensors"]["tensors_changed"] == ["encoder.layer.0.weight"]
    assert files["model/new.txt"]["state"] == "added"
    os.remove(repo / "model" / "config.json")
    files = {f["path"]: f for f in json.loads(run("status", "--json").stdout)["files"]}
    assert files["model/config.json"]["state"] == "deleted"


def test_log_oneline_n_json_and_revisions(run, repo):
    for i in range(3):
        bump(repo / "model" / "model.safetensors")
        run("commit", "-m", f"step {i}", "--step", str(i))
    r = run("log", "--oneline")
    lines = r.output.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("step 2") and "(HEAD -> main)" in lines[0]
    assert lines[-1].endswith("first")
    assert len(run("log", "-n", "2", "--oneline").output.strip().splitlines()) == 2
    log = json.loads(run("log", "--json").stdout)
    assert [c["message"] for c in log] == ["step 2", "step 1", "step 0", "first"]
    assert log[0]["parents"] == [log[1]["id"]]
    full = run("log").output
    assert "Author: tester" in full and "Meta:   step=2" in full
    # revisions: HEAD~N, REV^, prefixes, full ids
    first = log[-1]["id"]
    for rev, want in (("HEAD~3", first), ("HEAD^^^", first), (first[:8], first), (first, first),
                      ("main~1", log[1]["id"]), ("@^", log[1]["id"])):
        assert json.loads(run("show", rev, "--json").stdout)["commit"]["id"] == want, rev
    for bad in ("HEAD~9", "nosuch", "HEAD^2", "zzzz"):
        r = run("show", bad, code=EXIT_CODES[RevisionError])
        assert "mlvc log" in r.output or "parent" in r.output or "deep" in r.output


def test_log_and_status_on_empty_repo(run):
    run("init")
    assert "No commits yet" in run("log").output
    assert json.loads(run("log", "--json").stdout) == []
    assert "No commits yet" in run("status").output


def test_show(run, repo):
    r = run("show")
    assert "model/model.safetensors" in r.output and "safetensors" in r.output and "first" in r.output
    data = json.loads(run("show", "--json").stdout)
    assert {f["path"] for f in data["files"]} == {"model/config.json", "model/model.safetensors"}
    assert data["branches"] == ["main"]


def test_checkout_output_and_in_place(run, repo):
    original = (repo / "model" / "model.safetensors").read_bytes()
    bump(repo / "model" / "model.safetensors")
    run("commit", "-m", "second")
    out = repo / "old"
    r = run("checkout", "HEAD~1", "--output", str(out))
    assert "2 file(s) written" in r.output
    assert (out / "model" / "model.safetensors").read_bytes() == original
    # in place, detached
    r = run("checkout", "HEAD~1")
    assert "detached" in r.output
    assert (repo / "model" / "model.safetensors").read_bytes() == original
    assert "HEAD detached at" in run("status").output
    r = run("checkout", "main")
    assert "Switched to branch 'main'" in r.output
    assert "On branch main" in run("status").output
    # refuses to overwrite uncommitted changes, changes nothing
    bump(repo / "model" / "model.safetensors")
    dirty = (repo / "model" / "model.safetensors").read_bytes()
    r = run("checkout", "HEAD~1", code=EXIT_CODES[DirtyWorkingCheckpointError])
    assert "uncommitted changes" in r.output and "--force" in r.output
    assert (repo / "model" / "model.safetensors").read_bytes() == dirty
    assert "On branch main" in run("status").output
    run("checkout", "HEAD~1", "--force")
    assert (repo / "model" / "model.safetensors").read_bytes() == original
    # --output refuses to clobber a different existing file
    (out / "model" / "config.json").write_text("changed")
    r = run("checkout", "main", "--output", str(out), code=6)
    assert (out / "model" / "config.json").read_text() == "changed"
    run("checkout", "main", "--output", str(out), "--force")
    assert (out / "model" / "config.json").read_text() == '{"hidden": 32}'


def test_checkout_removes_files_not_in_target(run, repo):
    (repo / "model" / "extra.txt").write_text("x")
    run("commit", "-m", "with extra")
    run("checkout", "HEAD~1")
    assert not (repo / "model" / "extra.txt").exists()
    run("checkout", "main")
    assert (repo / "model" / "extra.txt").read_text() == "x"


def test_switch_branch_and_tag(run, repo):
    r = run("switch", "-c", "exp")
    assert "new branch 'exp'" in r.output
    bump(repo / "model" / "model.safetensors")
    run("commit", "-m", "on exp")
    r = run("branch")
    assert "* exp" in r.output and "  main" in r.output
    branches = {b["name"]: b for b in json.loads(run("branch", "--json").stdout)}
    assert branches["exp"]["current"] and not branches["main"]["current"]
    run("switch", "main")
    assert load_file(repo / "model" / "model.safetensors")["encoder.layer.0.weight"].mean() < 0.5
    r = run("switch", "nope", code=7)
    assert "switch -c nope" in r.output
    r = run("switch", "-c", "exp", code=7)
    assert "already exists" in r.output
    r = run("branch", "bad name", code=7)
    assert "not a valid branch name" in r.output
    r = run("branch", "-d", "main", code=7)
    assert "current branch" in r.output
    r = run("branch", "-d", "exp")
    assert "Deleted branch exp" in r.output
    r = run("branch", "-d", "exp", code=7)
    # tags
    r = run("tag", "v1")
    assert "Created tag v1" in r.output
    r = run("tag", "v1", code=7)
    assert "already exists" in r.output
    assert "v1" in run("tag").output
    assert json.loads(run("tag", "--json").stdout)[0]["name"] == "v1"
    assert "tag: v1" in run("log", "--oneline").output
    run("tag", "-d", "v1")
    assert json.loads(run("tag", "--json").stdout) == []


def test_fsck_detects_a_flipped_byte_and_checkout_refuses(run, repo):
    assert "checked" in run("fsck").output
    assert json.loads(run("fsck", "--json").stdout)["ok"] is True
    manifest = json.loads(run("show", "--json").stdout)
    weights = next(f for f in manifest["files"] if f["path"].endswith(".safetensors"))
    objects = repo / ".mlvc" / "objects"
    # flip one payload byte in the largest loose object (a tensor chunk; small chunks share pack files)
    loose = (p for p in objects.rglob("*") if p.is_file() and "pack" not in p.relative_to(objects).parts)
    victim = max(loose, key=lambda p: p.stat().st_size)
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = run("fsck", code=5)
    victim_id = victim.parent.name + victim.name
    assert "corrupt" in r.output and victim_id[:12] in r.output
    report = json.loads(run("fsck", "--json", code=5).stdout)
    assert not report["ok"] and report["problems"][0]["problem"] == "corrupt"
    out = repo / "restore"
    r = run("checkout", "HEAD", "--output", str(out), code=5)
    assert "mlvc fsck" in r.output
    assert not (out / "model" / "model.safetensors").exists()
    assert not any(p.name.startswith(".tmp") for p in out.rglob("*"))
    assert weights["size"] > 0


def test_debug_env_shows_traceback(repo, monkeypatch):
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLVC_DEBUG", "1")
    r = CliRunner().invoke(cli, ["show", "nosuch"])
    assert isinstance(r.exception, RevisionError)


def test_os_errors_are_one_line_with_their_own_exit_code(run, repo, monkeypatch):
    from mlvc.errors import exit_code_for

    code = EXIT_CODES[OSError]
    assert code not in {c for cls, c in EXIT_CODES.items() if cls is not OSError}
    assert exit_code_for(PermissionError(13, "Permission denied", "x")) == code
    assert exit_code_for(NotARepositoryError("x")) == EXIT_CODES[NotARepositoryError]  # MlvcError still wins
    missing = repo / "no" / "such" / "folder"
    r = run("report", "-o", str(missing / "r.html"), code=code)
    assert r.output.splitlines() == [f"error: {missing}: No such file or directory"]
    assert not missing.exists()
    # MLVC_DEBUG=1 shows the traceback instead
    monkeypatch.setenv("MLVC_DEBUG", "1")
    r = CliRunner().invoke(cli, ["report", "-o", str(missing / "r.html")])
    assert isinstance(r.exception, FileNotFoundError)


def test_branch_and_its_folder_clash_is_a_ref_error(run, repo):
    run("branch", "a")
    r = run("branch", "a/b", code=EXIT_CODES[RefError])
    assert "branch 'a' exists" in r.output and "Traceback" not in r.output
    run("tag", "x/y")
    r = run("tag", "x", code=EXIT_CODES[RefError])
    assert "tag 'x/y' exists" in r.output


def test_run_from_a_subfolder(run, repo, monkeypatch):
    monkeypatch.chdir(repo / "model")
    bump(repo / "model" / "model.safetensors")
    r = run("status")
    assert "model/model.safetensors" in r.output
    r = run("commit", "-m", "from below")
    assert "[main " in r.output
    assert json.loads(run("show", "--json").stdout)["roots"] == ["model"]
