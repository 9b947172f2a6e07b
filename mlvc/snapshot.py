"""Files <-> file entries: store a checkpoint file (or in-memory tensors) as chunks, and write it back.

With a store, a snapshot writes chunks; with `Pipeline(store=None)` it only computes the ids, which is how
`status` compares the working checkpoint with a commit without writing anything.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from . import formats
from .chunking import Pipeline, Segment, VerifyingWriter
from .dtypes import plane_width
from .errors import CorruptObjectError, FileChangedError, FormatError, PathError
from .formats import safetensors as st
from .objects import KIND_BLOB, KIND_SAFETENSORS, KIND_TORCH, FileEntry, TensorEntry
from .util import hash_bytes, new_hasher

HEADER_KEY = "\x00header"
_RELEASE_EVERY = 8 << 20  # mapped pages behind the consumer are dropped in steps of this size


@dataclass
class NamedBuffer:
    """An in-memory tensor to commit: its bytes (C order, little-endian) and what they are."""

    name: str
    dtype: str
    shape: list[int]
    data: memoryview


@dataclass
class History:
    """The same file in the parent and grandparent commits: where a new chunk's delta bases come from.

    A tensor's chunk i is delta-coded against chunk i of the tensor with the same name, dtype and shape
    (chunks then cover the same elements); a blob's or header's chunk i against chunk i of the same path."""

    parent: FileEntry | None = None
    grandparent: FileEntry | None = None

    @staticmethod
    def _tensor(entry: FileEntry | None, name: str, dtype: str, shape: list[int]) -> list[str] | None:
        if entry is None:
            return None
        t = next((t for t in entry.tensors if t.name == name), None)
        return list(t.chunks) if t is not None and t.dtype == dtype and list(t.shape) == list(shape) else None

    def tensor(self, name: str, dtype: str, shape: list[int]) -> dict:
        return {"bases": self._tensor(self.parent, name, dtype, shape),
                "bases2": self._tensor(self.grandparent, name, dtype, shape)}

    def header(self) -> dict:
        return {"bases": self.parent.header if self.parent else None,
                "bases2": self.grandparent.header if self.grandparent else None}

    def blob(self) -> dict:
        return {"bases": self.parent.chunks if self.parent else None,
                "bases2": self.grandparent.chunks if self.grandparent else None}


NO_HISTORY = History()


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[tuple[memoryview, callable]]:
    """The file as a read-only memoryview over mmap, and a `release(offset)` that drops the pages before
    `offset` from this process (so a 100 GB file never makes a 100 GB resident set)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield memoryview(b""), lambda _offset: None
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        done = [0]

        def release(offset: int) -> None:
            upto = offset - offset % mmap.PAGESIZE
            if upto - done[0] >= _RELEASE_EVERY and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED, done[0], upto - done[0])
                done[0] = upto

        mv = memoryview(mm)
        try:
            yield mv, release
        finally:
            mv.release()
            mm.close()


def snapshot_path(pipe: Pipeline, abs_path: str, rel: str, as_blob: bool = False,
                  history: History = NO_HISTORY) -> FileEntry:
    kind = KIND_BLOB if as_blob else formats.kind_of(rel)
    if not os.path.isfile(abs_path):
        raise PathError(f"{rel} is not a file")
    before = _identity(abs_path)
    if kind == KIND_SAFETENSORS:
        entry = _snapshot_safetensors(pipe, abs_path, rel, history)
    elif kind == KIND_TORCH:
        entry = _snapshot_torch(pipe, abs_path, rel, history)
    else:
        entry = _snapshot_blob(pipe, abs_path, rel, history)
    if _identity(abs_path) != before:
        raise FileChangedError(rel)
    return entry


def _identity(path: str) -> tuple[int, int, int, int]:
    st_ = os.stat(path)
    return st_.st_size, st_.st_mtime_ns, st_.st_ino, st_.st_ctime_ns


