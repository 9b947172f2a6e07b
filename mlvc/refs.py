"""Refs: branches (refs/heads/*), tags (refs/tags/*) and HEAD, each move logged in a reflog.

A ref file holds a commit id and a newline; HEAD holds "ref: refs/heads/NAME" or a commit id (detached).
A ref moves only by compare-and-swap, through explicit operations (as dulwich's): `set_if_equals`,
`add_if_new`, `remove_if_equals`, and `set_symbolic` for HEAD. Each takes the ref's lock (`REF.lock`, the one
lock primitive of mlvc/lockfile.py: it records its holder, and a dead holder's lock is cleared), checks the
current value against what the caller expected, appends the reflog line, then writes the new value with the
one durable write (util.atomic_writer: temp file, fsync, rename, fsync the folder). The reflog line goes first,
as git writes it: when the append fails (a full disk) nothing moved and the error says so; a crash between the
two leaves a reflog line for a move that did not land, never a move without its line.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import faults, lockfile
from .errors import RefConflictError, RefError
from .util import TMP_PREFIX, atomic_write_bytes, fsync_dir, is_object_id, utc_now

HEAD = "HEAD"
HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"  # remote-tracking refs, refs/remotes/NAME/BRANCH: written by fetch (mlvc.remote)

_BAD_NAME = re.compile(r"(^[./-])|(\.\.)|([\x00-\x20\x7f~^:?*\[\\])|(@\{)|(/\.)|(\.lock$)|(/$)|(//)|(\.$)")


def check_name(name: str, kind: str = "branch") -> str:
    """Validate a branch or tag name with git's rules (no spaces, '..', '~', '^', ':' ...)."""
    if name == "HEAD":  # a revision of its own: a branch or tag of that name could never be named
        raise RefError(f"'HEAD' is not a valid {kind} name: HEAD always means the current commit; pick another name")
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


