"""Small tensors share pack files (mlvc/store.py PackSet, docs/format.md "Packs"): a checkpoint of thousands of
small tensors is a handful of files, checks out byte for byte, is verified by fsck, and gc removes what is
unreachable from a pack without losing what the pack still holds for others."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import flip_byte, make_repo, sha256_file, write_safetensors_np
from mlvc import codec
from mlvc.bundles import resolve_bundles
from mlvc.errors import CorruptObjectError
from mlvc.objects import Manifest
from mlvc.repo import Repo
from mlvc.store import PACK_DIR, PACK_OBJECT_MAX, LooseObjectStore, PackSet
from mlvc.util import hash_bytes


def _object_files(repo) -> list[str]:
    out = []
    for base, _dirs, files in os.walk(os.path.join(repo.dir, "objects")):
        out += [os.path.join(base, f) for f in files]
    return out


def _many_small(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"block.{i // 50}.unit.{i % 50}.scale": rng.standard_normal(int(rng.integers(1, 9)), dtype=np.float32)
            for i in range(n)}


def test_many_small_tensors_share_few_files_and_check_out_exactly(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "model.safetensors")
    tensors = _many_small(1000)
    write_safetensors_np(path, tensors)
    c1 = repo.commit(path, message="small")
    files = _object_files(repo)
    # 1000 tensors in one bundle, the header, the manifest and the commit
    assert len(files) < 10, files
    entry = repo.read_manifest(c1.commit.manifest).files[0]
    assert len({t.slot.bundle for t in entry.tensors}) == 1 and all(t.slot for t in entry.tensors)
    out = tmp_path / "out"
    repo.checkout("HEAD", output=str(out))
    assert sha256_file(out / "model.safetensors") == sha256_file(path)
    assert repo.fsck().ok
    # a second version changing a few tensors: the unchanged ones are not written again
    tensors["block.0.unit.0.scale"] = tensors["block.0.unit.0.scale"] + 1
    write_safetensors_np(path, tensors)
    repo.commit(path, message="one changed")
    loaded = repo.load(c1.commit.id, framework="numpy")
    assert all(np.array_equal(loaded[k], v) for k, v in _many_small(1000).items())
    assert repo.fsck().ok


def test_gc_removes_unreachable_packed_objects_and_keeps_their_pack_mates(tmp_path):
    repo = make_repo(tmp_path / "repo")
    store = repo.store
    keep = [store.put(f"keep {i}".encode(), pack=True).id for i in range(20)]
    drop = [store.put(f"drop {i}".encode(), pack=True).id for i in range(20)]
    store.flush()
    assert len(os.listdir(os.path.join(store.root, PACK_DIR))) == 1
    for oid in drop[:5]:
        store.delete(oid)  # one at a time, as gc does
    store.delete_many(drop[5:])
    fresh = LooseObjectStore(store.root)
    assert set(fresh.ids()) == set(keep)
    assert all(fresh.get(oid) == f"keep {i}".encode() for i, oid in enumerate(keep))
    store.delete_many(keep)
    assert list(LooseObjectStore(store.root).ids()) == []
    assert os.listdir(os.path.join(store.root, PACK_DIR)) == []


def _one_pack(tmp_path, n: int):
    """A repository with one commit of n tiny tensors: (repo, the pack folder, its largest pack's file name; the
    header's chunk and the tensors' bundle may be in two packs)."""
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "model.safetensors")
    write_safetensors_np(path, _many_small(n))
    repo.commit(path, message="small")
    folder = os.path.join(repo.dir, "objects", PACK_DIR)
    name = max(os.listdir(folder), key=lambda n: os.path.getsize(os.path.join(folder, n)))
    return repo, folder, name


def test_a_damaged_pack_is_caught_on_read_and_by_fsck(tmp_path):
    repo, folder, name = _one_pack(tmp_path, 200)
    flip_byte(os.path.join(folder, name), os.path.getsize(os.path.join(folder, name)) // 2)
    fresh = LooseObjectStore(os.path.join(repo.dir, "objects"))
    packed = fresh.packs.ids()
    assert packed
    with pytest.raises(CorruptObjectError):
        for oid in packed:  # the damaged pack's objects come first or later
            fresh.get(oid)
    assert not Repo(repo.root).fsck().ok


@pytest.mark.parametrize("offset", [0, 4, 5, 8, 12, 28, 32])  # magic, version, pad, count, id, length, index hash
def test_objects_of_a_pack_with_a_damaged_header_read_as_corrupt_not_missing(tmp_path, offset):
    store = LooseObjectStore(str(tmp_path / "objects"))
    oid = store.put(b"small object", pack=True).id
    store.flush()
    folder = os.path.join(store.root, PACK_DIR)
    (name,) = os.listdir(folder)
    flip_byte(os.path.join(folder, name), offset)
    fresh = LooseObjectStore(store.root)
    # even with its id garbled in the index (offset 12), the object is found (its id recovered from its
    # content) and reads as corrupt: fsck names the object the damage hit, not a missing one
    assert fresh.has(oid) and oid in fresh.packs.ids()
    with pytest.raises(CorruptObjectError):
        fresh.verify(oid)
    for other in fresh.packs.ids():
        with pytest.raises(CorruptObjectError):
            fresh.verify(other)
    assert list(fresh.packs.bad_packs()) == [name[: -len(".pack")]]
    fresh.delete(oid)  # gc leaves a damaged pack alone: fsck keeps reporting it
    assert os.listdir(folder) == [name]


def test_fsck_names_a_pack_whose_header_is_damaged(tmp_path):
    repo, folder, name = _one_pack(tmp_path, 50)
    flip_byte(os.path.join(folder, name), 0)  # the magic: the pack cannot be read at all
    report = Repo(repo.root).fsck()
    assert not report.ok
    assert [p.path for p in report.problems if p.problem == "corrupt pack"] == [name[: -len(".pack")]]


def test_another_process_sees_a_pack_written_after_it_listed_the_folder(tmp_path):
    a = LooseObjectStore(str(tmp_path / "objects"))
    b = LooseObjectStore(str(tmp_path / "objects"))
    assert not b.has("0" * 32)  # b lists the (empty) folder now
    oid = a.put(b"written by a", pack=True).id
    assert not b.has(oid)  # not sealed yet: only a reads it
    assert a.get(oid) == b"written by a"
    a.seal()
    assert b.has(oid) and b.get(oid) == b"written by a"


def test_loose_objects_of_earlier_versions_stay_readable(tmp_path):
    """A store written before packs (every object loose) reads as it did; new small objects go to packs."""
    root = str(tmp_path / "objects")
    old = LooseObjectStore(root)
    ids = [old.put(f"old {i}".encode()).id for i in range(10)]  # the old code path: no pack
    old.flush()
    assert not os.path.exists(os.path.join(root, PACK_DIR))
    new = LooseObjectStore(root)
    new_id = new.put(b"new small", pack=True).id
    new.flush()
    assert set(new.ids()) == {*ids, new_id}
    assert all(new.get(oid) == f"old {i}".encode() for i, oid in enumerate(ids))
    for oid in ids:
        new.verify(oid)


def test_large_objects_are_never_packed(tmp_path):
    store = LooseObjectStore(str(tmp_path / "objects"))
    big = os.urandom(PACK_OBJECT_MAX + 1)
    oid = store.put(big, pack=True).id
    store.flush()
    assert os.path.exists(store._path(oid))
    assert store.packs.ids() == []


_blobs = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=40, unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=_blobs, data=st.data())
def test_pack_round_trip_and_delete_property(tmp_path_factory, blobs, data):
    """Any set of small objects: sealed into packs (in one or several seals), read back exactly by a fresh
    store, and after deleting any subset exactly the rest is there."""
    folder = str(tmp_path_factory.mktemp("packs"))
    packs = PackSet(folder)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(blobs)), max_size=3)))
    ids = []
    for i, blob in enumerate(blobs):
        oid = hash_bytes(blob)
        width = data.draw(st.sampled_from([1, 2, 4, 8]))  # a hint: a length it does not divide is kept as width 1
        assert packs.add(oid, blob, width)
        assert not packs.add(oid, blob, width)  # once
        ids.append(oid)
        if i in cuts:
            packs.seal()
    packs.seal()
    fresh = PackSet(folder)
    assert sorted(fresh.ids()) == sorted(ids)
    for oid, blob in zip(ids, blobs, strict=True):
        assert codec.decode(fresh.read(oid)) == blob
    dead = data.draw(st.sets(st.sampled_from(ids)))
    fresh.delete(sorted(dead))
    again = PackSet(folder)
    assert sorted(again.ids()) == sorted(set(ids) - dead)
    for oid, blob in zip(ids, blobs, strict=True):
        got = again.read(oid)
        assert (got is None) if oid in dead else (codec.decode(got) == blob)


def test_an_object_two_packs_hold_stays_readable_when_one_pack_goes(tmp_path):
    """Two processes that packed the same small object (or a crash between a rewrite and the removal of the
    old pack) leave it in two packs: removing the other objects of one of them keeps it found."""
    root = str(tmp_path / "objects")
    a, b = LooseObjectStore(root), LooseObjectStore(root)
    shared = a.put(b"in both packs", pack=True).id
    only_a = a.put(b"only in a", pack=True).id
    b.put(b"in both packs", pack=True)
    a.seal()
    b.seal()
    reader = LooseObjectStore(root)
    assert len(os.listdir(os.path.join(root, PACK_DIR))) == 2 and reader.has(shared)
    reader.delete(only_a)  # rewrites a's pack without only_a (and maybe drops a copy of shared with it)
    reader.delete_many([])
    assert reader.get(shared) == b"in both packs"
    assert LooseObjectStore(root).get(shared) == b"in both packs"


# -- version-2 packs, version-1 packs still read, manifests without implied fields ---------------------------

def _v1_pack(folder: str, objects: list[bytes]) -> tuple[str, list[str]]:
    """A version-1 pack as earlier mlvc wrote it (docs/format.md "Packs"): object files, 20-byte index entries."""
    import struct

    import zstandard

    files = [codec.encode(o, 4 if len(o) % 4 == 0 else 1) for o in objects]
    ids = [hash_bytes(o) for o in objects]
    head = struct.pack("<4sB3sI", b"MLVP", 1, bytes(3), len(files))
    table = b"".join(bytes.fromhex(i) + struct.pack("<I", len(f)) for i, f in zip(ids, files, strict=True))
    body = head + table + bytes.fromhex(hash_bytes(head + table))
    body += zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"".join(files))
    name = hash_bytes(body)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".pack"), "wb") as f:
        f.write(body + bytes.fromhex(name))
    return name, ids


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=_blobs, data=st.data())
def test_version_1_packs_read_and_rewrite_as_version_2(tmp_path_factory, blobs, data):
    """A store written by the previous version (version-1 packs) reads exactly; gc's rewrite of such a pack
    makes a version-2 pack holding exactly the objects that stay."""
    root = str(tmp_path_factory.mktemp("objects"))
    name, ids = _v1_pack(os.path.join(root, PACK_DIR), blobs)
    store = LooseObjectStore(root)
    assert sorted(store.ids()) == sorted(set(ids))
    assert all(bytes(store.get(i)) == b for i, b in zip(ids, blobs, strict=True))
    dead = data.draw(st.sets(st.sampled_from(ids)))
    store.delete_many(sorted(dead))
    again = LooseObjectStore(root)
    assert sorted(again.ids()) == sorted(set(ids) - dead)
    assert all(bytes(again.get(i)) == b for i, b in zip(ids, blobs, strict=True) if i not in dead)
    for pack in os.listdir(os.path.join(root, PACK_DIR)):
        with open(os.path.join(root, PACK_DIR, pack), "rb") as f:
            assert f.read(5)[4] == (1 if pack[:-5] == name else 2)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(0, 64)), min_size=1, max_size=30),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3))
def test_a_flip_anywhere_in_a_version_2_pack_never_returns_wrong_bytes(tmp_path_factory, sizes, flips):
    """Fault injection: bytes damaged anywhere in a pack: every read is the right bytes or a CorruptObjectError
    (never other bytes), and fsck's check of the folder (bad packs, or verify of each object) sees it."""
    root = str(tmp_path_factory.mktemp("objects"))
    rng = np.random.default_rng(len(sizes))
    store = LooseObjectStore(root)
    objects = {}
    for w, n in sizes:
        raw = rng.standard_normal(n).astype(f"<f{w}" if w > 1 else "u1").tobytes() if w in (2, 4, 8) \
            else rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        objects[store.put(raw, width=w, pack=True).id] = raw
    store.flush()
    (pack,) = os.listdir(os.path.join(root, PACK_DIR))
    path = os.path.join(root, PACK_DIR, pack)
    size = os.path.getsize(path)
    for at, xor in flips:
        flip_byte(path, int(at * size), xor)
    fresh = LooseObjectStore(root)
    caught = bool(fresh.packs.bad_packs())
    for oid, raw in objects.items():
        try:
            got = fresh.get(oid)
        except CorruptObjectError:
            caught = True
        except Exception as e:  # an id the damage hid reads as missing, never as other bytes
            assert type(e).__name__ == "ObjectNotFoundError"
            caught = True
        else:
            assert bytes(got) == raw
    assert caught  # the trailer hash covers every byte: no damage goes unnoticed


