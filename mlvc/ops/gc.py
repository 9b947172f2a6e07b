"""gc: delete the objects nothing reachable needs, and the leftovers of interrupted processes.

Reachable (the *mark*): every commit named by a branch, a tag (an annotated tag: its tag object and the commit
that one names), HEAD, any other ref file under `.mlvc/refs/` (where remote-tracking refs will live) or any
reflog entry; from each commit its parents, its manifest and
every object a file entry needs (`FileEntry.object_ids()`: header chunks, tensor chunks, blob chunks, torch
frame chunks and skeleton); and, transitively, every delta base of a kept object (a delta cannot be read without
its chain).
A reachable commit or manifest that is missing or damaged, or a ref that cannot be read, stops gc before it
deletes anything (GcRefusedError): it cannot know what that commit needed. The refs are read again before each
batch of deletions (for commits that landed meanwhile); one that refuses then stops gc before that batch.

Kept besides: every object younger than the grace period (default 2 weeks, `gc.grace`, `--prune`), and the
bases of those. A commit writes its objects before it moves its ref, so its new objects are young until the
ref names them; an object it dedupes against (or uses as a delta base) is *freshened* by the store (its mtime
set to now, `ObjectStore.freshen`), so it is young too, however old and unreachable it was.

The sweep deletes unreachable old objects deepest first (deltas before their bases), so a crash at any point
leaves every remaining object readable and nothing reachable touched. Then, older than the temp grace (default
1 day, `gc.temp_grace`, `--prune-temp`): temp files (`.tmp-*`) under `.mlvc/`, entries of the scratch
folder `.mlvc/tmp/`, and `.tmp-mlvc-*` files in the work tree under HEAD's tracked paths (and in the work
tree's top folder, where a checkout stages files whose folder does not exist yet), never through a symlink
and never one an interrupted work-tree transaction's journal names. Last, locks whose holder died.

One gc at a time: it holds `.mlvc/gc.lock`. docs/format.md (Garbage collection) is the user-facing account.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import faults, lockfile
from ..errors import ConfigError, CorruptObjectError, GcRefusedError, MlvcError, ObjectNotFoundError
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS, TAGS
from ..revparse import tag_target
from ..util import is_object_id
from .gc_leftovers import MLVC_TEMP, clear_stale_locks, sweep_mlvc_temp, sweep_worktree

if TYPE_CHECKING:
    from ..repo import Repo

DEFAULT_GRACE = 14 * 86400.0  # objects: git's gc.pruneExpire default ("2.weeks.ago")
DEFAULT_TEMP_GRACE = 86400.0  # temp files, scratch entries: no write stays silent this long
DEFAULT_REFLOG_EXPIRE = 90 * 86400.0  # reflog entries: git's gc.reflogExpire default ("90.days.ago")
GC_LOCK = "gc.lock"

_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60,
          "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
          "w": 604800, "week": 604800, "weeks": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)[\s.]*([a-z]+)?(?:[\s.]+ago)?$")


def parse_grace(value: Any, source: str) -> float:
    """A grace period in seconds from "now", "never", "2.weeks.ago", "2 weeks", "14d", "3h", "90s", a number
    of seconds or a timedelta. ConfigError naming `source` (the option or config key) for anything else."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0 or math.isnan(value):
            raise ConfigError(f"{source}: a grace period cannot be negative ({value})")
        return float(value)
    text = str(value).strip().lower()
    if text == "now":
        return 0.0
    if text == "never":
        return math.inf
    m = _DURATION.match(text)
    if m and (m.group(2) in _UNITS or (m.group(2) is None and not text.endswith("ago"))):
        return float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)
    raise ConfigError(f"{source}: {value!r} is not a grace period; write e.g. \"now\", \"2.weeks.ago\", "
                      "\"14 days\", \"12h\", \"30m\" or \"never\"")


