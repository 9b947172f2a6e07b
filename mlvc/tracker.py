"""Training-loop Tracker: commit every N steps from a training loop, in the background.

The training thread only copies the tensors to host memory (into buffers it reuses: pinned ones, with
non-blocking copies, when the tensors are on CUDA) and returns; a worker thread hashes, encodes and writes
the commit, records its metrics in the ledger and applies the keep-policy. Commits go to the run's own branch
by compare-and-swap on that ref alone: HEAD, the work tree and `mlvc status` are never touched. Consecutive
commits of one process find their delta bases in the store's base cache, which the Tracker sizes to hold the
last three versions (parent and grandparent are the bases), so nothing is decoded to delta-code a commit.

A commit holds the model at `path` (model.safetensors) and, unless `save_state=False`, the training state at
`training_state.safetensors`: the optimizer's (and scheduler's) tensors, their plain values as JSON in the
file's metadata, and the RNG states (torch, CUDA, numpy, Python), so `Tracker.resume` continues exactly.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import random
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .chunking import Pipeline
from .errors import FormatError, MlvcError, RefConflictError, TrackerError
from .objects import Commit, Manifest
from .ops.commit import _buffer, _code_revision
from .refs import HEADS, TAGS, check_name
from .repo import Repo
from .snapshot import History, snapshot_buffers
from .util import canonical_json, utc_now

STATE_PATH = "training_state.safetensors"
STATE_KEY = "mlvc.training_state"  # the safetensors metadata key holding the plain values (JSON)
MARK = "tracker"  # commit metadata key naming the run: what the keep-policy may drop
IDLE = "idle"  # worker_priority: Linux SCHED_IDLE
MAX_NICE = 19
DEFAULT_PRIORITY = MAX_NICE  # measured: docs/benchmarks.md, "training-loop overhead"


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
class _Job:
    kind: str  # "commit" or "record"
    step: int = 0
    message: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, list[tuple[str, Any]], dict[str, str] | None]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    event: Any = None  # a CUDA event the copies wait on
    buffers: list[dict[str, Any]] = field(default_factory=list)  # host buffer sets to give back
    nbytes: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    taken: float = 0.0  # time.monotonic() of the snapshot


_LIVE: weakref.WeakSet[Tracker] = weakref.WeakSet()


def _close_all() -> None:  # a normal interpreter exit flushes every open tracker (errors still raise)
    for t in list(_LIVE):
        t.close()


# At exit, concurrent.futures refuses new work from its own exit hook, which threading runs before atexit's: the
# flush must run before it. threading's hooks run last-registered first, and concurrent.futures registered
# its own when mlvc.chunking imported it, so this one comes first (atexit where threading has no such hook).
getattr(threading, "_register_atexit", atexit.register)(_close_all)


class Tracker:
    """Commit a model every `every` steps from a training loop (see docs/hooks.md).

    `background=True`: `step` copies the tensors to host memory and returns; a worker commits. At most
    `max_queue_mb` of snapshots wait (default: room for two); when full, `on_full="block"` waits for the
    worker and `"skip"` skips that commit with a warning. A worker error is raised by the next call and by
    `close()` (TrackerError, the cause chained). `start`: where a new branch begins (default HEAD; None: a root
    commit). `delta_cache_mb`: memory for the delta bases (default: three checkpoints; 0 keeps core.cache_mb).
    `threads`: encode threads of a background commit (default: a quarter of the cores, 1 to 4).
    `worker_priority`: the CPU priority of the worker and its encode threads, so that commits take the CPU time
    training leaves instead of competing for it: a nice increment 1..19 (default 19, the lowest nice value),
    "idle" (Linux SCHED_IDLE, else nice 19), or 0/None (unchanged). Where the OS has no per-thread priority
    it is left unchanged; `applied_priority` says what was applied."""

    def __init__(self, repo: str | os.PathLike | Repo, branch: str, *, every: int | None = None,
                 background: bool = True, path: str = "model.safetensors", task: str = "train",
                 higher_is_better: Mapping[str, bool] | None = None, keep: KeepPolicy | None = None,
                 save_state: bool = True, max_queue_mb: float | None = None, on_full: str = "block",
                 pin_memory: bool = True, threads: int | None = None, start: str | None = "HEAD",
                 delta_cache_mb: int | None = None, metadata: Mapping[str, Any] | None = None,
                 worker_priority: str | int | None = DEFAULT_PRIORITY):
        # its own Repo (and store): the worker's cache sizing and reads never touch the caller's
        self.repo = Repo.open(repo.root if isinstance(repo, Repo) else os.fspath(repo))
        self.branch = check_name(branch)
        if every is not None and (type(every) is not int or every < 1):
            raise MlvcError(f"every must be a whole number of steps >= 1, not {every!r}")
        if on_full not in ("block", "skip"):
            raise MlvcError(f"on_full must be 'block' or 'skip', not {on_full!r}")
        if threads is not None and (type(threads) is not int or threads < 1):
            raise MlvcError(f"threads must be a whole number >= 1 (or None: the default), not {threads!r}")
        if not (worker_priority is None or worker_priority == IDLE
                or (type(worker_priority) is int and 0 <= worker_priority <= MAX_NICE)):
            raise MlvcError(f"worker_priority must be {IDLE!r}, a nice increment 0..{MAX_NICE} or None, "
                            f"not {worker_priority!r}")
        self.every, self.background, self.task = every, background, task
        self.path = self.repo.rel_path(path, self.repo.root)
        self.higher_is_better = dict(higher_is_better or {})
        if keep is not None and keep.best:
            self.higher_is_better.setdefault(keep.best, keep.higher_is_better)
        self.keep, self.save_state, self.on_full, self.pin = keep, save_state, on_full, pin_memory
        self.max_queue = None if max_queue_mb is None else int(max_queue_mb * (1 << 20))
        self.threads = threads or (default_encode_threads() if background else None)
        self.delta_cache_mb, self.worker_priority = delta_cache_mb, worker_priority
        self.applied_priority = "unchanged"  # what the worker applied to itself (see lower_thread_priority)
        self.base_metadata = dict(metadata or {})
        self.commits: list[TrackedCommit] = []
        self.skipped = 0
        unborn = start == "HEAD" and self.repo.head() is None  # a new repository: the run's first commit is a root
        self._start = self.repo.resolve(start) if start and not unborn else None
        self._counter = 0
        self._committed_step: int | None = None  # the step of the latest commit taken (queued or written)
        self._manifests: dict[str, Manifest] = {}
        self._code: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._pending_bytes = 0
        self._free: list[dict[str, Any]] = []  # host buffer sets to reuse
        self._errors: list[BaseException] = []
        self._closed = False
        self._check_not_checked_out()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        if background:
            self._worker = threading.Thread(target=self._run, name=f"mlvc-tracker-{branch}", daemon=True)
            self._worker.start()
        _LIVE.add(self)

    # -- the training thread ---------------------------------------------------------------------------
    def step(self, model: Any, step: int | None = None, *, metrics: Mapping[str, Any] | None = None,
             optimizer: Any = None, scheduler: Any = None, epoch: int | None = None,
             metadata: Mapping[str, Any] | None = None, commit: bool | None = None, keep: bool = False,
             message: str | None = None) -> bool:
        """Count a training step (`step`, default the previous one + 1) and commit when it is a multiple of
        `every` (or `commit=True`). True when a commit was taken (queued, in the background)."""
        self._raise_errors()
        self._counter = self._counter + 1 if step is None else int(step)
        due = commit if commit is not None else self.every is not None and self._counter % self.every == 0
        if not due:
            return False
        return self.commit(model, step=self._counter, metrics=metrics, optimizer=optimizer, scheduler=scheduler,
                           epoch=epoch, metadata=metadata, keep=keep, message=message)

    def commit(self, model: Any, *, step: int | None = None, metrics: Mapping[str, Any] | None = None,
               optimizer: Any = None, scheduler: Any = None, epoch: int | None = None,
               metadata: Mapping[str, Any] | None = None, keep: bool = False, message: str | None = None) -> bool:
        """Commit now (the snapshot is taken before this returns). False when skipped (queue full, "skip")."""
        self._raise_errors()
        if self._closed:
            raise TrackerError(f"the tracker of branch {self.branch} is closed; make a new one to commit again")
        step = self._counter if step is None else int(step)
        self._counter = step
        values = {k: _number(k, v) for k, v in (metrics or {}).items()}
        meta: dict[str, Any] = {**self.base_metadata, **dict(metadata or {}), "step": step}
        if epoch is not None:
            meta["epoch"] = epoch
        if optimizer is not None and getattr(optimizer, "param_groups", None):
            meta["lr"] = _number("lr", optimizer.param_groups[0].get("lr"))
        if values:
            meta["metrics"] = values
        meta[MARK] = {"branch": self.branch, "keep": True} if keep else {"branch": self.branch}
        try:
            canonical_json(meta)
        except (TypeError, ValueError, RecursionError) as e:
            raise MlvcError(f"metadata must be JSON (strings, numbers, lists, dicts; no NaN): {str(e)[:200]}") from None
        items = _flatten(_state_dict(model))
        for name, v in items:  # refused here, in the loop's thread, not later by the worker
            if not _is_tensor(v):
                raise FormatError(name, f"is a {type(v).__name__}, not a tensor or array; put plain values in "
                                        "metadata=")
        state_items, plain = _training_state(optimizer, scheduler) if self.save_state else ([], None)
        nbytes = sum(_nbytes(v) for _, v in items + state_items)
        job = _Job("commit", step, message or f"step {step}", meta, metrics=values, nbytes=nbytes,
                   taken=time.monotonic())
        if not self.background:  # the live tensors, read while this call runs
            job.files = [(self.path, items, None)]
            if plain is not None:
                job.files.append((STATE_PATH, state_items, {STATE_KEY: plain}))
            self._do(job)
            self._raise_errors()
            self._committed_step = step
            return True
        if not self._reserve(nbytes):
            return False
        try:
            (items, state_items), job.event, job.buffers = self._copy_to_host([items, state_items])
        except BaseException:
            self._release(nbytes, [])
            raise
        job.files = [(self.path, items, None)]
        if plain is not None:
            job.files.append((STATE_PATH, state_items, {STATE_KEY: plain}))
        self._queue.put(job)
        self._committed_step = step
        return True

    def evaluated(self, model: Any, step: int, metrics: Mapping[str, Any], **commit_args: Any) -> bool:
        """Evaluation metrics measured on `model` at `step`: recorded for the commit of that step when there is
        one, else the model is committed now with them (the metrics always belong to the weights measured).
        True when that took a commit."""
        if self._committed_step == step:
            self.record(metrics, step)
            return False
        return self.commit(model, step=step, metrics=metrics, **commit_args)

    def record(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metrics for the commit of `step` (default: the latest commit), after the commits queued before."""
        self._raise_errors()
        job = _Job("record", self._counter if step is None else int(step),
                   metrics={k: _number(k, v) for k, v in metrics.items()})
        self._queue.put(job) if self.background else self._do(job)
        self._raise_errors()

    def flush(self) -> None:
        """Wait until every queued commit is written; raises a worker error (TrackerError)."""
        if self.background and self._worker is not None and self._worker.is_alive():
            job = _Job("flush")
            self._queue.put(job)
            job.done.wait()
        self._raise_errors()

    def close(self) -> None:
        """Flush, apply the keep-policy, stop the worker. Idempotent; raises a worker error."""
        if not self._closed:
            self._closed = True
            try:
                self.flush()
            finally:
                if self._worker is not None:
                    self._queue.put(None)
                    self._worker.join()
                _LIVE.discard(self)
        self._raise_errors()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the loop failed: still write what was queued, but let the loop's own exception through
            try:
                self.close()
            except TrackerError as e:
                warnings.warn(f"mlvc: {e}", stacklevel=2)

    @property
    def committed_step(self) -> int | None:
        """The step of the latest commit taken (it may still be in the queue)."""
        return self._committed_step

    @property
    def last_commit(self) -> str | None:
        """The id of the latest commit written (commits still queued have none yet: flush() first)."""
        return self.commits[-1].commit if self.commits else None

    @classmethod
    def resume(cls, repo: str | os.PathLike | Repo, rev: str, model: Any = None, optimizer: Any = None,
               scheduler: Any = None, *, path: str = "model.safetensors", restore_rng: bool = True) -> dict:
        """Load commit `rev` back into `model`, `optimizer`, `scheduler` and the RNG states, to continue
        training from it; returns the commit's metadata (step, epoch, lr, metrics, ...)."""
        r = repo if isinstance(repo, Repo) else Repo.open(os.fspath(repo))
        return _restore(r, rev, model, optimizer, scheduler, path=path, restore_rng=restore_rng)

    # -- snapshots ---------------------------------------------------------------------------------------
    def _reserve(self, nbytes: int) -> bool:
        limit = self.max_queue if self.max_queue is not None else 2 * nbytes
        with self._cond:
            while self._pending_bytes and self._pending_bytes + nbytes > limit:
                if self.on_full == "skip":
                    self.skipped += 1
                    warnings.warn(f"mlvc: the commit queue of {self.branch} is full ({self._pending_bytes} bytes "
                                  f"waiting); step {self._counter} is not committed", stacklevel=3)
                    return False
                self._cond.wait(1.0)
                self._raise_errors()
            self._pending_bytes += nbytes
        return True

    def _release(self, nbytes: int, buffers: list[dict[str, Any]]) -> None:
        with self._cond:
            self._pending_bytes -= nbytes
            self._free.extend(buffers)
            self._cond.notify_all()

    def _copy_to_host(self, groups: list[list[tuple[str, Any]]]):
        """Each group's tensors copied into host buffers (reused from an earlier snapshot when their shapes
        match); CUDA tensors by non-blocking copies into pinned buffers, with an event the worker waits on."""
        with self._cond:
            sets = [self._free.pop() if self._free else {} for _ in groups]
        out: list[list[tuple[str, Any]]] = []
        on_cuda = False
        for items, bufs in zip(groups, sets, strict=True):
            copied = []
            for name, v in items:
                host, cuda = _copy_into(bufs, name, v, self.pin)
                copied.append((name, host))
                on_cuda = on_cuda or cuda
            out.append(copied)
        event = None
        if on_cuda:
            import torch

            event = torch.cuda.Event()
            event.record()
        return out, event, sets

    # -- the worker --------------------------------------------------------------------------------------
    def _run(self) -> None:
        # The pipeline's encode threads and the store's fsync threads are started by this thread, so they
        # inherit what it applies here (Linux: scheduling policy and nice value are per thread, inherited).
        self.applied_priority = lower_thread_priority(self.worker_priority)
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._do(job)

    def _do(self, job: _Job) -> None:
        try:
            if job.kind == "commit":
                if job.event is not None:
                    job.event.synchronize()
                self._write(job)
            elif job.kind == "record":
                self._record_for(job.step, job.metrics)
        except BaseException as e:  # surfaced by the next call of the training thread, and by close()
            with self._cond:
                self._errors.append(e)
        finally:
            if job.kind == "commit" and self.background:
                self._release(job.nbytes, job.buffers)
            job.done.set()

    def _raise_errors(self) -> None:
        with self._cond:
            errors, self._errors = self._errors, []
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise TrackerError(f"a commit of the tracker on branch {self.branch} failed{more}: "
                               f"{type(errors[0]).__name__}: {errors[0]}") from errors[0]

    def _check_not_checked_out(self) -> None:
        if self.repo.head_branch() == self.branch:
            raise TrackerError(f"branch {self.branch} is checked out here; a run commits to a branch of its own "
                               f"(give another branch, or `mlvc switch` away from {self.branch})")

    def _manifest(self, cid: str | None) -> Manifest | None:
        if cid is None:
            return None
        mid = self.repo.read_commit(cid).manifest
        if mid not in self._manifests:
            if len(self._manifests) > 4:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[mid] = self.repo.read_manifest(mid)
        return self._manifests[mid]

    def _size_cache(self, nbytes: int) -> None:
        """Room for three versions of every chunk (the new one, its parent and grandparent bases), in this
        tracker's own Repo (the caller's is never changed)."""
        want = (self.delta_cache_mb << 20) if self.delta_cache_mb else 3 * nbytes + 3 * self.repo.config.chunk_size
        cache = getattr(self.repo.store, "_cache", None)  # the store has no public setter for its cache size yet
        if self.delta_cache_mb != 0 and cache is not None and cache.max_bytes < want:
            cache.max_bytes = want

    def _write(self, job: _Job) -> None:
        repo = self.repo
        self._check_not_checked_out()
        ref = HEADS + self.branch
        if self._code is None:
            self._code = _code_revision(repo.root)
        self._size_cache(job.nbytes)
        with repo.writing():
            tip = repo.refs.resolve(ref)
            parent = tip if tip is not None else self._start
            pm = self._manifest(parent)
            pc = repo.read_commit(parent) if parent else None
            gm = self._manifest(pc.parents[0]) if pc and pc.parents else None
            # carried files were chunked at the parent's chunk size; a manifest has one, so new files use it too
            chunk_size = pm.chunk_size if pm else repo.config.chunk_size
            pipe = Pipeline(repo.store, chunk_size, self.threads, tmp_dir=os.path.join(repo.dir, "tmp"))
            pipe.remember = job.nbytes <= repo.store.cache_bytes
            files = {f.path: f for f in pm.files} if pm else {}
            with pipe:
                for rel, items, st_meta in job.files:
                    history = History(pm.file(rel) if pm else None, gm.file(rel) if gm else None)
                    files[rel] = snapshot_buffers(pipe, rel, [_buffer(n, v) for n, v in items], st_meta, history)
            roots = list(pm.roots) if pm else []
            roots += [rel for rel, _, _ in job.files if not any(_under(rel, r) for r in roots)]
            manifest = Manifest(sorted(roots), list(files.values()), chunk_size)
            mid = repo.write_manifest(manifest)
            self._manifests[mid] = manifest
            meta = {**job.metadata, **{k: v for k, v in self._code.items() if k not in job.metadata}}
            c = Commit(mid, [parent] if parent else [], repo.author(), utc_now(), job.message, meta)
            repo.write_commit(c)
            repo.store.flush()  # every object durable before the ref points at it
            repo.refs.set_if_equals(ref, tip, c.id, who=repo.author(), message=f"tracker: {job.message}")
        self.commits.append(TrackedCommit(job.step, c.id, dict(job.metrics), time.monotonic() - job.taken))
        if job.metrics:
            self._record(c.id, job.metrics, job.step)
        if self.keep is not None:
            self._apply_keep()

    def _record_for(self, step: int, metrics: dict[str, float]) -> None:
        tc = next((t for t in reversed(self.commits) if t.step <= step), None)
        if tc is None:
            raise TrackerError(f"no commit of this tracker at or before step {step} to record metrics for")
        tc.metrics.update(metrics)
        self._record(tc.commit, metrics, tc.step)

    def _record(self, cid: str, metrics: dict[str, float], step: int) -> None:
        directions = {k: v for k, v in self.higher_is_better.items() if k in metrics}
        self.repo.record_eval(cid, self.task, metrics, higher_is_better=directions or None,
                              notes=f"{self.branch} step {step}")

    def _apply_keep(self) -> None:
        assert self.keep is not None
        remap = _apply_keep(self.repo, self.branch, self.keep, {t.commit: t.metrics for t in self.commits})
        for t in self.commits:
            t.commit = remap.get(t.commit, t.commit)
        self.commits = [t for t in self.commits if t.commit is not None]


