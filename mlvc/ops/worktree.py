"""The one work-tree transaction every verb that rewrites the working checkpoint goes through (listing and
hashing the working files is ops/workfiles.py).

`update_worktree` (checkout, switch, reset --hard, revert, merge, checkout --output, restore) runs five steps
in an order that is the guarantee, under the work-tree lock (`.mlvc/worktree.lock`):

1. plan: every file to write, remove or keep; refuse (changing nothing) what would lose uncommitted work
   (DirtyWorkingCheckpointError) and what cannot be done (a folder where the target has a file, an untracked
   file where it has a folder, a path through a symlink or outside the work tree: PathError);
2. journal: `.mlvc/txn/ID.json` lists the temp files, their targets and the removals;
3. stage: write each new file into a temp file in its folder (or the work tree's top folder when that folder
   does not exist yet), fsync it, and verify it against its committed hash; nothing visible changes;
4. move the ref (a compare-and-swap: a ref that moved under us stops here, and every temp file is removed);
5. apply: remove the files the target lacks, rename the temp files into place, remove emptied folders,
   fsync the folders, delete the journal; in place, the work-tree state (workfiles.WorkState) forgets the
   paths now as HEAD has them (no longer "committed from memory, not checked out", nor pending `mlvc rm`).

A process killed anywhere leaves a journal; `recover` (run by the next work-tree verb, `status`, `commit`,
`fsck` and `gc`) finishes the transaction when its ref moved (roll forward) and removes its temp files
otherwise (roll back), so the work tree ends all old or all new, matching HEAD.

Every write, rename and removal goes through a folder descriptor opened component by component with
O_NOFOLLOW (`_Tree`): a folder the user replaced by a symlink is refused, never followed, so nothing outside
the work tree is ever written, renamed or removed, whatever happens between the plan and the apply.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from .. import faults, lockfile
from ..errors import DirtyWorkingCheckpointError, MlvcError, PathError
from ..objects import FileEntry, Manifest, check_rel_path
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS
from ..snapshot import file_hash, write_entry
from ..statcache import StatCache
from ..util import TMP_PREFIX, atomic_write_bytes, fsync_dir
from .workfiles import WORKTREE_LOCK, WorkState, edit_state, working_entries

if TYPE_CHECKING:
    from ..chunking import Pipeline
    from ..repo import Repo

T = TypeVar("T")

TXN_DIR = "txn"  # WORKTREE_LOCK is defined in workfiles: the work-tree state is written under it too


# -- safe file operations under one folder ----------------------------------------------------------------


class _Tree:
    """File operations confined to one folder: every path is opened component by component with O_NOFOLLOW,
    so a symlink anywhere below `base` is refused (PathError), never followed."""

    def __init__(self, base: str):
        self.base = base
        self._fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        self._dirty: set[str] = set()  # folders (relative; "" is base) whose entries changed since sync()

    def _touched(self, rel: str) -> None:
        self._dirty.add(rel.rsplit("/", 1)[0] if "/" in rel else "")

    def sync(self) -> None:
        """Make every creation, rename and removal so far durable: one fsync per folder touched, not one
        per file (a checkout of a 100-file folder fsyncs it once)."""
        for folder in sorted(self._dirty):
            if not folder:
                os.fsync(self._fd)
                continue
            with contextlib.suppress(OSError, PathError):
                with self.parent(folder + "/_") as (fd, _name):  # the descriptor of `folder` itself
                    if fd is not None:
                        os.fsync(fd)
        self._dirty.clear()

    def close(self) -> None:
        os.close(self._fd)

    @contextlib.contextmanager
    def parent(self, rel: str, create: bool = False) -> Iterator[tuple[int | None, str]]:
        """(descriptor of rel's folder, last name); the descriptor is None when a folder is missing (and
        `create` is False)."""
        check_rel_path(rel)
        parts = rel.split("/")
        fd = os.dup(self._fd)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        fd = -1
                        break
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self._touched("/".join(parts[: i + 1]))
                    faults.point("worktree.mkdir")
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: i + 1])
                        raise PathError(f"refusing to touch {rel}: {where} in {self.base} is a symlink or a file, "
                                        "not a folder (mlvc never writes through symlinks)") from None
                    raise
                os.close(fd)
                fd = nfd
            yield (fd if fd >= 0 else None), parts[-1]
        finally:
            if fd >= 0:
                os.close(fd)

    def _at(self, rel: str, op: Callable[[str, int], T], missing: tuple[type[OSError], ...] = ()) -> T | None:
        """`op(name, folder descriptor)` for rel; None when its folder or the file is missing (or `missing`)."""
        with self.parent(rel) as (fd, name):
            if fd is None:
                return None
            try:
                return op(name, fd)
            except FileNotFoundError:
                return None
            except missing:
                return None

    def lstat(self, rel: str) -> os.stat_result | None:
        return self._at(rel, lambda name, fd: os.stat(name, dir_fd=fd, follow_symlinks=False))

    def unlink(self, rel: str) -> bool:
        def remove(name: str, fd: int) -> bool:
            os.unlink(name, dir_fd=fd)
            return True

        if not self._at(rel, remove):
            return False
        self._touched(rel)
        faults.point("worktree.removed")
        return True

    def rmdir_empty(self, rel: str) -> bool:
        def remove(name: str, fd: int) -> bool:
            os.rmdir(name, dir_fd=fd)
            return True

        if not self._at(rel, remove, (OSError,)):  # not empty, gone, or not a folder
            return False
        self._touched(rel)
        return True

    def rename(self, tmp_rel: str, rel: str) -> None:
        with self.parent(tmp_rel) as (sfd, sname), self.parent(rel, create=True) as (dfd, dname):
            assert dfd is not None  # create=True makes the missing folders
            if sfd is None:  # the temp file's folder is gone; a None dir_fd would rename relative to the cwd
                raise FileNotFoundError(errno.ENOENT, "the folder of a staged temp file is gone", tmp_rel)
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        self._touched(tmp_rel)
        self._touched(rel)
        faults.point("worktree.renamed")

    @contextlib.contextmanager
    def create_temp(self, tmp_rel: str, mode: int = 0o644) -> Iterator[BinaryIO]:
        with self.parent(tmp_rel) as (fd, name):
            if fd is None:
                raise PathError(f"{os.path.dirname(tmp_rel)} vanished from {self.base} during the checkout")
            tfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=fd)
        with os.fdopen(tfd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        faults.point("worktree.staged")

    def hash_file(self, rel: str) -> str | None:
        with self.parent(rel) as (fd, name):
            if fd is None:
                return None
            try:
                ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                return None
        with os.fdopen(ffd, "rb") as f:
            return file_hash(f)


def safe_target(base: str, rel: str) -> str:
    """Where a stored path goes under `base`; PathError when it would pass through a symlink or a file."""
    tree = _Tree(base)
    try:
        with tree.parent(rel):
            pass
    finally:
        tree.close()
    return os.path.join(base, *rel.split("/"))


# -- the plan -------------------------------------------------------------------------------------------


@dataclass
class Write:
    """One file to stage: `rel` under the base folder, written (and verified) by `fill(pipe, f)`; `hash` is
    the whole file's hash when known (recovery checks a staged file against it before putting it in place)."""

    rel: str
    size: int
    hash: str | None
    fill: Callable[[Pipeline, BinaryIO], None]

    @classmethod
    def of(cls, entry: FileEntry) -> Write:
        """The committed file: write_entry verifies it as it writes. A torch file recorded as tensor-exact
        only has no whole-file hash to check it against afterwards."""
        exact = entry.kind != "torch" or entry.exact
        return cls(entry.path, entry.size, entry.hash if exact else None, lambda pipe, f: write_entry(pipe, entry, f))


