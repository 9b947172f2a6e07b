"""The chunk pipeline: cut byte ranges into element-aligned chunks, hash, encode and store them in a
thread pool with a bounded window in flight (never whole tensors in memory), and read them back in order.

zstd, xxhash and numpy release the GIL, so threads scale on the byte work.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .errors import CorruptObjectError, FileChangedError
from .progress import NULL, Progress
from .store import BUNDLE_TENSOR_MAX, PACK_OBJECT_MAX, ObjectStore
from .util import hash_bytes, new_hasher

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from xxhash import xxh3_128

# concurrent.futures (which imports logging: about 7 ms) is imported when a pipeline runs, not when a command that
# never hashes or stores a chunk imports this module (tests/test_startup.py).


# Chunks smaller than this are hashed in the calling thread when nothing is stored (status).
_INLINE_BYTES = 64 << 10
# Small ranges read in the calling thread in file order are read a window at a time (_ReadAhead): windows
# of at least and at most these many bytes.
READ_AHEAD, READ_AHEAD_MIN = 1 << 20, 64 << 10


def aligned_chunk(chunk_size: int, width: int) -> int:
    return max(width, chunk_size - chunk_size % width)


def default_threads() -> int:
    """Two per core, up to 16: a commit's threads also wait on the disk (each object file is fsynced before it
    is renamed into place), and a second thread per core keeps the core encoding meanwhile. On 2 cores, MiniLM
    commits took 6% less time with 4 threads than with 2 (medians of 9 alternating fresh processes); checkouts
    the same time, for 6% more CPU (docs/design.md, "Speed")."""
    return max(1, min(16, 2 * (os.cpu_count() or 1)))


class FileRange:
    """Bytes [offset, offset + length) of an open file, read only when a chunk needs them (`read_into`).

    Files are read with preadv (into buffers the pipeline recycles), never mapped: a mapped file that another
    process truncates kills the reader with SIGBUS, which Python cannot catch, while a read simply comes back
    short, which is reported as FileChangedError (the file changed while it was read; nothing is committed).
    Slicing gives a sub-range without reading anything, so a segment over a 100 GB file costs nothing until
    its chunks are read, one window at a time."""

    __slots__ = ("fd", "offset", "length", "path")

    def __init__(self, fd: int, offset: int, length: int, path: str):
        self.fd, self.offset, self.length, self.path = fd, offset, length, path

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, s: slice) -> FileRange:
        start, stop, step = s.indices(self.length)
        assert step == 1, "a file range is sliced contiguously"
        return FileRange(self.fd, self.offset + start, max(0, stop - start), self.path)

    def read(self) -> bytes:
        """The range's bytes; FileChangedError when the file ends before it (it shrank since it was opened)."""
        return bytes(self.read_into(bytearray(self.length)))

    def read_into(self, buf: bytearray) -> memoryview:
        """The range read into the start of `buf` (at least `length` bytes), as a view of those bytes;
        FileChangedError when the file ends before the range does."""
        view = memoryview(buf)[: self.length]
        got = 0
        try:
            while got < self.length:
                n = os.preadv(self.fd, [view[got : got + (1 << 30)]], self.offset + got)
                if not n:
                    raise FileChangedError(self.path)
                got += n
        except OSError as e:
            if e.errno is not None and e.filename is None:
                e.filename = self.path
            raise
        return view


class _ReadAhead:
    """Small file ranges read by one thread, many per read while they run on in file order (a checkpoint of
    100,000 tiny tensors otherwise costs 100,000 preads, an eighth of its commit). A range that starts inside
    or right after the last read is read with a window twice as large as the last one (READ_AHEAD_MIN to
    READ_AHEAD); any other range is read alone, so ranges out of file order (a torch file's storages, in key
    order) read nothing they do not need."""

    def __init__(self) -> None:
        self.fd, self.path, self.start, self.data, self.size = -1, "", 0, b"", 0

    def read(self, r: FileRange) -> bytes:
        at = r.offset - self.start
        if r.fd != self.fd or r.path != self.path or at < 0 or at + r.length > len(self.data):
            on = r.fd == self.fd and r.path == self.path and 0 <= at <= len(self.data)
            self.size = min(max(2 * self.size, READ_AHEAD_MIN), READ_AHEAD) if on else 0
            self.fd, self.path, self.start, self.data, at = r.fd, r.path, r.offset, b"", 0
            try:
                data = os.pread(r.fd, max(r.length, self.size), r.offset)
            except OSError:
                data = b""
            if len(data) < r.length:  # the file ends before the range, or the read failed: read_into says which
                return r.read()
            self.data = data
        return self.data[at : at + r.length]


