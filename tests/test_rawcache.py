"""The raw cache (mlvc/rawcache.py, docs/design.md "The raw cache"): raw copies of the chunks recent commits
stored, read instead of decoding delta chains. It must change no stored byte, never serve what it cannot prove
(bytes that do not match their id, a chunk whose object is gone, fsck's reads), survive any damage and any disk
that refuses it, and stay within its bound."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import flip_byte, make_repo, set_config, write_safetensors_np
from mlvc import codec
from mlvc.errors import CorruptObjectError, ObjectNotFoundError
from mlvc.rawcache import RawCache
from mlvc.repo import Repo
from mlvc.store import PACK_OBJECT_MAX, MemoryObjectStore
from mlvc.util import hash_bytes

CHUNK = 64 << 10  # several loose chunks per tensor


def _versions(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """n versions of a small fp32 model: the layers move a little each time (as a fine-tune does), the embedding
    stays as it was (frozen: its chunks are put again, unchanged, by every commit)."""
    rng = np.random.default_rng(seed)
    sd = {f"layer{i}.weight": rng.standard_normal(40_000 + 8_000 * i).astype(np.float32) for i in range(3)}
    frozen = rng.standard_normal(30_000).astype(np.float32)
    out = []
    for _ in range(n):
        out.append({"embedding": frozen, **{k: v.copy() for k, v in sd.items()}})
        for k, v in sd.items():
            sd[k] = (v + rng.standard_normal(v.shape).astype(np.float32) * np.float32(1e-3)).astype(np.float32)
    return out


def _cached_repo(path) -> Repo:
    """A repository with small chunks (several loose ones per tensor) and the raw cache on."""
    return set_config(make_repo(path, chunk_size=CHUNK), "raw_cache_mb", 4096)


def _commit_series(repo: Repo, versions) -> list[str]:
    """Each version committed by a repository opened anew, as by `mlvc commit`: nothing decoded before is in
    memory."""
    path = os.path.join(repo.root, "model.safetensors")
    ids = []
    for i, sd in enumerate(versions):
        write_safetensors_np(path, sd)
        ids.append(Repo(repo.root).commit(path, message=f"v{i}").commit.id)
    return ids


def _chunks(repo: Repo, cid: str) -> set[str]:
    """The ids of the loose chunks (those the cache holds) of a commit's file."""
    (entry,) = repo.read_manifest(repo.read_commit(cid).manifest).files
    ids = {p if isinstance(p, str) else p[0] for p in entry.pieces()}
    return {oid for oid in ids if repo.store.header(oid).raw_length > PACK_OBJECT_MAX}


def _cached(repo: Repo) -> set[str]:
    folder = os.path.join(repo.dir, "cache", "raw")
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def _checked_out(repo: Repo, rev: str, out) -> bytes:
    repo.checkout(rev, output=str(out), force=True)
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
        return f.read()


def _without_cache(repo: Repo) -> Repo:
    """The repository opened anew, reading no cache (its config unchanged)."""
    plain = Repo(repo.root)
    plain.store.raw_cache = None
    return plain


def test_the_cache_changes_no_stored_byte_and_no_commit_takes_a_base_from_it(tmp_path, monkeypatch):
    """The same series committed with and without the cache: the same manifests and byte-identical object files,
    and the commits decode exactly as many delta objects either way: a delta base is always decoded from its
    objects (which proves them whole), never taken from a raw copy."""
    versions = _versions(5)
    decoded = []
    real = codec._decode_delta
    monkeypatch.setattr(codec, "_decode_delta", lambda *a: decoded.append(1) or real(*a))
    repos = {}
    for name in ("cached", "plain"):
        repo = _cached_repo(tmp_path / name) if name == "cached" else make_repo(tmp_path / name, chunk_size=CHUNK)
        decoded.clear()
        ids = _commit_series(repo, versions)
        repos[name] = (repo, ids, len(decoded))
    (cached, c_ids, c_decodes), (plain, p_ids, p_decodes) = repos["cached"], repos["plain"]
    assert c_decodes == p_decodes > 0
    assert not _cached(plain)
    manifests = [cached.read_commit(c).manifest for c in c_ids]
    assert manifests == [plain.read_commit(c).manifest for c in p_ids]
    data = set().union(*(_chunks(cached, c) for c in c_ids)) | set(manifests)
    assert any(cached.store.header(oid).depth >= 3 for oid in data)  # chains as deep as the series
    for oid in data:
        assert cached.store.read_file(oid) == plain.store.read_file(oid), oid