class RefStore:
    def __init__(self, mlvc_dir: str):
        self.dir = mlvc_dir

    def _parts(self, ref: str) -> list[str]:
        """A ref's path parts, refusing anything but HEAD and names under refs/heads/, refs/tags/ or refs/remotes/
        whose parts are all ordinary names: a ref name can never reach a file outside those folders."""
        parts = ref.split("/")
        if ref != HEAD and not (ref.startswith((HEADS, TAGS, REMOTES)) and len(parts) > 2
                                and all(p and p not in (".", "..") and "\x00" not in p for p in parts)):
            raise RefError(f"{ref!r} is not a ref mlvc can use (HEAD, refs/heads/NAME or refs/tags/NAME)")
        return parts

    def _path(self, ref: str) -> str:
        return os.path.join(self.dir, *self._parts(ref))

    def _folder(self, prefix: str) -> str:
        """The folder of HEADS, TAGS or REMOTES."""
        assert prefix in (HEADS, TAGS, REMOTES)
        return os.path.join(self.dir, *prefix.strip("/").split("/"))

    def _log_path(self, ref: str) -> str:
        return os.path.join(self.dir, "logs", *self._parts(ref))

    # -- reading -----------------------------------------------------------------------------------
    def read_raw(self, ref: str) -> str | None:
        try:
            with open(self._path(ref), "rb") as f:
                data = f.read(4096)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise RefError(f"ref {ref} holds bytes that are not text ({data[:40]!r}); it is damaged: run "
                           "`mlvc fsck`, then point it at a commit again (`mlvc reflog` lists where it was)") from None

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
        """Short names of the refs under a prefix (HEADS, TAGS or REMOTES), without reading them."""
        base = self._folder(prefix)
        out: list[str] = []
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(lockfile.LOCK_SUFFIX) or name.startswith(TMP_PREFIX):
                    continue
                out.append(os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/"))
        return sorted(out)

    def list(self, prefix: str) -> dict[str, str]:
        """Refs under a prefix (HEADS, TAGS or REMOTES): short name -> commit id."""
        out: dict[str, str] = {}
        for short in self.names(prefix):
            value = self.resolve(prefix + short)
            if value:
                out[short] = value
        return out

    # -- writing -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, ref: str) -> Iterator[str | None]:
        """Hold the ref's lock; yields its current value (a commit id, None when absent)."""
        path = self._path(ref)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with lockfile.locked(path + lockfile.LOCK_SUFFIX, ref):
            raw = self.read_raw(ref)
            yield self.resolve(ref) if raw is not None else None

    def _swap(self, ref: str, expected: str | None, body: str | None, new: str | None, who: str,
              message: str) -> None:
        """Under the lock: check, log, then write `body` (None: delete the ref)."""
        if new is not None and not is_object_id(new):
            raise RefError(f"refusing to point {ref} at {new!r}: not a commit id")
        with self._locked(ref) as current:
            if current != expected:
                raise RefConflictError(ref, f"it moved (expected {expected}, found {current}); try again")
            path = self._path(ref)
            if body is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                fsync_dir(os.path.dirname(path))
                faults.point("ref.deleted")
                # Like git, a deleted ref takes its reflog with it (`branch -d` prints the commit it was
                # at); a log left behind would also block a later ref named like a folder of it.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._log_path(ref))
            else:
                if current != new or message:
                    self.append_log(ref, current, new, who, message)
                atomic_write_bytes(path, body.encode())
                faults.point("ref.moved")
        if body is None:
            self._prune_empty(os.path.dirname(self._path(ref)))
            self._prune_empty(os.path.dirname(self._log_path(ref)))

    def set_if_equals(self, ref: str, old: str | None, new: str, who: str = "", message: str = "") -> None:
        """Point `ref` at commit `new` if it is at `old` now (None: it must not exist); RefConflictError else."""
        self._swap(ref, old, f"{new}\n", new, who, message)

    def add_if_new(self, ref: str, new: str, who: str = "", message: str = "") -> None:
        """Create `ref` at `new`; RefConflictError if it exists."""
        self._swap(ref, None, f"{new}\n", new, who, message)

    def remove_if_equals(self, ref: str, old: str, who: str = "", message: str = "") -> None:
        """Delete `ref` (and its reflog) if it is at `old` now; RefConflictError else."""
        if ref == HEAD:
            raise RefError("HEAD cannot be deleted")
        self._swap(ref, old, None, None, who, message)

    def set_symbolic(self, ref: str, target: str, old: str | None, who: str = "", message: str = "") -> None:
        """Make HEAD follow the branch `target` (refs/heads/NAME) if HEAD is at commit `old` now."""
        if ref != HEAD or not target.startswith(HEADS):
            raise RefError(f"only HEAD may point at a branch, not {ref} at {target}")
        self._parts(target)
        self._swap(ref, old, f"ref: {target}\n", self.resolve(target), who, message)

    def _prune_empty(self, folder: str) -> None:
        logs = os.path.join(self.dir, "logs")
        stop = {self._folder(HEADS), self._folder(TAGS), self.dir, logs, os.path.join(logs, "refs"),
                os.path.join(logs, "refs", "heads"), os.path.join(logs, "refs", "tags")}
        while folder not in stop and os.path.isdir(folder) and not os.listdir(folder):
            try:
                os.rmdir(folder)
            except OSError:  # another process made a ref in it meanwhile
                return
            folder = os.path.dirname(folder)

    # -- reflog ------------------------------------------------------------------------------------
    @staticmethod
    def _log_line(old: str | None, new: str | None, who: str, time: str, message: str) -> bytes:
        line = json.dumps({"old": old, "new": new, "who": who, "time": time, "message": message},
                          ensure_ascii=False, sort_keys=True)
        return (line + "\n").encode("utf-8", "surrogateescape")

    def append_log(self, ref: str, old: str | None, new: str | None, who: str, message: str) -> None:
        path = self._log_path(ref)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = self._log_line(old, new, who, utc_now(), message)
        # One short O_APPEND write per line: concurrent appends do not interleave. A line torn by a crash
        # has no newline: start on a fresh line so the torn one cannot swallow this entry.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.point("reflog.appended")

    # Below `def list`, the annotations inside this class name the builtin as builtins.list.
    def reflog_lines(self, ref: str) -> tuple[builtins.list[ReflogEntry], int]:
        """(entries oldest first, number of damaged lines skipped: torn by a crash, or not mlvc's)."""
        try:
            with open(self._log_path(ref), "rb") as f:
                lines = f.read().split(b"\n")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return [], 0
        out: builtins.list[ReflogEntry] = []
        bad = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                d = json.loads(line.decode("utf-8"))
                old, new = d.get("old"), d.get("new")
                if not all(x is None or (isinstance(x, str) and is_object_id(x)) for x in (old, new)):
                    raise ValueError("not commit ids")
                out.append(ReflogEntry(ref, old, new, str(d.get("who", "")), str(d.get("time", "")),
                                       str(d.get("message", ""))))
            except (ValueError, AttributeError, RecursionError):  # Unicode/JSONDecodeError are ValueErrors
                bad += 1
        return out, bad

    def expire_log(self, ref: str, drop: Callable[[ReflogEntry], bool]) -> int:
        """Remove the lines of `ref`'s reflog for which `drop(entry)` is true (and, when it rewrites, damaged
        lines), in one durable rewrite under the ref's lock, which every move holds while it appends: no line
        written meanwhile is lost. A log with nothing to drop is not touched (nor its lock taken). The number
        of entries removed."""
        if not any(drop(e) for e in self.reflog_lines(ref)[0]):
            return 0
        with self._locked(ref):
            entries, _ = self.reflog_lines(ref)
            kept = [e for e in entries if not drop(e)]
            if len(kept) < len(entries):
                data = b"".join(self._log_line(e.old, e.new, e.who, e.time, e.message) for e in kept)
                atomic_write_bytes(self._log_path(ref), data)
                faults.point("reflog.expired")
        return len(entries) - len(kept)

    def reflog(self, ref: str) -> builtins.list[ReflogEntry]:
        """Entries newest first; damaged lines (a line torn by a crash mid-append) are skipped."""
        return self.reflog_lines(ref)[0][::-1]

    def reflog_refs(self) -> builtins.list[str]:
        """Every ref that has a reflog."""
        base = os.path.join(self.dir, "logs")
        out = []
        for folder, _dirs, files in os.walk(base):
            out += [os.path.relpath(os.path.join(folder, n), base).replace(os.sep, "/") for n in files
                    if not n.startswith(TMP_PREFIX)]
        return sorted(out)

    def all_reflog_ids(self) -> Iterator[str]:
        for ref in self.reflog_refs():
            with contextlib.suppress(RefError):
                for e in self.reflog(ref):
                    yield from (x for x in (e.old, e.new) if x)
