"""Object files: the header, and the encodings of an object's payload.

An object file is a 32-byte header followed by the payload:

    magic "MLVO" | version u8 | encoding u8 | plane width u8 | depth u8 | raw length u64 LE | base id 16 bytes

The object id is always the xxh3-128 of the *raw* (decoded) content, whatever the encoding, so encodings
are a storage detail and can change without changing any id. Full objects have depth 0 and an all-zero
base id. Delta objects name the object they are a delta against (the chunk at the same position of the same
tensor, header or blob in the parent commit); depth is 1 + the largest depth of its bases, i.e. the longest
chain down to a full object. The store writes deltas only below depth K = core.keyframe_interval, so at least
every K-th version of a chunk is a full "keyframe"; readers check that depths strictly fall along a chain.

Full encodings: raw, zstd (one frame), planes (the bytes split into `width` byte planes, each stored raw or
as a zstd frame). Delta encodings transform the bytes against the base (see mlvc.delta) and store the
result as planes: xor, sub (zigzag of the wrapping difference), sparse (a bitmap of the elements that
changed plus the zigzag differences of those only) and pred (zigzag of the difference from the linear
prediction 2*base - base2, base2 being the grandparent's chunk, named at the start of the payload).
docs/format.md is the byte-level spec.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import zstandard

# numpy (about 0.1 s to import), zstandard and mlvc.delta (which needs numpy) are imported by the functions that
# use them: reading a commit or a manifest needs zstandard only, and a command that reads no object (`mlvc
# status` before the first commit, `mlvc config`, `mlvc --version`) none of the three (tests/test_startup.py).

MAGIC = b"MLVO"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBBBQ16s")
HEADER_SIZE = HEADER.size  # 32
NO_BASE = bytes(16)
MAX_DEPTH = 255

ENC_RAW = 0  # payload is the raw bytes
ENC_ZSTD = 1  # payload is one zstd frame of the raw bytes
ENC_PLANES = 2  # raw bytes split into `width` byte planes, each stored raw or as a zstd frame
ENC_XOR = 3  # planes of raw XOR base
ENC_SUB = 4  # planes of zigzag(raw - base)
# u32 length + zstd frame of the changed-element bitmap, then planes of the changed elements' zigzag(raw - base)
ENC_SPARSE = 5
ENC_PRED = 6  # base2 id (16 bytes), then planes of zigzag(raw - (2*base - base2))
ENCODING_NAMES = {ENC_RAW: "raw", ENC_ZSTD: "zstd", ENC_PLANES: "planes", ENC_XOR: "xor", ENC_SUB: "sub",
                  ENC_SPARSE: "sparse", ENC_PRED: "pred"}
FULL_ENCODINGS = (ENC_RAW, ENC_ZSTD, ENC_PLANES)  # no base object: the payload alone gives the raw bytes
DELTA_ENCODINGS = (ENC_XOR, ENC_SUB, ENC_SPARSE, ENC_PRED)

_PLANE_ENTRY = struct.Struct("<BI")  # mode (0 raw, 1 zstd), stored length
_U32 = struct.Struct("<I")
# Compression that saves less than this fraction is not worth the decode time: store raw instead.
MIN_SAVING = 0.03
_MIN_PLANE_BYTES = 64
# The delta coding of a chunk is chosen on a sample of this many bytes (three spread windows).
_SAMPLE = 48 << 10
# A plane of at least this many bytes is first probed on three windows of _PROBE_WINDOW bytes (see _incompressible).
_SKIP_PROBE_MIN = 128 << 10
_PROBE_WINDOW = 4 << 10

_local = threading.local()


# The hash table of zstd's match finder for the byte planes of multi-byte elements at level 1: 2**10 entries
# instead of level 1's 2**14. A plane of float bytes is mostly noise, and a large table finds chance matches far
# back that cost more than the literals they replace; the small one still finds runs and repeats up to 16 KB.
# Measured per plane on the real MiniLM series (docs/design.md, "Byte planes + zstd level 1"): full fp32 0.8293
# -> 0.8237 of raw, full bf16 0.6846 -> 0.6734, bf16 deltas 0.0910 -> 0.0875, in 50-90% of the time; data with
# long-range order loses (a sorted fp32 array: 0.408 -> 0.467). Other levels are zstd's own.
PLANE_HASH_LOG = 10


def _compressor(level: int, planes: bool = False) -> zstandard.ZstdCompressor:
    """zstd at `level`; with `planes`, for the byte planes of elements of two or more bytes (PLANE_HASH_LOG)."""
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    key = (level, planes and level == 1)
    c = cache.get(key)
    if c is None:
        import zstandard

        if key[1]:
            params = zstandard.ZstdCompressionParameters.from_level(level, hash_log=PLANE_HASH_LOG,
                                                                     write_content_size=1)
            c = cache[key] = zstandard.ZstdCompressor(compression_params=params)
        else:
            c = cache[key] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        import zstandard

        d = _local.d = zstandard.ZstdDecompressor()
    return d


class DecodeError(ValueError):
    """The bytes are not a valid object file (the store turns this into CorruptObjectError)."""


@dataclass(frozen=True)
class ObjectHeader:
    version: int
    encoding: int
    width: int
    depth: int  # delta chain length down to a full object (0 for full objects)
    raw_length: int
    base: str | None  # hex id of the base object, None for full objects

    @classmethod
    def parse(cls, data) -> ObjectHeader:
        if len(data) < HEADER_SIZE:
            raise DecodeError("truncated header")
        magic, version, encoding, width, depth, raw_length, base = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError("bad magic")
        if version != FORMAT_VERSION:
            raise DecodeError(f"object format version {version} is not supported (this mlvc reads {FORMAT_VERSION})")
        if encoding not in ENCODING_NAMES:
            raise DecodeError(f"unknown encoding {encoding}")
        if width < 1:
            raise DecodeError("plane width 0")
        base_id = None if base == NO_BASE else base.hex()
        # Every field must be what the encoders write: a damaged header byte is an error, never a guess.
        if encoding in FULL_ENCODINGS:
            if base_id is not None or depth:
                raise DecodeError(f"a full ({ENCODING_NAMES[encoding]}) object names a base or a depth")
            if encoding != ENC_PLANES and width != 1:
                raise DecodeError(f"plane width {width} on a {ENCODING_NAMES[encoding]} object")
        elif base_id is None or depth == 0:
            raise DecodeError(f"a {ENCODING_NAMES[encoding]} delta object without a base or depth")
        return cls(version, encoding, width, depth, raw_length, base_id)


def _pack_header(encoding: int, width: int, raw_length: int, base: str | None = None, depth: int = 0) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, encoding, width, depth, raw_length,
                       bytes.fromhex(base) if base else NO_BASE)


def bases(data) -> list[str]:
    """Ids of the objects needed to decode this object file (empty for full objects)."""
    h = ObjectHeader.parse(data)
    if h.base is None:
        return []
    if h.encoding == ENC_PRED:
        if len(data) < HEADER_SIZE + 16:
            raise DecodeError("truncated second base id")
        return [h.base, bytes(data[HEADER_SIZE : HEADER_SIZE + 16]).hex()]
    return [h.base]


# -- planes ------------------------------------------------------------------------------------------


def _incompressible(plane: np.ndarray, level: int, planes: bool) -> bool:
    """Whether a large plane is noise (the low mantissa bytes of floats): a sample of it saves less than half of
    MIN_SAVING, so the whole plane would be stored raw anyway. Compressing such a plane only to throw the
    result away was half the time of encoding an fp32 chunk; skipping it changes no stored size by more than
    a rounding (a plane whose sample is that close to 1 compresses, whole, to within MIN_SAVING too)."""
    n = len(plane)
    if n < _SKIP_PROBE_MIN:
        return False
    w = _PROBE_WINDOW
    probe = b"".join(bytes(plane[s : s + w].data) for s in (0, (n // 2) - (n // 2) % 8, n - w))
    return len(_compressor(level, planes).compress(probe)) >= len(probe) * (1 - MIN_SAVING / 2)


def _pack_planes(arr: np.ndarray, width: int, level: int) -> list:
    """Plane table + planes of a uint8 array whose length is a multiple of width, as a list of buffers to join
    (a plane stored raw is not copied until the one join that makes the object file)."""
    planes = arr.reshape(-1, width).T.copy() if width > 1 else arr.reshape(1, -1)
    table = []
    blobs: list = []
    multi = width > 1  # numeric planes: the smaller match table (PLANE_HASH_LOG)
    for plane in planes:
        big = len(plane) >= _MIN_PLANE_BYTES
        z = _compressor(level, multi).compress(plane.data) if big and not _incompressible(plane, level, multi) else b""
        if z and len(z) < len(plane) * (1 - MIN_SAVING):
            table.append(_PLANE_ENTRY.pack(1, len(z)))
            blobs.append(z)
        else:
            table.append(_PLANE_ENTRY.pack(0, len(plane)))
            blobs.append(plane.data)
    return [*table, *blobs]


def _size(parts: list) -> int:
    return sum(len(memoryview(p).cast("B")) for p in parts)


def _unpack_planes(payload: memoryview, width: int, raw_length: int) -> bytearray:
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
    import numpy as np

    out = bytearray(raw_length)
    view = np.frombuffer(out, dtype=np.uint8).reshape(-1, width)
    for i, (mode, blob) in enumerate(blobs):
        plane = _decompress_exact(blob, plane_len) if mode == 1 else blob
        view[:, i] = np.frombuffer(plane, dtype=np.uint8)
    return out


# zstd cannot expand a frame by more than this: every block (at most 128 KiB of output) costs at least a
# 3-byte header and 1 byte of content (an RLE block), so 32768x is the format's ceiling; twice that leaves a
# margin. A frame that declares more than its size allows is damaged or crafted, and is refused before
# anything is allocated for it (a 30-byte object declaring 16 TiB would otherwise end in a MemoryError).
MAX_ZSTD_RATIO = 1 << 16


def _frame_size(frame) -> int:
    """The content size a zstd frame declares (encode always writes it), read without decompressing;
    DecodeError when the frame is too small to hold that much."""
    import zstandard

    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd: {e}") from None
    if size > len(frame) * MAX_ZSTD_RATIO:
        raise DecodeError(f"a {len(frame)}-byte zstd frame cannot hold the {size} bytes it declares")
    return size


def _decompress_exact(frame, size: int) -> bytes:
    """One zstd frame that must hold exactly `size` bytes; checked from the frame header before anything is
    allocated, so a damaged length can never ask for an absurd amount of memory."""
    import zstandard

    declared = _frame_size(frame)
    if declared != size:
        raise DecodeError(f"zstd frame holds {declared} bytes, expected {size}")
    try:
        return _decompressor().decompress(frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd: {e}") from None


# -- full objects ------------------------------------------------------------------------------------


def _full_payload(mv: memoryview, width: int, level: int) -> tuple[int, int, list]:
    n = len(mv)
    if width > 1 and n % width == 0 and n >= width * _MIN_PLANE_BYTES:
        import numpy as np

        return ENC_PLANES, width, _pack_planes(np.frombuffer(mv, dtype=np.uint8), width, level)
    if n >= _MIN_PLANE_BYTES:
        return ENC_ZSTD, 1, [_compressor(level).compress(mv)]
    return ENC_RAW, 1, [mv]


def encode(raw, width: int = 1, level: int = 1) -> bytes:
    """Encode raw bytes as a full object file (header + payload), choosing the smallest encoding.

    `width` is the element size: when > 1 the bytes are split into byte planes first, so that the
    exponent bytes of floats (highly redundant) are compressed apart from the mantissa bytes (near noise).
    """
    mv = memoryview(raw).cast("B")
    n = len(mv)
    encoding, w, parts = _full_payload(mv, width, level)
    if encoding != ENC_RAW and _size(parts) >= n * (1 - MIN_SAVING):
        encoding, w, parts = ENC_RAW, 1, [mv]
    return b"".join([_pack_header(encoding, w, n), *parts])


# -- delta objects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A base object for a delta: its id, raw bytes and chain depth."""

    id: str
    raw: bytes | bytearray | memoryview
    depth: int