def test_checkout_of_a_recent_commit_reads_the_cache_and_older_ones_decode(tmp_path, monkeypatch):
    repo = _cached_repo(tmp_path / "r")
    versions = _versions(4)
    ids = _commit_series(repo, versions)
    expected = [_checked_out(_without_cache(repo), c, tmp_path / f"plain{i}") for i, c in enumerate(ids)]
    decoded = []
    real = codec._decode_delta
    monkeypatch.setattr(codec, "_decode_delta", lambda *a: decoded.append(1) or real(*a))
    assert _checked_out(Repo(repo.root), ids[-1], tmp_path / "head") == expected[-1]
    assert not decoded
    assert _checked_out(Repo(repo.root), ids[0], tmp_path / "first") == expected[0]  # full objects: no chain either
    assert _checked_out(Repo(repo.root), ids[1], tmp_path / "second") == expected[1]
    assert decoded  # version 1 is in no cache entry any more: read through its objects


def test_the_cache_holds_the_last_two_commits_within_its_bound(tmp_path):
    """The last commit's chunks and its parent's, the frozen ones (put first by the first commit) included, within
    twice the size of the tree; nothing of the versions before; at most core.raw_cache_mb."""
    repo = _cached_repo(tmp_path / "r")
    ids = _commit_series(repo, _versions(5))
    last, parent = _chunks(repo, ids[-1]), _chunks(repo, ids[-2])
    assert _chunks(repo, ids[0]) & last  # the frozen tensor's
    cached = _cached(repo)
    assert last | parent <= cached and not cached & (_chunks(repo, ids[0]) | _chunks(repo, ids[1])) - last
    folder = os.path.join(repo.dir, "cache", "raw")
    size = os.path.getsize(os.path.join(repo.root, "model.safetensors"))
    assert sum(os.path.getsize(os.path.join(folder, n)) for n in cached) <= 2 * size
    repo = set_config(repo, "raw_cache_mb", 1)
    _commit_series(repo, _versions(2, seed=1))
    assert 0 < sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)) <= 1 << 20


def test_a_commit_of_another_file_keeps_the_models_copies(tmp_path):
    """The bound is the whole tree's size, not what a commit wrote: committing a small second file (the model
    unchanged, not even read) leaves the model's copies where they were."""
    repo = _cached_repo(tmp_path / "r")
    ids = _commit_series(repo, _versions(2))
    model = _chunks(repo, ids[-1])
    notes = os.path.join(repo.root, "notes.safetensors")
    for i in range(3):
        write_safetensors_np(notes, {"w": np.full(6_000, i, dtype=np.float32)})  # one 24 KB chunk
        Repo(repo.root).commit(notes, message=f"notes {i}")
    assert model <= _cached(repo)


def test_a_disk_running_low_empties_the_cache(tmp_path, monkeypatch):
    """With less than MIN_FREE_BYTES free the cache writes nothing and removes what it holds: the objects of a
    commit have the first claim on the disk (a commit that fails for lack of room must not be the cache's
    doing)."""
    from mlvc import rawcache

    repo = _cached_repo(tmp_path / "r")
    versions = _versions(3)
    _commit_series(repo, versions[:2])
    assert _cached(repo)
    monkeypatch.setattr(rawcache, "_free_bytes", lambda folder: rawcache.MIN_FREE_BYTES + 1000)
    new = _commit_series(repo, versions[2:])[0]
    assert not _cached(repo)
    write_safetensors_np(tmp_path / "expect.safetensors", versions[2])
    with open(tmp_path / "expect.safetensors", "rb") as f:
        assert _checked_out(Repo(repo.root), new, tmp_path / "out") == f.read()


