"""The structured objects: tensor entries, file entries, manifests and commits.

Manifests and commits are canonical JSON (sorted keys, no spaces, UTF-8) stored as ordinary objects, so
their id is the hash of those bytes. docs/format.md is the schema.
"""

from __future__ import annotations

import itertools
import math
import operator
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from .dtypes import DTYPES, MAX_RANK, NOT_A_SHAPE, TOO_BIG, elements, is_dtype_name
from .errors import CorruptObjectError, FormatError, MlvcError, PathError
from .util import ID_HEX_LEN, canonical_json, hash_bytes, is_utf8_text, show

# 2: a tensor entry leaves out `hash` and `nbytes` where they are implied (docs/format.md, "Tensor entry");
# format-1 manifests, which always hold both, read as before. 3: small tensors may be slices of shared "bundle"
# objects (docs/format.md, "Bundles"), each such tensor an entry with `in`. 4: a file's bundled tensors are the
# columns of its `small` table instead (read, checked and written without a dict per tensor). A manifest
# without a bundle is still written as format 2; format 3 is read, no longer written.
MANIFEST_FORMAT = 4
BUNDLES_FORMAT = 3
SMALL_FORMAT = 4
COMMIT_FORMAT = 1
TAG_FORMAT = 1
T = TypeVar("T")

KIND_SAFETENSORS = "safetensors"
KIND_TORCH = "torch"
KIND_BLOB = "blob"


# Limits on a stored path, checked before anything walks or creates its folders: a crafted path thousands of
# folders deep would otherwise end in a RecursionError (os.makedirs recurses per folder) or ENAMETOOLONG.
MAX_PATH_PARTS = 255  # folders + the file name
MAX_PATH_BYTES = 4000  # UTF-8, below Linux's PATH_MAX (4096) with room for the repository's own path
MAX_PART_BYTES = 255  # one name (NAME_MAX)


def check_rel_path(path: str) -> str:
    """A stored path: relative, POSIX separators, no '..', no empty parts, UTF-8, within the limits above.
    Guards every write, and every manifest read."""
    if not isinstance(path, str):
        raise PathError(f"refusing the stored path {show(path)}: a path must be a string")
    if not is_utf8_text(path):
        raise PathError(f"refusing the path {show(path)}: it is not valid UTF-8 text (a file name in another "
                        "encoding?); rename it, or leave it out of the commit")
    parts = path.split("/")
    if (len(parts) > MAX_PATH_PARTS or len(path.encode("utf-8")) > MAX_PATH_BYTES
            or any(len(p.encode("utf-8")) > MAX_PART_BYTES for p in parts)):
        raise PathError(f"refusing the path {show(path)} ({len(parts)} parts, {len(path.encode('utf-8'))} bytes): "
                        f"mlvc stores paths at most {MAX_PATH_PARTS} parts deep, {MAX_PATH_BYTES} bytes long, "
                        f"{MAX_PART_BYTES} bytes a name; move the file to a shorter path")
    if (not path or path.startswith("/") or "\\" in path or "\x00" in path
            or any(part in ("", ".", "..") for part in parts)
            or posixpath.normpath(path) != path or parts[0] == ".mlvc"):
        raise PathError(f"refusing the stored path {show(path)}: paths must be relative to the repository root "
                        "and stay inside it")
    return path


def check_root(path: str) -> str:
    """A tracked path: a file or folder path as check_rel_path allows, or "." for the whole repository."""
    return path if path == "." else check_rel_path(path)


class Slot(NamedTuple):
    """Where a bundled tensor's bytes are (format 3, docs/format.md "Bundles")."""

    bundle: str  # the bundle object's id
    offset: int  # where the tensor's bytes start in it
    length: int  # the bundle's length
    place: int  # its place in the file's `bundles` (two places may name one id: equal bundles)


