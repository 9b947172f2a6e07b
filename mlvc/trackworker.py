"""The worker side of mlvc.Tracker: what writes a run's commits, and where it runs.

`Writer` writes one job at a time (a commit, metrics for a commit, a flush) on a Repo of its own and returns
what changed (`Result`): the Tracker in the training process keeps its list of commits from those results, in
every mode. It runs in one of three places:
- in the loop's own thread (Tracker(background=False)): the synchronous baseline;
- `ThreadWorker`: a thread of the training process (worker="thread");
- `ProcessWorker`: a process of its own (worker="process", the default), started with this interpreter
  (`python -c _MAIN`, never by forking the loop: it sets its priority, then serves), fed by a pipe. Snapshots
  reach it through shared memory (`SharedSnapshot`: one segment per snapshot, the tensors at aligned offsets),
  so nothing is copied or pickled but a few names. A worker thread shares the interpreter's lock (the GIL) with
  the training thread: each time it holds it (its Python code, copies that keep the lock) the loop waits, and a
  worker at a low CPU priority holding it while preempted stalls the loop until the scheduler runs it again. A
  process shares nothing, so its low priority is only what the OS makes of it (docs/hooks.md, "Scheduling").

The wire: pickled tuples over the child's stdin and a duplicate of its stdout (fd 1 itself is pointed at stderr,
so whatever the worker prints cannot corrupt it; what the interpreter printed before that, from a
sitecustomize or a .pth file, is skipped up to WIRE_MARK). To the worker: ("init", writer arguments),
("job", seq, Job), ("detach", segment name), ("close",). From it: ("ready", applied priority, error or None) once,
then ("done", seq, Result or None, error or None) per job, in order. An error crosses as the pickled exception
when it survives a round trip, else as its type name and text; its traceback in the worker comes as a note.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .chunking import Pipeline
from .errors import MlvcError, RefConflictError, TrackerError
from .objects import Commit, Manifest
from .ops.commit import _buffer, _code_revision
from .refs import HEADS, TAGS
from .repo import Repo
from .runtime import defer_full_gc
from .snapshot import History, NamedBuffer, snapshot_buffers
from .util import lower_thread_priority, utc_now, windows_priority_class

MARK = "tracker"  # commit metadata key naming the run: what the keep-policy may drop
ALIGN = 64  # offsets of the tensors in a shared snapshot: a cache line, more than any dtype needs
WIRE_MARK = b"\0mlvc-tracker-wire\0"  # the worker's first bytes on the wire: anything before it is not the wire's


@dataclass(frozen=True)
class KeepPolicy:
    """Which commits of a run stay on its branch: the last `last` (None: every one), the best by `best` (a
    metric given to `step`/`record`, lower is better unless `higher_is_better`), every tagged commit, every
    commit another branch names, and every commit made with `keep=True`. The others are dropped from the
    branch (the kept ones are re-parented: new ids, same manifests; their tags and ledger rows follow)."""

    last: int | None = None
    best: str | None = None
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        if self.last is not None and (type(self.last) is not int or self.last < 1):
            raise MlvcError(f"KeepPolicy(last=...) must be a whole number of commits >= 1, not {self.last!r}")


@dataclass
class TrackedCommit:
    step: int
    commit: str  # its id (updated when a keep-policy rewrite re-parents it)
    metrics: dict[str, float] = field(default_factory=dict)
    latency_s: float = 0.0  # from the snapshot (the step() call) to the branch naming the commit


@dataclass
class Job:
    """One unit of the worker's work, in the order the loop asked for it. `files`: (path, tensors, safetensors
    metadata) per file, the tensors as (name, tensor or array) pairs in the loop's process, or as NamedBuffer
    once they sit where the writer reads them."""

    kind: str  # "commit", "record" or "flush"
    step: int = 0
    message: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, list[Any], dict[str, str] | None]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    nbytes: int = 0
    taken: float = 0.0  # time.monotonic() of the snapshot (one clock for every process of the machine)


@dataclass
class Result:
    """What a job changed, for the loop's list of commits: a new commit (step, id, metrics, latency), the ids a
    keep-policy rewrote ({old: new, or None when dropped}), metrics recorded for a commit (id, metrics)."""

    new: TrackedCommit | None = None
    remap: dict[str, str | None] = field(default_factory=dict)
    recorded: tuple[str, dict[str, float]] | None = None

    def apply(self, commits: list[TrackedCommit]) -> list[TrackedCommit]:
        if self.new is not None:
            commits.append(TrackedCommit(self.new.step, self.new.commit, dict(self.new.metrics), self.new.latency_s))
        if self.recorded is not None:
            cid, metrics = self.recorded
            for t in commits:
                if t.commit == cid:
                    t.metrics.update(metrics)
        if not self.remap:
            return commits
        for t in commits:
            t.commit = self.remap.get(t.commit, t.commit)  # type: ignore[assignment]
        return [t for t in commits if t.commit is not None]


@dataclass(frozen=True)
class WriterArgs:
    root: str
    branch: str
    start: str | None  # where a new branch begins (None: a root commit)
    task: str
    higher_is_better: dict[str, bool]
    keep: KeepPolicy | None
    threads: int | None
    delta_cache_mb: int | None


class Writer:
    """Writes a run's commits on a Repo of its own (the caller's is never touched): each commit onto the run's
    branch by compare-and-swap on that ref alone, its metrics into the ledger, then the keep-policy."""

    def __init__(self, args: WriterArgs):
        self.args = args
        self.repo = Repo.open(args.root)
        self.commits: list[TrackedCommit] = []
        self._manifests: dict[str, Manifest] = {}
        self._code: dict[str, Any] | None = None

    def run(self, job: Job) -> Result:
        if job.kind == "commit":
            return self._write(job)
        if job.kind == "record":
            return self._record_for(job.step, job.metrics)
        return Result()  # a flush: everything before it is written

    def _manifest(self, cid: str | None) -> Manifest | None:
        if cid is None:
            return None
        mid = self.repo.read_commit(cid).manifest
        if mid not in self._manifests:
            self._keep_manifest(mid, self.repo.read_manifest(mid))
        return self._manifests[mid]

    def _keep_manifest(self, mid: str, manifest: Manifest) -> None:
        """Keep the last five trees read or written, for their entries and delta bases. The store forgets their
        small tensors' bytes, except the last tree's and its parent's (Repo.write_manifest): no small tensor's
        bytes are read through them (a job's files are ingested again, and their small tensors held)."""
        self._manifests[mid] = manifest
        while len(self._manifests) > 5:
            self._manifests.pop(next(iter(self._manifests)))

    def _size_cache(self, nbytes: int) -> None:
        """Room for three versions of every chunk (the new one, its parent and grandparent bases)."""
        mb = self.args.delta_cache_mb
        want = (mb << 20) if mb else 3 * nbytes + 3 * self.repo.config.chunk_size
        if mb != 0 and self.repo.store.cache_bytes < want:
            self.repo.store.cache_bytes = want

    def _write(self, job: Job) -> Result:
        repo, branch = self.repo, self.args.branch
        check_not_checked_out(repo, branch)
        ref = HEADS + branch
        if self._code is None:
            self._code = _code_revision(repo.root)
        self._size_cache(job.nbytes)
        with repo.writing():
            tip = repo.refs.resolve(ref)
            parent = tip if tip is not None else self.args.start
            pm = self._manifest(parent)
            pc = repo.read_commit(parent) if parent else None
            gm = self._manifest(pc.parents[0]) if pc and pc.parents else None
            # carried files were chunked at the parent's chunk size; a manifest has one, so new files use it too
            chunk_size = pm.chunk_size if pm else repo.config.chunk_size
            pipe = Pipeline(repo.store, chunk_size, self.args.threads, tmp_dir=os.path.join(repo.dir, "tmp"))
            pipe.remember = job.nbytes <= repo.store.cache_bytes
            files = {f.path: f for f in pm.files} if pm else {}
            with pipe:
                for rel, items, st_meta in job.files:
                    history = History(pm.file(rel) if pm else None, gm.file(rel) if gm else None)
                    buffers = [b if isinstance(b, NamedBuffer) else _buffer(*b) for b in items]
                    files[rel] = snapshot_buffers(pipe, rel, buffers, st_meta, history)
            roots = list(pm.roots) if pm else []
            roots += [rel for rel, _, _ in job.files if not any(_under(rel, r) for r in roots)]
            manifest = Manifest(sorted(roots), list(files.values()), chunk_size)
            mid = repo.write_manifest(manifest, pm)
            self._keep_manifest(mid, manifest)
            meta = {**job.metadata, **{k: v for k, v in self._code.items() if k not in job.metadata}}
            c = Commit(mid, [parent] if parent else [], repo.author(), utc_now(), job.message, meta)
            repo.write_commit(c)
            repo.store.flush()  # every object durable before the ref points at it
            repo.refs.set_if_equals(ref, tip, c.id, who=repo.author(), message=f"tracker: {job.message}")
        new = TrackedCommit(job.step, c.id, dict(job.metrics), time.monotonic() - job.taken)
        self.commits.append(new)  # the loop's list gets its own copy (Result.apply)
        if job.metrics:
            self._record(c.id, job.metrics, job.step)
        remap: dict[str, str | None] = {}
        if self.args.keep is not None:
            remap = _apply_keep(repo, branch, self.args.keep, {t.commit: t.metrics for t in self.commits})
            self.commits = Result(remap=remap).apply(self.commits)
        return Result(new=new, remap=remap)

    def _record_for(self, step: int, metrics: dict[str, float]) -> Result:
        tc = next((t for t in reversed(self.commits) if t.step <= step), None)
        if tc is None:
            raise TrackerError(f"no commit of this tracker at or before step {step} to record metrics for")
        tc.metrics.update(metrics)
        self._record(tc.commit, metrics, tc.step)
        return Result(recorded=(tc.commit, dict(metrics)))

    def _record(self, cid: str, metrics: dict[str, float], step: int) -> None:
        directions = {k: v for k, v in self.args.higher_is_better.items() if k in metrics}
        self.repo.record_eval(cid, self.args.task, metrics, higher_is_better=directions or None,
                              notes=f"{self.args.branch} step {step}")


def check_not_checked_out(repo: Repo, branch: str) -> None:
    if repo.head_branch() == branch:
        raise TrackerError(f"branch {branch} is checked out here; a run commits to a branch of its own (give "
                           f"another branch, or `mlvc switch` away from {branch})")


def _under(rel: str, root: str) -> bool:
    return root == "." or rel == root or rel.startswith(root.rstrip("/") + "/")


# -- where the writer runs -----------------------------------------------------------------------------------

Finish = Callable[[Any, "Result | None", "BaseException | None"], None]  # (tag, ...): once per job, in order


class ThreadWorker:
    """The writer in a thread of the loop's process (worker="thread")."""

    def __init__(self, args: WriterArgs, priority: str | int | None, finish: Finish, name: str):
        self._writer = Writer(args)
        self._priority, self._finish = priority, finish
        self.applied_priority = "unchanged"
        self.pid: int | None = None
        self._queue: queue.SimpleQueue[tuple[Job, Any, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job, tag: Any, events: list[Any] | None = None) -> None:
        """Write `job` after the ones before it (once `events`, CUDA events, have passed); finish(tag, ...)."""
        self._queue.put((job, tag, events or []))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        # The pipeline's encode threads and the store's fsync threads are started by this thread, so they
        # inherit what it applies here (Linux: scheduling policy and nice value are per thread, inherited).
        self.applied_priority = lower_thread_priority(self._priority)
        while (item := self._queue.get()) is not None:
            job, tag, events = item
            try:
                for event in events:
                    event.synchronize()
                result = self._writer.run(job)
            except BaseException as e:  # surfaced by the loop's next call and by close()
                self._finish(tag, None, e)
            else:
                self._finish(tag, result, None)


class ProcessWorker:
    """The writer in a process of its own (worker="process"): see the module's docstring for the wire."""

    def __init__(self, args: WriterArgs, priority: str | int | None, finish: Finish, name: str):
        self._finish = finish
        self.applied_priority = "unchanged"  # until the worker says what it applied
        if not sys.executable:
            raise TrackerError("cannot start the tracker's worker process: this interpreter does not say where its "
                               "executable is (sys.executable is empty); pass worker='thread'")
        try:
            home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the worker runs this very mlvc
            # A Ctrl-C at the terminal is the loop's to handle (its `with Tracker(...)` still writes what was
            # queued): the worker ignores SIGINT (_MAIN), and on Windows gets a process group of its own. Not a
            # session of its own on POSIX: Linux's autogroup scheduling gives every session an equal share of the
            # CPU, whatever the nice values inside it (measured: +65 % step time instead of +6 %).
            self._proc = subprocess.Popen([sys.executable, "-c", _MAIN, repr(priority), home, repr(sys.path)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                          creationflags=_windows_priority(priority)
                                          | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        except OSError as e:
            raise TrackerError(f"cannot start the tracker's worker process ({e}); pass worker='thread'") from e
        self.pid = self._proc.pid
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Job, Any]] = {}  # (job, tag) sent or about to be, by seq
        self._seq = 0
        self._dead: str | None = None  # why the worker is gone, once it is
        self._started = False  # it said it is ready
        self._lost = False  # a job failed because the worker was gone
        self._out: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        try:
            self._write(pickle.dumps(("init", args), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as e:
            self._proc.kill()
            self._proc.wait()
            raise TrackerError(f"the tracker's worker process exited at once ({e}); pass worker='thread'") from e
        self._sender = threading.Thread(target=self._send_loop, name=f"{name}-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-read", daemon=True)
        self._sender.start()
        self._reader.start()

    def submit(self, job: Job, tag: Any, events: list[Any] | None = None) -> None:
        """As ThreadWorker.submit; the job's tensors are what SharedSnapshot.handed gives (where they sit)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._pending[seq] = (job, tag)
        self._out.put(("job", seq, job, events))

    def detach(self, segment: str) -> None:
        """The worker unmaps a segment the loop is about to free (after every job that reads it)."""
        self._out.put(("detach", segment))

    def close(self) -> None:
        self._out.put(("close",))
        self._out.put(None)
        self._sender.join()
        self._reader.join()
        code = self._proc.wait()
        if code != 0 and self._started and not self._lost:  # else the lost jobs' errors said so already
            import warnings

            warnings.warn(f"mlvc: the tracker's worker process (pid {self.pid}) exited with code {code} after "
                          "its last job (what it wrote is complete; its stderr says why)", stacklevel=3)

    def _write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)
        self._proc.stdin.flush()

    def _send_loop(self) -> None:
        # A thread of its own: the loop never waits on a full pipe or on the CUDA copies of a snapshot.
        while (msg := self._out.get()) is not None:
            events: list[Any] = []
            if msg[0] == "job":
                msg, events = msg[:3], msg[3] or []
            try:
                for event in events:
                    event.synchronize()  # the snapshot's copies are done before the worker reads them
                data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as e:  # that job's own failure: nothing of it was written to the pipe
                if msg[0] == "job":
                    self._fail(msg[1], e)
                continue
            if self._dead is None:
                try:
                    self._write(data)
                except OSError as e:  # a broken pipe: the worker is gone (the reader says why, if it can)
                    self._dead = f"{type(e).__name__}: {e}"
            if self._dead is not None and msg[0] == "job":
                self._fail(msg[1])
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass

    def _read_loop(self) -> None:
        assert self._proc.stdout is not None
        _skip_to(self._proc.stdout, WIRE_MARK)  # what the interpreter printed before the worker took fd 1
        while True:
            try:
                msg = pickle.load(self._proc.stdout)
            except EOFError:  # the worker exited (closed, or died)
                break
            except Exception as e:  # not a message of the wire: stop it rather than wait on it forever
                self._dead = f"what it sent could not be read ({type(e).__name__}: {e})"
                self._proc.kill()
                break
            if msg[0] == "ready":
                self.applied_priority, self._started = msg[1], True
                if msg[2] is not None:
                    self._dead = self._dead or f"it could not start: {_error(msg[2], self.pid)}"
            elif msg[0] == "done":
                with self._lock:
                    _, tag = self._pending.pop(msg[1])
                self._finish(tag, msg[2], None if msg[3] is None else _error(msg[3], self.pid))
        code = self._proc.wait()
        if not self._started:  # this interpreter could not run it (a frozen executable, a broken environment)
            self._dead = (f"it exited with code {code} before it started, its error above on stderr; pass "
                          "worker='thread' where the interpreter cannot start a worker process")
        self._dead = self._dead or f"it exited with code {code}"
        with self._lock:
            left = sorted(self._pending)
        for seq in left:
            self._fail(seq)

    def _fail(self, seq: int, error: BaseException | None = None) -> None:
        """Job `seq` ends without the worker: with `error` (its own), else because the worker is gone."""
        with self._lock:
            job, tag = self._pending.pop(seq, (None, None))
        if job is None:
            return
        if error is None:
            self._lost = True
            what = f"step {job.step}" if job.kind == "commit" else f"the {job.kind} after step {job.step}"
            error = TrackerError(f"the tracker's worker process (pid {self.pid}) is gone ({self._dead}): {what} "
                                 "was not written; the commits written before it are complete")
        self._finish(tag, None, error)


# The worker process's command (argv: priority, the folder holding the loop's mlvc, the loop's sys.path). First the
# wire: a copy of fd 1, and fd 1 pointed at stderr, so that nothing an import prints can reach the wire. Ctrl-C
# (SIGINT to the terminal's whole process group) is the loop's to handle: the worker ignores it, so that the loop's
# `with Tracker(...)` can still write what was queued. It sees what the loop could import (the loop's sys.path
# entries it lacks, after its own), runs the loop's mlvc (that folder first unless `import mlvc` finds it there
# anyway: a loop that put a checkout on its path must not talk to an older installed copy), and sets its
# priority before anything heavy is imported (every thread started later, numpy's BLAS pools included, inherits
# it), then serves.
_MAIN = """
import os, signal, sys
wire = os.dup(1)
os.dup2(2, 1)
sys.stdout = sys.stderr
signal.signal(signal.SIGINT, signal.SIG_IGN)
import ast, importlib.util
priority, home, path = ast.literal_eval(sys.argv[1]), sys.argv[2], ast.literal_eval(sys.argv[3])
sys.path.extend(p for p in path if p not in sys.path)
spec = importlib.util.find_spec("mlvc")
if spec is None or spec.origin is None or os.path.dirname(os.path.dirname(spec.origin)) != home:
    sys.path.insert(0, home)
import mlvc.util
applied = mlvc.util.lower_process_priority(priority)
import mlvc.trackworker
mlvc.trackworker.serve(applied, wire)
"""


def serve(applied: str, wire: int) -> None:
    """The worker process's main (`applied`: the priority it runs at; `wire`: the fd its messages go to): see
    the module's docstring."""
    out = os.fdopen(wire, "wb")
    out.write(WIRE_MARK)
    inp = sys.stdin.buffer

    def send(msg: tuple[Any, ...]) -> None:
        pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    _, args = pickle.load(inp)
    defer_full_gc()  # and a full collection after each job (_serve_jobs)
    try:
        writer = Writer(args)
    except BaseException as e:
        send(("ready", applied, _pack(e)))
        return
    send(("ready", applied, None))
    msgs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()

    def read() -> None:  # drains the pipe while a job runs, so the loop never waits to write to it
        while True:
            try:
                msgs.put(pickle.load(inp))
            except Exception:  # EOF: the loop's process closed the pipe, or died
                msgs.put(None)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _serve_jobs(writer, msgs, send)
    finally:
        # The reader must not be inside a read of stdin when the interpreter finalizes (a fatal error: the
        # buffered reader's lock is held); the loop's process closes the pipe right after "close", so it ends
        # soon. Should the pipe stay open, every commit is written and durable by now: leave without finalizing.
        reader.join(5)
        if reader.is_alive():
            sys.stderr.flush()
            os._exit(0)


def _serve_jobs(writer: Writer, msgs: queue.SimpleQueue, send: Callable[[tuple[Any, ...]], None]) -> None:
    segments: dict[str, Segment] = {}
    while (msg := msgs.get()) is not None and msg[0] != "close":
        if msg[0] == "detach":
            seg = segments.pop(msg[1], None)
            if seg is not None:
                seg.close()
            continue
        seq, job = msg[1], msg[2]
        try:
            job.files = [(rel, [NamedBuffer(n, dt, list(shape), _segment(segments, seg).buf[off:off + size])
                                for n, dt, shape, seg, off, size in items], meta) for rel, items, meta in job.files]
            result = writer.run(job)
        except BaseException as e:
            send(("done", seq, None, _pack(e)))
        else:
            send(("done", seq, result, None))
        finally:
            job.files = []
            gc.collect()  # what this commit left in cycles, while the loop trains (no full collection in a job)


def _skip_to(f: Any, mark: bytes) -> None:
    """Read `f` up to and including `mark` (or to its end)."""
    seen = b""
    while not seen.endswith(mark):
        b = f.read(1)
        if not b:
            return
        seen = (seen + b)[-len(mark):]


def _segment(segments: dict[str, Segment], name: str) -> Segment:
    if name not in segments:
        segments[name] = Segment.attach(name)
    return segments[name]


def _pack(e: BaseException) -> tuple[bytes | None, str, str, str]:
    """An exception for the wire: pickled when it survives a round trip, with its type, text and traceback."""
    tb = "".join(traceback.format_exception(e))
    try:
        blob: bytes | None = pickle.dumps(e)
        pickle.loads(blob)  # type: ignore[arg-type]
    except Exception:
        blob = None
    return blob, type(e).__name__, str(e), tb


def _error(packed: tuple[bytes | None, str, str, str], pid: int | None) -> BaseException:
    blob, name, text, tb = packed
    e: BaseException
    try:
        e = pickle.loads(blob) if blob is not None else TrackerError(f"{name}: {text}")
    except Exception:
        e = TrackerError(f"{name}: {text}")
    e.add_note(f"raised in the tracker's worker process (pid {pid}):\n{tb.rstrip()}")
    return e


# -- shared-memory snapshots -----------------------------------------------------------------------------------

class Segment:
    """Memory that the loop's process and the worker process both map, named for the wire: shared memory
    ("shm:NAME"), or a file in the repository's scratch folder ("file:PATH") where shared memory cannot hold
    it. The pages are reserved when it is made (posix_fallocate, where the OS has it): a container's /dev/shm
    (64 MiB by default under Docker) would otherwise accept the segment and kill the loop with SIGBUS at the
    first page it cannot back."""

    def __init__(self, name: str, buf: memoryview, release: Callable[[], None], remove: Callable[[], None]):
        self.name, self.buf, self._release, self._remove = name, buf, release, remove
        self.spilled: str | None = None  # why it is a file, when it is one

    @classmethod
    def create(cls, size: int, spill_dir: str) -> Segment:
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(create=True, size=size)
        try:
            _reserve(getattr(shm, "_fd", -1), size)
        except OSError as e:
            shm.close()
            shm.unlink()
            seg = cls._file(size, spill_dir)
            seg.spilled = f"shared memory cannot hold {size / 2**20:.0f} MiB: {e.strerror or e}"
            return seg
        assert shm.buf is not None
        return cls("shm:" + shm.name, shm.buf, shm.close, shm.unlink)

    @classmethod
    def _file(cls, size: int, folder: str) -> Segment:
        import mmap
        import tempfile

        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="tracker-", suffix=".snapshot", dir=folder)
        try:
            _reserve(fd, size)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except OSError as e:
            os.unlink(path)
            raise TrackerError(f"no room for a {size / 2**20:.0f} MiB snapshot, neither in shared memory nor in "
                               f"{folder} ({e.strerror or e}): free some, or pass worker='thread'") from e
        finally:
            os.close(fd)
        return cls("file:" + path, memoryview(mm), mm.close, lambda: os.unlink(path))

    @classmethod
    def attach(cls, name: str) -> Segment:
        """The worker's mapping of a segment the loop made (and will remove)."""
        kind, _, where = name.partition(":")
        if kind == "file":
            import mmap

            fd = os.open(where, os.O_RDWR)
            try:
                mm = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            return cls(name, memoryview(mm), mm.close, lambda: None)
        from multiprocessing import resource_tracker, shared_memory

        # The loop's process made the segment and unlinks it. Python < 3.13 registers an attached segment with
        # this process's resource tracker (POSIX), which would unlink it when this process exits.
        if sys.version_info >= (3, 13):
            shm = shared_memory.SharedMemory(where, track=False)  # type: ignore[call-arg,unused-ignore]
        else:
            shm = shared_memory.SharedMemory(where)
            if os.name == "posix":
                resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        assert shm.buf is not None
        return cls(name, shm.buf, shm.close, lambda: None)

    def close(self) -> None:
        """Unmap it here (when no view of it is left: else at exit)."""
        buf, self.buf = self.buf, memoryview(b"")
        try:
            buf.release()
            self._release()
        except BufferError:
            pass

    def remove(self) -> None:
        """Remove its name (the loop's side, once the worker is done with it); mappings stay valid."""
        try:
            self._remove()
        except FileNotFoundError:
            pass


def _reserve(fd: int, size: int) -> None:
    if fd >= 0 and size and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)


class SharedSnapshot:
    """The host buffers of one snapshot in one Segment that a worker process maps: every tensor at an aligned
    offset, as a torch tensor or numpy array viewing the segment (what the loop copies into), and as the (name,
    dtype, shape, segment, offset, size) the worker reads (`handed`). Reused while the layout (names, dtypes,
    shapes) stays the same. `pin`: register the segment with CUDA (page-locked), so that copies from the GPU
    into it are asynchronous DMA; where CUDA refuses, the copies are synchronous ones into pageable memory.
    `spill_dir`: where the segment goes when shared memory cannot hold it (`spilled` then says why)."""

    def __init__(self, layout: tuple[tuple[int, str, str, tuple[int, ...], int, Any], ...], pin: bool,
                 spill_dir: str):
        self.layout = layout
        offsets, total = [], 0
        for *_, nbytes, _ in layout:
            offsets.append(total)
            total += -(-nbytes // ALIGN) * ALIGN
        self.segment = Segment.create(max(total, ALIGN), spill_dir)
        self.spilled = self.segment.spilled
        self.pinned = False
        self.views: dict[tuple[int, str], Any] = {}
        self._wire: dict[tuple[int, str], tuple[str, str, list[int], str, int, int]] = {}
        try:
            self.pinned = pin and _cuda_register(self.segment.buf, True)
            for (group, name, dtype, shape, nbytes, like), off in zip(layout, offsets, strict=True):
                self.views[(group, name)] = _view(self.segment.buf, off, nbytes, shape, like)
                self._wire[(group, name)] = (name, dtype, list(shape), self.segment.name, off, nbytes)
        except BaseException:
            self.free()
            raise

    def handed(self, group: int, name: str) -> tuple[str, str, list[int], str, int, int]:
        """What the worker is given for a tensor: where it sits in the segment."""
        return self._wire[(group, name)]

    @property
    def name(self) -> str:
        return self.segment.name

    def free(self) -> None:
        self.views.clear()
        if self.pinned:
            _cuda_register(self.segment.buf, False)
        self.segment.close()
        self.segment.remove()


def snapshot_layout(groups: list[list[tuple[str, Any]]]) -> tuple[tuple[int, str, str, tuple[int, ...], int, Any], ...]:
    """(group, name, mlvc dtype, shape, bytes, torch dtype or numpy dtype) of every tensor of a snapshot;
    FormatError for a dtype safetensors cannot hold (refused in the loop's thread)."""
    from .dtypes import from_numpy, from_torch
    from .errors import FormatError

    out = []
    for g, items in enumerate(groups):
        for name, v in items:
            try:
                if is_torch(v):
                    out.append((g, name, from_torch(v.dtype), tuple(v.shape), v.numel() * v.element_size(), v.dtype))
                else:
                    import numpy as np

                    a = np.asarray(v)
                    le = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
                    out.append((g, name, from_numpy(le), tuple(a.shape), a.nbytes, le))
            except TypeError as e:
                raise FormatError(name, str(e)) from None
    return tuple(out)


def is_torch(v: Any) -> bool:
    """A torch tensor (or Parameter), told without importing torch."""
    return type(v).__module__.startswith("torch") and hasattr(v, "element_size")


def _windows_priority(priority: str | int | None) -> int:
    """Popen creation flags that start the worker at a lower priority class on Windows (0 elsewhere)."""
    name = windows_priority_class(priority) if sys.platform == "win32" else None
    return int(getattr(subprocess, name, 0)) if name else 0


def _view(buf: memoryview, off: int, nbytes: int, shape: tuple[int, ...], like: Any) -> Any:
    """A C-contiguous tensor (torch dtype) or array (numpy dtype) of `shape` over buf[off:off + nbytes]."""
    import numpy as np

    if isinstance(like, np.dtype):
        return np.frombuffer(buf, dtype=like, count=nbytes // like.itemsize if like.itemsize else 0,
                             offset=off).reshape(shape)
    import torch

    if nbytes == 0:
        return torch.empty(shape, dtype=like)
    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=off).view(like).view(shape)


_CUDA_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: page-locked for every device, not only the current one


def _cuda_register(buf: memoryview, on: bool) -> bool:
    """Page-lock (or release) a segment's memory for CUDA; False where CUDA is absent or refuses."""
    try:
        import ctypes

        import torch

        if not torch.cuda.is_available():
            return False
        cudart = torch.cuda.cudart()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        err = (cudart.cudaHostRegister(addr, len(buf), _CUDA_HOST_REGISTER_PORTABLE) if on
               else cudart.cudaHostUnregister(addr))
        return int(err) == 0
    except Exception:
        return False


# -- keep-policies -----------------------------------------------------------------------------------------

def _apply_keep(repo: Repo, branch: str, policy: KeepPolicy,
                known: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Drop the run's commits the policy does not keep from `branch`: the kept ones after the first dropped
    one are written again with new parents (same manifest, message, time and metadata), the branch and the
    tags on them move by compare-and-swap, and their ledger rows are copied to the new ids. Returns
    {old id: new id, or None when dropped}."""
    import dataclasses

    ref = HEADS + branch
    tip = repo.refs.resolve(ref)
    chain: list[Commit] = []
    cid = tip
    while cid:
        c = repo.read_commit(cid)
        mark = c.metadata.get(MARK)
        if not isinstance(mark, dict) or mark.get("branch") != branch:
            break  # where the run began: what lies below is not the tracker's to drop
        chain.append(c)
        cid = c.parents[0] if c.parents else None
    chain.reverse()
    ids = {c.id for c in chain}
    tags = {n: t for n, t in repo.tags().items() if t in ids}
    keep = {c.id for c in (chain if policy.last is None else chain[-policy.last:])}
    keep |= set(tags.values()) | {t for n, t in repo.branches().items() if n != branch and t in ids}
    keep |= {c.id for c in chain if c.metadata[MARK].get("keep")}
    if policy.best:
        scored = [(s, i, c.id) for i, c in enumerate(chain)
                  if (s := known.get(c.id, {}).get(policy.best, c.metadata.get("metrics", {}).get(policy.best)))
                  is not None]
        if scored:
            sign = -1 if policy.higher_is_better else 1
            keep.add(min(scored, key=lambda x: (sign * x[0], x[1]))[2])
    first = next((i for i, c in enumerate(chain) if c.id not in keep), None)
    if first is None:
        return {}
    remap: dict[str, Any] = {}
    parent = chain[first].parents[0] if chain[first].parents else None
    with repo.writing():
        for c in chain[first:]:
            if c.id not in keep:
                remap[c.id] = None
                continue
            nc = Commit(c.manifest, ([parent] if parent else []) + c.parents[1:], c.author, c.time, c.message,
                        c.metadata)
            parent = remap[c.id] = repo.write_commit(nc)
        repo.store.flush()
        if repo.ledger.parts():
            rows = [dataclasses.replace(r, commit=remap[r.commit], row_id="") for r in repo.ledger.records()
                    if remap.get(r.commit)]
            if rows:
                repo.ledger.append(rows)
        dropped = sum(v is None for v in remap.values())
        note = f"tracker keep-policy: dropped {dropped} commit(s), re-parented {len(remap) - dropped}"
        assert parent is not None  # the tip is always kept (policy.last >= 1), so something was written
        try:
            repo.refs.set_if_equals(ref, tip, parent, who=repo.author(), message=note)
        except RefConflictError as e:
            raise TrackerError(f"branch {branch} moved while the keep-policy rewrote it ({e}); nothing was "
                               "dropped") from None
        moved = [TAGS + name for name, old in tags.items() if old in remap]  # below the first dropped: unchanged
        for name in moved:
            old = tags[name[len(TAGS):]]
            repo.refs.set_if_equals(name, old, remap[old], who=repo.author(), message=note)
        # What the policy dropped must become collectable: the reflog lines that name a commit of the old chain
        # (dropped, or written again under a new id) go, or gc would keep every dropped checkpoint through them.
        # The rewrite itself stays on record as one line naming only the new tip.
        gone = set(remap)
        for r in [ref, *moved]:
            repo.refs.expire_log(r, lambda e: e.old in gone or e.new in gone)
        repo.refs.append_log(ref, parent, parent, repo.author(), note)
    return remap
