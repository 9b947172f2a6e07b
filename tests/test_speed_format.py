"""The speed work keeps every byte: the incompressible-plane probe, the in-place delta inverse and the
one-chunk segment hash are checked against the slower paths they replace, over classes of inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlvc import codec, delta
from mlvc.chunking import Pipeline, Segment, aligned_chunk
from mlvc.store import MemoryObjectStore
from mlvc.util import hash_bytes, new_hasher


def _weights(n: int, seed: int, scale: float = 0.05) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * scale).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300_000), seed=st.integers(0, 2**32 - 1), width=st.sampled_from([1, 2, 4, 8]),
       kind=st.sampled_from(["noise", "weights", "zeros", "mixed"]))
def test_full_encoding_round_trips_whatever_the_probe_decides(n, seed, width, kind):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == "weights":
        raw = _weights(n // 4 + 1, seed).tobytes()[:n]
    elif kind == "zeros":
        raw = bytes(n)
    else:  # compressible only in the parts the probe windows do not sample
        a = np.zeros(n, dtype=np.uint8)
        a[n // 8 : n // 3] = rng.integers(0, 256, n // 3 - n // 8, dtype=np.uint8)
        raw = a.tobytes()
    raw = raw[: len(raw) - len(raw) % width] if width > 1 else raw
    assert codec.decode(codec.encode(raw, width)) == raw


def _reference_size(raw: bytes, width: int, monkeypatch) -> int:
    with monkeypatch.context() as m:
        m.setattr(codec, "_SKIP_PROBE_MIN", 1 << 62)  # no probe: every plane compressed, as before
        return len(codec.encode(raw, width))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), elems=st.integers(32 << 10, 1 << 19))
def test_probe_costs_no_storage_on_weight_like_data(seed, elems):
    """On float weights (fp32, and bf16 as its top half) the planes the probe skips are the ones that would
    have been stored raw anyway: the encoding is no larger than without the probe (rounding aside)."""
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        w = _weights(elems, seed)
        for raw, width in ((w.tobytes(), 4), ((w.view(np.uint32) >> 16).astype(np.uint16).tobytes(), 2)):
            probed = len(codec.encode(raw, width))
            assert probed <= _reference_size(raw, width, mp) * (1 + codec.MIN_SAVING) + 64
    finally:
        mp.undo()


@settings(max_examples=60, deadline=None)
@given(width=st.sampled_from([1, 2, 4, 8]), count=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(list(delta.KINDS)))
def test_inverse_in_place_equals_inverse_into_a_new_buffer(width, count, seed, kind):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, count * width, dtype=np.uint8).tobytes()
    child = rng.integers(0, 256, count * width, dtype=np.uint8).tobytes()
    d = delta.forward(kind, child, base, width).tobytes()
    assert delta.inverse(kind, d, base, width) == child
    buf = bytearray(d)
    out = delta.inverse(kind, buf, base, width, inplace=True)
    assert out == child and out is buf


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=12), chunk=st.sampled_from([64, 256, 4096]),
       store=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_segment_hashes_are_the_hash_of_their_bytes(sizes, chunk, store, seed):
    """One-chunk segments take their chunk's id as their hash; longer ones hash as they stream: both equal
    the xxh3-128 of the segment's bytes, with or without a store, in or out of the worker pool."""
    rng = np.random.default_rng(seed)
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    for threads in (1, 2):
        with Pipeline(MemoryObjectStore() if store else None, chunk, threads=threads) as pipe:
            results, fhash = pipe.ingest(Segment(i, memoryview(b), 4 if len(b) % 4 == 0 else 1)
                                         for i, b in enumerate(blobs))
        whole = new_hasher()
        for i, b in enumerate(blobs):
            assert results[i].hash == hash_bytes(b)
            assert results[i].nbytes == len(b)
            step = aligned_chunk(chunk, 4 if len(b) % 4 == 0 else 1)
            assert len(results[i].chunks) == -(-len(b) // step)
            whole.update(b)
        assert fhash == whole.hexdigest()


def _versions(count: int, seed: int, elems: int = 4096) -> list[bytes]:
    """A chunk's versions as training makes them: each a small step from the one before."""
    rng = np.random.default_rng(seed)
    w = _weights(elems, seed)
    out = []
    for _ in range(count):
        w = w + rng.standard_normal(elems, dtype=np.float32) * np.float32(1e-5)
        out.append(w.astype(np.float32).tobytes())
    return out


def test_skip_deltas_keep_chains_at_popcount_depth():
    """With the lineage, version n (counted from its keyframe) is a delta against n & (n-1): depth popcount(n),
    at most 3 for K = 8, and every K-th version is full again; every version reads back exactly."""
    store = MemoryObjectStore(keyframe_interval=8, skip_deltas=True)
    ids: list[str] = []
    versions = _versions(20, seed=1)
    for raw in versions:
        lineage = list(reversed(ids))[:8]
        ids.append(store.put(raw, 4, base=lineage[0] if lineage else None, lineage=lineage or None).id)
    assert [store.header(oid).depth for oid in ids] == [bin(k % 8).count("1") for k in range(20)]
    assert [store.header(oid).base for oid in ids[1:8]] == [ids[0], ids[0], ids[2], ids[0], ids[4], ids[4], ids[6]]
    fresh = MemoryObjectStore()
    fresh._objects = dict(store._objects)  # decoded from the stored files alone, no cache
    assert [bytes(fresh.get(oid)) for oid in ids] == versions


def test_without_skip_deltas_a_lineage_changes_nothing_and_chains_stay_storage_optimal():
    """A store without skip_deltas (core.skip_deltas = 0, the default) ignores a lineage: every version is a
    delta against its parent (depth n, up to K-1), which stores least."""
    versions = _versions(10, seed=2)
    plain, given = MemoryObjectStore(keyframe_interval=8), MemoryObjectStore(keyframe_interval=8)
    a: list[str] = []
    b: list[str] = []
    for raw in versions:
        a.append(plain.put(raw, 4, base=a[-1] if a else None).id)
        lineage = list(reversed(b))[:8]
        b.append(given.put(raw, 4, base=lineage[0] if lineage else None, lineage=lineage or None).id)
    assert plain._objects == given._objects
    assert [plain.header(oid).depth for oid in a] == [k % 8 for k in range(10)]
    assert [plain.header(oid).base for oid in a[1:8]] == a[:7]


@settings(max_examples=30, deadline=None)
@given(plan=st.lists(st.sampled_from(["new", "same", "gap"]), min_size=1, max_size=24),
       k=st.integers(1, 9), seed=st.integers(0, 1000), depth_of_lineage=st.integers(1, 10))
def test_skip_delta_bases_round_trip_whatever_the_history(plan, k, seed, depth_of_lineage):
    """Any history: versions that repeat (a commit leaving the chunk as it was), gaps (the tensor absent in a
    commit), lineages shorter than the chain (history from before skip-deltas falls back to the parent):
    every object reads back exactly and no chain reaches the keyframe interval."""
    store = MemoryObjectStore(keyframe_interval=k, skip_deltas=True)
    versions = iter(_versions(len(plan) + 1, seed, elems=1024))
    history: list[str | None] = []
    stored: dict[str, bytes] = {}
    raw = next(versions)
    for step in plan:
        if step == "gap":
            history.append(None)
            continue
        if step == "new" or not history or history[-1] is None:
            raw = next(versions)
        lineage = list(reversed(history))[:depth_of_lineage]
        parent = lineage[0] if lineage else None
        oid = store.put(raw, 4, base=parent, base2=lineage[1] if len(lineage) > 1 else None,
                        lineage=lineage or None).id
        stored[oid] = raw
        history.append(oid)
    fresh = MemoryObjectStore()
    fresh._objects = dict(store._objects)
    for oid, raw in stored.items():
        assert fresh.get(oid) == raw
        assert fresh.header(oid).depth < k


def test_history_ancestors_give_skip_deltas_through_snapshot(tmp_path):
    """The wiring from History.ancestors to the store: a series of safetensors files committed with their
    ancestors has chains of at most 3 links (K = 8) in every tensor, header included, and each version is
    written back byte for byte."""
    import io

    from conftest import write_safetensors_np
    from mlvc.snapshot import History, snapshot_path, write_entry
    from mlvc.util import hash_bytes as h

    store = MemoryObjectStore(keyframe_interval=8, skip_deltas=True)
    rng = np.random.default_rng(3)
    tensors = {"a": _weights(300_000, 1), "b": _weights(70_000, 2), "tiny": _weights(5, 3)}
    entries, files = [], []
    for k in range(12):
        tensors = {n: (v + rng.standard_normal(v.size, dtype=np.float32) * np.float32(1e-5)).astype(np.float32)
                   for n, v in tensors.items()}
        path = str(tmp_path / f"v{k}.safetensors")
        write_safetensors_np(path, tensors)
        ancestors = list(reversed(entries))[:8]
        history = History(ancestors[0] if ancestors else None, ancestors[1] if len(ancestors) > 1 else None,
                          ancestors)
        with Pipeline(store, 1 << 18, threads=2) as pipe:
            entries.append(snapshot_path(pipe, path, "model.safetensors", history=history))
        files.append(path)
    # ("tiny" is held for a bundle, which a manifest would store: not a chunk object)
    depths = [store.header(c).depth for e in entries for t in e.tensors for c in t.chunks if not store.is_slice(c)]
    assert max(depths) == 3 and min(depths) == 0
    for entry, path in zip(entries, files, strict=True):
        out = io.BytesIO()
        with Pipeline(store, 1 << 18) as pipe:
            write_entry(pipe, entry, out)
        with open(path, "rb") as f:
            assert h(out.getvalue()) == h(f.read())


@pytest.mark.parametrize("skip", [0, 1])
def test_commits_bound_every_chain_by_skip_deltas_when_asked(tmp_path, skip):
    """Through `repo.commit`: 12 versions of a slowly trained tensor, each committed on the last. With the
    default keyframe interval (8), chains reach 7 links by default (each version against its parent, the least
    storage) and at most 3 with core.skip_deltas = 1; every version checks out byte for byte either way."""
    from conftest import set_config
    from mlvc.repo import Repo

    repo = set_config(Repo.init(str(tmp_path / "r")), "skip_deltas", skip)
    versions = _versions(12, seed=5, elems=1 << 16)
    for i, raw in enumerate(versions):
        sd = {"w": np.frombuffer(raw, dtype=np.float32).copy()}
        repo.commit(sd, f"step {i}", path="model.safetensors")
    assert repo.config.keyframe_interval == 8
    assert repo.stats().max_depth == (3 if skip else 7)
    for back, raw in enumerate(reversed(versions)):
        got = repo.load(f"HEAD~{back}", path="model.safetensors")["w"]
        assert np.asarray(got).tobytes() == raw
