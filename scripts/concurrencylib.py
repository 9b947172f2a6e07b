"""Many processes on one repository at once: commits on one branch, commits on separate branches, ledger
appends with a compaction running, and readers (`log`, `checkout --output`, `load`) meanwhile.

Used by tests/test_concurrency.py (reduced counts) and scripts/crash_harness.py (8 writers x 50). Each
writer and reader is its own Python process (`python scripts/concurrencylib.py ROLE JSON`), working through
the library as a training loop would; one reader goes through the `mlvc` command line instead. Writers retry
a commit that lost the race (RefConflictError: the branch moved; LockBusyError: a lock stayed held past its
wait) until it lands, and report every commit that landed. The checks:

- the history of each branch holds every commit a writer reported, exactly once, and nothing else (so no
  lost and no duplicated commit); each of them checks out byte-exact (the file equals what
  `safetensors.numpy.save` makes of the tensors the writer committed) and fsck is clean;
- a reader never sees a partial state: any error is a failure (there is no retryable error for a reader),
  and every commit it reads (found through `log`) checks out or loads byte-exact;
- the ledger ends with exactly one row per reported append (no lost or duplicated row), and readers never
  see a row twice, while `Ledger.compact` runs in a loop beside the writers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "model.safetensors"
COLUMNS = ["run", "writers", "landed", "retries", "in history", "reads", "gc/compactions", "failures", "s"]


def tensors(wid: int, i: int) -> dict[str, Any]:
    """What writer `wid` commits the i-th time (small, a few KB; the same names and shapes every time)."""
    import numpy as np

    rng = np.random.default_rng(wid * 100_003 + i)
    return {"embed.weight": rng.standard_normal((16, 16), dtype=np.float32),
            "layer.0.weight": rng.standard_normal((16, 16), dtype=np.float32),
            "layer.0.bias": np.full((16,), wid * 1000 + i, dtype=np.float32)}


def file_bytes(wid: int, i: int) -> bytes:
    from safetensors.numpy import save

    return save(tensors(wid, i))


def parse_message(message: str) -> tuple[int, int] | None:
    """(writer, i) from a commit message "w3-17", None for another commit (the initial one)."""
    if not message.startswith("w"):
        return None
    wid, _, i = message[1:].partition("-")
    return int(wid), int(i)


# -- the processes ----------------------------------------------------------------------------------------


def _open(root: str, branch: str | None):
    from mlvc.refs import HEADS
    from mlvc.repo import Repo

    if branch is None:
        return Repo(root)

    class BranchRepo(Repo):
        """A Repo whose "current branch" is `branch` whatever HEAD says: one repository has one HEAD, so
        this is how separate processes commit to separate branches of it at once (Repo.commit moves the
        branch by compare-and-swap exactly as it does for HEAD's branch)."""

        def head(self):
            return self.refs.resolve(HEADS + branch)

        def head_branch(self):
            return branch

    return BranchRepo(root)


def commit_writer(a: dict) -> None:
    from mlvc.errors import LockBusyError, RefConflictError

    rng = random.Random(a["wid"])
    with open(a["out"], "a", encoding="utf-8") as out:
        for i in range(a["n"]):
            retries = 0
            while True:
                try:
                    r = _open(a["root"], a.get("branch")).commit(tensors(a["wid"], i), message=f"w{a['wid']}-{i}",
                                                                  path=MODEL)
                    break
                except (RefConflictError, LockBusyError) as e:
                    retries += 1
                    if retries > 500:
                        raise RuntimeError(f"commit w{a['wid']}-{i} did not land after 500 tries: {e}") from None
                    time.sleep(rng.uniform(0, 0.01 * min(retries, 10)))
            out.write(json.dumps({"wid": a["wid"], "i": i, "commit": r.commit.id, "retries": retries}) + "\n")
            out.flush()


def reader(a: dict) -> None:
    """Read until the stop file appears: log a branch, then load or check out one of its commits."""
    from safetensors.numpy import load

    from mlvc.repo import Repo

    rng = random.Random(a["seed"])
    scratch = tempfile.mkdtemp(prefix="reader-")
    reads = 0
    _ready(a)
    with open(a["out"], "a", encoding="utf-8") as out:
        def fail(what: str) -> None:
            out.write(json.dumps({"failure": what}) + "\n")
            out.flush()

        while not os.path.exists(a["stop"]):
            try:
                branch = rng.choice(a["branches"])
                if a["mode"] == "cli":
                    p = _mlvc(["log", branch, "--json"], a["root"])
                    if p.returncode != 0:
                        fail(f"mlvc log {branch}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
                        continue
                    commits = [(c["id"], c["message"]) for c in json.loads(p.stdout)]
                else:
                    repo = Repo(a["root"])
                    commits = [(c.id, c.message) for c in repo.log(branch)]
                cid, message = rng.choice(commits)
                who = parse_message(message)
                if who is None:
                    continue
                want = file_bytes(*who)
                how = rng.choice(["checkout", "load"]) if a["mode"] == "api" else "checkout"
                if how == "load":
                    got = Repo(a["root"]).load(cid, framework="numpy")
                    exp = load(want)
                    if sorted(got) != sorted(exp) or any(got[k].tobytes() != exp[k].tobytes() or
                                                         got[k].dtype != exp[k].dtype for k in exp):
                        fail(f"load {cid[:12]} ({message}): tensors differ from what was committed")
                else:
                    dest = os.path.join(scratch, str(reads))
                    if a["mode"] == "cli":
                        p = _mlvc(["checkout", cid, "--output", dest, "--quiet"], a["root"])
                        if p.returncode != 0:
                            fail(f"mlvc checkout {cid[:12]} --output: exit {p.returncode}: {p.stderr.strip()[-300:]}")
                            continue
                    else:
                        Repo(a["root"]).checkout(cid, output=dest)
                    with open(os.path.join(dest, MODEL), "rb") as f:
                        if f.read() != want:
                            fail(f"checkout {cid[:12]} ({message}): the file is not byte-exact")
                    shutil.rmtree(dest, ignore_errors=True)
                reads += 1
            except Exception as e:  # noqa: BLE001 - a reader has no retryable error: every one counts
                fail(f"{type(e).__name__}: {e} | {traceback.format_exc(limit=3)[-600:]}")
        out.write(json.dumps({"reads": reads}) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)


def ledger_writer(a: dict) -> None:
    from mlvc.errors import LedgerError, LockBusyError
    from mlvc.repo import Repo

    with open(a["out"], "a", encoding="utf-8") as out:
        for i in range(a["n"]):
            retries = 0
            while True:
                try:
                    Repo(a["root"]).record_eval(a["commit"], "t", {"acc": float(a["wid"] * 1000 + i)},
                                                notes=f"w{a['wid']}-{i}")
                    break
                except (LedgerError, LockBusyError) as e:  # a retryable "try again"
                    retries += 1
                    if retries > 200:
                        raise RuntimeError(f"append w{a['wid']}-{i} failed 200 times: {e}") from None
                    time.sleep(0.01)
            out.write(json.dumps({"wid": a["wid"], "i": i, "retries": retries}) + "\n")
            out.flush()


def ledger_compactor(a: dict) -> None:
    from mlvc.errors import LedgerError, LockBusyError
    from mlvc.repo import Repo

    n = busy = 0
    _ready(a)
    while not os.path.exists(a["stop"]):
        try:
            Repo(a["root"]).ledger.compact()
            n += 1
        except (LedgerError, LockBusyError):
            busy += 1
        time.sleep(0.05)
    with open(a["out"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"compactions": n, "busy": busy}) + "\n")


def ledger_reader(a: dict) -> None:
    from mlvc.errors import LedgerError
    from mlvc.repo import Repo

    reads = 0
    Repo(a["root"]).ledger.records()  # imports pyarrow
    _ready(a)
    with open(a["out"], "a", encoding="utf-8") as out:
        while not os.path.exists(a["stop"]):
            try:
                notes = [r.notes for r in Repo(a["root"]).ledger.records() if r.task == "t"]
                if len(notes) != len(set(notes)):
                    out.write(json.dumps({"failure": f"a reader saw a row twice ({len(notes)} rows, "
                                                     f"{len(set(notes))} distinct)"}) + "\n")
                reads += 1
            except LedgerError as e:
                if "try again" not in str(e):
                    out.write(json.dumps({"failure": f"LedgerError: {e}"}) + "\n")
            except Exception as e:  # noqa: BLE001
                out.write(json.dumps({"failure": f"{type(e).__name__}: {e}"}) + "\n")
            time.sleep(0.02)
        out.write(json.dumps({"reads": reads}) + "\n")


def gc_loop(a: dict) -> None:
    """Run gc again and again until the stop file appears (with the grace periods given, None: defaults)."""
    from mlvc.errors import LockBusyError
    from mlvc.repo import Repo

    n = busy = 0
    _ready(a)
    with open(a["out"], "a", encoding="utf-8") as out:
        while not os.path.exists(a["stop"]):
            try:
                Repo(a["root"]).gc(prune=a.get("prune"), prune_temp=a.get("prune_temp"))
                n += 1
            except LockBusyError:
                busy += 1
            except Exception as e:  # noqa: BLE001
                out.write(json.dumps({"failure": f"gc: {type(e).__name__}: {e}"}) + "\n")
            time.sleep(0.02)
        out.write(json.dumps({"gcs": n, "busy": busy}) + "\n")


def _ready(a: dict) -> None:
    """Tell the parent this side process is past its imports (writers start only then)."""
    with open(a["out"] + ".ready", "w"):
        pass


def _wait_ready(outs: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(o + ".ready") for o in outs) and time.monotonic() < deadline:
        time.sleep(0.05)


ROLES = {"commit-writer": commit_writer, "gc": gc_loop, "reader": reader, "ledger-writer": ledger_writer,
         "ledger-compactor": ledger_compactor, "ledger-reader": ledger_reader}


def _mlvc(argv: list[str], root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mlvc", *argv], cwd=root, capture_output=True, text=True,
                          env=env, timeout=300, check=False)


# -- the runs (in the parent) -----------------------------------------------------------------------------


def _spawn(role: str, args: dict, stderr_path: str) -> subprocess.Popen:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MLVC_AUTHOR="concurrency")
    err = open(stderr_path, "w")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "concurrencylib.py"), role, json.dumps(args)],
                         env=env, stdout=subprocess.DEVNULL, stderr=err)
    p._err_file = err  # type: ignore[attr-defined]
    return p


