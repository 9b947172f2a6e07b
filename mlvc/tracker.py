"""Training-loop Tracker: commit every N steps from a training loop, in the background.

The training thread only copies the tensors to host memory (into buffers it reuses: shared memory that the
worker process maps, page-locked for CUDA where CUDA allows it, with non-blocking copies from the GPU) and
returns; a worker (mlvc.trackworker: a process of its own by default, or a thread) hashes, encodes and writes
the commit, records its metrics in the ledger and applies the keep-policy. Commits go to the run's own branch
by compare-and-swap on that ref alone: HEAD, the work tree and `mlvc status` are never touched. Consecutive
commits of one worker find their delta bases in the store's base cache, which the worker sizes to hold the
last three versions (parent and grandparent are the bases), so nothing is decoded to delta-code a commit.

A commit holds the model at `path` (model.safetensors) and, unless `save_state=False`, the training state at
`training_state.safetensors`: the optimizer's (and scheduler's) tensors, their plain values as JSON in the
file's metadata, and the RNG states (torch, CUDA, numpy, Python), so `Tracker.resume` continues exactly.
"""

from __future__ import annotations

import atexit
import importlib
import math
import os
import random
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import FormatError, MlvcError, TrackerError
from .refs import check_name
from .repo import Repo
from .trackworker import (
    MARK,
    Job,
    KeepPolicy,
    ProcessWorker,
    Result,
    SharedSnapshot,
    ThreadWorker,
    TrackedCommit,
    Writer,
    WriterArgs,
    check_not_checked_out,
    is_torch,
    snapshot_layout,
)
from .util import IDLE, MAX_NICE, canonical_json

STATE_PATH = "training_state.safetensors"
STATE_KEY = "mlvc.training_state"  # the safetensors metadata key holding the plain values (JSON)
DEFAULT_PRIORITY = MAX_NICE  # measured: docs/benchmarks.md, "training-loop overhead"
WORKERS = ("process", "thread")


@dataclass
class _Pending:
    """A job the loop handed to the worker: what to give back when it is done."""

    job: Job
    nbytes: int = 0
    buffers: Any = None  # the host buffer set to reuse: a SharedSnapshot, or _LocalBuffers for a thread
    done: threading.Event = field(default_factory=threading.Event)


_LIVE: weakref.WeakSet[Tracker] = weakref.WeakSet()


def _close_all() -> None:  # a normal interpreter exit flushes every open tracker (errors still raise)
    for t in list(_LIVE):
        t.close()


# At exit, concurrent.futures refuses new work from its own exit hook, which threading runs before atexit's: the
# flush (of a worker thread's pipeline) must run before it. threading's hooks run last-registered first, so
# concurrent.futures is imported (its hook registered) before this one is (atexit where threading has none).
importlib.import_module("concurrent.futures.thread")
getattr(threading, "_register_atexit", atexit.register)(_close_all)
# A process forked from the loop (a DataLoader worker, a multiprocessing pool) has its trackers' objects but none
# of their threads or pipes: at its exit it must not try to flush them (it would wait forever).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_LIVE.clear)


