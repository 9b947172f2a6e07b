"""Delta objects: the transforms, each encoding's roundtrip, chains bounded by the keyframe interval, and
byte-exact checkout of every commit of a series whose tensors change, move, vanish and change shape."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import flip_byte, make_repo, set_config, sha256_file, write_safetensors_np
from mlvc import codec, delta
from mlvc.repo import Repo
from mlvc.store import MemoryObjectStore

WIDTH_DTYPES = {1: np.uint8, 2: np.float16, 4: np.float32, 8: np.float64}


def _pair(draw_bytes: bytes, width: int, frac: float, seed: int) -> tuple[bytes, bytes]:
    """A base and a child that differs in about `frac` of its elements, by small or arbitrary amounts."""
    n = len(draw_bytes) // width * width
    base = np.frombuffer(draw_bytes[:n], dtype=np.uint8).copy()
    rng = np.random.default_rng(seed)
    child = base.copy().view(f"u{width}")
    mask = rng.random(child.shape) < frac
    child[mask] += rng.integers(-3, 4, int(mask.sum())).astype(child.dtype)
    return base.tobytes(), child.tobytes()


@given(st.binary(min_size=0, max_size=4096), st.sampled_from([1, 2, 4, 8]), st.sampled_from(delta.KINDS))
def test_transforms_invert_exactly(data, width, kind):
    n = len(data) // width * width
    base, child = data[:n], bytes(reversed(data[:n]))
    d = delta.forward(kind, child, base, width)
    assert bytes(delta.inverse(kind, d.tobytes(), base, width)) == child


@given(st.binary(min_size=0, max_size=2048), st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**16))
def test_sparse_and_prediction_invert_exactly(data, width, seed):
    base, child = _pair(data, width, 0.2, seed)
    mask, values = delta.sparse(child, base, width)
    assert bytes(delta.unsparse(mask, values.tobytes(), base, width)) == child
    pred = delta.predict(child, base, width)
    d = delta.forward(delta.SUB, child, pred.tobytes(), width)
    assert bytes(delta.inverse(delta.SUB, d.tobytes(), pred.tobytes(), width)) == child


@pytest.mark.parametrize("encoding", [codec.ENC_XOR, codec.ENC_SUB, codec.ENC_SPARSE, codec.ENC_PRED])
@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_each_delta_encoding_roundtrips(encoding, width):
    rng = np.random.default_rng(width)
    dt = WIDTH_DTYPES[width]
    grand = (rng.standard_normal(3000) * 10).astype(dt) if width > 1 else rng.integers(0, 255, 3000, dtype=dt)
    parent = grand.copy()
    parent[::5] = parent[::5] + dt(1)
    child = parent.copy()
    child[::3] = child[::3] + dt(2)
    b2 = codec.Base("b2" * 16, grand.tobytes(), 0)
    b1 = codec.Base("b1" * 16, parent.tobytes(), 1)
    data = _force(encoding, child.tobytes(), width, b1, b2)
    h = codec.ObjectHeader.parse(data)
    assert h.encoding == encoding and h.base == b1.id
    assert h.depth == 2  # one more than the deeper of the bases it uses (b1 has depth 1)
    assert codec.bases(data) == ([b1.id, b2.id] if encoding == codec.ENC_PRED else [b1.id])
    got = codec.decode(data, {b1.id: b1.raw, b2.id: b2.raw}.__getitem__)
    assert bytes(got) == child.tobytes()


def _force(encoding: int, raw: bytes, width: int, b1: codec.Base, b2: codec.Base) -> bytes:
    """Build a delta object with exactly this encoding (what encode_delta writes once it has chosen)."""
    payload = codec._delta_payload(encoding, memoryview(raw), memoryview(b1.raw), memoryview(b2.raw), width, 1)
    depth = 1 + max(b1.depth, b2.depth if encoding == codec.ENC_PRED else 0)
    prefix = bytes.fromhex(b2.id) if encoding == codec.ENC_PRED else b""
    return codec._pack_header(encoding, width, len(raw), b1.id, depth) + prefix + payload


def test_delta_chosen_only_when_smaller():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(100_000).astype(np.float32)
    base = codec.Base("aa" * 16, a.tobytes(), 0)
    close = (a * np.float32(1.0001)).astype(np.float32)
    data = codec.encode_delta(close.tobytes(), 4, 1, base)
    assert data is not None and len(data) < len(codec.encode(close.tobytes(), 4, 1))
    unrelated = rng.standard_normal(100_000).astype(np.float32)
    assert codec.encode_delta(unrelated.tobytes(), 4, 1, base) is None
    assert codec.encode_delta(close[:10].tobytes(), 4, 1, base) is None  # lengths differ


def test_decode_refuses_a_delta_without_its_base():
    a = np.arange(1000, dtype=np.float32)
    data = codec.encode_delta((a + 1).tobytes(), 4, 1, codec.Base("aa" * 16, a.tobytes(), 0))
    with pytest.raises(codec.DecodeError, match="needs its base"):
        codec.decode(data)


def test_store_chains_stay_under_the_keyframe_interval():
    store = MemoryObjectStore(keyframe_interval=4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20_000).astype(np.float32)
    ids, depths = [], []
    prev = prev2 = None
    for _ in range(10):
        x = (x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(1e-4)).astype(np.float32)
        r = store.put(x.tobytes(), 4, base=prev, base2=prev2)
        prev2, prev = prev, r.id
        ids.append(r.id)
        depths.append(store.header(r.id).depth)
    assert max(depths) <= 3 and depths[0] == 0
    assert 0 in depths[1:]  # a keyframe came back
    assert any(d > 0 for d in depths)
    fresh = MemoryObjectStore(keyframe_interval=4)
    fresh._objects = dict(store._objects)  # a reader with a cold cache decodes whole chains
    for oid in ids:
        fresh.verify(oid)
    assert fresh.get(ids[-1]) == x.tobytes()


# -- whole repositories ---------------------------------------------------------------------------------


def _series_step(rng, sd: dict, step: int) -> dict:
    """The next checkpoint: small updates everywhere, and every few steps a renamed, removed, added or
    reshaped tensor, a dtype change, and a frozen tensor that never changes."""
    out = {}
    for name, t in sd.items():
        if name == "frozen" or t.dtype.kind not in "f":
            out[name] = t
        else:
            noise = rng.standard_normal(t.shape).astype(np.float32) * 1e-3
            out[name] = np.asarray((t.astype(np.float32) + noise).astype(t.dtype))
    if step == 2:
        out["renamed.weight"] = out.pop("layer.1.weight")
    if step == 3:
        out.pop("bias")
        out["added"] = rng.standard_normal((7, 3)).astype(np.float32)
    if step == 4:
        out["layer.0.weight"] = out["layer.0.weight"].reshape(-1, 8)
    if step == 5:
        out["half"] = out["half"].astype(np.float32)
    return out


def test_series_checks_out_byte_exact_with_chains_longer_than_k(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=4096)
    repo = set_config(repo, "keyframe_interval", 3)
    rng = np.random.default_rng(0)
    sd = {"layer.0.weight": rng.standard_normal((64, 48)).astype(np.float32),
          "layer.1.weight": rng.standard_normal((48, 32)).astype(np.float32),
          "half": rng.standard_normal(5000).astype(np.float16), "bias": np.zeros(48, np.float32),
          "frozen": rng.standard_normal((32, 32)).astype(np.float32), "ids": np.arange(100, dtype=np.int64),
          "scalar": np.array(1.5, dtype=np.float64)}
    path = str(tmp_path / "repo" / "model.safetensors")
    hashes = []
    for step in range(8):
        if step:
            sd = _series_step(rng, sd, step)
        write_safetensors_np(path, sd, metadata={"step": str(step)})
        hashes.append(sha256_file(path))
        repo.commit(path if step == 0 else None, message=f"step {step}")
    encodings = {codec.ENCODING_NAMES[repo.store.header(o).encoding] for o in repo.store.ids()}
    assert encodings & {"xor", "sub", "sparse", "pred"}, encodings
    assert max(repo.store.header(o).depth for o in repo.store.ids()) <= 2
    cold = Repo(repo.root)
    for i, want in enumerate(hashes):
        out = tmp_path / f"out{i}"
        cold.checkout(f"HEAD~{7 - i}", output=str(out))
        assert sha256_file(out / "model.safetensors") == want, f"commit {i}"
    assert cold.fsck().ok


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "I64"]),
                          st.lists(st.integers(0, 9), min_size=0, max_size=3),
                          st.floats(0, 1)), min_size=1, max_size=4),
       st.integers(0, 2**16))
def test_random_parent_child_pairs_roundtrip(tmp_path_factory, specs, seed):
    """Random parents and children over several dtypes and shapes (0-d and empty included): every commit
    checks out byte for byte, whatever the encodings chosen."""
    from mlvc.dtypes import numpy_dtype

    root = tmp_path_factory.mktemp("rand")
    repo = make_repo(root, chunk_size=256)
    rng = np.random.default_rng(seed)
    sd = {}
    for i, (dtype, shape, _) in enumerate(specs):
        n = int(np.prod(shape)) if shape else 1
        raw = rng.integers(0, 256, n * numpy_dtype(dtype).itemsize, dtype=np.uint8)
        sd[f"t{i}"] = raw.view(numpy_dtype(dtype)).reshape(shape)
    path = str(root / "m.safetensors")
    hashes = []
    for step in range(4):
        if step:
            for i, (_dtype, _shape, frac) in enumerate(specs):
                t = sd[f"t{i}"].copy()
                flat = t.reshape(-1).view(np.uint8)
                mask = rng.random(flat.shape) < frac * 0.3
                flat[mask] ^= rng.integers(1, 4, int(mask.sum()), dtype=np.uint8)
                sd[f"t{i}"] = t
        write_safetensors_np(path, sd)
        hashes.append(sha256_file(path))
        repo.commit(path, message=f"s{step}", allow_empty=True)
    cold = Repo(repo.root)
    for i, want in enumerate(hashes):
        out = root / f"o{i}"
        cold.checkout(f"HEAD~{3 - i}", output=str(out))
        assert sha256_file(out / "m.safetensors") == want


def test_fsck_reports_every_object_on_a_corrupt_base(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=4096)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(10_000).astype(np.float32)
    path = str(tmp_path / "repo" / "m.safetensors")
    for step in range(4):
        write_safetensors_np(path, {"w": x})
        repo.commit(path, message=f"s{step}")
        x = (x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(1e-4)).astype(np.float32)
    first = repo.read_manifest(repo.read_commit(repo.resolve("HEAD~3")).manifest)
    victim = first.files[0].tensors[0].chunks[0]
    dependents = {o for o in repo.store.ids() if victim in _chain(repo, o)} - {victim}
    assert dependents, "the later commits' first chunk should be deltas on the first commit's"
    flip_byte(repo.store.locate(victim), os.path.getsize(repo.store.locate(victim)) - 3)
    report = Repo(repo.root).fsck()
    found = {(p.object_id, p.problem) for p in report.problems}
    assert (victim, "corrupt") in found
    for oid in dependents:
        assert (oid, "corrupt base") in found
        assert any(p.object_id == oid and victim in p.detail for p in report.problems)


def _chain(repo: Repo, oid: str) -> set[str]:
    out = {oid}
    for b in repo.store.bases(oid):
        out |= _chain(repo, b)
    return out


def test_commit_reports_what_deltas_saved(tmp_path):
    repo = make_repo(tmp_path / "repo")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 512)).astype(np.float32)
    path = str(tmp_path / "repo" / "m.safetensors")
    write_safetensors_np(path, {"w": x})
    first = repo.commit(path, message="first")
    write_safetensors_np(path, {"w": (x + np.float32(1e-5) * rng.standard_normal(x.shape).astype(np.float32))})
    second = repo.commit(path, message="second")
    assert first.new_bytes > 0.8 * first.raw_bytes
    assert second.new_bytes < 0.6 * second.raw_bytes  # a delta on the first, not a full copy


def test_fsck_reads_files_even_when_the_cache_holds_the_object(tmp_path):
    repo = make_repo(tmp_path / "repo")
    x = np.random.default_rng(3).standard_normal(50_000).astype(np.float32)
    path = str(tmp_path / "repo" / "m.safetensors")
    write_safetensors_np(path, {"w": x})
    repo.commit(path, message="one")  # the commit leaves its chunks in this Repo's base cache
    oid = repo.read_manifest(repo.read_commit(repo.head()).manifest).files[0].tensors[0].chunks[0]
    assert repo.store._cache.get(oid) is not None
    flip_byte(repo.store.locate(oid), os.path.getsize(repo.store.locate(oid)) - 3)
    assert (oid, "corrupt") in {(p.object_id, p.problem) for p in repo.fsck().problems}


@settings(max_examples=60, deadline=None)
@given(width=st.sampled_from([1, 2, 4, 8]), changed=st.floats(0.0, 1.0), scale=st.sampled_from([1e-6, 1e-3, 1.0]),
       seed=st.integers(0, 2**16), with_base2=st.booleans())
def test_encode_delta_picks_the_smallest_candidate_on_the_sample(width, changed, scale, seed, with_base2):
    """Whatever fraction of the elements changed and by how much, encode_delta returns an object that decodes
    exactly, coded with the candidate whose sample encoding was smallest (xor only for 1- and 8-byte elements,
    pred only with a second base), or None exactly when the full encoding was no larger on the sample."""
    rng = np.random.default_rng(seed)
    n = 40_000
    grand = rng.standard_normal(n).astype(np.float64).view(np.uint8)[: n * width].copy()
    parent = grand.copy()
    child = parent.copy()
    for arr in (parent, child):
        elems = arr.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width])
        hit = rng.random(len(elems)) < changed
        step = (rng.standard_normal(int(hit.sum())) * scale * 1000).astype(np.int64)
        elems[hit] = elems[hit] + step.astype(elems.dtype)
    b2 = codec.Base("b2" * 16, grand.tobytes(), 0) if with_base2 else None
    b1 = codec.Base("b1" * 16, parent.tobytes(), 1 if with_base2 else 0)
    raw = child.tobytes()
    data = codec.encode_delta(raw, width, 1, b1, b2)
    candidates = [codec.ENC_SUB, codec.ENC_SPARSE] + ([codec.ENC_PRED] if with_base2 else [])
    candidates += [codec.ENC_XOR] if width in (1, 8) else []
    sample, s1 = codec._sample(memoryview(raw), width), codec._sample(memoryview(b1.raw), width)
    s2 = codec._sample(memoryview(b2.raw), width) if b2 is not None else None
    sizes = {e: len(codec._delta_payload(e, sample, s1, s2, width, 1)) for e in candidates}
    full = codec._size(codec._full_payload(memoryview(sample).cast("B"), width, 1)[2])
    if data is None:
        assert min(sizes.values()) >= full
        return
    h = codec.ObjectHeader.parse(data)
    assert h.encoding in candidates and sizes[h.encoding] == min(sizes.values()) < full
    bases = {b1.id: b1.raw} | ({b2.id: b2.raw} if b2 is not None else {})
    assert bytes(codec.decode(data, bases.__getitem__)) == raw
