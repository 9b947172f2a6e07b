"""The one lock primitive: a lock file that says who holds it, and that a dead holder never leaves behind.

A lock is a file `NAME.lock`. Taking it:
1. write the holder's record (pid, host, time, command) into a temp file beside it, fsync it, and take an
   exclusive `flock` on it (nobody else knows that file yet, so this never waits);
2. `os.link` the temp file to `NAME.lock`: the link fails if the lock exists (as O_EXCL would), and when it
   succeeds the lock appears complete, record and flock included; then the temp name is removed.
Releasing removes `NAME.lock`, then closes the descriptor (which drops the flock).

A holder killed with SIGKILL leaves the file, but the kernel drops its flock. So a waiter that finds the lock
can tell a live holder from a dead one: if it can flock the file itself (non-blocking), the holder is gone
and the lock is stale. Breaking a stale lock is safe against a second breaker and a new holder: the breaker
holds the flock of the stale file while it checks that `NAME.lock` is still that very file (same inode) and
unlinks it; a lock taken in the meantime is a different inode and is left alone.

A lock whose record names another host is never broken here (a flock on a network file system may not tell
us about that host's processes): the error names the holder so a person can decide.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from . import faults
from .errors import LockBusyError
from .util import TMP_PREFIX, fsync_dir

LOCK_SUFFIX = ".lock"
INFLIGHT_DIR = "inflight"  # .mlvc/inflight/*.lock: operations writing objects no ref names yet (Repo.writing)
DEFAULT_WAIT = 2.0  # seconds to wait for a live holder before giving up


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or held) a lock, from its record; fields are None for a record that cannot be read."""

    path: str
    pid: int | None
    host: str | None
    since: str | None
    command: str | None

    def describe(self) -> str:
        if self.pid is None:
            return f"{self.path} (holder unknown)"
        return f"{self.path} (pid {self.pid} on {self.host}, since {self.since}: {self.command})"


def _hostname() -> str:
    import socket  # here, not at the top: a command that takes no lock does not import it (tests/test_startup.py)

    return socket.gethostname()


def _record() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": _hostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]},
                      sort_keys=True).encode()


def read_info(path: str) -> LockInfo | None:
    """The record of the lock at `path`, None when there is no such lock."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        d = json.loads(data)
        pid = d["pid"]
        if type(pid) is not int:
            raise TypeError
        return LockInfo(path, pid, str(d.get("host")), str(d.get("since")), str(d.get("command")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return LockInfo(path, None, None, None, None)


def _foreign(info: LockInfo | None) -> bool:
    return info is not None and info.host is not None and info.host != _hostname()


@contextlib.contextmanager
def _dead_holder(path: str) -> Iterator[int | None]:
    """An open descriptor of the lock at `path` carrying its flock when its holder is gone (a process on this
    host that died), else None (no such lock, another host's, or a live holder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        yield None
        return
    try:
        if _foreign(read_info(path)):
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def is_stale(path: str) -> bool:
    """True when the lock at `path` exists and its holder is gone (a process on this host that died)."""
    with _dead_holder(path) as fd:
        return fd is not None


def in_use(name: str, dir_fd: int | None = None) -> bool:
    """True when a live process holds a flock on the file (a lock being taken, an atomic write not yet
    renamed: util.atomic_writer and acquire() hold one on their temp files until the rename or link)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return False  # gone, or a symlink: nothing holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def break_stale(path: str) -> bool:
    """Remove the lock at `path` if its holder is gone. True when the path is free now (removed, or absent)."""
    if not os.path.lexists(path):
        return True
    with _dead_holder(path) as fd:
        if fd is None:
            return not os.path.lexists(path)  # a live (or foreign) holder; or it went away meanwhile
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return True
        if same:  # still the dead holder's file: no one else can remove it while we hold its flock
            os.unlink(path)
            with contextlib.suppress(OSError):
                fsync_dir(os.path.dirname(os.path.abspath(path)))
        return True


class Lock:
    """A held lock; `release()` (or leaving the `with` block) removes it."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        faults.point("lock.release")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: str, what: str, wait: float = DEFAULT_WAIT) -> Lock:
    """Take the lock file `path` (it ends in ".lock"), waiting up to `wait` seconds for a live holder and
    clearing a dead one's. LockBusyError names the holder when it is still held after that."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{TMP_PREFIX}lock-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, _record())
        os.fsync(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        deadline = time.monotonic() + wait
        delay = 0.002
        while True:
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                if break_stale(path):
                    continue
                if time.monotonic() >= deadline:
                    raise LockBusyError(what, read_info(path) or LockInfo(path, None, None, None, None)) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.unlink(tmp)
    faults.point("lock.acquired")
    return Lock(path, fd)


@contextlib.contextmanager
def locked(path: str, what: str, wait: float = DEFAULT_WAIT) -> Iterator[Lock]:
    lock = acquire(path, what, wait)
    try:
        yield lock
    finally:
        lock.release()


def find_locks(root: str) -> Iterator[str]:
    """Every lock file under `root` (a repository's .mlvc folder)."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(LOCK_SUFFIX):
                yield os.path.join(folder, name)