def _read_jsonl(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _wait(procs: list[tuple[str, subprocess.Popen, str]], failures: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for name, p, err in procs:
        try:
            p.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            failures.append(f"{name} did not finish in {timeout:.0f} s")
        p._err_file.close()  # type: ignore[attr-defined]
        if p.returncode != 0:
            with open(err, encoding="utf-8", errors="replace") as f:
                failures.append(f"{name} exited {p.returncode}: {f.read().strip()[-800:]}")


def _setup(root: str):
    sys.path.insert(0, HERE)
    import crashlib

    repo = crashlib.init_repo(root, chunk_size=512)
    first = repo.commit(tensors(999, 0), message="initial", path=MODEL).commit.id
    return repo, first


def run_commits(workdir: str, writers: int, commits: int, separate_branches: bool, readers: bool = True,
                gc: dict | None = None, timeout: float = 1200) -> dict:
    """`writers` processes x `commits` commits, on one branch or one branch each, with readers meanwhile
    (and, with `gc` = {"prune": ..., "prune_temp": ...}, a process running gc in a loop)."""
    name = ("branches" if separate_branches else "one-branch") + ("-gc" if gc is not None else "")
    top = os.path.join(workdir, name)
    shutil.rmtree(top, ignore_errors=True)
    os.makedirs(top)
    root = os.path.join(top, "repo")
    repo, first = _setup(root)
    branches = [f"b{w}" for w in range(writers)] if separate_branches else ["main"]
    for b in branches:
        if b != "main":
            repo.create_branch(b, first)
    t0 = time.monotonic()
    stop = os.path.join(top, "stop")
    rprocs = []
    if readers:
        for k, mode in enumerate(["api", "api", "cli"]):
            args = {"root": root, "seed": k, "mode": mode, "stop": stop, "branches": branches,
                    "out": os.path.join(top, f"r{k}.jsonl")}
            rprocs.append((f"reader {k} ({mode})", _spawn("reader", args, os.path.join(top, f"r{k}.err")),
                           os.path.join(top, f"r{k}.err")))
    if gc is not None:
        args = {"root": root, "stop": stop, "out": os.path.join(top, f"r{len(rprocs)}.jsonl"), **gc}
        rprocs.append(("gc loop", _spawn("gc", args, os.path.join(top, "gc.err")), os.path.join(top, "gc.err")))
    _wait_ready([os.path.join(top, f"r{k}.jsonl") for k in range(len(rprocs))])
    procs = []
    for w in range(writers):
        args = {"root": root, "wid": w, "n": commits, "out": os.path.join(top, f"w{w}.jsonl"),
                "branch": branches[w] if separate_branches else None}
        procs.append((f"writer {w}", _spawn("commit-writer", args, os.path.join(top, f"w{w}.err")),
                      os.path.join(top, f"w{w}.err")))
    failures: list[str] = []
    _wait(procs, failures, timeout)
    with open(stop, "w"):
        pass
    _wait(rprocs, failures, 120)
    landed = [r for w in range(writers) for r in _read_jsonl(os.path.join(top, f"w{w}.jsonl"))]
    reads = gcs = 0
    for k in range(len(rprocs)):
        for line in _read_jsonl(os.path.join(top, f"r{k}.jsonl")):
            if "failure" in line:
                failures.append(f"reader {k}: {line['failure']}")
            reads += line.get("reads", 0)
            gcs = line.get("gcs", 0)
    try:
        in_history = _verify_commits(root, first, branches, landed, separate_branches, failures, top)
    except Exception as e:  # noqa: BLE001 - a repository the checks cannot read is a failure, not a crash
        in_history = 0
        failures.append(f"the repository cannot be read after the run: {type(e).__name__}: {e}")
    out = {"writers": writers, "commits_each": commits, "landed": len(landed),
           "retries": sum(r["retries"] for r in landed), "in_history": in_history, "reads": reads,
           "failures": failures[:50], "failure_count": len(failures), "seconds": round(time.monotonic() - t0, 1)}
    if gc is not None:
        out["gc_runs"], out["gc"] = gcs, gc
    shutil.rmtree(top, ignore_errors=True)
    return out


def _verify_commits(root: str, first: str, branches: list[str], landed: list[dict], separate_branches: bool,
                    failures: list[str], top: str) -> int:
    """Every reported commit in its branch's history exactly once and nothing else; each byte-exact; fsck."""
    from mlvc.repo import Repo

    repo = Repo(root)
    in_history = 0
    for b in branches:
        history = [c.id for c in repo.log(b)]
        want = [r["commit"] for r in landed if (branches[r["wid"]] if separate_branches else "main") == b]
        if history[-1:] != [first]:
            failures.append(f"branch {b}: its history does not end at the initial commit")
        body = history[:-1]
        if sorted(body) != sorted(want):
            missing, extra = set(want) - set(body), set(body) - set(want)
            failures.append(f"branch {b}: {len(missing)} reported commit(s) missing from the history, "
                            f"{len(extra)} commit(s) nobody reported")
        if len(body) != len(set(body)):
            failures.append(f"branch {b}: a commit appears twice in the history")
        in_history += len(set(body) & set(want))
        by_id = {r["commit"]: r for r in landed}
        order = [by_id[c]["i"] for c in reversed(body) if c in by_id]
        if separate_branches and order != sorted(order):
            failures.append(f"branch {b}: the writer's commits are out of order")
    scratch = tempfile.mkdtemp(prefix="verify-", dir=top)
    for r in landed:
        dest = os.path.join(scratch, r["commit"])
        try:
            repo.checkout(r["commit"], output=dest)
            with open(os.path.join(dest, MODEL), "rb") as f:
                if f.read() != file_bytes(r["wid"], r["i"]):
                    failures.append(f"commit w{r['wid']}-{r['i']} ({r['commit'][:12]}) is not byte-exact")
        except Exception as e:  # noqa: BLE001
            failures.append(f"commit w{r['wid']}-{r['i']} ({r['commit'][:12]}) does not check out: {e}")
        shutil.rmtree(dest, ignore_errors=True)
    report = repo.fsck()
    if report.problems:
        failures.append(f"fsck: {len(report.problems)} problem(s): {[p.detail for p in report.problems[:3]]}")
    return in_history


def run_ledger(workdir: str, writers: int, appends: int, timeout: float = 1200) -> dict:
    """`writers` processes x `appends` ledger appends, a compaction loop and a reader meanwhile."""
    top = os.path.join(workdir, "ledger")
    shutil.rmtree(top, ignore_errors=True)
    os.makedirs(top)
    root = os.path.join(top, "repo")
    _repo, first = _setup(root)
    t0 = time.monotonic()
    stop = os.path.join(top, "stop")
    side = [("compactor", _spawn("ledger-compactor", {"root": root, "stop": stop, "out": os.path.join(top, "c.jsonl")},
                                 os.path.join(top, "c.err")), os.path.join(top, "c.err")),
            ("ledger reader", _spawn("ledger-reader", {"root": root, "stop": stop, "out": os.path.join(top, "r.jsonl")},
                                     os.path.join(top, "r.err")), os.path.join(top, "r.err"))]
    _wait_ready([os.path.join(top, "c.jsonl"), os.path.join(top, "r.jsonl")])
    procs = [(f"ledger writer {w}", _spawn("ledger-writer", {"root": root, "wid": w, "n": appends, "commit": first,
                                                             "out": os.path.join(top, f"w{w}.jsonl")},
                                           os.path.join(top, f"w{w}.err")), os.path.join(top, f"w{w}.err"))
             for w in range(writers)]
    failures: list[str] = []
    _wait(procs, failures, timeout)
    with open(stop, "w"):
        pass
    _wait(side, failures, 120)
    landed = [r for w in range(writers) for r in _read_jsonl(os.path.join(top, f"w{w}.jsonl"))]
    reads = compactions = 0
    for path in ("r.jsonl", "c.jsonl"):
        for line in _read_jsonl(os.path.join(top, path)):
            if "failure" in line:
                failures.append(f"{path}: {line['failure']}")
            reads += line.get("reads", 0)
            compactions += line.get("compactions", 0)
    from mlvc.repo import Repo

    rows = [r for r in Repo(root).ledger.records() if r.task == "t"]
    notes = [r.notes for r in rows]
    want = {f"w{r['wid']}-{r['i']}" for r in landed}
    if len(notes) != len(set(notes)):
        failures.append(f"the ledger holds {len(notes) - len(set(notes))} duplicated row(s)")
    if set(notes) != want:
        failures.append(f"{len(want - set(notes))} reported row(s) missing, {len(set(notes) - want)} unreported")
    for r in rows:
        wid, i = parse_message(r.notes)
        if r.value != float(wid * 1000 + i) or r.commit != first:
            failures.append(f"row {r.notes} holds the wrong value or commit")
    out = {"writers": writers, "commits_each": appends, "landed": len(landed),
           "retries": sum(r["retries"] for r in landed), "in_history": len(set(notes) & want), "reads": reads,
           "compactions": compactions, "failures": failures[:50], "failure_count": len(failures),
           "seconds": round(time.monotonic() - t0, 1)}
    shutil.rmtree(top, ignore_errors=True)
    return out


def run_all(workdir: str, writers: int = 8, commits: int = 50, log=None) -> dict[str, dict]:
    out = {}
    for name, fn in (("one-branch", lambda: run_commits(workdir, writers, commits, False)),
                     ("branches", lambda: run_commits(workdir, writers, commits, True)),
                     ("ledger", lambda: run_ledger(workdir, writers, commits)),
                     ("one-branch + gc", lambda: run_commits(workdir, writers, commits, False, gc={})),
                     ("one-branch + gc --prune=now", lambda: run_commits(workdir, writers, commits, False,
                                                                         gc={"prune": "now", "prune_temp": "now"}))):
        if log:
            print(f"concurrency {name}: {writers} x {commits} ...", file=log, flush=True)
        out[name] = fn()
    return out


def rows(results: dict[str, dict]) -> list[list]:
    return [[name, r["writers"], f"{r['landed']}/{r['writers'] * r['commits_each']}", r["retries"], r["in_history"],
             r["reads"], r.get("gc_runs", r.get("compactions", "")), r["failure_count"], f"{r['seconds']:.0f}"]
            for name, r in results.items()]


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    ROLES[sys.argv[1]](json.loads(sys.argv[2]))
