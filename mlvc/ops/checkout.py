"""checkout and switch: write a commit's files into the working tree (or another folder) and move HEAD."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DirtyWorkingCheckpointError, MlvcError, PathError, RefError
from ..objects import Manifest
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS, check_name
from ..snapshot import file_hash
from ..statcache import StatCache
from .worktree import Applied, Write, plan_changes, recover, safe_target, update_worktree

if TYPE_CHECKING:
    from ..repo import Repo

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
        if output is not None:
            raise MlvcError("restoring single tensors writes into the working checkpoint; drop --output")
        # ops/restore.py, through the Repo: verbs never import verbs
        return repo.restore(rev, tensors, progress=progress)
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
    cid = repo.resolve(start) if existing is None else existing  # `create` or an existing branch, as checked above
    manifest = repo.read_manifest(repo.read_commit(cid).manifest)
    return _checkout_in_place(repo, cid, manifest, branch, force, progress, create=create)


def _checkout_to(repo: Repo, cid: str, manifest: Manifest, base: str, force: bool,
                 progress: Progress) -> CheckoutResult:
    _check_output(repo, base)
    os.makedirs(base, exist_ok=True)
    result = CheckoutResult(cid, base, None)
    writes: list[Write] = []
    conflicts = []
    for f in manifest.files:
        target = safe_target(base, f.path)
        if os.path.isfile(target) and not os.path.islink(target) and file_hash(target) == f.hash:
            result.unchanged.append(f.path)
        elif os.path.lexists(target) and not force:
            conflicts.append(os.path.join(base, f.path))
        else:
            writes.append(Write.of(f))
    if conflicts:
        raise DirtyWorkingCheckpointError(conflicts)
    _fill(result, update_worktree(repo, writes, [], base=base, unchanged=result.unchanged, progress=progress))
    return result


def _fill(result: CheckoutResult, applied: Applied) -> None:
    result.written, result.removed, result.unchanged = applied.written, applied.removed, applied.unchanged
    result.bytes_written = applied.bytes_written


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
    new_ref = None  # the branch that this switch creates
    if create:
        assert branch is not None, "only a branch can be created"
        new_ref = HEADS + branch
    recover(repo)
    head = repo.head()
    head_manifest = repo.read_manifest(repo.read_commit(head).manifest) if head else None
    cache = StatCache(repo.dir)
    writes, removes, unchanged = plan_changes(repo, head_manifest, manifest, force, progress, cache=cache)
    result = CheckoutResult(cid, repo.root, branch or "(detached)")
    old_desc = repo.head_branch() or (head[:12] if head else "nothing")
    message = f"checkout: moving from {old_desc} to {branch or cid[:12]}"

    def move_refs() -> None:
        # HEAD moves by compare-and-swap from the commit it was planned from: if another process moved
        # it (or the branch it follows) in the meantime, RefConflictError and nothing changed.
        if new_ref is not None:
            repo.refs.add_if_new(new_ref, cid, who=repo.author(), message=f"branch: created at {cid[:12]}")
        try:
            if branch:
                repo.refs.set_symbolic(HEAD, HEADS + branch, head, who=repo.author(), message=message)
            else:
                repo.refs.set_if_equals(HEAD, head, cid, who=repo.author(), message=message)
        except BaseException:
            if new_ref is not None:  # undo the branch this switch created
                with contextlib.suppress(MlvcError, OSError):
                    repo.refs.remove_if_equals(new_ref, cid, who=repo.author(),
                                               message="branch: deleted (the switch to it failed)")
            raise

    _fill(result, update_worktree(repo, writes, removes, move_ref=move_refs, unchanged=unchanged,
                                  expect_head=(f"ref: {HEADS}{branch}" if branch else cid, cid),
                                  creates=(new_ref, cid) if new_ref is not None else None,
                                  progress=progress, cache=cache))
    return result