def _snapshot_blob(pipe: Pipeline, abs_path: str, rel: str, history: History) -> FileEntry:
    with _mapped(abs_path) as (mv, release):
        segs = [Segment(KIND_BLOB, mv, 1, len(mv), **history.blob())]
        results, fhash = pipe.ingest(segs, release)
        del segs
    return FileEntry(rel, KIND_BLOB, results[KIND_BLOB].nbytes, fhash, chunks=results[KIND_BLOB].chunks)


def _snapshot_safetensors(pipe: Pipeline, abs_path: str, rel: str, history: History) -> FileEntry:
    with open(abs_path, "rb") as f:
        layout = st.read_layout(f, rel)
    with _mapped(abs_path) as (mv, release):
        ds = layout.data_start
        segs = [Segment(HEADER_KEY, mv[:ds], 1, ds, **history.header())]
        segs += [Segment(i, mv[ds + t.begin : ds + t.end], plane_width(t.dtype), ds + t.end,
                         **history.tensor(t.name, t.dtype, t.shape))
                 for i, t in enumerate(layout.tensors)]
        results, fhash = pipe.ingest(segs, release)
        size = len(mv)
        del segs
    tensors = [TensorEntry(t.name, t.dtype, t.shape, t.nbytes, results[i].hash, results[i].chunks)
               for i, t in enumerate(layout.tensors)]
    return FileEntry(rel, KIND_SAFETENSORS, size, fhash, tensors=tensors, header=results[HEADER_KEY].chunks)


def snapshot_buffers(pipe: Pipeline, rel: str, buffers: list[NamedBuffer],
                     metadata: dict[str, str] | None = None, history: History = NO_HISTORY) -> FileEntry:
    """In-memory tensors committed as a safetensors file at `rel` (sorted by name)."""
    buffers = sorted(buffers, key=lambda b: b.name)
    layout = st.build_layout([(b.name, b.dtype, b.shape, len(b.data)) for b in buffers], metadata)
    segs = [Segment(HEADER_KEY, memoryview(layout.header_bytes), 1, **history.header())]
    segs += [Segment(i, b.data, plane_width(b.dtype), **history.tensor(b.name, b.dtype, b.shape))
             for i, b in enumerate(buffers)]
    results, fhash = pipe.ingest(segs)
    tensors = [TensorEntry(b.name, b.dtype, list(b.shape), len(b.data), results[i].hash, results[i].chunks)
               for i, b in enumerate(buffers)]
    size = len(layout.header_bytes) + sum(t.nbytes for t in tensors)
    return FileEntry(rel, KIND_SAFETENSORS, size, fhash, tensors=tensors, header=results[HEADER_KEY].chunks)


def file_hash(path: str) -> str:
    """The whole-file hash of a file on disk (what FileEntry.hash records)."""
    h = new_hasher()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _snapshot_torch(pipe: Pipeline, abs_path: str, rel: str, history: History) -> FileEntry:
    from .dtypes import from_torch
    from .formats import torchfile

    obj = torchfile.load(abs_path, rel)
    skeleton, named = torchfile.flatten(obj)
    first_by_key: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    exact = True
    segs = []
    for name, t in named:
        key = torchfile.storage_key(t)
        if key in first_by_key:
            aliases[name] = first_by_key[key]
            continue
        first_by_key[key] = name
        exact = exact and torchfile.rebuilds_exactly(t)
        try:
            dtype = from_torch(t.dtype)
        except TypeError as e:
            raise FormatError(rel, str(e)) from None
        segs.append(Segment(name, torchfile.tensor_bytes(t), plane_width(dtype),
                            **history.tensor(name, dtype, list(t.shape))))
    results, _ = pipe.ingest(segs)
    del segs
    skel = torchfile.skeleton_bytes(skeleton)
    skel_id = pipe.store.put(skel).id if pipe.store is not None else hash_bytes(skel)
    tensors = []
    for name, t in named:
        base = aliases.get(name, name)
        r = results[base]
        tensors.append(TensorEntry(name, from_torch(t.dtype), list(t.shape), r.nbytes, r.hash, r.chunks,
                                   aliases.get(name)))
    fhash = file_hash(abs_path)
    archive = torchfile.archive_name(abs_path)
    if exact and pipe.store is not None:
        # Rebuild it the way checkout will, and see whether the bytes come out the same.
        objs = dict(named)
        for name, base in aliases.items():
            objs[name] = torchfile.alias_of(objs[base])
        rebuilt = torchfile.unflatten(torchfile.skeleton_from_bytes(skel, rel), objs)
        h = new_hasher()
        torchfile.save(rebuilt, _HashSink(h), archive, pipe.tmp_dir)
        exact = h.hexdigest() == fhash
    return FileEntry(rel, KIND_TORCH, os.path.getsize(abs_path), fhash, tensors=tensors, skeleton=skel_id,
                     exact=exact, archive=archive)