@dataclass
class GcResult:
    dry_run: bool
    grace_seconds: float  # unreachable objects younger than this are kept
    temp_grace_seconds: float  # temp files and scratch entries younger than this are kept
    commits_reached: int = 0
    objects_reachable: int = 0  # present in the store and needed by a reachable commit (bases included)
    objects_young: int = 0  # unreachable but kept: younger than the grace, or a delta base of such an object
    objects_missing: int = 0  # needed by a reachable commit but absent (`mlvc fsck` reports them)
    objects_removed: int = 0  # (in a dry run: that would be removed)
    object_bytes_freed: int = 0
    temp_files_removed: int = 0
    temp_bytes_freed: int = 0
    reflog_expire_seconds: float = DEFAULT_REFLOG_EXPIRE  # reflog entries older than this are dropped first
    reflog_entries_expired: int = 0  # (in a dry run: that would be)
    locks_cleared: int = 0
    worktree_busy: bool = False  # a work-tree update held its lock: the work tree's temp files were not looked at
    recovered: list[str] = field(default_factory=list)  # interrupted work-tree updates finished or undone first
    removed_objects: list[str] = field(default_factory=list)
    removed_temp: list[str] = field(default_factory=list)  # paths relative to the repository root
    cleared_locks: list[str] = field(default_factory=list)

    @property
    def objects_kept(self) -> int:
        return self.objects_reachable + self.objects_young

    @property
    def bytes_freed(self) -> int:
        return self.object_bytes_freed + self.temp_bytes_freed

    def to_json(self) -> dict[str, Any]:
        grace = None if math.isinf(self.grace_seconds) else self.grace_seconds
        temp = None if math.isinf(self.temp_grace_seconds) else self.temp_grace_seconds
        reflog = None if math.isinf(self.reflog_expire_seconds) else self.reflog_expire_seconds
        return {"dry_run": self.dry_run, "grace_seconds": grace, "temp_grace_seconds": temp,
                "reflog_expire_seconds": reflog, "reflog_entries_expired": self.reflog_entries_expired,
                "commits_reached": self.commits_reached, "objects_kept": self.objects_kept,
                "objects_reachable": self.objects_reachable, "objects_young": self.objects_young,
                "objects_missing": self.objects_missing, "objects_removed": self.objects_removed,
                "bytes_freed": self.bytes_freed, "object_bytes_freed": self.object_bytes_freed,
                "temp_files_removed": self.temp_files_removed, "temp_bytes_freed": self.temp_bytes_freed,
                "locks_cleared": self.locks_cleared, "worktree_busy": self.worktree_busy,
                "recovered": list(self.recovered),
                "removed_objects": list(self.removed_objects), "removed_temp": list(self.removed_temp),
                "cleared_locks": list(self.cleared_locks)}


def configured_graces(repo: Repo) -> tuple[float, float]:
    """(object grace, temp grace) from `[gc] grace` and `[gc] temp_grace` in config.toml, or the defaults."""
    section = repo.config.raw.get("gc", {})
    if not isinstance(section, dict):
        raise ConfigError("config.toml: [gc] must be a table (grace = \"2.weeks\", temp_grace = \"1.day\")")
    grace = parse_grace(section["grace"], "gc.grace") if "grace" in section else DEFAULT_GRACE
    temp = parse_grace(section["temp_grace"], "gc.temp_grace") if "temp_grace" in section else DEFAULT_TEMP_GRACE
    return grace, temp


def configured_reflog_expire(repo: Repo) -> float:
    """`[gc] reflog_expire` in config.toml, or 90 days."""
    section = repo.config.raw.get("gc", {})
    if isinstance(section, dict) and "reflog_expire" in section:
        return parse_grace(section["reflog_expire"], "gc.reflog_expire")
    return DEFAULT_REFLOG_EXPIRE


def gc(repo: Repo, prune: Any = None, prune_temp: Any = None, dry_run: bool = False,
       progress: Progress = NULL, expire_reflog: Any = None) -> GcResult:
    """Expire old reflog entries, mark, then sweep objects, temp files and stale locks (module docstring).
    `prune` / `prune_temp` / `expire_reflog` override the configured periods (see parse_grace); `dry_run`
    reports and deletes nothing."""
    grace, temp_grace = configured_graces(repo)
    reflog_expire = configured_reflog_expire(repo)
    if prune is not None:
        grace = parse_grace(prune, "--prune")
    if prune_temp is not None:
        temp_grace = parse_grace(prune_temp, "--prune-temp")
    if expire_reflog is not None:
        reflog_expire = parse_grace(expire_reflog, "--expire-reflog")
    result = GcResult(dry_run, grace, temp_grace, reflog_expire_seconds=reflog_expire)
    gc_lock = os.path.join(repo.dir, GC_LOCK)
    with lockfile.locked(gc_lock, "the repository (another `mlvc gc` is running)"):
        now = time.time()
        base_cutoff = now - grace

        lowest = [base_cutoff]

        def cutoff() -> float:  # never rises: an operation seen in flight once keeps what it wrote for this run
            lowest[0] = min(lowest[0], _fenced(repo, base_cutoff))
            return lowest[0]

        cutoff()  # operations in flight are seen before the refs are read
        result.reflog_entries_expired = _expire_reflogs(repo, now - reflog_expire, dry_run)
        marker = _Marker(repo, result)
        marker.refs_state = _refs_state(repo)
        marker.walk(_tips(repo, now - reflog_expire))  # refuses (GcRefusedError) before anything is deleted
        _sweep_objects(repo, marker, cutoff, result, progress, now - reflog_expire)
        sweep_worktree(repo, now - temp_grace, result)
        sweep_mlvc_temp(repo, now - temp_grace, result)
        clear_stale_locks(repo, gc_lock, result)
    return result


