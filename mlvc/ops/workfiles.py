"""The working files: which files the tracked paths hold, and each one's entry (from the stat cache, or hashed).

Below the work-tree transaction (ops/worktree.py) and the verbs: status, commit, diff against the working
checkpoint and the transaction's plan all list and hash the working files through here. It also owns the two
things that decide the *tracked set* (docs/tracking.md): the ignore file `.mlvcignore` (gitignore syntax,
applied where a tracked folder is walked) and the work tree's own state `.mlvc/worktree.json` (paths committed
from memory and not checked out, and untracking by `mlvc rm` that the next commit records); `tracked_set`
turns a parent tree, the named paths and that state into what the next commit keeps, reads and drops.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import lockfile
from ..errors import ConfigError, FormatError, PathError
from ..objects import KIND_BLOB, FileEntry, Manifest, check_rel_path
from ..progress import NULL, Progress
from ..snapshot import History, file_hash, snapshot_path
from ..statcache import StatCache
from ..util import TMP_PREFIX, atomic_write_bytes, is_object_id

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

    from ..repo import Repo

SKIP_DIRS = {".mlvc", ".git", ".hg", ".svn", "__pycache__"}
MAX_DEPTH = 255  # folders below the root, as objects.check_rel_path allows
IGNORE_FILE = ".mlvcignore"  # at the root, gitignore syntax
STATE_FILE = "worktree.json"  # under .mlvc/
STATE_FORMAT = 1
WORKTREE_LOCK = "worktree.lock"  # under .mlvc/: held by every work-tree update and every write of STATE_FILE


def under(path: str, root: str) -> bool:
    """True when `path` is `root` or lies inside it ("." holds everything)."""
    return root == "." or path == root or path.startswith(root + "/")


# -- the ignore file -------------------------------------------------------------------------------------


def ignore_spec(repo: Repo) -> GitIgnoreSpec | None:
    """The patterns of `.mlvcignore` at the root (None without one); a file that is not UTF-8 text or holds
    a pattern gitignore would reject is a ConfigError."""
    path = os.path.join(repo.root, IGNORE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"{IGNORE_FILE} is a folder; it must be a text file of gitignore patterns") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{IGNORE_FILE} is not UTF-8 text; write its patterns in UTF-8") from None
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{IGNORE_FILE}: {e}; fix or remove that pattern") from None


def is_ignored(spec: GitIgnoreSpec | None, rel: str, is_dir: bool = False) -> bool:
    """Whether a folder walk leaves `rel` out: a folder on its way is ignored (as in git, a file inside an
    ignored folder cannot be re-included by a negated pattern), or it is."""
    if spec is None or rel == ".":
        return False
    parts = rel.split("/")
    if any(_dir_ignored(spec, "/".join(parts[:i])) for i in range(1, len(parts))):
        return True
    return _dir_ignored(spec, rel) if is_dir else bool(spec.match_file(rel))


def _dir_ignored(spec: GitIgnoreSpec, rel: str) -> bool:
    """Whether the folder `rel` itself is ignored, as git decides it: by the last pattern that matches the
    folder itself. pathspec's match_file("dir/") would also count a pattern that matches only what is inside
    (`b/**` matches `b/x` but not the folder `b`, so git still walks `b` and `!*.dat` re-includes `b/x.dat`);
    the patterns that match the folder itself are those whose match ends with pathspec's directory mark
    (the `ps_d` group of its gitignore regexes) right after the folder's name. tests/test_tracking.py checks
    this against git (pathspec's own rules differ from git's in rare patterns such as `d/**/`, which it reads
    as `d/`)."""
    path = rel + "/"
    ignored = False
    for pattern in spec.patterns:
        regex = getattr(pattern, "regex", None)
        if pattern.include is None or regex is None:
            continue
        # pathspec searches (a pattern such as `*/` is not anchored): try every start, keep a match of the
        # folder itself (its directory mark at the very end)
        if any((m := regex.match(path, i)) is not None and m.groupdict().get("ps_d") is not None
               and m.end("ps_d") == len(path) for i in range(len(path))):
            ignored = bool(pattern.include)
    return ignored


# -- listing the tracked files ---------------------------------------------------------------------------


def list_files(repo: Repo, roots: list[str], keep: Iterable[str] = ()) -> list[str]:
    """Every file under the tracked paths (a path may be a file or a folder), sorted, root-relative.

    In a folder, files and folders that `.mlvcignore` matches are left out, except the files in `keep`
    (files already tracked stay tracked, as in git); a path named itself (a file root) is always listed.

    Symlinks: a symlinked file is read through (its content is committed; checkout writes a regular file);
    a symlinked folder is never followed: inside a tracked folder it is refused with a PathError, as is a
    tracked path that passes through one (it could pull in files from anywhere on the machine)."""
    out: set[str] = set()
    spec = ignore_spec(repo)
    for root in roots:
        full = repo.abs_path(root)
        _check_no_symlinked_folder(repo.root, root)
        if os.path.isdir(full) and not os.path.islink(full):
            out.update(_walk_files(repo.root, root, spec))
        elif os.path.isfile(full):
            out.add(root)
    for rel in keep:
        if rel not in out and any(under(rel, r) for r in roots) and os.path.isfile(repo.abs_path(rel)):
            _check_no_symlinked_folder(repo.root, rel)
            out.add(rel)
    return sorted(out)


def _walk_files(top: str, root: str, spec: GitIgnoreSpec | None = None) -> Iterator[str]:
    """Files under the folder `root` (relative to `top`) that `spec` does not ignore, iteratively (os.walk
    recurses once per level, and a crafted tree thousands of folders deep would end in RecursionError);
    deeper than a stored path may be is a PathError. A folder that `spec` ignores holds nothing."""
    if is_ignored(spec, root, is_dir=True):
        return
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
                if e.name not in SKIP_DIRS and not (spec is not None and _dir_ignored(spec, child)):
                    stack.append(child)
            elif e.is_symlink() and os.path.isdir(e.path):
                if e.name not in SKIP_DIRS and not (spec is not None and _dir_ignored(spec, child)):
                    raise PathError(f"{child} is a symlink to a folder ({os.path.realpath(e.path)}): mlvc never "
                                    "follows symlinked folders; commit the files it holds by their own path, "
                                    f"move it out of the tracked folder, or list it in {IGNORE_FILE}")
            elif (not e.name.startswith(TMP_PREFIX) and e.is_file()
                  and not (spec is not None and spec.match_file(child))):
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


# -- the work tree's state -------------------------------------------------------------------------------


@dataclass
class WorkState:
    """`.mlvc/worktree.json`: what the work tree holds besides the files themselves (docs/format.md).

    `unmaterialized`: paths HEAD's tree holds that were committed from memory (`repo.commit(state_dict,
    path=...)`) and not checked out since; each maps to the whole-file hash of the older committed copy that
    was on disk then, or None when there was none. `removals`: paths untracked by `mlvc rm` that the next
    commit records as gone."""

    unmaterialized: dict[str, str | None] = field(default_factory=dict)
    removals: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, repo: Repo) -> WorkState:
        """The state as saved; a missing file is the empty state, and so is a damaged one (nothing is lost:
        a path no longer marked shows as deleted and a commit without paths refuses it; a removal no longer
        pending leaves the file tracked)."""
        try:
            with open(os.path.join(repo.dir, STATE_FILE), "rb") as f:
                data = json.loads(f.read())
            return cls._from_dict(data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, PathError):
            return cls()

    @classmethod
    def _from_dict(cls, d: Any) -> WorkState:
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise ValueError("not a work-tree state")
        marks = d["unmaterialized"]
        removals = d["removals"]
        if not isinstance(marks, dict) or not isinstance(removals, list):
            raise ValueError("malformed")
        out = cls()
        for p, h in marks.items():
            if not (h is None or isinstance(h, str) and is_object_id(h)):
                raise ValueError("malformed hash")
            out.unmaterialized[check_rel_path(p)] = h
        out.removals = sorted({p if p == "." else check_rel_path(p) for p in removals})
        return out

    def to_bytes(self) -> bytes:
        return json.dumps({"format": STATE_FORMAT, "unmaterialized": dict(sorted(self.unmaterialized.items())),
                           "removals": sorted(set(self.removals))}, sort_keys=True).encode()

    def stale(self, repo: Repo, rel: str, cache: StatCache | None = None) -> bool:
        """True when the file at `rel` still holds the older committed copy that was on disk when a newer
        version was committed from memory (its content, through the stat cache, is that copy's)."""
        mark = self.unmaterialized.get(rel)
        if mark is None:
            return False
        return disk_hash(repo, rel, cache) == mark

    def excluded(self, path: str, named: Iterable[str] = ()) -> bool:
        """Whether a pending removal takes `path` out of the next commit: it lies under a removed path, and
        no path named in this commit lies between them (naming the removed path itself, or a path inside
        it, tracks it again; naming a folder that contains it does not)."""
        named = list(named)
        return any(under(path, x) and not any(under(path, n) and under(n, x) for n in named)
                   for x in self.removals)


def disk_hash(repo: Repo, rel: str, cache: StatCache | None = None) -> str | None:
    """The whole-file hash of the working file at `rel` (None when there is none), from the stat cache when
    it vouches for the file, else read (and recorded in `cache`, which the caller saves; without one, a
    cache is opened and saved here)."""
    full = repo.abs_path(rel)
    if not os.path.isfile(full):
        return None
    own = cache is None
    cache = cache or StatCache(repo.dir)
    h = cache.lookup(rel, full)
    if h is None:
        seen = cache.stat_now(full)
        try:
            h = file_hash(full)
        except FileNotFoundError:
            return None
        cache.record(rel, full, h, seen)
        if own:
            cache.save()
    return h


@contextlib.contextmanager
def edit_state(repo: Repo, locked: bool = False) -> Iterator[WorkState]:
    """Read, change and save the work-tree state under `.mlvc/worktree.lock` (already held when `locked`);
    saved with the durable write when the block ends without an exception and changed something."""
    if not locked:
        with lockfile.locked(os.path.join(repo.dir, WORKTREE_LOCK), "the work tree", wait=30.0):
            with edit_state(repo, locked=True) as state:
                yield state
        return
    state = WorkState.load(repo)
    before = state.to_bytes()
    yield state
    after = state.to_bytes()
    if after != before:
        path = os.path.join(repo.dir, STATE_FILE)
        if not state.unmaterialized and not state.removals:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            atomic_write_bytes(path, after)


# -- the tracked set -------------------------------------------------------------------------------------


@dataclass
class TrackedSet:
    """What a commit on top of `parent` keeps, reads and drops (docs/tracking.md has the rules)."""

    roots: list[str]  # the new tree's tracked paths
    carried: dict[str, FileEntry]  # entries kept as they are, not read again
    read: list[str]  # working files to snapshot (new, or tracked under a named path)
    removed: list[str] = field(default_factory=list)  # tracked files the new tree drops
    missing: list[str] = field(default_factory=list)  # tracked, gone from the work tree, not untracked
    not_checked_out: list[str] = field(default_factory=list)  # committed from memory, not on disk: carried
    stale: list[str] = field(default_factory=list)  # an older copy on disk, newer one from memory: carried
    untracked: list[str] = field(default_factory=list)  # removed by `mlvc rm --cached`: still on disk


def tracked_set(repo: Repo, parent: Manifest | None, named: list[str] | None, state: WorkState | None,
                walk: bool = True) -> TrackedSet:
    """The next commit's tree, on top of `parent`, with `named` paths (root-relative) given by the user, or
    None for "every tracked path". Files not under a named path are carried over unchanged; under a named
    path, the files in the work tree are read (tracked ones even when `.mlvcignore` matches them), and a
    tracked file gone from it is dropped when its path was named, and `missing` when it was not (a commit
    without paths refuses that). Paths in `state` committed from memory and not checked out, or still
    holding the older copy, are carried over; pending removals leave the tree. `walk=False`: the named paths
    come from memory (nothing is read from the work tree for them)."""
    files = {f.path: f for f in parent.files} if parent else {}
    state = state or WorkState()
    # A removal that untracks nothing of this parent (left by an interrupted tidy-up, or made before HEAD
    # moved elsewhere) takes nothing out of the tree, nor a new file out of the walk.
    live = [x for x in state.removals if any(under(p, x) for p in files) or any(under(r, x) for r in parent.roots)] \
        if parent else []
    state = WorkState(state.unmaterialized, live)
    implicit = named is None
    kept_roots = [r for r in (parent.roots if parent else []) if not state.excluded(r)]
    scope = list(kept_roots) if named is None else list(named)
    explicit = [] if implicit else scope
    out = TrackedSet(_normalize_roots(kept_roots + scope), {}, [])
    in_scope = []
    for p, f in files.items():
        if state.excluded(p, explicit):
            out.removed.append(p)
        elif any(under(p, n) for n in scope):
            in_scope.append(p)
        else:
            out.carried[p] = f
    if not walk:
        return out
    on_disk = {p for p in list_files(repo, scope, keep=in_scope) if not state.excluded(p, explicit)}
    for p in in_scope:
        if p in on_disk and state.unmaterialized.get(p) != files[p].hash and state.stale(repo, p):
            out.stale.append(p)
            out.carried[p] = files[p]
            on_disk.discard(p)
        elif p not in on_disk:
            if p in state.unmaterialized:
                out.not_checked_out.append(p)
                out.carried[p] = files[p]
            elif implicit:
                out.missing.append(p)
            else:
                out.removed.append(p)
    out.read = sorted(on_disk)
    out.untracked = [p for p in out.removed if p in files and os.path.isfile(repo.abs_path(p))
                     and state.excluded(p, explicit)]
    return out


def _normalize_roots(roots: Iterable[str]) -> list[str]:
    """Sorted, without duplicates and without a path inside another one."""
    out: list[str] = []
    for r in sorted(set(roots), key=lambda r: (r != ".", r.count("/"), r)):
        if not any(under(r, o) for o in out):
            out.append(r)
    return sorted(out)


# -- the working files' entries ---------------------------------------------------------------------------


def working_entries(repo: Repo, manifest: Manifest | None, roots: list[str], cache: StatCache,
                    progress: Progress = NULL, files: list[str] | None = None,
                    unreadable: dict[str, str] | None = None) -> dict[str, FileEntry]:
    """For each working file under `roots` (or each of `files`): the committed entry when the stat cache (or
    a hash) shows it unchanged, else a fresh hash-only snapshot of it. A checkpoint file that does not read as
    its kind (cut short by a crash while it was saved, another file in its place) is snapshotted as a blob:
    its hash shows it changed, so that status lists it, a checkout refuses to overwrite it unless forced, and
    reset --hard --force or switch --force write the commit's version over it; `unreadable` gets why, by path."""
    committed = {f.path: f for f in manifest.files} if manifest else {}
    out: dict[str, FileEntry] = {}
    chunk_size = manifest.chunk_size if manifest else repo.config.chunk_size
    if files is None:
        files = list_files(repo, roots, keep=committed)
    with repo.pipeline(store=False, progress=progress, chunk_size=chunk_size) as pipe:
        for rel in files:
            full = repo.abs_path(rel)
            old = committed.get(rel)
            if old is not None and cache.lookup(rel, full) == old.hash:
                out[rel] = old
                continue
            seen = cache.stat_now(full)  # before hashing: a write meanwhile shows as a changed stat
            # Stat as recorded, but too close to a write to trust (a status right after a commit): one pass of
            # the whole-file hash settles it, instead of a snapshot of every tensor (100,000 tensors: 4.7 s).
            if old is not None and cache.recorded(rel, seen) == old.hash and file_hash(full) == old.hash:
                cache.record(rel, full, old.hash, seen)
                out[rel] = old
                continue
            # the committed entry as the parent: a header unchanged is not parsed again (snapshot._as_parent)
            try:
                entry = snapshot_path(pipe, full, rel, as_blob=old is not None and old.kind == KIND_BLOB,
                                      history=History(old))
            except FormatError as e:  # only a checkpoint's reader raises it, never a blob's
                entry = snapshot_path(pipe, full, rel, as_blob=True)
                if unreadable is not None:
                    unreadable[rel] = e.reason
            cache.record(rel, full, entry.hash, seen)
            out[rel] = entry
    return out