def default_encode_threads() -> int:
    """Encode threads of a background commit: a quarter of the cores, 1 to 4. Fewer than a CPU-bound loop's
    torch threads (one per core), so that a commit never asks for every core; on a GPU machine, where the cores
    are mostly idle, 4 threads keep the commit latency short (docs/hooks.md, "Scheduling")."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def lower_thread_priority(priority: str | int | None) -> str:
    """Lower the calling thread's CPU priority; threads it starts afterwards inherit it. "idle": SCHED_IDLE
    (the thread runs only on CPU time that no other thread wants; a thread of normal priority that wakes up
    takes the core at once), or nice 19 where that is refused; an int n: the nice value raised by n (at most
    19). Only on Linux, where a thread id names one thread; elsewhere, or when the OS refuses, nothing changes.
    Returns what was applied: "idle", "nice N", or "unchanged" (with the reason)."""
    if priority is None or priority == 0:
        return "unchanged"
    if not sys.platform.startswith("linux"):
        return f"unchanged (no per-thread priority on {sys.platform})"
    tid = threading.get_native_id()
    if priority == IDLE:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return IDLE
        except (AttributeError, OSError):
            priority = MAX_NICE
    assert isinstance(priority, int)
    try:
        nice = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + priority)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (AttributeError, OSError) as e:
        return f"unchanged ({type(e).__name__}: {e})"
    return f"nice {nice}"


def _under(rel: str, root: str) -> bool:
    return root == "." or rel == root or rel.startswith(root.rstrip("/") + "/")


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among a framework's logged values (floats, ints, one-element tensors), as floats;
    the rest (strings, NaN, vectors) left out: what the integrations record."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or (hasattr(v, "numel") and v.numel() != 1):
            continue
        try:
            out[str(k)] = _number(str(k), v)
        except MlvcError:
            continue
    return out


def _number(name: str, v: Any) -> float:
    try:
        x = float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        raise MlvcError(f"metric {name!r} must be a number, not {type(v).__name__}") from None
    if not math.isfinite(x):
        raise MlvcError(f"metric {name!r} is {x}: record finite numbers only")
    return x


# -- what a snapshot holds ---------------------------------------------------------------------------------

def _state_dict(model: Any) -> Mapping[str, Any]:
    if hasattr(model, "state_dict") and callable(model.state_dict) and not isinstance(model, Mapping):
        return model.state_dict()
    if not isinstance(model, Mapping):
        raise MlvcError(f"cannot commit a {type(model).__name__}: pass an nn.Module or a state_dict")
    return model


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _is_torch(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "element_size")


def _is_tensor(v: Any) -> bool:
    import numpy as np

    return _is_torch(v) or isinstance(v, np.ndarray | np.generic)


def _nbytes(v: Any) -> int:
    if _is_torch(v):
        return v.numel() * v.element_size()
    return int(getattr(v, "nbytes", 0))


def _copy_into(bufs: dict[str, Any], name: str, v: Any, pin: bool) -> tuple[Any, bool]:
    """`v` copied into the host buffer kept under `name` (made, or remade when its shape or dtype changed);
    (buffer, whether the copy is an asynchronous one from CUDA)."""
    if _is_torch(v):
        import torch

        t = v.detach()
        cuda = t.device.type == "cuda"
        b = bufs.get(name)
        if b is None or b.shape != t.shape or b.dtype != t.dtype:
            b = bufs[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin and cuda)
        b.copy_(t, non_blocking=cuda and b.is_pinned())
        return b, cuda and b.is_pinned()
    import numpy as np

    if not isinstance(v, np.ndarray | np.generic):
        return v, False  # not a tensor: the commit refuses it with the tensor's name
    a = np.asarray(v)
    b = bufs.get(name)
    if b is None or b.shape != a.shape or b.dtype != a.dtype:
        b = bufs[name] = np.empty_like(a)
    np.copyto(b, a)
    return b, False


def _training_state(optimizer: Any, scheduler: Any) -> tuple[list[tuple[str, Any]], str]:
    """The optimizer's and scheduler's state_dicts and the RNG states: their tensors (named by where they sit)
    and the rest as JSON, tensors replaced by {"__tensor__": name}."""
    import json

    import numpy as np

    state: dict[str, Any] = {"rng": _rng_state()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    tensors: list[tuple[str, Any]] = []

    def enc(x: Any, where: str) -> Any:
        if _is_torch(x) or isinstance(x, np.ndarray):
            tensors.append((where, x))
            return {"__tensor__": where}
        if isinstance(x, bool | int | str) or x is None:
            return x
        if isinstance(x, float | np.floating):
            return float(x) if math.isfinite(x) else {"__float__": repr(float(x))}
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{where}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{where}.{i}") for i, v in enumerate(x)]
        if isinstance(x, Mapping):
            return {"__dict__": [[enc(k, f"{where}.key"), enc(v, f"{where}.{k}")] for k, v in x.items()]}
        raise MlvcError(f"cannot store the training state at {where}: a {type(x).__name__} is not a tensor or a "
                        "plain value (pass save_state=False, or a scheduler whose state_dict holds only data)")

    plain = json.dumps(enc(state, "state"), separators=(",", ":"), allow_nan=False)
    return tensors, plain


def _decode_state(x: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(x, list):
        return [_decode_state(v, tensors) for v in x]
    if isinstance(x, dict):
        if "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if "__float__" in x:
            return float(x["__float__"])
        if "__tuple__" in x:
            return tuple(_decode_state(v, tensors) for v in x["__tuple__"])
        return {_decode_state(k, tensors): _decode_state(v, tensors) for k, v in x["__dict__"]}
    return x


def _rng_state() -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    try:
        import torch
    except ImportError:
        return out
    out["torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(rng: Mapping[str, Any]) -> None:
    import numpy as np

    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "torch" in rng:
        import torch

        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(rng["cuda"]))


def _restore(repo: Repo, rev: str, model: Any, optimizer: Any, scheduler: Any, *, path: str,
             restore_rng: bool) -> dict:
    import json

    from .ops.load import file_metadata, load

    cid = repo.resolve(rev)
    commit = repo.read_commit(cid)
    if model is not None:
        weights = load(repo, cid, framework="torch", path=path)
        if isinstance(model, dict):
            model.clear()
            model.update(weights)
        else:
            model.load_state_dict(weights)
    if optimizer is not None or scheduler is not None or restore_rng:
        if repo.read_manifest(commit.manifest).file(STATE_PATH) is None:
            if optimizer is not None or scheduler is not None:
                raise MlvcError(f"commit {cid[:12]} holds no training state ({STATE_PATH}): it was committed "
                                "without save_state; resume the model alone (optimizer=None, scheduler=None)")
        else:
            plain = file_metadata(repo, cid, STATE_PATH).get(STATE_KEY)
            if plain is None:
                raise MlvcError(f"{STATE_PATH} in {cid[:12]} is not a training state written by mlvc.Tracker")
            state = _decode_state(json.loads(plain), load(repo, cid, framework="torch", path=STATE_PATH))
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            if restore_rng:
                _set_rng_state(state["rng"])
    return {**commit.metadata, "commit": cid}


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