_mix = st.lists(st.tuples(st.sampled_from(["F32", "F16", "I64", "U8"]),
                          st.one_of(st.integers(0, 9), st.integers(4000, 9000))), min_size=1, max_size=25)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=_mix)
def test_random_mixes_of_tiny_and_large_tensors_round_trip_exactly(tmp_path_factory, mix):
    """Tiny (packed) and larger (loose) tensors of any dtype, empty ones included: committed, checked out byte
    for byte, loaded exactly, and the manifest reads back the same entries it was written from."""
    kinds = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8}
    rng = np.random.default_rng(len(mix))
    tensors = {f"t.{i}": (rng.standard_normal(n) * 100).astype(kinds[dt]) for i, (dt, n) in enumerate(mix)}
    repo = make_repo(tmp_path_factory.mktemp("mix") / "repo", chunk_size=16 << 10)
    path = os.path.join(repo.root, "model.safetensors")
    write_safetensors_np(path, tensors)
    c = repo.commit(path, message="mix")
    out = tmp_path_factory.mktemp("out")
    repo.checkout("HEAD", output=str(out))
    assert sha256_file(out / "model.safetensors") == sha256_file(path)
    loaded = repo.load(c.commit.id, framework="numpy")
    assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())
    m = repo.read_manifest(repo.read_commit(c.commit.id).manifest)
    assert resolve_bundles(repo.store, Manifest.from_dict(json.loads(m.to_bytes()))) == m
    assert repo.fsck().ok


