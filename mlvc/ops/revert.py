"""revert: a new commit that undoes what one earlier commit did, tensor by tensor, keeping everything since.

For each tensor the reverted commit changed (added, removed, changed in value, dtype or shape) the new commit
takes the value it had in that commit's parent, provided HEAD still holds the value the reverted commit gave
it. A tensor that was changed again later is a conflict: every conflict is reported and nothing is written
(no object, no ref, no working file). Files that are not safetensors are reverted whole, on the same rule.
Tensors and files are matched as diff and merge match them (treebuild.changes / pair_keys): a tensor (or
file) that only moved since, unchanged (a re-sharded checkpoint, a renamed file), is reverted where it is now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, MlvcError, NothingToCommitError
from ..objects import Commit
from ..progress import NULL, Progress
from ..util import utc_now
from .treebuild import (
    Conflict,
    build_manifest,
    changed_paths,
    changes,
    describe,
    moves,
    relocate,
    same_value,
    tensor_level,
    values,
)
from .worktree import check_clean, head_after, move_head, plan_changes, recover, update_worktree

if TYPE_CHECKING:
    from ..repo import Repo


@dataclass
class RevertResult:
    commit: Commit
    reverted: str
    branch: str | None
    restored: list[str] = field(default_factory=list)  # the tensors (or files) given back their old value
    written: list[str] = field(default_factory=list)  # working files rewritten

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit.to_json(), "reverted": self.reverted, "branch": self.branch,
                "restored": self.restored, "written": self.written}


def _what(before, after) -> str:
    if before is None:
        return "added"
    if after is None:
        return "removed"
    return "changed"


def revert(repo: Repo, rev: str, mainline: int | None = None, message: str | None = None,
           progress: Progress = NULL) -> RevertResult:
    with repo.writing():  # gc keeps what this writes until a ref names it
        return _revert(repo, rev=rev, mainline=mainline, message=message, progress=progress)


def _revert(repo: Repo, rev: str, mainline: int | None = None, message: str | None = None,
           progress: Progress = NULL) -> RevertResult:
    recover(repo)
    head = repo.head()
    if head is None:
        raise MlvcError("nothing is committed yet: there is nothing to revert")
    cid = repo.resolve(rev)
    c = repo.read_commit(cid)
    if not c.parents:
        raise MlvcError(f"{cid[:12]} is the first commit: reverting it would leave nothing; use `mlvc reset` "
                        "or commit an empty checkpoint instead")
    if len(c.parents) > 1 and mainline is None:
        raise MlvcError(f"{cid[:12]} is a merge of {len(c.parents)} parents: pass --mainline N to say which "
                        "parent's side to keep (1 is the branch that was merged into)")
    n = mainline or 1
    if not 1 <= n <= len(c.parents):
        raise MlvcError(f"--mainline {n}: {cid[:12]} has {len(c.parents)} parent(s)")
    parent = c.parents[n - 1]
    p_manifest = repo.read_manifest(repo.read_commit(parent).manifest)
    c_manifest = repo.read_manifest(c.manifest)
    h_manifest = repo.read_manifest(repo.read_commit(head).manifest)
    todo = changes(p_manifest, c_manifest)
    if not todo:
        raise NothingToCommitError(f"{cid[:12]} changed no tensor or file against its parent: nothing to revert")
    now = values(h_manifest)
    h_files = {f.path: f for f in h_manifest.files}
    moved_since = moves(c_manifest, h_manifest)  # what only moved (unchanged) between the commit and HEAD
    targets = set(todo) - set(moved_since)
    conflicts = []
    want = {}
    for key, (before, after) in todo.items():
        where = key
        if key in moved_since and after is not None and moved_since[key] not in targets:
            where = moved_since[key]  # moved since, unchanged: revert it where it is now
            targets.add(where)
        current = h_files.get(where[0]) if where[1] is None else now.get(where)
        if where[1] is not None and not tensor_level(h_files.get(where[0])):
            conflicts.append(Conflict(key, "its file is no longer safetensors in HEAD"))
        elif not same_value(where, current, after):
            later = "removed" if current is None else ("re-added" if after is None else "changed again")
            conflicts.append(Conflict(key, f"{_what(before, after)} by {cid[:12]}, then {later} later"))
        else:
            want[where] = relocate(where, before) if before is not None else None
    if conflicts:
        raise ConflictError(f"cannot revert {cid[:12]}", conflicts,
                            "resolve by hand: check out the old values with `mlvc checkout "
                            f"{parent[:12]} -- NAME...` and commit")
    paths = {key[0] for key in want}
    check_clean(repo, h_manifest, paths)
    progress.start("revert")  # the bytes its pipeline reads and writes
    with repo.pipeline(progress=progress) as pipe:
        new_manifest = build_manifest(pipe, h_manifest, want, [p_manifest, c_manifest])
        manifest_id = repo.write_manifest(new_manifest, h_manifest, pipe.stats)
    title = c.message.splitlines()[0] if c.message else cid[:12]
    msg = message or f'Revert "{title}"\n\nThis reverts commit {cid}.'
    meta = {"revert": {"commit": cid, "parent": parent}}
    new = Commit(manifest_id, [head], repo.author(), utc_now(), msg, meta)
    repo.write_commit(new)
    repo.store.flush()
    writes, removes, unchanged = plan_changes(repo, h_manifest, new_manifest, False, progress,
                                              only=changed_paths(h_manifest, new_manifest))
    applied = update_worktree(repo, writes, removes, move_ref=lambda: move_head(repo, head, new.id, f"revert: {title}"),
                              expect_head=head_after(repo, new.id), unchanged=unchanged, progress=progress)
    return RevertResult(new, cid, applied.moved, [describe(k) for k in want], applied.written + applied.removed)
