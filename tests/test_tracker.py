"""mlvc.Tracker: commits from a training loop, in the background, onto a branch of their own; keep-policies;
resume. Tiny models on the CPU (the CUDA path is scripts/gpu_tracker_check.py)."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from conftest import first_parent_chain, make_repo, set_config
from mlvc import codec, tracker, trackworker
from mlvc.errors import MlvcError, PathError, TrackerError
from mlvc.refs import HEADS
from mlvc.tracker import KeepPolicy, Tracker
from mlvc.util import lower_thread_priority

torch = pytest.importorskip("torch")


def tiny(seed: int = 0, width: int = 16):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.Dropout(0.1), torch.nn.ReLU(),
                               torch.nn.Linear(width, 2))


def train_step(model, opt):
    """One step whose batch and dropout come from every RNG a loop may use (torch, numpy, random)."""
    x = torch.randn(4, 8) + float(np.random.rand()) + random.random()
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


chain = first_parent_chain


@pytest.fixture
def repo(tmp_path):
    r = make_repo(tmp_path / "r")
    with open(os.path.join(r.root, "notes.txt"), "w") as f:
        f.write("work tree file\n")
    r.commit(os.path.join(r.root, "notes.txt"), "base")
    return r


@pytest.mark.parametrize("background", [True, False])
def test_commits_land_with_metadata_and_steps_without_touching_head(repo, background):
    head, status_before = repo.head(), repo.status().to_json()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Tracker(repo.root, "run-1", every=3, background=background, metadata={"run": "a"}) as t:
        for i in range(1, 11):
            loss = train_step(model, opt)
            t.step(model, metrics={"loss": loss}, optimizer=opt, epoch=i // 5, metadata={"note": f"s{i}"})
    commits = chain(repo, "run-1")
    assert commits[0].id == head  # the branch starts at HEAD
    run = commits[1:]
    assert [c.metadata["step"] for c in run] == [3, 6, 9]
    assert [c.message for c in run] == ["step 3", "step 6", "step 9"]
    for c in run:
        s = c.metadata["step"]
        assert c.metadata["epoch"] == s // 5 and c.metadata["lr"] == 0.05 and c.metadata["run"] == "a"
        assert c.metadata["note"] == f"s{s}" and set(c.metadata["metrics"]) == {"loss"}
        files = {f.path for f in repo.read_manifest(c.manifest).files}
        assert files == {"notes.txt", "model.safetensors", tracker.STATE_PATH}  # HEAD's files carried over
    assert [c.step for c in t.commits] == [3, 6, 9] and t.last_commit == run[-1].id
    # the model at the last commit is the one trained up to step 9, byte for byte
    rows = {(r.commit, r.metric): r.value for r in repo.ledger.records()}
    assert rows == {(c.id, "loss"): c.metadata["metrics"]["loss"] for c in run}
    assert repo.head() == head and repo.head_branch() == "main"
    assert repo.status().to_json() == status_before


def test_saved_weights_are_the_weights_at_that_step(repo):
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    expected = {}
    with Tracker(repo.root, "run", every=2) as t:
        for i in range(1, 7):
            train_step(model, opt)
            t.step(model, step=i)
            if i % 2 == 0:
                expected[i] = {k: v.clone() for k, v in model.state_dict().items()}
    for tc in t.commits:
        got = repo.load(tc.commit, path="model.safetensors")
        assert set(got) == set(expected[tc.step])
        assert all(torch.equal(got[k], expected[tc.step][k]) for k in got)


def test_a_failing_worker_surfaces_on_the_next_call_and_on_close(repo, monkeypatch):
    model = tiny()
    real = trackworker.snapshot_buffers
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the second commit's model file
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(trackworker, "snapshot_buffers", flaky)
    t = Tracker(repo.root, "run", every=1, worker="thread")
    t.step(model)
    t.step(model)
    with pytest.raises(TrackerError, match="No space left") as e:
        t.flush()
    assert isinstance(e.value.__cause__, OSError)
    t.step(model)  # the error was reported once; later commits go on
    t.close()
    assert [c.metadata["step"] for c in chain(repo, "run")[1:]] == [1, 3]
    # an error in the last commit is raised by close itself
    t2 = Tracker(repo.root, "run2", every=1, worker="thread")
    monkeypatch.setattr(trackworker, "snapshot_buffers", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    t2.step(model)
    with pytest.raises(TrackerError, match="boom"):
        t2.close()
    assert repo.refs.resolve("refs/heads/run2") is None  # nothing half-made: no branch


class Gate:
    """Holds the worker until `open()`: a worker thread before each commit (a patched Writer._write), a worker
    process by SIGSTOP (`hold(tracker)`, then SIGCONT)."""

    def __init__(self, monkeypatch, worker: str):
        self.worker, self.go, self.pid = worker, threading.Event(), None
        if worker == "thread":
            real = trackworker.Writer._write

            def slow(w, job):
                self.go.wait(30)
                return real(w, job)

            monkeypatch.setattr(trackworker.Writer, "_write", slow)

    def hold(self, t: Tracker) -> Tracker:
        if self.worker == "process":
            self.pid = t.worker_pid
            os.kill(self.pid, signal.SIGSTOP)
        return t

    def open(self) -> None:
        self.go.set()
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)
            self.pid = None


workers = pytest.mark.parametrize("worker", ["thread", pytest.param("process", marks=pytest.mark.skipif(
    not hasattr(signal, "SIGSTOP"), reason="holds the worker process with SIGSTOP"))])


@workers
def test_close_flushes_every_queued_commit(repo, monkeypatch, worker):
    gate = Gate(monkeypatch, worker)
    model = tiny()
    t = gate.hold(Tracker(repo.root, "run", every=1, max_queue_mb=64, worker=worker))
    for i in range(1, 6):
        with torch.no_grad():
            model[0].weight.fill_(i)
        t.step(model, step=i)
    assert repo.refs.resolve("refs/heads/run") is None  # all five still queued
    threading.Timer(0.2, gate.open).start()
    t.close()
    run = chain(repo, "run")[1:]
    assert [c.metadata["step"] for c in run] == [1, 2, 3, 4, 5]
    w = [repo.load(c.id, tensors=["0.weight"])["0.weight"] for c in run]
    assert all(torch.equal(w[i], torch.full_like(w[i], i + 1)) for i in range(5))  # each its own snapshot
    with pytest.raises(TrackerError, match="closed"):
        t.step(model, commit=True)


@pytest.mark.parametrize("worker", ["process", "thread"])
def test_interpreter_exit_flushes(repo, worker):
    script = (
        "import torch, mlvc\n"
        "m = torch.nn.Linear(4, 4)\n"
        f"t = mlvc.Tracker({repo.root!r}, 'run', every=1, worker={worker!r})\n"
        "for i in range(3):\n"
        "    t.step(m)\n"
        "import sys; sys.exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert [c.metadata["step"] for c in chain(repo, "run")[1:]] == [1, 2, 3]


@workers
def test_full_queue_skips_with_a_warning_or_blocks(repo, monkeypatch, worker):
    gate = Gate(monkeypatch, worker)
    model = tiny()
    t = gate.hold(Tracker(repo.root, "skip", every=1, on_full="skip", worker=worker))  # bound: two snapshots
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        taken = [t.step(model, step=i) for i in range(1, 5)]
    assert taken == [True, True, False, False] and t.skipped == 2
    assert sum("queue of skip is full" in str(x.message) for x in w) == 2
    gate.open()
    t.close()
    assert [c.metadata["step"] for c in chain(repo, "skip")[1:]] == [1, 2]

    gate = Gate(monkeypatch, worker)
    b = gate.hold(Tracker(repo.root, "block", every=1, max_queue_mb=0, worker=worker))  # room for one snapshot
    b.step(model, step=1)
    done = threading.Event()
    th = threading.Thread(target=lambda: (b.step(model, step=2), done.set()))
    th.start()
    assert not done.wait(0.3)  # blocked behind the first
    gate.open()
    th.join(30)
    assert done.is_set()
    b.close()
    assert [c.metadata["step"] for c in chain(repo, "block")[1:]] == [1, 2]


def test_delta_from_memory_decodes_nothing(tmp_path, monkeypatch):
    """Consecutive commits of one tracker find their delta bases in memory, even when core.cache_mb is too
    small for the checkpoint (the tracker sizes the base cache); with the configured cache they are decoded."""
    def run(branch: str, delta_cache_mb):
        r = set_config(make_repo(tmp_path / branch, chunk_size=64 << 10), "cache_mb", 1)
        model = tiny(width=40000)  # 1.8 MB of float32, 5.3 MB with the training state: over 1 MiB
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        decoded = [0]
        real = codec.decode

        def counting(*a, **k):
            raw = real(*a, **k)
            decoded[0] += not bytes(raw[:2]) == b'{"'  # a chunk, not a commit or manifest (JSON)
            return raw

        t = Tracker(r, branch, every=1, background=False, delta_cache_mb=delta_cache_mb)
        per_commit = []
        for _ in range(4):
            train_step(model, opt)
            monkeypatch.setattr(codec, "decode", counting)
            t.step(model, optimizer=opt)
            monkeypatch.setattr(codec, "decode", real)
            per_commit.append(decoded[0])
            decoded[0] = 0
        t.close()
        deltas = sum(r.store.header(oid).encoding in codec.DELTA_ENCODINGS for oid in r.store.ids())
        return per_commit, deltas

    auto, auto_deltas = run("auto", None)
    assert auto == [0, 0, 0, 0] and auto_deltas > 0
    configured, _ = run("configured", 0)
    assert sum(configured[2:]) > 0  # the 1 MiB cache cannot hold the bases: they are read back and decoded


def test_refuses_the_checked_out_branch_and_bad_arguments(repo):
    with pytest.raises(TrackerError, match="checked out"):
        Tracker(repo.root, "main")
    for kw in ({"every": 0}, {"every": 1.5}, {"on_full": "drop"}):
        with pytest.raises(MlvcError):
            Tracker(repo.root, "run", **kw)
    with pytest.raises(MlvcError):
        KeepPolicy(last=0)
    t = Tracker(repo.root, "run", background=False)
    with pytest.raises(MlvcError, match="metric 'loss'"):
        t.commit(tiny(), metrics={"loss": float("nan")})
    with pytest.raises(MlvcError, match="cannot commit a str"):
        t.commit("model.pt")
    t.close()
    assert repo.refs.resolve("refs/heads/run") is None


def steps_on(repo, branch):
    return [c.metadata["step"] for c in chain(repo, branch) if "tracker" in c.metadata]


def keep_model(losses, last, tagged, higher):
    """What KeepPolicy(last, best="loss") keeps of steps 1..n with these losses and tagged steps: the last
    `last`, the tagged ones, and the first step with the best loss."""
    n = len(losses)
    best = min(range(n), key=lambda i: (-losses[i] if higher else losses[i], i)) + 1
    return sorted(set(range(max(1, n - last + 1), n + 1)) | set(tagged) | {best})


@hsettings(max_examples=12, deadline=None)
@given(losses=st.lists(st.integers(0, 5), min_size=1, max_size=7), last=st.integers(1, 3),
       tag_at=st.sets(st.integers(1, 7), max_size=2), higher=st.booleans())
def test_keep_policy_keeps_exactly_what_it_says(tmp_path_factory, losses, last, tag_at, higher):
    repo = make_repo(tmp_path_factory.mktemp("keep"))
    model = tiny()
    policy = KeepPolicy(last=last, best="loss", higher_is_better=higher)
    tagged = {s for s in tag_at if s <= len(losses)}
    t = Tracker(repo, "run", keep=policy, background=False, start=None)
    for i, loss in enumerate(losses, 1):
        with torch.no_grad():
            model[0].bias.fill_(i)
        t.step(model, step=i, commit=True, metrics={"loss": loss})
        if i in tagged:
            repo.create_tag(f"t{i}", t.last_commit)
    t.close()
    kept = keep_model(losses, last, tagged, higher)
    assert steps_on(repo, "run") == kept
    assert [c.step for c in t.commits] == kept
    by_step = {c.metadata["step"]: c for c in chain(repo, "run")}
    for s in tagged:  # a tag follows its commit to the rewritten chain
        assert repo.tags()[f"t{s}"] == by_step[s].id
    rows = {(r.commit, r.value) for r in repo.ledger.records()}
    for s, c in by_step.items():  # each kept commit's ledger row follows it to its new id
        assert (c.id, losses[s - 1]) in rows
        assert torch.equal(repo.load(c.id, tensors=["0.bias"])["0.bias"], torch.full((16,), float(s)))


def test_keep_policy_spares_commits_of_others_and_keep_true(repo):
    model = tiny()
    t = Tracker(repo, "run", keep=KeepPolicy(last=1), background=False)
    for i in range(1, 5):
        with torch.no_grad():
            model[0].bias.fill_(i)
        t.step(model, step=i, commit=True, keep=(i == 2))
        if i == 3:
            repo.create_branch("fork", t.last_commit)
    t.close()
    assert steps_on(repo, "run") == [2, 3, 4]
    assert chain(repo, "run")[0].id == repo.head()  # where the run began is not the tracker's to drop


def test_keep_policy_frees_the_dropped_checkpoints_for_gc(repo):
    """The dropped commits leave the branch and its reflog: `gc --prune=now` removes every object only they
    needed, keeps everything the kept commits need, and the reflog records the rewrite naming only the new tip."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 256))  # 64 KiB of weights: loose objects, not packed
    t = Tracker(repo, "run", keep=KeepPolicy(last=2), background=False)
    old = {}
    for i in range(1, 6):
        with torch.no_grad():
            model[0].weight.normal_(generator=torch.Generator().manual_seed(i))
        t.step(model, step=i, commit=True)
        old[i] = t.last_commit
    t.close()
    kept = chain(repo, "run")
    assert steps_on(repo, "run") == [4, 5]

    def needs(cid):
        c = repo.read_commit(cid)
        out = {c.manifest}
        for f in repo.read_manifest(c.manifest).files:
            out.update(f.object_ids())
        return out

    before = set(repo.store.ids())
    kept_needs = set().union(*(needs(c.id) for c in kept), needs(repo.head()))
    only_dropped = set().union(*(needs(old[s]) for s in (1, 2, 3))) - kept_needs
    r = repo.gc(prune="now")
    assert kept_needs <= set(repo.store.ids()) and repo.fsck().ok
    assert only_dropped and only_dropped <= before and not only_dropped & set(repo.store.ids())
    assert set(r.removed_objects) >= only_dropped
    log = repo.refs.reflog(HEADS + "run")
    assert log[0].old == log[0].new == kept[-1].id and "keep-policy" in log[0].message
    assert not {x for e in log for x in (e.old, e.new)} & set(old.values()) - {c.id for c in kept}


