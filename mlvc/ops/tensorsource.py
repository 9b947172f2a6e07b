"""Where diff reads tensors from: a commit (chunks decoded from the store) or the working checkpoint (bytes
read straight from the files, safetensors with plain reads, torch files through torch.load), chunk by chunk."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..chunking import FileRange, aligned_chunk
from ..dtypes import plane_width
from ..objects import KIND_SAFETENSORS, KIND_TORCH, FileEntry, Manifest, TensorEntry

if TYPE_CHECKING:
    from ..chunking import Pipeline
    from ..repo import Repo


class Side:
    """Tensors of one checkpoint and how to read their chunks."""

    def __init__(self, commit: str | None, tensors: dict[str, TensorEntry], chunk_size: int):
        self.commit = commit
        self.tensors = tensors
        self.chunk_size = chunk_size

    def step(self, t: TensorEntry) -> int:
        return aligned_chunk(self.chunk_size, plane_width(t.dtype))

    def read(self, t: TensorEntry, indices: list[int]) -> Iterator[bytes]:
        raise NotImplementedError

    def read_first(self, entries: list[TensorEntry]) -> Iterator[bytes]:
        """The first chunk of each tensor, in order (of many small tensors: their bytes)."""
        for t in entries:
            yield from self.read(t, [0])

    def stored(self) -> bool:
        return True


class StoredSide(Side):
    def __init__(self, commit, tensors, chunk_size, pipe: Pipeline):
        super().__init__(commit, tensors, chunk_size)
        self.pipe = pipe

    def read(self, t, indices):
        return self.pipe.read([t.chunks[i] for i in indices])

    def read_first(self, entries):
        return self.pipe.read([t.chunks[0] for t in entries])


def read_pairs(a: Side, ta: TensorEntry, b: Side, tb: TensorEntry,
               indices: list[int]) -> Iterator[tuple[bytes | bytearray, bytes | bytearray]]:
    """Chunk i of `ta` on side a with chunk i of `tb` on side b, for each i of `indices`. Two stored sides read
    each pair in one worker, A's chunk first and kept (Pipeline.read_pairs): B's is often a delta on it (a
    commit against its parent), which would otherwise decode A's chunk a second time."""
    if isinstance(a, StoredSide) and isinstance(b, StoredSide) and a.pipe is b.pipe:
        return a.pipe.read_pairs([(ta.chunks[i], tb.chunks[i]) for i in indices])
    return zip(a.read(ta, indices), b.read(tb, indices), strict=True)


class WorkingSide(Side):
    """The working checkpoint: tensor bytes read straight from the files (safetensors with pread, never a map:
    a file truncated meanwhile is a FileChangedError, not a SIGBUS)."""

    def __init__(self, repo: Repo, files: list[FileEntry], chunk_size: int, stack: contextlib.ExitStack):
        manifest = Manifest([], files, chunk_size)
        super().__init__(None, manifest.tensors(), chunk_size)
        self.repo = repo
        self.file_of = {id(t): f for f in files for t in f.tensors}
        self.stack = stack
        self.views: dict[str, dict[str, memoryview | FileRange]] = {}

    def stored(self):
        return False

    def _tensor_bytes(self, t: TensorEntry) -> memoryview | FileRange:
        f = self.file_of[id(t)]
        if f.path not in self.views:
            self.views[f.path] = self._open(f)
        return self.views[f.path][t.name]

    def _open(self, f: FileEntry) -> dict[str, memoryview | FileRange]:
        path = self.repo.abs_path(f.path)
        if f.kind == KIND_SAFETENSORS:
            from ..formats import safetensors as st

            fh = self.stack.enter_context(open(path, "rb"))
            layout = st.read_layout(fh, f.path)
            ds = layout.data_start
            return {s.name: FileRange(fh.fileno(), ds + s.begin, s.end - s.begin, f.path)
                    for s in layout.tensors}
        if f.kind == KIND_TORCH:
            from ..formats import torchfile

            fh = self.stack.enter_context(open(path, "rb"))  # read without torch when the zip reader models it
            fd = fh.fileno()
            return {t.name: FileRange(fd, t.span[0], t.span[1] - t.span[0], f.path) if t.span else t.read(fd, f.path)
                    for t in torchfile.read_tensors(fh, path, f.path)}
        return {}

    def read(self, t, indices):
        mv = self._tensor_bytes(t)
        step = self.step(t)
        for i in indices:
            piece = mv[i * step : (i + 1) * step]
            yield piece.read() if isinstance(piece, FileRange) else piece


class ByteStream:
    """Bytes from an iterator of pieces (chunks), taken in any sizes: element blocks across chunk borders."""

    def __init__(self, pieces: Iterator[bytes]):
        self.pieces = pieces
        self.buf = bytearray()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            piece = next(self.pieces, None)
            if piece is None:
                break
            self.buf += piece
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out
