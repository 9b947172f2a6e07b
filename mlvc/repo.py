"""Repo: open, init or discover a repository, and the operations on it as methods.

A repository is a folder (the root) holding `.mlvc/`; checkpoint paths are stored relative to the root.
The Repo is the one way in, for the command line and for users: its own methods open the repository and
read its objects, refs and paths; every operation is a function in mlvc/ops/ (or revparse, tasks) taking
the Repo first, bound as a method by name (`_Operation`), so its signature is written only there.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import config as _config
from .bundles import resolve_bundles, small_tensor_ids, store_bundles
from .chunking import IngestStats, Pipeline
from .errors import CorruptObjectError, MlvcError, NotARepositoryError, PathError, RepositoryExistsError
from .objects import Commit, Manifest, parse_object
from .progress import NULL, Progress
from .rawcache import RawCache
from .refs import HEADS, TAGS, RefStore
from .store import LooseObjectStore

if TYPE_CHECKING:  # for the type checker only (Repo's operations below); mlvc.repo imports none of them
    import mlvc.config
    import mlvc.ops.bisect
    import mlvc.ops.branches
    import mlvc.ops.check
    import mlvc.ops.checkout
    import mlvc.ops.commit
    import mlvc.ops.diff
    import mlvc.ops.evalrun
    import mlvc.ops.evals
    import mlvc.ops.fsck
    import mlvc.ops.gc
    import mlvc.ops.history
    import mlvc.ops.load
    import mlvc.ops.merge
    import mlvc.ops.report
    import mlvc.ops.reset
    import mlvc.ops.restore
    import mlvc.ops.revert
    import mlvc.ops.stats
    import mlvc.ops.status
    import mlvc.ops.sync
    import mlvc.ops.track
    import mlvc.revparse
    import mlvc.tasks

    from .ledger import Ledger
    from .render.report import ReportResult

MLVC_DIR = ".mlvc"
OPERATIONS: dict[str, _Operation] = {}  # method name -> where its function lives, for tests and introspection


class _Operation:
    """A Repo method that is a function taking the Repo first (`commit(repo, obj, message, ...)` in
    mlvc/ops/commit.py), bound the way DVC's Repo binds its operations (`class Repo: from dvc.repo.add import
    add`), so that the signature and the docstring are written once, in the function.

    Unlike DVC's class-body imports, the module is imported when the method is first used, not when mlvc.repo
    is: opening a repository and `mlvc --help` load no operation module, and a command loads only the ones
    it runs. On first use the function itself replaces this placeholder on the class, so `Repo.commit is
    mlvc.ops.commit.commit` from then on, and a call costs what any method call costs."""

    def __init__(self, module: str, function: str | None = None, static: bool = False):
        self.module = module  # under mlvc: "ops.commit", "revparse"
        self.function = function or ""  # its name there; by default the method's (set by __set_name__)
        self.static = static  # a plain function on the class (no Repo argument)

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner, self.name = owner, name
        self.function = self.function or name
        OPERATIONS[name] = self

    def resolve(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(importlib.import_module(f"{__package__}.{self.module}"), self.function)
        setattr(self.owner, self.name, staticmethod(fn) if self.static else fn)
        return fn

    def __get__(self, obj: object, objtype: type | None = None) -> Callable[..., Any]:
        fn = self.resolve()
        return fn if self.static or obj is None else fn.__get__(obj, objtype)


class Repo:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, MLVC_DIR)
        if not os.path.isfile(os.path.join(self.dir, "HEAD")):
            raise NotARepositoryError(self.root)
        self.config = _config.Config.load(_config.config_path(self.dir))
        self.store = LooseObjectStore(os.path.join(self.dir, "objects"), level=self.config.zstd_level,
                                      keyframe_interval=self.config.keyframe_interval,
                                      cache_bytes=self.config.cache_mb << 20,
                                      skip_deltas=bool(self.config.skip_deltas),
                                      raw_cache=RawCache(os.path.join(self.dir, "cache", "raw"),
                                                         self.config.raw_cache_mb << 20)
                                      if self.config.raw_cache_mb else None)
        self.refs = RefStore(self.dir)

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str = ".", branch: str = "main", exist_ok: bool = False) -> Repo:
        """Create a repository at `path` (RepositoryExistsError when there is one). With `exist_ok`, an
        existing repository is reinitialized as `git init` does: folders it lacks are made again (and a
        missing config.toml written), while HEAD, refs, objects, reflogs, the ledger and an existing
        config.toml are left exactly as they are; `branch` then only applies to a new repository."""
        from .refs import check_name
        from .util import atomic_write_bytes

        root = os.path.abspath(path)
        mlvc_dir = os.path.join(root, MLVC_DIR)
        exists = os.path.exists(os.path.join(mlvc_dir, "HEAD"))
        if exists and not exist_ok:
            raise RepositoryExistsError(root)
        if not exists:
            check_name(branch)
        for sub in ("objects", "refs/heads", "refs/tags", "logs", "tmp"):
            os.makedirs(os.path.join(mlvc_dir, sub), exist_ok=True)
        if not exists or not os.path.lexists(_config.config_path(mlvc_dir)):
            _config.write_default(_config.config_path(mlvc_dir))
        if not exists:
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

    def read_manifest(self, oid: str, resolve: bool = True) -> Manifest:
        """A manifest, its small tensors' hashes read from their bundles (bundles.resolve_bundles). `resolve=False`
        skips that: for a caller that needs only the file entries and the ids of the objects they name
        (`FileEntry.object_ids`), whose bundled tensors then have no hash and no chunk."""
        try:
            m = Manifest.from_dict(parse_object(self.store.get(oid), oid, "manifest"))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CorruptObjectError):
                raise
            raise CorruptObjectError(oid, f"malformed manifest ({e})") from None
        return resolve_bundles(self.store, m) if resolve else m

    def is_commit(self, oid: str) -> bool:
        try:
            if self.store.header(oid).raw_length > 1 << 20:
                return False
            self.read_commit(oid)
            return True
        except Exception:
            return False

    def write_manifest(self, manifest: Manifest, base: Manifest | None = None, stats: IngestStats | None = None) -> str:
        """Store a manifest, after checking it reads back: a tree no command could read never gets an id
        that a commit (and so a ref) could point at. Its small tensors go into bundles first (bundles.py; a
        changed bundle is delta-coded against `base`'s, the tree it derives from): `manifest.files` is
        replaced by the entries as stored, and what was stored is added to `stats`."""
        manifest.files = store_bundles(self.store, manifest, base, stats).files
        data = manifest.to_bytes()
        Manifest.from_dict(json.loads(data))
        oid = self.store.put(data).id
        if self.store.raw_cache is not None:  # about the last two trees' objects (mlvc/rawcache.py)
            self.store.raw_cache.trim(2 * sum(f.size for f in manifest.files))
        # From now on the store knows the small tensors of this tree and its base only: a script committing in
        # a loop would otherwise keep every tree's (100,000 ids a commit for some checkpoints). A tree read
        # later is read again (Repo.read_manifest), which tells the store anew.
        self.store.retain_slices(small_tensor_ids(manifest) | (small_tensor_ids(base) if base else set()))
        return oid

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held while an operation writes objects that no ref names yet (commit, revert, merge): a lock file
        under `.mlvc/inflight/` whose age tells `mlvc gc` to keep every object younger than the oldest such
        operation, so even `gc --prune=now` never sweeps the objects of a commit in flight."""
        from . import lockfile

        folder = os.path.join(self.dir, lockfile.INFLIGHT_DIR)
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

    # -- refs and ledger as they are -------------------------------------------------------------------
    def branches(self) -> dict[str, str]:
        return self.refs.list(HEADS)

    def tags(self) -> dict[str, str]:
        """Tag name -> the commit it names (an annotated tag peeled to its commit). A tag whose object is missing
        or damaged is left out here; `mlvc tag` (list_tags) lists it with its error and `mlvc fsck` reports it."""
        out = {}
        for name, oid in self.refs.list(TAGS).items():
            with contextlib.suppress(MlvcError):
                out[name] = self.peel(oid)
        return out

    @property
    def ledger(self) -> Ledger:
        """The evaluation ledger (`.mlvc/ledger/`); pyarrow is imported when it is first read or written."""
        from .ledger import Ledger

        return Ledger(os.path.join(self.dir, "ledger"))

    # -- operations ------------------------------------------------------------------------------------
    # Each is a function whose first parameter is the Repo, bound here as a method: its signature and docstring
    # are written once, in its module (help(Repo.diff) shows them). Verbs live in mlvc/ops/.
    if TYPE_CHECKING:
        # What the type checker sees: the functions themselves, bound as methods, so that `repo.commit(...)` is
        # checked against commit()'s own signature. At run time the `_Operation`s below bind the same functions
        # (tests/test_layers.py keeps the two lists equal).
        resolve = mlvc.revparse.resolve
        commit = mlvc.ops.commit.commit
        status = mlvc.ops.status.status
        rm = mlvc.ops.track.rm
        log = mlvc.ops.history.log
        show = mlvc.ops.history.show
        checkout = mlvc.ops.checkout.checkout
        switch = mlvc.ops.checkout.switch
        load = mlvc.ops.load.load
        fsck = mlvc.ops.fsck.fsck
        gc = mlvc.ops.gc.gc
        parse_grace = staticmethod(mlvc.ops.gc.parse_grace)
        stats = mlvc.ops.stats.stats
        diff = mlvc.ops.diff.diff
        diff_commit = mlvc.ops.diff.diff_commit
        revert = mlvc.ops.revert.revert
        reset = mlvc.ops.reset.reset
        reflog = mlvc.ops.reset.reflog
        merge = mlvc.ops.merge.merge
        remote_add = mlvc.ops.sync.remote_add
        remote_remove = mlvc.ops.sync.remote_remove
        remote_list = mlvc.ops.sync.remote_list
        remote_prune = mlvc.ops.sync.remote_prune
        push = mlvc.ops.sync.push
        fetch = mlvc.ops.sync.fetch
        pull = mlvc.ops.sync.pull
        clone = mlvc.ops.sync.clone
        restore = mlvc.ops.restore.restore
        create_branch = mlvc.ops.branches.create_branch
        delete_branch = mlvc.ops.branches.delete_branch
        create_tag = mlvc.ops.branches.create_tag
        delete_tag = mlvc.ops.branches.delete_tag
        list_tags = mlvc.ops.branches.list_tags
        read_tag = mlvc.revparse.read_tag
        peel = mlvc.revparse.peel
        tag_of = mlvc.revparse.tag_of
        config_get = mlvc.config.get_setting
        config_set = mlvc.config.set_setting
        config_list = mlvc.config.list_settings
        tasks = mlvc.tasks.load_tasks
        eval_run = mlvc.ops.evalrun.run
        record_eval = mlvc.ops.evalrun.record
        eval_show = mlvc.ops.evals.effect_table
        eval_compare = mlvc.ops.evals.compare
        report_data = mlvc.ops.report.report_data
        check = mlvc.ops.check.check
        bisect = mlvc.ops.bisect.bisect
        merge_base = mlvc.ops.merge.merge_base
    else:
        resolve = _Operation("revparse")  # a revision (HEAD~2, main^, a1b2c3d, REF@{N}) -> commit id
        commit = _Operation("ops.commit")
        status = _Operation("ops.status")
        rm = _Operation("ops.track")  # untrack paths; the next commit records it
        log = _Operation("ops.history")
        show = _Operation("ops.history")
        checkout = _Operation("ops.checkout")
        switch = _Operation("ops.checkout")
        load = _Operation("ops.load")
        fsck = _Operation("ops.fsck")
        gc = _Operation("ops.gc")
        parse_grace = _Operation("ops.gc", static=True)  # gc's "2.weeks.ago" syntax, for front ends that check it early
        stats = _Operation("ops.stats")
        # diff and rollback
        diff = _Operation("ops.diff")
        diff_commit = _Operation("ops.diff")
        revert = _Operation("ops.revert")
        reset = _Operation("ops.reset")
        reflog = _Operation("ops.reset")
        merge = _Operation("ops.merge")
        # remotes (ops/sync.py): a folder or s3://bucket/prefix
        remote_add = _Operation("ops.sync")
        remote_remove = _Operation("ops.sync")
        remote_list = _Operation("ops.sync")
        remote_prune = _Operation("ops.sync")
        push = _Operation("ops.sync")
        fetch = _Operation("ops.sync")
        pull = _Operation("ops.sync")
        clone = _Operation("ops.sync")  # Repo.init(path).clone(url): fill a new repository from a remote
        restore = _Operation("ops.restore")
        # branches and tags (listing them is branches() / tags() above)
        create_branch = _Operation("ops.branches")
        delete_branch = _Operation("ops.branches")
        create_tag = _Operation("ops.branches")
        delete_tag = _Operation("ops.branches")
        list_tags = _Operation("ops.branches")  # tags with their annotated tag objects
        read_tag = _Operation("revparse")  # an annotated tag object by id
        peel = _Operation("revparse")  # an object id -> the commit it stands for (a tag's commit)
        tag_of = _Operation("revparse")  # the annotated tag a revision names itself, or None (for show)
        config_get = _Operation("config", "get_setting")  # `mlvc config get/set/list`
        config_set = _Operation("config", "set_setting")
        config_list = _Operation("config", "list_settings")
        # the evaluation ledger (the Ledger itself is the `ledger` property above)
        tasks = _Operation("tasks", "load_tasks")
        eval_run = _Operation("ops.evalrun", "run")
        record_eval = _Operation("ops.evalrun", "record")
        eval_show = _Operation("ops.evals", "effect_table")
        eval_compare = _Operation("ops.evals", "compare")
        report_data = _Operation("ops.report")
        # the CI gate (ops/check.py, ops/bisect.py) and the merge base it compares against
        check = _Operation("ops.check")
        bisect = _Operation("ops.bisect")
        merge_base = _Operation("ops.merge")

    def report(self, output: str, rev: str = "HEAD", max_commits: int = 200) -> ReportResult:
        """Write the HTML report to `output` (a ReportResult). A convenience for notebooks and scripts: the one
        library method that reaches up into mlvc.render (lazily; the layer contract lists this one import as
        its only exception); everything it renders is report_data()."""
        from .render.report import require, write_report

        require()
        return write_report(self.report_data(rev, max_commits), output)
