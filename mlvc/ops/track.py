"""track: the tracked set of paths; untracking (`mlvc rm`), which the next commit records (docs/tracking.md).

mlvc has no index: a commit's tree is the parent's, with the named paths read again. So `rm` changes no
commit; it records the untracking in the work-tree state (`.mlvc/worktree.json`, "removals"), which the next
commit applies (the path leaves the tree and the tracked paths) and then clears. Without `cached`, the tracked
files are also removed from the work tree (through the work-tree transaction), refusing files with
uncommitted changes unless `force`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DirtyWorkingCheckpointError, MlvcError, PathError
from ..objects import Manifest
from ..statcache import StatCache
from .workfiles import WorkState, edit_state, ignore_spec, is_ignored, under, working_entries
from .worktree import recover, update_worktree

if TYPE_CHECKING:
    from ..repo import Repo


@dataclass
class RmResult:
    untracked: list[str] = field(default_factory=list)  # the paths given, root-relative, now pending removal
    files: list[str] = field(default_factory=list)  # the tracked files the next commit drops
    deleted: list[str] = field(default_factory=list)  # of those, the ones removed from the work tree now

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rm(repo: Repo, paths: Iterable[str] | str, cached: bool = False, recursive: bool = False,
       force: bool = False) -> RmResult:
    """Untrack `paths` (files, or folders with `recursive`): the next commit records that they are gone.
    Without `cached` their tracked files are also deleted from the work tree (refused, changing nothing, when
    one has uncommitted changes, unless `force`); with `cached` the files stay on disk, untracked. A file
    inside a tracked folder would be found again by the next commit's walk of that folder, so `cached` is
    refused for one that `.mlvcignore` does not match (add a pattern first)."""
    given = [paths] if isinstance(paths, str) else list(paths)
    if not given:
        raise MlvcError("name the paths to untrack, e.g. `mlvc rm model/optimizer.pt`")
    recover(repo)
    head = repo.head()
    if head is None:
        raise PathError("nothing is tracked yet: there is no commit")
    manifest = repo.read_manifest(repo.read_commit(head).manifest, resolve=False)
    state = WorkState.load(repo)
    spec = ignore_spec(repo)
    result = RmResult()
    for p in given:
        rel = repo.rel_path(p)
        files = [f.path for f in manifest.files if under(f.path, rel) and not state.excluded(f.path)]
        roots = [r for r in manifest.roots if under(r, rel)]
        if not files and not roots:
            raise PathError(f"{p} is not tracked (`mlvc status` lists the tracked files)")
        if not recursive and (roots and roots != [rel] or any(f != rel for f in files)):
            raise PathError(f"{p} is a folder: pass -r to untrack everything in it")
        remaining = [r for r in manifest.roots if not under(r, rel)]
        if cached and any(under(rel, r) for r in remaining):
            visible = [f for f in files if not is_ignored(spec, f) and os.path.isfile(repo.abs_path(f))]
            if visible:
                enclosing = next(r for r in remaining if under(rel, r))
                raise PathError(f"{visible[0]} lies in the tracked folder {enclosing}, whose next commit would "
                                f"track it again: add it to .mlvcignore, then `mlvc rm --cached {p}`; or delete "
                                f"it with `mlvc rm {p}`")
        result.untracked.append(rel)
        result.files += files
    result.files = sorted(set(result.files))
    if not cached:
        _delete(repo, manifest, result, force)
    with edit_state(repo) as st:
        st.removals = sorted(set(st.removals) | set(result.untracked))
    return result


def _delete(repo: Repo, manifest: Manifest, result: RmResult, force: bool) -> None:
    """Remove the tracked files from the work tree, all or nothing, through the work-tree transaction."""
    cache = StatCache(repo.dir)
    on_disk = [f for f in result.files if os.path.isfile(repo.abs_path(f))]
    current = working_entries(repo, manifest, [], cache, files=on_disk)
    committed = {f.path: f for f in manifest.files}
    state = WorkState.load(repo)
    dirty = [p for p, e in current.items() if e.hash != committed[p].hash and not state.stale(repo, p, cache)]
    cache.save()
    if dirty and not force:
        raise DirtyWorkingCheckpointError(sorted(dirty))
    result.deleted = sorted(current)
    if result.deleted:
        update_worktree(repo, [], result.deleted, cache=cache)
