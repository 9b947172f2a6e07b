"""status: how the working checkpoint differs from HEAD, file by file and tensor by tensor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..objects import FileEntry
from ..progress import NULL, Progress
from ..statcache import StatCache
from .workfiles import working_entries
from .worktree import recover

if TYPE_CHECKING:
    from ..repo import Repo

UNCHANGED, MODIFIED, ADDED, DELETED = "unchanged", "modified", "added", "deleted"


@dataclass
class FileStatus:
    path: str
    state: str
    tensors_changed: list[str] = field(default_factory=list)
    tensors_added: list[str] = field(default_factory=list)
    tensors_removed: list[str] = field(default_factory=list)


@dataclass
class Status:
    branch: str | None
    head: str | None
    roots: list[str]
    files: list[FileStatus]

    @property
    def clean(self) -> bool:
        return all(f.state == UNCHANGED for f in self.files)

    @property
    def changed(self) -> list[FileStatus]:
        return [f for f in self.files if f.state != UNCHANGED]

    def to_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "head": self.head, "roots": self.roots, "clean": self.clean,
                "files": [asdict(f) for f in self.files]}


def compare_entries(old: FileEntry, new: FileEntry) -> FileStatus:
    if old.hash == new.hash:
        return FileStatus(old.path, UNCHANGED)
    a = {t.name: t for t in old.tensors}
    b = {t.name: t for t in new.tensors}
    changed = [n for n in a if n in b and (a[n].hash, a[n].dtype, a[n].shape) != (b[n].hash, b[n].dtype, b[n].shape)]
    return FileStatus(old.path, MODIFIED, changed, [n for n in b if n not in a], [n for n in a if n not in b])


def status(repo: Repo, progress: Progress = NULL) -> Status:
    recover(repo)
    head = repo.head()
    manifest = repo.read_manifest(repo.read_commit(head).manifest) if head else None
    roots = manifest.roots if manifest else []
    cache = StatCache(repo.dir)
    current = working_entries(repo, manifest, roots, cache, progress)
    cache.save()
    files: list[FileStatus] = []
    committed = {f.path: f for f in manifest.files} if manifest else {}
    for path in sorted(set(committed) | set(current)):
        if path not in current:
            files.append(FileStatus(path, DELETED, tensors_removed=[t.name for t in committed[path].tensors]))
        elif path not in committed:
            files.append(FileStatus(path, ADDED, tensors_added=[t.name for t in current[path].tensors]))
        else:
            files.append(compare_entries(committed[path], current[path]))
    return Status(repo.head_branch(), head, roots, files)