def test_resume_reproduces_the_next_loss_exactly(repo):
    def fresh(seed):
        m = tiny(seed)
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01)
        return m, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def loop(model, opt, sched, n, t=None, first=1):
        out = []
        for i in range(first, first + n):
            out.append(train_step(model, opt).item())
            sched.step()
            if t is not None:
                t.step(model, step=i, optimizer=opt, scheduler=sched)
        return out

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model, opt, sched = fresh(0)
    with Tracker(repo, "run", every=3, background=True) as t:
        losses = loop(model, opt, sched, 6, t)  # commits after steps 3 and 6
    losses += loop(model, opt, sched, 2)  # steps 7, 8
    for at in (3, 6):
        torch.manual_seed(99), np.random.seed(99), random.seed(99)  # resume must restore these
        model2, opt2, sched2 = fresh(123)  # other weights, no optimizer state, the scheduler at its start
        meta = Tracker.resume(repo.root, next(c.commit for c in t.commits if c.step == at), model2, opt2, sched2)
        assert meta["step"] == at and meta["lr"] == opt2.param_groups[0]["lr"]
        assert loop(model2, opt2, sched2, 2) == losses[at : at + 2]  # bit for bit
    # the model alone resumes from a commit without training state
    t3 = Tracker(repo, "nostate", background=False, save_state=False)
    t3.commit(model)
    t3.close()
    with pytest.raises(MlvcError, match="no training state"):
        Tracker.resume(repo.root, "nostate", tiny(5), torch.optim.SGD(tiny(5).parameters(), lr=1))
    m4 = tiny(5)
    Tracker.resume(repo.root, "nostate", m4)
    assert all(torch.equal(a, b) for a, b in zip(m4.state_dict().values(), model.state_dict().values(), strict=True))