def test_a_damaged_object_whose_copy_is_cached_is_no_delta_base(tmp_path):
    """The copy is of no use to a commit: the next commit decodes the damaged object as a base, finds it damaged
    and stores its chunk full, so only the damaged version is lost, never the later ones, with or without the
    cache; fsck finds the same damage with the cache as without it (a delta whose base's copy is cached is
    checked through the base's object)."""
    repo = _cached_repo(tmp_path / "r")
    versions = _versions(6)
    ids = _commit_series(repo, versions[:3])
    deltas = [o for o in sorted(_chunks(repo, ids[2]) - _chunks(repo, ids[1])) if repo.store.header(o).depth == 2]
    assert deltas and set(deltas) <= _cached(repo)
    flip_byte(repo.store.locate(deltas[0]), os.path.getsize(repo.store.locate(deltas[0])) - 3)
    ids += _commit_series(repo, versions[3:])
    plain = _without_cache(repo)
    for i, (cid, sd) in enumerate(zip(ids, versions, strict=True)):
        if i == 2:
            with pytest.raises(CorruptObjectError):
                _checked_out(plain, cid, tmp_path / f"out{i}")
            continue
        write_safetensors_np(tmp_path / "expect.safetensors", sd)
        with open(tmp_path / "expect.safetensors", "rb") as f:
            assert _checked_out(plain, cid, tmp_path / f"out{i}") == f.read(), i
    problems = {(p.object_id, p.problem) for p in Repo(repo.root).fsck().problems}
    assert problems and problems == {(p.object_id, p.problem) for p in _without_cache(repo).fsck().problems}


def test_an_entry_that_is_a_link_is_neither_read_nor_touched(tmp_path, monkeypatch):
    """A link in the cache (to a file outside the repository) is not followed: a read does not open it, even when
    the file holds the chunk's bytes, and a commit that puts the chunk again replaces the link with a file of its
    own instead of setting the outside file's time."""
    repo = _cached_repo(tmp_path / "r")
    versions = _versions(3)
    ids = _commit_series(repo, versions[:2])
    folder = os.path.join(repo.dir, "cache", "raw")
    oid = sorted(_chunks(repo, ids[-1]) & _chunks(repo, ids[0]))[0]  # the frozen tensor's: put by every commit
    entry = os.path.join(folder, oid)
    outside = tmp_path / "outside"
    os.replace(entry, outside)
    os.utime(outside, (0, 0))
    os.symlink(outside, entry)
    opened = []
    real = RawCache.get
    monkeypatch.setattr(RawCache, "get", lambda self, o, n: (opened.append(o), real(self, o, n))[1])
    assert _checked_out(Repo(repo.root), ids[-1], tmp_path / "out") == _checked_out(
        _without_cache(repo), ids[-1], tmp_path / "plain")
    assert opened and oid not in opened  # has() saw a link, not a file
    _commit_series(repo, versions[2:])
    assert os.stat(outside).st_mtime == 0 and not os.path.islink(entry)
    with open(entry, "rb") as f, open(outside, "rb") as g:
        assert f.read() == g.read()


def test_no_cache_by_default_nor_when_it_is_off(tmp_path):
    repo = make_repo(tmp_path / "default", chunk_size=CHUNK)
    assert repo.config.raw_cache_mb == 0 and repo.store.raw_cache is None
    _commit_series(repo, _versions(2))
    repo = set_config(_cached_repo(tmp_path / "r"), "raw_cache_mb", 0)
    _commit_series(repo, _versions(2))
    assert not any(os.path.exists(os.path.join(r, ".mlvc", "cache", "raw")) for r in (tmp_path / "default", repo.root))