_entries = st.builds(
    lambda name, dtype, shape, nchunks, alias, seed: _entry(name, dtype, shape, nchunks, alias, seed),
    st.text(min_size=1, max_size=8), st.sampled_from(["F32", "BF16", "I8", "BOOL", "F4", "X9"]),
    st.lists(st.integers(0, 5), max_size=3), st.integers(0, 3), st.one_of(st.none(), st.just("other")),
    st.integers(0, 1 << 30))


def _entry(name, dtype, shape, nchunks, alias, seed):
    from mlvc.objects import TensorEntry, implied_nbytes

    ids = [hash_bytes(f"{seed}.{i}".encode()) for i in range(nchunks)]
    nbytes = implied_nbytes(dtype, shape)
    if nbytes is None:  # a dtype outside the table: any length
        nbytes = seed % 1000
    tensor_hash = (ids[0] if nchunks == 1 else hash_bytes(b"") if nchunks == 0 and seed % 2
                   else hash_bytes(str(seed).encode()))
    return TensorEntry(name, dtype, shape, nbytes, tensor_hash, ids, alias)


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(_entries, max_size=6, unique_by=lambda t: t.name))
def test_manifests_round_trip_with_implied_fields_left_out(entries):
    """Any tensor entries: written without what a reader can work out, read back equal; the old form (every
    entry with `nbytes` and `hash`, format 1) reads to the same entries."""
    from mlvc.objects import FileEntry, implied_hash

    m = Manifest(["m.safetensors"], [FileEntry("m.safetensors", "safetensors", 1, hash_bytes(b"f"),
                                               tensors=entries, header=[hash_bytes(b"h")])], 64)
    doc = json.loads(m.to_bytes())
    assert doc["format"] == 2 and Manifest.from_dict(doc) == m
    for t, d in zip(entries, doc["files"][0]["tensors"], strict=True):
        assert ("hash" in d) == (t.alias is not None or implied_hash(t.chunks) != t.hash)
    old = dict(doc, format=1)
    old["files"] = [dict(doc["files"][0], tensors=[dict(t.to_dict(), nbytes=t.nbytes, hash=t.hash)
                                                   for t in entries])]
    assert Manifest.from_dict(old) == m