def test_load_one_file_and_its_metadata(repo):
    t = Tracker(repo, "run", background=False)
    t.commit(tiny(), optimizer=torch.optim.Adam(tiny().parameters()))
    t.close()
    assert set(repo.load("run", path="model.safetensors")) == set(tiny().state_dict())
    from mlvc.ops.load import file_metadata

    assert tracker.STATE_KEY in file_metadata(repo, "run", tracker.STATE_PATH)
    assert file_metadata(repo, "run", "model.safetensors") == {}
    with pytest.raises(PathError, match="holds no file nope"):
        repo.load("run", path="nope")
    with pytest.raises(MlvcError, match="not a safetensors file"):
        file_metadata(repo, "run", "notes.txt")


def test_import_mlvc_stays_light():
    code = "import sys, mlvc; mlvc.Tracker; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_failing_loop_still_writes_the_queue_and_keeps_its_own_exception(repo, monkeypatch):
    model = tiny()
    with pytest.raises(KeyError, match="the loop's"):
        with Tracker(repo, "run", every=1) as t:
            t.step(model)
            raise KeyError("the loop's")
    assert steps_on(repo, "run") == [1]
    monkeypatch.setattr(trackworker, "snapshot_buffers", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(KeyError), pytest.warns(UserWarning, match="disk"):
        with Tracker(repo, "run2", every=1, worker="thread") as t:
            t.step(model)
            raise KeyError("the loop's")


def test_resume_into_a_new_branch_from_any_commit(tmp_path):
    repo = make_repo(tmp_path / "fresh")  # no commit yet: the run's first commit is a root
    model = tiny()
    t = Tracker(repo, "run", every=1, background=False)
    for _ in range(3):
        t.step(model)
    t.close()
    assert chain(repo, "run")[0].parents == []
    meta = Tracker.resume(repo, "run~1", model)
    t2 = Tracker(repo, "run-b", start=meta["commit"], background=False)
    t2.step(model, step=meta["step"] + 1, commit=True)
    t2.close()
    assert [c.metadata["step"] for c in chain(repo, "run-b")] == [1, 2, 3]


def test_bad_input_is_refused_in_the_loop_thread_and_writes_nothing(repo):
    t = Tracker(repo, "run", every=1)
    with pytest.raises(MlvcError, match="not a tensor"):
        t.commit({"w": torch.ones(2), "n": 3})
    with pytest.raises(MlvcError, match="metadata must be JSON"):
        t.commit(tiny(), metadata={"x": object()})
    t.close()
    assert repo.refs.resolve("refs/heads/run") is None


# -- scheduling: the worker's priority, its encode threads, the queue under a slow worker ------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")


def watch_threads(monkeypatch):
    """Record, for every thread that stores an object (the encode threads) or runs a commit (the worker), its
    id, scheduling policy and nice value, read back from the OS."""
    from mlvc import store

    seen: dict[tuple[int, str], tuple[int, int]] = {}  # (thread id, role): (policy, nice)
    lock = threading.Lock()

    def note(role):
        tid = threading.get_native_id()
        with lock:
            seen[tid, role] = (os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid))

    real_put, real_write = store.ObjectStore.put, trackworker.Writer._write

    def put(self, *a, **k):
        note("encode")
        return real_put(self, *a, **k)

    def write(self, job):
        note("worker")
        return real_write(self, job)

    monkeypatch.setattr(store.ObjectStore, "put", put)
    monkeypatch.setattr(trackworker.Writer, "_write", write)
    return seen


