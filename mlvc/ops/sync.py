"""push, fetch, pull and clone: moving commits between a repository and its remotes (docs/remotes.md).

A push walks from the commits it sends down to every object they need (tags, parents, manifests, chunks,
delta bases), stops at commits the remote's pack indexes already list (a commit is listed only once
everything it needs is there: its pack is uploaded last), sends the rest as packs of up to 32 MiB (in
parallel, each pack before its index), then the ledger's new parts, and only then moves the remote's refs by
compare-and-swap. So an interrupted push leaves no ref moved, and the next push finds what already arrived in
the indexes and does not send it again.

A fetch reads the remote's refs and indexes, downloads the metadata (commits, manifests, tags) it lacks,
walks from the remote's tips to the objects it needs and downloads them by byte ranges of their packs,
shallowest delta depth first, verifying each against its id (through its delta bases) before it is written;
commits and manifests are written last, and only then the remote-tracking refs move.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import faults
from ..errors import MlvcError, PushRejectedError, RefConflictError, RemoteError
from ..ledger import part_hash
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS, TAGS, check_name
from ..remote import (
    KIND_DATA,
    LEASE_SECONDS,
    LEDGER,
    META_KINDS,
    PACK_TARGET,
    PACKS,
    PRUNES,
    IndexEntry,
    Remote,
    RemoteRefs,
    RemoteSpec,
    check_remote_name,
    coalesce,
    commit_objects,
    load_remotes,
    normalize_url,
    open_backend,
    read_tracking,
    remove_tracking,
    save_remotes,
    transfer_order,
    verify_object,
    walk,
    write_tracking,
)
from ..store import PACK_OBJECT_MAX
from ..util import atomic_write_bytes, canonical_json, hash_bytes, is_object_id, is_utf8_text
from .select import select_tensors

if TYPE_CHECKING:
    from ..repo import Repo

PRUNE_WAIT = 120.0  # seconds a push waits for a prune of the remote that is running to finish
CLOCK_MARGIN = 300.0  # seconds: clocks of the machines that push and prune differ
WORKERS = 4  # transfers in flight at once (each holds at most one pack or byte range in memory)
CAS_ATTEMPTS = 8  # a push whose refs write lost only to pushes of other refs tries again


# -- remotes --------------------------------------------------------------------------------------------------


def remote_add(repo: Repo, name: str, url: str, endpoint: str | None = None, region: str | None = None) -> RemoteSpec:
    """Add a remote: a folder, or `s3://bucket/prefix` (with an S3-compatible server's `endpoint` and its
    `region`, else the AWS_* environment). Credentials are never stored: they come from the environment."""
    check_remote_name(name)
    for value in (url, endpoint, region):
        if value is not None and not is_utf8_text(value):
            raise RemoteError(f"{value!r} is not UTF-8 text; give the remote's URL, endpoint and region as text")
    remotes = load_remotes(repo.dir)
    if name in remotes:
        raise RemoteError(f"a remote named {name!r} exists ({remotes[name].url}); remove it first with "
                          f"`mlvc remote remove {name}`")
    spec = RemoteSpec(name, normalize_url(url), endpoint or None, region or None)
    remotes[name] = spec
    save_remotes(repo.dir, remotes)
    return spec


def remote_remove(repo: Repo, name: str) -> RemoteSpec:
    """Forget a remote and its remote-tracking refs (nothing on the remote itself changes)."""
    remotes = load_remotes(repo.dir)
    spec = _spec_named(repo, remotes, name)
    del remotes[name]
    save_remotes(repo.dir, remotes)
    remove_tracking(repo.dir, name)
    return spec


def remote_list(repo: Repo) -> list[RemoteSpec]:
    return sorted(load_remotes(repo.dir).values(), key=lambda s: s.name)


def _spec_named(repo: Repo, remotes: dict[str, RemoteSpec], name: str | None) -> RemoteSpec:
    if name is None:
        if "origin" in remotes:
            name = "origin"
        elif len(remotes) == 1:
            name = next(iter(remotes))
        else:
            raise RemoteError("no remote given and no remote named origin; add one with `mlvc remote add origin URL`"
                              if not remotes else f"which remote? (`mlvc remote` lists them: {', '.join(remotes)})")
    if name not in remotes:
        raise RemoteError(f"no remote named {name!r}; add it with `mlvc remote add {name} URL`")
    return remotes[name]


def _open(repo: Repo, name: str | None) -> tuple[RemoteSpec, Remote]:
    spec = _spec_named(repo, load_remotes(repo.dir), name)
    return spec, Remote(open_backend(spec), os.path.join(repo.dir, "remote-cache", spec.name))


# -- results --------------------------------------------------------------------------------------------------


@dataclass
class PushResult:
    remote: str
    url: str
    updated: dict[str, list[str | None]] = field(default_factory=dict)  # ref -> [old, new] on the remote
    up_to_date: bool = False
    objects_sent: int = 0
    object_bytes_sent: int = 0  # stored bytes of the objects sent
    packs_sent: int = 0
    ledger_parts_sent: int = 0
    tags_skipped: list[str] = field(default_factory=list)  # a tag the remote has at another object (no --force)
    requests: int = 0
    bytes_sent: int = 0  # everything uploaded: packs, indexes, parts, refs
    bytes_received: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FetchResult:
    remote: str
    url: str
    head: str | None = None  # the remote's default branch
    branches: dict[str, str] = field(default_factory=dict)  # the remote's branches, as fetched
    updated: dict[str, list[str | None]] = field(default_factory=dict)  # tracking ref -> [old, new]
    new_tags: list[str] = field(default_factory=list)
    tags_skipped: list[str] = field(default_factory=list)  # a local tag of that name names another object
    objects_received: int = 0
    object_bytes_received: int = 0
    ledger_parts_received: int = 0
    partial: str | None = None  # a partial fetch: the one commit whose objects were fetched
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullResult:
    fetch: FetchResult
    branch: str
    merged: Any = None  # the MergeResult (or ResetResult for a branch with no commit yet); None: up to date

    def to_json(self) -> dict[str, Any]:
        m = self.merged.to_json() if hasattr(self.merged, "to_json") else self.merged
        return {"fetch": self.fetch.to_json(), "branch": self.branch, "merged": m}


@dataclass
class CloneResult:
    path: str
    branch: str | None
    commit: str | None
    fetch: FetchResult

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "branch": self.branch, "commit": self.commit, "fetch": self.fetch.to_json()}


def _stats_into(result: PushResult | FetchResult, remote: Remote) -> None:
    result.requests = remote.stats.requests
    result.bytes_sent = remote.stats.bytes_sent
    result.bytes_received = remote.stats.bytes_received


# -- shared pieces ----------------------------------------------------------------------------------------------


def _bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = WORKERS) -> Iterator[Any]:
    """fn over items on `workers` threads, results in order, at most 2 x workers results held at once."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="mlvc-remote") as pool:
        pending: list[Future] = []
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                break
        while pending:
            fut = pending.pop(0)
            try:
                yield fut.result()
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))


