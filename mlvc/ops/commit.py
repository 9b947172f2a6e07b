"""commit: a new tree on top of the parent's: the named paths (files, folders, or tensors from Python) as they
are now, every other tracked path carried over unchanged (docs/tracking.md)."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import lockfile
from ..bundles import resolve_bundles, resolve_file
from ..errors import FormatError, MissingTrackedFilesError, MlvcError, NothingToCommitError, PathError
from ..objects import Commit, FileEntry, Manifest
from ..progress import NULL, Progress
from ..refs import HEADS, check_name
from ..snapshot import History, NamedBuffer, snapshot_buffers, snapshot_path
from ..statcache import StatCache
from ..util import canonical_json, utc_now
from .workfiles import (
    WORKTREE_LOCK,
    TrackedSet,
    WorkState,
    disk_hash,
    edit_state,
    ignore_spec,
    is_ignored,
    tracked_set,
    under,
)
from .worktree import move_head, recover

if TYPE_CHECKING:
    from ..repo import Repo

DEFAULT_STATE_DICT_PATH = "model.safetensors"


@dataclass
class CommitResult:
    commit: Commit
    branch: str | None
    files: int  # files in the new tree (read now or carried over)
    tensors: int
    raw_bytes: int  # logical size of what was read (the files under the named paths, or the state_dict)
    new_bytes: int  # bytes added to the store (after dedupe and compression)
    chunks: int
    new_chunks: int
    inexact: list[str]  # torch files that will check out tensor-identical but not byte-identical
    removed: list[str] = field(default_factory=list)  # tracked files the new tree no longer holds
    carried: int = 0  # files carried over from the parent unchanged, not read

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit.to_json(), "branch": self.branch, "files": self.files, "tensors": self.tensors,
                "raw_bytes": self.raw_bytes, "new_bytes": self.new_bytes, "chunks": self.chunks,
                "new_chunks": self.new_chunks, "inexact": self.inexact, "removed": self.removed,
                "carried": self.carried}


def commit(repo: Repo, obj: Any = None, message: str = "", metadata: dict | None = None, *,
           paths: Iterable[str] | None = None, path: str | None = None, as_blob: Iterable[str] = (),
           allow_empty: bool = False, progress: Progress = NULL, branch: str | None = None) -> CommitResult:
    """Commit on top of HEAD and move the current branch (or detached HEAD) to it; a CommitResult.

    `obj` is a path (a file or folder), a state_dict, an nn.Module or a dict of numpy arrays (stored as a
    safetensors file at `path`, default model.safetensors, without writing it; the path is then marked as
    committed from memory, not checked out), or None: `paths`, or else every tracked path. Named paths are
    read as they are now (a tracked file gone from a named folder leaves the tree); every other tracked file
    is carried over unchanged; untracking is `mlvc rm` (docs/tracking.md). Without paths, a tracked file
    missing from the work tree is a MissingTrackedFilesError. `as_blob` globs name files stored as opaque
    bytes. NothingToCommitError when nothing changed, unless `allow_empty`.

    `branch` (other than the current one): commit onto that branch instead, by compare-and-swap of that ref
    alone, creating it at HEAD when it does not exist; HEAD, the work tree and its state are not touched.
    A commit without paths cannot go to another branch (it would read HEAD's work tree)."""
    with repo.writing():  # gc keeps what this writes until a ref names it
        return _commit(repo, obj, message, metadata, paths=paths, path=path, as_blob=as_blob,
                       allow_empty=allow_empty, branch=branch, progress=progress)


def _commit(repo: Repo, obj: Any, message: str, metadata: dict | None, *, paths: Iterable[str] | None,
            path: str | None, as_blob: Iterable[str], allow_empty: bool, branch: str | None,
            progress: Progress = NULL) -> CommitResult:
    if not message or not message.strip():
        raise MlvcError("a commit needs a message (-m MSG)")
    meta = dict(metadata or {})
    try:
        canonical_json(meta)
    except (TypeError, ValueError, RecursionError) as e:
        raise MlvcError(f"metadata must be JSON (strings, numbers, lists, dicts; no NaN; not nested hundreds "
                        f"of levels deep): {str(e)[:200]}") from None
    if obj is not None and paths is not None:
        raise MlvcError("give either an object to commit or paths, not both")
    if isinstance(obj, (str, os.PathLike)):
        paths, obj = [os.fspath(obj)], None
    if isinstance(paths, (str, os.PathLike)):
        paths = [os.fspath(paths)]
    recover(repo)  # an interrupted checkout is finished (or undone) before the work tree is read
    side = branch is not None and branch != repo.head_branch()  # onto another branch: HEAD stays
    tip = None
    if side:
        assert branch is not None
        check_name(branch)
        if obj is None and paths is None:
            raise MlvcError(f"name what to commit onto branch {branch!r} (a state_dict or paths): a commit of "
                            "every tracked path reads the work tree, which is HEAD's")
        tip = repo.refs.resolve(HEADS + branch)
    parent = tip if tip is not None else repo.head()  # a new branch starts at HEAD
    lineage = _lineage(repo, parent, repo.config.keyframe_interval if repo.config.skip_deltas else 2)
    parent_manifest = lineage[0] if lineage else None
    state = WorkState() if side else WorkState.load(repo)

    rel = None  # the path a state_dict is committed at
    if obj is not None:
        rel = repo.rel_path(path, repo.root) if path else DEFAULT_STATE_DICT_PATH
        _check_memory_path(rel, parent_manifest)
        plan = tracked_set(repo, parent_manifest, [rel], state, walk=False)
    else:
        named = None if paths is None else _named(repo, list(paths), parent_manifest)
        if named is None and parent_manifest is None:
            raise PathError("nothing is tracked yet: name the checkpoint to commit, e.g. `mlvc commit model/ -m MSG`")
        plan = tracked_set(repo, parent_manifest, named, state)
        if plan.missing:
            raise MissingTrackedFilesError(plan.missing)
        _check_named_have_files(plan, named, parent_manifest)
    for f in plan.carried.values():  # into the new tree as they are: their small tensors' hashes are needed
        resolve_file(repo.store, f)
    # Carried entries were chunked at the parent's chunk size; a manifest has one, so the new files use it too.
    chunk_size = parent_manifest.chunk_size if parent_manifest and plan.carried else repo.config.chunk_size

    cache = StatCache(repo.dir)
    new: list[FileEntry] = []
    with repo.pipeline(progress=progress, chunk_size=chunk_size) as pipe:
        if obj is not None:
            assert rel is not None
            buffers = _buffers(obj)
            pipe.remember = _fits_three(sum(len(b.data) for b in buffers), repo)
            progress.start("commit")
            new.append(snapshot_buffers(pipe, rel, buffers, history=_history(rel, lineage)))
        else:
            total = sum(os.path.getsize(repo.abs_path(r)) for r in plan.read)
            pipe.remember = _fits_three(total, repo)
            progress.start("commit", total)
            blob_globs = list(as_blob)
            for r in plan.read:
                blob = any(fnmatch.fnmatch(r, g) or fnmatch.fnmatch(os.path.basename(r), g) for g in blob_globs)
                seen = cache.stat_now(repo.abs_path(r))  # before hashing: a write meanwhile shows
                entry = snapshot_path(pipe, repo.abs_path(r), r, as_blob=blob,
                                      history=_history(r, lineage))
                new.append(entry)
                cache.record(r, repo.abs_path(r), entry.hash, seen)
        progress.finish()
        stats = pipe.stats
        files = sorted([*plan.carried.values(), *new], key=lambda f: f.path)
        if not files and parent is None:
            raise PathError("nothing to commit: no files")
        manifest = Manifest(plan.roots, files, chunk_size)
        manifest_id = repo.write_manifest(manifest, parent_manifest, stats)
    if parent is not None and not allow_empty and (manifest_id == repo.read_commit(parent).manifest
                                                   or _same_tree(repo, manifest, parent_manifest)):
        cache.save()
        raise NothingToCommitError("nothing to commit: the checkpoint is identical to "
                                   f"{'HEAD' if tip is None else branch} (pass --allow-empty to commit anyway)")
    meta.update({k: v for k, v in _code_revision(repo.root).items() if k not in meta})
    c = Commit(manifest_id, [parent] if parent else [], repo.author(), utc_now(), message, meta)
    repo.write_commit(c)
    repo.store.flush()  # every object durable before a ref points at it
    summary = f"commit{'' if parent else ' (initial)'}: {message.splitlines()[0]}"
    if side:
        assert branch is not None
        if tip is None:
            summary = f"commit (branch created at HEAD {parent[:12] if parent else 'nothing'}): " \
                      f"{message.splitlines()[0]}"
        repo.refs.set_if_equals(HEADS + branch, tip, c.id, who=repo.author(), message=summary)
        moved: str | None = branch
    else:
        older = parent_manifest.file(rel) if parent_manifest and rel is not None else None
        moved = _move_and_mark(repo, parent, c.id, summary, manifest, plan, state, rel, older, cache)
    cache.save()
    return CommitResult(c, moved, len(files), sum(f.tensor_count() for f in files), stats.raw_bytes,
                        stats.stored_bytes, stats.chunks, stats.new_chunks,
                        [f.path for f in new if f.kind == "torch" and not f.exact], sorted(plan.removed),
                        len(plan.carried))


def _move_and_mark(repo: Repo, parent: str | None, new_id: str, summary: str, manifest: Manifest,
                   plan: TrackedSet, loaded: WorkState, rel: str | None, older: FileEntry | None,
                   cache: StatCache) -> str | None:
    """Move HEAD's branch, keeping the work-tree state true, under the work-tree lock: a path committed from
    memory is marked before the move (a mark for a path HEAD's tree lacks is ignored), the removals this
    commit recorded and the marks of the files it read are cleared after it (left in place by a crash, they
    describe nothing that is not so)."""
    with lockfile.locked(os.path.join(repo.dir, WORKTREE_LOCK), "the work tree", wait=30.0):
        if rel is not None:
            with edit_state(repo, locked=True) as state:
                mark, value = _memory_mark(repo, rel, manifest.file(rel), older, state, cache)
                if mark:
                    state.unmaterialized[rel] = value
                else:
                    state.unmaterialized.pop(rel, None)
        branch = move_head(repo, parent, new_id, summary)
        in_tree = {f.path for f in manifest.files}
        with contextlib.suppress(OSError), edit_state(repo, locked=True) as state:  # the commit itself is done
            state.removals = [x for x in state.removals if x not in loaded.removals]
            for p in list(state.unmaterialized):
                if p not in in_tree or (p in plan.read and rel is None):
                    del state.unmaterialized[p]
    return branch


def _memory_mark(repo: Repo, rel: str, entry: FileEntry | None, older: FileEntry | None, state: WorkState,
                 cache: StatCache) -> tuple[bool, str | None]:
    """(mark it, the hash to record) for a path just committed from memory as `entry`, whose parent version
    was `older`: marked when nothing is on disk there (None) or when what is there is an older committed
    copy (its hash); not marked when the file on disk is the new content itself, or uncommitted work
    (status then shows it as modified)."""
    full = repo.abs_path(rel)
    if not os.path.isfile(full) or os.path.islink(full):
        return True, None
    h = disk_hash(repo, rel, cache)
    if h is None:
        return True, None
    if entry is not None and h == entry.hash:
        return False, None
    if h == state.unmaterialized.get(rel) or older is not None and h == older.hash:
        return True, h
    return False, None


def _fits_three(size: int, repo: Repo) -> bool:
    """Whether this commit's chunks are worth keeping in the store's delta-base cache for the next commit of
    this process: only when three versions fit (the new one, its parent and grandparent, the next commit's
    delta bases); a checkpoint that fits once but not three times would have the LRU evict its chunks just
    before the next commit reads them, and only cost memory."""
    return 3 * size <= repo.store.cache_bytes


def _lineage(repo: Repo, parent: str | None, depth: int) -> list[Manifest]:
    """The manifests of the first-parent ancestors from `parent` back, nearest first, `depth` of them (at least
    two): where a new commit's delta bases come from (the store picks skip-delta bases among them). Read
    without their small tensors' hashes: small tensors take no delta bases (Pipeline.holds), a new bundle's base
    is named by the parent's slots, and the parent's files carried into the new tree are read from their
    bundles when carried (`_commit`)."""
    out: list[Manifest] = []
    cid = parent
    while cid is not None and len(out) < max(depth, 2):
        c = repo.read_commit(cid)
        out.append(repo.read_manifest(c.manifest, resolve=False))
        cid = c.parents[0] if c.parents else None
    return out


def _same_tree(repo: Repo, manifest: Manifest, parent: Manifest | None) -> bool:
    """Whether a tree with another id than the parent's is still the parent's tree, written in another format
    (format 1 spells out what format 2 implies, format 3 lists bundled tensors as entries: the first unchanged
    commit after an upgrade is still "nothing to commit"). Only a tree whose every file has the parent's bytes
    (its whole-file hash) can be, and only such a tree is compared tensor by tensor, with both trees' small
    tensors read from their bundles (the new tree's as written: bundles.store_bundles)."""
    if parent is None or {f.path: f.hash for f in manifest.files} != {f.path: f.hash for f in parent.files}:
        return False
    return resolve_bundles(repo.store, manifest) == resolve_bundles(repo.store, parent)


def _history(rel: str, lineage: list[Manifest]) -> History:
    files = [m.file(rel) for m in lineage]
    return History(files[0] if files else None, files[1] if len(files) > 1 else None, ancestors=files)


def _named(repo: Repo, paths: list[str], parent: Manifest | None) -> list[str]:
    """The paths a user named, root-relative: each must exist in the work tree or be tracked (a tracked path
    gone from the work tree records its removal); a folder `.mlvcignore` matches is refused."""
    spec = ignore_spec(repo)
    tracked = [f.path for f in parent.files] if parent else []
    roots = parent.roots if parent else []
    out = []
    for p in paths:
        rel = repo.rel_path(p)
        full = repo.abs_path(rel)
        if not os.path.lexists(full) and rel not in roots and not any(under(f, rel) for f in tracked):
            raise PathError(f"{p} does not exist")
        if os.path.isdir(full) and is_ignored(spec, rel, is_dir=True):
            raise PathError(f"{p} is a folder that .mlvcignore ignores; name the files in it to commit them, "
                            "or change .mlvcignore")
        out.append(rel)
    return sorted(set(out))


def _check_named_have_files(plan: TrackedSet, named: list[str] | None, parent: Manifest | None) -> None:
    tracked = [f.path for f in parent.files] if parent else []
    for n in named or []:
        if not any(under(p, n) for p in [*plan.read, *tracked]):
            raise PathError(f"nothing to commit: no files under {n} (empty, or every file in it is ignored by "
                            ".mlvcignore)")


def _check_memory_path(rel: str, parent: Manifest | None) -> None:
    """A state_dict becomes one file: refuse a path that names a tracked folder or passes through a tracked
    file (the tree cannot hold both)."""
    for f in parent.files if parent else []:
        if under(f.path, rel) and f.path != rel:
            raise PathError(f"path={rel!r} is a tracked folder (it holds {f.path}); give a file path for the "
                            "state_dict, such as model.safetensors")
        if under(rel, f.path) and f.path != rel:
            raise PathError(f"path={rel!r} lies under the tracked file {f.path}; give another file path")


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