@linux_only
@pytest.mark.parametrize("priority", ["idle", 5])
def test_worker_and_its_encode_threads_run_at_the_requested_priority(tmp_path, monkeypatch, priority):
    repo = make_repo(tmp_path / "r", chunk_size=64 << 10)  # several chunks per tensor: the pool stores them
    seen = watch_threads(monkeypatch)
    me = threading.get_native_id()
    mine = (os.sched_getscheduler(me), os.getpriority(os.PRIO_PROCESS, me))
    model = tiny(width=20000)
    with Tracker(repo, "run", every=1, threads=2, worker_priority=priority, worker="thread") as t:
        t.step(model)
        t.step(model)
    assert len(t.commits) == 2
    assert {role for _, role in seen} == {"worker", "encode"}
    assert me not in {tid for tid, _ in seen}  # nothing of a background commit ran in the training thread...
    assert (os.sched_getscheduler(me), os.getpriority(os.PRIO_PROCESS, me)) == mine  # ...nor changed its priority
    assert len({tid for tid, role in seen if role == "encode"} - {tid for tid, role in seen if role == "worker"}) >= 1
    for (_, role), (policy, nice) in seen.items():
        if priority == "idle":
            assert policy == os.SCHED_IDLE, role
        else:
            assert policy == mine[0] and nice == min(19, mine[1] + priority), role
    assert t.applied_priority == ("idle" if priority == "idle" else f"nice {min(19, mine[1] + priority)}")


@linux_only
def test_sync_commits_and_priority_zero_leave_the_priority_alone(repo, monkeypatch):
    seen = watch_threads(monkeypatch)
    me = threading.get_native_id()
    mine = (os.sched_getscheduler(me), os.getpriority(os.PRIO_PROCESS, me))
    for kw in ({"background": False}, {"worker_priority": 0}, {"worker_priority": None}):
        seen.clear()
        with Tracker(repo.root, "run", every=1, worker="thread", **kw) as t:
            t.step(tiny())
        assert seen and all(got == mine for got in seen.values()), kw
        assert t.applied_priority == "unchanged"


@pytest.mark.parametrize("os_lacks", ["platform", "missing", "refused", "idle refused"])
def test_priority_is_skipped_where_the_os_has_none_and_commits_still_land(repo, monkeypatch, os_lacks):
    def refuse(*a, **k):
        raise PermissionError(1, "Operation not permitted")

    if os_lacks == "platform":  # another OS: the thread id is no pid there, so nothing may be called with it
        monkeypatch.setattr(sys, "platform", "darwin")
        monkeypatch.setattr(os, "setpriority", refuse, raising=False)
        monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
    elif os_lacks == "missing":
        monkeypatch.delattr(os, "setpriority", raising=False)
        monkeypatch.delattr(os, "sched_setscheduler", raising=False)
        monkeypatch.setattr(sys, "platform", "linux")
    elif os_lacks == "refused":
        monkeypatch.setattr(os, "setpriority", refuse, raising=False)
        monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
        monkeypatch.setattr(sys, "platform", "linux")
    else:  # SCHED_IDLE refused: nice 19 instead
        monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
        if not sys.platform.startswith("linux"):
            pytest.skip("reads back a Linux thread's nice value")
    model = tiny()
    with Tracker(repo.root, "run", every=1, worker_priority="idle" if os_lacks == "idle refused" else 5,
                 worker="thread") as t:
        t.step(model)
        t.step(model)
    assert [c.metadata["step"] for c in chain(repo, "run")[1:]] == [1, 2]
    expected = {"platform": "unchanged (no per-thread priority on darwin)", "idle refused": "nice 19"}
    if os_lacks in expected:
        assert t.applied_priority == expected[os_lacks]
    else:
        assert t.applied_priority.startswith("unchanged (")


