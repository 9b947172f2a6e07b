"""The raw cache (`.mlvc/cache/raw/ID`): the decoded bytes of the chunks the latest commits stored, so that the
next commit finds its delta bases, and a checkout of a recent commit its chunks, without decoding delta chains.

A file's name is the chunk's id, its content the chunk's raw bytes: the store checks them against the id before
using them (a damaged or torn file is a miss, and is removed), and reads the object's header for its depth, so a
chunk whose object is gone is never read from here. Writes are not made durable (nothing in here is needed to
read the repository; deleting the folder only costs decoding again); each is a temp file renamed into place.
Every put marks its file as just used, and `trim`, after a commit's puts, removes the least recently put files
beyond twice what the commit put (its chunks and, put before them, its parent's: the bases of the next commit's
deltas and predictions) or beyond `core.raw_cache_mb`, whichever is less (docs/design.md, "The raw cache").
"""

from __future__ import annotations

import contextlib
import os
import threading

from .util import atomic_writer, is_object_id


class RawCache:
    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self._put_bytes = 0  # what was put since the last trim
        self._broken = False  # a write failed (a full disk, a read-only repository): stop trying in this process
        self._lock = threading.Lock()

    def _path(self, oid: str) -> str | None:
        return os.path.join(self.folder, oid) if is_object_id(oid) else None

    def has(self, oid: str) -> bool:
        path = self._path(oid)
        return path is not None and os.path.isfile(path)

    def get(self, oid: str, length: int) -> bytes | None:
        """The bytes cached under `oid` when there are `length` of them (the object's raw length: a file of any
        other size is not read), unverified (the caller checks them against the id); else None."""
        path = self._path(oid)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != length:
                    return None
                return f.read()
        except OSError:
            return None

    def drop(self, oid: str) -> None:
        """Remove an entry (its bytes do not match its id, or gc deleted its object)."""
        path = self._path(oid)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def put(self, oid: str, raw) -> None:
        """Cache `raw` (whose hash is `oid`) unless it is there, and mark the entry as just used either way.
        Never raises for the disk: a cache that cannot be written is only slower."""
        path = self._path(oid)
        n = len(memoryview(raw).cast("B"))
        if path is None or self._broken or n > self.max_bytes:
            return
        with self._lock:
            self._put_bytes += n
        try:
            os.utime(path)
            return
        except FileNotFoundError:
            pass
        except OSError:
            self._broken = True
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
            with atomic_writer(path, durable=False) as f:
                f.write(raw)
        except OSError:
            self._broken = True

    def trim(self) -> None:
        """After a commit's puts: remove the least recently put entries until the cache holds at most twice what
        was put since the last trim, and at most `max_bytes`."""
        with self._lock:
            bound, self._put_bytes = min(self.max_bytes, 2 * self._put_bytes), 0
        if not bound:
            return
        entries = []
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    if is_object_id(e.name):
                        with contextlib.suppress(OSError):
                            st = e.stat(follow_symlinks=False)
                            entries.append((st.st_mtime_ns, e.name, st.st_size))
        except OSError:
            return
        total = sum(size for _, _, size in entries)
        for _, name, size in sorted(entries):
            if total <= bound:
                break
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.folder, name))
            total -= size
