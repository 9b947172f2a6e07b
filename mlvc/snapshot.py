"""Files <-> file entries: store a checkpoint file (or in-memory tensors) as chunks, and write it back.

With a store, a snapshot writes chunks; with `Pipeline(store=None)` it only computes the ids, which is how
`status` compares the working checkpoint with a commit without writing anything.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from . import formats
from .chunking import FileRange, Pipeline, Segment, VerifyingWriter, aligned_chunk
from .dtypes import DTYPES, plane_width
from .errors import CorruptObjectError, FileChangedError, FormatError, ObjectNotFoundError, PathError
from .formats import safetensors as st
from .objects import (
    KIND_BLOB,
    KIND_SAFETENSORS,
    KIND_TORCH,
    FileEntry,
    HeldTable,
    TensorEntry,
    check_rel_path,
    implied_nbytes,
    runs_of,
)
from .progress import NULL
from .util import hash_bytes, new_hasher

HEADER_KEY = "\x00header"


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
    # Optional: the same file in the first-parent ancestors, nearest first (ancestors[0] is the parent), back
    # to at least core.keyframe_interval commits. With it the store picks skip-delta bases (ObjectStore.put,
    # `lineage`), so no chain is deeper than log2 of the keyframe interval; without it, chains as before.
    ancestors: list[FileEntry | None] = field(default_factory=list)

    # Each entry's tensors by name, built on the first lookup: a linear search per tensor made the commit of a
    # file of 100,000 tensors on top of a parent quadratic (20,000 tensors: 1.6 s first commit, 12.9 s second).
    _by_name: dict[int, dict[str, TensorEntry]] = field(default_factory=dict, repr=False, compare=False)

    def _tensor(self, entry: FileEntry | None, name: str, dtype: str, shape: list[int]) -> list[str] | None:
        if entry is None:
            return None
        index = self._by_name.get(id(entry))
        if index is None:
            index = self._by_name[id(entry)] = {}
            for each in entry.listed_tensors():  # a bundled tensor has no chunks to be a base
                index.setdefault(each.name, each)  # the first of a name, as a search in file order finds
        t = index.get(name)
        return list(t.chunks) if t is not None and t.dtype == dtype and list(t.shape) == list(shape) else None

    def tensor(self, pipe: Pipeline, name: str, dtype: str, shape: list[int], nbytes: int) -> dict:
        """The delta bases of a tensor's chunks; none for a tensor held for a bundle (Pipeline.holds), nor for a
        snapshot that stores nothing (`status`)."""
        if pipe.store is None or pipe.holds(nbytes, plane_width(dtype)):
            return {}
        return {"bases": self._tensor(self.parent, name, dtype, shape),
                "bases2": self._tensor(self.grandparent, name, dtype, shape),
                "lineage": [self._tensor(e, name, dtype, shape) for e in self.ancestors] or None}

    def header(self) -> dict:
        return {"bases": self.parent.header if self.parent else None,
                "bases2": self.grandparent.header if self.grandparent else None,
                "lineage": [e.header if e else None for e in self.ancestors] or None}

    def blob(self) -> dict:
        return {"bases": self.parent.chunks if self.parent else None,
                "bases2": self.grandparent.chunks if self.grandparent else None,
                "lineage": [e.chunks if e else None for e in self.ancestors] or None}


NO_HISTORY = History()


def snapshot_path(pipe: Pipeline, abs_path: str, rel: str, as_blob: bool = False,
                  history: History = NO_HISTORY) -> FileEntry:
    kind = KIND_BLOB if as_blob else formats.kind_of(rel)
    if pipe.store is not None:
        check_rel_path(rel)  # a path no manifest can hold (not UTF-8, too deep) is refused before any work
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


# User files are read, never mapped: a mapped file that another process truncates while it is committed kills
# mlvc with SIGBUS (Python cannot catch it), and a map with buffers exported from it cannot be closed when an
# error or Ctrl-C unwinds (a BufferError then hides the real exception). Blobs and safetensors files are read
# with pread chunk by chunk (chunking.FileRange: memory bounded by the pipeline's window); a read that comes
# back short is a FileChangedError, and nothing is committed.


def _snapshot_blob(pipe: Pipeline, abs_path: str, rel: str, history: History) -> FileEntry:
    with open(abs_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        segs = [Segment(KIND_BLOB, FileRange(f.fileno(), 0, size, rel), 1, **history.blob())]
        results, fhash = pipe.ingest(segs)
    return FileEntry(rel, KIND_BLOB, results[KIND_BLOB].nbytes, fhash, chunks=results[KIND_BLOB].chunks)


def _snapshot_safetensors(pipe: Pipeline, abs_path: str, rel: str, history: History) -> FileEntry:
    with open(abs_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        parent = _as_parent(pipe, f, size, history.parent)
        if parent is not None:
            head, (names, dtypes, shapes, sizes) = parent
        else:
            layout = st.read_layout(f, rel)
            head, names, dtypes, shapes = layout.header_bytes, layout.names, layout.dtypes, layout.shapes
            sizes = list(map(operator.sub, layout.ends, layout.begins))
        ds = len(head)
        begins = list(itertools.accumulate(sizes, initial=0))
        segs = [Segment(HEADER_KEY, memoryview(head), 1, **history.header())]
        runs = _small_runs(pipe, sizes, dtypes)
        held: list[int] = []  # tensors held one at a time
        i = 0
        while i < len(names):
            if i in runs:  # small tensors end to end: one segment, each held for its bundle
                cuts = runs[i]
                segs.append(Segment(("run", i), FileRange(f.fileno(), ds + begins[i], sum(cuts), rel), cuts=cuts))
                i += len(cuts)
                continue
            width = plane_width(dtypes[i])
            if pipe.holds(sizes[i], width):
                held.append(i)
            segs.append(Segment(i, FileRange(f.fileno(), ds + begins[i], sizes[i], rel), width,
                                **history.tensor(pipe, names[i], dtypes[i], shapes[i], sizes[i]), tensor=True))
            i += 1
        results, fhash = pipe.ingest(segs)
    ids = {i: results[i].hash for i in held}
    for start, cuts in runs.items():
        ids.update(zip(range(start, start + len(cuts)), results[("run", start)].parts, strict=True))
    # The held tensors of a known dtype go to store_bundles as columns (a bundle holds no other); the others are
    # entries. A file of 100,000 small tensors then builds no entry object per tensor.
    unknown = {d for d in set(dtypes) if d not in DTYPES}
    rows = sorted(i for i in ids if dtypes[i] not in unknown) if unknown else sorted(ids)
    table = set(rows)
    listed = [TensorEntry(names[i], dtypes[i], shapes[i], sizes[i], ids[i], [ids[i]]) if i in ids
              else TensorEntry(names[i], dtypes[i], shapes[i], sizes[i], results[i].hash, results[i].chunks)
              for i in itertools.filterfalse(table.__contains__, range(len(names)))]
    entry = FileEntry(rel, KIND_SAFETENSORS, size, fhash, tensors=listed, header=results[HEADER_KEY].chunks)
    if not rows:
        return entry
    pick = operator.itemgetter(*rows) if len(rows) > 1 else lambda c: (c[rows[0]],)
    return entry.adopt(HeldTable(runs_of(rows), list(pick(names)), list(pick(dtypes)), list(pick(shapes)),
                                 list(pick(sizes)), listed, list(map(ids.__getitem__, rows))))


def _as_parent(pipe: Pipeline, f: BinaryIO, size: int, parent: FileEntry | None
               ) -> tuple[bytes, tuple[list[str], list[str], list[list[int]], list[int]]] | None:
    """For a snapshot that writes nothing (no store: `status` comparing a changed file with its commit): the
    header bytes and the tensors' columns (FileEntry.columns) of a safetensors file whose header is the
    committed one, byte for byte (its chunks have the committed header's ids), and whose size is the one that
    header gives; else None (the header is then parsed). Such a comparison takes the commit's entry as it
    stands anyway; a commit never does this: it derives every entry from the file itself, so that a tree
    whose entry disagrees with its header (written by a faulty tool) is not carried into the next one."""
    if pipe.store is not None or parent is None or parent.kind != KIND_SAFETENSORS or not parent.header:
        return None
    try:
        head = st.read_header(f, size, "")
    except FormatError:  # the parse says what is wrong
        return None
    step = aligned_chunk(pipe.chunk_size, 1)  # as Pipeline.ingest cuts the header segment
    if len(parent.header) != -(-len(head) // step) or \
            [hash_bytes(head[i : i + step]) for i in range(0, len(head), step)] != parent.header:
        return None
    columns = parent.columns()
    return (head, columns) if len(head) + sum(columns[3]) == size else None


RUN_MAX = 1 << 20  # bytes of small tensors read as one run (_small_runs)


def _small_runs(pipe: Pipeline, sizes: list[int], dtypes: list[str]) -> dict[int, list[int]]:
    """Where the small tensors (Pipeline.small_limit; of these byte sizes and dtypes, in file order) lie end to
    end, two or more at a time: {index of the first: the byte counts of the run}, each run at most RUN_MAX
    bytes; with a store, those are the tensors it holds for bundles (Pipeline.holds). A file of 100,000 tiny
    tensors is then ten segments, not 100,000 (and the size rule is looked up per dtype, not per tensor).
    Each stretch of small tensors is cut where its running total passes RUN_MAX (a bisection of the running
    totals per run, not a step per tensor). Plain Python: `status` snapshots a file touched but unchanged to
    find that out, and needs no numpy for it."""
    limits = {d: pipe.small_limit(plane_width(d)) for d in set(dtypes)}
    small = list(map(operator.and_, map(bool, sizes), map(operator.le, sizes, map(limits.__getitem__, dtypes))))
    runs: dict[int, list[int]] = {}
    i = 0
    for is_small, stretch in itertools.groupby(small):
        n = sum(1 for _ in stretch)
        if is_small:
            ends = list(itertools.accumulate(sizes[i : i + n]))
            a = 0
            while a < n:  # the run from a takes every tensor up to RUN_MAX bytes (at least one)
                e = max(bisect.bisect_right(ends, (ends[a - 1] if a else 0) + RUN_MAX), a + 1)
                if e - a > 1:
                    runs[i + a] = sizes[i + a : i + e]
                a = e
        i += n
    return runs


def snapshot_buffers(pipe: Pipeline, rel: str, buffers: list[NamedBuffer],
                     metadata: dict[str, str] | None = None, history: History = NO_HISTORY) -> FileEntry:
    """In-memory tensors committed as a safetensors file at `rel` (sorted by name)."""
    buffers = sorted(buffers, key=lambda b: b.name)
    layout = st.build_layout([(b.name, b.dtype, b.shape, len(b.data)) for b in buffers], metadata)
    segs = [Segment(HEADER_KEY, memoryview(layout.header_bytes), 1, **history.header())]
    segs += [Segment(i, b.data, plane_width(b.dtype), **history.tensor(pipe, b.name, b.dtype, b.shape, len(b.data)),
                     tensor=True)
             for i, b in enumerate(buffers)]
    results, fhash = pipe.ingest(segs)
    tensors = [TensorEntry(b.name, b.dtype, list(b.shape), len(b.data), results[i].hash, results[i].chunks)
               for i, b in enumerate(buffers)]
    size = len(layout.header_bytes) + sum(t.nbytes for t in tensors)
    return FileEntry(rel, KIND_SAFETENSORS, size, fhash, tensors=tensors, header=results[HEADER_KEY].chunks)


def file_hash(source: str | BinaryIO) -> str:
    """The whole-file hash (what FileEntry.hash records) of a file on disk, or of an open binary file from
    its current position."""
    if isinstance(source, str):
        with open(source, "rb") as f:
            return file_hash(f)
    h = new_hasher()
    while block := source.read(1 << 22):
        h.update(block)
    return h.hexdigest()


def _snapshot_torch(pipe: Pipeline, abs_path: str, rel: str, history: History) -> FileEntry:
    """A torch file as its tensors, plus a *frame* (every byte of the file outside the storage records that
    are a tensor's bytes, verbatim) and a *layout* interleaving the two (see FileEntry). Nothing is
    re-serialized, so the rebuild is byte for byte whatever the pickle holds (Parameters, views, strings,
    legacy format, any archive name). The tensors are read by the torch-free reader when it models the file
    (formats/torchzip.py), else through torch.load: the entry is the same either way. With a store, the
    entry is also rebuilt from the stored objects by write_entry, exactly as checkout will, before it is
    returned; should that ever fail, the whole file goes into the frame and is checked again, so a committed
    torch file always checks out."""
    from .formats import torchfile

    with open(abs_path, "rb") as f:
        fd = f.fileno()
        found = torchfile.read_tensors(f, abs_path, rel)  # torch-free for a zip torch.save wrote, else torch.load
        first_by_key: dict[tuple, str] = {}
        aliases: dict[str, str] = {}
        for t in found:
            if t.key is not None:  # an empty tensor has no bytes to share
                first = first_by_key.setdefault(t.key, t.name)
                if first != t.name:
                    aliases[t.name] = first
        # a generator, so that a tensor's gathered copy (if it needs one) lives only while it is chunked; a
        # tensor whose bytes are a range of the file is read from it chunk by chunk
        results, _ = pipe.ingest(Segment(t.name, FileRange(fd, t.span[0], t.span[1] - t.span[0], rel) if t.span
                                         else t.read(fd, rel), plane_width(t.dtype),
                                         **history.tensor(pipe, t.name, t.dtype, t.shape, _nbytes(t)), tensor=True)
                                 for t in found if t.name not in aliases)
        tensors = []
        for t in found:
            r = results[aliases.get(t.name, t.name)]
            tensors.append(TensorEntry(t.name, t.dtype, t.shape, r.nbytes, r.hash, r.chunks, aliases.get(t.name)))
        sizes = {t.storage_nbytes for t in found} - {0}
        # ranges of the file known to hold a tensor's bytes: their hash is that tensor's, no need to read them
        known = {t.span: results[t.name].hash for t in found if t.span and t.name not in aliases}
        del found  # torch's map of the file (if torch read it) can go
        by_content: dict[tuple[int, str], str] = {}
        for key, r in results.items():
            if r.nbytes:
                by_content.setdefault((r.nbytes, r.hash), str(key))
        lengths = {n for n, _h in by_content}
        f.seek(0)
        whole = FileRange(fd, 0, os.fstat(fd).st_size, rel)
        fhash = file_hash(f)
        pieces = []  # (start, end, tensor name): storage records whose bytes are exactly a tensor's
        for a, b in torchfile.storage_ranges(f, len(whole), sizes):
            if b - a in lengths:  # else no tensor can match it
                found_name = by_content.get((b - a, known.get((a, b)) or _range_hash(whole[a:b])))
                if found_name is not None:
                    pieces.append((a, b, found_name))
        entry = _torch_entry(pipe, whole, fhash, tensors, pieces, history)
        if pipe.store is not None and not _rebuilds(pipe, entry):
            entry = _torch_entry(pipe, whole, fhash, tensors, [], history)
            if not _rebuilds(pipe, entry):
                raise CorruptObjectError(fhash, "the store does not give back the objects just written", rel)
    return entry


def _nbytes(t) -> int:
    """A torch tensor's byte count, from its dtype and shape, before its bytes are read (-1 for a dtype of
    unknown size: its delta bases are looked up, and ingest, which holds by the bytes' length, ignores them)."""
    n = implied_nbytes(t.dtype, t.shape)
    return -1 if n is None else n


def _range_hash(r: FileRange) -> str:
    h = new_hasher()
    for start in range(0, len(r), 1 << 22):
        h.update(r[start : start + (1 << 22)].read())
    return h.hexdigest()


def _torch_entry(pipe: Pipeline, whole: FileRange, fhash: str, tensors: list[TensorEntry],
                 pieces: list[tuple[int, int, str]], history: History) -> FileEntry:
    """The entry whose layout puts the named tensors at `pieces` and every other byte of the file (`whole`)
    in the frame."""
    layout: list[int | str] = []
    parts: list[FileRange] = []
    pos = 0
    for a, b, name in pieces:
        if a > pos:
            parts.append(whole[pos:a])
            layout.append(a - pos)
        layout.append(name)
        pos = b
    if pos < len(whole):
        parts.append(whole[pos:])
        layout.append(len(whole) - pos)
    bases = [e.frame if e is not None and e.kind == KIND_TORCH else None
             for e in (history.parent, history.grandparent)]
    data = parts[0] if len(parts) == 1 else _Joined(parts)
    results, _ = pipe.ingest([Segment("frame", data, 1, bases=bases[0], bases2=bases[1])])
    return FileEntry(whole.path, KIND_TORCH, len(whole), fhash, tensors=tensors,
                     frame=results["frame"].chunks, layout=layout)


class _Joined:
    """Several file ranges read as one (length and slices, as Pipeline.ingest reads a segment), so that the
    frame is chunked as one range and read a chunk at a time; a chunk within one part stays a FileRange (read
    by a worker), one across parts is read here."""

    def __init__(self, parts: list[FileRange]):
        self.parts = parts
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + len(p))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, s: slice):
        start, stop, _step = s.indices(len(self))
        i = bisect.bisect_right(self.starts, start) - 1
        out = []
        while start < stop:
            p = self.parts[i]
            piece = p[start - self.starts[i] : stop - self.starts[i]]
            out.append(piece)
            start += len(piece)
            i += 1
        if len(out) == 1:
            return out[0]
        return b"".join(p.read() for p in out)