# -- mark ---------------------------------------------------------------------------------------------


def _entry_time(entry) -> float | None:
    """When a reflog entry was written (seconds since the epoch); None when its time does not parse."""
    try:
        return _dt.datetime.strptime(entry.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.UTC).timestamp()
    except ValueError:
        return None


def _expired(entry, before: float) -> bool:
    """An entry written before `before`; one whose time cannot be read is never expired."""
    t = _entry_time(entry)
    return t is not None and t < before


def _expire_reflogs(repo: Repo, before: float, dry_run: bool) -> int:
    """Drop every reflog entry written before `before` (each log rewritten under its ref's lock), so that what
    only old entries named becomes collectable; in a dry run only count them. The number of entries."""
    if before == -math.inf:
        return 0
    count = 0
    for ref in repo.refs.reflog_refs():
        with contextlib.suppress(MlvcError):
            if dry_run:
                count += sum(_expired(e, before) for e in repo.refs.reflog(ref))
            else:
                count += repo.refs.expire_log(ref, lambda e: _expired(e, before))
    return count


def _tips(repo: Repo, reflog_before: float = -math.inf) -> list[tuple[str, str]]:
    """(commit id, what names it) for every starting point of the mark; reflog entries written before
    `reflog_before` are expired (a dry run has not removed them) and name nothing."""
    tips: list[tuple[str, str]] = []
    refs = [(f"branch {n}", HEADS + n) for n in repo.refs.names(HEADS)]
    refs += [(f"tag {n}", TAGS + n) for n in repo.refs.names(TAGS)] + [("HEAD", HEAD)]
    for via, ref in refs:
        try:
            cid = repo.refs.resolve(ref)
        except MlvcError as e:
            raise GcRefusedError("", f"the ref {ref} cannot be read ({e})") from None
        if cid:
            tips.append((cid, via))
    tips += _other_ref_tips(repo)
    for ref in repo.refs.reflog_refs():
        with contextlib.suppress(MlvcError):
            tips += [(cid, "a reflog entry") for e in repo.refs.reflog(ref) if not _expired(e, reflog_before)
                     for cid in (e.old, e.new) if cid]
    return tips


def _other_ref_tips(repo: Repo) -> list[tuple[str, str]]:
    """Hook for refs outside refs/heads/ and refs/tags/ (remote-tracking refs, refs/remotes/NAME/BRANCH, once
    remotes exist): every such ref file and every line of its reflog is a starting point, so that a gc never
    drops what a namespace it does not know yet points at. A file there that is not a commit id refuses."""
    import json

    tips: list[tuple[str, str]] = []
    for top, is_log in ((os.path.join(repo.dir, "refs"), False), (os.path.join(repo.dir, "logs", "refs"), True)):
        for folder, dirs, files in os.walk(top):
            if folder == top:
                dirs[:] = [d for d in dirs if d not in ("heads", "tags")]
            for name in files:
                if name.endswith(lockfile.LOCK_SUFFIX) or name.startswith(MLVC_TEMP):
                    continue
                path = os.path.join(folder, name)
                ref = os.path.relpath(path, os.path.dirname(top)).replace(os.sep, "/")
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except FileNotFoundError:  # removed since the folder was listed (a remote-tracking ref pruned)
                    continue
                if not is_log:
                    text = data.decode("utf-8", "replace").strip()
                    if not is_object_id(text):
                        raise GcRefusedError("", f"the ref {ref} holds {text[:60]!r}, not a commit id")
                    tips.append((text, f"ref {ref}"))
                    continue
                for line in data.split(b"\n"):
                    try:
                        d = json.loads(line)
                        ids = [d.get("old"), d.get("new")]
                    except (ValueError, AttributeError):
                        continue  # a torn line, as RefStore.reflog_lines skips it
                    tips += [(x, f"the reflog of {ref}") for x in ids if isinstance(x, str) and is_object_id(x)]
    return tips