class Sliceable(Protocol):
    """What a segment's bytes can be besides a memoryview or a FileRange (mlvc.snapshot's joined file ranges):
    a length, and contiguous slices that are the chunks to store."""

    def __len__(self) -> int: ...

    def __getitem__(self, s: slice, /) -> memoryview | bytes | FileRange: ...


@dataclass
class Segment:
    """A byte range to store as chunks: a tensor's bytes, a header, or a file's bytes (in memory, or a
    FileRange read chunk by chunk)."""

    key: object
    data: memoryview | FileRange | Sliceable
    width: int = 1
    bases: list[str] | None = None  # chunk ids of the same range in the parent commit (delta bases)
    bases2: list[str] | None = None  # ... and in the grandparent (for the linear-prediction delta)
    lineage: list[list[str] | None] | None = None  # ... and in the first-parent ancestors, nearest first
    tensor: bool = False  # a tensor's bytes: if small, held for a bundle instead of stored (ObjectStore.hold)
    # A run of small tensors that lie end to end (their byte counts, in order), each held for a bundle when the
    # pipeline stores: read and hashed in one go instead of as a segment each (Pipeline.ingest;
    # SegmentResult.parts gets their ids)
    cuts: list[int] | None = None


@dataclass
class SegmentResult:
    chunks: list[str] = field(default_factory=list)
    hash: str = ""
    nbytes: int = 0
    parts: list[str] = field(default_factory=list)  # a run's (Segment.cuts) tensors' ids, in order


class _Run(NamedTuple):
    """A run of small tensors as ingest's in-flight item: their ids, and their bytes for the file's hash."""

    ids: list[str]
    data: bytes


@dataclass
class IngestStats:
    raw_bytes: int = 0
    stored_bytes: int = 0  # new bytes written to the store
    chunks: int = 0
    new_chunks: int = 0

    def add(self, other: IngestStats) -> None:
        self.raw_bytes += other.raw_bytes
        self.stored_bytes += other.stored_bytes
        self.chunks += other.chunks
        self.new_chunks += other.new_chunks


