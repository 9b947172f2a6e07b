"""Building new trees from per-tensor choices, and what changed between two trees: what revert and merge share.

A tree is addressed here tensor by tensor as (file path, tensor name) -> TensorEntry for safetensors files,
and file by file (tensor name None) for every other kind (blobs, torch files: rewriting a pickle tensor by
tensor is not worth its risk). A new safetensors file entry is composed from existing tensor entries (their
chunks are reused, nothing is re-encoded) and new tensor bytes (stored as new chunks); its header is taken
verbatim from a template file with exactly the same tensor layout when there is one, else built with
safetensors' layout rules keeping the template's __metadata__.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Mapping
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


def _content(key: Key, v) -> tuple:
    """What makes two values the same content: a file's kind and hash, a tensor's hash, dtype and shape."""
    return (v.kind, v.hash) if key[1] is None else (v.hash, v.dtype, tuple(v.shape))


def pair_keys(vo: Mapping[Key, Any], vn: Mapping[Key, Any]) -> list[tuple[Key | None, Key | None]]:
    """Which value of `vo` is which value of `vn`: the one matching rule of diff, revert and merge
    (docs/diff.md, "Which tensor is which").

    1. the same key (file path, tensor name) on both sides is the same tensor (or file);
    2. of the keys left on each side, a tensor with the same name and the same content (hash, dtype, shape)
       is the same tensor moved to another file (a re-sharded or renamed checkpoint), a file with the same
       content is the same file renamed; several candidates are paired in path order;
    3. of the tensors still left, one name that remains exactly once on each side is the same tensor, moved
       and changed.
    Everything else is on one side only: (key, None) for a removal, (None, key) for an addition. Pairs come in
    the order of `vn`'s keys, then removals in `vo`'s order."""
    pairs: dict[Key, Key | None] = {k: k for k in vn if k in vo}  # new key -> old key
    only_o = [k for k in vo if k not in vn]
    only_n = [k for k in vn if k not in vo]
    if only_o and only_n:
        by_content: dict[tuple, list[Key]] = {}
        for k in sorted(only_o, key=_order):
            by_content.setdefault((k[1], _content(k, vo[k])), []).append(k)
        for k in sorted(only_n, key=_order):
            cands = by_content.get((k[1], _content(k, vn[k])))
            if cands:
                pairs[k] = cands.pop(0)
        used = set(pairs.values())
        left_o = [k for k in only_o if k not in used and k[1] is not None]
        left_n = [k for k in only_n if k not in pairs and k[1] is not None]
        count_o: dict[str | None, list[Key]] = {}
        count_n: dict[str | None, list[Key]] = {}
        for k in left_o:
            count_o.setdefault(k[1], []).append(k)
        for k in left_n:
            count_n.setdefault(k[1], []).append(k)
        for name, ks in count_n.items():
            if len(ks) == 1 and len(count_o.get(name, [])) == 1:
                pairs[ks[0]] = count_o[name][0]
    used = set(pairs.values())
    out: list[tuple[Key | None, Key | None]] = [(pairs.get(k), k) for k in vn]
    return out + [(k, None) for k in vo if k not in used]


def _order(k: Key) -> tuple[str, str]:
    return (k[0], k[1] or "")


def whole_paths(old: Manifest | None, new: Manifest | None) -> set[str]:
    """The paths handled as one value, the file: not safetensors on both sides (blob, torch, a kind change)."""
    fo = {f.path: f for f in old.files} if old else {}
    fn = {f.path: f for f in new.files} if new else {}
    return {p for p in set(fo) | set(fn) if not tensor_level(fo.get(p), fn.get(p))}


def keyed(m: Manifest | None, whole: set[str]) -> dict[Key, TensorEntry | FileEntry]:
    """A tree's values under the keys of a comparison: (path, None) for the `whole` paths, (path, tensor name)
    for every other file's tensors."""
    out: dict[Key, TensorEntry | FileEntry] = {}
    for f in m.files if m else []:
        if f.path in whole:
            out[(f.path, None)] = f
        else:
            for t in f.tensors:
                out[(f.path, t.name)] = t
    return out