@dataclass
class TensorEntry:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    hash: str  # xxh3-128 of the tensor's bytes
    chunks: list[str]  # chunk object ids, in order
    alias: str | None = None  # torch files: this tensor shares storage with the named one
    # Format 3: the tensor's bytes are a slice of a bundle object; `chunks` then holds one id, the hash of those
    # bytes, which no object file need hold (the store reads it from the bundle, ObjectStore.get). Not compared:
    # the same bytes are the same tensor wherever they are kept.
    slot: Slot | None = field(default=None, compare=False)

    def object_ids(self) -> list[str]:
        """The objects that hold this tensor's bytes."""
        return [self.slot.bundle] if self.slot is not None else self.chunks

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored: `hash` and `nbytes` only where a reader could not work them out (format 2).
        A checkpoint of 100,000 one-chunk tensors otherwise lists every chunk id twice. (A tensor in a bundle
        is a row of its file's `small` table instead: FileEntry.to_dict.)"""
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        d["chunks"] = list(self.chunks)
        if self.alias is not None or implied_nbytes(self.dtype, self.shape) != self.nbytes:
            d["nbytes"] = self.nbytes
        if self.alias is not None or implied_hash(self.chunks) != self.hash:
            d["hash"] = self.hash
        if self.alias is not None:
            d["alias"] = self.alias
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], bundles: list[str] | None = None) -> TensorEntry:
        """A tensor entry as stored; Malformed (a ValueError) when any field is not what mlvc writes. Runs once
        per tensor of every manifest read (100,000 for some checkpoints): the shape is walked once, for every
        check that needs it, and a message is only built on failure. A tensor in a bundle comes back with no
        slot (FileEntry.from_dict places it), and no hash or chunk until its bundle is read (bundles.resolve_file).
        `in` (a bundled tensor written as an entry) is format 3's form: `bundles` is None in any other format."""
        if not isinstance(d, dict):
            raise Malformed("a tensor entry is not an object")
        name = d["name"]
        if not (type(name) is str and name.isascii()) and not is_utf8_text(name):  # ASCII: the common case, cheap
            raise Malformed(f"tensor name {show(name)} is not UTF-8 text")
        dtype, shape, alias = d["dtype"], d["shape"], d.get("alias")
        if not is_dtype_name(dtype):
            raise Malformed(f"tensor {show(name)}: dtype {show(dtype)}")
        count = elements(shape)
        if count == NOT_A_SHAPE:
            raise Malformed(f"tensor {show(name)}: shape must be a list of at most {MAX_RANK} non-negative integers")
        if count == TOO_BIG:
            raise Malformed(f"tensor {show(name)}: its dims multiply past 2**63")
        if alias is not None and not is_utf8_text(alias):
            raise Malformed(f"tensor {show(name)}: alias {show(alias)}")
        if "in" in d:
            if bundles is None:
                raise Malformed(f"tensor {show(name)}: `in` belongs to format 3 (format 4 lists bundled tensors in "
                                "`small`)")
            return cls._in_bundle(d, name, dtype, shape, count, bundles)
        chunks = _ids(d["chunks"], "chunks")
        known = DTYPES.get(dtype)
        implied = None if known is None else known.itemsize * count
        nbytes: Any = d.get("nbytes")
        if nbytes is None and "nbytes" not in d:  # format 2: implied by a known dtype and the shape
            nbytes = implied if alias is None else None
            if nbytes is None:
                raise Malformed(f"tensor {show(name)}: no nbytes, and {show(dtype)} does not imply it")
        if not _nat(nbytes):
            raise Malformed(f"tensor {show(name)}: nbytes must be a non-negative integer")
        tensor_hash: Any = d.get("hash")
        if tensor_hash is None and "hash" not in d:
            # format 2: a tensor of one chunk (or none) has that chunk's id (the hash of no bytes) as its hash
            tensor_hash = implied_hash(chunks)
            if tensor_hash is None:
                raise Malformed(f"tensor {show(name)}: no hash, and {len(chunks)} chunks do not imply one")
        else:
            _id(tensor_hash, "tensor hash")
        if alias is None and implied is not None and nbytes != implied:  # the bytes hold exactly the shape
            raise Malformed(f"tensor {show(name)}: {nbytes} bytes do not hold {dtype} of {len(shape)} dims "
                            f"{show(shape)}")
        return cls(name, dtype, list(shape), nbytes, tensor_hash, chunks, alias)

    @classmethod
    def _in_bundle(cls, d: dict[str, Any], name: str, dtype: str, shape: list[int], count: int,
                   bundles: list[str]) -> TensorEntry:
        k = d["in"]
        if type(k) is not int or not 0 <= k < len(bundles):
            raise Malformed(f"tensor {show(name)}: in {show(k)} names none of the file's {len(bundles)} bundles")
        if "chunks" in d or "hash" in d or "nbytes" in d or "alias" in d:
            extra = sorted(set(d) & {"chunks", "hash", "nbytes", "alias"})
            raise Malformed(f"tensor {show(name)}: a tensor in a bundle has no {', '.join(extra)}")
        known = DTYPES.get(dtype)
        if known is None or count == 0:
            raise Malformed(f"tensor {show(name)}: a bundle holds only non-empty tensors of a known dtype")
        return cls(name, dtype, list(shape), known.itemsize * count, "", [])


EMPTY_HASH = hash_bytes(b"")


def implied_nbytes(dtype: str, shape: list[int]) -> int | None:
    """The byte length a tensor of a known dtype and this shape has; None for a dtype of unknown element size."""
    d = DTYPES.get(dtype)
    return None if d is None else d.itemsize * elements(shape)  # the count from_dict checks against


def implied_hash(chunks: list[str]) -> str | None:
    """A tensor's hash as its chunk list gives it without reading anything: its only chunk's id (both are the
    xxh3-128 of the same bytes), or the hash of no bytes for no chunk; None for several chunks."""
    if len(chunks) > 1:
        return None
    return chunks[0] if chunks else EMPTY_HASH


