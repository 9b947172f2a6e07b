"""The stat cache (`.mlvc/index.json`): for each working file, the stat fields seen when its content was
last hashed, so that `status` on an unchanged multi-GB checkpoint costs one stat() instead of a read.

Like git's index it guards against racy writes: an entry whose file was modified less than RACY_NS before
the cache was written is not trusted (a write in the same clock tick could leave the stat unchanged).
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
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
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
        if e.get("stat") != _stat_key(st) or st.st_mtime_ns + RACY_NS >= self.written_ns:
            return None
        return e.get("hash")

    def record(self, rel: str, abs_path: str, file_hash: str) -> None:
        try:
            st = os.stat(abs_path)
        except OSError:
            return
        self.entries[rel] = {"stat": _stat_key(st), "hash": file_hash}
        self.dirty = True

    def forget(self, rel: str) -> None:
        if self.entries.pop(rel, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.written_ns = time.time_ns()
        data = json.dumps({"written_ns": self.written_ns, "files": self.entries}, sort_keys=True)
        try:
            atomic_write_bytes(self.path, data.encode(), sync_dir=False)
        except OSError:
            pass  # the cache is an optimisation; a read-only repo still works
        self.dirty = False
