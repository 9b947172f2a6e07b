"""checkout and switch: write a commit's files into the working tree (or another folder) and move HEAD.

`checkout REV --output DIR` writes into a folder outside the work tree. DIR may be new, empty, or hold an
earlier mlvc checkout, which is updated to REV: nothing is overwritten or removed unless its bytes are in the
repository. A file REV would overwrite must equal that path in some commit (one that a ref or a reflog
reaches); the earlier checkout is the commit with the most files whose files DIR all holds, byte for byte, and
its files that REV lacks are removed (with the folders that empties). Any other file in DIR is left alone; a
file in REV's way that no commit has is refused (OutputFolderError, nothing written) unless `force`.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DirtyWorkingCheckpointError, MlvcError, OutputFolderError, PathError, RefError
from ..objects import Commit, Manifest
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS, TAGS, check_name
from ..revparse import suggest, tag_target
from ..snapshot import file_hash
from ..statcache import StatCache
from ..util import TMP_PREFIX
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
    already: bool = False  # `switch B` (`checkout B`) while on B, without force: nothing was done
    previous: str | None = None  # --output: the commit whose checkout the folder held, now updated

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
    # no tensor's hash is needed: files are compared by their hashes, and written from chunks and bundle slices
    manifest = repo.read_manifest(repo.read_commit(cid).manifest, resolve=False)
    if output is not None:
        return _checkout_to(repo, cid, manifest, os.path.abspath(output), force, progress)
    branch = rev if repo.refs.resolve(HEADS + rev) == cid and not rev.startswith("refs/") else None
    if branch is not None and repo.head_branch() == branch and not force:  # as git: "Already on 'main'"
        recover(repo)
        return CheckoutResult(cid, repo.root, branch, already=True)
    return _checkout_in_place(repo, cid, manifest, branch, force, progress)


def switch(repo: Repo, branch: str, create: bool = False, start: str = "HEAD", force: bool = False,
           progress: Progress = NULL) -> CheckoutResult:
    check_name(branch)
    existing = repo.refs.resolve(HEADS + branch)
    if create and existing is not None:
        raise RefError(f"branch {branch!r} already exists; switch to it with `mlvc switch {branch}`")
    if not create and existing is None:
        close = suggest(repo, branch, (HEADS,))
        hint = f"did you mean {' or '.join(map(repr, close))}? Or " if close else ""
        raise RefError(f"no branch named {branch!r}; {hint}create it with `mlvc switch -c {branch}`, or use "
                       "`mlvc checkout REV` for a detached HEAD")
    if not create and repo.head_branch() == branch and not force:  # as git: nothing to do, and no error
        assert existing is not None
        recover(repo)
        return CheckoutResult(existing, repo.root, branch, already=True)
    cid = repo.resolve(start) if existing is None else existing  # `create` or an existing branch, as checked above
    manifest = repo.read_manifest(repo.read_commit(cid).manifest, resolve=False)
    return _checkout_in_place(repo, cid, manifest, branch, force, progress, create=create)


def _checkout_to(repo: Repo, cid: str, manifest: Manifest, base: str, force: bool,
                 progress: Progress) -> CheckoutResult:
    _check_output(repo, base)
    os.makedirs(base, exist_ok=True)
    result = CheckoutResult(cid, base, None)
    present = _files_in(base, repo.dir)
    hashes = _Hashes(base)
    target = {f.path: f for f in manifest.files}
    writes: list[Write] = []
    conflicts = []
    for path, f in sorted(target.items()):
        if path in present and hashes(path) == f.hash:
            result.unchanged.append(path)
            continue
        if path in present or os.path.lexists(os.path.join(base, *path.split("/"))):
            conflicts.append(path)
        writes.append(Write.of(f))
    removes: list[str] = []
    if conflicts or present - target.keys():
        previous, old, stored = _earlier_checkout(repo, present, hashes, set(conflicts), set(target))
        conflicts = [p for p in conflicts if p not in stored]  # its bytes are in the repository: nothing lost
        if previous is not None:
            result.previous = previous
            removes = sorted(p for p in old if p not in target)
    if conflicts and not force:
        raise OutputFolderError(base, [os.path.join(base, *p.split("/")) for p in conflicts])
    for rel in conflicts:
        safe_target(base, rel)  # never through a symlinked folder, even with --force
    _fill(result, update_worktree(repo, writes, removes, base=base, unchanged=result.unchanged, progress=progress))
    return result


class _Hashes:
    """The whole-file hash of a regular file under `base` (None for a symlink or anything else), each read once."""

    def __init__(self, base: str):
        self.base = base
        self.known: dict[str, str | None] = {}

    def __call__(self, rel: str) -> str | None:
        if rel not in self.known:
            full = os.path.join(self.base, *rel.split("/"))
            try:
                regular = stat.S_ISREG(os.lstat(full).st_mode)
                self.known[rel] = file_hash(full) if regular else None
            except OSError:
                self.known[rel] = None
        return self.known[rel]


def _files_in(base: str, mlvc_dir: str) -> set[str]:
    """Every file (and symlink) under `base`, relative with "/"; mlvc's temp files and the repository's own
    folder `mlvc_dir` (when `base` holds it) left out. Symlinked folders are listed as entries, never
    followed."""
    out = set()
    skip = os.path.realpath(mlvc_dir)
    for folder, dirs, files in os.walk(base):
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        dirs[:] = [d for d in dirs if d not in links and os.path.realpath(os.path.join(folder, d)) != skip]
        for name in files + links:
            if not name.startswith(TMP_PREFIX):
                out.add(os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/"))
    return out


def _earlier_checkout(repo: Repo, present: set[str], hashes: Callable[[str], str | None], conflicts: set[str],
                      target: set[str]) -> tuple[str | None, set[str], set[str]]:
    """(the commit with the most files whose files the folder all holds byte for byte, or None; its paths;
    the `conflicts` whose bytes equal that path in some commit). Commits are read nearest first, and the
    search stops once every conflict is explained and the folder's files beyond `target` are that commit's
    (an unchanged earlier checkout: after a few reads); otherwise every reachable commit is read once.
    Manifests whose paths do not fit cost no hashing."""
    best: str | None = None
    best_paths: set[str] = set()
    stored: set[str] = set()
    for commit in _reachable_commits(repo):
        try:
            manifest = repo.read_manifest(commit.manifest, resolve=False)  # files only
        except MlvcError:
            continue  # fsck's business; a damaged manifest just is not a match
        files = {f.path: f.hash for f in manifest.files}
        stored |= {p for p in (conflicts - stored) & files.keys() if hashes(p) == files[p]}
        if (len(files) > len(best_paths) and files.keys() <= present
                and all(hashes(p) == h for p, h in files.items())):
            best, best_paths = commit.id, set(files)
        if stored == conflicts and present - target <= best_paths:
            break
    return best, best_paths, stored


def _reachable_commits(repo: Repo) -> Iterator[Commit]:
    """Every commit reachable from HEAD, the branches, the tags and the reflogs, each once, nearest first
    (breadth first from each tip), so an earlier checkout of a recent commit is found after few reads."""
    tips: list[str] = []
    with contextlib.suppress(MlvcError):
        tips += [x for x in [repo.head()] if x]
    for prefix in (HEADS, TAGS):
        for name in repo.refs.names(prefix):
            with contextlib.suppress(MlvcError):
                oid = repo.refs.resolve(prefix + name)
                if oid:
                    tips.append((tag_target(repo, oid) or oid) if prefix == TAGS else oid)
    with contextlib.suppress(MlvcError):
        tips += list(repo.refs.all_reflog_ids())
    seen: set[str] = set()
    queue = deque(dict.fromkeys(tips))
    while queue:
        cid = queue.popleft()
        if cid in seen:
            continue
        seen.add(cid)
        try:
            commit = repo.read_commit(cid)
        except MlvcError:
            continue  # a tag object in a tag's reflog, or damage (fsck's business)
        yield commit
        queue.extend(p for p in commit.parents if p not in seen)


def _fill(result: CheckoutResult, applied: Applied) -> None:
    result.written, result.removed, result.unchanged = applied.written, applied.removed, applied.unchanged
    result.bytes_written = applied.bytes_written


def _check_output(repo: Repo, base: str) -> None:
    """Refuse the work tree's own folder as the output (files would change under a HEAD that did not move) and an
    output folder inside .mlvc/ (symlinks followed): a checkpoint written there could overwrite the
    repository's own objects, refs or settings. The one exception is mlvc's scratch folder .mlvc/tmp/,
    where `mlvc eval run` checks commits out for its evaluators (and removes them afterwards)."""
    real_dir, real_base = os.path.realpath(repo.dir), os.path.realpath(base)
    if real_base == os.path.realpath(repo.root):  # the work tree itself: that is a checkout in place
        raise PathError(f"refusing to check out into {base}: it is the work tree, whose files HEAD describes; "
                        "check out in place (without --output) to move HEAD with them, or pass another folder")
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
    head_manifest = repo.read_manifest(repo.read_commit(head).manifest, resolve=False) if head else None
    cache = StatCache(repo.dir)
    writes, removes, unchanged = _plan(repo, head_manifest, manifest, force, progress, cache)
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


def _plan(repo: Repo, head_manifest: Manifest | None, manifest: Manifest, force: bool, progress: Progress,
          cache: StatCache) -> tuple[list[Write], list[str], list[str]]:
    """plan_changes, except that a working file that differs from HEAD but already equals the target is not
    "uncommitted changes" (nothing is lost by checking the target out over it)."""
    try:
        return plan_changes(repo, head_manifest, manifest, force, progress, cache=cache)
    except DirtyWorkingCheckpointError as e:
        writes, removes, unchanged = plan_changes(repo, head_manifest, manifest, True, progress, cache=cache)
        lost = [p for p in e.paths if p not in set(unchanged)]
        if lost:
            raise DirtyWorkingCheckpointError(lost) from None
        return writes, removes, unchanged
