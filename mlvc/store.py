"""The object store: content-addressed, verified on every read.

`ObjectStore` is the interface; `LooseObjectStore` keeps one file per object under `.mlvc/objects/ab/cdef...`
and `MemoryObjectStore` keeps them in a dict (tests, and a model for the contract tests that run one suite
over every backend).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import codec
from .config import DEFAULT_CACHE_MB, DEFAULT_KEYFRAME_INTERVAL
from .errors import CorruptObjectError, ObjectNotFoundError
from .util import atomic_writer, fsync_dir, hash_bytes, is_object_id


@dataclass(frozen=True)
class PutResult:
    id: str
    raw_size: int
    stored_size: int  # bytes this call added to the store (0 when the object was already there)

    @property
    def new(self) -> bool:
        return self.stored_size > 0


class _LRU:
    """Decoded objects by id, bounded in bytes: the bases of delta chains, so that reading many commits of
    a series (or a chain and then its successor) decodes each base once."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes | bytearray, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, oid: str) -> tuple[bytes | bytearray, int] | None:
        with self._lock:
            item = self._items.get(oid)
            if item is not None:
                self._items.move_to_end(oid)
            return item

    def put(self, oid: str, raw, depth: int) -> None:
        if len(raw) > self.max_bytes:
            return
        with self._lock:
            if oid in self._items:
                return
            self._items[oid] = (raw, depth)
            self._bytes += len(raw)
            while self._bytes > self.max_bytes:
                _, (old, _d) = self._items.popitem(last=False)
                self._bytes -= len(old)

    def pop(self, oid: str) -> None:
        with self._lock:
            item = self._items.pop(oid, None)
            if item is not None:
                self._bytes -= len(item[0])


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


DEFAULT_CACHE_BYTES = DEFAULT_CACHE_MB << 20  # config.py owns the defaults
# An object that a write dedupes against (or uses as a delta base) gets its mtime set to now when it is older
# than this, so that `mlvc gc` sees it as young while the commit that needs it has not moved its ref yet
# (git freshens objects the same way). One hour: a small fraction of gc's grace (2 weeks by default), and a
# stat per put otherwise. docs/format.md (Garbage collection) says why the grace must exceed it.
FRESHEN_AFTER = 3600.0