def _local_tips(repo: Repo) -> list[str]:
    tips = [cid for cid in (repo.refs.resolve(HEAD),) if cid]
    for prefix in (HEADS, TAGS):
        tips += [v for n in repo.refs.names(prefix) if (v := repo.refs.read_raw(prefix + n)) and is_object_id(v)]
    for spec in load_remotes(repo.dir).values():
        tips += list(read_tracking(repo.dir, spec.name).values())
    return tips


def _local_complete(repo: Repo) -> set[str]:
    """Commits and tag objects reachable from the local refs: each is here with everything it needs (a ref
    to a commit whose history is not here, made on a partial fetch, stops the walk instead of failing it)."""
    meta, _ = walk(_local_tips(repo), repo.store.get, lambda o: not repo.store.has(o), manifests=False)
    return set(meta)


def _write_objects(repo: Repo, items: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
    """Write verified object files into the local store (small full ones into its packs); (count, bytes)."""
    store = repo.store
    n = size = 0
    for oid, data in items:
        h = _header(data)
        if h.raw_length <= PACK_OBJECT_MAX and h.depth == 0:
            written = store.write_packed(oid, data)
        else:
            written = store.write_file(oid, data)
        if written:
            n += 1
            size += len(data)
        else:
            store.freshen(oid)
    return n, size


def _header(data: bytes):
    from ..codec import HEADER_SIZE, ObjectHeader

    return ObjectHeader.parse(data[:HEADER_SIZE])


@dataclass
class _Received:
    meta: dict[str, bytes] = field(default_factory=dict)  # commits, manifests, tags: written by the caller, last
    objects: int = 0  # data objects written into the local store
    bytes: int = 0


def _download(repo: Repo, remote: Remote, index: dict[str, IndexEntry], want: set[str],
              progress: Progress) -> _Received:
    """Download and verify `want` (ids the index lists). Data objects are written as they arrive, each after
    its delta bases (transfer_order), so that its bases are here when it is verified; metadata objects are
    returned instead, to be written after everything they need."""
    entries = []
    for oid in want:
        e = index.get(oid)
        if e is None:
            raise RemoteError(f"the remote {remote.describe()} lacks object {oid}, which its commits need: it is "
                              "incomplete (a push of another tool, or files removed by hand)")
        entries.append((oid, e))
    got = _Received()
    where = remote.describe()
    total = sum(e.length for _o, e in entries)
    progress.start(f"fetch {os.path.basename(where) or where}", total)

    def get(job: tuple[str, int, int, list[tuple[str, IndexEntry]]]) -> list[tuple[str, bytes, str]]:
        pid, start, end, members = job
        blob = remote.read_objects(pid, start, end)
        if len(blob) != end - start:
            raise RemoteError(f"remote pack {pid} is shorter than its index says; the remote is damaged")
        out = []
        for oid, e in members:
            data = blob[e.offset - start : e.offset - start + e.length]
            out.append((oid, verify_object(repo.store, oid, data, f"remote pack {pid} of {where}"), e.kind))
        return out

    by_id = dict(entries)
    for ids in transfer_order({o: e.bases for o, e in entries}):  # a delta after its bases
        level = [(o, by_id[o]) for o in ids]
        for objs in _bounded_map(get, coalesce(level)):
            data_items = []
            for oid, data, kind in objs:
                progress.advance(len(data))
                if kind in META_KINDS:
                    got.meta[oid] = data
                else:
                    data_items.append((oid, data))
            n, size = _write_objects(repo, data_items)
            got.objects += n
            got.bytes += size
        repo.store.flush()  # the next level's deltas name these as bases
        faults.point("fetch.level.written")
    progress.finish()
    return got


def _need_with_bases(repo: Repo, index: dict[str, IndexEntry], ids: Iterable[str]) -> set[str]:
    """The ids the local store lacks, with the delta bases (from the remote's index) they need."""
    store = repo.store
    want: set[str] = set()
    stack = [o for o in ids if not store.has(o)]
    while stack:
        oid = stack.pop()
        if oid in want:
            continue
        want.add(oid)
        e = index.get(oid)
        if e is not None:
            stack.extend(b for b in e.bases if b not in want and not store.has(b))
    return want


# -- push -----------------------------------------------------------------------------------------------------


def push(repo: Repo, remote: str | None = None, branch: str | None = None, tags: bool = True, force: bool = False,
         progress: Progress = NULL) -> PushResult:
    """Send `branch` (default: the current one) and, with `tags`, every tag to the remote, with every object
    they need that the remote lacks; then move the remote's refs by compare-and-swap. PushRejectedError when
    the remote's branch has commits this one lacks (someone pushed: pull first), unless `force`."""
    spec, r = _open(repo, remote)
    result = PushResult(spec.name, spec.url)
    if branch is None:
        branch = repo.head_branch()
        if branch is None:
            raise RemoteError("HEAD is detached: name the branch to push (`mlvc push REMOTE BRANCH`)")
    local = repo.refs.resolve(HEADS + branch)
    if local is None:
        raise RemoteError(f"there is no branch {branch!r} with a commit to push (`mlvc branch` lists them)")
    doc, token = r.read_refs()
    updates = {HEADS + branch: local}
    if tags:
        for name in repo.refs.names(TAGS):
            tid = repo.refs.read_raw(TAGS + name)
            if not tid or not is_object_id(tid):
                continue
            there = doc.refs.get(TAGS + name)
            if there is None or force:
                updates[TAGS + name] = tid
            elif there != tid:
                result.tags_skipped.append(name)
    _check_fast_forward(repo, doc, updates, force, spec.name)
    updates = {k: v for k, v in updates.items() if doc.refs.get(k) != v}
    ledger_sent = _push_ledger(repo, r)
    result.ledger_parts_sent = ledger_sent
    if not updates:
        result.up_to_date = True
        write_tracking(repo.dir, spec.name, branch, local)
        _stats_into(result, r)
        return result
    r.ensure_marker()
    started = time.time()
    with r.lease():
        _send_objects(repo, r, list(updates.values()), result, progress)
        if _pruned_meanwhile(r, started):  # a prune that began before our lease may have removed what we rely on
            _send_objects(repo, r, list(updates.values()), result, progress)
        for _attempt in range(CAS_ATTEMPTS):
            new = RemoteRefs(doc.head or branch, dict(doc.refs))
            new.refs.update(updates)
            faults.point("push.refs.before")
            if r.write_refs(new, token):
                break
            fresh, token = r.read_refs()
            moved = [ref for ref in updates if fresh.refs.get(ref) != doc.refs.get(ref)]
            if moved and not force:
                raise PushRejectedError(
                    f"{spec.name}: {', '.join(moved)} moved while this push ran (someone else pushed); nothing "
                    f"was changed there. Run `mlvc pull {spec.name} {branch}`, then push again")
            doc = fresh
        else:
            raise RemoteError(f"{spec.name}: its refs kept changing under this push; try again")
    result.updated = {ref: [doc.refs.get(ref), new_id] for ref, new_id in updates.items()}
    write_tracking(repo.dir, spec.name, branch, local)
    _stats_into(result, r)
    return result


def _pruned_meanwhile(r: Remote, started: float) -> bool:
    """Whether a prune that may not have seen this push's lease ran while it uploaded (the objects it found
    on the remote must then be looked up again); waits for one still running."""
    deadline = time.monotonic() + PRUNE_WAIT
    while True:
        recs = [d for _k, d in r.prunes() if float(d["started"]) < started + CLOCK_MARGIN]
        running = [d for d in recs if d.get("finished") is None and time.time() - float(d["started"]) < LEASE_SECONDS]
        if not running:
            return any(float(d.get("finished") or 0) >= started - CLOCK_MARGIN for d in recs)
        if time.monotonic() > deadline:
            raise RemoteError(f"a prune of {r.describe()} has been running for over {PRUNE_WAIT:.0f} s; push again "
                              "when it is done (what this push uploaded is not sent again)")
        time.sleep(1.0)


def _check_fast_forward(repo: Repo, doc: RemoteRefs, updates: dict[str, str], force: bool, name: str) -> None:
    if force:
        return
    for ref, new in updates.items():
        old = doc.refs.get(ref)
        if old is None or old == new or not ref.startswith(HEADS):
            continue
        branch = ref[len(HEADS):]
        if not repo.store.has(old) or repo.merge_base(old, new) != old:
            raise PushRejectedError(
                f"{name}'s {branch} is at {old[:12]}, which your {branch} does not contain (someone pushed "
                f"meanwhile); nothing was sent. Run `mlvc pull {name} {branch}`, then push again (or push --force "
                "to overwrite their commits)")


def _send_objects(repo: Repo, r: Remote, tips: list[str], result: PushResult, progress: Progress) -> None:
    store = repo.store
    index = r.index(refresh=True)
    meta, data = walk(tips, store.get, lambda o: o in index)
    kinds: dict[str, str] = {o: k for o, k in meta.items() if o not in index}
    stack = [o for o in data if o not in index]
    while stack:
        oid = stack.pop()
        if oid in kinds:
            continue
        kinds.setdefault(oid, KIND_DATA)
        stack.extend(b for b in store.bases(oid) if b not in index and b not in kinds)
    info = {}
    for oid in kinds:
        h = store.header(oid)
        info[oid] = (h.depth, store.stored_size(oid))
    # data first, metadata last: the remote lists a commit only once everything it needs is there
    order = sorted(kinds, key=lambda o: (kinds[o] in META_KINDS, info[o][0], o))
    groups: list[list[str]] = []
    size = 0
    for oid in order:
        if not groups or size + info[oid][1] > PACK_TARGET or (kinds[oid] in META_KINDS) != (
                kinds[groups[-1][0]] in META_KINDS):
            groups.append([])
            size = 0
        groups[-1].append(oid)
        size += info[oid][1]
    data_groups = [g for g in groups if kinds[g[0]] not in META_KINDS]
    meta_groups = [g for g in groups if kinds[g[0]] in META_KINDS]
    progress.start(f"push {result.remote}", sum(s for _d, s in info.values()))

    def upload(group: list[str]) -> int:
        objs = [(oid, store.read_file(oid), kinds[oid], info[oid][0], store.bases(oid)) for oid in group]
        r.upload_pack(objs)
        return sum(len(o[1]) for o in objs)

    for stage in (data_groups, meta_groups):
        for sent in _bounded_map(upload, stage):
            progress.advance(sent)
            result.packs_sent += 1
            result.object_bytes_sent += sent
    progress.finish()
    result.objects_sent = len(kinds)


def _push_ledger(repo: Repo, r: Remote) -> int:
    """Upload the ledger's verified parts the remote lacks (a part is named by its hash: it is the same
    everywhere); parts whose bytes do not match their name are not spread."""
    parts = repo.ledger.parts()
    if not parts:
        return 0
    there = {k[len(LEDGER):] for k, _s, _t in r.backend.list(LEDGER)}
    sent = 0
    for path in parts:
        name = os.path.basename(path)
        if name in there or part_hash(name) is None:
            continue
        with open(path, "rb") as f:
            data = f.read()
        if hash_bytes(data) != part_hash(name):
            continue  # `mlvc fsck` reports it; a damaged part is not sent
        r.backend.put(LEDGER + name, data)
        sent += 1
    return sent


# -- fetch ----------------------------------------------------------------------------------------------------


def fetch(repo: Repo, remote: str | None = None, rev: str | None = None, tensors: Iterable[str] | str | None = None,
          progress: Progress = NULL) -> FetchResult:
    """Bring every branch and tag of the remote here (remote-tracking refs `refs/remotes/NAME/BRANCH`, new tags,
    the ledger's new parts), with every object they need.

    With `rev` (a branch or tag of the remote, or a full commit id), a partial fetch: only that commit, its
    manifest and the objects of its files (with `tensors`, globs: only those tensors and each file's header),
    for a quick checkout or load without the history; no ref moves (check it out by the id returned)."""
    spec, r = _open(repo, remote)
    result = FetchResult(spec.name, spec.url)
    if not r.exists():
        raise RemoteError(f"{spec.url} is not an mlvc remote (nothing was pushed to it yet?)")
    doc, _token = r.read_refs()
    result.head = doc.head
    result.branches = doc.branches()
    index = r.index(refresh=True)
    if rev is not None:
        result.partial = _fetch_partial(repo, r, doc, index, rev, tensors, result, progress)
        _stats_into(result, r)
        return result
    if tensors is not None:
        raise MlvcError("tensors select what a partial fetch brings: give the commit too (`--rev`)")
    done = _local_complete(repo)
    missing = [t for t in doc.refs.values() if t not in done]
    if missing:
        with repo.writing():  # gc keeps what arrives until the refs name it
            meta_raw = _fetch_meta(repo, r, index, progress)
            meta, data = walk(missing, lambda o: _raw(repo, meta_raw, o), lambda o: o in done)
            want = _need_with_bases(repo, index, data)
            got = _download(repo, r, index, want, progress)
            faults.point("fetch.data.written")
            result.objects_received, result.object_bytes_received = got.objects, got.bytes
            n, size = _write_objects(repo, [(o, meta_raw[o][0]) for o in meta if o in meta_raw])
            repo.store.flush()
            faults.point("fetch.meta.written")
            result.objects_received += n
            result.object_bytes_received += size
            _move_tracking(repo, spec.name, doc, result)
    else:
        _move_tracking(repo, spec.name, doc, result)
    result.ledger_parts_received = _fetch_ledger(repo, r)
    _stats_into(result, r)
    return result


def _raw(repo: Repo, meta_raw: dict[str, tuple[bytes, bytes | bytearray]], oid: str) -> bytes | bytearray:
    hit = meta_raw.get(oid)
    return hit[1] if hit is not None else repo.store.get(oid)


def _fetch_meta(repo: Repo, r: Remote, index: dict[str, IndexEntry],
                progress: Progress) -> dict[str, tuple[bytes, bytes | bytearray]]:
    """Every commit, manifest and tag object of the remote that is not here: id -> (object file, raw content),
    verified, held in memory (they are small) and written only after the objects they need."""
    want = {o for o, e in index.items() if e.kind in META_KINDS and not repo.store.has(o)}
    files = _download(repo, r, index, want, progress).meta
    from ..codec import decode

    return {oid: (data, decode(data, repo.store.get)) for oid, data in files.items()}


def _move_tracking(repo: Repo, name: str, doc: RemoteRefs, result: FetchResult) -> None:
    current = read_tracking(repo.dir, name)
    for branch, cid in doc.branches().items():
        if current.get(branch) != cid:
            write_tracking(repo.dir, name, branch, cid)
            result.updated[f"{name}/{branch}"] = [current.get(branch), cid]
    for branch in set(current) - set(doc.branches()):  # deleted on the remote
        write_tracking(repo.dir, name, branch, None)
        result.updated[f"{name}/{branch}"] = [current[branch], None]
    for tag, tid in doc.tags().items():
        here = repo.refs.read_raw(TAGS + tag)
        if here is None:
            try:
                repo.refs.add_if_new(TAGS + tag, tid, repo.author(), f"fetch {name}")
                result.new_tags.append(tag)
            except (RefConflictError, MlvcError):
                result.tags_skipped.append(tag)
        elif here != tid:
            result.tags_skipped.append(tag)


def _fetch_ledger(repo: Repo, r: Remote) -> int:
    there = [k[len(LEDGER):] for k, _s, _t in r.backend.list(LEDGER)]
    folder = repo.ledger.folder
    here = {os.path.basename(p) for p in repo.ledger.parts()}
    got = 0
    for name in there:
        if name in here or part_hash(name) is None or "/" in name or name.startswith((".", "_")):
            continue
        data = r.backend.get(LEDGER + name)
        if data is None:
            continue
        if hash_bytes(data) != part_hash(name):
            raise RemoteError(f"the remote's ledger part {name} does not match its hash; it was not fetched (the "
                              "remote is damaged: remove that part there)")
        os.makedirs(folder, exist_ok=True)
        atomic_write_bytes(os.path.join(folder, name), data)
        got += 1
    return got


def _fetch_partial(repo: Repo, r: Remote, doc: RemoteRefs, index: dict[str, IndexEntry], rev: str,
                   tensors: Iterable[str] | str | None, result: FetchResult, progress: Progress) -> str:
    tip = doc.refs.get(HEADS + rev) or doc.refs.get(TAGS + rev) or (rev if is_object_id(rev) else None)
    if tip is None or tip not in index:
        raise RemoteError(f"the remote has no branch, tag or commit {rev!r} (`mlvc fetch` then `mlvc branch -r` "
                          "lists its branches)")
    with repo.writing():
        meta: dict[str, bytes] = {}
        meta.update(_download(repo, r, index, {tip} - _have(repo, {tip}), progress).meta)
        raw = _raw_of(repo, meta, tip)
        from ..objects import Commit, Tag, object_type, parse_object

        cid = tip
        if object_type(raw) == "tag":
            cid = Tag.from_dict(parse_object(raw, tip, "tag"), tip).object
            meta.update(_download(repo, r, index, {cid} - _have(repo, {cid}), progress).meta)
        commit = Commit.from_dict(parse_object(_raw_of(repo, meta, cid), cid, "commit"), cid)
        meta.update(_download(repo, r, index, {commit.manifest} - _have(repo, {commit.manifest}), progress).meta)
        mraw = _raw_of(repo, meta, commit.manifest)
        keep = None
        if tensors is not None:
            from ..objects import Manifest

            names = [t.name for f in Manifest.from_dict(parse_object(mraw, commit.manifest, "manifest")).files
                     for t in f.tensors]
            chosen = set(select_tensors(names, tensors, f"commit {cid[:12]}"))
            keep = chosen.__contains__
        want = _need_with_bases(repo, index, commit_objects(mraw, commit.manifest, keep))
        got = _download(repo, r, index, want, progress)
        result.objects_received, result.object_bytes_received = got.objects, got.bytes
        n, size = _write_objects(repo, sorted(meta.items()))
        repo.store.flush()
        result.objects_received += n
        result.object_bytes_received += size
    return cid


def _have(repo: Repo, ids: set[str]) -> set[str]:
    return {o for o in ids if repo.store.has(o)}


def _raw_of(repo: Repo, meta: dict[str, bytes], oid: str) -> bytes | bytearray:
    if oid in meta:
        from ..codec import decode

        return decode(meta[oid], repo.store.get)
    return repo.store.get(oid)


# -- pull and clone -------------------------------------------------------------------------------------------


def pull(repo: Repo, remote: str | None = None, branch: str | None = None, strategy: str | None = None,
         progress: Progress = NULL) -> PullResult:
    """fetch, then merge the remote's `branch` (default: the current branch's name) into the current branch:
    a fast-forward when it only adds commits, else a merge commit (ops/merge.py, `strategy`)."""
    here = repo.head_branch()
    if here is None:
        raise RemoteError("HEAD is detached: switch to the branch to pull into (`mlvc switch BRANCH`)")
    branch = branch or here
    fetched = fetch(repo, remote, progress=progress)
    cid = read_tracking(repo.dir, fetched.remote).get(branch)
    if cid is None:
        raise RemoteError(f"the remote {fetched.remote} has no branch {branch!r} (it has: "
                          f"{', '.join(sorted(fetched.branches)) or 'none'})")
    result = PullResult(fetched, here)
    if repo.head() is None:
        result.merged = repo.reset(cid, hard=True, progress=progress)
    elif repo.head() != cid:
        result.merged = repo.merge(cid, strategy=strategy, message=f"merge {fetched.remote}/{branch}",
                                   progress=progress)
    return result


def clone(repo: Repo, url: str, remote: str = "origin", branch: str | None = None, endpoint: str | None = None,
          region: str | None = None, progress: Progress = NULL) -> CloneResult:
    """Fill a new, empty repository from a remote: add it as `remote`, fetch every branch, tag and the ledger,
    and check `branch` (default: the remote's default branch) out, HEAD on it. `Repo.init(path).clone(url)`;
    `mlvc clone URL [DIR]` also makes the folder, and removes it again when the clone fails."""
    check_remote_name(remote)
    if repo.head() is not None or repo.branches() or load_remotes(repo.dir):
        raise RemoteError(f"{repo.root} already has commits or remotes: clone into a new repository "
                          "(`mlvc clone URL DIR`), or use `mlvc remote add` and `mlvc pull` here")
    remote_add(repo, remote, url, endpoint, region)
    fetched = fetch(repo, remote, progress=progress)
    branch = branch or fetched.head or (sorted(fetched.branches)[0] if fetched.branches else None)
    cid = fetched.branches.get(branch) if branch else None
    if branch is not None and cid is None:
        have = ", ".join(sorted(fetched.branches)) or "none"
        raise RemoteError(f"the remote has no branch {branch!r} (it has: {have})")
    if branch is not None and cid is not None:
        repo.refs.set_symbolic(HEAD, HEADS + check_name(branch), None, repo.author(), f"clone {url}")
        repo.reset(cid, hard=True, progress=progress)
    return CloneResult(repo.root, branch, cid, fetched)


# -- prune ----------------------------------------------------------------------------------------------------


@dataclass
class PruneResult:
    remote: str
    url: str
    dry_run: bool
    grace_seconds: float
    busy: bool = False  # a push was in flight (its lease is live): nothing was removed
    packs_kept: int = 0
    packs_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def remote_prune(repo: Repo, remote: str | None = None, prune: Any = None, dry_run: bool = False,
                 progress: Progress = NULL) -> PruneResult:
    """Remove the remote's packs that hold nothing its refs need and are older than `prune` (gc's grace syntax,
    default 2 weeks), and packs a killed push left without an index. Removes nothing while a push holds a
    live lease; a push that began before this prune looks its objects up again before it moves a ref
    (docs/format.md, "Remotes"). RemoteError when an object the refs need is missing there: nothing removed."""
    grace = repo.parse_grace("2.weeks.ago" if prune is None else prune, "--prune")
    spec, r = _open(repo, remote)
    if not r.exists():
        raise RemoteError(f"{spec.url} is not an mlvc remote (nothing was pushed to it yet?)")
    result = PruneResult(spec.name, spec.url, dry_run, grace)
    now = time.time()
    key = f"{PRUNES}{uuid.uuid4().hex}.json"
    if not dry_run:
        r.backend.put(key, canonical_json({"started": now, "finished": None}))
    try:
        if r.live_leases(now):
            result.busy = True
            return result
        _prune(repo, r, now - grace, result, progress)
    finally:
        if not dry_run:
            r.backend.put(key, canonical_json({"started": now, "finished": time.time()}))
            for old, d in r.prunes():
                if old != key and float(d.get("finished") or d["started"]) < now - 2 * LEASE_SECONDS:
                    r.backend.delete(old)
    return result


def _prune(repo: Repo, r: Remote, cutoff: float, result: PruneResult, progress: Progress) -> None:
    from ..codec import decode

    doc, _token = r.read_refs()
    index = r.index(refresh=True)
    files = _download(repo, r, index, {o for o, e in index.items() if e.kind in META_KINDS}, progress).meta
    raws = {oid: decode(data, repo.store.get) for oid, data in files.items()}

    def get_raw(oid: str) -> bytes | bytearray:
        if oid not in raws:
            raise RemoteError(f"the remote lacks {oid}, which its refs need; nothing was pruned (the remote is "
                              "damaged: push the commits again from a repository that has them)")
        return raws[oid]

    meta, data = walk(doc.refs.values(), get_raw, lambda _o: False)
    keep: set[str] = set()
    stack = list(set(meta) | data)
    while stack:
        oid = stack.pop()
        if oid in keep:
            continue
        keep.add(oid)
        e = index.get(oid)
        if e is None:
            raise RemoteError(f"the remote lacks object {oid}, which its refs need; nothing was pruned")
        stack.extend(e.bases)
    needed_packs = {index[o].pack for o in keep}
    listing = {k: (size, mtime) for k, size, mtime in r.backend.list(PACKS)}
    for k, (size, mtime) in sorted(listing.items()):
        if not k.endswith(".pack"):
            continue
        pid = k[len(PACKS):-5]
        if pid in needed_packs or mtime >= cutoff:
            result.packs_kept += 1
            continue
        idx = f"{PACKS}{pid}.idx"
        if not result.dry_run:
            if idx in listing:
                r.backend.delete(idx)  # the pack is invisible from here on
            r.backend.delete(k)
        result.packs_removed.append(pid)
        result.bytes_freed += size + listing.get(idx, (0, 0.0))[0]