DAMAGE = st.sampled_from(["flip", "truncate", "empty", "other", "append"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(DAMAGE, min_size=1, max_size=6), where=st.integers(0, 10**9))
def test_damaged_entries_are_misses_removed_and_build_nothing(tmp_path_factory, damage, where):
    """Any damage to any entries: a checkout is byte-exact, the damaged entries are gone, and a commit made over
    them stores objects that read back (and fsck) without any cache."""
    tmp = tmp_path_factory.mktemp("damage")
    repo = _cached_repo(tmp / "r")
    versions = _versions(4, seed=where % 7)
    ids = _commit_series(repo, versions[:3])
    want = _checked_out(_without_cache(repo), ids[-1], tmp / "want")
    folder = os.path.join(repo.dir, "cache", "raw")
    names = sorted(os.listdir(folder))
    hurt = set()
    for i, kind in enumerate(damage):
        name = names[(where + 7 * i) % len(names)]
        path = os.path.join(folder, name)
        size = os.path.getsize(path)
        if kind == "flip" and size:
            flip_byte(path, (where + i) % size)
        elif kind == "truncate":
            os.truncate(path, (where + i) % max(size, 1))
        elif kind == "empty":
            os.truncate(path, 0)
        elif kind == "other":
            with open(os.path.join(folder, names[(where + 7 * i + 1) % len(names)]), "rb") as f:
                other = f.read()
            if other != open(path, "rb").read():
                with open(path, "wb") as f:
                    f.write(other)
        else:
            with open(path, "ab") as f:
                f.write(b"\0")
        hurt.add(name)
    repo = Repo(repo.root)
    assert _checked_out(repo, ids[-1], tmp / "got") == want
    new = _commit_series(repo, versions[3:])[0]  # reads the parent's and grandparent's entries as bases
    repo = Repo(repo.root)
    for n in hurt:  # a read gives the object's bytes, and leaves no damaged entry behind
        assert hash_bytes(repo.store.get(n)) == n
        if os.path.exists(os.path.join(folder, n)):
            with open(os.path.join(folder, n), "rb") as f:
                assert hash_bytes(f.read()) == n
    plain = _without_cache(repo)
    assert plain.fsck().ok
    write_safetensors_np(tmp / "expect.safetensors", versions[3])
    with open(tmp / "expect.safetensors", "rb") as f:
        assert _checked_out(plain, new, tmp / "new") == f.read()


def test_a_cached_chunk_whose_object_is_gone_is_not_read_nor_a_base(tmp_path):
    repo = _cached_repo(tmp_path / "r")
    versions = _versions(3)
    ids = _commit_series(repo, versions[:2])
    oid = sorted(_chunks(repo, ids[-1]) - _chunks(repo, ids[0]))[0]
    assert oid in _cached(repo)
    path = repo.store.locate(oid)
    os.chmod(path, 0o644)
    os.unlink(path)
    repo = Repo(repo.root)
    with pytest.raises(ObjectNotFoundError):
        repo.store.get(oid)
    new = _commit_series(repo, versions[2:])[0]  # its chunk is stored full (or against another base), not on oid
    plain = _without_cache(repo)
    for chunk in _chunks(plain, new):
        assert oid not in plain.store.bases(chunk)
        plain.store.verify(chunk)


def test_fsck_reads_the_objects_not_the_cache(tmp_path):
    repo = _cached_repo(tmp_path / "r")
    ids = _commit_series(repo, _versions(2))
    oid = sorted(_chunks(repo, ids[-1]) & _cached(repo))[0]
    flip_byte(repo.store.locate(oid), codec.HEADER_SIZE + 40)
    repo = Repo(repo.root)
    assert repo.store.get(oid)  # the cache still gives the right bytes
    with pytest.raises(CorruptObjectError):
        repo.store.verify(oid)
    assert not repo.fsck().ok


def test_deleted_objects_leave_the_cache(tmp_path):
    repo = _cached_repo(tmp_path / "r")
    ids = _commit_series(repo, _versions(1))
    doomed = sorted(_chunks(repo, ids[0]))[:2]
    assert set(doomed) <= _cached(repo)
    repo.store.delete_many(doomed)
    assert not set(doomed) & _cached(repo)


@pytest.mark.parametrize("blocker", ["file", "dangling link", "fifo entries"])
def test_a_cache_that_cannot_be_written_or_read_costs_nothing_but_speed(tmp_path, blocker):
    """A file where the folder goes (every put fails), a link to nowhere (the folder cannot be made: the write
    fails), entries that are not files (a FIFO would block a reader forever; made after the commits, which
    would replace them): commits and checkouts go on, and a FIFO is not even opened."""
    repo = _cached_repo(tmp_path / "r")
    folder = os.path.join(repo.dir, "cache", "raw")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    if blocker == "file":
        with open(folder, "wb") as f:
            f.write(b"not a folder")
    elif blocker == "dangling link":
        os.symlink(str(tmp_path / "nowhere"), folder)
    versions = _versions(3)
    ids = _commit_series(repo, versions)
    if blocker == "fifo entries":
        head = _chunks(repo, ids[-1])
        for oid in head:
            os.unlink(os.path.join(folder, oid))
            os.mkfifo(os.path.join(folder, oid))
        cache = RawCache(folder, 1 << 30)
        assert all(not cache.has(oid) and cache.get(oid, 1 << 16) is None for oid in head)  # neither blocks
    write_safetensors_np(tmp_path / "expect.safetensors", versions[-1])
    with open(tmp_path / "expect.safetensors", "rb") as f:
        assert _checked_out(Repo(repo.root), ids[-1], tmp_path / "out") == f.read()
    assert Repo(repo.root).fsck().ok


def test_a_proven_decode_replaces_an_unproven_one_and_the_depth_rule_looks_at_proven_entries(tmp_path, monkeypatch):
    """A chain at the deepest a base may be (K - 1), its top read through a copy and kept (unproven): the commit's
    base lookup refuses it on the header's depth without decoding the chain (an unproven entry is no reason to
    try), and a base decoded from the objects replaces an unproven entry."""
    store = MemoryObjectStore(keyframe_interval=4, raw_cache=RawCache(str(tmp_path / "raw"), 1 << 30))
    rng = np.random.default_rng(2)
    v = rng.standard_normal(20_000).astype(np.float32)
    oids = [store.put(v.tobytes(), 4).id]
    for _ in range(3):
        v = v + np.float32(1e-3)
        oids.append(store.put(v.tobytes(), 4, base=oids[-1]).id)
    assert [store.header(o).depth for o in oids] == [0, 1, 2, 3] and store.raw_cache is not None
    store.raw_cache.drop(oids[3])
    store = _fresh(store)
    store.get(oids[3], keep=True)  # through the copy of version 2
    assert store._cache.get(oids[3]) is not None and store._cache.get(oids[3], proven=True) is None
    decoded = []
    real = codec._decode_delta
    monkeypatch.setattr(codec, "_decode_delta", lambda *a: decoded.append(1) or real(*a))
    assert store._base(oids[3]) is None and not decoded  # depth 3 + 1 reaches K = 4
    base = store._base(oids[2])  # depth 2: decoded from its objects (its copy is not taken)
    assert base is not None and store._cache.get(oids[2], proven=True) is not None and decoded
    store.raw_cache.drop(oids[1])
    store = _fresh(store)
    store.get(oids[1], keep=True)  # its object decoded on version 0's copy: kept, unproven
    assert store._cache.get(oids[1]) is not None and store._cache.get(oids[1], proven=True) is None
    assert store._base(oids[1]) is not None  # decodes from objects and replaces the unproven entry
    assert store._cache.get(oids[1], proven=True) is not None


def _fresh(store: MemoryObjectStore) -> MemoryObjectStore:
    """The same objects and raw cache, nothing decoded in memory: as a new process would find them."""
    fresh = MemoryObjectStore(keyframe_interval=store.keyframe_interval, raw_cache=store.raw_cache)
    fresh._objects = store._objects
    return fresh


def test_a_base_too_deep_for_the_delta_that_names_it_is_refused_from_the_cache_too(tmp_path):
    """The depth rule of a chain (depths strictly fall) holds for a base read from the cache: its depth comes
    from its object's header, and a base at or above the delta's depth is an error, as when decoded."""
    store = MemoryObjectStore(raw_cache=RawCache(str(tmp_path / "raw"), 1 << 30))
    raw = np.arange(20_000, dtype=np.float32).tobytes()
    oid = store.put(raw, 4).id
    assert store.raw_cache is not None and store.raw_cache.get(oid, len(raw)) == raw
    assert store._load(oid) == (raw, 0, False)  # a copy: not proven
    with pytest.raises(CorruptObjectError):
        store._load(oid, below=0)


def test_what_was_decoded_through_a_copy_is_no_delta_base_later_in_the_process(tmp_path):
    """A read may decode a delta on a base's copy and keep the result among the decoded bases (to read the next
    version faster); a later commit in the same process does not take it as a base, since the base's object was
    never read: damaged, it makes the result no base at all."""
    store = MemoryObjectStore(raw_cache=RawCache(str(tmp_path / "raw"), 1 << 30))
    rng = np.random.default_rng(0)
    v0 = rng.standard_normal(20_000).astype(np.float32)
    v1 = v0 + np.float32(1e-3)
    oid0 = store.put(v0.tobytes(), 4).id
    oid1 = store.put(v1.tobytes(), 4, base=oid0).id
    assert store.bases(oid1) == [oid0] and store.raw_cache is not None
    store.raw_cache.drop(oid1)  # v1 is read through its object, v0 from its copy
    store = _fresh(store)
    assert store.get(oid1, keep=True) == v1.tobytes()  # v0 from its copy, v1 decoded and kept
    assert store._cache.get(oid1) is not None and store._cache.get(oid1, proven=True) is None
    data = bytearray(store.read_file(oid0))
    data[-1] ^= 0xFF
    store._objects[oid0] = bytes(data)
    assert store._base(oid1) is None  # decoded from its objects: the damaged base is found
    assert store.get(oid1) == v1.tobytes()  # a read still may use the copy and what was decoded through it


def test_small_objects_are_not_cached(tmp_path):
    store = MemoryObjectStore(raw_cache=RawCache(str(tmp_path / "raw"), 1 << 30))
    small = store.put(bytes(PACK_OBJECT_MAX), 1).id
    big = store.put(bytes(PACK_OBJECT_MAX + 8), 1).id
    assert os.listdir(tmp_path / "raw") == [big] and small != big


def test_a_fetched_delta_on_a_damaged_local_base_is_refused_whatever_its_copy(tmp_path):
    """A fetched delta is checked by decoding it on the local copies of its bases, read from their objects: a
    local base whose object is damaged fails the fetch (as without the cache), its raw copy notwithstanding."""
    from mlvc.remote import verify_object

    rng = np.random.default_rng(1)
    v0 = rng.standard_normal(20_000).astype(np.float32)
    v1 = v0 + np.float32(1e-3)
    remote = MemoryObjectStore()
    oid0 = remote.put(v0.tobytes(), 4).id
    oid1 = remote.put(v1.tobytes(), 4, base=oid0).id
    assert remote.bases(oid1) == [oid0]
    local = MemoryObjectStore(raw_cache=RawCache(str(tmp_path / "raw"), 1 << 30))
    local.put(v0.tobytes(), 4)
    assert local.raw_cache is not None and local.raw_cache.has(oid0)
    data = bytearray(local.read_file(oid0))
    data[-1] ^= 0xFF
    local._objects[oid0] = bytes(data)
    local = _fresh(local)
    with pytest.raises(CorruptObjectError):
        verify_object(local, oid1, remote.read_file(oid1), "the remote")


def test_an_entry_of_another_size_is_removed_unread(tmp_path, monkeypatch):
    """A copy is read only when it has the object's raw length: a file of any other size (a torn write, a huge
    stray file) is removed without its bytes ever being read into memory."""
    from mlvc import rawcache

    cache = RawCache(str(tmp_path / "raw"), 1 << 30)
    raw = bytes(range(256)) * 100
    oid = hash_bytes(raw)
    cache.put(oid, raw)
    reads = []

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, *a):
            reads.append(a)
            return self.f.read(*a)

    monkeypatch.setattr(rawcache, "open", lambda *a, **k: Spy(open(*a, **k)), raising=False)
    assert cache.get(oid, len(raw)) == raw and reads
    reads.clear()
    with open(os.path.join(cache.folder, oid), "ab") as f:
        f.write(b"\0" * 4096)
    assert cache.get(oid, len(raw)) is None and not reads and not cache.has(oid)


def test_bytes_remembered_for_an_object_already_there_are_no_delta_base(tmp_path):
    """A process that remembers what it commits (the Tracker) keeps the bytes it put; for an object that was
    already there (written by another process, its file since damaged) they prove nothing about the object, so
    the next version is not delta-coded on it without decoding it: the damage is found and the version stored
    full, readable."""
    rng = np.random.default_rng(3)
    v0 = rng.standard_normal(20_000).astype(np.float32)
    v1 = v0 + np.float32(1e-3)
    first = MemoryObjectStore()
    oid0 = first.put(v0.tobytes(), 4).id
    data = bytearray(first.read_file(oid0))
    data[-1] ^= 0xFF
    first._objects[oid0] = bytes(data)
    store = _fresh(first)
    store.put(v0.tobytes(), 4, remember=True)  # already there: freshened, its bytes remembered
    oid1 = store.put(v1.tobytes(), 4, base=oid0, remember=True).id
    assert store.bases(oid1) == [] and _fresh(store).get(oid1) == v1.tobytes()
