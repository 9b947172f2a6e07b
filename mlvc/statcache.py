"""The stat cache (`.mlvc/index.json`): for each working file, the stat fields seen when its content was
last hashed, so that `status` on an unchanged multi-GB checkpoint costs one stat() instead of a read.

Like git's index it guards against racy writes: an entry whose file was modified less than RACY_NS before
its stat was taken is not trusted (a write in the same clock tick could leave the stat unchanged). The stat
is taken *before* the file is hashed (`stat_now`, passed to `record`), so a write during the hashing shows as
a changed stat; each entry keeps its own time `at`, so re-saving the cache never makes an old entry trusted.
"""

from __future__ import annotations

import json
import os
import time

from .util import atomic_write_bytes

RACY_NS = 1_000_000_000


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


class StatCache:
    def __init__(self, mlvc_dir: str):
        self.path = os.path.join(mlvc_dir, "index.json")
        self.entries: dict[str, dict] = {}
        self.written_ns = 0
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            self.entries = dict(data.get("files", {}))
            self.written_ns = int(data.get("written_ns", 0))
            for e in self.entries.values():
                e.setdefault("at", self.written_ns)
        except (OSError, ValueError, TypeError, AttributeError, RecursionError):
            pass  # a missing or damaged cache only costs a re-hash
        self.dirty = False

    def lookup(self, rel: str, abs_path: str) -> str | None:
        """The file hash recorded for an unchanged file, else None."""
        e = self.entries.get(rel)
        if not e:
            return None
        try:
            st = os.stat(abs_path)
        except OSError:
            return None
        if e.get("stat") != _stat_key(st) or st.st_mtime_ns + RACY_NS >= e.get("at", self.written_ns):
            return None
        return e.get("hash")

    def recorded(self, rel: str, seen: tuple[list[int], int] | None) -> str | None:
        """The hash recorded for the file if `seen` (a `stat_now()`) is the stat it was recorded with, however
        close to its last write: a hint that a whole-file hash will most likely confirm (a status right after a
        commit, when `lookup` cannot vouch for the file), never a proof."""
        e = self.entries.get(rel)
        return e.get("hash") if e and seen is not None and e.get("stat") == seen[0] else None

    @staticmethod
    def stat_now(abs_path: str) -> tuple[list[int], int] | None:
        """The file's stat fields and a time no later than when they were read; take this before hashing
        the file and pass it to `record`."""
        at = time.time_ns()
        try:
            return _stat_key(os.stat(abs_path)), at
        except OSError:
            return None

    def record(self, rel: str, abs_path: str, file_hash: str,
               seen: tuple[list[int], int] | None = None) -> None:
        """Remember that the file hashed to `file_hash`. `seen` is `stat_now()` from before the hashing;
        without it (a file mlvc itself just wrote) the stat is read now and timed when the cache is saved."""
        entry: dict[str, object]
        if seen is None:
            try:
                entry = {"stat": _stat_key(os.stat(abs_path)), "hash": file_hash}
            except OSError:
                return
        else:
            entry = {"stat": seen[0], "hash": file_hash, "at": seen[1]}
        self.entries[rel] = entry
        self.dirty = True

    def forget(self, rel: str) -> None:
        if self.entries.pop(rel, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.written_ns = time.time_ns()
        for e in self.entries.values():
            e.setdefault("at", self.written_ns)  # entries recorded without a stat from before hashing
        data = json.dumps({"written_ns": self.written_ns, "files": self.entries}, sort_keys=True)
        try:
            atomic_write_bytes(self.path, data.encode(), sync_dir=False)
        except OSError:
            pass  # the cache is an optimisation; a read-only repo still works
        self.dirty = False
