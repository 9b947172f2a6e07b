"""Object store contract: one suite run against every backend (like dulwich's object-store test mixin)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from mlvc import codec
from mlvc.errors import CorruptObjectError, MlvcError, ObjectNotFoundError
from mlvc.store import LooseObjectStore, MemoryObjectStore, ObjectStore
from mlvc.util import hash_bytes


class _Backend:
    """A store plus the two things the contract needs that the interface does not offer: damaging an
    object's stored bytes, and reopening the store on the same data."""

    def __init__(self, kind: str, tmp_path):
        self.kind = kind
        self.root = str(tmp_path / "objects")
        self.store = self.reopen()

    def reopen(self) -> ObjectStore:
        if self.kind == "memory":
            if hasattr(self, "store"):
                return self.store
            return MemoryObjectStore()
        if self.kind == "packed":
            return _PackingStore(self.root)
        return LooseObjectStore(self.root)

    def damage(self, oid: str, offset: int, xor: int = 0xFF) -> None:
        if self.kind == "memory":
            data = bytearray(self.store._objects[oid])
            data[offset] ^= xor
            self.store._objects[oid] = bytes(data)
        else:
            path = self.store.locate(oid)
            os.chmod(path, 0o644)
            with open(path, "r+b") as f:
                f.seek(offset)
                b = f.read(1)[0]
                f.seek(offset)
                f.write(bytes([b ^ xor]))


class _PackingStore(LooseObjectStore):
    """A loose store that packs every small object it is given and seals at once (as Pipeline.ingest does at
    its end): the whole contract again, with objects in pack files."""

    def put(self, raw, width=1, oid=None, base=None, base2=None, remember=False, pack=True):
        r = super().put(raw, width, oid, base, base2, remember, pack=pack)
        self.seal()
        return r


@pytest.fixture(params=["memory", "loose", "packed"])
def backend(request, tmp_path) -> _Backend:
    return _Backend(request.param, tmp_path)