class Tracker:
    """Commit a model every `every` steps from a training loop (see docs/hooks.md).

    `background=True`: `step` copies the tensors to host memory and returns; a worker commits: a process of its
    own (`worker="process"`, the default: it never competes with the loop for the interpreter's lock) or a
    thread (`worker="thread"`). At most `max_queue_mb` of snapshots wait (default: room for two); when full,
    `on_full="block"` waits for the worker and `"skip"` skips that commit with a warning. A worker error is
    raised by the next call and by `close()` (TrackerError, the cause chained). `start`: where a new branch
    begins (default HEAD; None: a root commit). `delta_cache_mb`: memory for the delta bases (default: three
    checkpoints; 0 keeps core.cache_mb). `threads`: encode threads of a background commit (default: a quarter
    of the cores, 1 to 4). `worker_priority`: the CPU priority of the worker and its encode threads, so that
    commits take the CPU time training leaves instead of competing for it: a nice increment 1..19 (default 19,
    the lowest nice value), "idle" (Linux SCHED_IDLE, else nice 19), or 0/None (unchanged). Where the OS has no
    per-thread priority it is left unchanged; `applied_priority` says what was applied."""

    def __init__(self, repo: str | os.PathLike | Repo, branch: str, *, every: int | None = None,
                 background: bool = True, path: str = "model.safetensors", task: str = "train",
                 higher_is_better: Mapping[str, bool] | None = None, keep: KeepPolicy | None = None,
                 save_state: bool = True, max_queue_mb: float | None = None, on_full: str = "block",
                 pin_memory: bool = True, threads: int | None = None, start: str | None = "HEAD",
                 delta_cache_mb: int | None = None, metadata: Mapping[str, Any] | None = None,
                 worker_priority: str | int | None = DEFAULT_PRIORITY, worker: str = "process"):
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
        if worker not in WORKERS:
            raise MlvcError(f"worker must be one of {', '.join(map(repr, WORKERS))}, not {worker!r}")
        self.every, self.background, self.task = every, background, task
        self.path = self.repo.rel_path(path, self.repo.root)
        self.higher_is_better = dict(higher_is_better or {})
        if keep is not None and keep.best:
            self.higher_is_better.setdefault(keep.best, keep.higher_is_better)
        self.keep, self.save_state, self.on_full, self.pin = keep, save_state, on_full, pin_memory
        self.max_queue = None if max_queue_mb is None else int(max_queue_mb * (1 << 20))
        self.threads = threads or (default_encode_threads() if background else None)
        self.delta_cache_mb, self.worker_priority = delta_cache_mb, worker_priority
        self.worker = worker if background else None
        self.base_metadata = dict(metadata or {})
        self.commits: list[TrackedCommit] = []
        self.skipped = 0
        unborn = start == "HEAD" and self.repo.head() is None  # a new repository: the run's first commit is a root
        self._counter = 0
        self._committed_step: int | None = None  # the step of the latest commit taken (queued or written)
        self._cond = threading.Condition()
        self._pending_bytes = 0
        self._free: list[Any] = []  # host buffer sets to reuse
        self._errors: list[BaseException] = []
        self._closed = False
        self._closed_worker = False  # close() stopped the worker: nothing more can be submitted
        self._spill_warned = False  # said once that shared memory was too small for a snapshot
        args = WriterArgs(self.repo.root, self.branch, self.repo.resolve(start) if start and not unborn else None,
                          task, self.higher_is_better, keep, self.threads, delta_cache_mb)
        self._writer: Writer | None = None
        self._worker: ThreadWorker | ProcessWorker | None = None
        check_not_checked_out(self.repo, self.branch)
        if not background:
            self._writer = Writer(args)
        else:
            kind = ProcessWorker if worker == "process" else ThreadWorker
            self._worker = kind(args, worker_priority, self._finish, f"mlvc-tracker-{branch}")
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
        groups = [items, state_items]
        layout = snapshot_layout(groups)  # a dtype safetensors cannot hold is refused here too
        nbytes = sum(entry[4] for entry in layout)
        job = Job("commit", step, message or f"step {step}", meta, metrics=values, nbytes=nbytes,
                  taken=time.monotonic())
        paths = [(self.path, None)] + ([(STATE_PATH, {STATE_KEY: plain})] if plain is not None else [])
        if self._writer is not None:  # synchronous: the live tensors, read while this call runs
            job.files = [(rel, group, meta) for (rel, meta), group in zip(paths, groups, strict=False)]
            self._run_here(job)
            self._committed_step = step
            return True
        if not self._reserve(nbytes):
            return False
        try:
            buffers, events = self._copy_to_host(groups, layout)
        except BaseException:
            self._release(nbytes, None)
            raise
        tensors = [[buffers.handed(g, name) for name, _ in group] for g, group in enumerate(groups)]
        job.files = [(rel, group, meta) for (rel, meta), group in zip(paths, tensors, strict=False)]
        self._submit(job, _Pending(job, nbytes, buffers), events)
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
        job = Job("record", self._counter if step is None else int(step),
                  metrics={k: _number(k, v) for k, v in metrics.items()})
        if self._writer is not None:
            self._run_here(job)
        else:
            self._submit(job, _Pending(job))
        self._raise_errors()

    def flush(self) -> None:
        """Wait until every queued commit is written; raises a worker error (TrackerError)."""
        if self._worker is not None and not self._closed_worker:
            pending = _Pending(Job("flush", self._counter))
            self._submit(pending.job, pending)
            pending.done.wait()
        self._raise_errors()

    def close(self) -> None:
        """Flush, apply the keep-policy, stop the worker. Idempotent; raises a worker error."""
        if not self._closed:
            self._closed = True
            try:
                self.flush()
            finally:
                if self._worker is not None:
                    self._closed_worker = True
                    self._worker.close()
                    with self._cond:
                        free, self._free = self._free, []
                    for b in free:
                        if isinstance(b, SharedSnapshot):
                            b.free()
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

    @property
    def applied_priority(self) -> str:
        """What the worker applied to itself (see lower_thread_priority); "unchanged" until it has started."""
        return self._worker.applied_priority if self._worker is not None else "unchanged"

    @property
    def worker_pid(self) -> int | None:
        """The worker process's id (worker="process"), else None."""
        return getattr(self._worker, "pid", None)

    @classmethod
    def resume(cls, repo: str | os.PathLike | Repo, rev: str, model: Any = None, optimizer: Any = None,
               scheduler: Any = None, *, path: str = "model.safetensors", restore_rng: bool = True) -> dict:
        """Load commit `rev` back into `model`, `optimizer`, `scheduler` and the RNG states, to continue
        training from it; returns the commit's metadata (step, epoch, lr, metrics, ...)."""
        r = repo if isinstance(repo, Repo) else Repo.open(os.fspath(repo))
        return _restore(r, rev, model, optimizer, scheduler, path=path, restore_rng=restore_rng)

    # -- the worker's results ----------------------------------------------------------------------------
    def _run_here(self, job: Job) -> None:
        assert self._writer is not None
        self.commits = self._writer.run(job).apply(self.commits)  # errors raise at once

    def _submit(self, job: Job, pending: _Pending, events: list[Any] | None = None) -> None:
        assert self._worker is not None
        if self._closed_worker:
            raise TrackerError(f"the tracker of branch {self.branch} is closed")
        self._worker.submit(job, pending, events)

    def _finish(self, pending: _Pending, result: Result | None, error: BaseException | None) -> None:
        with self._cond:
            if result is not None:
                self.commits = result.apply(self.commits)
            if error is not None:
                self._errors.append(error)
            self._release(pending.nbytes, pending.buffers)
        pending.done.set()

    def _raise_errors(self) -> None:
        with self._cond:
            errors, self._errors = self._errors, []
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise TrackerError(f"a commit of the tracker on branch {self.branch} failed{more}: "
                               f"{type(errors[0]).__name__}: {errors[0]}") from errors[0]

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

    def _release(self, nbytes: int, buffers: Any) -> None:
        with self._cond:  # (a Condition's lock is reentrant: _finish calls this holding it)
            self._pending_bytes -= nbytes
            if buffers is not None:
                self._free.append(buffers)
            self._cond.notify_all()

    def _copy_to_host(self, groups: list[list[tuple[str, Any]]], layout: tuple) -> tuple[Any, Any]:
        """The snapshot's tensors copied into a host buffer set, one of an earlier snapshot when the layout is
        the same (a SharedSnapshot for a worker process, else _LocalBuffers); CUDA tensors by non-blocking
        copies into page-locked buffers, with a CUDA event per device copied from (recorded on its current stream,
        where its copies were queued), which the worker waits on. (buffers, events)."""
        shared = isinstance(self._worker, ProcessWorker)
        with self._cond:
            buffers = next((b for b in self._free if b.layout == layout), None)
            if buffers is not None:
                self._free.remove(buffers)
            elif self._free:  # a set of another layout goes, so that there is never more than one per queue slot
                old = self._free.pop()
                if shared:
                    assert isinstance(self._worker, ProcessWorker)
                    self._worker.detach(old.name)  # the worker mapped it for its job: unlinking the name is safe
                    old.free()
        on_cuda = any(is_torch(v) and v.device.type == "cuda" for items in groups for _, v in items)
        if buffers is None and shared:
            buffers = SharedSnapshot(layout, self.pin and on_cuda, os.path.join(self.repo.dir, "tmp"))
            if buffers.spilled and not self._spill_warned:
                self._spill_warned = True
                warnings.warn(f"mlvc: {buffers.spilled}; the snapshots of {self.branch} go through a file in "
                              f"{os.path.join(self.repo.dir, 'tmp')} instead (page cache, written back to disk in "
                              "time); a container needs more shared memory (docker run --shm-size=...)",
                              stacklevel=4)
        elif buffers is None:
            buffers = _LocalBuffers(layout, self.pin and on_cuda)
        try:
            for g, items in enumerate(groups):
                for name, v in items:
                    _copy(buffers.views[(g, name)], v, on_cuda and buffers.pinned)
        except BaseException:
            self._release(0, buffers)  # a set still: the next snapshot of this layout overwrites it
            raise
        events = []
        if on_cuda:
            import torch

            for device in {v.device for items in groups for _, v in items if is_torch(v) and v.device.type == "cuda"}:
                with torch.cuda.device(device):
                    event = torch.cuda.Event()
                    event.record()
                    events.append(event)
        return buffers, events


