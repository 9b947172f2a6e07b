"""The crash harness's scenarios: one small repository state and one mlvc command each (scripts/crashlib.py).

`CI` is the set tests/test_crash.py runs; `EXTRA` adds the variants scripts/crash_harness.py runs on top.
Command fields like "{c1}" are the ids of the setup's commits of that name.
"""

from __future__ import annotations

from crashlib import Scenario, Setup, weights, write_blob, write_st

MODEL = "model.safetensors"


def _bump(w: dict, name: str, by: float) -> dict:
    w = {k: v.copy() for k, v in w.items()}
    w[name] = w[name] + by
    return w


def history(s: Setup, n: int = 3, size: int = 256) -> dict:
    """c1..cN of model.safetensors on main, each changing one tensor; returns the last weights."""
    w = weights(0, size)
    names = list(w)
    for i in range(1, n + 1):
        if i > 1:
            w = _bump(w, names[(i - 2) % len(names)], 0.25 * i)
        write_st(s.path(MODEL), w)
        s.commit(f"c{i}", [MODEL] if i == 1 else None)
    return w


def folder(s: Setup, name: str = "f1") -> None:
    """model/ with two safetensors files and a JSON blob, committed as `name`."""
    write_st(s.path("model/a.safetensors"), weights(1))
    write_st(s.path("model/b.safetensors"), weights(2))
    write_blob(s.path("model/config.json"), b'{"hidden": 16, "layers": 1}\n')
    s.commit(name, ["model"])


def branches(s: Setup) -> None:
    """main: f1, f2; other (from f1): o1 with a changed, b removed, sub/c added. HEAD on main."""
    folder(s)
    s.run(lambda r: r.switch("other", create=True))
    write_st(s.path("model/a.safetensors"), _bump(weights(1), "layer.0.bias", 1.0))
    import os

    os.unlink(s.path("model/b.safetensors"))
    write_st(s.path("model/sub/c.safetensors"), weights(3))
    s.commit("o1", ["model"])
    s.run(lambda r: r.switch("main"))
    write_blob(s.path("model/config.json"), b'{"hidden": 16, "layers": 2}\n')
    s.commit("f2")


# -- builders ---------------------------------------------------------------------------------------------


def b_commit_file(s: Setup) -> None:
    w = history(s)
    write_st(s.path(MODEL), _bump(_bump(w, "layer.0.bias", 3.0), "embed.weight", -1.0))


def b_commit_folder_initial(s: Setup) -> None:
    write_st(s.path("model/a.safetensors"), weights(1))
    write_st(s.path("model/b.safetensors"), weights(2))
    write_blob(s.path("model/config.json"), b'{"hidden": 16}\n')


def b_commit_folder(s: Setup) -> None:
    import os

    folder(s)
    write_st(s.path("model/a.safetensors"), _bump(weights(1), "embed.weight", 0.5))
    write_st(s.path("model/extra/e.safetensors"), weights(4))
    os.unlink(s.path("model/config.json"))


def b_history(s: Setup) -> None:
    history(s)


def b_reset(s: Setup) -> None:
    folder(s)
    write_st(s.path("model/a.safetensors"), _bump(weights(1), "embed.weight", 0.5))
    write_st(s.path("model/new/n.safetensors"), weights(5))
    s.commit("f2")
    write_st(s.path("model/b.safetensors"), _bump(weights(2), "layer.0.weight", 0.5))
    s.commit("f3")


def b_merge(s: Setup) -> None:
    w = history(s, 1)
    s.run(lambda r: r.create_branch("feature", "HEAD"))
    write_st(s.path(MODEL), _bump(w, "embed.weight", 1.0))
    s.commit("c2")
    s.run(lambda r: r.switch("feature"))
    write_st(s.path(MODEL), _bump(w, "layer.0.bias", 1.0))
    s.commit("x1")
    s.run(lambda r: r.switch("main"))