class ObjectStore:
    """Objects addressed by the xxh3-128 of their raw content.

    `keyframe_interval` K bounds delta chains: an object is stored as a delta only while its chain stays
    under K links, so every K-th version of a chunk is a full object and a read decodes at most K objects.
    K = 1 turns deltas off.
    """

    def __init__(self, level: int = 1, keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.level = level
        self.keyframe_interval = keyframe_interval
        self.freshen_after = FRESHEN_AFTER
        self._cache = _LRU(cache_bytes)

    # -- what a backend provides -------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        raise NotImplementedError

    def read_file(self, oid: str) -> bytes:
        """The stored object file (header + payload), unverified. ObjectNotFoundError if absent."""
        raise NotImplementedError

    def read_head(self, oid: str, n: int) -> bytes:
        """The first n bytes of the stored object file (fewer if it is shorter). ObjectNotFoundError if absent."""
        return bytes(self.read_file(oid)[:n])

    def write_file(self, oid: str, data: bytes) -> bool:
        """Store an encoded object file under oid unless present; True if it was written."""
        raise NotImplementedError

    def ids(self) -> Iterator[str]:
        raise NotImplementedError

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """The ids of present objects that start with `prefix` (lowercase hex), sorted. A backend that can
        look in one place instead of listing every id (the loose store's two-digit folders) overrides it."""
        if not _is_hex(prefix):
            return []
        return sorted(oid for oid in self.ids() if oid.startswith(prefix))

    def stored_size(self, oid: str) -> int:
        raise NotImplementedError

    def _delete_file(self, oid: str) -> None:
        raise NotImplementedError

    def mtime(self, oid: str) -> float:
        """When the object was written or last freshened (seconds since the epoch). ObjectNotFoundError if absent."""
        raise NotImplementedError

    def freshen(self, oid: str) -> bool:
        """Mark a present object as just used: its mtime becomes now when older than `freshen_after`. False when
        the object is absent (gc may have removed it a moment ago: the caller writes it again). A backend without
        mtimes only says whether the object is there."""
        return self.has(oid)

    def flush(self) -> None:
        """Make every write so far durable (called before a ref is moved to point at them)."""

    def locate(self, oid: str) -> str | None:
        """Where the object lives, for messages (a path for disk stores)."""
        return None

    # -- shared logic ------------------------------------------------------------------------------
    def put(self, raw, width: int = 1, oid: str | None = None, base: str | None = None,
            base2: str | None = None, remember: bool = False) -> PutResult:
        """Store raw bytes; dedupes by content. With `base` (the same chunk in the parent commit) and
        optionally `base2` (in the grandparent), the object may be stored as a delta when that is smaller.

        `remember` keeps the raw bytes in the base cache: a training loop committing every N steps then
        finds its next commit's delta bases in memory instead of decoding their chains."""
        oid = oid or hash_bytes(raw)
        n = len(memoryview(raw).cast("B"))
        # An object already here is freshened, not rewritten: it may be old and unreachable (a deleted branch's),
        # and gc must not remove it now that a commit in flight needs it.
        if self.freshen(oid):  # False when absent
            if remember and self._cache.get(oid) is None:
                self._cache.put(oid, bytes(raw), self.header(oid).depth)
            return PutResult(oid, n, 0)
        data = None
        if base and base != oid and self.keyframe_interval > 1:
            b1 = self._base(base)
            if b1 is not None:
                b2 = self._base(base2) if base2 and base2 not in (oid, base) else None
                data = codec.encode_delta(raw, width, self.level, b1, b2)
        # A delta needs its bases for as long as it lives: keep them young too. A base gone from the disk (a
        # cached one that gc removed meanwhile) cannot carry a delta: store the object full instead.
        if data is not None and not all([self.freshen(bid) for bid in codec.bases(data)]):
            data = None
        if data is None:
            data = codec.encode(raw, width, self.level)
        written = self.write_file(oid, data)
        if not written:  # another writer stored it meanwhile
            self.freshen(oid)
        if remember:
            self._cache.put(oid, bytes(raw), codec.ObjectHeader.parse(data).depth)
        return PutResult(oid, n, len(data) if written else 0)

    def _base(self, oid: str) -> codec.Base | None:
        """A usable delta base: present, intact, and shallow enough that a delta on it keeps the chain
        under the keyframe interval. Anything else means "store a full object", never an error."""
        try:
            # The depth is in the header: a base too deep to use is refused before its chain is decoded
            # (decoding a K-deep chain per chunk only to store a keyframe cost time and peak memory).
            if self._cache.get(oid) is None and self.header(oid).depth + 1 >= self.keyframe_interval:
                return None
            raw, depth = self._load(oid, cache=True)
        except (ObjectNotFoundError, CorruptObjectError):
            return None
        return codec.Base(oid, raw, depth) if depth + 1 < self.keyframe_interval else None

    def get(self, oid: str) -> bytes | bytearray:
        """The raw content of an object, verified against its id (and through its delta chain)."""
        return self._load(oid)[0]

    @property
    def cache_bytes(self) -> int:
        return self._cache.max_bytes

    def verify(self, oid: str) -> None:
        """Read the object from its file (not the cache) and check it decodes to content matching its id."""
        self._load(oid, from_cache=False)

    def _load(self, oid: str, cache: bool = False, from_cache: bool = True,
              below: int | None = None) -> tuple[bytes | bytearray, int]:
        """`below`: the depth of the delta that needs this object as a base; a base at or above it is refused
        before its own bases are read, so damaged files naming each other in a cycle cannot recurse forever."""
        hit = self._cache.get(oid) if from_cache else None
        if hit is not None:
            return hit
        try:
            # Only the header is read before the bases are decoded: a chain decode then holds one object
            # file at a time instead of one per link, so a reader's peak memory does not grow with the depth.
            head = self.read_head(oid, codec.HEADER_SIZE + 16)
            h = codec.ObjectHeader.parse(head)
            if below is not None and h.depth >= below:
                raise codec.DecodeError(f"it has depth {h.depth}, but a delta of depth {below} names it as its base")
            bases: dict[str, tuple[bytes | bytearray, int]] = {}
            for bid in codec.bases(head):
                try:
                    braw, bdepth = self._load(bid, cache=True, below=h.depth)
                except ObjectNotFoundError:
                    raise codec.DecodeError(f"its delta base {bid} is missing") from None
                if bdepth >= h.depth:  # depths strictly fall along a chain: no cycles, bounded recursion
                    raise codec.DecodeError(f"base {bid} has depth {bdepth}, not below {h.depth}")
                bases[bid] = (braw, bdepth)
            data = self.read_file(oid)
            if bytes(data[: len(head)]) != head:
                raise codec.DecodeError("the object file changed while it was read")

            def get_base(bid: str):
                if bid not in bases:
                    raise codec.DecodeError(f"names a base {bid} its header does not")
                return bases[bid][0]

            raw = codec.decode(data, get_base)
            del data
            base_depths = [d for _, d in bases.values()]
            if base_depths and h.depth != 1 + max(base_depths):
                raise codec.DecodeError(f"depth {h.depth} does not follow from its bases' depths {base_depths}")
        except codec.DecodeError as e:
            raise CorruptObjectError(oid, str(e), self.locate(oid)) from None
        if hash_bytes(raw) != oid:
            raise CorruptObjectError(oid, "content does not match its id", self.locate(oid))
        if cache:
            self._cache.put(oid, raw, h.depth)
        return raw, h.depth

    def header(self, oid: str) -> codec.ObjectHeader:
        try:
            return codec.ObjectHeader.parse(self.read_head(oid, codec.HEADER_SIZE))
        except codec.DecodeError as e:
            raise CorruptObjectError(oid, str(e), self.locate(oid)) from None

    def bases(self, oid: str) -> list[str]:
        """The objects this one is a delta against (empty for a full object)."""
        try:
            return codec.bases(self.read_head(oid, codec.HEADER_SIZE + 16))
        except codec.DecodeError as e:
            raise CorruptObjectError(oid, str(e), self.locate(oid)) from None

    def delete(self, oid: str) -> None:
        self._cache.pop(oid)
        self._delete_file(oid)


class MemoryObjectStore(ObjectStore):
    def __init__(self, level: int = 1, **kwargs):
        super().__init__(level, **kwargs)
        self._objects: dict[str, bytes] = {}
        self._mtimes: dict[str, float] = {}
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
            self._mtimes[oid] = time.time()
            return True

    def ids(self):
        return iter(sorted(self._objects))

    def stored_size(self, oid):
        return len(self.read_file(oid))

    def _delete_file(self, oid):
        with self._lock:
            self._objects.pop(oid, None)
            self._mtimes.pop(oid, None)

    def mtime(self, oid):
        try:
            return self._mtimes[oid]
        except KeyError:
            raise ObjectNotFoundError(oid) from None

    def freshen(self, oid):
        with self._lock:
            if oid not in self._objects:
                return False
            now = time.time()
            if now - self._mtimes.get(oid, 0.0) > self.freshen_after:
                self._mtimes[oid] = now
            return True


class LooseObjectStore(ObjectStore):
    """One file per object: `root/ab/cdef...` (first two hex digits name the folder)."""

    def __init__(self, root: str, level: int = 1, **kwargs):
        super().__init__(level, **kwargs)
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
        return is_object_id(oid) and os.path.exists(self._path(oid))

    def read_file(self, oid):
        try:
            with open(self._path(oid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None

    def read_head(self, oid, n):
        try:
            with open(self._path(oid), "rb") as f:
                return f.read(n)
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
        # the folder is fsynced once per commit, in flush(), before any ref points at the object
        with atomic_writer(path, mode=0o444, sync_dir=False) as f:
            f.write(data)
        with self._lock:
            self._dirty.add(folder)
        return True

    def flush(self):
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        subs = [d for d in dirty if d != self.root]
        # A commit touches up to 256 sub-folders: fsync them side by side (the calls wait on the disk, not
        # the CPU), then the root, which holds any new sub-folder.
        if len(subs) > 1:
            with ThreadPoolExecutor(min(16, len(subs)), thread_name_prefix="mlvc-fsync") as pool:
                list(pool.map(fsync_dir, subs))
        elif subs:
            fsync_dir(subs[0])
        if self.root in dirty:
            fsync_dir(self.root)

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

    def ids_with_prefix(self, prefix):
        if len(prefix) < 2 or not _is_hex(prefix):
            return super().ids_with_prefix(prefix)
        try:
            names = os.listdir(os.path.join(self.root, prefix[:2]))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = (prefix[:2] + name for name in names if not name.startswith(".tmp-"))
        return sorted(oid for oid in found if oid.startswith(prefix) and is_object_id(oid))

    def stored_size(self, oid):
        try:
            return os.stat(self._path(oid)).st_size
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None

    def mtime(self, oid):
        try:
            return os.stat(self._path(oid)).st_mtime
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None

    def freshen(self, oid):
        path = self._path(oid)
        try:
            if time.time() - os.stat(path).st_mtime <= self.freshen_after:
                return True
            os.utime(path)  # allowed to the owner even on a read-only (0444) file
        except FileNotFoundError:
            return False
        except OSError:  # another user's object in a shared store: it is there, but we cannot touch it
            return os.path.exists(path)
        return True

    def _delete_file(self, oid):
        if not is_object_id(oid):
            return
        try:
            os.chmod(self._path(oid), 0o644)
            os.unlink(self._path(oid))
        except FileNotFoundError:
            pass
