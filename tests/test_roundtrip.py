"""Whole-checkpoint roundtrips: any safetensors file commits, checks out byte for byte, and loads back."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import make_repo, sha256_file
from mlvc.dtypes import ITEMSIZE, numpy_dtype
from mlvc.formats import safetensors as st_format

ALL_DTYPES = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8",
              "U64", "U32", "U16", "U8", "BOOL"]
CHUNK = 4096

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12).filter(
    lambda s: s != "__metadata__")
shapes = st.one_of(
    st.just([]),  # 0-d
    st.lists(st.integers(0, 3), min_size=1, max_size=4).filter(lambda s: 0 in s),  # empty
    st.lists(st.integers(1, 40), min_size=1, max_size=3),  # up to 64000 elements: several 4 KiB chunks
)
metadata = st.one_of(st.none(), st.dictionaries(names, st.text(max_size=20), max_size=3))


@st.composite
def tensor_specs(draw):
    """[(name, dtype, shape, raw bytes)] with unique names; the bytes are arbitrary, which for floats covers
    NaN payloads, infinities and negative zero, and for BOOL values other than 0 and 1."""
    n = draw(st.integers(0, 6))
    tensor_names = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    out = []
    for name in tensor_names:
        dtype = draw(st.sampled_from(ALL_DTYPES))
        shape = draw(shapes)
        numel = int(np.prod(shape)) if shape else 1
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        kind = draw(st.sampled_from(["random", "smooth", "zeros"]))
        nbytes = numel * ITEMSIZE[dtype]
        if kind == "random":
            data = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
        elif kind == "zeros":
            data = bytes(nbytes)
        else:  # realistic weights: small floats (or small ints), compressible high bytes
            data = (rng.standard_normal(numel) * 0.02).astype(numpy_dtype(dtype)).tobytes()
        out.append((name, dtype, shape, data))
    return out


def write_raw_safetensors(path: str, specs, meta) -> bytes:
    order = list(specs)
    layout = st_format.build_layout([(n, d, s, len(b)) for n, d, s, b in order], meta)
    content = layout.header_bytes + b"".join(b for *_, b in order)
    with open(path, "wb") as f:
        f.write(content)
    return content


def _check_roundtrip(root: str, filename: str, expected: dict[str, tuple[str, list, bytes]]):
    repo = make_repo(os.path.join(root, "repo"), chunk_size=CHUNK)
    src = os.path.join(repo.root, filename)
    original = sha256_file(src)
    result = repo.commit(src, message="roundtrip")
    assert result.files == 1 and result.tensors == len(expected)

    out = os.path.join(root, "out")
    repo.checkout(result.commit.id, output=out)
    assert sha256_file(os.path.join(out, filename)) == original

    loaded = repo.load(result.commit.id, framework="numpy")
    assert set(loaded) == set(expected)
    for name, (dtype, shape, data) in expected.items():
        arr = loaded[name]
        assert list(arr.shape) == list(shape), name
        assert arr.dtype == numpy_dtype(dtype), name
        assert arr.tobytes() == data, name

    manifest = repo.read_manifest(result.commit.manifest)
    for t in manifest.files[0].tensors:
        assert t.nbytes == len(expected[t.name][2])
        assert len(t.chunks) == -(-t.nbytes // CHUNK)  # multi-chunk tensors really are cut


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(specs=tensor_specs(), meta=metadata, order=st.randoms(use_true_random=False))
def test_any_safetensors_file_roundtrips(specs, meta, order):
    order.shuffle(specs)  # the data region need not follow the header's key order
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "repo"))
        write_raw_safetensors(os.path.join(root, "repo", "model.safetensors"), specs, meta)
        _check_roundtrip(root, "model.safetensors", {n: (d, s, b) for n, d, s, b in specs})


NUMPY_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]


@st.composite
def numpy_dicts(draw):
    n = draw(st.integers(0, 5))
    tensor_names = draw(st.lists(names.filter(bool), min_size=n, max_size=n, unique=True))
    out = {}
    for name in tensor_names:
        dtype = draw(st.sampled_from(NUMPY_DTYPES))
        shape = draw(shapes)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        numel = int(np.prod(shape)) if shape else 1
        if dtype is np.bool_:
            a = rng.integers(0, 2, numel).astype(np.bool_)
        else:
            a = rng.integers(0, 100, numel).astype(dtype)
        out[name] = a.reshape(shape)
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=numpy_dicts(), meta=metadata)
def test_files_written_by_safetensors_roundtrip(arrays, meta):
    from safetensors.numpy import save_file

    from mlvc.dtypes import from_numpy

    # safetensors itself writes invalid JSON ('{},"__metadata__":{}}') for no tensors and empty metadata
    assume(arrays or meta != {})
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "repo"))
        save_file(arrays, os.path.join(root, "repo", "weights.safetensors"), metadata=meta)
        expected = {n: (from_numpy(a.dtype), list(a.shape), a.tobytes()) for n, a in arrays.items()}
        _check_roundtrip(root, "weights.safetensors", expected)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_dtype_multi_chunk(tmp_path, dtype):
    """One deterministic example per dtype, large enough for several chunks and a partial last one."""
    numel = 3 * CHUNK // ITEMSIZE[dtype] + 5
    data = np.random.default_rng(len(dtype)).integers(0, 256, numel * ITEMSIZE[dtype], dtype=np.uint8).tobytes()
    specs = [("w", dtype, [numel], data), ("scalar", dtype, [], data[: ITEMSIZE[dtype]]),
             ("empty", dtype, [0, 4], b"")]
    os.makedirs(tmp_path / "repo")
    write_raw_safetensors(str(tmp_path / "repo" / "model.safetensors"), specs, {"format": "pt"})
    _check_roundtrip(str(tmp_path), "model.safetensors", {n: (d, s, b) for n, d, s, b in specs})


def test_padded_header_and_unusual_key_order_survive(tmp_path):
    """A header with extra spaces and keys in a different order than the data is kept verbatim."""
    import json
    import struct

    a = np.arange(6, dtype=np.float32).tobytes()
    b = np.arange(4, dtype=np.int16).tobytes()
    header = {"b": {"dtype": "I16", "shape": [4], "data_offsets": [len(a), len(a) + len(b)]},
              "__metadata__": {"k": "v"},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(a)]}}
    text = json.dumps(header, indent=2).encode() + b"     "
    os.makedirs(tmp_path / "repo")
    with open(tmp_path / "repo" / "m.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + a + b)
    _check_roundtrip(str(tmp_path), "m.safetensors", {"a": ("F32", [2, 3], a), "b": ("I16", [4], b)})