def test_first_unchanged_commit_after_an_upgrade_is_nothing_to_commit(tmp_path):
    """A repository whose HEAD manifest is format 1 (hash and nbytes spelled out for every tensor): committing
    the same checkpoint again with this version writes a format-2 manifest with another id, and is still
    "nothing to commit"; a real change still commits."""
    from mlvc.errors import NothingToCommitError
    from mlvc.objects import Commit
    from mlvc.util import canonical_json

    repo = make_repo(tmp_path / "r")
    path = str(tmp_path / "r" / "model.safetensors")
    rng = np.random.default_rng(0)
    write_safetensors_np(path, {f"t{i}": rng.standard_normal(8).astype(np.float32) for i in range(20)})
    first = repo.commit(paths=[path], message="new format").commit
    m = repo.read_manifest(first.manifest)
    old_form = {"type": "manifest", "format": 1, "roots": m.roots, "chunk_size": m.chunk_size,
                "files": [{**f.to_dict(), "tensors": [{"name": t.name, "dtype": t.dtype, "shape": t.shape,
                                                       "nbytes": t.nbytes, "hash": t.hash, "chunks": t.chunks}
                                                      for t in f.tensors]} for f in m.files]}
    for f in m.files:  # an older mlvc stored each tensor as an object of its own
        for t in f.tensors:
            repo.store.put(repo.store.get(t.chunks[0]))
    old_form["files"] = [{k: v for k, v in f.items() if k not in ("bundles", "small")} for f in old_form["files"]]
    old_id = repo.store.put(canonical_json(old_form)).id
    assert old_id != first.manifest and repo.read_manifest(old_id) == m
    old = Commit(old_id, [], "tester", first.time, "written by an older mlvc", {})
    repo.write_commit(old)
    repo.refs.set_if_equals("refs/heads/main", first.id, old.id)
    with pytest.raises(NothingToCommitError):
        repo.commit(paths=[path], message="same weights")
    write_safetensors_np(path, {f"t{i}": rng.standard_normal(8).astype(np.float32) for i in range(20)})
    assert repo.commit(paths=[path], message="changed").commit.parents == [old.id]


