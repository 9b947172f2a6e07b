"""The structured objects: tensor entries, file entries, manifests and commits.

Manifests and commits are canonical JSON (sorted keys, no spaces, UTF-8) stored as ordinary objects, so
their id is the hash of those bytes. docs/format.md is the schema.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptObjectError, PathError
from .util import canonical_json

MANIFEST_FORMAT = 1
COMMIT_FORMAT = 1

KIND_SAFETENSORS = "safetensors"
KIND_TORCH = "torch"
KIND_BLOB = "blob"


def check_rel_path(path: str) -> str:
    """A stored path: relative, POSIX separators, no '..', no empty parts. Guards every write."""
    if (not path or path.startswith("/") or "\\" in path or "\x00" in path
            or any(part in ("", ".", "..") for part in path.split("/"))
            or posixpath.normpath(path) != path or path.split("/")[0] == ".mlvc"):
        raise PathError(f"refusing the stored path {path!r}: paths must be relative to the repository root "
                        "and stay inside it")
    return path


def check_root(path: str) -> str:
    """A tracked path: a file or folder path as check_rel_path allows, or "." for the whole repository."""
    return path if path == "." else check_rel_path(path)


@dataclass
class TensorEntry:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    hash: str  # xxh3-128 of the tensor's bytes
    chunks: list[str]  # chunk object ids, in order
    alias: str | None = None  # torch files: this tensor shares storage with the named one

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes,
             "hash": self.hash, "chunks": list(self.chunks)}
        if self.alias is not None:
            d["alias"] = self.alias
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorEntry:
        return cls(d["name"], d["dtype"], list(d["shape"]), int(d["nbytes"]), d["hash"], list(d["chunks"]),
                   d.get("alias"))


@dataclass
class FileEntry:
    """One file of a checkpoint.

    kind "safetensors": `header` lists the chunk ids of the file's first 8 + N bytes (length and JSON header,
    exactly as read); the data region is the tensors' bytes in order.
    kind "torch": `skeleton` is the id of the pickled container structure with tensors replaced by
    placeholders; `exact` says whether re-serializing reproduces the original bytes.
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

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "kind": self.kind, "size": self.size, "hash": self.hash}
        if self.kind == KIND_BLOB:
            d["chunks"] = list(self.chunks)
        else:
            d["tensors"] = [t.to_dict() for t in self.tensors]
        if self.header is not None:
            d["header"] = list(self.header)
        if self.skeleton is not None:
            d["skeleton"] = self.skeleton
        if self.kind == KIND_TORCH:
            d["exact"] = self.exact
            d["archive"] = self.archive
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        return cls(check_rel_path(d["path"]), d["kind"], int(d["size"]), d["hash"], list(d.get("chunks", [])),
                   [TensorEntry.from_dict(t) for t in d.get("tensors", [])], d.get("header"), d.get("skeleton"),
                   bool(d.get("exact", True)), d.get("archive"))

    def object_ids(self) -> list[str]:
        ids = list(self.header or []) + list(self.chunks)
        for t in self.tensors:
            ids.extend(t.chunks)
        if self.skeleton:
            ids.append(self.skeleton)
        return ids


@dataclass
class Manifest:
    roots: list[str]  # the tracked paths, as committed (files or folders)
    files: list[FileEntry]
    chunk_size: int

    def to_bytes(self) -> bytes:
        return canonical_json({"type": "manifest", "format": MANIFEST_FORMAT, "roots": list(self.roots),
                               "chunk_size": self.chunk_size,
                               "files": [f.to_dict() for f in sorted(self.files, key=lambda f: f.path)]})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls([check_root(r) for r in d["roots"]], [FileEntry.from_dict(f) for f in d["files"]],
                   int(d["chunk_size"]))

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
        return canonical_json({"type": "commit", "format": COMMIT_FORMAT, "manifest": self.manifest,
                               "parents": list(self.parents), "author": self.author, "time": self.time,
                               "message": self.message, "metadata": self.metadata})

    @classmethod
    def from_dict(cls, d: dict[str, Any], oid: str) -> Commit:
        return cls(d["manifest"], list(d["parents"]), d["author"], d["time"], d["message"],
                   dict(d.get("metadata", {})), oid)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "manifest": self.manifest, "parents": self.parents, "author": self.author,
                "time": self.time, "message": self.message, "metadata": self.metadata}


def parse_object(raw: bytes, oid: str, expected_type: str) -> dict[str, Any]:
    import json

    try:
        d = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptObjectError(oid, f"not a {expected_type}: {e}") from None
    if not isinstance(d, dict) or d.get("type") != expected_type:
        raise CorruptObjectError(oid, f"expected a {expected_type} object, found {d.get('type') if isinstance(d, dict) else type(d).__name__}")
    return d