def _rebuilds(pipe: Pipeline, entry: FileEntry) -> bool:
    """Whether write_entry, reading the stored objects back, gives the file's bytes: checkout's own path."""
    progress, pipe.progress = pipe.progress, NULL
    try:
        write_entry(pipe, entry, _Discard())
    except (CorruptObjectError, ObjectNotFoundError):
        return False
    finally:
        pipe.progress = progress
    return True


# -- writing back -----------------------------------------------------------------------------------------


class _Discard:
    """A file that forgets what is written to it (the commit-time rebuild only needs the hash)."""

    def write(self, data) -> None:
        pass


def write_entry(pipe: Pipeline, entry: FileEntry, f) -> None:
    """Write the file an entry describes into the open binary file `f`, verifying the whole-file hash
    (or, for torch entries from before the frame/layout design that are not byte-exact, each tensor's hash)."""
    w = VerifyingWriter(f, entry.hash, entry.path, pipe.progress)
    if entry.kind == KIND_TORCH and entry.layout is not None:
        _write_torch(pipe, entry, w)
        w.check()
        return
    if entry.kind == KIND_TORCH:
        _write_torch_skeleton(pipe, entry, w)
        return
    for chunk in pipe.read(entry.chunks if entry.kind == KIND_BLOB else entry.header or []):
        w.write(chunk)
    # the tensors in one stream decoded a window ahead: their chunks, and each run of tensors that lie end to end
    # in a bundle as one slice of it (FileEntry.pieces); the check below covers what a slice holds
    for piece in pipe.read_pieces(entry.pieces() if entry.kind != KIND_BLOB else []):
        w.write(piece)
    w.check()


