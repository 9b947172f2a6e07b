"""The chunk pipeline: cut byte ranges into element-aligned chunks, hash, encode and store them in a
thread pool with a bounded window in flight (never whole tensors in memory), and read them back in order.

zstd, xxhash and numpy release the GIL, so threads scale on the byte work.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import CorruptObjectError
from .progress import NULL, Progress
from .store import ObjectStore
from .util import hash_bytes, new_hasher


def aligned_chunk(chunk_size: int, width: int) -> int:
    return max(width, chunk_size - chunk_size % width)


def default_threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


@dataclass
class Segment:
    """A byte range to store as chunks: a tensor's bytes, a header, or a file's bytes."""

    key: object
    data: memoryview
    width: int = 1
    end_offset: int | None = None  # where the range ends in its source file (to release mapped pages)
    bases: list[str] | None = None  # chunk ids of the same range in the parent commit (delta bases)
    bases2: list[str] | None = None  # ... and in the grandparent (for the linear-prediction delta)


@dataclass
class SegmentResult:
    chunks: list[str] = field(default_factory=list)
    hash: str = ""
    nbytes: int = 0


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
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Pipeline:
        if self.store is not None or self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mlvc")
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _put(self, data: memoryview, width: int, base: str | None, base2: str | None):
        """(id, new stored bytes, the bytes that were hashed). When storing, the chunk is copied first, so
        that its id, its stored encoding and the tensor and file hashes all come from the same bytes even if
        the file under the map is rewritten meanwhile (snapshot then notices and refuses the commit)."""
        if self.store is None:
            return hash_bytes(data), 0, data
        data = bytes(data)
        r = self.store.put(data, width, base=base, base2=base2, remember=self.remember)
        return r.id, r.stored_size, data

    def ingest(self, segments: Iterable[Segment], release: Callable[[int], None] | None = None
               ) -> tuple[dict[object, SegmentResult], str]:
        """Store every segment's chunks; returns per-key results and the hash of all bytes in order."""
        results: dict[object, SegmentResult] = {}
        file_hasher = new_hasher()
        hashers: dict[object, object] = {}
        inflight: deque[tuple[SegmentResult, object, Future | tuple, int | None]] = deque()

        def consume() -> None:
            res, hasher, fut, end = inflight.popleft()
            oid, stored, mv = fut.result() if isinstance(fut, Future) else fut
            res.chunks.append(oid)
            hasher.update(mv)
            file_hasher.update(mv)
            self.stats.chunks += 1
            self.stats.raw_bytes += len(mv)
            if stored:
                self.stats.new_chunks += 1
                self.stats.stored_bytes += stored
            self.progress.advance(len(mv))
            if release is not None and end is not None:
                release(end)

        for seg in segments:
            res = results[seg.key] = SegmentResult(nbytes=len(seg.data))
            hasher = hashers[seg.key] = new_hasher()
            step = aligned_chunk(self.chunk_size, seg.width)
            n = len(seg.data)
            for i, start in enumerate(range(0, n, step)):
                mv = seg.data[start : start + step]
                end = None if seg.end_offset is None else seg.end_offset - n + start + len(mv)
                args = (mv, seg.width, _at(seg.bases, i), _at(seg.bases2, i))
                fut = self._pool.submit(self._put, *args) if self._pool else self._put(*args)
                inflight.append((res, hasher, fut, end))
                while len(inflight) > self.window:
                    consume()
        while inflight:
            consume()
        for key, res in results.items():
            res.hash = hashers[key].hexdigest()
        return results, file_hasher.hexdigest()

    def read(self, ids: Iterable[str]) -> Iterator[bytes]:
        """Decoded chunks in order, decoding a window ahead in the pool."""
        assert self.store is not None
        ids = iter(ids)
        inflight: deque[Future] = deque()
        pool = self._pool
        for oid in ids:
            inflight.append(pool.submit(self.store.get, oid) if pool else _done(self.store.get(oid)))
            if len(inflight) > self.window:
                yield inflight.popleft().result()
        while inflight:
            yield inflight.popleft().result()


def _at(ids: list[str] | None, i: int) -> str | None:
    return ids[i] if ids is not None and i < len(ids) else None


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


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
