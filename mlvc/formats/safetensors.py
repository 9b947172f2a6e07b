"""safetensors: parse a file's header without loading the data, and build headers for in-memory tensors.

A safetensors file is: 8 bytes (little-endian u64 N), N bytes of JSON header (maybe padded with spaces),
then the data region. Each header entry gives dtype, shape and [begin, end) offsets into the data region.
mlvc keeps the first 8 + N bytes exactly as read, so checkout rebuilds the file byte for byte.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from ..dtypes import ITEMSIZE
from ..errors import FormatError

MAX_HEADER = 100 * 1024 * 1024  # what the safetensors library accepts


@dataclass(frozen=True)
class TensorSpan:
    name: str
    dtype: str
    shape: list[int]
    begin: int  # offset in the data region
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Layout:
    header_bytes: bytes  # the 8-byte length and the JSON header, verbatim
    tensors: list[TensorSpan]  # in data-region order
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return len(self.header_bytes)

    @property
    def data_length(self) -> int:
        return self.tensors[-1].end if self.tensors else 0


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def parse_layout(head: bytes, file_size: int, path: str) -> Layout:
    """Validate a header; `head` must hold at least the first 8 + N bytes of the file."""
    if file_size < 8:
        raise FormatError(path, "too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER or 8 + n > file_size:
        raise FormatError(path, f"header length {n} is impossible for a {file_size}-byte file; not safetensors?")
    raw = head[8 : 8 + n]
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise FormatError(path, "__metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise FormatError(path, f"tensor {name!r}: entry needs dtype, shape and data_offsets") from None
        if not (isinstance(dtype, str) and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise FormatError(path, f"tensor {name!r}: malformed dtype, shape or offsets")
        if dtype in ITEMSIZE and _numel(shape) * ITEMSIZE[dtype] != end - begin:
            raise FormatError(path, f"tensor {name!r}: {end - begin} bytes do not match {dtype} {shape}")
        spans.append(TensorSpan(name, dtype, list(shape), begin, end))
    spans.sort(key=lambda s: (s.begin, s.end, s.name))
    pos = 0
    for s in spans:
        if s.begin != pos:
            raise FormatError(path, f"tensor {s.name!r}: data offsets leave a gap or overlap at byte {pos}")
        pos = s.end
    if 8 + n + pos != file_size:
        raise FormatError(path, f"file is {file_size} bytes but the header accounts for {8 + n + pos}")
    return Layout(bytes(head[: 8 + n]), spans, metadata)


def read_layout(f, path: str) -> Layout:
    import os

    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    first = f.read(8)
    if len(first) < 8:
        raise FormatError(path, "too short to be a safetensors file")
    (n,) = struct.unpack("<Q", first)
    if n > MAX_HEADER:
        raise FormatError(path, f"header length {n} is too large; not a safetensors file?")
    return parse_layout(first + f.read(n), size, path)


def build_layout(tensors: list[tuple[str, str, list[int], int]], metadata: dict[str, str] | None = None) -> Layout:
    """A header for (name, dtype, shape, nbytes) tensors, laid out in the given order, padded to 8 bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    spans = []
    pos = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        spans.append(TensorSpan(name, dtype, list(shape), pos, pos + nbytes))
        pos += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return Layout(struct.pack("<Q", len(text)) + text, spans, metadata)