def test_lower_thread_priority_in_a_thread_of_its_own():
    """The function itself, for each value, in a fresh thread (a raised nice value cannot be lowered)."""
    got = {}

    def run(p):
        got[p] = lower_thread_priority(p)
        if sys.platform.startswith("linux") and got[p] != "unchanged":
            tid = threading.get_native_id()
            got[p, "read"] = ("idle" if os.sched_getscheduler(tid) == os.SCHED_IDLE
                              else f"nice {os.getpriority(os.PRIO_PROCESS, tid)}")

    for p in ("idle", 3, 19, 0, None):
        th = threading.Thread(target=run, args=(p,))
        th.start()
        th.join()
    assert got[0] == got[None] == "unchanged"
    if sys.platform.startswith("linux"):
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert got["idle"] == got["idle", "read"] == "idle"
        assert got[3] == got[3, "read"] == f"nice {min(19, base + 3)}"
        assert got[19] == got[19, "read"] == "nice 19"  # capped


def test_the_threads_knob_is_honoured_and_the_default_leaves_cores_to_training(tmp_path, monkeypatch):
    from mlvc import store

    repo = make_repo(tmp_path / "r", chunk_size=64 << 10)
    made: list[int] = []
    real_pipeline = trackworker.Pipeline

    def pipeline(*a, **k):
        p = real_pipeline(*a, **k)
        made.append(p.threads)
        return p

    monkeypatch.setattr(trackworker, "Pipeline", pipeline)
    storing: set[int] = set()
    real_put = store.ObjectStore.put

    def put(self, *a, **k):
        storing.add(threading.get_native_id())
        return real_put(self, *a, **k)

    monkeypatch.setattr(store.ObjectStore, "put", put)
    workers: set[int] = set()  # the worker thread stores the manifest and the commit itself
    real_write = trackworker.Writer._write

    def write(self, job):
        workers.add(threading.get_native_id())
        return real_write(self, job)

    monkeypatch.setattr(trackworker.Writer, "_write", write)
    model = tiny(width=20000)
    for n in (1, 3):
        made.clear()
        storing.clear()
        with Tracker(repo, f"run{n}", every=1, threads=n, worker="thread") as t:
            t.step(model)
        assert made == [n] and 1 <= len(storing - workers) <= n and t.threads == n
    with Tracker(repo, "dflt") as t:
        t.flush()  # the worker has started and applied its priority
    assert t.threads == tracker.default_encode_threads()
    if sys.platform.startswith("linux"):
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert t.applied_priority == f"nice {min(19, base + tracker.DEFAULT_PRIORITY)}"
    bad: Any
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(MlvcError, match="threads"):
            Tracker(repo, "bad", threads=bad)
    for bad in ("low", -1, 20, True, 2.5):
        with pytest.raises(MlvcError, match="worker_priority"):
            Tracker(repo, "bad", worker_priority=bad)


@given(cores=st.integers(1, 512))
def test_default_threads_are_fewer_than_the_cores(cores):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "cpu_count", lambda: cores)
        n = tracker.default_encode_threads()
    assert 1 <= n <= 4 and (n < cores or cores == 1)


@hsettings(max_examples=10, deadline=None)
@given(commits=st.integers(1, 6), room=st.integers(0, 2), on_full=st.sampled_from(["block", "skip"]))
def test_a_slow_worker_loses_no_commit_silently(tmp_path_factory, commits, room, on_full):
    """The worker writes a commit only when the test lets it. "block": every commit lands, each with its own
    weights, and the queue never holds more than its bound; "skip": the commits past the bound are skipped,
    each counted and warned about; a commit is never both written and skipped, nor neither."""
    repo = make_repo(tmp_path_factory.mktemp("slow"))
    model = tiny()
    one = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    room_for = max(room, 1)  # the first snapshot is always taken, even over a bound smaller than it
    gate, written = threading.Semaphore(0), threading.Semaphore(0)
    peak = [0]
    taken: list[int] = []
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        real_write, real_reserve = trackworker.Writer._write, Tracker._reserve

        def slow(self, job):
            gate.acquire()
            try:
                return real_write(self, job)
            finally:
                written.release()

        def reserve(self, nbytes):
            ok = real_reserve(self, nbytes)
            peak[0] = max(peak[0], self._pending_bytes)
            return ok

        mp.setattr(trackworker.Writer, "_write", slow)
        mp.setattr(Tracker, "_reserve", reserve)
        t = Tracker(repo, "run", every=1, on_full=on_full, max_queue_mb=room * one / (1 << 20), save_state=False,
                    worker="thread")

        def loop():
            for i in range(1, commits + 1):
                with torch.no_grad():
                    model[0].bias.fill_(i)
                if t.step(model, step=i):
                    taken.append(i)

        th = threading.Thread(target=loop)
        th.start()
        if on_full == "skip":  # never waits: it runs to the end with the worker held
            th.join(60)
        for _ in range(commits if on_full == "block" else len(taken)):
            gate.release()  # one more commit may be written
            assert written.acquire(timeout=60)
        th.join(60)
        assert not th.is_alive()
        t.close()
    assert [c.metadata["step"] for c in chain(repo, "run")] == taken == [c.step for c in t.commits]  # a root first
    assert peak[0] <= room_for * one
    assert len(taken) + t.skipped == commits and sum("is full" in str(x.message) for x in w) == t.skipped
    if on_full == "block":
        assert taken == list(range(1, commits + 1)) and t.skipped == 0
    else:
        assert taken == list(range(1, min(commits, room_for) + 1))
    for c in t.commits:  # each commit holds the weights of its own step
        assert torch.equal(repo.load(c.commit, tensors=["0.bias"])["0.bias"], torch.full((16,), float(c.step)))
        assert c.latency_s >= 0.0


