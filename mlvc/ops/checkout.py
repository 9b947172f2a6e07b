"""checkout and switch: write a commit's files into the working tree (or another folder) and move HEAD."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DirtyWorkingCheckpointError, MlvcError, PathError, RefError
from ..objects import FileEntry, Manifest
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS, check_name
from ..snapshot import file_hash
from ..statcache import StatCache
from .status import working_entries
from .worktree import StagedFiles, safe_target

if TYPE_CHECKING:
    from ..repo import Repo

T = TypeVar("T")


@dataclass
class CheckoutResult:
    commit: str
    target: str  # the folder written into
    head: str | None  # the branch HEAD is now on, "(detached)" or None when HEAD did not move
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_written: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def checkout(repo: Repo, rev: str, output: str | None = None, force: bool = False,
             progress: Progress = NULL, tensors: Iterable[str] | str | None = None):
    """Check out a whole commit (a CheckoutResult), or with `tensors` (globs) restore just those tensors into
    the working checkpoint without moving HEAD (a RestoreResult, see ops/restore.py)."""
    if tensors is not None:
        from .restore import restore

        if output is not None:
            raise MlvcError("restoring single tensors writes into the working checkpoint; drop --output")
        return restore(repo, rev, tensors, progress=progress)
    cid = repo.resolve(rev)
    manifest = repo.read_manifest(repo.read_commit(cid).manifest)
    if output is not None:
        return _checkout_to(repo, cid, manifest, os.path.abspath(output), force, progress)
    branch = rev if repo.refs.resolve(HEADS + rev) == cid and not rev.startswith("refs/") else None
    return _checkout_in_place(repo, cid, manifest, branch, force, progress)


def switch(repo: Repo, branch: str, create: bool = False, start: str = "HEAD", force: bool = False,
           progress: Progress = NULL) -> CheckoutResult:
    check_name(branch)
    existing = repo.refs.resolve(HEADS + branch)
    if create and existing is not None:
        raise RefError(f"branch {branch!r} already exists; switch to it with `mlvc switch {branch}`")
    if not create and existing is None:
        raise RefError(f"no branch named {branch!r}; create it with `mlvc switch -c {branch}`, or use "
                       "`mlvc checkout REV` for a detached HEAD")
    cid = repo.resolve(start) if create else existing
    manifest = repo.read_manifest(repo.read_commit(cid).manifest)
    return _checkout_in_place(repo, cid, manifest, branch, force, progress, create=create)


def _checkout_to(repo: Repo, cid: str, manifest: Manifest, base: str, force: bool,
                 progress: Progress) -> CheckoutResult:
    _check_output(repo, base)
    os.makedirs(base, exist_ok=True)
    result = CheckoutResult(cid, base, None)
    todo: list[tuple[FileEntry, str]] = []
    conflicts = []
    for f in manifest.files:
        target = safe_target(base, f.path)
        if os.path.isfile(target) and file_hash(target) == f.hash:
            result.unchanged.append(f.path)
        elif os.path.exists(target) and not force:
            conflicts.append(os.path.join(base, f.path))
        else:
            todo.append((f, target))
    if conflicts:
        raise DirtyWorkingCheckpointError(conflicts)
    with StagedFiles() as staged:  # all the files, or (a bad object) none of them
        _write_all(repo, staged, todo, result, progress)
        staged.commit()
    return result


def _check_output(repo: Repo, base: str) -> None:
    """Refuse an output folder inside .mlvc/ (symlinks followed): a checkpoint written there could overwrite
    the repository's own objects, refs or settings. The one exception is mlvc's scratch folder .mlvc/tmp/,
    where `mlvc eval run` checks commits out for its evaluators (and removes them afterwards)."""
    real_dir, real_base = os.path.realpath(repo.dir), os.path.realpath(base)
    scratch = os.path.join(real_dir, "tmp")
    if os.path.commonpath([real_dir, real_base]) == real_dir and (
            real_base == scratch or os.path.commonpath([scratch, real_base]) != scratch):
        raise PathError(f"refusing to check out into {base}: it is inside the repository's own folder "
                        f"{repo.dir}, which mlvc manages itself; pass an --output folder outside .mlvc/ "
                        "(or check out in place, without --output)")


def _checkout_in_place(repo: Repo, cid: str, manifest: Manifest, branch: str | None, force: bool,
                       progress: Progress, create: bool = False) -> CheckoutResult:
    head = repo.head()
    head_manifest = repo.read_manifest(repo.read_commit(head).manifest) if head else None
    plan = plan_worktree(repo, head_manifest, manifest, force, progress)
    result = CheckoutResult(cid, repo.root, branch or "(detached)")
    old_desc = repo.head_branch() or (head[:12] if head else "nothing")
    message = f"checkout: moving from {old_desc} to {branch or cid[:12]}"

    def move_refs() -> None:
        # HEAD moves by compare-and-swap from the commit it was planned from: if another process moved
        # it (or the branch it follows) in the meantime, RefConflictError and nothing changed.
        if create:
            repo.refs.add_if_new(HEADS + branch, cid, who=repo.author(), message=f"branch: created at {cid[:12]}")
        try:
            if branch:
                repo.refs.set_symbolic(HEAD, HEADS + branch, head, who=repo.author(), message=message)
            else:
                repo.refs.set_if_equals(HEAD, head, cid, who=repo.author(), message=message)
        except BaseException:
            if create:  # undo the branch this switch created
                with contextlib.suppress(MlvcError, OSError):
                    repo.refs.remove_if_equals(HEADS + branch, cid, who=repo.author(),
                                               message="branch: deleted (the switch to it failed)")
            raise

    apply_worktree(repo, plan, result, progress, move_refs)
    return result


@dataclass
class WorktreePlan:
    """What bringing the working checkpoint from HEAD's tree to another tree writes and removes."""

    todo: list[tuple[FileEntry, str]]
    remove: list[str]
    unchanged: list[str]
    cache: StatCache


