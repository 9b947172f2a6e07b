"""gc's second half: what killed processes leave behind (temp files, scratch entries, stale locks).

Everything here is removed only when older than the temp grace (a write in progress keeps touching its file),
never through a symlink, and never a live lock. mlvc/ops/gc.py has the whole story; docs/format.md (Garbage
collection) the user's.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import TYPE_CHECKING

from .. import faults, lockfile
from ..errors import LockBusyError
from ..util import TMP_PREFIX

if TYPE_CHECKING:
    from ..objects import Manifest
    from ..repo import Repo
    from .gc import GcResult

SCRATCH = "tmp"
MLVC_TEMP = ".tmp-"  # temp names inside .mlvc/ (TMP_PREFIX and older ones); in the work tree: TMP_PREFIX only


def _remove_temp(result: GcResult, dirfd: int, name: str, rel: str, cutoff: float, regular_only: bool) -> None:
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or (stat.S_ISLNK(st.st_mode) and not regular_only)) or st.st_mtime > cutoff:
        return
    if stat.S_ISREG(st.st_mode) and lockfile.in_use(name, dirfd):  # a write or a lock in progress
        return
    if not result.dry_run:
        try:
            os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:  # renamed into place by its writer meanwhile
            return
        faults.point("gc.temp_removed")
    result.temp_files_removed += 1
    result.temp_bytes_freed += st.st_size if stat.S_ISREG(st.st_mode) else 0
    result.removed_temp.append(rel)


def sweep_mlvc_temp(repo: Repo, cutoff: float, result: GcResult) -> None:
    """Temp files anywhere under .mlvc/ (not following symlinks; `.tmp-*`, which covers TMP_PREFIX and every
    temp name mlvc ever used there, as fsck lists them), then old entries of the scratch folder."""
    for folder, dirs, files, dirfd in os.fwalk(repo.dir, follow_symlinks=False):
        if folder == repo.dir:
            dirs[:] = [d for d in dirs if d != SCRATCH]
        dirs.sort()
        rel_folder = os.path.relpath(folder, repo.root)
        for name in sorted(files):
            if name.startswith(MLVC_TEMP):
                _remove_temp(result, dirfd, name, os.path.join(rel_folder, name), cutoff, regular_only=False)
    scratch = os.path.join(repo.dir, SCRATCH)
    try:
        entries = sorted(os.scandir(scratch), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        newest, size = _newest(entry)
        if newest > cutoff:
            continue
        if not result.dry_run:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)  # never follows a symlink inside (fd-based on Linux)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
            faults.point("gc.temp_removed")
        result.temp_files_removed += 1
        result.temp_bytes_freed += size
        result.removed_temp.append(os.path.relpath(entry.path, repo.root))


def _newest(entry: os.DirEntry) -> tuple[float, int]:
    """(newest mtime of the entry and everything inside it, total bytes of its files), without following
    symlinks: a scratch folder an evaluator still writes into is young however old the folder itself is."""
    st = entry.stat(follow_symlinks=False)
    newest, size = st.st_mtime, st.st_size if stat.S_ISREG(st.st_mode) else 0
    if entry.is_dir(follow_symlinks=False):
        for _folder, dirs, files, dirfd in os.fwalk(entry.path, follow_symlinks=False):
            for name in dirs + files:
                try:
                    s = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                newest = max(newest, s.st_mtime)
                size += s.st_size if stat.S_ISREG(s.st_mode) else 0
    return newest, size


def sweep_worktree(repo: Repo, cutoff: float, result: GcResult) -> None:
    """Old `.tmp-mlvc-*` files in the work tree, under the lock every work-tree update holds (so none is in
    flight), after interrupted updates were finished or undone (a dry run only skips the files they name)."""
    from .workfiles import SKIP_DIRS
    from .worktree import WORKTREE_LOCK, pending, recover

    try:
        lock = lockfile.acquire(os.path.join(repo.dir, WORKTREE_LOCK), "the work tree", wait=1.0)
    except LockBusyError:  # a checkout in progress: its temp files are live; the next gc looks again
        result.worktree_busy = True
        return
    with lock:
        if not result.dry_run:
            result.recovered = recover(repo, locked=True)
        journaled = _journaled_temps(pending(repo))
        manifest = _head_manifest(repo)
        if manifest is None:
            return
        # (folder relative to the root, recursive?): each tracked folder, the folder of each tracked file, and
        # the top folder (a checkout stages a file there when the file's own folder does not exist yet).
        scans: dict[str, bool] = {"": "." in manifest.roots}
        for root in manifest.roots:
            if root != ".":
                scans.setdefault(root, True)
                parent = root.rsplit("/", 1)[0] if "/" in root else ""
                scans.setdefault(parent, False)
        for rel, recursive in sorted(scans.items()):
            fd = _open_folder(repo.root, rel)
            if fd is None:
                continue
            try:
                walker = (os.fwalk(".", dir_fd=fd, follow_symlinks=False) if recursive
                          else [(".", [], [n for n in os.listdir(fd)], fd)])
                for folder, dirs, files, dirfd in walker:
                    dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                    for name in sorted(files):
                        sub = os.path.normpath(os.path.join(rel, folder, name)).replace(os.sep, "/")
                        if name.startswith(TMP_PREFIX) and sub not in journaled and sub not in result.removed_temp:
                            _remove_temp(result, dirfd, name, sub, cutoff, regular_only=True)
            finally:
                os.close(fd)


def _open_folder(root: str, rel: str) -> int | None:
    """A descriptor of the folder `rel` under `root`, opened one component at a time with O_NOFOLLOW; None
    when it is missing, a file, or passes through a symlink (never followed)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in rel.split("/") if rel else []:
        try:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nfd
    return fd


def _journaled_temps(journals: list[str]) -> set[str]:
    """Temp files named by the journals of interrupted work-tree updates (relative to the root when the
    update was in place): recovery needs them."""
    import json

    out: set[str] = set()
    for path in journals:
        try:
            with open(path, "rb") as f:
                out.update(str(r[0]) for r in json.loads(f.read()).get("renames", []))
        except (OSError, ValueError, AttributeError, TypeError, IndexError):
            continue
    return out


def _head_manifest(repo: Repo) -> Manifest | None:
    head = repo.head()
    return repo.read_manifest(repo.read_commit(head).manifest, resolve=False) if head else None


# -- locks --------------------------------------------------------------------------------------------


def clear_stale_locks(repo: Repo, own: str, result: GcResult) -> None:
    """Locks whose holder died (never a live one, nor one held from another host); none under the scratch
    folder, where a lock-named file is a checked-out file, not ours."""
    scratch = os.path.join(repo.dir, SCRATCH) + os.sep
    for path in lockfile.find_locks(repo.dir):
        if path == own or path.startswith(scratch) or not lockfile.is_stale(path):
            continue
        if not result.dry_run:
            if not lockfile.break_stale(path) or os.path.lexists(path):
                continue
            faults.point("gc.lock_cleared")
        result.locks_cleared += 1
        result.cleared_locks.append(os.path.relpath(path, repo.root))