@dataclass
class FileEntry:
    """One file of a checkpoint.

    kind "safetensors": `header` lists the chunk ids of the file's first 8 + N bytes (length and JSON header,
    exactly as read); the data region is the tensors' bytes in order.
    kind "torch": `frame` lists the chunk ids of every byte of the file that is not a tensor's storage record
    (zip headers, the pickle, storages no tensor covers whole), verbatim; `layout` rebuilds the file in
    order: an int n takes the next n bytes of the frame, a string the bytes of the tensor of that name. Such
    an entry is always byte-exact (the rebuild is checked against `hash` at commit time). Entries committed
    before that design have instead `skeleton` (the id of the pickled container with tensors replaced by
    placeholders, rebuilt with torch.save), `archive`, and `exact` (whether that rebuild gives the bytes).
    kind "blob": any other file, as `chunks`.
    """

    path: str
    kind: str
    size: int
    hash: str  # xxh3-128 of the whole file
    chunks: list[str] = field(default_factory=list)
    tensors: list[TensorEntry] = field(default_factory=list)
    header: list[str] | None = None
    skeleton: str | None = None
    exact: bool = True
    archive: str | None = None  # torch files: the zip's record folder (None: legacy, non-zip format)
    frame: list[str] | None = None  # torch files: chunks of the bytes around the tensors
    layout: list[int | str] | None = None  # torch files: frame byte counts and tensor names, in file order
    # Read from a `small` table (format 4), the checked table; from a snapshot, the tensors held for bundles
    # (HeldTable). `tensors` is built from it on first use.
    _small: SmallTable | HeldTable | None = field(default=None, init=False, repr=False, compare=False)

    def __getattr__(self, name: str) -> list[TensorEntry]:
        """`tensors` of an entry read with a `small` table, built on first use: a command that compares only
        files (`status` of an unchanged file, `show`, `gc`) never builds 100,000 tensor entries. Called only
        for an attribute the entry lacks."""
        table = self.__dict__.get("_small")
        if name != "tensors" or table is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        tensors: list[TensorEntry] = self.__dict__.setdefault("tensors", table.tensors())  # one list if two race
        return tensors

    def adopt(self, table: SmallTable | HeldTable) -> FileEntry:
        """The entry with its bundled tensors (and, before bundles.store_bundles, its held ones) in `table`:
        `tensors` is built from it on first use."""
        self.__dict__.pop("tensors", None)
        self._small = table
        return self

    def _table(self) -> SmallTable | HeldTable | None:
        """The table while `tensors` is neither built nor assigned; then None."""
        return None if "tensors" in self.__dict__ else self._small

    def small_table(self) -> SmallTable | None:
        """The `small` table of bundled tensors while `tensors` is neither built nor assigned; then None (also for
        a snapshot's table of tensors not yet in bundles, which `tensors` answers for)."""
        table = self._table()
        return table if isinstance(table, SmallTable) else None

    def held(self) -> HeldTable | None:
        """A snapshot's table of tensors held for bundles while `tensors` is not built; else None."""
        table = self._table()
        return table if isinstance(table, HeldTable) else None

    def built(self) -> bool:
        """Whether `tensors` exists (built, assigned, or never from a table) or is a snapshot's held tensors (whose
        ids it holds): a file read without its tensors built has had none of them resolved either."""
        return self.small_table() is None

    def tensor_count(self) -> int:
        """len(tensors), without building them."""
        table = self._table()
        return len(self.tensors) if table is None else len(table.listed) + len(table.names)

    def listed_tensors(self) -> list[TensorEntry]:
        """The tensors that are not in bundles (those a manifest lists as entries), without building a table's (nor
        a snapshot's held tensors: they are small tensors too, which take no delta base)."""
        table = self._table()
        return [t for t in self.tensors if t.slot is None] if table is None else table.listed

    def columns(self) -> tuple[list[str], list[str], list[list[int]], list[int]]:
        """The tensors' names, dtypes, shapes and byte sizes in file order, without building a table's entries."""
        table = self._table()
        listed = self.tensors if table is None else table.listed
        cols = ([t.name for t in listed], [t.dtype for t in listed], [t.shape for t in listed],
                [t.nbytes for t in listed])
        if table is None:
            return cols
        return (table.merged(cols[0], table.names), table.merged(cols[1], table.dtypes),
                table.merged(cols[2], table.shapes), table.merged(cols[3], table.nbytes))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "kind": self.kind, "size": self.size, "hash": self.hash}
        if self.kind == KIND_BLOB:
            d["chunks"] = list(self.chunks)
        elif (table := self.small_table()) is not None:  # as read, or as bundles.store_bundles made it
            d["tensors"] = [t.to_dict() for t in table.listed]
            d["bundles"] = list(table.bundles)
            d["small"] = _small_columns(table.runs, table.names, table.dtypes, table.shapes, table.ins)
        else:
            d["tensors"] = [t.to_dict() for t in self.tensors if t.slot is None]
            if len(d["tensors"]) < len(self.tensors):
                d["bundles"], d["small"] = _small_table(self.path, self.tensors)
        if self.header is not None:
            d["header"] = list(self.header)
        if self.skeleton is not None:
            d["skeleton"] = self.skeleton
        if self.kind == KIND_TORCH and self.layout is not None:
            d["frame"] = list(self.frame or [])
            d["layout"] = list(self.layout)
        elif self.kind == KIND_TORCH:  # an entry from before the frame/layout design, kept as it was
            d["exact"] = self.exact
            d["archive"] = self.archive
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], fmt: int = MANIFEST_FORMAT) -> FileEntry:
        """A file entry as stored in a manifest of format `fmt` (its bundled tensors: format 3's `in` entries, or
        the rows of format 4's `small` table); Malformed when anything is not what mlvc writes."""
        bundles = d.get("bundles") or []
        stored = d.get("tensors", [])
        tensors = [TensorEntry.from_dict(t, bundles if fmt == BUNDLES_FORMAT else None) for t in stored]
        if fmt == BUNDLES_FORMAT and bundles:
            _place(d["path"], bundles, stored, tensors)
        elif "small" in d:
            table = SmallTable.read(d["path"], d["small"], bundles, tensors)
        elif bundles:
            raise Malformed(f"{show(d['path'])}: bundle 0 is listed but holds no tensor")
        entry = cls(check_rel_path(d["path"]), d["kind"], int(d["size"]), d["hash"], list(d.get("chunks", [])),
                   tensors, d.get("header"), d.get("skeleton"),
                   bool(d.get("exact", True)), d.get("archive"),
                   frame=list(d["frame"]) if d.get("frame") is not None else None,
                   layout=list(d["layout"]) if d.get("layout") is not None else None)
        return entry.adopt(table) if "small" in d else entry  # tensors built from the table on first use

    def pieces(self) -> list[str | tuple[str, int, int]]:
        """The tensors' bytes in file order, as chunk ids and (bundle, start, end) slices: each run of tensors that
        lie end to end in one bundle is one slice (a file of 100,000 tiny tensors: a slice per bundle). From the
        `small` table when the tensors are not built, without building them."""
        table = self.small_table()
        items: list[list[str] | tuple[str, int, int]]  # per tensor: its chunks, or its slice of a bundle
        if table is None:
            items = [t.chunks if t.slot is None else (t.slot.bundle, t.slot.offset, t.slot.offset + t.nbytes)
                     for t in self.tensors]
        else:
            items = table.pieces()
        out: list[str | tuple[str, int, int]] = []
        for item in items:
            last = out[-1] if out else None
            if isinstance(item, list):
                out.extend(item)
            elif type(last) is tuple and last[0] == item[0] and last[2] == item[1]:  # end to end in one bundle
                out[-1] = (item[0], last[1], item[2])
            else:
                out.append(item)
        return out

    def bundled_by_name(self) -> dict[str, tuple[str, int]]:
        """Each bundled tensor's bundle, as (id, length), by tensor name; from the `small` table when the tensors
        are not built, without building them."""
        table = self.small_table()
        if table is None:
            return {t.name: (t.slot.bundle, t.slot.length) for t in self.tensors if t.slot is not None}
        bundles = list(zip(table.bundles, table.lengths(), strict=True))
        return dict(zip(table.names, map(bundles.__getitem__, table.ins), strict=True))

    def bundle_lengths(self) -> list[tuple[int, str, int]]:
        """(place, id, length) of each of the file's bundles, in order (its tensors are not built for it)."""
        table = self.small_table()
        if table is not None:
            return list(zip(range(len(table.bundles)), table.bundles, table.lengths(), strict=True))
        return sorted({(t.slot.place, t.slot.bundle, t.slot.length) for t in self.tensors if t.slot is not None})

    def object_ids(self) -> list[str]:
        ids = list(self.header or []) + list(self.chunks) + list(self.frame or [])
        table = self.small_table()  # the tensors not built yet: the table names its bundles
        for t in self.tensors if table is None else table.listed:
            ids.extend(t.object_ids())
        if table is not None:
            ids.extend(table.bundles)
        if self.skeleton:
            ids.append(self.skeleton)
        return ids