# -- the worker process: faults, priority, shared memory -------------------------------------------------------

posix_only = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kills the worker process with a signal")


def test_an_error_in_the_worker_process_surfaces_with_its_traceback(repo):
    """A commit that fails in the worker process (here: its branch got checked out in the work tree meanwhile)
    is raised by the loop's next call with the worker's exception chained and its traceback noted; the run goes
    on after it."""
    model = tiny()
    t = Tracker(repo.root, "run", every=1)
    assert t.worker == "process" and t.worker_pid not in (None, os.getpid())
    t.step(model)
    t.flush()
    repo.switch("run")
    t.step(model)
    with pytest.raises(TrackerError, match="checked out here") as e:
        t.flush()
    cause = e.value.__cause__
    assert isinstance(cause, TrackerError)
    assert any(f"worker process (pid {t.worker_pid})" in n and "Traceback" in n for n in cause.__notes__)
    repo.switch("main")
    t.step(model)
    t.close()
    assert [c.metadata["step"] for c in chain(repo, "run")[1:]] == [1, 3]


@posix_only
def test_a_killed_worker_process_loses_only_what_it_had_not_written(repo):
    model = tiny()
    t = Tracker(repo.root, "run", every=1, max_queue_mb=64)
    t.step(model)
    t.flush()
    written = repo.refs.resolve("refs/heads/run")
    os.kill(t.worker_pid, signal.SIGSTOP)  # two more commits wait in the pipe...
    t.step(model)
    t.step(model)
    os.kill(t.worker_pid, signal.SIGKILL)  # ...and are lost with the process
    with pytest.raises(TrackerError, match=r"worker process \(pid \d+\) is gone .*step 2 was not written"):
        t.flush()
    t.step(model)  # the snapshot is taken; the failure comes with the worker's answer
    with pytest.raises(TrackerError, match="is gone"):  # every later commit says so too, and close() does not hang
        t.flush()
    with pytest.raises(TrackerError, match="is gone"):
        t.close()
    assert repo.refs.resolve("refs/heads/run") == written and len(t.commits) == 1
    assert repo.fsck().ok


def proc_threads(pid: int) -> dict[int, tuple[int, int]]:
    """{thread id: (policy, nice)} of every thread of a process, read from the OS."""
    return {int(tid): (os.sched_getscheduler(int(tid)), os.getpriority(os.PRIO_PROCESS, int(tid)))
            for tid in os.listdir(f"/proc/{pid}/task")}


@linux_only
@pytest.mark.parametrize("priority", ["idle", 7, 0])
def test_the_worker_process_and_all_its_threads_run_at_the_requested_priority(tmp_path, priority):
    repo = make_repo(tmp_path / "r", chunk_size=64 << 10)
    me = threading.get_native_id()
    mine = (os.sched_getscheduler(me), os.getpriority(os.PRIO_PROCESS, me))
    with Tracker(repo, "run", every=1, threads=2, worker_priority=priority) as t:
        t.step(tiny(width=20000))
        t.flush()  # the pipeline's encode threads and the store's fsync threads have run by now
        seen = proc_threads(t.worker_pid)
        # the loop's session and scheduling group: Linux's autogroup shares the CPU equally between sessions
        # whatever the nice values inside them, so a worker in a session of its own would ignore its priority
        assert os.getsid(t.worker_pid) == os.getsid(0)
        if os.path.exists("/proc/self/autogroup"):  # (empty, or absent, where the kernel runs without autogroup)
            with open(f"/proc/{t.worker_pid}/autogroup") as theirs, open("/proc/self/autogroup") as ours:
                assert theirs.read() == ours.read()  # "/autogroup-N nice K": same group, same group nice
    assert len(t.commits) == 1 and len(seen) >= 2
    if priority == "idle":
        assert all(policy == os.SCHED_IDLE for policy, _ in seen.values())
    else:
        assert all(got == (mine[0], min(19, mine[1] + priority)) for got in seen.values())
    assert (os.sched_getscheduler(me), os.getpriority(os.PRIO_PROCESS, me)) == mine  # the loop's is untouched
    want = {"idle": "idle", 0: "unchanged"}.get(priority) or f"nice {min(19, mine[1] + priority)}"
    assert t.applied_priority == want


