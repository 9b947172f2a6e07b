"""Refs: branches (refs/heads/*), tags (refs/tags/*) and HEAD, each move logged in a reflog.

A ref file holds a commit id and a newline; HEAD holds "ref: refs/heads/NAME" or a commit id (detached).
A ref moves only by compare-and-swap: the lock file `REF.lock` is created with O_EXCL, the current value is
checked against what the caller expected, the new value is written into the lock file, fsynced, and
renamed over the ref. The lock file is the temp file, so a crash leaves either the old or the new value.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import RefConflictError, RefError
from .util import fsync_dir, is_object_id, utc_now

HEAD = "HEAD"
HEADS = "refs/heads/"
TAGS = "refs/tags/"

_BAD_NAME = re.compile(r"(^[./-])|(\.\.)|([\x00-\x20\x7f~^:?*\[\\])|(@\{)|(/\.)|(\.lock$)|(/$)|(//)|(\.$)")


def check_name(name: str, kind: str = "branch") -> str:
    """Validate a branch or tag name with git's rules (no spaces, '..', '~', '^', ':' ...)."""
    if not name or name == "@" or _BAD_NAME.search(name) or name.endswith(".lock"):
        raise RefError(f"{name!r} is not a valid {kind} name (no spaces, '..', '~', '^', ':', '?', '*', '[', "
                       "'\\', and no leading '-' or '.')")
    return name


@dataclass(frozen=True)
class ReflogEntry:
    ref: str
    old: str | None
    new: str | None
    who: str
    time: str
    message: str


LOCK_WAIT = 2.0  # seconds to wait for another process's ref lock
STALE_LOCK = 600  # a lock file older than this was left by a process that died


def _lock_advice(lock: str) -> str:
    try:
        age = time.time() - os.stat(lock).st_mtime
    except FileNotFoundError:
        return "another mlvc process held its lock; try again"
    if age > STALE_LOCK:
        return (f"{lock} is {age / 60:.0f} minutes old: a process that died left it; if no mlvc is running, "
                "remove that file")
    return f"another mlvc process is updating it ({lock}); try again when it has finished"


