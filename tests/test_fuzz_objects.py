"""Fuzzing the object decoder: ObjectHeader.parse and codec.decode on random bytes and on mutations of valid
object files of every encoding (raw, zstd, planes, xor, sub, sparse, pred), and store reads of mutated object
files (the header rewritten with other ids, depths and lengths too, so that chains break or loop).

The codec may raise only its DecodeError; a store read only an MlvcError (CorruptObjectError,
ObjectNotFoundError), and a read that succeeds must give the object's own bytes (its id is their hash).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given

from fuzz_util import check_all, fuzz_settings, mutate_bytes, random_bytes, seed_batches
from mlvc import codec
from mlvc.errors import MlvcError
from mlvc.store import MemoryObjectStore
from mlvc.util import hash_bytes

# Generated inputs per test: 12,000 in all against the decoder.
RANDOM_INPUTS = 3_000  # random bytes, random headers over random payloads
DECODE_INPUTS = 4_000  # codec.decode of mutated object files
STORE_INPUTS = 5_000  # store reads of mutated object files (and of rewritten headers)


def _objects() -> tuple[MemoryObjectStore, dict[str, bytes], list[str]]:
    """A store holding an object of every encoding; {id: raw} and the ids, bases first."""
    store = MemoryObjectStore(cache_bytes=0)
    rng = np.random.default_rng(0)
    raws: dict[str, bytes] = {}

    def add(raw: bytes, data: bytes) -> str:
        oid = hash_bytes(raw)
        assert codec.decode(data, lambda b: raws[b]) == raw
        store.write_file(oid, data)
        raws[oid] = raw
        return oid

    for raw in [b"", b"hi", bytes(range(256)) * 8]:
        add(raw, codec.encode(raw, 1))
    w0 = rng.standard_normal(512).astype("<f4")
    a = add(w0.tobytes(), codec.encode(w0.tobytes(), 4))
    w1 = w0 + np.float32(1e-3)
    w2 = w1 + np.float32(1e-3)
    sparse = w0.copy()
    sparse[::97] += 1
    b1 = codec.Base(a, raws[a], 0)
    for enc, new in [(codec.ENC_XOR, w1), (codec.ENC_SUB, w1 * np.float32(1.001)), (codec.ENC_SPARSE, sparse)]:
        raw = new.tobytes()
        add(raw, codec._pack_header(enc, 4, len(raw), a, 1) + codec._delta_payload(enc, raw, b1.raw, None, 4, 1))
    b = hash_bytes(w1.tobytes())
    b2 = codec.Base(b, raws[b], 1)
    raw = w2.tobytes()
    add(raw, codec._pack_header(codec.ENC_PRED, 4, len(raw), b, 2) + bytes.fromhex(a)
        + codec._delta_payload(codec.ENC_PRED, raw, b2.raw, b1.raw, 4, 1))
    encodings = {codec.ObjectHeader.parse(store.read_file(o)).encoding for o in raws}
    assert encodings == set(codec.ENCODING_NAMES), encodings
    return store, raws, list(raws)


STORE, RAWS, IDS = _objects()
FILES = {oid: STORE.read_file(oid) for oid in IDS}
SEED_FILES = list(FILES.values())


def _get_base(oid: str):
    if oid not in RAWS:
        raise codec.DecodeError(f"no base {oid}")
    return RAWS[oid]


def _decode(data: bytes) -> None:
    try:
        codec.bases(data)
        codec.decode(data, _get_base)
    except codec.DecodeError:
        pass


def _random_object(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return random_bytes(rng, 80)
    encoding = rng.choice(list(codec.ENCODING_NAMES) + [7, 255])
    base = rng.choice([None, rng.choice(IDS), rng.randbytes(16).hex()])
    header = codec.HEADER.pack(codec.MAGIC, codec.FORMAT_VERSION, encoding, rng.choice([0, 1, 2, 4, 8, 255]),
                               rng.choice([0, 1, 2, 255]), rng.choice([0, 1, 4, 64, 2048, 2 ** 40, 2 ** 64 - 1]),
                               bytes.fromhex(base) if base else codec.NO_BASE)
    return header + random_bytes(rng, 96)


@fuzz_settings(RANDOM_INPUTS)
@given(seed_batches())
def test_decode_random_bytes_and_headers(seeds):
    check_all(seeds, _random_object, _decode)


@fuzz_settings(DECODE_INPUTS)
@given(seed_batches())
def test_decode_mutated_object_files(seeds):
    check_all(seeds, lambda rng: mutate_bytes(rng, rng.choice(SEED_FILES), head=codec.HEADER_SIZE + 24), _decode)


def _rewrite_header(rng: random.Random, data: bytes) -> bytes:
    """The object's payload under a header with other fields: another base (maybe one that names this
    object back), another depth, width, length or encoding."""
    h = codec.ObjectHeader.parse(data)
    fields = {"encoding": h.encoding, "width": h.width, "depth": h.depth, "raw_length": h.raw_length,
              "base": h.base}
    key = rng.choice(list(fields))
    fields[key] = {"encoding": lambda: rng.choice(list(codec.ENCODING_NAMES)),
                   "width": lambda: rng.choice([1, 2, 3, 4, 8, 255]),
                   "depth": lambda: rng.choice([0, 1, 2, 3, 254, 255]),
                   "raw_length": lambda: rng.choice([0, 1, h.raw_length - 1, h.raw_length + 4, 2 ** 40]),
                   "base": lambda: rng.choice([None] + IDS)}[key]()
    return codec.HEADER.pack(codec.MAGIC, codec.FORMAT_VERSION, fields["encoding"], fields["width"],
                             fields["depth"], max(0, fields["raw_length"]),
                             bytes.fromhex(fields["base"]) if fields["base"] else codec.NO_BASE) + data[32:]


def _store_case(rng: random.Random) -> tuple[str, dict[str, bytes]]:
    """An object to read, and the damaged files to put in the store first (one or two objects)."""
    target = rng.choice(IDS)
    damaged = {}
    for oid in {target, rng.choice(IDS)} if rng.random() < 0.3 else {target}:
        data = FILES[oid]
        damaged[oid] = _rewrite_header(rng, data) if rng.random() < 0.3 else mutate_bytes(rng, data, head=56)
    return target, damaged


def _read(case: tuple[str, dict[str, bytes]]) -> None:
    target, damaged = case
    try:
        STORE._objects.update(damaged)
        for read in (STORE.get, STORE.verify, STORE.header, STORE.bases):
            try:
                out = read(target)
            except MlvcError:
                continue
            if read is STORE.get:
                assert bytes(out) == RAWS[target]
    finally:
        STORE._objects.update({oid: FILES[oid] for oid in damaged})


@fuzz_settings(STORE_INPUTS)
@given(seed_batches())
def test_store_reads_of_mutated_object_files(seeds):
    check_all(seeds, _store_case, _read)


def test_the_seed_store_reads_back():
    for oid in IDS:
        assert bytes(STORE.get(oid)) == RAWS[oid]
        STORE.verify(oid)


@pytest.mark.parametrize("oid", IDS[:1])
def test_store_is_restored_after_fuzzing(oid):
    assert all(STORE.read_file(o) == FILES[o] for o in IDS)
