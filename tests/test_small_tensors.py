"""Small tensors share pack files (mlvc/store.py PackSet, docs/format.md "Packs"): a checkpoint of thousands of
small tensors is a handful of files, checks out byte for byte, is verified by fsck, and gc removes what is
unreachable from a pack without losing what the pack still holds for others."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import flip_byte, make_repo, sha256_file, write_safetensors_np
from mlvc import codec
from mlvc.errors import CorruptObjectError
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
    # 1000 tensors, the header, the manifest and the commit: one pack (and the commit/manifest pieces)
    assert len(files) < 10, files
    assert any(os.sep + PACK_DIR + os.sep in f for f in files)
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


def test_a_damaged_pack_is_caught_on_read_and_by_fsck(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "model.safetensors")
    write_safetensors_np(path, _many_small(200))
    repo.commit(path, message="small")
    folder = os.path.join(repo.dir, "objects", PACK_DIR)
    (name,) = os.listdir(folder)
    flip_byte(os.path.join(folder, name), os.path.getsize(os.path.join(folder, name)) // 2)
    fresh = LooseObjectStore(os.path.join(repo.dir, "objects"))
    packed = fresh.packs.ids()
    assert packed
    with pytest.raises(CorruptObjectError):
        fresh.get(packed[0])
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
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "model.safetensors")
    write_safetensors_np(path, _many_small(50))
    repo.commit(path, message="small")
    folder = os.path.join(repo.dir, "objects", PACK_DIR)
    (name,) = os.listdir(folder)
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
        encoded = codec.encode(blob)
        oid = hash_bytes(blob)
        assert packs.add(oid, encoded)
        assert not packs.add(oid, encoded)  # once
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
