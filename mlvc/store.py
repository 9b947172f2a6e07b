"""The object store: content-addressed, verified on every read.

`ObjectStore` is the interface; `LooseObjectStore` keeps one file per object under `.mlvc/objects/ab/cdef...`
and `MemoryObjectStore` keeps them in a dict (tests, and a model for the contract tests that run one suite
over every backend).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import codec
from .config import DEFAULT_CACHE_MB, DEFAULT_KEYFRAME_INTERVAL
from .errors import CorruptObjectError, ObjectNotFoundError
from .util import ID_HEX_LEN, atomic_writer, fsync_dir, hash_bytes

if TYPE_CHECKING:
    import zstandard

    from .rawcache import RawCache

# numpy and zstandard are imported where packs are read and written (numpy for the byte planes of a pack's
# sections), and the fsync pool by flush(): opening a repository, which every command does, imports none of them
# (tests/test_startup.py).


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
    a series (or a chain and then its successor) decodes each base once. Each is (raw, depth, proven):
    `proven` when it was decoded from its objects alone (or remembered as this process wrote its object), not
    through a raw copy (mlvc/rawcache.py) nor remembered for an object that was already there: those prove the
    bytes, not the object files a new delta would rest on."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes | bytearray, int, bool]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, oid: str, proven: bool = False) -> tuple[bytes | bytearray, int, bool] | None:
        """The entry; with `proven`, only a proven one."""
        with self._lock:
            item = self._items.get(oid)
            if item is None or (proven and not item[2]):
                return None
            self._items.move_to_end(oid)
            return item

    def put(self, oid: str, raw, depth: int, proven: bool = True) -> None:
        if len(raw) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(oid, None)
            if old is not None:
                if old[2] or not proven:  # a proven entry stays; an unproven one gives way to a proven decode
                    self._items[oid] = old
                    return
                self._bytes -= len(old[0])
            self._items[oid] = (raw, depth, proven)
            self._bytes += len(raw)
            while self._bytes > self.max_bytes:
                _, (gone, _d, _p) = self._items.popitem(last=False)
                self._bytes -= len(gone)

    def pop(self, oid: str) -> None:
        with self._lock:
            item = self._items.pop(oid, None)
            if item is not None:
                self._bytes -= len(item[0])


_ID = re.compile(f"[0-9a-f]{{{ID_HEX_LEN}}}")


def _is_id(oid: object) -> bool:
    """util.is_object_id, as one regex match: it runs several times per object put or read."""
    return isinstance(oid, str) and _ID.fullmatch(oid) is not None


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
                 cache_bytes: int = DEFAULT_CACHE_BYTES, skip_deltas: bool = False, raw_cache: RawCache | None = None):
        self.level = level
        self.keyframe_interval = keyframe_interval
        self.skip_deltas = skip_deltas  # core.skip_deltas: take skip-delta bases when given a lineage
        self.freshen_after = FRESHEN_AFTER
        self._cache = _LRU(cache_bytes)
        # Raw copies of the objects recent commits stored, on disk (mlvc/rawcache.py): what a checkout of a recent
        # commit reads instead of decoding delta chains. Never a delta base nor what fsck checks (`copies`).
        self.raw_cache = raw_cache
        # Small tensors' bytes by id, kept in bundles rather than object files of their own (docs/format.md,
        # "Bundles"): held in memory from ingest until a manifest stores their bundle, then read as slices of it.
        self._held: dict[str, bytes] = {}
        self._slices: dict[str, tuple[str, int, int]] = {}  # id -> (bundle id, offset, length)

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

    def is_small(self, oid: str) -> bool:
        """Known to be small (a packed object, a slice of a bundle): cheaper to read in the caller's thread than
        to hand over."""
        return self.is_slice(oid) or self._packed(oid)

    def _packed(self, oid: str) -> bool:
        return False

    def packed_raw(self, oid: str) -> bytes | memoryview | None:
        """The raw content, unverified, of an object a pack holds as raw bytes; None for any other object
        (the caller then reads its object file)."""
        return None

    def write_packed(self, oid: str, data: bytes) -> bool:
        """Store a small encoded object in the pack being built (a backend without packs writes it as any
        other object); True if it was not there. Readable by this store at once, by others after seal()."""
        return self.write_file(oid, data)

    def freshen_packed(self, oid: str) -> bool:
        """freshen() for a small object about to be packed: a backend with packs looks only in its packs (a
        loose copy from before packs then gains a packed one once: either serves)."""
        return self.freshen(oid)

    def write_packed_raw(self, oid: str, raw, width: int) -> int:
        """Store a small object given as its raw bytes (`width`: element size) in the pack being built; the
        bytes it adds (0 when it was there). A backend without packs encodes it and writes it as any other."""
        data = codec.encode(raw, width, self.level)
        return len(data) if self.write_packed(oid, data) else 0

    def seal(self) -> None:
        """Write the pack being built (if any) to its file, so that every object put so far is readable by
        any process; its durability comes with flush(), as for any write."""

    def locate(self, oid: str) -> str | None:
        """Where the object lives, for messages (a path for disk stores)."""
        return None

    # -- shared logic ------------------------------------------------------------------------------
    def put(self, raw, width: int = 1, oid: str | None = None, base: str | None = None,
            base2: str | None = None, remember: bool = False, pack: bool = False,
            lineage: list[str | None] | None = None) -> PutResult:
        """Store raw bytes; dedupes by content. With `base` (the same chunk in the parent commit) and
        optionally `base2` (in the grandparent), the object may be stored as a delta when that is smaller.

        `remember` keeps the raw bytes in the base cache: a training loop committing every N steps then
        finds its next commit's delta bases in memory instead of decoding their chains.

        `pack`: an object of at most PACK_OBJECT_MAX raw bytes is stored full, in the next pack file of a
        backend that has packs (the caller then calls `seal()` before anything names the object), instead of
        in a file of its own: a checkpoint of 100,000 small tensors made 100,000 files.

        `lineage`: the same chunk in the first-parent ancestors, nearest first (lineage[0] is `base`). With
        it, on a store made with `skip_deltas`, the base is chosen by skip-deltas (`skip_base`), so chains stay
        O(log K) deep instead of K, for a few % more storage (docs/design.md)."""
        oid = oid or hash_bytes(raw)
        n = len(memoryview(raw).cast("B"))
        if pack and n <= PACK_OBJECT_MAX:
            if self.freshen_packed(oid):
                return PutResult(oid, n, 0)
            return PutResult(oid, n, self.write_packed_raw(oid, raw, width))
        # An object already here is freshened, not rewritten: it may be old and unreachable (a deleted branch's),
        # and gc must not remove it now that a commit in flight needs it.
        if self.freshen(oid):  # False when absent
            if remember and self._cache.get(oid) is None:
                # not proven: this process did not write the object, and its file was not read (a delta base is
                # then decoded from it, which is)
                self._cache.put(oid, bytes(raw), self.header(oid).depth, proven=False)
            self._copy(oid, raw, n)
            return PutResult(oid, n, 0)
        data = None
        if self.skip_deltas and lineage and base and lineage[0] == base:
            base, base2 = self.skip_base(lineage)
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
        self._copy(oid, raw, n)  # after the object: the objects have the first claim on the disk
        if remember:
            self._cache.put(oid, bytes(raw), codec.ObjectHeader.parse(data).depth)
        return PutResult(oid, n, len(data) if written else 0)

    def _copy(self, oid: str, raw, n: int) -> None:
        """Leave a raw copy of a stored object in the raw cache (objects a pack holds are read raw anyway)."""
        if self.raw_cache is not None and n > PACK_OBJECT_MAX:
            self.raw_cache.put(oid, raw)

    def skip_base(self, lineage: list[str | None]) -> tuple[str | None, str | None]:
        """(base, base2) for a new version of a chunk whose earlier versions are `lineage` (ids, nearest
        first; None where the chunk did not exist), by skip-deltas (SVN's scheme): counting versions from the
        nearest full object (depth 0) as version 0, version n is a delta against version n & (n-1), so its
        chain is popcount(n) links (at most 3 for K = 8) instead of n; version K is a full object again. The
        pred coding needs the two versions before, so base2 is given only when the base is the parent.
        Versions are distinct consecutive ids (a commit that left the chunk as it was adds none). With no full
        object among them (a lineage shorter than the chain, or history from before skip-deltas), the parent
        and grandparent as before. (None, None): store a full object now."""
        versions: list[str] = []
        for oid in lineage:
            if oid is None:
                break
            if not versions or versions[-1] != oid:
                versions.append(oid)
        if not versions:
            return None, None
        fallback = versions[0], (versions[1] if len(versions) > 1 else None)
        n = 0
        for j, oid in enumerate(versions):
            try:
                depth = self.header(oid).depth
            except (ObjectNotFoundError, CorruptObjectError):
                return fallback
            if depth == 0:
                n = j + 1
                break
        else:
            return fallback
        if n >= self.keyframe_interval:
            return None, None
        b = n & (n - 1)
        base = versions[n - 1 - b]
        return base, (versions[1] if b == n - 1 and len(versions) > 1 else None)

    def _base(self, oid: str) -> codec.Base | None:
        """A usable delta base: present, intact, and shallow enough that a delta on it keeps the chain
        under the keyframe interval. Anything else means "store a full object", never an error."""
        try:
            # The depth is in the header: a base too deep to use is refused before its chain is decoded
            # (decoding a K-deep chain per chunk only to store a keyframe cost time and peak memory).
            if self._cache.get(oid, proven=True) is None and self.header(oid).depth + 1 >= self.keyframe_interval:
                return None
            # never a raw copy, nor bytes decoded through one: decoded from its objects (which proves them whole),
            # or what this process remembered as it stored them (`remember`)
            raw, depth, _ = self._load(oid, cache=True, copies=False)
        except (ObjectNotFoundError, CorruptObjectError):
            return None
        return codec.Base(oid, raw, depth) if depth + 1 < self.keyframe_interval else None

    def get(self, oid: str, keep: bool = False, copies: bool = True) -> bytes | bytearray:
        """The raw content of an object, verified against its id (and through its delta chain). `keep`: put it
        in the cache of delta bases too (the caller is about to read an object that is likely a delta on it).
        A small tensor's id gives its bytes, held or as a slice of its (verified) bundle. `copies`: the raw
        cache may give it (bytes verified against the id, but the object's file not read); False for a base
        that new objects will depend on."""
        held = self._held.get(oid)
        if held is not None:
            return held
        where = self._slices.get(oid)
        if where is not None:
            bid, offset, n = where
            return bytes(memoryview(self._load(bid, cache=True, copies=copies)[0])[offset : offset + n])
        return self._load(oid, cache=keep, copies=copies)[0]

    def get_many(self, oids: list[str]) -> list[bytes | bytearray]:
        """`get` of each id; held bytes (a new bundle's tensors) are looked up in one C-level map."""
        try:
            return list(map(self._held.__getitem__, oids))
        except KeyError:
            return list(map(self.get, oids))

    def hold(self, oid: str, raw: bytes) -> None:
        """Keep a small tensor's bytes (`oid` is their hash) until a manifest stores them in a bundle; `get`
        reads them meanwhile (before a slice of the same id, whose bundle gc may have removed since). Not an
        object: `has` does not see it, and nothing may name it as a delta base."""
        self._held[oid] = raw

    def hold_many(self, oids: list[str], raws: list[bytes]) -> None:
        """`hold` of each (id, bytes) pair."""
        self._held.update(zip(oids, raws, strict=True))

    def add_slices(self, bid: str, slices: list[tuple[str, int, int]]) -> None:
        """(id, offset, length) of tensors that bundle `bid` (an object of this store) holds: `get` reads them
        from it from now on, and their held bytes are dropped."""
        for oid, offset, n in slices:
            self._slices[oid] = (bid, offset, n)
            self._held.pop(oid, None)

    def is_slice(self, oid: str) -> bool:
        """Whether `get(oid)` reads held bytes or a bundle's slice rather than an object of that id."""
        return oid in self._held or oid in self._slices

    def retain_slices(self, keep: set[str]) -> None:
        """Forget the slices and held bytes of every id not in `keep`: a long-lived process (the Tracker's
        worker, a script committing in a loop) reads and writes many trees, and each one's small tensors would
        otherwise stay known for good (Repo.write_manifest calls it)."""
        self._slices = {k: v for k, v in self._slices.items() if k in keep}
        self._held = {k: v for k, v in self._held.items() if k in keep}

    @property
    def cache_bytes(self) -> int:
        """The bound, in bytes, of the cache of decoded delta bases (`core.cache_mb`; the Tracker's worker
        raises it to hold three versions of the checkpoint it commits)."""
        return self._cache.max_bytes

    @cache_bytes.setter
    def cache_bytes(self, n: int) -> None:
        self._cache.max_bytes = n  # a smaller bound takes effect as the next objects are cached

    def verify(self, oid: str) -> None:
        """Read the object from its file (not the cache, and its bases from theirs or from bytes decoded from
        theirs, never from raw copies) and check it decodes to content matching its id."""
        self._load(oid, from_cache=False, copies=False)

    def _load(self, oid: str, cache: bool = False, from_cache: bool = True,
              below: int | None = None, copies: bool = True) -> tuple[bytes | bytearray, int, bool]:
        """(raw, depth, proven). `below`: the depth of the delta that needs this object as a base; a base at or
        above it is refused before its own bases are read, so damaged files naming each other in a cycle cannot
        recurse forever. `copies`: the raw cache may give this object and its bases; without it, what is read
        (from the cache of decoded bases too) is `proven`: decoded from the object files alone."""
        hit = self._cache.get(oid, proven=not copies) if from_cache else None
        if hit is None and copies and self.raw_cache is not None and not self._packed(oid):
            copy = self._raw_cached(oid, below)
            hit = None if copy is None else (*copy, False)  # not proven; and not kept among decoded bases
        if hit is not None:
            return hit
        proven = True
        try:
            packed = self.packed_raw(oid)
            if packed is not None:  # a full object held as raw bytes: nothing to parse or decode
                raw: bytes | bytearray = bytes(packed)
                depth = 0
            else:
                raw, depth, proven = self._decode(oid, below, copies)
        except codec.DecodeError as e:
            raise CorruptObjectError(oid, str(e), self.locate(oid)) from None
        if hash_bytes(raw) != oid:
            raise CorruptObjectError(oid, "content does not match its id", self.locate(oid))
        if cache:
            self._cache.put(oid, raw, depth, proven)
        return raw, depth, proven

    def _raw_cached(self, oid: str, below: int | None) -> tuple[bytes, int] | None:
        """(raw, depth) from the raw cache. The object's own header comes first: the object must be there (a
        cached chunk whose object is gone is never read), shallow enough for the delta that needs it (else None:
        the decode says why), and its raw length is the size the entry must have; then the entry's bytes must
        match the id (an entry that does not is removed)."""
        raw_cache = self.raw_cache
        if raw_cache is None or not raw_cache.has(oid):
            return None
        h = self.header(oid)
        if below is not None and h.depth >= below:
            return None
        raw = raw_cache.get(oid, h.raw_length)
        if raw is None:
            return None
        if hash_bytes(raw) != oid:
            raw_cache.drop(oid)
            return None
        return raw, h.depth

    def _decode(self, oid: str, below: int | None, copies: bool = True) -> tuple[bytes | bytearray, int, bool]:
        """An object file's content, unverified, its delta bases loaded (and verified) first, its depth, and
        whether every base was proven (see _load); DecodeError."""
        # Only the header is read before the bases are decoded: a chain decode then holds one object file at
        # a time instead of one per link, so a reader's peak memory does not grow with the depth.
        head = self.read_head(oid, codec.HEADER_SIZE + 16)
        h = codec.ObjectHeader.parse(head)
        if below is not None and h.depth >= below:
            raise codec.DecodeError(f"it has depth {h.depth}, but a delta of depth {below} names it as its base")
        bases: dict[str, tuple[bytes | bytearray, int]] = {}
        proven = True
        for bid in (codec.bases(head) if h.base is not None else ()):
            try:
                braw, bdepth, bproven = self._load(bid, cache=True, below=h.depth, copies=copies)
                proven = proven and bproven
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
        return raw, h.depth, proven

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
        self._forget(oid)
        self._delete_file(oid)

    def _forget(self, oid: str) -> None:
        """Drop what is kept of an object being deleted: its decoded bytes in memory and in the raw cache."""
        self._cache.pop(oid)
        if self.raw_cache is not None:
            self.raw_cache.drop(oid)

    def delete_many(self, oids) -> None:
        """Delete several objects; a backend with packs rewrites each pack once for all of them."""
        for oid in oids:
            self.delete(oid)


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


# -- packs ---------------------------------------------------------------------------------------------------

PACK_DIR = "pack"
PACK_MAGIC = b"MLVP"
PACK_VERSION = 2  # the version written; version-1 packs (object files, 20-byte index entries) are still read
PACK_VERSIONS = (1, 2)
PACK_OBJECT_MAX = 16 << 10  # raw bytes: a chunk this small goes into a pack (see ObjectStore.put)
# A non-empty tensor of at most BUNDLE_TENSOR_MAX bytes is stored as a slice of a bundle, an object of up to
# BUNDLE_MAX bytes holding many such tensors of a file end to end (mlvc/bundles.py, docs/format.md "Bundles").
BUNDLE_TENSOR_MAX = 4 << 10
BUNDLE_MAX = 1 << 20
PACK_TARGET = 8 << 20  # object bytes a pack collects before it is written
_PACK_HEAD = struct.Struct("<4sB3sI")  # magic, version, 3 zero bytes, object count
_PACK_ENTRY = struct.Struct("<16sI")  # version 1: object id, length of its object file
_PACK_ID = 16  # version 2: the index is the ids, then the sizes frame
_U32 = struct.Struct("<I")
_PACK_TRAILER = 16  # xxh3-128 of every byte before it, also the pack's file name
_PACKS_CACHED = 4  # decompressed packs kept in memory


def _raw_object(raw) -> bytes:
    """The object file of a full object stored raw: what a version-2 packed object reads as."""
    return codec.HEADER.pack(codec.MAGIC, codec.FORMAT_VERSION, codec.ENC_RAW, 1, 0, len(raw), codec.NO_BASE) \
        + bytes(raw)


@dataclass
class _Index:
    """What the head of a pack file says: its version, object ids, their lengths in the pack's data (object
    files for version 1, raw bytes for version 2) and, for version 2, their plane widths; `why` when it is bad."""

    version: int
    ids: list[str]
    lengths: list[int] | None  # None: the head is too damaged to say
    widths: list[int] | None
    why: str | None = None
    data_start: int = 0  # where the data frame starts


def _read_index(f, size: int) -> _Index:
    """Parse a pack's head and index from an open file of `size` bytes, as far as they can be read."""
    head = f.read(_PACK_HEAD.size)
    if len(head) < _PACK_HEAD.size:
        return _Index(PACK_VERSION, [], None, None, "truncated header")
    magic, version, pad, count = _PACK_HEAD.unpack(head)
    why = None
    if magic != PACK_MAGIC or version not in PACK_VERSIONS or pad != bytes(3):
        why = "not an mlvc pack of a version this mlvc reads (damaged header?)"
        version = 2 if version == 2 else 1  # read the index as the version byte says, as far as it goes
    if version == 1:
        table = f.read(min(count, size // _PACK_ENTRY.size) * _PACK_ENTRY.size)
        entries = list(_PACK_ENTRY.iter_unpack(table[: len(table) - len(table) % _PACK_ENTRY.size]))
        if len(table) != count * _PACK_ENTRY.size:
            why = why or "truncated index"
        elif f.read(_PACK_TRAILER).hex() != hash_bytes(head + table):
            why = why or "its index does not match its hash"
        start = _PACK_HEAD.size + len(table) + _PACK_TRAILER
        return _Index(1, [i.hex() for i, _n in entries], [n for _i, n in entries], None, why, start)
    table = f.read(min(count, size // _PACK_ID) * _PACK_ID)
    ids = [table[i : i + _PACK_ID].hex() for i in range(0, len(table) - len(table) % _PACK_ID, _PACK_ID)]
    if len(table) != count * _PACK_ID:
        return _Index(2, ids, None, None, why or "truncated index")
    raw_len = f.read(_U32.size)
    n = _U32.unpack(raw_len)[0] if len(raw_len) == _U32.size else size
    frame = f.read(min(n, size))
    lengths = widths = None
    if len(frame) == n:
        import zstandard

        try:
            sizes = zstandard.ZstdDecompressor().decompress(frame, max_output_size=5 * count)
            if len(sizes) == 5 * count:
                lengths = [x for (x,) in _U32.iter_unpack(sizes[: 4 * count])]
                widths = list(sizes[4 * count :])
        except zstandard.ZstdError:
            pass
    if lengths is None or widths is None or not all(w and n % w == 0 for n, w in zip(lengths, widths, strict=True)):
        return _Index(2, ids, None, None, why or "its index cannot be read")
    if f.read(_PACK_TRAILER).hex() != hash_bytes(head + table + raw_len + frame):
        why = why or "its index does not match its hash"
    return _Index(2, ids, lengths, widths, why, _PACK_HEAD.size + len(table) + _U32.size + n + _PACK_TRAILER)


def _sections(widths: list[int]) -> list[tuple[int, list[int]]]:
    """A version-2 pack's data sections: (plane width, the indexes of its objects in index order), by width."""
    by_width: dict[int, list[int]] = {}
    for i, w in enumerate(widths):
        by_width.setdefault(w, []).append(i)
    return sorted(by_width.items())


def _split_sections(data: bytes, lengths: list[int], widths: list[int]) -> Iterator[tuple[int, bytes]]:
    """(plane width, its bytes) for each section of a version-2 pack's decompressed data."""
    at = 0
    for w, idx in _sections(widths):
        n = sum(lengths[i] for i in idx)
        yield w, data[at : at + n]
        at += n


def _positions(lengths: list[int], widths: list[int] | None) -> list[int]:
    """Each object's offset in the pack's data as a reader holds it: version 1 in index order; version 2
    section by section (ascending width), in index order within a section."""
    pos = [0] * len(lengths)
    at = 0
    order = range(len(lengths)) if widths is None else (i for _w, idx in _sections(widths) for i in idx)
    for i in order:
        pos[i] = at
        at += lengths[i]
    return pos


def _shuffle(raw: bytes, width: int) -> bytes:
    """The byte planes of a section: byte k of every element, for k = 0 .. width-1 (codec's planes, pack-wide)."""
    if width == 1:
        return raw
    import numpy as np

    return np.frombuffer(raw, np.uint8).reshape(-1, width).T.tobytes()


def _unshuffle(planes: bytes, width: int) -> bytes:
    if width == 1:
        return planes
    import numpy as np

    return np.frombuffer(planes, np.uint8).reshape(width, -1).T.tobytes()


def _pack_compressor() -> zstandard.ZstdCompressor:
    import zstandard

    return zstandard.ZstdCompressor(level=1, write_content_size=True)


def _decompress(frame: bytes, total: int, name: str) -> bytes:
    import zstandard

    try:
        data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=total)
    except zstandard.ZstdError as e:
        raise codec.DecodeError(f"pack {name}: zstd: {e}") from None
    if len(data) != total:
        raise codec.DecodeError(f"pack {name} holds {len(data)} bytes of objects, its index says {total}")
    return data


def _unpack(blob: bytes, name: str, index: _Index | None = None) -> bytes:
    """A pack's data as readers hold it (version 1: the concatenated object files; version 2: the raw bytes
    of its objects, section by section), after checking its trailer hash (its name)."""
    if len(blob) < _PACK_HEAD.size + _PACK_TRAILER or hash_bytes(blob[:-_PACK_TRAILER]) != name \
            or blob[-_PACK_TRAILER:].hex() != name:
        raise codec.DecodeError(f"pack {name} does not match its hash")
    if index is None:
        index = _read_index(io.BytesIO(blob), len(blob))
    if index.lengths is None or index.why is not None:
        raise codec.DecodeError(f"pack {name} is damaged: {index.why}")
    data = _decompress(blob[index.data_start : -_PACK_TRAILER], sum(index.lengths), name)
    if index.version == 1 or index.widths is None:
        return data
    return b"".join(_unshuffle(section, w) for w, section in _split_sections(data, index.lengths, index.widths))


class PackSet:
    """The pack files of a loose store (docs/format.md "Packs"): many small objects in one file, so that a
    checkpoint of 100,000 small tensors costs one file, one fsync and one zstd frame, not 100,000.

    A pack is written whole (atomically, named by the hash of its bytes) and never changed: deleting objects
    writes a new pack without them and removes the old one. Objects put since the last `seal()` are readable
    by this process only. A version-2 pack holds the raw bytes of its objects (packed objects are always full
    objects), byte planes of all objects of one element width together, in one zstd frame: 100,000 tiny
    tensors then compress as their file does, instead of paying an object header and a frame each. Every
    read is verified against the id like any other; the index has a hash of its own, and the trailer hash
    guards the whole file. Version-1 packs (ordinary object files) read as before."""

    def __init__(self, folder: str):
        self.folder = folder
        self._lock = threading.RLock()
        self._index: dict[str, tuple[str, int, int]] = {}  # id -> (pack name, offset in its data, length)
        self._members: dict[str, list[tuple[str, int, int]]] = {}  # pack name -> (id, offset, length)
        self._widths: dict[str, list[int] | None] = {}  # pack name -> plane widths (None: a version-1 pack)
        self._young: dict[str, float] = {}  # pack name -> until when (time.time()) its mtime counts as fresh
        self._bad: dict[str, str] = {}  # pack name -> why it cannot be read
        self._seen: int | None = None  # the folder's mtime_ns when it was last listed
        self._listed = float("-inf")  # time.monotonic() of that listing
        self._pending: dict[str, tuple[bytes, int]] = {}  # id -> (raw bytes, plane width)
        self._pending_bytes = 0
        self._data: OrderedDict[str, bytes] = OrderedDict()

    # -- index -------------------------------------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        """List the folder again when it changed since the last listing (new packs, removed packs)."""
        try:
            stamp = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            stamp = None
        with self._lock:
            self._listed = time.monotonic()
            if stamp == self._seen and not force:
                return
            names = set()
            if stamp is not None:
                names = {n[: -len(".pack")] for n in os.listdir(self.folder)
                         if n.endswith(".pack") and _is_id(n[: -len(".pack")])}
            for gone in set(self._members) - names:
                self._forget(gone)
            for gone in set(self._bad) - names:
                del self._bad[gone]
            for name in sorted(names - set(self._members)):
                self._load_index(name)
            self._seen = stamp

    def _forget(self, name: str) -> None:
        dropped = set()
        for oid, _pos, _n in self._members.pop(name, []):
            if self._index.get(oid, ("",))[0] == name:
                del self._index[oid]
                dropped.add(oid)
        self._data.pop(name, None)
        self._widths.pop(name, None)
        self._young.pop(name, None)
        if dropped:  # an object two packs hold (two writers, or a crash during a rewrite) stays found
            for other, members in self._members.items():
                for oid, pos, n in members:
                    if oid in dropped and oid not in self._index:
                        self._index[oid] = (other, pos, n)

    def _load_index(self, name: str) -> None:
        """Index a pack's objects. A pack whose head is damaged is still indexed as far as its index can be
        read, and marked bad: its objects then read as corrupt (what fsck must say), not as missing."""
        try:
            with open(os.path.join(self.folder, name + ".pack"), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                index = _read_index(f, size)
        except FileNotFoundError:
            return
        lengths = index.lengths if index.lengths is not None else [0] * len(index.ids)
        widths = index.widths if index.version == 2 and index.lengths is not None else None
        positions = _positions(lengths, widths)
        if index.why is None:  # one id per position (built in C: a pack of 100,000 tensors is read by every command)
            members = list(zip(index.ids, positions, lengths, strict=True))
        else:
            self._bad[name] = index.why
            members = [(oid, pos, length) for names, pos, length
                       in zip(self._recover_ids(name, index), positions, lengths, strict=True) for oid in names]
        found = dict(zip(reversed([m[0] for m in members]), reversed([(name, m[1], m[2]) for m in members]),
                         strict=True))  # reversed: the first of an id listed twice wins, as in _index below
        found.update((oid, self._index[oid]) for oid in found.keys() & self._index.keys())  # earlier packs win
        self._index.update(found)
        self._members[name] = members
        self._widths[name] = widths

    def _recover_ids(self, name: str, index: _Index) -> list[list[str]]:
        """The ids of a damaged pack's objects, each position's listed id and also the id its content gives
        where the content still decodes (a packed object is a full object: its id is the hash of what it
        decodes to), so that fsck names the objects the damage hits, even those whose id the damage garbled,
        as corrupt rather than missing. Without lengths (an index too damaged to say) the listed ids only."""
        listed = [[oid] for oid in index.ids]
        if index.lengths is None:
            return listed
        import zstandard

        try:
            with open(os.path.join(self.folder, name + ".pack"), "rb") as f:
                blob = f.read()
            total = sum(index.lengths)
            data = zstandard.ZstdDecompressor().decompress(blob[index.data_start : -_PACK_TRAILER],
                                                           max_output_size=total)
        except (OSError, zstandard.ZstdError):
            return listed
        if len(data) != total:
            return listed
        widths = index.widths if index.version == 2 else None
        if widths is not None:
            data = b"".join(_unshuffle(_section, w) for w, _section in _split_sections(data, index.lengths, widths))
        for ids, pos, n in zip(listed, _positions(index.lengths, widths), index.lengths, strict=True):
            piece = data[pos : pos + n]
            try:
                found = hash_bytes(piece if widths is not None else codec.decode(piece))
            except codec.DecodeError:
                continue
            if found != ids[0]:
                ids.append(found)
        return listed

    def _find(self, oid: str, recheck: bool = True) -> tuple[str, int, int] | None:
        """Where a pack holds the object. On a miss the folder is listed again if it changed (`recheck`), or
        (writers asking whether to write) only once a second: a pack another process wrote meanwhile then
        costs at most a duplicate object, never a wrong answer to a reader."""
        hit = self._index.get(oid)
        if hit is None and (recheck or time.monotonic() - self._listed > 1.0):
            self._refresh()
            hit = self._index.get(oid)
        return hit

    def bad_packs(self) -> dict[str, str]:
        """Pack files that cannot be read (name -> why): `mlvc fsck` reports them."""
        self._refresh(force=True)
        with self._lock:
            return dict(self._bad)

    # -- reading -----------------------------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        return oid in self._pending or self._find(oid) is not None

    def known(self, oid: str) -> bool:
        """In the pack being built or in a pack already indexed (no look at the folder)."""
        return oid in self._pending or oid in self._index

    def holds(self, oid: str) -> bool:
        """has(), for a writer: a pack written by another process in the last second may be missed."""
        return oid in self._pending or self._find(oid, recheck=False) is not None

    def ids(self) -> list[str]:
        self._refresh(force=True)
        with self._lock:
            return sorted(self._index)

    def path_of(self, oid: str) -> str | None:
        """The pack file holding the object, "" while it waits in the pack being built, None if absent."""
        if oid in self._pending:
            return ""
        hit = self._find(oid)
        return os.path.join(self.folder, hit[0] + ".pack") if hit else None

    def stored_size(self, oid: str) -> int | None:
        """The length of the object file the object reads as (header and raw bytes, for a version-2 pack): an
        upper bound of what it takes, as the pack compresses its objects together."""
        pending = self._pending.get(oid)
        if pending is not None:
            return codec.HEADER_SIZE + len(pending[0])
        hit = self._find(oid)
        if hit is None:
            return None
        return hit[2] if self._widths.get(hit[0]) is None else codec.HEADER_SIZE + hit[2]

    def read(self, oid: str) -> bytes | None:
        """The object file, None when no pack holds it."""
        pending = self._pending.get(oid)
        if pending is not None:
            return _raw_object(pending[0])
        found = self._member(oid)
        if found is None:
            return None
        data, name, pos, length = found
        if self._widths.get(name) is None:
            return data[pos : pos + length]
        return _raw_object(memoryview(data)[pos : pos + length])

    def raw(self, oid: str) -> bytes | memoryview | None:
        """The raw content of an object held as raw bytes (in a version-2 pack or the pack being built): what
        read() returns without the object header it would build, for a reader that has nothing to decode
        (a checkout of 100,000 small tensors parsed two headers per tensor). None when no pack holds it raw."""
        pending = self._pending.get(oid)
        if pending is not None:
            return pending[0]
        found = self._member(oid)
        if found is None or self._widths.get(found[1]) is None:
            return None
        data, _name, pos, length = found
        return memoryview(data)[pos : pos + length]

    def _member(self, oid: str) -> tuple[bytes, str, int, int] | None:
        """(the pack's data, its name, the object's offset and length in it). A pack rewritten meanwhile by
        another process (its old file removed) is looked up again once."""
        for _attempt in range(2):
            hit = self._find(oid)
            if hit is None:
                return None
            name, pos, length = hit
            data = self._pack_data(name)
            if data is not None:
                return data, name, pos, length
            self._refresh(force=True)
        return None

    def _pack_data(self, name: str) -> bytes | None:
        with self._lock:
            if name in self._bad:
                raise codec.DecodeError(f"its pack {name} is damaged: {self._bad[name]}")
            data = self._data.get(name)
            if data is not None:
                self._data.move_to_end(name)
                return data
            try:
                with open(os.path.join(self.folder, name + ".pack"), "rb") as f:
                    blob = f.read()
            except FileNotFoundError:
                return None
            data = _unpack(blob, name)  # DecodeError: the store reports the object as corrupt
            self._data[name] = data
            while len(self._data) > _PACKS_CACHED:
                self._data.popitem(last=False)
            return data

    def freshen(self, oid: str, after: float) -> bool:
        """Keep the object's pack young for gc (its mtime now when older than `after`). A pack found young
        is not looked at again while it stays young: 100,000 objects of one pack cost one stat, not 100,000."""
        if oid in self._pending:
            return True
        hit = self._find(oid, recheck=False)
        if hit is None:
            return False
        name = hit[0]
        now = time.time()
        if now < self._young.get(name, 0.0):
            return True
        path = os.path.join(self.folder, name + ".pack")
        try:
            mtime = os.stat(path).st_mtime
            if now - mtime > after:
                os.utime(path)
                mtime = now
            self._young[name] = mtime + after
        except FileNotFoundError:  # rewritten meanwhile: look again
            self._refresh(force=True)
            return self._find(oid) is not None
        except OSError:  # another user's pack in a shared store
            pass
        return True

    # -- writing -----------------------------------------------------------------------------------------
    def add(self, oid: str, raw, width: int = 1) -> bool:
        """Put a small object's raw bytes (`width`: its element size, a compression hint) in the pack being
        built; False when a pack already holds it."""
        with self._lock:
            if oid in self._pending or self._find(oid, recheck=False) is not None:
                return False
            raw = bytes(raw)
            self._pending[oid] = (raw, width if 1 <= width <= 255 and len(raw) % width == 0 else 1)
            self._pending_bytes += len(raw)
            return True

    def pending_bytes(self) -> int:
        return self._pending_bytes

    def seal(self) -> bool:
        """Write the objects put since the last seal as one pack; True when a pack was written."""
        with self._lock:
            if not self._pending:
                return False
            items = [(oid, raw, w) for oid, (raw, w) in self._pending.items()]
            name = self._write(items)
            self._pending.clear()
            self._pending_bytes = 0
            return name is not None

    def _write(self, items: list[tuple[str, bytes, int]]) -> str | None:
        """Write a version-2 pack of (id, raw bytes, plane width) items; its name."""
        if not items:
            return None
        lengths = [len(raw) for _, raw, _w in items]
        widths = [w for _, _raw, w in items]
        sizes = _pack_compressor().compress(b"".join(_U32.pack(n) for n in lengths) + bytes(widths))
        head = _PACK_HEAD.pack(PACK_MAGIC, PACK_VERSION, bytes(3), len(items))
        index = head + b"".join(bytes.fromhex(oid) for oid, _, _w in items) + _U32.pack(len(sizes)) + sizes
        sections = _sections(widths)
        planes = b"".join(_shuffle(b"".join(items[i][1] for i in idx), w) for w, idx in sections)
        body = index + bytes.fromhex(hash_bytes(index)) + _pack_compressor().compress(planes)
        trailer = bytes.fromhex(hash_bytes(body))
        name = trailer.hex()
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, name + ".pack")
        if not os.path.exists(path):
            with atomic_writer(path, mode=0o444, sync_dir=False) as f:
                f.write(body)
                f.write(trailer)
        members = []
        for (oid, _raw, _w), pos, n in zip(items, _positions(lengths, widths), lengths, strict=True):
            self._index.setdefault(oid, (name, pos, n))
            members.append((oid, pos, n))
        self._members[name] = members
        self._widths[name] = widths
        self._data[name] = b"".join(b"".join(items[i][1] for i in idx) for _w, idx in sections)
        return name

    def _raw_members(self, name: str, data: bytes) -> list[tuple[str, bytes, int]]:
        """A pack's objects as (id, raw bytes, plane width), for rewriting it (a version-1 pack's object
        files are decoded: the rewrite is a version-2 pack)."""
        widths = self._widths.get(name)
        out = []
        for k, (oid, pos, n) in enumerate(self._members.get(name, [])):
            piece = data[pos : pos + n]
            if widths is not None:
                out.append((oid, piece, widths[k]))
            else:
                h = codec.ObjectHeader.parse(piece)
                out.append((oid, bytes(codec.decode(piece)), h.width if h.encoding == codec.ENC_PLANES else 1))
        return out

    def delete(self, oids: list[str]) -> None:
        """Remove objects from their packs: each pack that holds some is rewritten without them (or removed
        when nothing else is in it). The new pack is written before the old one goes, so a crash in between
        leaves both (the objects, unreachable, are removed by the next gc)."""
        with self._lock:
            by_pack: dict[str, set[str]] = {}
            for oid in oids:
                if self._pending.pop(oid, None) is not None:
                    continue
                hit = self._find(oid)
                if hit is not None:
                    by_pack.setdefault(hit[0], set()).add(oid)
            for name, dead in by_pack.items():
                if name in self._bad:  # a damaged pack is left for the user to see (fsck names it)
                    continue
                data = self._pack_data(name)
                if data is None:
                    continue
                keep = [m for m in self._raw_members(name, data) if m[0] not in dead]
                path = os.path.join(self.folder, name + ".pack")
                try:
                    times = os.stat(path)
                except FileNotFoundError:
                    continue
                self._forget(name)
                new = self._write(keep)
                if new is not None and new != name:
                    # the objects kept are as old as they were: gc's grace must not restart for them
                    new_path = os.path.join(self.folder, new + ".pack")
                    with contextlib.suppress(OSError):
                        os.utime(new_path, ns=(times.st_atime_ns, times.st_mtime_ns))
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(path, 0o644)
                    os.unlink(path)
                fsync_dir(self.folder)


class LooseObjectStore(ObjectStore):
    """One file per object: `root/ab/cdef...` (first two hex digits name the folder); small objects are
    written together, into pack files `root/pack/<id>.pack` (PackSet, docs/format.md "Packs")."""

    def __init__(self, root: str, level: int = 1, **kwargs):
        super().__init__(level, **kwargs)
        self.root = root
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self.packs = PackSet(os.path.join(root, PACK_DIR))

    def _path(self, oid: str) -> str:
        if not _is_id(oid):
            raise ObjectNotFoundError(oid)
        return os.path.join(self.root, oid[:2], oid[2:])

    def has(self, oid):
        return _is_id(oid) and (os.path.exists(self._path(oid)) or self.packs.has(oid))

    def read_file(self, oid):
        if self.packs.known(oid):  # a dict lookup first: a checkout of 100,000 packed objects skips 100,000 opens
            data = self.packs.read(oid)
            if data is not None:
                return data
        try:
            with open(self._path(oid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            data = self.packs.read(oid)
            if data is None:
                raise ObjectNotFoundError(oid) from None
            return data

    def read_head(self, oid, n):
        return bytes(self.read_file(oid)[:n]) if self.packs.known(oid) else self._read_loose_head(oid, n)

    def _read_loose_head(self, oid, n):
        try:
            with open(self._path(oid), "rb") as f:
                return f.read(n)
        except FileNotFoundError:
            data = self.packs.read(oid)
            if data is None:
                raise ObjectNotFoundError(oid) from None
            return data[:n]

    def _packed(self, oid):
        return self.packs.known(oid)

    def packed_raw(self, oid):
        return self.packs.raw(oid) if self.packs.known(oid) else None

    def write_packed(self, oid, data):
        if not _is_id(oid):
            raise ObjectNotFoundError(oid)
        if os.path.exists(self._path(oid)):
            return False
        # a pack holds raw bytes (docs/format.md "Packs"): an object file from elsewhere (a fetch) is decoded,
        # and checked against its id, before it joins one
        try:
            h = codec.ObjectHeader.parse(data)
            raw = codec.decode(data) if h.depth == 0 else None
        except codec.DecodeError as e:
            raise CorruptObjectError(oid, str(e)) from None
        if raw is None:  # a delta is never packed
            return self.write_file(oid, data)
        if hash_bytes(raw) != oid:
            raise CorruptObjectError(oid, "content does not match its id")
        return self._pack(oid, raw, h.width if h.encoding == codec.ENC_PLANES else 1) > 0

    def freshen_packed(self, oid):
        # no stat of a loose path per small object: 100,000 of them cost a second of a commit
        return self.packs.holds(oid) and self.packs.freshen(oid, self.freshen_after)

    def write_packed_raw(self, oid, raw, width):
        # the caller (put) has just found the object absent, loose and packed: no second look at the disk
        if not _is_id(oid):
            raise ObjectNotFoundError(oid)
        return self._pack(oid, raw, width)

    def _pack(self, oid: str, raw, width: int) -> int:
        n = len(memoryview(raw).cast("B"))
        written = self.packs.add(oid, memoryview(raw).cast("B"), width)
        if self.packs.pending_bytes() >= PACK_TARGET:
            self.seal()
        return codec.HEADER_SIZE + n if written else 0  # the object file it reads as (stored_size)

    def seal(self):
        if self.packs.seal():
            with self._lock:
                self._dirty.add(self.packs.folder)
                self._dirty.add(self.root)

    def write_file(self, oid, data):
        path = self._path(oid)
        if os.path.exists(path) or self.packs.holds(oid):
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
        self.seal()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        subs = [d for d in dirty if d != self.root]
        # A commit touches up to 256 sub-folders: fsync them side by side (the calls wait on the disk, not
        # the CPU), then the root, which holds any new sub-folder.
        if len(subs) > 1:
            from concurrent.futures import ThreadPoolExecutor

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
                if not name.startswith(".tmp-") and _is_id(sub + name):
                    yield sub + name
        yield from self.packs.ids()

    def ids_with_prefix(self, prefix):
        if len(prefix) < 2 or not _is_hex(prefix):
            return super().ids_with_prefix(prefix)
        try:
            names = os.listdir(os.path.join(self.root, prefix[:2]))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = (prefix[:2] + name for name in names if not name.startswith(".tmp-"))
        loose = {oid for oid in found if oid.startswith(prefix) and _is_id(oid)}
        return sorted(loose | {oid for oid in self.packs.ids() if oid.startswith(prefix)})

    def stored_size(self, oid):
        try:
            return os.stat(self._path(oid)).st_size
        except FileNotFoundError:
            size = self.packs.stored_size(oid)
            if size is None:
                raise ObjectNotFoundError(oid) from None
            return size

    def mtime(self, oid):
        try:
            return os.stat(self._path(oid)).st_mtime
        except FileNotFoundError:
            path = self.packs.path_of(oid)
            if path is None:
                raise ObjectNotFoundError(oid) from None
            if path == "":  # in the pack being built: written just now
                return time.time()
            try:
                return os.stat(path).st_mtime
            except FileNotFoundError:
                raise ObjectNotFoundError(oid) from None

    def freshen(self, oid):
        # a packed object: a dict lookup, and a stat per pack (not per object) once in `freshen_after`
        if self.packs.known(oid) and self.packs.freshen(oid, self.freshen_after):
            return True
        path = self._path(oid)
        try:
            if time.time() - os.stat(path).st_mtime <= self.freshen_after:
                return True
            os.utime(path)  # allowed to the owner even on a read-only (0444) file
        except FileNotFoundError:
            return self.packs.freshen(oid, self.freshen_after)
        except OSError:  # another user's object in a shared store: it is there, but we cannot touch it
            return os.path.exists(path)
        return True

    def locate(self, oid):
        path = self._path(oid)
        if not os.path.exists(path):
            packed = self.packs.path_of(oid)
            if packed:
                return packed
        return path

    def _delete_file(self, oid):
        if not _is_id(oid):
            return
        try:
            os.chmod(self._path(oid), 0o644)
            os.unlink(self._path(oid))
        except FileNotFoundError:
            self.packs.delete([oid])

    def delete_many(self, oids) -> None:
        """Delete several objects at once: a pack holding several of them is rewritten once, not per object."""
        packed = []
        for oid in oids:
            self._forget(oid)
            if self.packs.path_of(oid):
                packed.append(oid)
            else:
                self._delete_file(oid)
        self.packs.delete(packed)