def _random(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class TestObjectStoreContract:
    def test_put_get_roundtrip(self, backend):
        s = backend.store
        payloads = [b"", b"x", b"hello world " * 500, _random(5000),
                    np.linspace(0, 1, 4096, dtype=np.float32).tobytes()]
        for data in payloads:
            r = s.put(data, width=4 if len(data) % 4 == 0 else 1)
            assert r.id == hash_bytes(data)
            assert r.raw_size == len(data)
            assert s.has(r.id)
            assert bytes(s.get(r.id)) == data

    def test_put_accepts_memoryviews(self, backend):
        a = np.arange(1000, dtype=np.int64)
        r = backend.store.put(memoryview(a), width=8)
        assert r.raw_size == a.nbytes
        assert bytes(backend.store.get(r.id)) == a.tobytes()

    def test_ids_lists_every_object_once(self, backend):
        s = backend.store
        ids = {s.put(_random(100, i)).id for i in range(20)}
        s.put(_random(100, 3))  # again: no second entry
        listed = list(s.ids())
        assert sorted(listed) == sorted(ids)
        assert len(listed) == len(set(listed))

    def test_second_put_of_same_content_stores_nothing(self, backend):
        s = backend.store
        data = _random(10_000)
        first = s.put(data)
        assert first.new and first.stored_size > 0
        second = s.put(data)
        assert second.id == first.id
        assert second.stored_size == 0 and not second.new
        assert list(s.ids()) == [first.id]

    def test_stored_size_is_the_object_file_size(self, backend):
        s = backend.store
        compressible = b"abc" * 10_000
        r = s.put(compressible)
        assert s.stored_size(r.id) == r.stored_size
        assert r.stored_size < len(compressible) // 10
        rnd = s.put(_random(4096))
        assert s.stored_size(rnd.id) == codec.HEADER_SIZE + 4096

    def test_header_describes_the_encoding(self, backend):
        s = backend.store
        r = s.put(np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes(), width=4)
        h = s.header(r.id)
        if backend.kind == "packed":  # a pack holds raw bytes, shuffled and compressed pack-wide
            assert h.encoding == codec.ENC_RAW and h.width == 1 and h.raw_length == 4096 * 4
        else:
            assert h.encoding == codec.ENC_PLANES and h.width == 4 and h.raw_length == 4096 * 4

    def test_missing_object(self, backend):
        s = backend.store
        missing = hash_bytes(b"never stored")
        assert not s.has(missing)
        with pytest.raises(ObjectNotFoundError) as e:
            s.get(missing)
        assert isinstance(e.value, LookupError) and isinstance(e.value, MlvcError)
        assert e.value.object_id == missing
        assert "mlvc fsck" in str(e.value)
        with pytest.raises(ObjectNotFoundError):
            s.stored_size(missing)

    def test_malformed_ids_are_absent(self, backend):
        s = backend.store
        for bad in ("", "xyz", "../../etc/passwd", "A" * 32, "0" * 31):
            assert not s.has(bad)
            with pytest.raises(ObjectNotFoundError):
                s.get(bad)

    def test_delete(self, backend):
        s = backend.store
        keep = s.put(b"keep me" * 20).id
        gone = s.put(b"delete me" * 20).id
        s.delete(gone)
        assert not s.has(gone)
        assert list(s.ids()) == [keep]
        with pytest.raises(ObjectNotFoundError):
            s.get(gone)
        s.delete(gone)  # deleting what is not there is a no-op
        s.delete("not-an-id")
        assert bytes(s.get(keep)) == b"keep me" * 20
        again = s.put(b"delete me" * 20)  # and it can be stored again
        assert again.new and bytes(s.get(gone)) == b"delete me" * 20

    @pytest.mark.parametrize("offset", [0, 3, 4, 5, 6, 7, 8, 15, 16, 31, 32, 100, -1])
    def test_flipped_byte_is_a_corruption_error(self, backend, offset):
        s = backend.store
        data = _random(300)  # stored raw: every payload byte is content
        oid = s.put(data).id
        assert s.header(oid).encoding == codec.ENC_RAW
        size = s.stored_size(oid)
        backend.damage(oid, offset % size)
        store = backend.reopen()
        assert store.has(oid)
        with pytest.raises(CorruptObjectError) as e:
            store.get(oid)
        assert isinstance(e.value, MlvcError) and isinstance(e.value, ValueError)
        assert e.value.object_id == oid
        assert "mlvc fsck" in str(e.value)

    @pytest.mark.parametrize("width,data", [
        (1, b"json-ish text, very compressible " * 40),
        (4, np.random.default_rng(5).standard_normal(2048).astype(np.float32).tobytes()),
    ])
    def test_damaged_compressed_object_never_returns_wrong_bytes(self, backend, width, data):
        s = backend.store
        oid = s.put(data, width=width).id
        if backend.kind == "packed":  # raw bytes in a pack, compressed pack-wide: a flip anywhere in the pack
            size = os.path.getsize(s.locate(oid))
        else:
            assert s.header(oid).encoding != codec.ENC_RAW
            size = s.stored_size(oid)
        for offset in range(0, size, max(1, size // 40)):
            backend.damage(oid, offset)
            try:
                got = backend.reopen().get(oid)
            except CorruptObjectError:
                pass
            else:
                assert bytes(got) == data  # a harmless flip inside a zstd frame; never other bytes
            backend.damage(oid, offset)  # undo
            assert bytes(backend.reopen().get(oid)) == data

    def test_flush_after_writes(self, backend):
        s = backend.store
        ids = [s.put(_random(64, i)).id for i in range(5)]
        s.flush()
        s.flush()  # nothing pending: still fine
        reopened = backend.reopen()
        assert all(bytes(reopened.get(i)) == _random(64, n) for n, i in enumerate(ids))


class TestLooseObjectStore:
    @pytest.fixture
    def store(self, tmp_path) -> LooseObjectStore:
        return LooseObjectStore(str(tmp_path / "objects"))

    def test_layout_and_read_only_files(self, store):
        oid = store.put(b"some content" * 10).id
        path = store.locate(oid)
        assert path == os.path.join(store.root, oid[:2], oid[2:])
        assert os.path.isfile(path)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, oct(mode)

    def test_no_temp_files_left(self, store):
        for i in range(50):
            store.put(_random(200, i))
        store.flush()
        leftovers = [os.path.join(d, f) for d, _, files in os.walk(store.root) for f in files
                     if not (len(f) == 30 and len(os.path.basename(d)) == 2)]
        assert leftovers == []
        assert len(list(store.ids())) == 50

    def test_failed_write_leaves_no_temp_file(self, store, monkeypatch):
        import mlvc.store as store_mod

        def boom(*_a, **_k):
            raise OSError("disk full")

        monkeypatch.setattr(store_mod.os, "fsync", boom)
        with pytest.raises(OSError, match="disk full"):
            store.put(b"will not land" * 10)
        monkeypatch.undo()
        assert not store.has(hash_bytes(b"will not land" * 10))
        assert [f for _, _, files in os.walk(store.root) for f in files] == []

    def test_ids_ignore_stray_files(self, store):
        oid = store.put(b"real" * 30).id
        folder = os.path.dirname(store.locate(oid))
        open(os.path.join(folder, ".tmp-abandoned"), "wb").close()
        open(os.path.join(store.root, "README"), "wb").close()
        os.makedirs(os.path.join(store.root, "packs"))
        assert list(store.ids()) == [oid]

    def test_flush_syncs_new_folders(self, store, monkeypatch):
        import mlvc.store as store_mod

        synced = []
        monkeypatch.setattr(store_mod, "fsync_dir", synced.append)
        oid = store.put(b"durable" * 20).id
        store.flush()
        assert os.path.dirname(store.locate(oid)) in synced
        assert store.root in synced  # a new sub-folder is an entry in the root
        synced.clear()
        store.flush()
        assert synced == []

    def test_ids_of_missing_root(self, tmp_path):
        assert list(LooseObjectStore(str(tmp_path / "nowhere")).ids()) == []


# -- a state machine: random sequences of operations against a dict model, on each backend --------------------

from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule  # noqa: E402


class _StoreMachine(RuleBasedStateMachine):
    make_store = None  # set by the subclasses below

    def __init__(self):
        super().__init__()
        import tempfile

        self._tmp = tempfile.TemporaryDirectory()
        self.store = type(self).make_store(self._tmp.name)
        self.model: dict[str, bytes] = {}

    ids = Bundle("ids")

    @rule(target=ids, data=st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"a" * 500, b"\0" * 64])),
          width=st.sampled_from([1, 2, 4, 8]))
    def put(self, data, width):
        r = self.store.put(data, width=width)
        assert r.id == hash_bytes(data)
        assert r.new == (r.id not in self.model)
        self.model[r.id] = data
        return r.id

    @rule(oid=ids)
    def get(self, oid):
        if oid in self.model:
            assert bytes(self.store.get(oid)) == self.model[oid]
        else:
            with pytest.raises(ObjectNotFoundError):
                self.store.get(oid)

    @rule(oid=ids)
    def delete(self, oid):
        self.store.delete(oid)
        self.model.pop(oid, None)

    @invariant()
    def same_ids(self):
        assert sorted(self.store.ids()) == sorted(self.model)
        assert all(self.store.has(oid) for oid in self.model)

    def teardown(self):
        self._tmp.cleanup()


class MemoryStoreMachine(_StoreMachine):
    make_store = staticmethod(lambda _tmp: MemoryObjectStore())


class LooseStoreMachine(_StoreMachine):
    make_store = staticmethod(lambda tmp: LooseObjectStore(os.path.join(tmp, "objects")))


TestMemoryStoreMachine = MemoryStoreMachine.TestCase
TestMemoryStoreMachine.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestLooseStoreMachine = LooseStoreMachine.TestCase
TestLooseStoreMachine.settings = settings(max_examples=15, stateful_step_count=15, deadline=None)
