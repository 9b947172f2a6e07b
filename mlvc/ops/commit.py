"""commit: snapshot the working checkpoint (paths, or tensors from Python) into a new commit."""

from __future__ import annotations

import fnmatch
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FormatError, MlvcError, NothingToCommitError, PathError
from ..objects import Commit, Manifest
from ..progress import NULL, Progress
from ..snapshot import History, NamedBuffer, snapshot_buffers, snapshot_path
from ..statcache import StatCache
from ..util import canonical_json, utc_now
from .workfiles import list_files
from .worktree import move_head, recover

if TYPE_CHECKING:
    from ..repo import Repo

DEFAULT_STATE_DICT_PATH = "model.safetensors"


@dataclass
class CommitResult:
    commit: Commit
    branch: str | None
    files: int
    tensors: int
    raw_bytes: int  # logical size of the checkpoint
    new_bytes: int  # bytes added to the store (after dedupe and compression)
    chunks: int
    new_chunks: int
    inexact: list[str]  # torch files that will check out tensor-identical but not byte-identical

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit.to_json(), "branch": self.branch, "files": self.files, "tensors": self.tensors,
                "raw_bytes": self.raw_bytes, "new_bytes": self.new_bytes, "chunks": self.chunks,
                "new_chunks": self.new_chunks, "inexact": self.inexact}


def commit(repo: Repo, obj: Any = None, message: str = "", metadata: dict | None = None, *,
           paths: Iterable[str] | None = None, path: str | None = None, as_blob: Iterable[str] = (),
           allow_empty: bool = False, progress: Progress = NULL) -> CommitResult:
    """Commit a checkpoint and move the current branch (or detached HEAD) to it; a CommitResult.

    `obj` is a path (a file or folder), a state_dict, an nn.Module or a dict of numpy arrays (stored as a
    safetensors file at `path`, default model.safetensors, without writing it), or None: `paths`, or else the
    paths HEAD tracks. `as_blob` globs name files stored as opaque bytes. NothingToCommitError when nothing
    changed, unless `allow_empty`."""
    with repo.writing():  # gc keeps what this writes until a ref names it
        return _commit(repo, obj, message, metadata, paths=paths, path=path, as_blob=as_blob,
                       allow_empty=allow_empty, progress=progress)


def _commit(repo: Repo, obj: Any, message: str, metadata: dict | None, *, paths: Iterable[str] | None,
           path: str | None, as_blob: Iterable[str], allow_empty: bool, progress: Progress = NULL) -> CommitResult:
    if not message or not message.strip():
        raise MlvcError("a commit needs a message (-m MSG)")
    meta = dict(metadata or {})
    try:
        canonical_json(meta)
    except (TypeError, ValueError, RecursionError) as e:
        raise MlvcError(f"metadata must be JSON (strings, numbers, lists, dicts; no NaN; not nested hundreds "
                        f"of levels deep): {str(e)[:200]}") from None
    recover(repo)  # an interrupted checkout is finished (or undone) before the work tree is read
    parent = repo.head()
    parent_manifest, grand_manifest = _lineage(repo, parent)
    if obj is not None and paths is not None:
        raise MlvcError("give either an object to commit or paths, not both")
    if isinstance(obj, (str, os.PathLike)):
        paths, obj = [os.fspath(obj)], None

    cache = StatCache(repo.dir)
    with repo.pipeline(progress=progress) as pipe:
        if obj is not None:
            rel = repo.rel_path(path, repo.root) if path else DEFAULT_STATE_DICT_PATH
            buffers = _buffers(obj)
            pipe.remember = sum(len(b.data) for b in buffers) <= repo.store.cache_bytes
            progress.start("commit")
            files = [snapshot_buffers(pipe, rel, buffers, history=_history(rel, parent_manifest, grand_manifest))]
            roots = [rel]
        else:
            roots = _roots(repo, paths, parent_manifest)
            rels = list_files(repo, roots)
            if not rels:
                raise PathError(f"nothing to commit: no files under {', '.join(roots)}")
            total = sum(os.path.getsize(repo.abs_path(r)) for r in rels)
            pipe.remember = total <= repo.store.cache_bytes
            progress.start("commit", total)
            blob_globs = list(as_blob)
            files = []
            for rel in rels:
                blob = any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(os.path.basename(rel), g) for g in blob_globs)
                seen = cache.stat_now(repo.abs_path(rel))  # before hashing: a write meanwhile shows
                entry = snapshot_path(pipe, repo.abs_path(rel), rel, as_blob=blob,
                                      history=_history(rel, parent_manifest, grand_manifest))
                files.append(entry)
                cache.record(rel, repo.abs_path(rel), entry.hash, seen)
        progress.finish()
        stats = pipe.stats
        manifest = Manifest(roots, files, repo.config.chunk_size)
        manifest_id = repo.write_manifest(manifest)
    if parent is not None and not allow_empty and manifest_id == repo.read_commit(parent).manifest:
        cache.save()
        raise NothingToCommitError("nothing to commit: the checkpoint is identical to HEAD (pass --allow-empty "
                                   "to commit anyway)")
    meta.update({k: v for k, v in _code_revision(repo.root).items() if k not in meta})
    c = Commit(manifest_id, [parent] if parent else [], repo.author(), utc_now(), message, meta)
    repo.write_commit(c)
    repo.store.flush()  # every object durable before a ref points at it
    summary = f"commit{'' if parent else ' (initial)'}: {message.splitlines()[0]}"
    branch = move_head(repo, parent, c.id, summary)
    cache.save()
    return CommitResult(c, branch, len(files), sum(len(f.tensors) for f in files), stats.raw_bytes,
                        stats.stored_bytes, stats.chunks, stats.new_chunks,
                        [f.path for f in files if f.kind == "torch" and not f.exact])