@linux_only
def test_shared_memory_is_given_back(tmp_path):
    """Every segment a run made is unlinked by close (also when the layout changes between commits), and the
    interpreter's exit warns about none."""
    repo = make_repo(tmp_path / "r")
    script = (
        "import os, torch, mlvc\n"
        "from mlvc import trackworker\n"
        "made, create = [], trackworker.Segment.create.__func__\n"
        "def noted(cls, size, spill):\n"
        "    seg = create(cls, size, spill)\n"
        "    made.append(seg.name.partition(':')[2])\n"
        "    return seg\n"
        "trackworker.Segment.create = classmethod(noted)\n"
        f"t = mlvc.Tracker({repo.root!r}, 'run', every=1)\n"
        "for width in (4, 4, 6, 6, 8):\n"
        "    t.step(torch.nn.Linear(width, 3))\n"
        "t.flush()\n"
        "print(made, [n for n in made if n in os.listdir('/dev/shm')])\n"
        "t.close()\n"
        "print([n for n in made if n in os.listdir('/dev/shm')])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, last = out.stdout.splitlines()
    made, live = first.split("] [")
    assert made.count("psm_") == 5 and live.count("psm_") == 2  # two sets live (the queue), the others freed
    assert last == "[]"
    assert "leaked" not in out.stderr and "resource_tracker" not in out.stderr
    assert len(chain(repo, "run")) == 5


TORCH_DTYPES = ["float32", "bfloat16", "float16", "float64", "int64", "int8", "uint8", "bool"]
NUMPY_DTYPES = ["<f4", ">f4", "<i2", ">i8", "bool", "<f8"]


@st.composite
def state_dicts(draw):
    """A state_dict of torch tensors and numpy arrays of any dtype and shape (0-d, empty, non-contiguous
    views), names from a small pool so that layouts repeat, change and grow between commits."""
    out: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(["a", "b.w", "b.bias", "c", "d.0", "e"]), min_size=1, unique=True)):
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        seed = draw(st.integers(0, 2**16))
        g = torch.Generator().manual_seed(seed)
        if draw(st.booleans()):
            dt = getattr(torch, draw(st.sampled_from(TORCH_DTYPES)))
            base = torch.randint(0, 256, (*shape, 2), generator=g, dtype=torch.uint8)
            t = base[..., 0].clone() if dt == torch.uint8 else (base.float() - 128).to(dt)
            out[name] = t.transpose(0, -1) if t.dim() >= 2 and draw(st.booleans()) else t
        else:
            dt_np = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
            a = (np.random.default_rng(seed).integers(-100, 100, size=(*shape, 2))).astype(dt_np)
            out[name] = a[..., ::2].reshape(shape) if draw(st.booleans()) else np.ascontiguousarray(a[..., 0])
    return out


@hsettings(max_examples=8, deadline=None)
@given(snapshots=st.lists(state_dicts(), min_size=1, max_size=4))
def test_any_state_dict_reaches_the_worker_process_byte_for_byte(tmp_path_factory, snapshots):
    """Whatever the loop hands over (dtypes, byte orders, 0-d, empty, strided views; layouts that change between
    commits), the worker process commits exactly what a synchronous commit of the same tensors stores."""
    repo = make_repo(tmp_path_factory.mktemp("bytes"))
    background = Tracker(repo, "p", every=1, start=None, save_state=False)
    sync = Tracker(repo, "s", every=1, start=None, save_state=False, background=False)
    for sd in snapshots:
        background.step(sd)
        sync.step(sd)
    background.close()
    sync.close()

    def entries(branch):
        out = []
        for c in chain(repo, branch):
            f = repo.read_manifest(c.manifest).file("model.safetensors")
            out.append([(x.name, x.dtype, list(x.shape), x.hash) for x in f.tensors])
        return out

    assert entries("p") == entries("s") and len(entries("p")) == len(snapshots)


