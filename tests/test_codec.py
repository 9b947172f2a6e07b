"""The object codec: encode/decode roundtrips, the choice of encoding, and header validation."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlvc import codec
from mlvc.errors import CorruptObjectError
from mlvc.store import MemoryObjectStore
from mlvc.util import hash_bytes

WIDTHS = [1, 2, 4, 8]


def header_of(data: bytes) -> codec.ObjectHeader:
    return codec.ObjectHeader.parse(data)


# -- roundtrips -----------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=3000), width=st.sampled_from(WIDTHS), level=st.sampled_from([-1, 1, 3]))
def test_roundtrip_random_bytes(raw, width, level):
    data = codec.encode(raw, width, level)
    h = header_of(data)
    assert h.raw_length == len(raw)
    assert h.base is None
    assert bytes(codec.decode(data)) == raw


@settings(max_examples=100, deadline=None)
@given(width=st.sampled_from(WIDTHS), n=st.integers(0, 600), extra=st.integers(0, 7), seed=st.integers(0, 2**32 - 1))
def test_roundtrip_structured_lengths(width, n, extra, seed):
    """Float-like data (redundant high bytes) of every width, at lengths that are and are not multiples of it."""
    rng = np.random.default_rng(seed)
    vals = rng.standard_normal(n).astype({1: np.int8, 2: np.float16, 4: np.float32, 8: np.float64}[width])
    raw = vals.tobytes() + rng.integers(0, 256, extra, dtype=np.uint8).tobytes()
    data = codec.encode(raw, width)
    assert header_of(data).raw_length == len(raw)
    assert bytes(codec.decode(data)) == raw


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n", [0, 1, 7, 63, 64, 65, 511, 4096, 4097])
def test_roundtrip_edge_lengths(width, n):
    raw = (np.arange(n) % 7).astype(np.uint8).tobytes()
    data = codec.encode(raw, width)
    assert bytes(codec.decode(data)) == raw
    assert header_of(data).raw_length == n


def test_encode_accepts_memoryviews_of_any_format():
    a = np.linspace(-1, 1, 1000, dtype=np.float32)
    data = codec.encode(memoryview(a), 4)
    assert bytes(codec.decode(data)) == a.tobytes()


# -- the choice of encoding -----------------------------------------------------------------------------------


def test_incompressible_data_is_stored_raw():
    raw = np.random.default_rng(1).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    for width in WIDTHS:
        data = codec.encode(raw, width)
        h = header_of(data)
        assert h.encoding == codec.ENC_RAW, width
        assert len(data) == codec.HEADER_SIZE + len(raw)
        assert data[codec.HEADER_SIZE:] == raw


@pytest.mark.parametrize("dtype,width", [(np.float16, 2), (np.float32, 4), (np.float64, 8)])
def test_float_data_uses_byte_planes(dtype, width):
    raw = np.random.default_rng(2).standard_normal(1 << 14).astype(dtype).tobytes()
    data = codec.encode(raw, width)
    h = header_of(data)
    assert h.encoding == codec.ENC_PLANES
    assert h.width == width
    assert len(data) < len(raw)  # the exponent planes compress
    assert bytes(codec.decode(data)) == raw


def test_redundant_bytes_use_zstd_at_width_one():
    raw = b"hello world " * 1000
    data = codec.encode(raw, 1)
    assert header_of(data).encoding == codec.ENC_ZSTD
    assert len(data) < len(raw) // 10
    assert codec.decode(data) == raw


def test_numeric_planes_at_level_1_use_the_small_match_table_and_everything_else_plain_zstd():
    """At level 1 the planes of elements of two or more bytes are zstd frames made with a 2**PLANE_HASH_LOG
    match table (full and delta encodings alike); width-1 data and other levels are zstd's own settings. The
    frames decode with any zstd reader."""
    import zstandard

    rng = np.random.default_rng(3)
    weights = (rng.standard_normal(1 << 18) * 0.02).astype(np.float32)
    raw = np.frombuffer(weights.tobytes(), np.uint16)[1::2].tobytes()  # 512 KiB of weight-like bf16
    small = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        1, hash_log=codec.PLANE_HASH_LOG, write_content_size=1))
    planes = np.frombuffer(raw, np.uint8).reshape(-1, 2).T.copy()

    def frames(data: bytes, width: int) -> list[bytes]:
        out, pos = [], codec.HEADER_SIZE + 5 * width
        h = codec.ObjectHeader.parse(data)
        pos += 16 * (h.encoding == codec.ENC_PRED)
        for i in range(width):
            mode, size = codec._PLANE_ENTRY.unpack_from(data, codec.HEADER_SIZE + 16 * (h.encoding == codec.ENC_PRED)
                                                        + i * 5)
            out.append(bytes(data[pos : pos + size]) if mode == 1 else b"")
            pos += size
        return out

    full = codec.encode(raw, 2, 1)
    assert codec.ObjectHeader.parse(full).encoding == codec.ENC_PLANES
    got = frames(full, 2)
    assert got[1] == small.compress(planes[1].tobytes())  # the exponent plane: compressed, with the small table
    assert len(got[1]) < 0.95 * len(zstandard.ZstdCompressor(level=1).compress(planes[1].tobytes()))
    assert codec.decode(full) == raw
    text = b"".join(b'{"name": "layer.%d.weight", "dtype": "F32"}' % i for i in range(2000))
    assert codec.encode(text, 1, 1)[codec.HEADER_SIZE:] == zstandard.ZstdCompressor(
        level=1, write_content_size=True).compress(text)
    assert codec.encode(raw, 2, 3) != full and codec.decode(codec.encode(raw, 2, 3)) == raw


def test_tiny_inputs_are_raw():
    for raw in (b"", b"x", b"\x00" * 63):
        assert header_of(codec.encode(raw, 1)).encoding == codec.ENC_RAW


# -- header parsing and damaged object files ------------------------------------------------------------------


def _sample_objects() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    return {
        "raw": codec.encode(rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), 1),
        "zstd": codec.encode(b"abcdefgh" * 100, 1),
        "planes": codec.encode(rng.standard_normal(128).astype(np.float32).tobytes(), 4),
        "empty": codec.encode(b"", 1),
    }


def test_sample_objects_cover_every_encoding():
    encodings = {header_of(d).encoding for d in _sample_objects().values()}
    assert encodings == {codec.ENC_RAW, codec.ENC_ZSTD, codec.ENC_PLANES}


def test_bad_magic():
    data = bytearray(codec.encode(b"x" * 100))
    data[:4] = b"NOPE"
    with pytest.raises(codec.DecodeError, match="magic"):
        codec.decode(bytes(data))


@pytest.mark.parametrize("cut", [0, 1, 4, 16, 31])
def test_truncated_header(cut):
    data = codec.encode(b"x" * 100)
    with pytest.raises(codec.DecodeError, match="truncated"):
        codec.decode(data[:cut])


def test_unknown_encoding():
    data = bytearray(codec.encode(b"x" * 100))
    data[5] = 200
    with pytest.raises(codec.DecodeError, match="unknown encoding"):
        codec.decode(bytes(data))


def test_unsupported_version():
    data = bytearray(codec.encode(b"x" * 100))
    data[4] = codec.FORMAT_VERSION + 1
    with pytest.raises(codec.DecodeError, match="version"):
        codec.decode(bytes(data))


@pytest.mark.parametrize("kind", ["raw", "zstd", "planes"])
def test_truncated_payload(kind):
    data = _sample_objects()[kind]
    with pytest.raises(codec.DecodeError):
        codec.decode(data[:-1])


@pytest.mark.parametrize("kind", ["raw", "zstd", "planes", "empty"])
def test_trailing_bytes(kind):
    data = _sample_objects()[kind]
    with pytest.raises(codec.DecodeError):
        codec.decode(data + b"\x00")


def test_header_layout_is_the_documented_one():
    data = codec.encode(b"abc")
    magic, version, encoding, width, flags, raw_length, base = struct.unpack_from("<4sBBBBQ16s", data)
    assert (magic, version, encoding, width, flags, raw_length, base) == (
        b"MLVO", codec.FORMAT_VERSION, codec.ENC_RAW, 1, 0, 3, bytes(16))
    assert codec.HEADER_SIZE == 32


@pytest.mark.parametrize("kind", ["raw", "zstd", "planes", "empty"])
@pytest.mark.parametrize("xor", [0x01, 0x80, 0xFF])
def test_flipped_bytes_never_pass_as_the_object(kind, xor):
    """Whatever byte of an object file is damaged, a read never returns wrong bytes: decode raises
    DecodeError (never another exception), or the store's hash check refuses what it decoded
    (CorruptObjectError), or what it decoded is the original itself (a flip inside a zstd frame that changes
    nothing it decodes to). A damaged header byte is always refused by decode itself."""
    data = _sample_objects()[kind]
    original = bytes(codec.decode(data))
    oid = hash_bytes(original)
    refused = 0
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= xor
        try:
            out = bytes(codec.decode(bytes(bad)))
        except codec.DecodeError:
            refused += 1
            continue
        assert i >= codec.HEADER_SIZE, f"a damaged header byte {i} of a {kind} object was accepted"
        if kind == "raw":
            assert out != original, f"flipping payload byte {i} of a raw object changed nothing"
        store = MemoryObjectStore()
        store.write_file(oid, bytes(bad))
        try:
            got = bytes(store.get(oid))
        except CorruptObjectError:
            assert out != original, f"byte {i}: the original content was refused"
            continue
        assert got == out == original, f"byte {i} of a {kind} object: the store returned other bytes"
    assert refused >= codec.HEADER_SIZE


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(min_size=0, max_size=200), encoding=st.sampled_from([0, 1, 2]),
       width=st.integers(0, 255), raw_length=st.one_of(st.integers(0, 5000), st.integers(0, 2**64 - 1)))
def test_garbage_raises_only_decode_error(junk, encoding, width, raw_length):
    """A header with a valid magic but arbitrary fields over arbitrary bytes never crashes differently
    (and never tries to allocate an absurd raw length)."""
    data = codec.HEADER.pack(codec.MAGIC, codec.FORMAT_VERSION, encoding, width, 0, raw_length, codec.NO_BASE) + junk
    try:
        out = codec.decode(data)
    except codec.DecodeError:
        return
    assert len(out) == raw_length


@pytest.mark.parametrize("raw_length", [2**40, 2**62, 2**64 - 8])
def test_absurd_raw_length_is_refused_before_allocating(raw_length):
    """A damaged length field must be a DecodeError, not a MemoryError or an attempt to allocate it."""
    table = codec._PLANE_ENTRY.pack(0, 3) * 8
    planes = codec.HEADER.pack(codec.MAGIC, codec.FORMAT_VERSION, codec.ENC_PLANES, 8, 0, raw_length,
                               codec.NO_BASE) + table + b"abc" * 8
    z = codec.encode(b"abcdefgh" * 100, 1)
    zstd = bytearray(z)
    struct.pack_into("<Q", zstd, 8, raw_length)
    for data in (planes, bytes(zstd)):
        with pytest.raises(codec.DecodeError):
            codec.decode(data)


@pytest.mark.parametrize("field,value", [(6, 2), (7, 1), (16, 1), (31, 0xAB)])
def test_fields_a_full_object_never_sets_are_refused(field, value):
    data = bytearray(codec.encode(b"hello world " * 50, 1))
    data[field] = value
    with pytest.raises(codec.DecodeError):
        codec.decode(bytes(data))