@dataclass
class Manifest:
    roots: list[str]  # the tracked paths, as committed (files or folders)
    files: list[FileEntry]
    chunk_size: int

    def to_bytes(self) -> bytes:
        for f in self.files:  # what no reader could read back is refused here, naming the file
            check_rel_path(f.path)
            names = f.columns()[0]
            bad = None if "".join(names).isascii() else next((n for n in names if not is_utf8_text(n)), None)
            if bad is not None:
                raise FormatError(f.path, f"tensor name {show(bad)} is not valid UTF-8 text (it holds a lone "
                                          "surrogate); rename the tensor")
        files = [f.to_dict() for f in sorted(self.files, key=lambda f: f.path)]
        # format 2 unless a file has bundles: a tree of large tensors stays readable by an mlvc that knows 2
        fmt = SMALL_FORMAT if any("bundles" in f for f in files) else 2
        return canonical_json({"type": "manifest", "format": fmt, "roots": list(self.roots),
                               "chunk_size": self.chunk_size, "files": files})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """A manifest as stored. Malformed (a ValueError; Repo.read_manifest makes it a CorruptObjectError,
        "malformed manifest") or PathError when anything is not what mlvc writes: a field of the wrong type
        (JSON `true` is not a size), an id that is not one, a path listed twice or under another file's path
        (a file "a" and a file "a/b"), a format this mlvc does not know."""
        _want(isinstance(d, dict), "not an object")
        _format(d, MANIFEST_FORMAT, "manifest")
        roots, files, chunk_size = d["roots"], d["files"], d["chunk_size"]
        _want(isinstance(roots, list) and isinstance(files, list), "roots and files must be lists")
        _want(_nat(chunk_size) and 64 <= chunk_size <= 1 << 30, f"chunk_size {show(chunk_size)}")
        entries = []
        fmt = d.get("format", MANIFEST_FORMAT)
        for f in files:
            _check_file(f)
            _want(fmt >= BUNDLES_FORMAT or "bundles" not in f, f"{f['path']}: bundles in a manifest of format {fmt}")
            _want(fmt >= SMALL_FORMAT or "small" not in f, f"{f['path']}: small in a manifest of format {fmt}")
            entries.append(FileEntry.from_dict(f, fmt))
        _check_unique_paths([f.path for f in entries])
        return cls([check_root(r) for r in roots], entries, chunk_size)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def tensors(self) -> dict[str, TensorEntry]:
        """All tensors by name; in a folder of several files a name is prefixed by nothing (HF shards hold
        disjoint names) unless two files share a name, in which case it becomes 'path:name'."""
        seen: dict[str, int] = {}
        for f in self.files:
            for t in f.tensors:
                seen[t.name] = seen.get(t.name, 0) + 1
        out: dict[str, TensorEntry] = {}
        for f in self.files:
            for t in f.tensors:
                out[t.name if seen[t.name] == 1 else f"{f.path}:{t.name}"] = t
        return out


@dataclass
class Commit:
    manifest: str
    parents: list[str]
    author: str
    time: str  # UTC, ISO 8601 with a Z
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # filled in when read or written; not part of the serialized form

    def to_bytes(self) -> bytes:
        return _text_json({"type": "commit", "format": COMMIT_FORMAT, "manifest": self.manifest,
                           "parents": list(self.parents), "author": self.author, "time": self.time,
                           "message": self.message, "metadata": self.metadata}, "commit's message, author and metadata")

    @classmethod
    def from_dict(cls, d: dict[str, Any], oid: str) -> Commit:
        """A commit as stored; CorruptObjectError ("malformed commit") when a field is not what mlvc writes."""
        try:
            _want(isinstance(d, dict), "not an object")
            _format(d, COMMIT_FORMAT, "commit")
            parents, metadata = d["parents"], d.get("metadata", {})
            _want(isinstance(parents, list), "parents must be a list")
            for key in ("author", "time", "message"):
                _want(is_utf8_text(d[key]), f"{key} must be a string")
            _want(isinstance(metadata, dict), "metadata must be an object")
            return cls(_id(d["manifest"], "manifest"), _ids(parents, "parents"), d["author"], d["time"],
                       d["message"], dict(metadata), oid)
        except KeyError as e:
            raise CorruptObjectError(oid, f"malformed commit (no {e})") from None
        except ValueError as e:
            raise CorruptObjectError(oid, f"malformed commit ({e})") from None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "manifest": self.manifest, "parents": self.parents, "author": self.author,
                "time": self.time, "message": self.message, "metadata": self.metadata}