class _Walks(list):
    """A tensor list that counts how often it is walked whole."""

    walks = 0

    def __iter__(self):
        _Walks.walks += 1
        return super().__iter__()


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.sampled_from(["F32", "BF16"]), st.integers(1, 3)),
                max_size=30),
       st.lists(st.tuples(st.sampled_from("abcdefghij"), st.sampled_from(["F32", "BF16"]), st.integers(1, 3)),
                max_size=30))
def test_history_finds_each_tensor_base_by_name_walking_the_parent_once(parent_specs, asked):
    """A commit of N tensors on top of a parent looks each one's delta bases up by name: the parent's tensor
    list is walked once (a search per tensor made a file of 100,000 tensors take minutes to commit twice), and
    each answer is what a search in file order gives: the first tensor of that name, if dtype and shape match."""
    from mlvc.chunking import Pipeline
    from mlvc.objects import FileEntry, TensorEntry
    from mlvc.snapshot import History
    from mlvc.store import MemoryObjectStore

    tensors = [TensorEntry(name, dtype, [n], 4 * n, f"{i:032x}", [f"{i:032x}"])
               for i, (name, dtype, n) in enumerate(parent_specs)]
    entry = FileEntry("m.safetensors", "safetensors", 0, "0" * 32, tensors=_Walks(tensors))
    history = History(entry, None, ancestors=[entry, None])
    pipe = Pipeline(MemoryObjectStore(), 1 << 20)  # a pipeline that stores (without one, no tensor takes bases)
    pipe.hold_limit = lambda width: 0  # type: ignore[method-assign]  # and holds nothing
    _Walks.walks = 0
    for name, dtype, n in asked:
        want = next((t for t in tensors if t.name == name), None)
        want_chunks = list(want.chunks) if want is not None and (want.dtype, want.shape) == (dtype, [n]) else None
        got = history.tensor(pipe, name, dtype, [n], 4 * n)
        assert got["bases"] == want_chunks and got["bases2"] is None and got["lineage"] == [want_chunks, None]
    assert _Walks.walks <= 1