class RefStore:
    def __init__(self, mlvc_dir: str):
        self.dir = mlvc_dir

    def _parts(self, ref: str) -> list[str]:
        """A ref's path parts, refusing anything but HEAD and names under refs/heads/ or refs/tags/ whose
        parts are all ordinary names: a ref name can never reach a file outside those folders."""
        parts = ref.split("/")
        if ref != HEAD and not (ref.startswith((HEADS, TAGS)) and len(parts) > 2
                                and all(p and p not in (".", "..") and "\x00" not in p for p in parts)):
            raise RefError(f"{ref!r} is not a ref mlvc can use (HEAD, refs/heads/NAME or refs/tags/NAME)")
        return parts

    def _path(self, ref: str) -> str:
        return os.path.join(self.dir, *self._parts(ref))

    def _folder(self, prefix: str) -> str:
        """The folder of HEADS or TAGS."""
        assert prefix in (HEADS, TAGS)
        return os.path.join(self.dir, *prefix.strip("/").split("/"))

    def _log_path(self, ref: str) -> str:
        return os.path.join(self.dir, "logs", *self._parts(ref))

    # -- reading -----------------------------------------------------------------------------------
    def read_raw(self, ref: str) -> str | None:
        try:
            with open(self._path(ref), encoding="utf-8") as f:
                return f.read().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def head_target(self) -> str | None:
        """The branch ref HEAD points at ("refs/heads/main"), or None when HEAD is detached."""
        raw = self.read_raw(HEAD)
        if raw and raw.startswith("ref: "):
            return raw[5:]
        return None

    def resolve(self, ref: str) -> str | None:
        """Commit id a ref ends at (following HEAD's symbolic link), None for an unborn branch."""
        raw = self.read_raw(ref)
        if raw is None:
            return None
        if raw.startswith("ref: "):
            target = raw[5:]
            if ref != HEAD or not target.startswith(HEADS):  # only HEAD is symbolic, and only to a branch
                raise RefError(f"{ref} holds {raw!r}: only HEAD may point at a branch; run `mlvc fsck`")
            return self.resolve(target)
        if not is_object_id(raw):
            raise RefError(f"ref {ref} holds {raw!r}, not a commit id; run `mlvc fsck`")
        return raw

    def names(self, prefix: str) -> list[str]:
        """Short names of the refs under a prefix (HEADS or TAGS), without reading them."""
        base = self._folder(prefix)
        out: list[str] = []
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(".lock") or name.startswith(".tmp-"):
                    continue
                out.append(os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/"))
        return sorted(out)

    def list(self, prefix: str) -> dict[str, str]:
        """Refs under a prefix (HEADS or TAGS): short name -> commit id."""
        out: dict[str, str] = {}
        for short in self.names(prefix):
            value = self.resolve(prefix + short)
            if value:
                out[short] = value
        return out

    # -- writing -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, ref: str) -> Iterator[str]:
        path = self._path(ref)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = path + ".lock"
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.005
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                if time.monotonic() < deadline:  # another mlvc is moving this ref: wait our turn
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
                    continue
                raise RefConflictError(ref, _lock_advice(lock)) from None
        os.close(fd)
        try:
            yield lock
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            raise

    def update(self, ref: str, new: str | None, expected: str | None | bool = True, message: str = "",
               who: str = "", symbolic: str | None = None) -> None:
        """Compare-and-swap a ref to `new` (a commit id), or delete it when new is None.

        `expected` is the value the caller last saw (None: the ref must not exist); True skips the check.
        With `symbolic`, the ref (HEAD) is written as "ref: <symbolic>" instead.
        """
        if new is not None and not is_object_id(new):
            raise RefError(f"refusing to point {ref} at {new!r}: not a commit id")
        with self._locked(ref) as lock:
            current_raw = self.read_raw(ref)
            current = self.resolve(ref) if current_raw is not None else None
            if expected is not True and current != expected:
                os.unlink(lock)
                raise RefConflictError(ref, f"it moved (expected {expected}, found {current}); try again")
            path = self._path(ref)
            if new is None and symbolic is None:
                # Delete while still holding the lock: released first, another process could move the
                # ref in between and have its update silently deleted.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                fsync_dir(os.path.dirname(path))
                os.unlink(lock)
                self._prune_empty(os.path.dirname(path))
                # Like git, a deleted ref takes its reflog with it (`branch -d` prints the commit it was
                # at); a log left behind would also block a later ref named like a folder of it.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._log_path(ref))
                self._prune_empty(os.path.dirname(self._log_path(ref)))
                return
            else:
                body = f"ref: {symbolic}\n" if symbolic else f"{new}\n"
                with open(lock, "w", encoding="utf-8") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(lock, path)
                fsync_dir(os.path.dirname(path))
        new_value = self.resolve(ref) if symbolic else new
        if current != new_value or message:
            self.append_log(ref, current, new_value, who, message)

    def _prune_empty(self, folder: str) -> None:
        logs = os.path.join(self.dir, "logs")
        stop = {self._folder(HEADS), self._folder(TAGS), self.dir, logs, os.path.join(logs, "refs"),
                os.path.join(logs, "refs", "heads"), os.path.join(logs, "refs", "tags")}
        while folder not in stop and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            folder = os.path.dirname(folder)

    # -- reflog ------------------------------------------------------------------------------------
    def append_log(self, ref: str, old: str | None, new: str | None, who: str, message: str) -> None:
        path = self._log_path(ref)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        line = json.dumps({"old": old, "new": new, "who": who, "time": utc_now(), "message": message},
                          ensure_ascii=False, sort_keys=True)
        # One short O_APPEND write per line: concurrent appends do not interleave.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def reflog(self, ref: str) -> list[ReflogEntry]:
        """Entries newest first; a torn last line (crash mid-append) is skipped."""
        try:
            with open(self._log_path(ref), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.append(ReflogEntry(ref, d.get("old"), d.get("new"), d.get("who", ""), d.get("time", ""),
                                   d.get("message", "")))
        return out[::-1]

    def all_reflog_ids(self) -> Iterator[str]:
        base = os.path.join(self.dir, "logs")
        for folder, _dirs, files in os.walk(base):
            for name in files:
                ref = os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/")
                for e in self.reflog(ref):
                    yield from (x for x in (e.old, e.new) if x)