def _lineage(repo: Repo, parent: str | None) -> tuple[Manifest | None, Manifest | None]:
    """The manifests of the parent and the grandparent (first parents): the delta bases of a new commit."""
    if parent is None:
        return None, None
    pc = repo.read_commit(parent)
    grand = repo.read_manifest(repo.read_commit(pc.parents[0]).manifest) if pc.parents else None
    return repo.read_manifest(pc.manifest), grand


def _history(rel: str, parent: Manifest | None, grand: Manifest | None) -> History:
    return History(parent.file(rel) if parent else None, grand.file(rel) if grand else None)


def _roots(repo: Repo, paths: Iterable[str] | None, parent_manifest: Manifest | None) -> list[str]:
    if paths is None:
        if parent_manifest is None:
            raise PathError("nothing is tracked yet: name the checkpoint to commit, e.g. `mlvc commit model/ -m MSG`")
        return list(parent_manifest.roots)
    roots = []
    for p in paths:
        rel = repo.rel_path(p)
        if not os.path.exists(repo.abs_path(rel)):
            raise PathError(f"{p} does not exist")
        roots.append(rel)
    return sorted(set(roots))


def _buffers(obj: Any) -> list[NamedBuffer]:
    """A state_dict (torch tensors or numpy arrays, nested dicts flattened with '.') or an nn.Module."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, Mapping):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise FormatError("<object>",
                          f"cannot commit a {type(obj).__name__}: pass a state_dict, an nn.Module or a path")
    out: list[NamedBuffer] = []

    def walk(d: Mapping, prefix: str) -> None:
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, Mapping):
                walk(v, name + ".")
            else:
                out.append(_buffer(name, v))

    walk(obj, "")
    return out


def _buffer(name: str, v: Any) -> NamedBuffer:
    import numpy as np

    from ..dtypes import from_numpy, from_torch

    if type(v).__module__.startswith("torch"):
        from ..formats.torchfile import tensor_bytes

        return NamedBuffer(name, from_torch(v.dtype), list(v.shape), tensor_bytes(v))
    if isinstance(v, np.ndarray) or np.isscalar(v) and isinstance(v, np.generic):
        a = np.asarray(v)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        a = np.asarray(a, order="C")  # not ascontiguousarray: it turns a 0-d array into shape (1,)
        try:
            dtype = from_numpy(a.dtype)
        except TypeError as e:
            raise FormatError(name, str(e)) from None
        return NamedBuffer(name, dtype, list(a.shape), a.reshape(-1).view(np.uint8).data)
    raise FormatError(name, f"is a {type(v).__name__}, not a tensor or array; put plain values in metadata=")


def _code_revision(root: str) -> dict[str, Any]:
    """The git commit of the code around the repository, when it sits in a git work tree."""
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_revision": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