def b_merge_both(s: Setup) -> None:
    """Both sides changed embed.weight: `--strategy average` resolves it."""
    w = history(s, 1)
    s.run(lambda r: r.create_branch("feature", "HEAD"))
    write_st(s.path(MODEL), _bump(_bump(w, "embed.weight", 1.0), "layer.0.weight", 1.0))
    s.commit("c2")
    s.run(lambda r: r.switch("feature"))
    write_st(s.path(MODEL), _bump(_bump(w, "embed.weight", 3.0), "layer.0.bias", 1.0))
    s.commit("x1")
    s.run(lambda r: r.switch("main"))


def b_merge_ff(s: Setup) -> None:
    w = history(s, 1)
    s.run(lambda r: r.switch("feature", create=True))
    write_st(s.path(MODEL), _bump(w, "layer.0.bias", 1.0))
    s.commit("x1")
    s.run(lambda r: r.switch("main"))


def b_refs(s: Setup) -> None:
    history(s)
    s.run(lambda r: r.create_branch("feature", s.ids["c2"]))
    s.run(lambda r: r.create_tag("v1", s.ids["c2"]))


def b_gc(s: Setup) -> None:
    """History, a commit only HEAD's reflog still names (its branch was deleted: gc must keep it), loose
    garbage objects nothing names, temp files and a stale lock of a process that died."""
    import json
    import os
    import socket

    from mlvc.repo import Repo

    w = history(s)
    s.run(lambda r: r.switch("tmp", create=True))
    write_st(s.path(MODEL), _bump(w, "embed.weight", 9.0))
    s.commit("t1")
    s.run(lambda r: r.switch("main"))
    s.run(lambda r: r.delete_branch("tmp"))
    repo = Repo(s.root)
    for i in range(6):
        repo.store.put(os.urandom(700 + i))
    repo.store.flush()
    write_blob(os.path.join(repo.dir, ".tmp-mlvc-left"), b"a temp file a killed process left")
    write_blob(s.path(".tmp-mlvc-staged"), b"a staged file a killed process left")
    write_blob(os.path.join(repo.dir, "refs", "heads", "main.lock"),
               json.dumps({"pid": 2 ** 22 + 17, "host": socket.gethostname(), "since": "2020-01-01T00:00:00Z",
                           "command": "mlvc commit"}).encode())


class KilledCommand:
    """A prelude (run in every fresh copy of the case folder, before the command under test): `argv` killed
    at the step right after its first `point` (found once by a dry run). A prelude rather than part of the
    setup because what it leaves behind (a work-tree journal) names the folder it ran in."""

    def __init__(self, argv: list[str], point: str):
        self.argv, self.point, self.at = argv, point, None

    def __call__(self, runner, root: str) -> None:
        import os
        import shutil

        if self.at is None:
            probe = root.rstrip("/") + "-probe"
            shutil.copytree(root, probe, symlinks=True)
            log = probe + ".points"
            runner.run(self.argv, probe, {"MLVC_FAULT_LOG": log})
            with open(log, encoding="utf-8") as f:
                self.at = [line.strip() for line in f].index(self.point) + 1
            shutil.rmtree(probe)
            os.unlink(log)
        r = runner.run(self.argv, root, {"MLVC_FAULT_AT": str(self.at)})
        assert r.rc == -9, r.describe()


def b_eval(s: Setup) -> None:
    history(s)
    s.run(lambda r: r.record_eval(s.ids["c2"], "t", {"acc": 0.25}))


def b_detached(s: Setup) -> None:
    w = history(s)
    s.run(lambda r: r.checkout(s.ids["c2"]))
    write_st(s.path(MODEL), _bump(w, "layer.0.bias", 7.0))


def b_restore(s: Setup) -> None:
    history(s)


def b_dirty(s: Setup) -> None:
    """History, then uncommitted changes to model.safetensors (a checkout --force discards them)."""
    w = history(s)
    write_st(s.path(MODEL), _bump(w, "layer.0.bias", 5.0))


