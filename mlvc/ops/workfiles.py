"""The working files: which files the tracked paths hold, and each one's entry (from the stat cache, or hashed).

Below the work-tree transaction (ops/worktree.py) and the verbs: status, commit, diff against the working
checkpoint and the transaction's plan all list and hash the working files through here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import PathError
from ..objects import FileEntry, Manifest
from ..progress import NULL, Progress
from ..snapshot import snapshot_path
from ..statcache import StatCache
from ..util import TMP_PREFIX

if TYPE_CHECKING:
    from ..repo import Repo

SKIP_DIRS = {".mlvc", ".git", ".hg", ".svn", "__pycache__"}
MAX_DEPTH = 255  # folders below the root, as objects.check_rel_path allows


# -- listing the tracked files ---------------------------------------------------------------------------


def list_files(repo: Repo, roots: list[str]) -> list[str]:
    """Every file under the tracked paths (a path may be a file or a folder), sorted, root-relative.

    Symlinks: a symlinked file is read through (its content is committed; checkout writes a regular file);
    a symlinked folder is never followed: inside a tracked folder it is refused with a PathError, as is a
    tracked path that passes through one (it could pull in files from anywhere on the machine)."""
    out: set[str] = set()
    for root in roots:
        full = repo.abs_path(root)
        _check_no_symlinked_folder(repo.root, root)
        if os.path.isdir(full) and not os.path.islink(full):
            out.update(_walk_files(repo.root, root))
        elif os.path.isfile(full):
            out.add(root)
    return sorted(out)


def _walk_files(top: str, root: str) -> Iterator[str]:
    """Files under the folder `root` (relative to `top`), iteratively (os.walk recurses once per level, and a
    crafted tree thousands of folders deep would end in RecursionError); deeper than a stored path may be is
    a PathError."""
    stack = [root]
    while stack:
        rel = stack.pop()
        folder = os.path.join(top, *rel.split("/")) if rel != "." else top
        if rel.count("/") >= MAX_DEPTH:
            raise PathError(f"{rel[:200]}...: folders nested deeper than {MAX_DEPTH} levels cannot be committed")
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            child = e.name if rel == "." else f"{rel}/{e.name}"
            if e.is_dir(follow_symlinks=False):
                if e.name not in SKIP_DIRS:
                    stack.append(child)
            elif e.is_symlink() and os.path.isdir(e.path):
                if e.name not in SKIP_DIRS:
                    raise PathError(f"{child} is a symlink to a folder ({os.path.realpath(e.path)}): mlvc never "
                                    "follows symlinked folders; commit the files it holds by their own path, or "
                                    "move it out of the tracked folder")
            elif not e.name.startswith(TMP_PREFIX) and e.is_file():
                yield child


def _check_no_symlinked_folder(root: str, rel: str) -> None:
    if rel == ".":
        return
    parts = rel.split("/")
    cur = root
    for i, p in enumerate(parts):
        cur = os.path.join(cur, p)
        if os.path.islink(cur) and (i < len(parts) - 1 or os.path.isdir(cur)):
            raise PathError(f"{'/'.join(parts[:i + 1])} is a symlink to a folder ({os.path.realpath(cur)}): mlvc "
                            "never follows symlinked folders; commit the real folder's path instead")


# -- the working files' entries ---------------------------------------------------------------------------


def working_entries(repo: Repo, manifest: Manifest | None, roots: list[str], cache: StatCache,
                    progress: Progress = NULL) -> dict[str, FileEntry]:
    """For each working file: the committed entry when the stat cache (or a hash) shows it unchanged,
    else a fresh hash-only snapshot of it."""
    committed = {f.path: f for f in manifest.files} if manifest else {}
    out: dict[str, FileEntry] = {}
    chunk_size = manifest.chunk_size if manifest else repo.config.chunk_size
    with repo.pipeline(store=False, progress=progress, chunk_size=chunk_size) as pipe:
        for rel in list_files(repo, roots):
            full = repo.abs_path(rel)
            old = committed.get(rel)
            if old is not None and cache.lookup(rel, full) == old.hash:
                out[rel] = old
                continue
            seen = cache.stat_now(full)  # before hashing: a write meanwhile shows as a changed stat
            entry = snapshot_path(pipe, full, rel, as_blob=old is not None and old.kind == "blob")
            cache.record(rel, full, entry.hash, seen)
            out[rel] = entry
    return out