class _Marker:
    """The reachable set, grown by walking commits from starting points."""

    def __init__(self, repo: Repo, result: GcResult):
        self.repo = repo
        self.result = result
        self.commits: set[str] = set()
        self.manifests: set[str] = set()
        self.needed: set[str] = set()  # commits, manifests and the objects their files name (no bases yet)
        self.refs_state: list[tuple[str, int, int, int]] | None = None  # the ref files at the last walk

    def walk(self, tips: list[tuple[str, str]]) -> None:
        stack = list(tips)[::-1]
        while stack:
            cid, via = stack.pop()
            if cid in self.commits:
                continue
            self.commits.add(cid)
            try:
                c = self.repo.read_commit(cid)
            except ObjectNotFoundError:
                raise GcRefusedError(cid, f"commit {cid}, named by {via}, is missing") from None
            except CorruptObjectError as e:
                try:  # an annotated tag (a tag's ref or reflog names its tag object): keep it and its commit
                    target = tag_target(self.repo, cid)
                except CorruptObjectError:  # unreadable as either: only a tag or a reflog may name a tag object
                    what = "commit or tag object" if via.startswith("tag ") or "reflog" in via else "commit"
                    raise GcRefusedError(cid, f"{what} {cid}, named by {via}, is damaged ({e.reason})") from None
                if target is None:
                    raise GcRefusedError(cid, f"commit {cid}, named by {via}, is damaged ({e.reason})") from None
                self.needed.add(cid)
                stack.append((target, f"tag object {cid[:12]}"))
                continue
            self.result.commits_reached += 1
            self.needed.update((cid, c.manifest))
            stack.extend((p, f"commit {cid[:12]}") for p in c.parents)
            if c.manifest in self.manifests:
                continue
            self.manifests.add(c.manifest)
            try:
                m = self.repo.read_manifest(c.manifest, resolve=False)
            except ObjectNotFoundError:
                raise GcRefusedError(c.manifest, f"the manifest {c.manifest} of commit {cid} is missing") from None
            except CorruptObjectError as e:
                raise GcRefusedError(c.manifest, f"the manifest {c.manifest} of commit {cid} is damaged "
                                     f"({e.reason})") from None
            for f in m.files:
                self.needed.update(f.object_ids())


def _close_bases(store, kept: set[str], start: set[str], strict: bool) -> None:
    """Add to `kept` every delta base reachable from `start`. `strict`: a header that cannot be read refuses
    (the objects of reachable commits); else that object's bases are just unknown. An absent object has none
    to add (a missing reachable one is counted as missing)."""
    stack = list(start)
    while stack:
        oid = stack.pop()
        try:
            bases = store.bases(oid)
        except ObjectNotFoundError:
            continue
        except CorruptObjectError as e:
            if strict:
                raise GcRefusedError(oid, f"object {oid}, needed by a reachable commit, is damaged ({e.reason}): "
                                     "the delta bases it needs cannot be read") from None
            continue
        for b in bases:
            if b not in kept:
                kept.add(b)
                stack.append(b)


# -- sweep: objects -----------------------------------------------------------------------------------


FENCE_MARGIN = 5.0  # seconds: file times and clocks are not exact


def _walk_again(repo: Repo, marker: _Marker, reachable: set[str], reflog_before: float) -> set[str]:
    """Mark from the refs as they are now: what commits that landed since the last walk need, with its delta
    bases, joins `reachable`; returns what joined. Nothing is read when no ref or reflog file changed since the
    last walk (a walk parses every reflog: 100,000 entries take seconds)."""
    state = _refs_state(repo)
    if state == marker.refs_state:
        return set()
    marker.refs_state = state
    before = set(marker.needed)
    marker.walk(_tips(repo, reflog_before))
    new = marker.needed - before
    if not new:
        return set()
    known = set(reachable)
    reachable |= new
    _close_bases(repo.store, reachable, new, True)
    return reachable - known


def _refs_state(repo: Repo) -> list[tuple[str, int, int, int]]:
    """Each file under which refs and reflogs live (HEAD, refs/, logs/) with its inode, size and mtime: a ref
    moves by a rename (a new inode), a reflog grows, so any change to what `_tips` reads changes this."""
    out = []
    for top in (os.path.join(repo.dir, "HEAD"), os.path.join(repo.dir, "refs"), os.path.join(repo.dir, "logs")):
        paths = [top] if not os.path.isdir(top) else [os.path.join(d, n) for d, _, names in os.walk(top) for n in names]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return sorted(out)