@posix_only
def test_the_worker_process_ends_with_a_crashed_loop(repo):
    """A loop that dies without closing its tracker (os._exit: no atexit, no flush) leaves no worker behind:
    the worker reads the end of its pipe and exits; the commit it had is written or not, never half."""
    script = (
        "import os, sys, torch, mlvc\n"
        f"t = mlvc.Tracker({repo.root!r}, 'run', every=1)\n"
        "t.step(torch.nn.Linear(4, 4))\n"
        "print(t.worker_pid, flush=True)\n"
        "os._exit(3)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    pid = int(out.stdout.split()[0])
    for _ in range(600):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        threading.Event().wait(0.1)
    else:
        pytest.fail(f"the worker process {pid} outlived its loop")
    assert len(chain(repo, "run")) in (0, 2) and repo.fsck().ok  # no branch, or HEAD + the commit


@linux_only
def test_a_shared_memory_too_small_for_a_snapshot_spills_to_a_file(repo, monkeypatch):
    """A container's /dev/shm is often 64 MiB: where shared memory cannot hold a snapshot (its pages are
    reserved up front, so this is an error and not a SIGBUS later), the snapshot goes through a file in
    .mlvc/tmp, with one warning, and commits the same bytes; the files are removed by close(). With no room
    there either, the loop's call fails with a clear error and nothing is queued."""
    import errno

    real = trackworker._reserve
    refuse = {"shm"}

    def reserve(fd, size):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ("shm" in refuse and target.startswith("/dev/shm/")) or ("file" in refuse and "/tmp/" in target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, size)

    monkeypatch.setattr(trackworker, "_reserve", reserve)
    scratch = os.path.join(repo.dir, "tmp")
    p = Tracker(repo, "p", every=1, save_state=False)
    s = Tracker(repo, "s", every=1, save_state=False, background=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for width in (4, 4, 6):
            m = tiny(seed=width, width=width)
            p.step(m)
            s.step(m)
        p.flush()
        assert any(n.startswith("tracker-") for n in os.listdir(scratch))
        p.close()
    s.close()
    assert sum("shared memory cannot hold" in str(x.message) for x in w) == 1
    assert not [n for n in os.listdir(scratch) if n.startswith("tracker-")]

    def tensors(branch):
        return [[(t.name, t.hash) for t in repo.read_manifest(c.manifest).file("model.safetensors").tensors]
                for c in chain(repo, branch)[1:]]

    assert tensors("p") == tensors("s") and len(tensors("p")) == 3

    refuse.add("file")
    t = Tracker(repo, "none", every=1)
    with pytest.raises(TrackerError, match="no room for a .* snapshot, neither in shared memory nor in"):
        t.step(tiny())
    t.close()
    assert repo.refs.resolve("refs/heads/none") is None


def test_a_worker_process_that_cannot_start_says_what_to_do(repo, monkeypatch):
    """An interpreter that cannot run the worker (here: a command that exits at once) fails the commit with an
    error that says so and names worker='thread'; nothing is written."""
    monkeypatch.setattr(trackworker, "_MAIN", "import sys; sys.exit(3)")
    t = Tracker(repo, "run", every=1)
    t.step(tiny())
    with pytest.raises(TrackerError, match=r"exited with code 3 before it started.*worker='thread'"):
        t.flush()
    with pytest.raises(TrackerError, match="is gone"):
        t.close()
    assert repo.refs.resolve("refs/heads/run") is None


def test_the_worker_process_exits_cleanly_whenever_its_pipe_closes(repo):
    """The worker ends with status 0 and nothing on stderr after "close", whether the loop's process closes the
    pipe at once, later, or never (its reader thread must not be inside a read when the interpreter ends: that
    is a fatal error that aborts the process)."""
    from mlvc.trackworker import _MAIN, WriterArgs

    args = WriterArgs(repo.root, "run", None, "train", {}, None, 1, None)
    for close_after in (0.0, 0.5, None):
        home = os.path.dirname(os.path.dirname(tracker.__file__))
        proc = subprocess.Popen([sys.executable, "-c", _MAIN, "0", home, repr(sys.path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for msg in (("init", args), ("close",)):
            pickle.dump(msg, proc.stdin)
        proc.stdin.flush()
        if close_after is not None:
            threading.Event().wait(close_after)
            proc.stdin.close()
        assert proc.wait(90) == 0
        assert proc.stderr.read() == b"", close_after
        trackworker._skip_to(proc.stdout, trackworker.WIRE_MARK)
        assert pickle.load(proc.stdout)[0] == "ready"
        if close_after is None:
            proc.stdin.close()


def test_a_worker_that_exits_badly_after_its_last_job_is_reported(repo, monkeypatch):
    monkeypatch.setattr(trackworker, "_MAIN", trackworker._MAIN + "import os; os._exit(5)\n")
    t = Tracker(repo, "run", every=1)
    t.step(tiny())
    with pytest.warns(UserWarning, match="exited with code 5 after its last job"):
        t.close()
    assert [c.metadata["step"] for c in chain(repo, "run")[1:]] == [1]


def test_reused_snapshot_buffers_hold_each_commits_own_weights(repo):
    """With the default queue (two snapshots), later commits reuse the buffers of earlier ones: each commit
    still holds the weights of its own step."""
    model = tiny()
    with Tracker(repo, "run", every=1, save_state=False) as t:
        for i in range(1, 8):
            with torch.no_grad():
                model[0].weight.fill_(i)
            t.step(model, step=i)
    for tc in t.commits:
        w = repo.load(tc.commit, tensors=["0.weight"])["0.weight"]
        assert torch.equal(w, torch.full_like(w, float(tc.step)))
    assert [tc.step for tc in t.commits] == list(range(1, 8))


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the default start method on Linux")
def test_a_process_forked_from_the_loop_exits(repo):
    """A DataLoader worker or a multiprocessing pool forked after the Tracker was made has none of its threads
    or pipes: it must exit without trying to flush the tracker (it would wait forever)."""
    import multiprocessing

    with Tracker(repo, "run", every=1) as t:
        t.step(tiny())
        child = multiprocessing.get_context("fork").Process(target=int)
        child.start()
        child.join(60)
        assert child.exitcode == 0
        t.step(tiny())
    assert len(t.commits) == 2


@posix_only
def test_ctrl_c_does_not_take_the_queued_commits_with_it(repo):
    """Ctrl-C reaches the terminal's whole process group: the worker ignores it, so the loop's `with` block
    can still write what was queued."""
    model = tiny()
    with pytest.raises(KeyboardInterrupt):
        with Tracker(repo, "run", every=1, max_queue_mb=64) as t:
            t.flush()  # the worker runs: past its start-up
            os.kill(t.worker_pid, signal.SIGSTOP)
            t.step(model)
            t.step(model)
            os.kill(t.worker_pid, signal.SIGINT)
            os.kill(t.worker_pid, signal.SIGCONT)
            raise KeyboardInterrupt
    assert [c.metadata["step"] for c in chain(repo, "run")[1:]] == [1, 2]


def test_what_the_interpreter_prints_before_the_worker_runs_is_not_the_wire(repo, tmp_path, monkeypatch):
    """A sitecustomize (or .pth file) that prints at start-up writes to the worker's stdout before the worker
    has taken it for its messages: the loop skips it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('hello from sitecustomize', flush=True)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    with Tracker(repo, "run", every=1) as t:
        t.step(tiny())
    assert len(t.commits) == 1


@pytest.mark.skipif(not hasattr(os, "nice"), reason="POSIX nice values")
@pytest.mark.parametrize("priority", ["idle", 4, 0, None])
def test_a_worker_process_elsewhere_than_linux_lowers_its_whole_nice_value(priority):
    """Off Linux a thread id names no thread, so a worker process lowers the nice value of the whole process
    (read back from the OS, in a process of its own: a raised nice value cannot be lowered again); the Windows
    priority class it would be started with follows the same levels."""
    code = ("import os, sys; sys.platform = 'darwin'; from mlvc.util import lower_process_priority as low; "
            f"print(low({priority!r})); print(os.getpriority(os.PRIO_PROCESS, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    applied, nice = out.stdout.split("\n")[:2]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if priority in (0, None):
        assert applied == "unchanged" and int(nice) == base
    else:
        want = min(19, base + (19 if priority == "idle" else priority))
        assert applied == f"nice {want}" and int(nice) == want
    from mlvc.util import windows_priority_class

    assert windows_priority_class(priority) == {"idle": "IDLE_PRIORITY_CLASS", 4: "BELOW_NORMAL_PRIORITY_CLASS"}.get(
        priority)
    assert windows_priority_class(15) == "IDLE_PRIORITY_CLASS"