@dataclass
class Tag:
    """An annotated tag (`mlvc tag -m MSG NAME REV`): the commit it names, its name, who made it, when, and
    why. Stored as canonical JSON like a commit; `refs/tags/NAME` then holds the tag's id instead of the
    commit's, and revisions peel it to the commit (docs/format.md, "Tag")."""

    object: str  # the commit id
    tag: str  # the name it was created under
    tagger: str
    time: str  # UTC, ISO 8601 with a Z
    message: str
    object_type: str = "commit"
    id: str = ""  # filled in when read or written; not part of the serialized form

    def to_bytes(self) -> bytes:
        return _text_json({"type": "tag", "format": TAG_FORMAT, "object": self.object,
                           "object_type": self.object_type, "tag": self.tag, "tagger": self.tagger,
                           "time": self.time, "message": self.message}, "tag's name, message and tagger")

    @classmethod
    def from_dict(cls, d: dict[str, Any], oid: str) -> Tag:
        """A tag as stored; CorruptObjectError ("malformed tag") when a field is not what mlvc writes."""
        try:
            _want(isinstance(d, dict), "not an object")
            _format(d, TAG_FORMAT, "tag")
            _want(d["object_type"] == "commit", f"object_type {show(d['object_type'])} (a tag names a commit)")
            for key in ("tag", "tagger", "time", "message"):
                _want(is_utf8_text(d[key]), f"{key} must be a string")
            _want(bool(d["tag"]) and "\n" not in d["tag"], f"tag name {show(d['tag'])}")
            return cls(_id(d["object"], "object"), d["tag"], d["tagger"], d["time"], d["message"], "commit", oid)
        except KeyError as e:
            raise CorruptObjectError(oid, f"malformed tag (no {e})") from None
        except ValueError as e:
            raise CorruptObjectError(oid, f"malformed tag ({e})") from None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "object_type": self.object_type, "tag": self.tag,
                "tagger": self.tagger, "time": self.time, "message": self.message}


def object_type(raw: bytes | bytearray) -> str | None:
    """The `type` of a structured object ("commit", "manifest", "tag"), None for anything else (a chunk).
    Cheap: only objects that start like mlvc's canonical JSON are parsed."""
    import json

    if not raw.startswith(b"{") or not raw.endswith(b"}"):
        return None
    try:
        d = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    t = d.get("type") if isinstance(d, dict) else None
    return t if isinstance(t, str) else None


# -- validation of what is read --------------------------------------------------------------------------

class Malformed(ValueError):
    """A manifest field that is not what mlvc writes (Repo.read_manifest reports it as a CorruptObjectError)."""


def _text_json(d: dict[str, Any], what: str) -> bytes:
    """A commit's or tag's canonical JSON; MlvcError naming `what` when a string in it is not UTF-8 text."""
    try:
        return canonical_json(d)
    except UnicodeEncodeError as e:
        raise MlvcError(f"the {what} must be UTF-8 text, but they hold {show(e.object[e.start:e.end])} (bytes that "
                        "are not UTF-8?)") from None


def _want(ok: bool, what: str) -> None:
    if not ok:
        raise Malformed(what)


_ID = re.compile(f"[0-9a-f]{{{ID_HEX_LEN}}}")  # util.is_object_id as one match


def _nat(x: Any) -> bool:
    """A non-negative JSON integer (`True` is an int to Python, a boolean to JSON: never a size)."""
    return type(x) is int and x >= 0


def _id(x: Any, what: str) -> str:
    if not isinstance(x, str) or _ID.fullmatch(x) is None:
        raise Malformed(f"{what}: {show(x)} is not an object id")
    return x


def _ids(x: Any, what: str) -> list[str]:
    """A list of object ids (one regex match each: manifests list up to millions of them)."""
    if not isinstance(x, list):
        raise Malformed(f"{what} must be a list of object ids")
    match = _ID.fullmatch
    for i in x:
        if not isinstance(i, str) or match(i) is None:
            _id(i, what)
    return list(x)


def _format(d: dict[str, Any], known: int, what: str) -> None:
    fmt = d.get("format", known)
    _want(_nat(fmt), f"format {show(fmt)}")
    _want(fmt <= known, f"{what} format {fmt} is newer than this mlvc reads ({known}); upgrade mlvc")


_KINDS = (KIND_SAFETENSORS, KIND_TORCH, KIND_BLOB)


def _check_file(d: Any) -> None:
    """The types of a file entry's fields, before FileEntry.from_dict builds it (tensors check themselves)."""
    _want(isinstance(d, dict), "a file entry is not an object")
    path = check_rel_path(d["path"])
    _want(d["kind"] in _KINDS, f"{path}: kind {show(d['kind'])}")
    _want(_nat(d["size"]), f"{path}: size must be a non-negative integer")
    _id(d["hash"], f"{path}: hash")
    for key in ("chunks", "header", "frame", "bundles"):
        if d.get(key) is not None:
            _ids(d[key], f"{path}: {key}")
    if d.get("bundles") is not None or "small" in d:
        _want(d["kind"] != KIND_BLOB, f"{path}: a blob has chunks, not bundles")
    if d.get("skeleton") is not None:
        _id(d["skeleton"], f"{path}: skeleton")
    tensors = d.get("tensors", [])
    _want(isinstance(tensors, list), f"{path}: tensors must be a list")
    if d["kind"] == KIND_BLOB:
        _want(not tensors and d.get("header") is None, f"{path}: a blob has chunks, not tensors or a header")
    if d["kind"] == KIND_SAFETENSORS:
        _want(isinstance(d.get("header"), list) and not d.get("chunks"),
              f"{path}: a safetensors file has a header and tensors, not chunks")
    _want(isinstance(d.get("exact", True), bool), f"{path}: exact must be true or false")
    _want(d.get("archive") is None or is_utf8_text(d["archive"]), f"{path}: archive")
    _want(d.get("layout") is None or isinstance(d["layout"], list), f"{path}: layout must be a list")
    names = [t.get("name") if isinstance(t, dict) else None for t in tensors]
    if len(set(names if all(type(n) is str for n in names) else map(repr, names))) != len(names):
        raise Malformed(f"{path}: lists a tensor name twice")