class _LocalBuffers:
    """The host buffers of a snapshot for a worker thread: `views[(group, name)]`, a tensor or array per tensor
    of `layout` (see trackworker.snapshot_layout), page-locked when `pin` (CUDA snapshots)."""

    def __init__(self, layout: tuple, pin: bool):
        self.layout, self.pinned = layout, pin
        self.views = {(g, name): _host_like(shape, like, pin) for g, name, _, shape, _, like in layout}

    def handed(self, group: int, name: str) -> tuple[str, Any]:
        """What the worker thread is given for a tensor: (name, the host copy)."""
        return name, self.views[(group, name)]


def _host_like(shape: tuple[int, ...], like: Any, pin: bool) -> Any:
    import numpy as np

    if isinstance(like, np.dtype):
        return np.empty(shape, dtype=like)
    import torch

    return torch.empty(shape, dtype=like, pin_memory=pin)


def _copy(dst: Any, v: Any, non_blocking: bool) -> None:
    if is_torch(v):
        dst.copy_(v.detach(), non_blocking=non_blocking)
    else:
        import numpy as np

        np.copyto(dst, np.asarray(v))


def default_encode_threads() -> int:
    """Encode threads of a background commit: a quarter of the cores, 1 to 4. Fewer than a CPU-bound loop's
    torch threads (one per core), so that a commit never asks for every core; on a GPU machine, where the cores
    are mostly idle, 4 threads keep the commit latency short (docs/hooks.md, "Scheduling")."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


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


def _is_tensor(v: Any) -> bool:
    import numpy as np

    return is_torch(v) or isinstance(v, np.ndarray | np.generic)


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
        if is_torch(x) or isinstance(x, np.ndarray):
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
        if repo.read_manifest(commit.manifest, resolve=False).file(STATE_PATH) is None:
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
