"""The working checkpoint: which files the tracked paths cover now, and writing files into the tree."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING

from ..chunking import Pipeline
from ..errors import PathError
from ..objects import FileEntry, check_rel_path
from ..snapshot import write_entry

if TYPE_CHECKING:
    from ..repo import Repo

SKIP_DIRS = {".mlvc", ".git", ".hg", ".svn", "__pycache__"}


def list_files(repo: Repo, roots: list[str]) -> list[str]:
    """Every file under the tracked paths (a path may be a file or a folder), sorted, root-relative."""
    out: set[str] = set()
    for root in roots:
        full = repo.abs_path(root)
        if os.path.isfile(full):
            out.add(root)
        elif os.path.isdir(full):
            for folder, dirs, files in os.walk(full):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                for name in files:
                    if name.startswith(".tmp-"):
                        continue
                    path = os.path.join(folder, name)
                    if os.path.isfile(path):
                        out.add(os.path.relpath(path, repo.root).replace(os.sep, "/"))
    return sorted(out)


def safe_target(base: str, rel: str) -> str:
    """Where a stored path goes under `base`, refusing anything that would land outside it."""
    check_rel_path(rel)
    target = os.path.join(base, *rel.split("/"))
    real_base = os.path.realpath(base)
    real_parent = os.path.realpath(os.path.dirname(target))
    if os.path.commonpath([real_base, real_parent]) != real_base:
        raise PathError(f"refusing to write {rel}: it would land outside {base} (through a symlink?)")
    return target


def write_file(pipe: Pipeline, entry: FileEntry, target: str) -> None:
    """Write one file atomically: a temp file beside the target, verified, fsynced, then renamed."""
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-mlvc-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_entry(pipe, entry, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