# -- writing back -----------------------------------------------------------------------------------------


class _HashSink:
    def __init__(self, hasher):
        self.write = hasher.update


def write_entry(pipe: Pipeline, entry: FileEntry, f) -> None:
    """Write the file an entry describes into the open binary file `f`, verifying the whole-file hash
    (or, for torch files that are not byte-exact, each tensor's hash)."""
    w = VerifyingWriter(f, entry.hash, entry.path, pipe.progress)
    if entry.kind == KIND_TORCH:
        from .formats import torchfile

        obj = torchfile.unflatten(torchfile.skeleton_from_bytes(pipe.store.get(entry.skeleton), entry.path),
                                  load_tensors(pipe, {t.name: t for t in entry.tensors}, "torch"))
        torchfile.save(obj, w, entry.archive, pipe.tmp_dir)
        if entry.exact:
            w.check()
        return
    ids = entry.chunks if entry.kind == KIND_BLOB else list(entry.header or [])
    for t in entry.tensors if entry.kind != KIND_BLOB else []:
        ids.extend(t.chunks)
    for chunk in pipe.read(ids):
        w.write(chunk)
    w.check()


def tensor_chunks(pipe: Pipeline, t: TensorEntry) -> Iterator[bytes]:
    """A tensor's decoded chunks in order. After the last one, raises CorruptObjectError when together they
    do not rebuild the tensor (its byte length and whole-tensor hash): a caller that consumes every chunk
    has checked the tensor, and must not make what it wrote visible before the loop ends."""
    h = new_hasher()
    n = 0
    for chunk in pipe.read(t.chunks):
        h.update(chunk)
        n += len(chunk)
        yield chunk
    if n != t.nbytes or h.hexdigest() != t.hash:
        raise CorruptObjectError(t.hash, f"tensor {t.name} does not rebuild to its committed hash")


def read_tensor_bytes(pipe: Pipeline, t: TensorEntry) -> bytearray:
    out = bytearray(t.nbytes)
    pos = 0
    for chunk in tensor_chunks(pipe, t):
        out[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    return out


def load_tensors(pipe: Pipeline, entries: Mapping[str, TensorEntry], framework: str) -> dict:
    """Tensors under the given keys as torch tensors or numpy arrays; an alias (tied weight) shares its
    memory with the tensor it names, as it did when saved."""
    out: dict = {}
    by_name: dict = {}
    for key, t in entries.items():
        if t.alias is not None and t.alias in by_name:
            base = by_name[t.alias]
            out[key] = base.view(base.shape) if framework == "torch" else base.view()
            continue
        out[key] = by_name[t.name] = _as_array(read_tensor_bytes(pipe, t), t, framework)
    return out


def _as_array(buf: bytearray, t: TensorEntry, framework: str):
    from .dtypes import numpy_dtype, torch_dtype

    if framework == "torch":
        import torch

        dtype = torch_dtype(t.dtype)
        if not buf:
            return torch.empty(t.shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(t.shape)
    import numpy as np

    try:
        dtype = numpy_dtype(t.dtype)
    except KeyError:
        dtype = np.dtype(np.uint8)
        return np.frombuffer(buf, dtype=dtype)
    return np.frombuffer(buf, dtype=dtype).reshape(t.shape)
