"""The raw cache (`.mlvc/cache/raw/ID`): the decoded bytes of the objects the latest commits stored, so that a
checkout (or a diff, a load) of a recent commit reads them instead of decoding delta chains.

A file's name is the object's id, its content the object's raw bytes. Only a regular file (never a link, never
a FIFO) of exactly the object's raw length is read, and the store checks its bytes against the id before using
them (an entry that is not what its name says is removed), after reading the object's own header: a read from
here never succeeds where the object is gone. Writes are not made durable (nothing in here is needed to read the
repository; deleting the folder only costs decoding again); each is a temp file renamed into place. Every put
marks its entry as just used, and after a tree is written (`Repo.write_manifest`) the least recently put entries
beyond twice the tree's size are removed, so the cache holds about the last two commits' objects
(docs/design.md, "The raw cache"). When the disk runs low the cache empties itself and writes nothing more.
"""

from __future__ import annotations

import contextlib
import os
import stat

from .util import atomic_writer, is_object_id

# Below this much free space on the cache's disk, the cache writes nothing and empties itself: the objects of a
# commit need the room more.
MIN_FREE_BYTES = 1 << 30


class RawCache:
    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self._off = False  # a write failed or the disk ran low: no more writes in this process

    def _path(self, oid: str) -> str | None:
        return os.path.join(self.folder, oid) if is_object_id(oid) else None

    def has(self, oid: str) -> bool:
        """A regular file is there under the id (a cheap look before the object's header is read)."""
        path = self._path(oid)
        try:
            return path is not None and stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False

    def get(self, oid: str, length: int) -> bytes | None:
        """The bytes of the entry, unverified (the caller checks them against the id), when it is a regular file
        of `length` bytes (the object's raw length; an entry of another size is removed unread); else None."""
        path = self._path(oid)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size != length:
                self.drop(oid)
                return None
            return f.read()

    def drop(self, oid: str) -> None:
        """Remove an entry (its bytes are not its id's, or gc deleted its object)."""
        path = self._path(oid)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def put(self, oid: str, raw) -> None:
        """Cache `raw` (whose hash is `oid`) unless an entry of its size is there, and mark the entry as just
        used either way. Never raises for the disk: a cache that cannot be written is only slower."""
        path = self._path(oid)
        n = len(memoryview(raw).cast("B"))
        if path is None or self._off or n > self.max_bytes:
            return
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size == n:  # else (a link, a short torn write) written anew
                os.utime(path, follow_symlinks=False)
                return
        except FileNotFoundError:
            pass
        except OSError:
            self._off = True
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
            if _free_bytes(self.folder) - n < MIN_FREE_BYTES:
                self._off = True
                self.clear()
                return
            with atomic_writer(path, durable=False) as f:
                f.write(raw)
        except OSError:
            self._off = True

    def clear(self) -> None:
        self.trim(0)

    def trim(self, keep_bytes: int) -> None:
        """Remove the least recently put entries until the cache holds at most `keep_bytes` (and at most the
        cache's bound)."""
        bound = min(keep_bytes, self.max_bytes)
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


def _free_bytes(folder: str) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
