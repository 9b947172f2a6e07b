"""The object store: content-addressed, verified on every read.

`ObjectStore` is the interface; `LooseObjectStore` keeps one file per object under `.mlvc/objects/ab/cdef...`
and `MemoryObjectStore` keeps them in a dict (tests, and a model for the contract tests that run one suite
over every backend).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from . import codec
from .errors import CorruptObjectError, ObjectNotFoundError
from .util import fsync_dir, hash_bytes, is_object_id


@dataclass(frozen=True)
class PutResult:
    id: str
    raw_size: int
    stored_size: int  # bytes this call added to the store (0 when the object was already there)

    @property
    def new(self) -> bool:
        return self.stored_size > 0


class ObjectStore:
    """Objects addressed by the xxh3-128 of their raw content."""

    def __init__(self, level: int = 1):
        self.level = level

    # -- what a backend provides -------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        raise NotImplementedError

    def read_file(self, oid: str) -> bytes:
        """The stored object file (header + payload), unverified. ObjectNotFoundError if absent."""
        raise NotImplementedError

    def write_file(self, oid: str, data: bytes) -> bool:
        """Store an encoded object file under oid unless present; True if it was written."""
        raise NotImplementedError

    def ids(self) -> Iterator[str]:
        raise NotImplementedError

    def stored_size(self, oid: str) -> int:
        raise NotImplementedError

    def delete(self, oid: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make every write so far durable (called before a ref is moved to point at them)."""

    def locate(self, oid: str) -> str | None:
        """Where the object lives, for messages (a path for disk stores)."""
        return None

    # -- shared logic ------------------------------------------------------------------------------
    def put(self, raw, width: int = 1, oid: str | None = None) -> PutResult:
        """Store raw bytes (encoded with byte planes of `width` and zstd); dedupes by content."""
        oid = oid or hash_bytes(raw)
        n = len(memoryview(raw).cast("B"))
        if self.has(oid):
            return PutResult(oid, n, 0)
        data = codec.encode(raw, width, self.level)
        written = self.write_file(oid, data)
        return PutResult(oid, n, len(data) if written else 0)

    def get(self, oid: str) -> bytes | bytearray:
        """The raw content of an object, verified against its id."""
        data = self.read_file(oid)
        try:
            raw = codec.decode(data)
        except codec.DecodeError as e:
            raise CorruptObjectError(oid, str(e), self.locate(oid)) from None
        if hash_bytes(raw) != oid:
            raise CorruptObjectError(oid, "content does not match its id", self.locate(oid))
        return raw

    def header(self, oid: str) -> codec.ObjectHeader:
        try:
            return codec.ObjectHeader.parse(self.read_file(oid)[: codec.HEADER_SIZE])
        except codec.DecodeError as e:
            raise CorruptObjectError(oid, str(e), self.locate(oid)) from None


class MemoryObjectStore(ObjectStore):
    def __init__(self, level: int = 1):
        super().__init__(level)
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def has(self, oid):
        return oid in self._objects

    def read_file(self, oid):
        try:
            return self._objects[oid]
        except KeyError:
            raise ObjectNotFoundError(oid) from None

    def write_file(self, oid, data):
        with self._lock:
            if oid in self._objects:
                return False
            self._objects[oid] = bytes(data)
            return True

    def ids(self):
        return iter(sorted(self._objects))

    def stored_size(self, oid):
        return len(self.read_file(oid))

    def delete(self, oid):
        self._objects.pop(oid, None)


class LooseObjectStore(ObjectStore):
    """One file per object: `root/ab/cdef...` (first two hex digits name the folder)."""

    def __init__(self, root: str, level: int = 1):
        super().__init__(level)
        self.root = root
        self._dirty: set[str] = set()
        self._lock = threading.Lock()

    def _path(self, oid: str) -> str:
        if not is_object_id(oid):
            raise ObjectNotFoundError(oid)
        return os.path.join(self.root, oid[:2], oid[2:])

    def locate(self, oid):
        return self._path(oid)

    def has(self, oid):
        return os.path.exists(self._path(oid))

    def read_file(self, oid):
        try:
            with open(self._path(oid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None

    def write_file(self, oid, data):
        path = self._path(oid)
        if os.path.exists(path):
            return False
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            with self._lock:
                self._dirty.add(self.root)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        with self._lock:
            self._dirty.add(folder)
        return True

    def flush(self):
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        # sub-folders first, then the root that holds any new sub-folder
        for folder in sorted(dirty, key=len, reverse=True):
            fsync_dir(folder)

    def ids(self):
        if not os.path.isdir(self.root):
            return
        for sub in sorted(os.listdir(self.root)):
            folder = os.path.join(self.root, sub)
            if len(sub) != 2 or not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if not name.startswith(".tmp-") and is_object_id(sub + name):
                    yield sub + name

    def stored_size(self, oid):
        try:
            return os.stat(self._path(oid)).st_size
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None

    def delete(self, oid):
        try:
            os.chmod(self._path(oid), 0o644)
            os.unlink(self._path(oid))
        except FileNotFoundError:
            pass