class Pipeline:
    def __init__(self, store: ObjectStore | None, chunk_size: int, threads: int | None = None,
                 progress: Progress = NULL, tmp_dir: str | None = None):
        self.store = store
        self.tmp_dir = tmp_dir  # where scratch files go (torch.save needs a path)
        self.chunk_size = chunk_size
        self.threads = threads or default_threads()
        # Chunks in flight beyond the ones being worked on: each holds a chunk's bytes until consumed, so
        # the window is what peak memory grows with (threads + 2 keeps every worker fed).
        self.window = self.threads + 2
        self.progress = progress
        self.stats = IngestStats()
        self.remember = False  # keep what is stored in the store's base cache (see ObjectStore.put)
        self._pooled = False  # inside `with`: chunks may go to the thread pool, made when the first one does
        self._pool: ThreadPoolExecutor | None = None
        # Buffers that file ranges are read into, recycled once their chunk is consumed: at most window + 1
        # are ever made. A fresh buffer per chunk costs a page fault per page (glibc maps large blocks, and
        # unmaps them when freed), which made hashing a file twice as slow as reading it.
        self._buffers: SimpleQueue[bytearray] = SimpleQueue()

    def __enter__(self) -> Pipeline:
        self._pooled = self.store is not None or self.threads > 1
        return self

    def _workers(self) -> ThreadPoolExecutor:
        """The thread pool (only inside `with`, and not with one thread and no store: `_pooled`), made when the
        first chunk goes to it: a pipeline that hands none to a worker (`mlvc status` of small files, or of files
        unchanged by stat) makes no pool and imports no concurrent.futures."""
        assert self._pooled
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mlvc")
        return self._pool

    def __exit__(self, *exc) -> None:
        self._pooled = False
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _put(self, data: memoryview | bytes | FileRange, width: int, base: str | None, base2: str | None,
             pack: bool = False, lineage: list[str | None] | None = None, hold: bool = False):
        """(id, new stored bytes, the bytes that were hashed, the pool buffer holding them or None). A file
        range is read here (in a worker) into a pool buffer, which only this chunk uses until it is consumed;
        an in-memory chunk is copied first when storing, so that its id, its stored encoding and the tensor
        and file hashes all come from the same bytes even if the caller's buffer changes meanwhile."""
        buf = None
        if isinstance(data, FileRange):
            try:
                buf = self._buffers.get_nowait()
            except Empty:
                buf = bytearray(max(self.chunk_size, data.length))
            if len(buf) < data.length:
                buf = bytearray(data.length)
            data = data.read_into(buf)
        elif self.store is not None and not isinstance(data, bytes):
            data = bytes(data)
        if self.store is None:
            return hash_bytes(data), 0, data, buf
        if hold:  # a small tensor: its bundle is stored with the manifest (bundles.store_bundles)
            data = data if isinstance(data, bytes) else bytes(data)  # never a pool buffer, which is reused
            oid = hash_bytes(data)
            self.store.hold(oid, data)
            return oid, 0, data, buf
        r = self.store.put(data, width, base=base, base2=base2, remember=self.remember, pack=pack, lineage=lineage)
        return r.id, r.stored_size, data, buf

    def _read_run(self, seg: Segment, ahead: _ReadAhead) -> _Run:
        """A run of small tensors (Segment.cuts) read at once, each tensor's bytes hashed and, with a store, held
        for its bundle (as `_put` holds one): 100,000 tiny tensors cost a slice and a hash each, not a segment
        each."""
        assert seg.cuts is not None and isinstance(seg.data, FileRange), "a run is a range of a file"
        raw = ahead.read(seg.data)
        ends = list(itertools.accumulate(seg.cuts))
        pieces = [raw[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        ids = list(map(hash_bytes, pieces))
        if self.store is not None:
            self.store.hold_many(ids, pieces)
        return _Run(ids, raw)

    def holds(self, nbytes: int, width: int) -> bool:
        """Whether a tensor of this size is held for a bundle (ObjectStore.hold) rather than stored as chunks:
        it needs no delta bases then."""
        return 0 < nbytes <= self.hold_limit(width)

    def small_limit(self, width: int) -> int:
        """The largest tensor of this element width that is one chunk of at most BUNDLE_TENSOR_MAX bytes: such
        tensors lying end to end are read as runs (snapshot._small_runs), and with a store held for bundles."""
        return min(aligned_chunk(self.chunk_size, width), BUNDLE_TENSOR_MAX)

    def hold_limit(self, width: int) -> int:
        """The largest tensor of this element width that is held for a bundle (small_limit); 0 without a store
        (nothing is held)."""
        return 0 if self.store is None else self.small_limit(width)

    def ingest(self, segments: Iterable[Segment]) -> tuple[dict[object, SegmentResult], str]:
        """Store every segment's chunks; returns per-key results and the hash of all bytes in order.

        At most `window` chunks are in flight (read, encoded, or waiting to be hashed in order), so memory
        stays bounded whatever the file size. An exception (a full disk, a file that changed, Ctrl-C) leaves
        through here as itself: no buffer is exported from anything that must be closed on the way out."""
        results: dict[object, SegmentResult] = {}
        file_hasher = new_hasher()
        hashers: dict[object, xxh3_128] = {}
        # A segment of one chunk needs no hasher of its own: its hash is its chunk's id (both are the xxh3-128
        # of the same bytes). Checkpoints of 100,000 small tensors spent a third of their time on hashers.
        inflight: deque[tuple[SegmentResult, xxh3_128 | None, Future | tuple]] = deque()

        def consume() -> None:
            res, hasher, fut = inflight.popleft()
            if isinstance(fut, _Run):
                res.parts = fut.ids
                file_hasher.update(fut.data)
                self.stats.chunks += len(fut.ids)
                self.stats.raw_bytes += len(fut.data)
                self.progress.advance(len(fut.data))
                return
            oid, stored, mv, buf = fut if isinstance(fut, tuple) else fut.result()
            n = len(mv)
            res.chunks.append(oid)
            if hasher is None:
                res.hash = oid
            else:
                hasher.update(mv)
            file_hasher.update(mv)
            del mv
            if buf is not None:  # hashed and stored: its buffer can take the next chunk
                self._buffers.put(buf)
            self.stats.chunks += 1
            self.stats.raw_bytes += n
            if stored:
                self.stats.new_chunks += 1
                self.stats.stored_bytes += stored
            self.progress.advance(n)

        ahead = _ReadAhead()
        try:
            for seg in segments:
                res = results[seg.key] = SegmentResult(nbytes=len(seg.data))
                if seg.cuts is not None:
                    inflight.append((res, None, self._read_run(seg, ahead)))
                    while len(inflight) > self.window:
                        consume()
                    continue
                step = aligned_chunk(self.chunk_size, seg.width)
                n = len(seg.data)
                hasher = None if 0 < n <= step else new_hasher()
                if hasher is not None:
                    hashers[seg.key] = hasher
                small = n <= PACK_OBJECT_MAX  # a small segment (tensor, header) is stored in a pack
                hold = seg.tensor and self.holds(n, seg.width)
                # A small chunk is hashed (and packed: no encoding, one append) here: a worker's hand-off costs
                # more than that, and a checkpoint of 100,000 tiny tensors spent most of its commit on hand-offs.
                inline = not self._pooled or (small if self.store is not None else n < _INLINE_BYTES)
                for i, start in enumerate(range(0, n, step)):
                    mv = seg.data[start : start + step]
                    if inline and isinstance(mv, FileRange) and mv.length < READ_AHEAD:
                        mv = ahead.read(mv)
                    lineage = [_at(ids, i) for ids in seg.lineage] if seg.lineage else None
                    args = (mv, seg.width, _at(seg.bases, i), _at(seg.bases2, i), small, lineage, hold)
                    fut = self._put(*args) if inline else self._workers().submit(self._put, *args)
                    inflight.append((res, hasher, fut))
                    while len(inflight) > self.window:
                        consume()
            while inflight:
                consume()
            if self.store is not None:
                self.store.seal()  # the packed objects readable by any process, like the loose ones
        except BaseException:
            # Nothing still running may outlive this call: a worker reading a file range after its caller
            # closed the file would read from a closed (or reused) descriptor.
            futures = [f for _, _, f in inflight if not isinstance(f, tuple)]
            if futures:
                from concurrent.futures import wait

                for f in futures:
                    f.cancel()
                wait(futures)
            raise
        for key, h in hashers.items():
            results[key].hash = h.hexdigest()
        return results, file_hasher.hexdigest()

    def read(self, ids: Iterable[str]) -> Iterator[bytes]:
        """Decoded chunks in order, decoding a window ahead in the pool."""
        assert self.store is not None
        store = self.store
        return self._ahead(((oid,) for oid in ids), store.get, store.is_small)

    def read_pieces(self, pieces: Iterable[str | tuple[str, int, int]]) -> Iterator[bytes | bytearray | memoryview]:
        """`read` of a sequence that also holds slices of objects, (id, start, end), each read in this thread
        (a run of small tensors in their bundle) while the chunks around it are decoded a window ahead."""
        assert self.store is not None
        store = self.store

        def fetch(piece: str | tuple[str, int, int]) -> bytes | bytearray | memoryview:
            if isinstance(piece, str):
                return store.get(piece)
            oid, start, end = piece
            return memoryview(store.get(oid, keep=True))[start:end]

        return self._ahead(((p,) for p in pieces), fetch, lambda p: not isinstance(p, str) or store.is_small(p))

    def read_pairs(self, pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[bytes | bytearray, bytes | bytearray]]:
        """Decoded pairs of chunks in order, both chunks of a pair decoded by one worker, the first kept in the
        store's cache of delta bases: the second is often a delta on the first (a diff of a commit against
        its parent), and its decode then starts from it instead of decoding it a second time."""
        assert self.store is not None
        store = self.store

        def both(a: str, b: str) -> tuple[bytes | bytearray, bytes | bytearray]:
            return store.get(a, keep=a != b), store.get(b)

        return self._ahead(pairs, both, lambda a, b: store.is_small(a) and store.is_small(b))

    def _ahead(self, items: Iterable[tuple], fetch: Callable[..., Any], small: Callable[..., bool]) -> Iterator:
        """fetch(*item) for each item, in order, a window ahead in the pool; a small item (a packed object: handing
        it to a worker costs more than reading it) is read here."""
        inflight: deque[Future | tuple] = deque()  # a worker's, or read here (in a 1-tuple)
        for item in items:
            if not self._pooled or small(*item):
                inflight.append((fetch(*item),))
            else:
                inflight.append(self._workers().submit(fetch, *item))
            if len(inflight) > self.window:
                yield _result(inflight.popleft())
        while inflight:
            yield _result(inflight.popleft())


def _at(ids: list[str] | None, i: int) -> str | None:
    return ids[i] if ids is not None and i < len(ids) else None


def _result(item: Future | tuple) -> Any:
    """A chunk in flight: a worker's Future, or the value the calling thread computed, in a 1-tuple."""
    return item[0] if isinstance(item, tuple) else item.result()


class VerifyingWriter:
    """Writes a file from pieces while hashing them; `check()` compares with the expected hash."""

    def __init__(self, f, expected_hash: str, what: str, progress: Progress = NULL):
        self.f = f
        self.hasher = new_hasher()
        self.expected = expected_hash
        self.what = what
        self.written = 0
        self.progress = progress

    def write(self, data) -> None:
        self.f.write(data)
        self.hasher.update(data)
        self.written += len(data)
        self.progress.advance(len(data))

    def check(self) -> None:
        if self.hasher.hexdigest() != self.expected:
            raise CorruptObjectError(self.expected, f"rebuilt {self.what} does not match the committed hash")
