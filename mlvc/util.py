"""Small shared pieces: durable atomic writes, hashing, canonical JSON, time."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import xxhash

from . import faults

ID_HEX_LEN = 32  # xxh3-128 as lowercase hex
TMP_PREFIX = ".tmp-mlvc-"  # every temp file mlvc makes starts so: fsck reports leftovers, gc removes them


def hash_bytes(data) -> str:
    """Object id: xxh3-128 of the raw content, as 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def is_object_id(text: str) -> bool:
    return len(text) == ID_HEX_LEN and all(c in "0123456789abcdef" for c in text)


def canonical_json(obj: Any) -> bytes:
    """One serialization for one value: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fsync_dir(path: str) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str, mode: int = 0o644, sync_dir: bool = True, durable: bool = True) -> Iterator[Any]:
    """Open a temp file beside `path`; on success flush, fsync, rename over `path`, fsync the folder.

    On an exception the temp file is removed and `path` is untouched: a reader sees the old file or the
    whole new one, never half of it. Without `durable` nothing is fsynced (a cache, whose reader checks what
    it reads: after a crash the file may be there but not its bytes).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    # The temp file carries an exclusive flock until it is renamed: `mlvc gc` never removes a temp file
    # someone holds (lockfile.in_use), however young its grace lets it sweep.
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
                faults.point("write.synced")
            os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            e.filename = tmp  # a write error names no file: say where (a full disk: "folder: No space left")
        raise
    faults.point("write.renamed")
    if sync_dir and durable:
        fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes, sync_dir: bool = True) -> None:
    with atomic_writer(path, sync_dir=sync_dir) as f:
        f.write(data)


def is_utf8_text(s: object) -> bool:
    """A str that encodes as UTF-8 (no lone surrogate: a "\\udcff" from a file name that is not UTF-8, or a
    "\\ud800" escape in JSON)."""
    if not isinstance(s, str):
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def show(value: object, limit: int = 80) -> str:
    """A value for a message: repr'd (no control characters), cut to one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


# -- CPU priority (the Tracker's worker; here, because its process applies it before importing anything heavy) --

IDLE = "idle"  # Linux SCHED_IDLE
MAX_NICE = 19


def lower_thread_priority(priority: str | int | None) -> str:
    """Lower the calling thread's CPU priority; threads it starts afterwards inherit it. "idle": SCHED_IDLE
    (the thread runs only on CPU time that no other thread wants; a thread of normal priority that wakes up
    takes the core at once), or nice 19 where that is refused; an int n: the nice value raised by n (at most
    19). Only on Linux, where a thread id names one thread; elsewhere, or when the OS refuses, nothing changes.
    Returns what was applied: "idle", "nice N", or "unchanged" (with the reason)."""
    import sys
    import threading

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


def windows_priority_class(priority: str | int | None) -> str | None:
    """The Windows priority class a worker process is started with for `priority` (None: unchanged): "idle"
    and nice increments of 15 or more are IDLE_PRIORITY_CLASS, lower ones BELOW_NORMAL_PRIORITY_CLASS."""
    if not priority:
        return None
    return "IDLE_PRIORITY_CLASS" if priority == IDLE or (isinstance(priority, int) and priority >= 15) \
        else "BELOW_NORMAL_PRIORITY_CLASS"


def lower_process_priority(priority: str | int | None) -> str:
    """Lower the priority of the calling process from its first thread, before it starts others (they inherit
    it): on Linux as lower_thread_priority; on other POSIX systems by the process's nice value ("idle": nice
    19); on Windows the class it was started with (windows_priority_class) is all there is. Returns what was
    applied, as lower_thread_priority does."""
    import sys

    if priority is None or priority == 0:
        return "unchanged"
    if sys.platform.startswith("linux"):
        return lower_thread_priority(priority)
    if sys.platform == "win32":
        return (windows_priority_class(priority) or "unchanged").lower().replace("_", " ")
    try:
        return f"nice {os.nice(MAX_NICE if priority == IDLE else int(priority))}"
    except (AttributeError, OSError) as e:
        return f"unchanged ({type(e).__name__}: {e})"