# -- few full garbage collections in a command ------------------------------------------------------------------
GC_PROBE = """
import gc, sys, weakref
from mlvc.runtime import defer_full_gc
if sys.argv[1] == "deferred":
    defer_full_gc()
counts = [0, 0, 0]
gc.callbacks.append(lambda phase, info: phase == "stop" and counts.__setitem__(info["generation"],
                                                                                counts[info["generation"]] + 1))
kept = [[i, str(i), (i,)] for i in range(600_000)]  # what a command of many tensors builds and keeps

class Node:
    pass

node = Node()
node.me = node  # a cycle that dies young
dead = weakref.ref(node)
del node
junk = [[i] for i in range(20_000)]  # enough allocations for young collections to run
print(counts[0] > 0, counts[2], dead() is None)
"""


NO_GC_THRESHOLD2 = pytest.mark.skipif(sys.version_info >= (3, 14), reason="Python 3.14's collector is incremental")


@NO_GC_THRESHOLD2
def test_a_command_process_runs_no_full_collection_but_still_frees_young_cycles():
    import subprocess

    def probe(mode: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", GC_PROBE, mode], capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert probe("deferred") == ["True", "0", "True"]
    young, full, freed = probe("default")
    assert (young, freed) == ("True", "True") and int(full) > 0  # what the deferral saves: full collections


@NO_GC_THRESHOLD2
def test_the_cli_defers_full_collections_and_the_library_does_not(monkeypatch, tmp_path):
    import gc

    import mlvc.cli as cli_mod
    from mlvc.runtime import FULL_GC_EVERY

    before = gc.get_threshold()
    seen = []
    monkeypatch.setattr(cli_mod, "cli", lambda **kw: seen.append(gc.get_threshold()[2]))
    try:
        repo = make_repo(tmp_path / "repo")
        repo.commit(_many_small(50), message="library")  # a commit through the API leaves the caller's alone
        assert gc.get_threshold() == before
        cli_mod.main()
        assert seen == [FULL_GC_EVERY]
    finally:
        gc.set_threshold(*before)


def test_the_tracker_worker_collects_between_two_jobs(monkeypatch):
    import queue

    from mlvc import trackworker

    class Job:
        files: list = []

    class FakeWriter:
        def run(self, job):
            calls.append("run")
            return "result"

    calls: list[str] = []
    monkeypatch.setattr(trackworker.gc, "collect", lambda *a: calls.append("collect"))
    msgs: queue.SimpleQueue = queue.SimpleQueue()
    for seq in (1, 2):
        msgs.put(("job", seq, Job()))
    msgs.put(("close",))
    sent: list = []
    trackworker._serve_jobs(FakeWriter(), msgs, sent.append)  # type: ignore[arg-type]
    assert calls == ["run", "collect", "run", "collect"]
    assert [m[:3] for m in sent] == [("done", 1, "result"), ("done", 2, "result")]


# -- small ranges read many per read ----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 5000), ranges=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5200),
                                                             st.integers(0, 300)), max_size=40),
       window=st.integers(1, 2048))