def plan_worktree(repo: Repo, head_manifest: Manifest | None, manifest: Manifest, force: bool,
                  progress: Progress = NULL, only: set[str] | None = None) -> WorktreePlan:
    """Check that nothing uncommitted would be lost (DirtyWorkingCheckpointError unless `force`) and list the
    files to write and remove. With `only`, just those paths are considered (revert and merge)."""
    committed = {f.path: f for f in head_manifest.files} if head_manifest else {}
    target = {f.path: f for f in manifest.files}
    roots = sorted(set(head_manifest.roots if head_manifest else []) | set(manifest.roots))
    cache = StatCache(repo.dir)
    current = working_entries(repo, head_manifest, roots, cache, progress)
    # What would be lost: changes to committed files, and untracked files the target would overwrite.
    conflicts = [p for p, e in current.items() if p in committed and e.hash != committed[p].hash]
    conflicts += [p for p, e in current.items() if p not in committed and p in target and e.hash != target[p].hash]
    if only is not None:
        conflicts = [p for p in conflicts if p in only]
    if conflicts and not force:
        cache.save()
        raise DirtyWorkingCheckpointError(sorted(conflicts))
    for path in target:
        safe_target(repo.root, path)
    todo, unchanged = [], []
    for path, f in target.items():
        if only is not None and path not in only:
            continue
        if path in current and current[path].hash == f.hash:
            unchanged.append(path)
        else:
            todo.append((f, repo.abs_path(path)))
    remove = [p for p in committed if p not in target and (only is None or p in only)]
    return WorktreePlan(todo, remove, unchanged, cache)


def apply_worktree(repo: Repo, plan: WorktreePlan, result: CheckoutResult, progress: Progress = NULL,
                   move_ref: Callable[[], T] | None = None) -> T | None:
    """Carry out a plan all or nothing, and return what `move_ref` returned. Three phases:
    1. write and verify every new file into a temp file beside its target (a bad object stops here);
    2. `move_ref()`: move HEAD or the branch by compare-and-swap (a ref that moved stops here);
    3. rename the temp files into place, then remove the files the new tree lacks.
    Stopped in phase 1 or 2, every temp file is removed: working files and refs are as they were."""
    with StagedFiles() as staged:
        _write_all(repo, staged, plan.todo, result, progress)
        moved = move_ref() if move_ref is not None else None
        staged.commit()
    result.unchanged.extend(plan.unchanged)
    for f, full in plan.todo:
        plan.cache.record(f.path, full, f.hash)
    for path in plan.remove:
        if os.path.isfile(repo.abs_path(path)):
            os.unlink(repo.abs_path(path))
            plan.cache.forget(path)
            result.removed.append(path)
    plan.cache.save()
    return moved


def _write_all(repo: Repo, staged: StagedFiles, todo: list[tuple[FileEntry, str]], result: CheckoutResult,
               progress: Progress) -> None:
    """Phase 1: stage every file (written, fsynced and verified, not yet renamed into place)."""
    progress.start("checkout", sum(f.size for f, _ in todo))
    with repo.pipeline(progress=progress) as pipe:
        for f, path in todo:
            staged.write(pipe, f, path)
            result.written.append(f.path)
            result.bytes_written += f.size
    progress.finish()