def _place(path: str, bundles: list[str], stored: list[dict[str, Any]], tensors: list[TensorEntry]) -> None:
    """The slots of a file's bundled tensors (stored with `in`, already checked): each bundle holds its tensors
    end to end in list order, so a tensor's offset is the sum of the sizes before it in the same bundle.
    Bundles are numbered in order of first use, and every one listed is used."""
    ends = [0] * len(bundles)
    used = 0  # bundles 0 .. used - 1 hold a tensor so far
    placed = []
    for d, t in zip(stored, tensors, strict=True):
        k = d.get("in")
        if k is None:
            continue
        if k > used:
            raise Malformed(f"{show(path)}: tensor {show(t.name)} is in bundle {k} before bundle {used} is used")
        used += k == used
        placed.append((t, k, ends[k]))
        ends[k] += t.nbytes
    if used < len(bundles):
        raise Malformed(f"{show(path)}: bundle {used} is listed but holds no tensor")
    for t, k, offset in placed:
        t.slot = Slot(bundles[k], offset, ends[k], k)


# -- format 4: a file's bundled tensors as the columns of its `small` table -------------------------------

_PREFIX_SCAN = 64  # a name shares at most this many leading characters with the one before it in `small`
_PREFIX_BLOCK = 8192  # names compared at once (a block of _PREFIX_SCAN-wide rows: 2 MiB)


def _small_table(path: str, tensors: list[TensorEntry]) -> tuple[list[str], dict[str, Any]]:
    """The file's `bundles` and its `small` table, from its bundled tensors (those with a slot): where they sit
    in the file's tensor order (`runs` of [position, count]), and per tensor, in that order, its name
    (front-coded: `prefix` characters of the name before, then `suffix`), `dtype`, `shape` and `in` (its
    bundle's index). Columns of plain values, built without a dict per tensor. The slots must lie end to end
    in list order in bundles numbered from 0 in order of first use, and fill them, as a reader will place them
    (Malformed otherwise): the stored form has no offsets, so the readback could not catch a wrong one."""
    at = [i for i, t in enumerate(tensors) if t.slot is not None]
    small = [tensors[i] for i in at]
    slots = [t.slot for t in small if t.slot is not None]
    ids: list[str] = []
    ends: list[int] = []
    lengths: list[int] = []
    for t, (bid, offset, length, k) in zip(small, slots, strict=True):
        if k == len(ids):
            ids.append(bid)
            ends.append(0)
            lengths.append(length)
        if k >= len(ids) or ids[k] != bid or offset != ends[k] or length != lengths[k]:
            raise Malformed(f"{path}: tensor {show(t.name)} is not next in bundle {k} ({bid})")
        ends[k] = offset + t.nbytes
    if ends != lengths:
        k = next(k for k, (end, n) in enumerate(zip(ends, lengths, strict=True)) if end != n)
        raise Malformed(f"{path}: the tensors of bundle {k} ({ids[k]}) do not fill it")
    return ids, _small_columns(runs_of(at), [t.name for t in small], [t.dtype for t in small],
                               [t.shape for t in small], [slot.place for slot in slots])


def runs_of(positions: list[int]) -> list[list[int]]:
    """Ascending positions as `small`'s runs: [first position, count] of each stretch of consecutive ones (found
    where the step to the next position is not 1, with C-level maps: 100,000 positions are often one run)."""
    if not positions:
        return []
    gaps = itertools.compress(range(1, len(positions)),
                              map(operator.ne, positions[1:], map(operator.add, positions, itertools.repeat(1))))
    starts = [0, *gaps]
    return [[positions[a], b - a] for a, b in zip(starts, [*starts[1:], len(positions)], strict=True)]


def _small_columns(runs: list[list[int]], names: list[str], dtypes: list[str], shapes: list[list[int]],
                   ins: list[int]) -> dict[str, Any]:
    """A `small` table as stored (names front-coded)."""
    prefix = _prefixes(names)
    return {"runs": [list(r) for r in runs], "prefix": prefix,
            "suffix": [n[k:] for n, k in zip(names, prefix, strict=True)], "dtype": list(dtypes),
            "shape": [list(s) for s in shapes], "in": list(ins)}


def _prefixes(names: list[str]) -> list[int]:
    """For each name, the number of leading characters it shares with the name before it (0 for the first),
    counting at most _PREFIX_SCAN. Compared as rows of code points, a block of names at a time; a row's
    padding (and numpy's dropping of trailing NULs) only matches past the end of a name, which the
    minimum of the two lengths cuts off."""
    import numpy as np

    out = [0]
    for start in range(1, len(names), _PREFIX_BLOCK):
        block = [n[:_PREFIX_SCAN] for n in names[start - 1 : start + _PREFIX_BLOCK]]
        rows = np.array(block, dtype=f"<U{_PREFIX_SCAN}").view(np.uint32).reshape(len(block), _PREFIX_SCAN)
        same = np.ones((len(block) - 1, _PREFIX_SCAN + 1), dtype=bool)
        np.equal(rows[1:], rows[:-1], out=same[:, :_PREFIX_SCAN])
        same[:, _PREFIX_SCAN] = False
        lengths = np.fromiter(map(len, block), dtype=np.int64, count=len(block))
        common = np.minimum(same.argmin(axis=1), np.minimum(lengths[1:], lengths[:-1]))
        out.extend(common.tolist())
    return out