def b_revert_dirty_other(s: Setup) -> None:
    """model/: f1; f2 changes a; f3 changes b; then config.json changed and not committed (revert of f2
    must leave it alone)."""
    folder(s)
    write_st(s.path("model/a.safetensors"), _bump(weights(1), "embed.weight", 0.5))
    s.commit("f2")
    write_st(s.path("model/b.safetensors"), _bump(weights(2), "layer.0.weight", 0.5))
    s.commit("f3")
    write_blob(s.path("model/config.json"), b'{"hidden": 16, "layers": 1, "note": "not committed"}\n')


def b_compact(s: Setup) -> None:
    history(s)
    for v in (0.1, 0.2, 0.3):
        s.run(lambda r, v=v: r.record_eval(s.ids["c1"], f"t{v}", {"acc": v}))


def b_big(s: Setup) -> None:
    w = history(s, 2, size=4096)
    write_st(s.path(MODEL), _bump(w, "embed.weight", 0.001))


CI = [
    Scenario("commit-file", b_commit_file, ["commit", "-m", "c4"], again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("commit-folder-initial", b_commit_folder_initial, ["commit", "model", "-m", "first"],
             again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("commit-folder", b_commit_folder, ["commit", "model", "-m", "f2"],
             again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("checkout-detached", b_history, ["checkout", "{c1}"]),
    Scenario("checkout-branch", branches, ["checkout", "other"]),
    Scenario("checkout-output", b_history, ["checkout", "{c1}", "--output", "../out"]),
    Scenario("switch", branches, ["switch", "other"]),
    Scenario("switch-create", b_history, ["switch", "-c", "newb"], again=["switch", "main"]),
    Scenario("reset-hard", b_reset, ["reset", "--hard", "{f1}"]),
    Scenario("restore-tensors", b_restore, ["checkout", "{c1}", "--", "embed.*"]),
    Scenario("revert", b_history, ["revert", "{c2}"], again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("merge", b_merge, ["merge", "feature", "-m", "merge feature"],
             again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("gc", b_gc, ["gc", "--prune=now", "--prune-temp=now"], requires="gc"),
    # a `checkout other` killed after its ref moved and one file was renamed into place leaves an unfinished
    # work-tree transaction (journal, staged temp files): gc must leave it for the recovery to finish
    Scenario("gc-after-killed-checkout", branches, ["gc", "--prune=now", "--prune-temp=now"], requires="gc",
             prelude=KilledCommand(["checkout", "other"], "worktree.renamed")),
    Scenario("eval-record", b_eval, ["eval", "record", "HEAD", "--task", "t", "acc=0.5"], rows_added=1),
    Scenario("branch-create", b_refs, ["branch", "feat2", "{c1}"], again=["branch", "-d", "feat2"]),
    Scenario("branch-delete", b_refs, ["branch", "-d", "feature"], again=["branch", "feature", "{c2}"]),
    Scenario("tag-create", b_refs, ["tag", "v2", "{c1}"], again=["tag", "-d", "v2"]),
    Scenario("tag-delete", b_refs, ["tag", "-d", "v1"], again=["tag", "v1", "{c2}"]),
]

EXTRA = [
    Scenario("merge-average", b_merge_both, ["merge", "feature", "--strategy", "average", "-m", "avg"],
             again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("merge-ff", b_merge_ff, ["merge", "feature"], again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("commit-detached", b_detached, ["commit", "-m", "d1"], again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("reset-soft", b_history, ["reset", "{c1}"]),
    Scenario("ledger-compact", b_compact, ["ledger", "compact"], rows_added=0),
    Scenario("checkout-force-dirty", b_dirty, ["checkout", "{c1}", "--force"]),
    Scenario("revert-dirty-other", b_revert_dirty_other, ["revert", "{f2}"],
             again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("merge-folder", branches, ["merge", "other", "-m", "merge other"],
             again=["commit", "--allow-empty", "-m", "next"]),
    Scenario("commit-big", b_big, ["commit", "-m", "c3"], again=["commit", "--allow-empty", "-m", "next"]),
]

ALL = CI + EXTRA
