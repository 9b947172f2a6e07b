"""reset and reflog: move the current branch to any commit, and the record that makes every move undoable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DirtyWorkingCheckpointError
from ..progress import NULL, Progress
from ..refs import ReflogEntry
from ..revparse import reflog_ref
from .worktree import head_after, move_head, plan_changes, recover, update_worktree

if TYPE_CHECKING:
    from ..repo import Repo


@dataclass
class ResetResult:
    branch: str | None  # the branch that moved, None when HEAD is detached
    old: str | None
    new: str
    hard: bool
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reset(repo: Repo, rev: str, hard: bool = False, force: bool = False, progress: Progress = NULL) -> ResetResult:
    """Point the current branch (or detached HEAD) at `rev`. Without `hard` the working checkpoint is left
    as it is (it then shows as changed against the new HEAD); with `hard` it is rewritten to `rev`, refusing
    when that would lose uncommitted changes unless `force` (a file that already equals `rev`'s loses
    nothing, whatever HEAD has). The old position stays in the reflog:
    `mlvc reset HEAD@{1}` goes back."""
    new = repo.resolve(rev)
    old = repo.head()
    result = ResetResult(repo.head_branch(), old, new, hard)
    message = f"reset: moving to {rev}"
    if not hard:
        move_head(repo, old, new, message)
        return result
    recover(repo)
    head_manifest = repo.read_manifest(repo.read_commit(old).manifest) if old else None
    target = repo.read_manifest(repo.read_commit(new).manifest)
    try:
        writes, removes, unchanged = plan_changes(repo, head_manifest, target, force, progress)
    except DirtyWorkingCheckpointError as e:
        # A working file that differs from HEAD but already equals the target is not "uncommitted changes":
        # `reset HEAD~1` then `reset --hard HEAD@{1}` loses nothing. Only the others refuse.
        writes, removes, unchanged = plan_changes(repo, head_manifest, target, True, progress)
        lost = [p for p in e.paths if p not in set(unchanged)]
        if lost:
            raise DirtyWorkingCheckpointError(lost) from None
    applied = update_worktree(repo, writes, removes, move_ref=lambda: move_head(repo, old, new, message),
                              expect_head=head_after(repo, new), unchanged=unchanged, progress=progress)
    result.written, result.removed = applied.written, applied.removed
    return result


@dataclass
class ReflogLine:
    selector: str  # "HEAD@{0}", "main@{3}", usable as a revision
    entry: ReflogEntry

    def to_json(self) -> dict[str, Any]:
        return {"selector": self.selector, **asdict(self.entry)}


def reflog(repo: Repo, ref: str = "HEAD", n: int | None = None) -> list[ReflogLine]:
    """The moves of a ref (HEAD, a branch or tag short name, or refs/...), newest first."""
    full = reflog_ref(repo, ref)
    short = "HEAD" if full == "HEAD" else ref
    entries = repo.refs.reflog(full)
    if n is not None:
        entries = entries[:n]
    return [ReflogLine(f"{short}@{{{i}}}", e) for i, e in enumerate(entries)]
