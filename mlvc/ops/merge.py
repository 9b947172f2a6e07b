"""merge: combine another branch into the current one, tensor by tensor, against their merge base.

For each tensor (safetensors files) or file (any other kind):
- changed on one side only: that side's value, exactly (the same chunks);
- changed on both sides to the same value: that value;
- changed on both sides differently: a conflict, unless a strategy resolves it:
  ours / theirs: that side's value; average: (ours + theirs) / 2;
  task-arithmetic: base + s*(ours - base) + s*(theirs - base), s = --scale (default 1).
Arithmetic is done in float64 from the exact stored values and rounded once to the tensor's dtype, to nearest
with ties to even (mlvc/numeric.py). A both-sided change that a strategy cannot compute (integer or bool
tensors, a dtype or shape that differs, a tensor removed on one side, a non-safetensors file under average or
task-arithmetic) stays a conflict. On any conflict nothing is written.

Tensors and files are matched as diff and revert match them (treebuild.changes / pair_keys). A tensor (or
file) that one side only moved, unchanged (a re-sharded checkpoint, a renamed file), while the other side
changed or removed it, gets the other side's change where the first side moved it: no conflict.

When the current branch is an ancestor of the other, the merge is a fast-forward: the branch moves, no merge
commit. The merge commit has two parents (ours first) and records {"merge": {...}} in its metadata, a summary
of fixed size (counts and layer groups, docs/format.md); the full list of what changed is `mlvc diff` of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dtypes import ITEMSIZE
from ..errors import ConflictError, MlvcError
from ..numeric import as_numbers, from_float64, is_float
from ..objects import Commit, TensorEntry
from ..progress import NULL, Progress
from ..snapshot import NamedBuffer
from ..util import utc_now
from .tensorsource import ByteStream
from .treebuild import (
    Conflict,
    Key,
    build_manifest,
    changed_paths,
    changes,
    describe,
    group_counts,
    moves,
    relocate,
    same_value,
    values,
)
from .worktree import check_clean, head_after, move_head, plan_changes, recover, update_worktree

if TYPE_CHECKING:
    from ..chunking import Pipeline
    from ..repo import Repo

STRATEGIES = ("ours", "theirs", "average", "task-arithmetic")
BLOCK_ELEMS = 1 << 20


@dataclass
class MergeResult:
    ours: str
    theirs: str
    base: str | None
    commit: Commit | None  # None for a fast-forward or when already up to date
    branch: str | None
    fast_forward: bool = False
    up_to_date: bool = False
    rev: str | None = None  # the revision as the user named it
    strategy: str | None = None
    scale: float | None = None
    from_theirs: list[str] = field(default_factory=list)  # one-sided changes taken from the other branch
    resolved: list[str] = field(default_factory=list)  # both-sided changes the strategy decided
    written: list[str] = field(default_factory=list)  # working files rewritten or removed
    followed: list[str] = field(default_factory=list)  # changes applied where the other side moved the value
    resolved_keys: list[Key] = field(default_factory=list, repr=False)  # the keys of `resolved`

    @property
    def head(self) -> str:
        return self.commit.id if self.commit else (self.theirs if self.fast_forward else self.ours)

    def to_json(self) -> dict[str, Any]:
        return {"ours": self.ours, "theirs": self.theirs, "base": self.base, "head": self.head,
                "commit": self.commit.to_json() if self.commit else None, "branch": self.branch,
                "fast_forward": self.fast_forward, "up_to_date": self.up_to_date, "strategy": self.strategy,
                "scale": self.scale, "from_theirs": self.from_theirs, "resolved": self.resolved,
                "followed": self.followed, "written": self.written}

    def summary(self) -> dict[str, Any]:
        """What the merge commit records: counts and layer groups, never one entry per tensor (a merge of a
        large model resolves thousands; `mlvc diff HEAD^1 HEAD` lists them)."""
        return {"base": self.base, "theirs": self.theirs, "rev": self.rev, "strategy": self.strategy,
                "scale": self.scale, "resolved": len(self.resolved),
                "resolved_groups": group_counts(self.resolved_keys), "from_theirs": len(self.from_theirs),
                "followed": len(self.followed)}


def merge_base(repo: Repo, a: str, b: str) -> str | None:
    """The best common ancestor: one that no other common ancestor descends from (with several, as after
    criss-cross merges, the newest by commit time, then by id)."""
    parents: dict[str, list[str]] = {}
    times: dict[str, str] = {}

    def ancestors(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            if cid not in parents:
                c = repo.read_commit(cid)
                parents[cid], times[cid] = c.parents, c.time
            stack.extend(parents[cid])
        return seen

    common = ancestors(a) & ancestors(b)
    # common is closed under "ancestor of", so a redundant one is a direct parent of another common commit
    best = common - {p for c in common for p in parents[c]}
    return max(best, key=lambda c: (times[c], c)) if best else None


def merge(repo: Repo, rev: str, strategy: str | None = None, scale: float | None = None,
          message: str | None = None, progress: Progress = NULL) -> MergeResult:
    with repo.writing():  # gc keeps what this writes until a ref names it
        return _merge(repo, rev=rev, strategy=strategy, scale=scale, message=message, progress=progress)


def _merge(repo: Repo, rev: str, strategy: str | None = None, scale: float | None = None,
          message: str | None = None, progress: Progress = NULL) -> MergeResult:
    if strategy is not None and strategy not in STRATEGIES:
        raise MlvcError(f"unknown merge strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if scale is not None:
        if strategy != "task-arithmetic":
            raise MlvcError("--scale applies to --strategy task-arithmetic only")
        if not math.isfinite(scale):
            raise MlvcError(f"--scale must be a finite number, not {scale}")
    recover(repo)
    ours = repo.head()
    if ours is None:
        raise MlvcError("nothing is committed yet on this branch: there is nothing to merge into")
    theirs = repo.resolve(rev)
    base = merge_base(repo, ours, theirs)
    branch = repo.head_branch()
    result = MergeResult(ours, theirs, base, None, branch, strategy=strategy, rev=rev,
                         scale=(1.0 if scale is None else scale) if strategy == "task-arithmetic" else None)
    if theirs == ours or base == theirs:
        result.up_to_date = True
        return result
    o_manifest = repo.read_manifest(repo.read_commit(ours).manifest)
    t_manifest = repo.read_manifest(repo.read_commit(theirs).manifest)
    if base == ours:
        writes, removes, unchanged = plan_changes(repo, o_manifest, t_manifest, False, progress,
                                                  only=changed_paths(o_manifest, t_manifest))
        applied = update_worktree(repo, writes, removes, expect_head=head_after(repo, theirs), unchanged=unchanged,
                                  move_ref=lambda: move_head(repo, ours, theirs, f"merge {rev}: fast-forward"),
                                  progress=progress)
        result.fast_forward = True
        result.written = applied.written + applied.removed
        return result

    b_manifest = repo.read_manifest(repo.read_commit(base).manifest) if base else None
    want, arithmetic, conflicts = _three_way(b_manifest, o_manifest, t_manifest, strategy, result)
    if conflicts:
        hint = ("choose how to combine them: --strategy ours|theirs|average|task-arithmetic" if strategy is None
                else "these cannot be combined by that strategy: merge with --strategy ours or theirs, or "
                     "resolve by hand and commit")
        raise ConflictError(f"cannot merge {rev} into {branch or 'HEAD'}", conflicts, hint)
    check_clean(repo, o_manifest, {k[0] for k in want} | {k[0] for k in arithmetic})
    s = result.scale
    progress.start("merge")  # the bytes its pipeline reads and writes
    with repo.pipeline(progress=progress) as pipe:
        for key, (eb, eo, et) in arithmetic.items():
            assert strategy is not None  # values are combined by average and task-arithmetic only
            want[key] = _combine(pipe, key[1], eb, eo, et, strategy, s)
        new_manifest = build_manifest(pipe, o_manifest, want, [t_manifest, b_manifest])
        manifest_id = repo.write_manifest(new_manifest, o_manifest, pipe.stats)
    meta = {"merge": result.summary()}
    msg = message or f"Merge {rev} into {branch or 'detached HEAD'}"
    c = Commit(manifest_id, [ours, theirs], repo.author(), utc_now(), msg, meta)
    repo.write_commit(c)
    repo.store.flush()
    writes, removes, unchanged = plan_changes(repo, o_manifest, new_manifest, False, progress,
                                              only=changed_paths(o_manifest, new_manifest))
    reflog_message = f"merge {rev}: {strategy or 'no conflicts'}"
    applied = update_worktree(repo, writes, removes, expect_head=head_after(repo, c.id), unchanged=unchanged,
                              move_ref=lambda: move_head(repo, ours, c.id, reflog_message),
                              progress=progress)
    result.commit = c
    result.written = applied.written + applied.removed
    return result


def _three_way(b_manifest, o_manifest, t_manifest, strategy, result: MergeResult):
    ours_changed = changes(b_manifest, o_manifest)
    theirs_changed = changes(b_manifest, t_manifest)
    vo = values(o_manifest)
    o_files = {f.path: f for f in o_manifest.files}

    def ours_value(key: Key):
        return o_files.get(key[0]) if key[1] is None else vo.get(key)

    want: dict[Key, Any] = {}
    arithmetic: dict[Key, tuple] = {}
    conflicts: list[Conflict] = []
    handled: set[Key] = set()
    moved_o, moved_t = moves(b_manifest, o_manifest), moves(b_manifest, t_manifest)
    for key, new in moved_o.items():  # we moved it unchanged, they changed or removed it: their change, here
        if key in theirs_changed and key not in moved_t and new not in theirs_changed:
            want[new] = relocate(new, theirs_changed[key][1]) if theirs_changed[key][1] is not None else None
            result.followed.append(describe(new))
            handled.add(key)
    for key, new in moved_t.items():  # they moved it unchanged, we changed or removed it: our change, there
        if key in ours_changed and key not in moved_o and new not in ours_changed:
            eo = ours_value(key)
            want[key] = None
            want[new] = relocate(new, eo) if eo is not None else None
            result.followed.append(describe(new))
            handled |= {key, new}
    for key, (eb, et) in theirs_changed.items():
        if key in handled:
            continue
        eo = ours_value(key)
        if key not in ours_changed:
            if _shape_clash(key, ours_changed):
                conflicts.append(Conflict(key, "its file changed kind on one side and its tensors on the other"))
                continue
            want[key] = et
            result.from_theirs.append(describe(key))
            continue
        if same_value(key, eo, et):
            continue  # both made the same change
        why = _unresolvable(key, eb, eo, et, strategy)
        if why:
            conflicts.append(Conflict(key, why))
            continue
        result.resolved.append(describe(key))
        result.resolved_keys.append(key)
        if strategy == "theirs":
            want[key] = et
        elif strategy in ("average", "task-arithmetic"):
            arithmetic[key] = (eb, eo, et)
    for key in ours_changed:  # a whole-file change on our side against tensor changes on theirs
        if key not in theirs_changed and key not in handled and _shape_clash(key, theirs_changed):
            conflicts.append(Conflict(key, "its file changed kind on one side and its tensors on the other"))
    return want, arithmetic, conflicts


def _shape_clash(key: Key, other: dict[Key, Any]) -> bool:
    """A whole-file key on one side and tensor keys of the same path on the other (a kind change)."""
    if key[1] is None:
        return any(k[0] == key[0] and k[1] is not None for k in other)
    return (key[0], None) in other


def _unresolvable(key: Key, eb, eo, et, strategy: str | None) -> str | None:
    def what(x) -> str:
        return "removed" if x is None else "changed"

    sides = f"{what(eo)} on this branch and {what(et)} on the other"
    if strategy is None:
        return sides
    if strategy in ("ours", "theirs"):
        return None
    if key[1] is None:
        return f"{sides}; a whole file cannot be averaged"
    if eo is None or et is None:
        return f"{sides}; {strategy} needs the tensor on both sides"
    if (eo.dtype, list(eo.shape)) != (et.dtype, list(et.shape)):
        return f"{sides}; {strategy} needs the same dtype and shape ({eo.dtype} {eo.shape} vs {et.dtype} {et.shape})"
    if not is_float(eo.dtype):
        return f"{sides}; {strategy} is defined for float tensors only, this one is {eo.dtype}"
    if strategy == "task-arithmetic":
        if eb is None:
            return "added on both sides; task-arithmetic needs the merge base's value"
        if (eb.dtype, list(eb.shape)) != (eo.dtype, list(eo.shape)):
            return f"{sides}; task-arithmetic needs the base's dtype and shape to match ({eb.dtype} {eb.shape})"
    return None


def _elements(pipe: Pipeline, t: TensorEntry) -> ByteStream:
    return ByteStream(iter(pipe.read(t.chunks)))


def _combine(pipe: Pipeline, name: str, eb: TensorEntry | None, eo: TensorEntry, et: TensorEntry,
             strategy: str, scale: float | None) -> NamedBuffer:
    """The merged tensor, computed block by block in float64 and rounded once to its dtype."""
    dtype, width = eo.dtype, ITEMSIZE[eo.dtype]
    n = math.prod(eo.shape)
    out = bytearray(n * width)
    so, st = _elements(pipe, eo), _elements(pipe, et)
    sb = None
    if strategy == "task-arithmetic":
        assert eb is not None, name  # no base value: a conflict for task-arithmetic, never combined
        sb = _elements(pipe, eb)
    s = 1.0 if scale is None else scale
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, BLOCK_ELEMS):
            k = min(BLOCK_ELEMS, n - start)
            o = as_numbers(so.take(k * width), dtype)
            t = as_numbers(st.take(k * width), dtype)
            if strategy == "average":
                x = (o + t) * 0.5
            else:
                assert sb is not None
                b = as_numbers(sb.take(k * width), dtype)
                x = b + s * (o - b) + s * (t - b)
            out[start * width : (start + k) * width] = from_float64(x, dtype).tobytes()
    return NamedBuffer(name, dtype, list(eo.shape), memoryview(out))