def _write_torch(pipe: Pipeline, entry: FileEntry, w: VerifyingWriter) -> None:
    """The layout in order: frame bytes and tensors' bytes (each tensor checked against its own hash as it
    is read); the caller checks the whole file. Needs no torch."""
    def damaged(why: str) -> CorruptObjectError:
        return CorruptObjectError(entry.hash, f"the torch file entry cannot be rebuilt: {why}", entry.path)

    by_name = {t.name: t for t in entry.tensors}
    frame = pipe.read(entry.frame or [])
    held = memoryview(b"")
    for piece in entry.layout or []:
        if isinstance(piece, str):
            if piece not in by_name:
                raise damaged(f"its layout names a tensor {piece!r} it does not list")
            for tchunk in tensor_chunks(pipe, by_name[piece]):
                w.write(tchunk)
        elif isinstance(piece, int) and not isinstance(piece, bool) and piece > 0:
            n = piece
            while n:
                if not held:
                    chunk = next(frame, None)
                    if chunk is None:
                        raise damaged("its frame is shorter than its layout")
                    held = memoryview(chunk)
                w.write(held[:n])
                taken = min(n, len(held))
                held, n = held[taken:], n - taken
        else:
            raise damaged(f"its layout holds {piece!r}")
    if held or next(frame, None) is not None:
        raise damaged("its frame is longer than its layout")


