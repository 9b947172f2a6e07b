"""status: how the working checkpoint differs from HEAD, file by file and tensor by tensor, and what the next
commit without paths would record (docs/tracking.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..bundles import tensor_hashes
from ..objects import FileEntry
from ..progress import NULL, Progress
from ..statcache import StatCache
from .workfiles import WorkState, tracked_set, working_entries
from .worktree import recover

if TYPE_CHECKING:
    from ..repo import Repo
    from ..store import ObjectStore

UNCHANGED, MODIFIED, ADDED, DELETED = "unchanged", "modified", "added", "deleted"
# Tracked paths whose working file is not HEAD's version, with nothing to commit: committed from memory and not
# checked out (no file), or an older committed copy still on disk (the newer one was committed from memory).
NOT_CHECKED_OUT, STALE = "not_checked_out", "stale"
# Untracked by `mlvc rm` (the next commit records it): the file is gone, or kept on disk (--cached).
REMOVED, UNTRACKED = "removed", "untracked"
# The states in which the next commit records nothing for the file.
AT_HEAD = (UNCHANGED, NOT_CHECKED_OUT, STALE)


@dataclass
class FileStatus:
    path: str
    state: str
    tensors_changed: list[str] = field(default_factory=list)
    tensors_added: list[str] = field(default_factory=list)
    tensors_removed: list[str] = field(default_factory=list)
    # why the working file does not read as a checkpoint of its kind (cut short, another file in its place): its
    # tensors are not compared; None when it reads
    unreadable: str | None = None


@dataclass
class Status:
    branch: str | None
    head: str | None
    roots: list[str]
    files: list[FileStatus]

    @property
    def clean(self) -> bool:
        """True when a commit without paths would record nothing (files committed from memory and not
        checked out count as clean)."""
        return all(f.state in AT_HEAD for f in self.files)

    @property
    def changed(self) -> list[FileStatus]:
        """The files a commit without paths would record: modified, added, deleted, removed, untracked."""
        return [f for f in self.files if f.state not in AT_HEAD]

    def in_state(self, *states: str) -> list[FileStatus]:
        return [f for f in self.files if f.state in states]

    def to_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "head": self.head, "roots": self.roots, "clean": self.clean,
                "files": [asdict(f) for f in self.files]}


def compare_entries(store: ObjectStore, old: FileEntry, new: FileEntry) -> FileStatus:
    """`old` as read without its small tensors' hashes (Repo.read_manifest, resolve=False): they are read here
    only for a file that changed, the one case that compares tensors, and compared as columns (a file of
    100,000 small tensors builds no entry per tensor on either side)."""
    if old.hash == new.hash:
        return FileStatus(old.path, UNCHANGED)
    a, b = _by_name(store, old), _by_name(store, new)
    changed = [n for n in a if n in b and a[n] != b[n]]
    return FileStatus(old.path, MODIFIED, changed, [n for n in b if n not in a], [n for n in a if n not in b])


def _by_name(store: ObjectStore, f: FileEntry) -> dict[str, tuple[str, str, list[int]]]:
    """Each tensor's (hash, dtype, shape) by name."""
    names, dtypes, shapes, _sizes = f.columns()
    return dict(zip(names, zip(tensor_hashes(store, f), dtypes, shapes, strict=True), strict=True))


def status(repo: Repo, progress: Progress = NULL) -> Status:
    """Every tracked file and every new file under a tracked folder, with its state against HEAD: UNCHANGED,
    MODIFIED, ADDED, DELETED (tracked, missing from the work tree: a commit without paths refuses it),
    NOT_CHECKED_OUT / STALE (committed from memory; nothing to commit), REMOVED / UNTRACKED (`mlvc rm`)."""
    recover(repo)
    head = repo.head()
    manifest = repo.read_manifest(repo.read_commit(head).manifest, resolve=False) if head else None
    if manifest is None:
        return Status(repo.head_branch(), head, [], [])
    plan = tracked_set(repo, manifest, None, WorkState.load(repo))
    cache = StatCache(repo.dir)
    unreadable: dict[str, str] = {}
    current = working_entries(repo, manifest, plan.roots, cache, progress, files=plan.read, unreadable=unreadable)
    cache.save()
    committed = {f.path: f for f in manifest.files}
    files: list[FileStatus] = []
    for p, e in current.items():
        if p in unreadable:
            files.append(FileStatus(p, MODIFIED if p in committed else ADDED, unreadable=unreadable[p]))
        else:
            files.append(compare_entries(repo.store, committed[p], e) if p in committed
                         else FileStatus(p, ADDED, tensors_added=[t.name for t in e.tensors]))
    untracked = set(plan.untracked)
    for state, paths in ((NOT_CHECKED_OUT, plan.not_checked_out), (STALE, plan.stale), (DELETED, plan.missing),
                         (REMOVED, [p for p in plan.removed if p not in untracked]), (UNTRACKED, plan.untracked)):
        for p in paths:
            gone = [t.name for t in committed[p].tensors] if state in (DELETED, REMOVED, UNTRACKED) else []
            files.append(FileStatus(p, state, tensors_removed=gone))
    listed = {f.path for f in files}
    files += [FileStatus(p, UNCHANGED) for p in plan.carried if p not in listed]  # outside every root
    return Status(repo.head_branch(), head, plan.roots, sorted(files, key=lambda f: f.path))