def _delta_parts(encoding: int, mv, b1, b2, width: int, level: int) -> list:
    import numpy as np

    from . import delta

    if encoding == ENC_XOR:
        return _pack_planes(delta.forward(delta.XOR, mv, b1, width), width, level)
    if encoding == ENC_SUB:
        return _pack_planes(delta.forward(delta.SUB, mv, b1, width), width, level)
    if encoding == ENC_PRED:
        return _pack_planes(delta.forward(delta.SUB, mv, delta.predict(b1, b2, width), width), width, level)
    mask, values = delta.sparse(mv, b1, width)
    bitmap = _compressor(level).compress(np.packbits(mask).data)
    return [_U32.pack(len(bitmap)), bitmap, *_pack_planes(values, width, level)]


def _delta_payload(encoding: int, mv, b1, b2, width: int, level: int) -> bytes:
    return b"".join(_delta_parts(encoding, mv, b1, b2, width, level))


def _sample(buf: memoryview, width: int) -> memoryview | bytes:
    """What a chunk's coding is chosen on: the whole chunk up to _SAMPLE bytes, else three windows (start,
    middle, end) joined into one sample, so that each candidate costs one zstd call per plane, not three (on
    MiniLM's fp32 chunks the choice cost 37-57% on top of the coding itself with three, 23-29% with one).
    Element-aligned, so a transform of the joined windows is the joined transforms of the windows."""
    n = len(buf)
    if n <= _SAMPLE:
        return buf
    w = (_SAMPLE // 3) - (_SAMPLE // 3) % width
    mid = (n // 2) - (n // 2) % width
    return b"".join((buf[:w], buf[mid : mid + w], buf[n - w :]))


def encode_delta(raw, width: int, level: int, base: Base, base2: Base | None = None) -> bytes | None:
    """The smallest delta object for `raw` against `base` (and `base2`, the base's own predecessor, for the
    pred encoding), or None when a full object would be smaller. The encoding is chosen on a sample, among
    sub, sparse, pred (with base2) and xor (only for 1- and 8-byte elements: on 2- and 4-byte elements
    zigzag subtraction stored less at every fraction of changed elements measured, docs/design.md)."""
    from . import delta

    mv = memoryview(raw).cast("B")
    n = len(mv)
    if len(base.raw) != n or not delta.supports(width, n) or n == 0:
        return None
    b1 = memoryview(base.raw).cast("B")
    b2 = memoryview(base2.raw).cast("B") if base2 is not None and len(base2.raw) == n else None
    candidates = [ENC_SUB, ENC_SPARSE] + ([ENC_PRED] if b2 is not None else []) + ([ENC_XOR] if width in (1, 8) else [])
    sample, s1 = _sample(mv, width), _sample(b1, width)
    s2 = _sample(b2, width) if b2 is not None else None
    sizes = {e: _size(_delta_parts(e, sample, s1, s2, width, level)) for e in candidates}
    best = min(candidates, key=lambda e: sizes[e])
    pred = best == ENC_PRED and base2 is not None  # pred is a candidate only with base2
    depth = 1 + max(base.depth, base2.depth if pred and base2 is not None else 0)
    if depth > MAX_DEPTH or sizes[best] >= _size(_full_payload(memoryview(sample).cast("B"), width, level)[2]):
        return None
    parts = _delta_parts(best, mv, b1, b2, width, level)
    prefix = bytes.fromhex(base2.id) if pred and base2 is not None else b""
    return b"".join([_pack_header(best, width, n, base.id, depth), prefix, *parts])


# -- decoding ----------------------------------------------------------------------------------------


def decode(data, get_base: Callable[[str], bytes | bytearray] | None = None) -> bytes | bytearray:
    """Decode an object file back to its raw bytes (hash not checked here: the store does that).

    A delta object needs `get_base(id)`, returning the verified raw bytes of a base object."""
    mv = memoryview(data)
    h = ObjectHeader.parse(mv)
    payload = mv[HEADER_SIZE:]
    out: bytes | bytearray
    if h.encoding == ENC_RAW:
        if len(payload) != h.raw_length:
            raise DecodeError(f"payload is {len(payload)} bytes, header says {h.raw_length}")
        out = bytes(payload)
    elif h.encoding == ENC_ZSTD:
        out = _decompress_exact(payload, h.raw_length)
    elif h.encoding == ENC_PLANES:
        out = _unpack_planes(payload, h.width, h.raw_length)
    else:
        out = _decode_delta(h, payload, get_base)
    if len(out) != h.raw_length:
        raise DecodeError(f"decoded {len(out)} bytes, header says {h.raw_length}")
    return out


def _decode_delta(h: ObjectHeader, payload: memoryview, get_base) -> bytearray:
    import numpy as np

    from . import delta

    if get_base is None:
        raise DecodeError("a delta object needs its base")
    if not delta.supports(h.width, h.raw_length):
        raise DecodeError(f"plane width {h.width} cannot carry a delta")
    b1 = get_base(h.base)
    if len(b1) != h.raw_length:
        raise DecodeError(f"base {h.base} has {len(b1)} bytes, the delta needs {h.raw_length}")
    w = h.width
    if h.encoding == ENC_XOR:
        return delta.inverse(delta.XOR, _unpack_planes(payload, w, h.raw_length), b1, w, inplace=True)
    if h.encoding == ENC_SUB:
        return delta.inverse(delta.SUB, _unpack_planes(payload, w, h.raw_length), b1, w, inplace=True)
    if h.encoding == ENC_PRED:
        if len(payload) < 16:
            raise DecodeError("truncated second base id")
        b2 = get_base(bytes(payload[:16]).hex())
        if len(b2) != h.raw_length:
            raise DecodeError("second base has the wrong length")
        return delta.inverse(delta.SUB, _unpack_planes(payload[16:], w, h.raw_length), delta.predict(b1, b2, w), w,
                             inplace=True)
    # sparse
    if len(payload) < _U32.size:
        raise DecodeError("truncated bitmap length")
    (blen,) = _U32.unpack_from(payload)
    n_elems = h.raw_length // w
    bitmap = _decompress_exact(payload[_U32.size : _U32.size + blen], (n_elems + 7) // 8)
    mask = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), count=n_elems).view(bool)
    values = _unpack_planes(payload[_U32.size + blen :], w, int(mask.sum()) * w)
    return delta.unsparse(mask, values, b1, w)