_SMALL_KEYS = ("runs", "prefix", "suffix", "dtype", "shape", "in")


class _Rows:
    """Small tensors of a file as columns, placed among its other (`listed`) tensors by `runs` ([position, count]
    in the file's tensor order); `tensors()` builds the file's tensor list."""

    def __init__(self, runs: list[list[int]], names: list[str], dtypes: list[str], shapes: list[list[int]],
                 nbytes: list[int], listed: list[TensorEntry]):
        self.runs, self.names, self.dtypes, self.shapes, self.nbytes, self.listed = \
            runs, names, dtypes, shapes, nbytes, listed

    def _entries(self) -> list[TensorEntry]:
        raise NotImplementedError

    def merged(self, listed: list[T], rows: list[T]) -> list[T]:
        """A value per tensor of the file, in file order: `listed` (one per listed tensor) and `rows` (one per
        row) interleaved as `runs` places them."""
        out: list[T] = []
        taken = 0  # of listed
        for position, count in self.runs:
            gap = position - len(out)
            out.extend(listed[taken : taken + gap])
            taken += gap
            out.extend(rows[len(out) - taken : len(out) - taken + count])
        out.extend(listed[taken:])
        return out

    def tensors(self) -> list[TensorEntry]:
        """The file's tensors in order: the listed ones, and each row (`_entries`) placed by `runs`."""
        return self.merged(self.listed, self._entries())


class HeldTable(_Rows):
    """The small tensors a snapshot held for bundles (Pipeline.holds), each with its id (its hash and only chunk):
    bundles.store_bundles puts them in bundles, as a SmallTable, without an entry object per tensor."""

    def __init__(self, runs: list[list[int]], names: list[str], dtypes: list[str], shapes: list[list[int]],
                 nbytes: list[int], listed: list[TensorEntry], ids: list[str]):
        super().__init__(runs, names, dtypes, shapes, nbytes, listed)
        self.ids = ids

    def _entries(self) -> list[TensorEntry]:
        return [TensorEntry(name, dtype, shape, size, oid, [oid]) for name, dtype, shape, size, oid
                in zip(self.names, self.dtypes, self.shapes, self.nbytes, self.ids, strict=True)]