@dataclass
class Applied:
    """What a work-tree transaction did."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_written: int = 0
    moved: Any = None  # what the ref move returned


def plan_changes(repo: Repo, head_manifest: Manifest | None, manifest: Manifest, force: bool,
                 progress: Progress = NULL, only: set[str] | None = None,
                 cache: StatCache | None = None) -> tuple[list[Write], list[str], list[str]]:
    """(writes, removals, unchanged) that bring the working checkpoint from HEAD's tree to `manifest`.
    DirtyWorkingCheckpointError (unless `force`) when uncommitted work would be lost; with `only`, just
    those paths are considered (revert and merge)."""
    committed = {f.path: f for f in head_manifest.files} if head_manifest else {}
    target = {f.path: f for f in manifest.files}
    roots = sorted(set(head_manifest.roots if head_manifest else []) | set(manifest.roots))
    cache = cache or StatCache(repo.dir)
    current = working_entries(repo, head_manifest, roots, cache, progress)
    # What would be lost: changes to committed files, and untracked files the target would overwrite. An
    # older committed copy left on disk when a newer version was committed from memory loses nothing.
    state = WorkState.load(repo)
    conflicts = [p for p, e in current.items() if p in committed and e.hash != committed[p].hash
                 and not state.stale(repo, p, cache)]
    conflicts += [p for p, e in current.items() if p not in committed and p in target and e.hash != target[p].hash]
    if only is not None:
        conflicts = [p for p in conflicts if p in only]
    if conflicts and not force:
        cache.save()
        raise DirtyWorkingCheckpointError(sorted(conflicts))
    writes, unchanged = [], []
    for path, f in target.items():
        if only is not None and path not in only:
            continue
        if path in current and current[path].hash == f.hash:
            unchanged.append(path)
        else:
            writes.append(Write.of(f))
    removes = [p for p in committed if p not in target and (only is None or p in only)]
    return writes, removes, unchanged


def _check_shapes(tree: _Tree, writes: list[Write], removes: list[str]) -> None:
    """Refuse, before anything changes, what the file system cannot take: a path through a symlink, a file
    where the target has a folder (unless it is a tracked file being removed), a folder where the target has
    a file (unless everything in it is being removed)."""
    removing = set(removes)
    problems: list[str] = []

    def walk(rel: str) -> bool:
        """True when every folder on the way to rel is a real folder (or missing)."""
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            st = tree.lstat(prefix)
            if st is None:
                return True
            if stat.S_ISLNK(st.st_mode):
                raise PathError(f"refusing to touch {rel}: {prefix} in {tree.base} is a symlink (mlvc never "
                                "writes, renames or removes through symlinks); nothing was changed")
            if not stat.S_ISDIR(st.st_mode):
                if prefix not in removing:
                    problems.append(f"{prefix} is a file in the work tree, where the commit has a folder")
                return False
        return True

    for rel in removes:
        walk(rel)
    for w in writes:
        if not walk(w.rel):
            continue
        st = tree.lstat(w.rel)
        if st is not None and stat.S_ISDIR(st.st_mode):
            inside = [r for r in _files_under(os.path.join(tree.base, *w.rel.split("/")))
                      if f"{w.rel}/{r}" not in removing]
            if inside:
                problems.append(f"{w.rel} is a folder in the work tree holding files mlvc does not track "
                                f"({', '.join(inside[:3])}{' ...' if len(inside) > 3 else ''}), where the commit "
                                "has a file")
    if problems:
        raise PathError("cannot update the work tree, nothing was changed: " + "; ".join(problems)
                        + "; move those paths out of the way and run the command again")


def _files_under(folder: str) -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        out += [os.path.relpath(os.path.join(dirpath, n), folder).replace(os.sep, "/") for n in sorted(files)]
        out += [os.path.relpath(os.path.join(dirpath, d), folder).replace(os.sep, "/") for d in dirs
                if os.path.islink(os.path.join(dirpath, d))]
    return out


# -- the transaction ------------------------------------------------------------------------------------


def update_worktree(repo: Repo, writes: list[Write], removes: list[str], *, base: str | None = None,
                    move_ref: Callable[[], T] | None = None, expect_head: tuple[str, str] | None = None,
                    creates: tuple[str, str] | None = None, unchanged: list[str] | None = None,
                    progress: Progress = NULL, cache: StatCache | None = None) -> Applied:
    """Carry out a plan all or nothing (see the module docstring). `move_ref` moves HEAD or the branch by
    compare-and-swap; `expect_head` is (raw HEAD, commit id) as they are once it has run, so that recovery
    can tell whether it did; `creates` is (branch ref, commit) when `move_ref` creates that branch first
    (`switch -c`): a recovery that rolls back deletes it again. Without `move_ref` (checkout --output,
    restore) the journal is the commit point."""
    base = os.path.realpath(base or repo.root)
    in_place = base == os.path.realpath(repo.root)
    result = Applied(unchanged=list(unchanged or []))
    with lockfile.locked(os.path.join(repo.dir, WORKTREE_LOCK), "the work tree", wait=30.0):
        recover(repo, locked=True)
        tree = _Tree(base)
        try:
            _check_shapes(tree, writes, removes)
            txn = uuid.uuid4().hex[:16]
            temps = [_temp_name(tree, w.rel, txn, i) for i, w in enumerate(writes)]
            # The base of an in-place update is recorded relative to the root (".") so that a recovery in a
            # repository that was moved or copied meanwhile finishes the update there, and only there.
            journal = {"base": "." if in_place else base, "state": "staging",
                       "head": list(expect_head) if expect_head else None,
                       "creates": list(creates) if creates else None,
                       "renames": [[t, w.rel, w.hash] for t, w in zip(temps, writes, strict=True)],
                       "removes": list(removes)}
            jpath = os.path.join(repo.dir, TXN_DIR, txn + ".json")
            os.makedirs(os.path.dirname(jpath), exist_ok=True)
            atomic_write_bytes(jpath, json.dumps(journal).encode())
            try:
                _stage(repo, tree, writes, temps, result, progress)
                result.moved = move_ref() if move_ref is not None else None
            except BaseException:
                _roll_back(tree, journal)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(jpath)
                raise
            journal["state"] = "applying"
            atomic_write_bytes(jpath, json.dumps(journal).encode())
            _roll_forward(tree, journal, verify=False)
            result.removed = list(removes)
            os.unlink(jpath)
            if in_place:
                # HEAD moved and the work tree now matches it: every path the plan saw is as HEAD says
                seen = [*removes, *(unchanged or [])] if move_ref is not None else []
                _clear_marks(repo, [w.rel for w in writes] + seen)
        finally:
            tree.close()
    if in_place:
        cache = cache or StatCache(repo.dir)
        for w in writes:
            if w.hash is not None:
                cache.record(w.rel, repo.abs_path(w.rel), w.hash)
        for rel in removes:
            cache.forget(rel)
        cache.save()
    return result


def _clear_marks(repo: Repo, paths: list[str]) -> None:
    """These paths are now as the work tree's HEAD has them (written, or found right, or removed with HEAD's
    move): none is "committed from memory, not checked out" any more, nor untracked by `mlvc rm`. Called with
    the work-tree lock held."""
    done = set(paths)
    if not done:
        return
    with contextlib.suppress(OSError), edit_state(repo, locked=True) as state:  # the update itself is done
        for rel in done:
            state.unmaterialized.pop(rel, None)
        state.removals = [x for x in state.removals if x not in done]


def _temp_name(tree: _Tree, rel: str, txn: str, i: int) -> str:
    """A temp file beside the target when its folder exists as a real folder, else in the top folder."""
    folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
    name = f"{TMP_PREFIX}{txn}-{i}"
    if folder:
        st = tree.lstat(folder)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return f"{folder}/{name}"
    return name


def _stage(repo: Repo, tree: _Tree, writes: list[Write], temps: list[str], result: Applied,
           progress: Progress) -> None:
    progress.start("checkout", sum(w.size for w in writes))
    with repo.pipeline(progress=progress) as pipe:
        for w, tmp in zip(writes, temps, strict=True):
            with tree.create_temp(tmp) as f:
                w.fill(pipe, f)
            result.written.append(w.rel)
            result.bytes_written += w.size
    progress.finish()


def _roll_back(tree: _Tree, journal: dict) -> None:
    for tmp, _rel, _h in journal["renames"]:
        with contextlib.suppress(OSError, PathError):
            tree.unlink(tmp)
    with contextlib.suppress(OSError):
        tree.sync()


def _roll_forward(tree: _Tree, journal: dict, verify: bool) -> None:
    """Removals first (a folder may have to make way for a file), then the renames, then emptied folders."""
    for rel in journal["removes"]:
        st = tree.lstat(rel)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            tree.unlink(rel)
    for tmp, rel, h in journal["renames"]:
        if tree.lstat(tmp) is None:
            continue  # already renamed (a recovery running again)
        if verify and h is not None and tree.hash_file(tmp) != h:
            tree.unlink(tmp)  # never put an unverified file in place
            continue
        st = tree.lstat(rel)
        if st is not None and stat.S_ISDIR(st.st_mode):
            _remove_empty_folders(tree, rel)
        tree.rename(tmp, rel)
    for rel in journal["removes"]:
        parts = rel.split("/")
        for i in range(len(parts) - 1, 0, -1):
            if not tree.rmdir_empty("/".join(parts[:i])):
                break
    tree.sync()  # before the journal goes


def _remove_empty_folders(tree: _Tree, rel: str) -> None:
    folder = os.path.join(tree.base, *rel.split("/"))
    for dirpath, dirs, _files in os.walk(folder, topdown=False):
        for d in dirs:
            tree.rmdir_empty(os.path.relpath(os.path.join(dirpath, d), tree.base).replace(os.sep, "/"))
    tree.rmdir_empty(rel)


def pending(repo: Repo) -> list[str]:
    """Journals of interrupted work-tree transactions."""
    folder = os.path.join(repo.dir, TXN_DIR)
    try:
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return []


def recover(repo: Repo, locked: bool = False) -> list[str]:
    """Finish or undo every interrupted work-tree transaction; returns what was done, one line each."""
    journals = pending(repo)
    if not journals:
        return []
    if not locked:
        with lockfile.locked(os.path.join(repo.dir, WORKTREE_LOCK), "the work tree", wait=30.0):
            return recover(repo, locked=True)
    done = []
    for jpath in journals:
        try:
            with open(jpath, "rb") as f:
                journal = json.loads(f.read())
            base = repo.root if journal["base"] == "." else journal["base"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            os.unlink(jpath)  # a journal torn before its rename cannot exist; anything else is not ours
            continue
        if not os.path.isdir(base):
            os.unlink(jpath)
            continue
        forward = journal.get("state") == "applying"
        if not forward and journal.get("head"):
            raw_head, commit = journal["head"]
            with contextlib.suppress(MlvcError):
                forward = repo.refs.read_raw(HEAD) == raw_head and repo.refs.resolve(HEAD) == commit
        tree = _Tree(base)
        try:
            if forward:
                _roll_forward(tree, journal, verify=journal.get("state") != "applying")
            else:
                _roll_back(tree, journal)
                if journal.get("creates"):  # the branch a `switch -c` made before HEAD could move to it
                    ref, commit = journal["creates"]
                    with contextlib.suppress(MlvcError, OSError):
                        repo.refs.remove_if_equals(ref, commit, who=repo.author(),
                                                   message="branch: deleted (the switch to it was interrupted)")
        finally:
            tree.close()
        os.unlink(jpath)
        with contextlib.suppress(OSError):
            fsync_dir(os.path.dirname(jpath))
        done.append(f"{'finished' if forward else 'undid'} an interrupted work-tree update of {base}")
    return done


# -- moving HEAD and checking for uncommitted work ------------------------------------------------------


def head_after(repo: Repo, commit: str, branch: str | None = None) -> tuple[str, str]:
    """(raw HEAD, commit) once HEAD is at `commit`: on `branch` (default: the current one) or detached."""
    if branch is None:
        branch = repo.head_branch()
    return (f"ref: {HEADS}{branch}" if branch else commit), commit


def move_head(repo: Repo, old: str | None, new: str, message: str) -> str | None:
    """Point the current branch (or a detached HEAD) at `new` by compare-and-swap from `old`; both the
    branch's and HEAD's reflogs record the move. Returns the branch name (None when detached)."""
    branch = repo.head_branch()
    if branch:
        repo.refs.set_if_equals(HEADS + branch, old, new, who=repo.author(), message=message)
        with contextlib.suppress(OSError):  # the branch moved and logged it: HEAD's own log is a convenience
            repo.refs.append_log(HEAD, old, new, repo.author(), message)
    else:
        repo.refs.set_if_equals(HEAD, old, new, who=repo.author(), message=message)
    return branch


def check_clean(repo: Repo, head: Manifest, paths: set[str]) -> None:
    """Refuse (DirtyWorkingCheckpointError) when any of these committed files has uncommitted changes."""
    committed = {f.path: f for f in head.files}
    cache = StatCache(repo.dir)
    current = working_entries(repo, head, head.roots, cache)
    cache.save()
    state = WorkState.load(repo)  # committed from memory: not on disk, or an older copy there, loses nothing
    dirty = sorted(p for p in paths if not (p in committed and p not in current and p in state.unmaterialized)
                   and not (p in current and state.stale(repo, p))
                   and ((p in current) != (p in committed)
                        or (p in current and current[p].hash != committed[p].hash)))
    if dirty:
        raise DirtyWorkingCheckpointError(dirty)
