"""Building new trees from per-tensor choices, and what changed between two trees: what revert and merge share.

A tree is addressed here tensor by tensor as (file path, tensor name) -> TensorEntry for safetensors files,
and file by file (tensor name None) for every other kind (blobs, torch files: rewriting a pickle tensor by
tensor is not worth its risk). A new safetensors file entry is composed from existing tensor entries (their
chunks are reused, nothing is re-encoded) and new tensor bytes (stored as new chunks); its header is taken
verbatim from a template file with exactly the same tensor layout when there is one, else built with
safetensors' layout rules keeping the template's __metadata__.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from ..chunking import Pipeline, Segment
from ..dtypes import plane_width
from ..formats import safetensors as st
from ..objects import KIND_SAFETENSORS, FileEntry, Manifest, TensorEntry
from ..snapshot import HEADER_KEY, NamedBuffer, tensor_chunks
from ..util import new_hasher

Key = tuple[str, str | None]  # (file path, tensor name); name None: the whole file
Item = TensorEntry | NamedBuffer


def tensor_level(*files: FileEntry | None) -> bool:
    """Whether a path can be handled tensor by tensor (every version of it that exists is safetensors)."""
    return all(f is None or f.kind == KIND_SAFETENSORS for f in files)


def same_tensor(x: TensorEntry | None, y: TensorEntry | None) -> bool:
    if x is None or y is None:
        return x is y
    return (x.hash, x.dtype, list(x.shape)) == (y.hash, y.dtype, list(y.shape))


def same_file(x: FileEntry | None, y: FileEntry | None) -> bool:
    if x is None or y is None:
        return x is y
    return x.hash == y.hash and x.kind == y.kind


def values(m: Manifest | None) -> dict[Key, TensorEntry | FileEntry]:
    """Every (path, tensor) of a tree, and (path, None) for files that are not safetensors."""
    out: dict[Key, TensorEntry | FileEntry] = {}
    for f in m.files if m else []:
        if f.kind == KIND_SAFETENSORS:
            for t in f.tensors:
                out[(f.path, t.name)] = t
        else:
            out[(f.path, None)] = f
    return out


def same_value(key: Key, x, y) -> bool:
    return same_file(x, y) if key[1] is None else same_tensor(x, y)


def changes(old: Manifest | None, new: Manifest | None) -> dict[Key, tuple[Any, Any]]:
    """What going from `old` to `new` changed: key -> (old value, new value), None for absent."""
    vo, vn = values(old), values(new)
    fo = {f.path: f for f in old.files} if old else {}
    fn = {f.path: f for f in new.files} if new else {}
    out: dict[Key, tuple[Any, Any]] = {}
    # a path that is not safetensors on both sides (blob, torch, or a kind change) is one value: the file
    whole = {p for p in set(fo) | set(fn) if not tensor_level(fo.get(p), fn.get(p))}
    for path in sorted(whole):
        if not same_file(fo.get(path), fn.get(path)):
            out[(path, None)] = (fo.get(path), fn.get(path))
    for key in sorted(set(vo) | set(vn), key=lambda k: (k[0], k[1] or "")):
        if key[0] not in whole and not same_value(key, vo.get(key), vn.get(key)):
            out[key] = (vo.get(key), vn.get(key))
    return out


def describe(key: Key) -> str:
    path, name = key
    return f"file {path}" if name is None else f"{name} ({path})"


@dataclass
class Conflict:
    key: Key
    reason: str

    @property
    def tensor(self) -> str | None:
        return self.key[1]

    @property
    def path(self) -> str:
        return self.key[0]

    def __str__(self) -> str:
        return f"{describe(self.key)}: {self.reason}"

    def to_json(self) -> dict:
        return {"path": self.path, "tensor": self.tensor, "reason": self.reason}


# -- composing file entries -------------------------------------------------------------------------------


def _spec(item: Item) -> tuple[str, str, list[int]]:
    return item.name, item.dtype, list(item.shape)


def _nbytes(item: Item) -> int:
    return item.nbytes if isinstance(item, TensorEntry) else len(item.data)


def header_bytes(pipe: Pipeline, f: FileEntry) -> bytes:
    return b"".join(bytes(c) for c in pipe.read(f.header or []))


def header_metadata(header: bytes) -> dict[str, str] | None:
    (n,) = struct.unpack("<Q", header[:8])
    meta = json.loads(header[8 : 8 + n]).get("__metadata__")
    return meta if isinstance(meta, dict) else None


def compose_safetensors(pipe: Pipeline, path: str, items: list[Item], templates: list[FileEntry]) -> FileEntry:
    """A safetensors file entry holding `items` (in this order unless a template orders the same tensors);
    new buffers are stored as chunks, existing entries reuse theirs."""
    by_name = {i.name: i for i in items}
    for tpl in templates:  # a template with the same tensor layout gives its header bytes verbatim
        if [t.name for t in tpl.tensors] and sorted(by_name) == sorted(t.name for t in tpl.tensors):
            ordered = [by_name[t.name] for t in tpl.tensors]
            if [_spec(i) for i in ordered] == [_spec(t) for t in tpl.tensors]:
                pairs = zip(ordered, tpl.tensors, strict=True)
                if all(isinstance(i, TensorEntry) and same_tensor(i, t) for i, t in pairs):
                    return FileEntry(path, KIND_SAFETENSORS, tpl.size, tpl.hash, tensors=list(tpl.tensors),
                                     header=list(tpl.header or []))
                return _assemble(pipe, path, ordered, list(tpl.header or []), None)
    meta = header_metadata(header_bytes(pipe, templates[0])) if templates and templates[0].header else None
    layout = st.build_layout([(i.name, i.dtype, list(i.shape), _nbytes(i)) for i in items], meta)
    return _assemble(pipe, path, items, None, layout.header_bytes)


def _assemble(pipe: Pipeline, path: str, items: list[Item], header_ids: list[str] | None,
              header: bytes | None) -> FileEntry:
    """Hash the whole file in order (header, then each tensor's bytes), storing what is new."""
    fh = new_hasher()
    size = 0
    if header_ids is not None:
        for chunk in pipe.read(header_ids):
            fh.update(chunk)
            size += len(chunk)
    else:
        assert header is not None  # the header's bytes when not its chunk ids
        results, _ = pipe.ingest([Segment(HEADER_KEY, memoryview(header), 1)])
        header_ids = results[HEADER_KEY].chunks
        fh.update(header)
        size += len(header)
    tensors = []
    for item in items:
        if isinstance(item, TensorEntry):
            for chunk in tensor_chunks(pipe, item):  # checks the tensor's hash at the end
                fh.update(chunk)
            tensors.append(TensorEntry(item.name, item.dtype, list(item.shape), item.nbytes, item.hash,
                                       list(item.chunks)))
            size += item.nbytes
        else:
            results, _ = pipe.ingest([Segment(0, item.data, plane_width(item.dtype))])
            r = results[0]
            fh.update(item.data)
            tensors.append(TensorEntry(item.name, item.dtype, list(item.shape), r.nbytes, r.hash, r.chunks))
            size += r.nbytes
    return FileEntry(path, KIND_SAFETENSORS, size, fh.hexdigest(), tensors=tensors, header=header_ids)


def ordered_items(current: FileEntry | None, chosen: dict[str, Item], order_hint: list[FileEntry]) -> list[Item]:
    """The tensors of a file after changes: in the current file's order, then new names in the order they
    have in the hint files."""
    names = [t.name for t in current.tensors] if current else []
    for f in order_hint:
        names += [t.name for t in f.tensors if t.name not in names]
    names += sorted(n for n in chosen if n not in names)
    return [chosen[n] for n in names if n in chosen]


def covered(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") or r == "." for r in roots)


def build_manifest(pipe: Pipeline, head: Manifest, want: dict[Key, TensorEntry | FileEntry | Item | None],
                   hints: list[Manifest | None]) -> Manifest:
    """HEAD's tree with the given keys set to new values (None: removed)."""
    files = {f.path: f for f in head.files}
    by_path: dict[str, dict[str | None, TensorEntry | FileEntry | Item | None]] = {}
    for (path, name), v in want.items():
        by_path.setdefault(path, {})[name] = v
    roots = list(head.roots)
    for path, changes in sorted(by_path.items()):
        if None in changes:  # a whole file
            entry = changes[None]
            if entry is None:
                files.pop(path, None)
            else:
                assert isinstance(entry, FileEntry), path
                files[path] = entry
        else:
            current = files.get(path)
            chosen: dict[str, Item] = {t.name: t for t in current.tensors} if current else {}
            for name, v in changes.items():
                assert name is not None and not isinstance(v, FileEntry), (path, name)  # files: key (path, None)
                if v is None:
                    chosen.pop(name, None)
                else:
                    chosen[name] = v
            hint_files = [f for m in hints if m is not None and (f := m.file(path)) is not None]
            if not chosen:  # every tensor of the file is gone: so is the file
                files.pop(path, None)
                continue
            templates = ([current] if current else []) + hint_files
            files[path] = compose_safetensors(pipe, path, ordered_items(current, chosen, hint_files), templates)
        if path in files and not covered(path, roots):
            for m in hints:
                roots += [r for r in (m.roots if m else []) if covered(path, [r]) and r not in roots]
            if not covered(path, roots):
                roots.append(path)
    return Manifest(sorted(set(roots)), sorted(files.values(), key=lambda f: f.path), head.chunk_size)


def changed_paths(a: Manifest | None, b: Manifest | None) -> set[str]:
    fa = {f.path: f for f in a.files} if a else {}
    fb = {f.path: f for f in b.files} if b else {}
    return {p for p in set(fa) | set(fb) if not same_file(fa.get(p), fb.get(p))}