def _older(store, oid: str, limit: float) -> bool:
    """Whether an object is not younger than `limit` (freshened since it was listed); one gone meanwhile counts
    as young (kept: nothing to delete)."""
    try:
        return store.mtime(oid) <= limit
    except ObjectNotFoundError:
        return False


def _fenced(repo: Repo, cutoff: float) -> float:
    """The mtime below which an unreachable object may go, lowered while operations that write objects are
    in flight (`Repo.writing`): below the start of the oldest one, and below the store's freshening age (an
    object it deduped against is freshened only when older than that)."""
    folder = os.path.join(repo.dir, lockfile.INFLIGHT_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return cutoff
    starts = []
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(lockfile.LOCK_SUFFIX) and not lockfile.is_stale(path):
            with contextlib.suppress(FileNotFoundError):
                starts.append(os.stat(path).st_mtime)
    if not starts:
        return cutoff
    return min(cutoff, min(starts) - FENCE_MARGIN, time.time() - repo.store.freshen_after - FENCE_MARGIN)


def _sweep_objects(repo: Repo, marker: _Marker, cutoff: Callable[[], float], result: GcResult,
                   progress: Progress, reflog_before: float) -> None:
    store = repo.store
    reachable = set(marker.needed)
    _close_bases(store, reachable, set(reachable), True)
    mtimes: dict[str, float] = {}
    for oid in store.ids():
        try:
            mtimes[oid] = store.mtime(oid)
        except ObjectNotFoundError:
            pass
    # The limit first, then the refs again (they moved while we marked: a commit that landed, a checkout of a
    # dangling commit): an operation still in flight now lowers the limit, one that landed before is walked.
    limit = cutoff()
    _walk_again(repo, marker, reachable, reflog_before)
    kept = reachable | {oid for oid, t in mtimes.items() if t > limit}
    young = kept - reachable
    _close_bases(store, kept, young, False)
    candidates = [oid for oid in mtimes if oid not in kept]

    def depth(oid: str) -> int:
        try:
            return store.header(oid).depth
        except (ObjectNotFoundError, CorruptObjectError):
            return 1 << 16  # unreadable: nothing can be decoded on it, remove it first

    progress.start("gc", len(candidates), unit="objects")
    # Deepest first, one depth at a time: a delta goes before its base, so a crash leaves no object whose base is
    # gone. Objects of one depth are never each other's bases, so each depth is deleted as one batch (a pack file
    # holding several of them is rewritten once, not once per object).
    levels: dict[int, list[str]] = {}
    for oid in sorted(candidates):
        levels.setdefault(depth(oid), []).append(oid)
    for level in sorted(levels, reverse=True):
        doomed = []
        for oid in levels[level]:
            progress.advance(1)
            if oid in kept:
                continue
            try:
                doomed.append((oid, store.stored_size(oid)))
            except ObjectNotFoundError:
                continue
        if not doomed:
            continue
        # Last before the deletion, the operations in flight, the refs, and the operations again: one in flight at
        # either look lowers the limit, and one that landed since the walk above (its commit deduped against
        # objects listed here, not freshened when under an hour old) keeps what its commit needs. An object young
        # now (freshened by a dedupe since it was listed) is kept with its delta bases.
        if not result.dry_run:
            faults.point("gc.checked")
        cutoff()
        kept |= _walk_again(repo, marker, reachable, reflog_before)
        limit = cutoff()
        young_now = {oid for oid, _ in doomed if oid not in kept and not _older(store, oid, limit)}
        kept |= young_now
        _close_bases(store, kept, young_now, False)
        doomed = [(oid, size) for oid, size in doomed if oid not in kept]
        doomed_ids = [oid for oid, _ in doomed]
        if not result.dry_run:
            store.delete_many(doomed_ids)
            faults.point("gc.deleted")
        result.object_bytes_freed += sum(size for _, size in doomed)
        result.objects_removed += len(doomed_ids)
        result.removed_objects.extend(doomed_ids)
    progress.finish()
    present = set(mtimes) - set(result.removed_objects)
    result.objects_reachable = len(reachable & present)
    result.objects_young = len((kept - reachable) & present)
    result.objects_missing = len(reachable - set(mtimes))
