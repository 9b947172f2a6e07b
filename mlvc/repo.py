"""Repo: open, init or discover a repository, and the operations on it as methods.

A repository is a folder (the root) holding `.mlvc/`; checkpoint paths are stored relative to the root.
The methods are thin: each operation lives in its own module under `mlvc/ops/`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from . import config as _config
from .chunking import Pipeline
from .errors import CorruptObjectError, NotARepositoryError, PathError, RepositoryExistsError
from .objects import Commit, Manifest, parse_object
from .progress import NULL, Progress
from .refs import HEADS, RefStore
from .store import LooseObjectStore

MLVC_DIR = ".mlvc"


class Repo:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, MLVC_DIR)
        if not os.path.isfile(os.path.join(self.dir, "HEAD")):
            raise NotARepositoryError(self.root)
        self.config = _config.Config.load(_config.config_path(self.dir))
        self.store = LooseObjectStore(os.path.join(self.dir, "objects"), level=self.config.zstd_level,
                                      keyframe_interval=self.config.keyframe_interval,
                                      cache_bytes=self.config.cache_mb << 20)
        self.refs = RefStore(self.dir)

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str = ".", branch: str = "main") -> Repo:
        from .refs import check_name
        from .util import atomic_write_bytes

        root = os.path.abspath(path)
        mlvc_dir = os.path.join(root, MLVC_DIR)
        if os.path.exists(os.path.join(mlvc_dir, "HEAD")):
            raise RepositoryExistsError(root)
        check_name(branch)
        for sub in ("objects", "refs/heads", "refs/tags", "logs", "tmp"):
            os.makedirs(os.path.join(mlvc_dir, sub), exist_ok=True)
        _config.write_default(_config.config_path(mlvc_dir))
        atomic_write_bytes(os.path.join(mlvc_dir, "HEAD"), f"ref: {HEADS}{branch}\n".encode())  # written last
        return cls(root)

    @classmethod
    def open(cls, path: str = ".") -> Repo:
        return cls(path)

    @classmethod
    def discover(cls, start: str = ".") -> Repo:
        """The repository containing `start`, looking upward like git (the MLVC_REPO environment variable overrides)."""
        env = os.environ.get("MLVC_REPO")
        if env:
            return cls(env)
        here = os.path.abspath(start)
        while True:
            if os.path.isfile(os.path.join(here, MLVC_DIR, "HEAD")):
                return cls(here)
            parent = os.path.dirname(here)
            if parent == here:
                raise NotARepositoryError(os.path.abspath(start))
            here = parent

    # -- objects ---------------------------------------------------------------------------------------
    def read_commit(self, oid: str) -> Commit:
        return Commit.from_dict(parse_object(self.store.get(oid), oid, "commit"), oid)

    def read_manifest(self, oid: str) -> Manifest:
        try:
            return Manifest.from_dict(parse_object(self.store.get(oid), oid, "manifest"))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CorruptObjectError):
                raise
            raise CorruptObjectError(oid, f"malformed manifest ({e})") from None

    def is_commit(self, oid: str) -> bool:
        try:
            if self.store.header(oid).raw_length > 1 << 20:
                return False
            self.read_commit(oid)
            return True
        except Exception:
            return False

    def write_manifest(self, manifest: Manifest) -> str:
        """Store a manifest, after checking it reads back: a tree no command could read never gets an id
        that a commit (and so a ref) could point at."""
        data = manifest.to_bytes()
        Manifest.from_dict(json.loads(data))
        return self.store.put(data).id

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held while an operation writes objects that no ref names yet (commit, revert, merge): a lock file
        under `.mlvc/inflight/` whose age tells `mlvc gc` to keep every object younger than the oldest such
        operation, so even `gc --prune=now` never sweeps the objects of a commit in flight."""
        from . import lockfile
        from .ops.gc import INFLIGHT_DIR

        folder = os.path.join(self.dir, INFLIGHT_DIR)
        os.makedirs(folder, exist_ok=True)
        with lockfile.locked(os.path.join(folder, f"{uuid.uuid4().hex}.lock"), "an object write"):
            yield

    def write_commit(self, commit: Commit) -> str:
        commit.id = self.store.put(commit.to_bytes()).id
        return commit.id

    def pipeline(self, store: bool = True, progress: Progress = NULL, chunk_size: int | None = None) -> Pipeline:
        return Pipeline(self.store if store else None, chunk_size or self.config.chunk_size,
                        self.config.threads or None, progress, os.path.join(self.dir, "tmp"))

    # -- refs ------------------------------------------------------------------------------------------
    def head(self) -> str | None:
        """The commit HEAD points at, None before the first commit."""
        return self.refs.resolve("HEAD")

    def head_branch(self) -> str | None:
        """The short name of the current branch, None when HEAD is detached."""
        target = self.refs.head_target()
        return target[len(HEADS):] if target and target.startswith(HEADS) else None

    def resolve(self, rev: str) -> str:
        from .revparse import resolve

        return resolve(self, rev)

    def author(self) -> str:
        return os.environ.get("MLVC_AUTHOR") or self.config.user_name or getpass.getuser()

    # -- paths -----------------------------------------------------------------------------------------
    def rel_path(self, path: str, cwd: str | None = None) -> str:
        """A user's path (relative to cwd or absolute) as a stored path relative to the root."""
        full = os.path.abspath(os.path.join(cwd or os.getcwd(), path))
        rel = os.path.relpath(full, self.root)
        if rel == os.curdir:
            return "."
        if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
            raise PathError(f"{path} is outside the repository at {self.root}")
        rel = rel.replace(os.sep, "/")
        if rel.split("/")[0] == MLVC_DIR:
            raise PathError(f"{path} is inside {MLVC_DIR}/, which mlvc manages itself")
        return rel

    def abs_path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/")) if rel != "." else self.root

    # -- operations (each lives in mlvc/ops/) ----------------------------------------------------------
    def commit(self, obj: Any = None, message: str = "", metadata: dict | None = None, *,
               paths: Iterable[str] | None = None, path: str | None = None, as_blob: Iterable[str] = (),
               allow_empty: bool = False, progress: Progress = NULL):
        from .ops.commit import commit

        return commit(self, obj, message, metadata, paths=paths, path=path, as_blob=as_blob,
                      allow_empty=allow_empty, progress=progress)

    def status(self, progress: Progress = NULL):
        from .ops.status import status

        return status(self, progress=progress)

    def log(self, rev: str = "HEAD", n: int | None = None) -> list[Commit]:
        from .ops.history import log

        return log(self, rev, n)

    def show(self, rev: str = "HEAD"):
        from .ops.history import show

        return show(self, rev)

    def checkout(self, rev: str, output: str | None = None, force: bool = False, progress: Progress = NULL,
                 tensors: Iterable[str] | str | None = None):
        """Check out `rev`; with `tensors` (globs), restore just those tensors into the working checkpoint."""
        from .ops.checkout import checkout

        return checkout(self, rev, output=output, force=force, progress=progress, tensors=tensors)

    def switch(self, branch: str, create: bool = False, start: str = "HEAD", force: bool = False,
               progress: Progress = NULL):
        from .ops.checkout import switch

        return switch(self, branch, create=create, start=start, force=force, progress=progress)

    def load(self, rev: str = "HEAD", tensors: Iterable[str] | None = None, framework: str | None = None) -> dict:
        from .ops.load import load

        return load(self, rev, tensors, framework)

    def fsck(self, progress: Progress = NULL):
        from .ops.fsck import fsck

        return fsck(self, progress=progress)

    def gc(self, prune=None, prune_temp=None, dry_run: bool = False, progress: Progress = NULL):
        """Delete unreachable objects older than the grace period (`prune`: "now", "2.weeks.ago", seconds...;
        default `gc.grace`, 2 weeks), old temp files (`prune_temp`, default `gc.temp_grace`, 1 day) and stale
        locks; a GcResult. `dry_run` reports what would go and deletes nothing."""
        from .ops.gc import gc

        return gc(self, prune=prune, prune_temp=prune_temp, dry_run=dry_run, progress=progress)

    # evaluation ledger (mlvc/ledger.py, mlvc/tasks.py, ops/evalrun.py, ops/evals.py, ops/report.py)
    @property
    def ledger(self):
        from .ledger import Ledger

        return Ledger(os.path.join(self.dir, "ledger"))

    def tasks(self) -> dict:
        from .tasks import load_tasks

        return load_tasks(self)

    def eval_run(self, revs: Iterable[str] | None = None, tasks: Iterable[str] | None = None, force: bool = False,
                 progress: Progress = NULL, on_outcome=None):
        from .ops.evalrun import run

        return run(self, list(revs) if revs else None, list(tasks) if tasks else None, force, progress, on_outcome)

    def record_eval(self, rev: str, task: str, metrics: dict[str, float], **kwargs):
        from .ops.evalrun import record

        return record(self, rev, task, metrics, **kwargs)

    def eval_show(self, rev_range: str | None = None, include_all: bool = False, tasks: Iterable[str] | None = None):
        from .ops.evals import effect_table

        return effect_table(self, rev_range, include_all, list(tasks) if tasks else None)

    def eval_compare(self, a: str, b: str, tasks: Iterable[str] | None = None):
        from .ops.evals import compare

        return compare(self, a, b, list(tasks) if tasks else None)

    def report_data(self, rev: str = "HEAD", max_commits: int = 200):
        """What the HTML report shows: history, effect table, layer diffs, refs (an ops.report.ReportData)."""
        from .ops.report import report_data

        return report_data(self, rev, max_commits)

    def report(self, output: str, rev: str = "HEAD", max_commits: int = 200):
        """Write the HTML report to `output` (a ReportResult). A convenience for notebooks and scripts: the one
        library method that reaches up into mlvc.render (lazily); everything it renders is report_data()."""
        from .render.report import require, write_report

        require()
        return write_report(self.report_data(rev, max_commits), output)

    # diff, rollback, merge (mlvc/ops/diff.py, revert.py, reset.py, merge.py, restore.py)
    def diff(self, a: str | None = "HEAD", b: str | None = None, tensors: Iterable[str] | str | None = None,
             progress: Progress = NULL):
        """Tensor-by-tensor comparison of commit `a` with commit `b` (None: the working checkpoint)."""
        from .ops.diff import diff

        return diff(self, a, b, tensors=tensors, progress=progress)

    def revert(self, rev: str, mainline: int | None = None, message: str | None = None,
               progress: Progress = NULL):
        from .ops.revert import revert

        return revert(self, rev, mainline=mainline, message=message, progress=progress)

    def reset(self, rev: str, hard: bool = False, force: bool = False, progress: Progress = NULL):
        from .ops.reset import reset

        return reset(self, rev, hard=hard, force=force, progress=progress)

    def reflog(self, ref: str = "HEAD", n: int | None = None):
        from .ops.reset import reflog

        return reflog(self, ref, n)

    def merge(self, rev: str, strategy: str | None = None, scale: float | None = None, message: str | None = None,
              progress: Progress = NULL):
        from .ops.merge import merge

        return merge(self, rev, strategy=strategy, scale=scale, message=message, progress=progress)

    def restore(self, rev: str, tensors: Iterable[str] | str, progress: Progress = NULL):
        """Write the named tensors (globs) as they are in `rev` into the working checkpoint; HEAD stays."""
        from .ops.restore import restore

        return restore(self, rev, tensors, progress=progress)

    # branches and tags
    def branches(self) -> dict[str, str]:
        return self.refs.list(HEADS)

    def tags(self) -> dict[str, str]:
        from .refs import TAGS

        return self.refs.list(TAGS)

    def create_branch(self, name: str, start: str = "HEAD", force: bool = False) -> str:
        from .ops.branches import create_ref

        return create_ref(self, "branch", name, start, force)

    def delete_branch(self, name: str) -> str:
        from .ops.branches import delete_ref

        return delete_ref(self, "branch", name)

    def create_tag(self, name: str, rev: str = "HEAD", force: bool = False) -> str:
        from .ops.branches import create_ref

        return create_ref(self, "tag", name, rev, force)

    def delete_tag(self, name: str) -> str:
        from .ops.branches import delete_ref

        return delete_ref(self, "tag", name)
