"""The working checkpoint: which files the tracked paths cover now, and writing files into the tree."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from ..chunking import Pipeline
from ..errors import PathError
from ..objects import FileEntry, check_rel_path
from ..snapshot import write_entry
from ..util import fsync_dir

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


class StagedFiles:
    """New files for several targets, made visible all together or not at all.

    Phase 1: `open(target)` (or `write(pipe, entry, target)`, which also verifies the file's hash) writes a
    temp file beside its target and fsyncs it; nothing a reader can see changes. Phase 2: `commit()` renames
    every temp file over its target, then fsyncs their folders (util.atomic_writer's durable sequence, with
    the rename deferred until every file is written). Used as a context manager: leaving the block without
    `commit()` (a bad object, a ref that moved under us) removes every temp file and the folders made for
    them, so nothing changed. Between the two phases a caller moves its ref (see checkout.apply_worktree).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []  # (temp file, target)
        self._made: list[str] = []  # folders created for targets, parents first
        self._committed = False

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc) -> None:
        if not self._committed:
            self.abort()

    def _folder(self, target: str) -> str:
        folder = os.path.dirname(os.path.abspath(target))
        missing, f = [], folder
        while not os.path.isdir(f):
            missing.append(f)
            f = os.path.dirname(f)
        os.makedirs(folder, exist_ok=True)
        self._made.extend(reversed(missing))
        return folder

    @contextlib.contextmanager
    def open(self, target: str, mode: int = 0o644) -> Iterator[BinaryIO]:
        """A temp file for `target`, flushed and fsynced when the block ends (renamed only by commit())."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-mlvc-", dir=self._folder(target))
        self.pending.append((tmp, target))
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)

    def write(self, pipe: Pipeline, entry: FileEntry, target: str) -> None:
        """Stage the file `entry` describes for `target`, verified against its committed hash."""
        with self.open(target) as f:
            write_entry(pipe, entry, f)

    def commit(self) -> None:
        """Rename every temp file over its target, then make the renames (and new folders) durable."""
        folders: dict[str, None] = {}
        for tmp, target in self.pending:
            os.replace(tmp, target)
            folders[os.path.dirname(os.path.abspath(target))] = None
        self._committed = True
        for folder in self._made:
            folders[os.path.dirname(folder)] = None
        for folder in folders:
            fsync_dir(folder)
        self.pending = []

    def abort(self) -> None:
        """Remove every temp file not yet renamed, and the folders made for them when they are empty."""
        for tmp, _target in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.pending = []
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._made = []


def write_file(pipe: Pipeline, entry: FileEntry, target: str) -> None:
    """Write one file atomically: a temp file beside the target, verified, fsynced, then renamed."""
    with StagedFiles() as staged:
        staged.write(pipe, entry, target)
        staged.commit()