def changes(old: Manifest | None, new: Manifest | None) -> dict[Key, tuple[Any, Any]]:
    """What going from `old` to `new` changed: key -> (old value, new value), None for absent. A value moved
    to another key (pair_keys) is a removal at its old key and an addition at its new one: building a tree
    works key by key."""
    whole = whole_paths(old, new)
    vo, vn = keyed(old, whole), keyed(new, whole)
    out: dict[Key, tuple[Any, Any]] = {}
    for ko, kn in pair_keys(vo, vn):
        if ko == kn:
            assert ko is not None
            if not same_value(ko, vo[ko], vn[ko]):
                out[ko] = (vo[ko], vn[ko])
            continue
        if ko is not None:
            out[ko] = (vo[ko], None)
        if kn is not None:
            out[kn] = (None, vn[kn])
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def moves(old: Manifest | None, new: Manifest | None) -> dict[Key, Key]:
    """Values that only moved (same content, another key) from `old` to `new`: old key -> new key."""
    whole = whole_paths(old, new)
    vo, vn = keyed(old, whole), keyed(new, whole)
    return {ko: kn for ko, kn in pair_keys(vo, vn)
            if ko is not None and kn is not None and ko != kn and same_value(ko, vo[ko], vn[kn])}


def relocate(key: Key, value):
    """A value put under `key`: a whole file's entry takes the key's path (a file followed to where the other
    side moved it); a tensor entry needs nothing (its file is the key's)."""
    if isinstance(value, FileEntry) and value.path != key[0]:
        return dataclasses.replace(value, path=key[0])
    return value


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


def _spec(item: Item) -> tuple[str, str, list[int], int]:
    """What a header says of a tensor: name, dtype, shape and byte count (which the shape gives only for a dtype
    of known size: a tensor of an unknown dtype may change size under the same shape)."""
    return item.name, item.dtype, list(item.shape), _nbytes(item)


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
            results, _ = pipe.ingest([Segment(0, item.data, plane_width(item.dtype), tensor=True)])
            r = results[0]
            fh.update(item.data)
            tensors.append(TensorEntry(item.name, item.dtype, list(item.shape), r.nbytes, r.hash, r.chunks))
            size += r.nbytes
    return FileEntry(path, KIND_SAFETENSORS, size, fh.hexdigest(), tensors=tensors, header=header_ids)


def ordered_items(current: FileEntry | None, chosen: dict[str, Item], order_hint: list[FileEntry]) -> list[Item]:
    """The tensors of a file after changes: in the current file's order, then new names in the order they
    have in the hint files."""
    names = dict.fromkeys(t.name for t in current.tensors) if current else {}  # ordered, and O(1) to look up
    for f in order_hint:
        names.update(dict.fromkeys(t.name for t in f.tensors))
    names.update(dict.fromkeys(sorted(chosen)))  # a name already there keeps its place
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


# -- names -------------------------------------------------------------------------------------------------


_INDEX = re.compile(r"^[0-9]+$")


def layer_group(name: str) -> str:
    """The layer group of a tensor: its name up to and including the first all-digit part that is not the
    last part ("encoder.layer.3.attention.self.query.weight" -> "encoder.layer.3"); without one, its parent
    module path ("embeddings.word_embeddings.weight" -> "embeddings.word_embeddings"); "(root)" for a
    top-level name."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _INDEX.match(part):
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or "(root)"


def natural_key(name: str) -> tuple:
    """Sort key that puts layer.2 before layer.10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"([0-9]+)", name) if p)


MAX_GROUPS = 16  # layer groups listed by group_counts; the rest are counted together


def group_counts(keys: list[Key]) -> dict[str, int]:
    """How many of `keys` fall in each layer group (whole files under "(files)"), in natural order; past
    MAX_GROUPS groups, the remaining ones are counted together under "(other groups)"."""
    counts: dict[str, int] = {}
    for _path, name in keys:
        g = "(files)" if name is None else layer_group(name)
        counts[g] = counts.get(g, 0) + 1
    names = sorted(counts, key=natural_key)
    out = {g: counts[g] for g in names[:MAX_GROUPS]}
    if len(names) > MAX_GROUPS:
        out["(other groups)"] = sum(counts[g] for g in names[MAX_GROUPS:])
    return out


def parse_described(text: str) -> Key:
    """The key a describe() text names ("NAME (PATH)" or "file PATH"), for lists written by older versions."""
    if text.startswith("file "):
        return (text[5:], None)
    name, sep, rest = text.rpartition(" (")
    return (rest[:-1], name) if sep and rest.endswith(")") else ("", text)