class SmallTable(_Rows):
    """A file's bundled tensors: its `small` table as read and checked (FileEntry.from_dict), or as
    bundles.store_bundles made it; `ins` gives each row's bundle (an index into `bundles`). Its rows have no hash
    until bundles.resolve_file. Checked column by column with C-level maps (a manifest can hold 100,000 rows,
    and a command reading it may need none of them), so that nothing malformed waits for the build."""

    def __init__(self, runs: list[list[int]], names: list[str], dtypes: list[str], shapes: list[list[int]],
                 ins: list[int], nbytes: list[int], bundles: list[str], listed: list[TensorEntry]):
        super().__init__(runs, names, dtypes, shapes, nbytes, listed)
        self.ins, self.bundles = ins, bundles

    @classmethod
    def read(cls, path: str, table: Any, bundles: list[str], listed: list[TensorEntry]) -> SmallTable:
        """The table of the file at `path` whose `tensors` are `listed`; Malformed when it is not what
        _small_table writes (the runs' layout, each column's types, names, dtypes, shapes, bundle numbers)."""
        where = show(path)
        _want(isinstance(table, dict) and set(table) == set(_SMALL_KEYS),
              f"{where}: small must be an object of {', '.join(_SMALL_KEYS)}")
        runs, prefix, suffix, dtypes, shapes, ins = (table[k] for k in _SMALL_KEYS)
        _want(all(type(c) is list for c in (runs, prefix, suffix, dtypes, shapes, ins)),
              f"{where}: small's columns are lists")
        n = len(prefix)
        _want(n > 0 and len(suffix) == len(dtypes) == len(shapes) == len(ins) == n,
              f"{where}: small's columns must have one value per tensor (and at least one)")
        _check_runs(where, runs, n, len(listed))
        _want(set(map(type, prefix)) | set(map(type, ins)) == {int}, f"{where}: small's prefix and in are integers")
        _want(set(map(type, suffix)) == {str}, f"{where}: small's suffixes are strings")
        # each prefix within the name before it (whose length is its own prefix plus its suffix), checked first so
        # that the loop decoding 100,000 names does nothing else
        _want(prefix[0] == 0 and min(prefix) >= 0
              and all(map(operator.le, prefix[1:], map(operator.add, prefix, map(len, suffix)))),
              f"{where}: small's prefix must be 0 for the first name and within the name before it for the others")
        names: list[str] = []
        append = names.append
        name = ""
        for k, rest in zip(prefix, suffix, strict=True):
            name = name[:k] + rest
            append(name)
        if not "".join(suffix).isascii():
            bad = next((x for x in names if not is_utf8_text(x)), None)
            _want(bad is None, f"{where}: tensor name {show(bad)} is not UTF-8 text")
        _want(len(set(names).union(t.name for t in listed)) == n + len(listed), f"{where}: lists a tensor name twice")
        sizes = {name: d.itemsize for name, d in DTYPES.items()}
        unknown = set(dtypes) - set(sizes)
        _want(not unknown, f"{where}: a bundle holds only tensors of a known dtype, not "
                           f"{show(sorted(map(str, unknown)))}")
        _want(set(map(type, shapes)) == {list}, f"{where}: small's shapes are lists")
        dims = [x for s in shapes for x in s]
        _want(not dims or (set(map(type, dims)) == {int} and min(dims) > 0),
              f"{where}: a bundled tensor's dims are positive integers (a bundle holds no empty tensor)")
        _want(max(map(len, shapes)) <= MAX_RANK, f"{where}: a shape has more than {MAX_RANK} dims")
        counts = list(map(math.prod, shapes))
        _want(max(counts) < 1 << 63, f"{where}: a bundled tensor's dims multiply past 2**63")
        _want(list(dict.fromkeys(ins)) == list(range(len(bundles))),  # the bundles in order of first use, all used
              f"{where}: small's bundles must be numbered 0 .. {len(bundles) - 1} in order of first use")
        nbytes = list(map(operator.mul, map(sizes.__getitem__, dtypes), counts))
        return cls(runs, names, dtypes, shapes, ins, nbytes, bundles, listed)

    def lengths(self) -> list[int]:
        """Each bundle's length: the sum of its tensors' sizes."""
        out = [0] * len(self.bundles)
        for k, size in zip(self.ins, self.nbytes, strict=True):
            out[k] += size
        return out

    def pieces(self) -> list[list[str] | tuple[str, int, int]]:
        """The file's tensors in order (FileEntry.pieces): each listed tensor's chunks, and a (bundle, start, end)
        slice for each stretch of rows in one run and one bundle (a bundle's rows lie in it end to end, in row
        order): found where the bundle changes or a run starts, not row by row."""
        ins, n = self.ins, len(self.ins)
        run_starts = itertools.accumulate((count for _, count in self.runs[:-1]), initial=0)
        bounds = sorted({n, *run_starts, *itertools.compress(range(1, n), map(operator.ne, ins[1:], ins))})
        ends = [0] * len(self.bundles)
        stretches = []  # (first row, slice)
        for a, b in itertools.pairwise(bounds):
            k = ins[a]
            size = sum(self.nbytes[a:b])
            stretches.append((a, (self.bundles[k], ends[k], ends[k] + size)))
            ends[k] += size
        out: list[list[str] | tuple[str, int, int]] = []
        taken = row = j = 0  # listed tensors placed, rows placed, stretches placed
        for position, count in self.runs:
            gap = position - taken - row  # listed tensors before this run
            out.extend(t.chunks for t in self.listed[taken : taken + gap])
            taken += gap
            row += count
            while j < len(stretches) and stretches[j][0] < row:
                out.append(stretches[j][1])
                j += 1
        out.extend(t.chunks for t in self.listed[taken:])
        return out

    def offsets(self) -> list[int]:
        """Each row's offset in its bundle: the sum of the sizes before it in the same bundle."""
        ends = [0] * len(self.bundles)
        out = []
        for k, size in zip(self.ins, self.nbytes, strict=True):
            out.append(ends[k])
            ends[k] += size
        return out

    def _entries(self) -> list[TensorEntry]:
        """Each row with its slot, no hash."""
        lengths = self.lengths()
        return [TensorEntry(name, dtype, shape, size, "", [], None, Slot(self.bundles[k], offset, lengths[k], k))
                for name, dtype, shape, k, size, offset
                in zip(self.names, self.dtypes, self.shapes, self.ins, self.nbytes, self.offsets(), strict=True)]


def _check_runs(where: str, runs: list[Any], rows: int, listed: int) -> None:
    """`runs`: ascending [position, count] pairs that place `rows` tensors among `listed` others, neither
    touching nor overlapping (one way to write one layout)."""
    end = -1  # where the run before ended (-1: none yet)
    placed = 0
    for run in runs:
        ok = type(run) is list and len(run) == 2 and all(type(x) is int for x in run)
        if not ok or run[1] < 1 or run[0] <= end or run[0] - placed > listed:
            raise Malformed(f"{where}: small's run {show(run)} is not a [position, count] after the run before, "
                            "within the file's tensors")
        end = run[0] + run[1]
        placed += run[1]
    _want(placed == rows, f"{where}: small's runs place {placed} tensors, it has {rows}")


def _check_unique_paths(paths: list[str]) -> None:
    """Each path once, and no path inside another one's folder chain (a file "a" and a file "a/b" cannot
    both exist: checkout would have to make "a" a file and a folder)."""
    seen = set(paths)
    if len(seen) != len(paths):
        dup = next(p for p in sorted(paths) if paths.count(p) > 1)
        raise Malformed(f"lists {show(dup)} twice")
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise Malformed(f"lists {show('/'.join(parts[:i]))} as a file and {show(p)} inside it")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_object(raw: bytes | bytearray, oid: str, expected_type: str) -> dict[str, Any]:
    """The JSON object of a manifest or commit: strict UTF-8, strict JSON (no NaN), every string UTF-8 text
    (no lone surrogate escapes), nested no deeper than Python's parser allows: CorruptObjectError otherwise."""
    import json

    try:
        text = bytes(raw).decode("utf-8")
        d = json.loads(text, parse_constant=_reject_constant)
        if "\\u" in text:  # only an escape can make a lone surrogate: check the strings encode
            json.dumps(d, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise CorruptObjectError(oid, f"not a {expected_type}: its JSON is nested too deeply") from None
    except ValueError as e:  # not UTF-8, not JSON, an integer past the digit limit, a lone surrogate
        raise CorruptObjectError(oid, f"not a {expected_type}: {show(str(e), 200)}") from None
    if not isinstance(d, dict) or d.get("type") != expected_type:
        found = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise CorruptObjectError(oid, f"expected a {expected_type} object, found {found}")
    return d