def test_read_ahead_gives_what_each_range_reads_alone(tmp_path, monkeypatch, size, ranges, window):
    from mlvc import chunking
    from mlvc.errors import FileChangedError

    rng = np.random.default_rng(size)
    paths = [str(tmp_path / f"f{k}") for k in range(2)]
    for k, p in enumerate(paths):
        with open(p, "wb") as f:
            f.write(rng.integers(0, 256, size + 97 * k, dtype=np.uint8).tobytes())
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        with monkeypatch.context() as m:  # undone after each example
            m.setattr(chunking, "READ_AHEAD", window)
            m.setattr(chunking, "READ_AHEAD_MIN", max(1, window // 4))
            ahead = chunking._ReadAhead()
            for k, offset, length in ranges:
                r = chunking.FileRange(fds[k], offset, length, paths[k])
                try:
                    alone: bytes | type = r.read()
                except FileChangedError:  # a range past the end: the file changed, as a plain read says
                    alone = FileChangedError
                if alone is FileChangedError:
                    with pytest.raises(FileChangedError):
                        ahead.read(r)
                else:
                    assert ahead.read(r) == alone
    finally:
        for fd in fds:
            os.close(fd)


def test_read_ahead_windows_grow_along_a_run_and_ranges_out_of_order_are_read_alone(tmp_path, monkeypatch):
    from mlvc import chunking

    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 4096)  # 1 MiB
    sizes: list[int] = []
    real = os.pread
    monkeypatch.setattr(chunking.os, "pread", lambda fd, n, at: sizes.append(n) or real(fd, n, at))
    monkeypatch.setattr(chunking, "READ_AHEAD_MIN", 1024)
    monkeypatch.setattr(chunking, "READ_AHEAD", 8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = [chunking.FileRange(fd, off, 100, path) for off in range(0, 60_000, 100)]
        ahead = chunking._ReadAhead()
        assert b"".join(ahead.read(r) for r in ranges) == real(fd, 60_000, 0)
        assert sizes[:5] == [100, 1024, 2048, 4096, 8192] and set(sizes[5:]) == {8192}  # a run: windows grow
        sizes.clear()
        ahead = chunking._ReadAhead()
        assert [ahead.read(r) for r in reversed(ranges)] == [r.read() for r in reversed(ranges)]
        assert sizes == [100] * len(ranges)  # backwards: each range alone, nothing read for nothing
    finally:
        os.close(fd)


def test_tiny_tensors_are_read_a_window_at_a_time_and_a_file_cut_short_is_refused(tmp_path, monkeypatch):
    from mlvc import chunking
    from mlvc.errors import FileChangedError

    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "model.safetensors")
    write_safetensors_np(path, _many_small(3000))
    reads = []
    real = os.pread
    monkeypatch.setattr(chunking.os, "pread", lambda fd, n, at: reads.append(n) or real(fd, n, at))
    repo.commit(path, message="tiny")
    assert 0 < len(reads) <= 3  # about 60 KiB of tensors: one window (and the header's own read, if any)
    out = str(tmp_path / "out")
    repo.checkout("HEAD", output=out)
    assert sha256_file(os.path.join(out, "model.safetensors")) == sha256_file(path)

    real_read = chunking._ReadAhead.read

    def cut_short(self, r):  # the file loses its end between two windows
        if self.data and r.offset >= self.start + len(self.data):
            os.truncate(path, r.offset)
        return real_read(self, r)

    from mlvc import snapshot

    monkeypatch.setattr(chunking, "READ_AHEAD", 4096)
    monkeypatch.setattr(chunking, "READ_AHEAD_MIN", 1024)
    monkeypatch.setattr(snapshot, "RUN_MAX", 2048)  # runs of tensors read in several windows
    monkeypatch.setattr(chunking._ReadAhead, "read", cut_short)
    write_safetensors_np(path, _many_small(3000, seed=1))
    head = repo.head()
    with pytest.raises(FileChangedError):
        repo.commit(path, message="cut")
    assert repo.head() == head
