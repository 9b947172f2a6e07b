"""Object files: the header, and the encodings of an object's payload.

An object file is a 32-byte header followed by the payload:

    magic "MLVO" | version u8 | encoding u8 | plane width u8 | flags u8 | raw length u64 LE | base id 16 bytes

The object id is always the xxh3-128 of the *raw* (decoded) content, whatever the encoding, so encodings
are a storage detail and can change without changing any id. The base id is all zeros for full objects;
delta encodings (later) name the object they are a delta against.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import numpy as np
import zstandard

MAGIC = b"MLVO"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBBBQ16s")
HEADER_SIZE = HEADER.size  # 32
NO_BASE = bytes(16)

ENC_RAW = 0  # payload is the raw bytes
ENC_ZSTD = 1  # payload is one zstd frame of the raw bytes
ENC_PLANES = 2  # raw bytes split into `width` byte planes, each stored raw or as a zstd frame
ENCODING_NAMES = {ENC_RAW: "raw", ENC_ZSTD: "zstd", ENC_PLANES: "planes"}

_PLANE_ENTRY = struct.Struct("<BI")  # mode (0 raw, 1 zstd), stored length
# Compression that saves less than this fraction is not worth the decode time: store raw instead.
MIN_SAVING = 0.03
_MIN_PLANE_BYTES = 64

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


class DecodeError(ValueError):
    """The bytes are not a valid object file (the store turns this into CorruptObjectError)."""


@dataclass(frozen=True)
class ObjectHeader:
    version: int
    encoding: int
    width: int
    flags: int
    raw_length: int
    base: str | None  # hex id of the base object, None for full objects

    @classmethod
    def parse(cls, data) -> ObjectHeader:
        if len(data) < HEADER_SIZE:
            raise DecodeError("truncated header")
        magic, version, encoding, width, flags, raw_length, base = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError("bad magic")
        if version != FORMAT_VERSION:
            raise DecodeError(f"object format version {version} is not supported (this mlvc reads {FORMAT_VERSION})")
        if encoding not in ENCODING_NAMES:
            raise DecodeError(f"unknown encoding {encoding}")
        if width < 1:
            raise DecodeError("plane width 0")
        return cls(version, encoding, width, flags, raw_length, None if base == NO_BASE else base.hex())


def _pack_header(encoding: int, width: int, raw_length: int) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, encoding, width, 0, raw_length, NO_BASE)


def encode(raw, width: int = 1, level: int = 1) -> bytes:
    """Encode raw bytes as a full object file (header + payload), choosing the smallest encoding.

    `width` is the element size: when > 1 the bytes are split into byte planes first, so that the
    exponent bytes of floats (highly redundant) are compressed apart from the mantissa bytes (near noise).
    """
    mv = memoryview(raw).cast("B")
    n = len(mv)
    limit = n * (1 - MIN_SAVING)
    if width > 1 and n % width == 0 and n >= width * _MIN_PLANE_BYTES:
        planes = np.frombuffer(mv, dtype=np.uint8).reshape(-1, width).T.copy()
        table = []
        blobs = []
        for plane in planes:
            z = _compressor(level).compress(plane.data)
            if len(z) < len(plane) * (1 - MIN_SAVING):
                table.append(_PLANE_ENTRY.pack(1, len(z)))
                blobs.append(z)
            else:
                table.append(_PLANE_ENTRY.pack(0, len(plane)))
                blobs.append(plane.data)
        size = sum(len(b) for b in blobs) + len(table) * _PLANE_ENTRY.size
        if size < limit:
            return b"".join([_pack_header(ENC_PLANES, width, n), *table, *blobs])
    elif n >= _MIN_PLANE_BYTES:
        z = _compressor(level).compress(mv)
        if len(z) < limit:
            return _pack_header(ENC_ZSTD, 1, n) + z
    return _pack_header(ENC_RAW, 1, n) + bytes(mv)


def decode(data) -> bytes | bytearray:
    """Decode an object file back to its raw bytes (hash not checked here: the store does that)."""
    mv = memoryview(data)
    h = ObjectHeader.parse(mv)
    # Every header field must be what encode() writes for this encoding: a damaged byte anywhere in the
    # file is then an error here or a hash mismatch in the store, never silently accepted.
    if h.flags:
        raise DecodeError(f"unknown flags {h.flags:#04x}")
    if h.base is not None:
        raise DecodeError(f"a full ({ENCODING_NAMES[h.encoding]}) object names a base object")
    if h.encoding != ENC_PLANES and h.width != 1:
        raise DecodeError(f"plane width {h.width} on a {ENCODING_NAMES[h.encoding]} object")
    payload = mv[HEADER_SIZE:]
    try:
        if h.encoding == ENC_RAW:
            if len(payload) != h.raw_length:
                raise DecodeError(f"payload is {len(payload)} bytes, header says {h.raw_length}")
            out = bytes(payload)
        elif h.encoding == ENC_ZSTD:
            out = _decompress_exact(payload, h.raw_length)
        else:
            out = _decode_planes(payload, h.width, h.raw_length)
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd: {e}") from None
    if len(out) != h.raw_length:
        raise DecodeError(f"decoded {len(out)} bytes, header says {h.raw_length}")
    return out


def _frame_size(frame) -> int:
    """The content size a zstd frame declares (encode always writes it), read without decompressing."""
    try:
        return zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd: {e}") from None


def _decompress_exact(frame, size: int) -> bytes:
    """One zstd frame that must hold exactly `size` bytes; checked from the frame header before anything is
    allocated, so a damaged length can never ask for an absurd amount of memory."""
    declared = _frame_size(frame)
    if declared != size:
        raise DecodeError(f"zstd frame holds {declared} bytes, expected {size}")
    return _decompressor().decompress(frame, max_output_size=size, allow_extra_data=False)


def _decode_planes(payload: memoryview, width: int, raw_length: int) -> bytearray:
    if raw_length % width:
        raise DecodeError("raw length is not a multiple of the plane width")
    plane_len = raw_length // width
    table_len = width * _PLANE_ENTRY.size
    if len(payload) < table_len:
        raise DecodeError("truncated plane table")
    # Validate the whole table against the payload before allocating the output.
    blobs = []
    pos = table_len
    for i in range(width):
        mode, size = _PLANE_ENTRY.unpack_from(payload, i * _PLANE_ENTRY.size)
        if mode not in (0, 1):
            raise DecodeError(f"unknown plane mode {mode}")
        blob = payload[pos : pos + size]
        if len(blob) != size:
            raise DecodeError("truncated plane")
        if (size if mode == 0 else _frame_size(blob)) != plane_len:
            raise DecodeError("plane has the wrong length")
        pos += size
        blobs.append((mode, blob))
    if pos != len(payload):
        raise DecodeError("trailing bytes after the last plane")
    out = bytearray(raw_length)
    view = np.frombuffer(out, dtype=np.uint8).reshape(-1, width)
    for i, (mode, blob) in enumerate(blobs):
        if mode == 1:
            blob = _decompress_exact(blob, plane_len)
        view[:, i] = np.frombuffer(blob, dtype=np.uint8)
    return out