def _write_torch_skeleton(pipe: Pipeline, entry: FileEntry, w: VerifyingWriter) -> None:
    """An entry committed before the frame/layout design: its skeleton with the tensors put back (aliases
    sharing storage), saved with torch.save; the whole file checked when `exact`, otherwise each tensor
    against its own hash as it is read."""
    from .formats import torchfile

    if entry.skeleton is None:
        raise CorruptObjectError(entry.hash, "a torch file entry with neither a layout nor a skeleton",
                                 entry.path)
    assert pipe.store is not None  # checkout reads through a store-backed pipeline
    skeleton = torchfile.skeleton_from_bytes(bytes(pipe.store.get(entry.skeleton)), entry.path)
    try:
        obj = torchfile.unflatten(skeleton, load_tensors(pipe, {t.name: t for t in entry.tensors}, "torch"))
    except (KeyError, RecursionError) as e:
        raise CorruptObjectError(entry.skeleton, f"the skeleton does not fit the tensors ({type(e).__name__})",
                                 entry.path) from None
    torchfile.save(obj, w, entry.archive, pipe.tmp_dir)
    if entry.exact:
        w.check()


def tensor_chunks(pipe: Pipeline, t: TensorEntry) -> Iterator[bytes]:
    """A tensor's decoded chunks in order. After the last one, raises CorruptObjectError when together they
    do not rebuild the tensor (its byte length and whole-tensor hash): a caller that consumes every chunk
    has checked the tensor, and must not make what it wrote visible before the loop ends."""
    if t.slot is not None and not t.chunks:  # a bundled tensor read without its hash (resolve=False)
        chunk = next(pipe.read_pieces([(t.slot.bundle, t.slot.offset, t.slot.offset + t.nbytes)]))
        if len(chunk) != t.nbytes:
            raise CorruptObjectError(t.slot.bundle, f"tensor {t.name}: its bundle is shorter than the manifest says")
        yield bytes(chunk)  # no hash to check it against: its bundle was verified by its id, the caller the file
        return
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

        try:
            dtype = torch_dtype(t.dtype)
        except (KeyError, AttributeError):  # a dtype mlvc stores as bytes, or one this torch lacks
            raise FormatError(t.name, f"dtype {t.dtype} has no torch equivalent here; load it with "
                                      "framework='numpy' to get its bytes") from None
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
