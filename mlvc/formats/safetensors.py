"""safetensors: parse a file's header without loading the data, and build headers for in-memory tensors.

A safetensors file is: 8 bytes (little-endian u64 N), N bytes of JSON header (maybe padded with spaces),
then the data region. Each header entry gives dtype, shape and [begin, end) offsets into the data region.
mlvc keeps the first 8 + N bytes exactly as read, so checkout rebuilds the file byte for byte.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from ..dtypes import DTYPES, MAX_RANK, NOT_A_SHAPE, TOO_BIG, elements, is_dtype_name
from ..errors import FormatError
from ..util import is_utf8_text, show

MAX_HEADER = 100 * 1024 * 1024  # what the safetensors library accepts


class TensorSpan(NamedTuple):  # a tuple: 100,000 of them are made per header of 100,000 tensors
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
    """A file's header: its tensors as columns, in data-region order (a header of 100,000 tensors is checked
    and committed without an object per tensor); `tensors` gives them as TensorSpans."""

    header_bytes: bytes  # the 8-byte length and the JSON header, verbatim
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    begins: list[int]  # offsets in the data region
    ends: list[int]
    metadata: dict[str, str] | None

    @classmethod
    def of_spans(cls, header_bytes: bytes, spans: list[TensorSpan], metadata: dict[str, str] | None) -> Layout:
        return cls(header_bytes, *_columns(spans), metadata)

    @functools.cached_property
    def tensors(self) -> list[TensorSpan]:
        return list(map(TensorSpan._make, zip(self.names, self.dtypes, self.shapes, self.begins, self.ends,
                                              strict=True)))

    @property
    def data_start(self) -> int:
        return len(self.header_bytes)

    @property
    def data_length(self) -> int:
        return self.ends[-1] if self.ends else 0


# Limits far beyond what a real checkpoint uses, that keep a crafted header from costing more than reading it
# (JSON nested past Python's recursion limit is refused by the parser itself, as a RecursionError). The
# limits on shapes and dtype names are mlvc/dtypes.py's, shared with the manifest reader.
MAX_NAME_BYTES = 64 << 10  # bytes of one tensor name (UTF-8)


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def parse_layout(head: bytes, file_size: int, path: str) -> Layout:
    """Validate a header; `head` must hold at least the first 8 + N bytes of the file.

    Everything wrong is a FormatError naming the file: this parser reads files from anywhere, so it checks
    every type (a JSON `true` is not a size), every limit (nesting, digits, rank, name length), duplicate
    keys (two readers could pick different entries), text (UTF-8, no lone surrogates) and the layout (offsets
    tile the data region exactly, in order)."""
    if file_size < 8 or len(head) < 8:
        raise FormatError(path, "too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER or 8 + n > file_size:
        raise FormatError(path, f"header length {n} is impossible for a {file_size}-byte file; not safetensors?")
    if len(head) < 8 + n:
        raise FormatError(path, f"header is cut short ({len(head) - 8} of {n} bytes); was the file truncated?")
    raw = bytes(head[8 : 8 + n])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"header is not UTF-8 ({e.reason} at byte {8 + e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_pairs)
    except _DuplicateKey as e:
        raise FormatError(path, f"header names {show(str(e))} twice") from None
    except RecursionError:
        raise FormatError(path, "header JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and integers past Python's digit limit
        raise FormatError(path, f"header is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise FormatError(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) and is_utf8_text(v) and is_utf8_text(k)
                                             for k, v in metadata.items())):
        raise FormatError(path, "__metadata__ must map strings to strings")
    data_size = file_size - 8 - n
    items = list(header.items())
    columns = _spans(items, data_size)
    if columns is None:  # something is wrong: the checks tensor by tensor say what
        columns = _columns([_span(path, name, info, data_size) for name, info in items])
    names, dtypes, shapes, begins, ends = columns
    # in data order: by offset, where no two tensors share one (only empty tensors do), else by (begin, end, name)
    if len(set(begins)) == len(begins):
        order = sorted(range(len(begins)), key=begins.__getitem__)
    else:
        order = sorted(range(len(begins)), key=lambda i: (begins[i], ends[i], names[i]))
    if order != list(range(len(order))):
        names, dtypes, shapes = _take(names, order), _take(dtypes, order), _take(shapes, order)
        begins, ends = _take(begins, order), _take(ends, order)
    if (begins and begins[0] != 0) or begins[1:] != ends[:-1]:  # the offsets do not tile the region
        pos = 0
        for name, begin, end in zip(names, begins, ends, strict=True):
            if begin != pos:
                what = "overlap" if begin < pos else "gap"
                raise FormatError(path, f"tensor {show(name)}: data offsets leave a {what} at byte {pos} of the "
                                        "data region")
            pos = end
    pos = ends[-1] if ends else 0
    if 8 + n + pos != file_size:
        raise FormatError(path, f"file is {file_size} bytes but the header accounts for {8 + n + pos}")
    return Layout(bytes(head[: 8 + n]), names, dtypes, shapes, begins, ends, metadata)


Columns = tuple[list[str], list[str], list[list[int]], list[int], list[int]]  # names, dtypes, shapes, begins, ends


T = TypeVar("T")


def _take(column: list[T], order: list[int]) -> list[T]:
    return list(map(column.__getitem__, order))


def _columns(spans: list[TensorSpan]) -> Columns:
    names, dtypes, shapes, begins, ends = (list(c) for c in zip(*spans, strict=True)) if spans else ([], [], [], [], [])
    return names, dtypes, shapes, begins, ends


def _spans(items: list[tuple[str, Any]], data_size: int) -> Columns | None:
    """The columns of a header's entries when every check of _span passes, made column by column (C-level maps
    over 100,000 entries instead of a call per entry); None as soon as one check fails (or names are not
    ASCII), for _span to find and name the problem."""
    try:
        names = [k for k, _ in items]
        infos = [v for _, v in items]
        if not items or set(map(type, infos)) != {dict} or not "".join(names).isascii():
            return None
        if max(map(len, names)) > MAX_NAME_BYTES or min(map(len, infos)) < len(_ENTRY_KEYS):
            return None
        dtypes = list(map(operator.itemgetter("dtype"), infos))
        shapes = list(map(operator.itemgetter("shape"), infos))
        offsets = list(map(operator.itemgetter("data_offsets"), infos))
        if not all(map(_valid_dtype, set(dtypes))):  # an unhashable dtype: TypeError
            return None
        if set(map(type, shapes)) != {list} or max(map(len, shapes)) > MAX_RANK:
            return None
        dims = [x for shape in shapes for x in shape]
        if dims and (set(map(type, dims)) != {int} or min(dims) < 0):
            return None
        counts = list(map(math.prod, shapes))
        if max(counts) >= 1 << 63 or (min(counts) == 0 and any(elements(s) == TOO_BIG for s in shapes if 0 in s)):
            return None
        if set(map(type, offsets)) != {list} or set(map(len, offsets)) != {2}:
            return None
        begins = list(map(operator.itemgetter(0), offsets))
        ends = list(map(operator.itemgetter(1), offsets))
        if set(map(type, begins)) | set(map(type, ends)) != {int} or min(begins) < 0 or max(ends) > data_size:
            return None
        if not all(map(operator.le, begins, ends)):
            return None
        sizes = list(map(operator.sub, ends, begins))
        width = {d: DTYPES[d].itemsize for d in set(dtypes) if d in DTYPES}  # unknown dtypes: any length
        if any(size != width[d] * c for d, c, size in zip(dtypes, counts, sizes, strict=True) if d in width):
            return None
        return names, dtypes, shapes, begins, ends
    except (KeyError, TypeError):  # an entry without a key, a dtype that is a list
        return None


def _valid_dtype(dtype: Any) -> bool:
    return isinstance(dtype, str) and (dtype in _DTYPES_SEEN or is_dtype_name(dtype))


_DTYPES_SEEN: set[str] = set()  # dtype names already found to be of the valid form
_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))


def _span(path: str, name: str, info: Any, data_size: int) -> TensorSpan:
    # Checked per tensor of headers that may list 100,000 of them: each test is done once, on the cheapest path.
    if not (type(name) is str and name.isascii() and len(name) <= MAX_NAME_BYTES):
        try:
            name_ok = isinstance(name, str) and len(name.encode("utf-8")) <= MAX_NAME_BYTES
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON)
            name_ok = False
        if not name_ok:
            raise FormatError(path, f"tensor name {show(name)} is not UTF-8 text of at most {MAX_NAME_BYTES} bytes")
    if not isinstance(info, dict) or not _ENTRY_KEYS <= info.keys():
        raise FormatError(path, f"tensor {show(name)}: entry needs dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES_SEEN:  # a list or a dict is not hashable
        if not isinstance(dtype, str) or not is_dtype_name(dtype):
            raise FormatError(path, f"tensor {show(name)}: dtype {show(str(dtype))} is not a safetensors dtype name")
        if len(_DTYPES_SEEN) < 256:
            _DTYPES_SEEN.add(dtype)
    count = elements(shape)
    if count == NOT_A_SHAPE:
        raise FormatError(path, f"tensor {show(name)}: shape must be a list of at most {MAX_RANK} "
                                "non-negative integers")
    if count == TOO_BIG:
        raise FormatError(path, f"tensor {show(name)}: its dims multiply past 2**63")
    if not (type(offsets) is list and len(offsets) == 2 and type(offsets[0]) is int and type(offsets[1]) is int
            and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise FormatError(path, f"tensor {show(name)}: data_offsets must be two integers [begin, end] with "
                                f"0 <= begin <= end <= {data_size} (the data region)")
    begin, end = offsets
    known = DTYPES.get(dtype)
    if known is not None and end - begin != known.itemsize * count:  # the bytes hold exactly the shape
        shown = str(shape) if len(shape) <= 8 else f"[{len(shape)} dims]"
        raise FormatError(path, f"tensor {show(name)}: {end - begin} bytes do not match {dtype} {shown}")
    return TensorSpan(name, dtype, list(shape), begin, end)


def read_layout(f, path: str) -> Layout:
    import os

    size = os.fstat(f.fileno()).st_size
    return parse_layout(read_header(f, size, path), size, path)


def read_header(f, size: int, path: str) -> bytes:
    """The first 8 + N bytes of a `size`-byte file (the length and the JSON header, unparsed); FormatError when
    no such header fits in the file."""
    f.seek(0)
    first = f.read(8)
    if len(first) < 8:
        raise FormatError(path, "too short to be a safetensors file")
    (n,) = struct.unpack("<Q", first)
    if n > MAX_HEADER or 8 + n > size:
        raise FormatError(path, f"header length {n} is impossible for a {size}-byte file; not safetensors?")
    return bytes(first + f.read(n))


def build_layout(tensors: list[tuple[str, str, list[int], int]], metadata: dict[str, str] | None = None) -> Layout:
    """A header for (name, dtype, shape, nbytes) tensors, laid out in the given order, padded to 8 bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    spans = []
    pos = 0
    for name, dtype, shape, nbytes in tensors:
        if not is_utf8_text(name):
            raise FormatError("<tensors>", f"tensor name {show(name)} is not valid UTF-8 text (it holds a lone "
                                           "surrogate); rename the tensor")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        spans.append(TensorSpan(name, dtype, list(shape), pos, pos + nbytes))
        pos += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return Layout.of_spans(struct.pack("<Q", len(text)) + text, spans, metadata)
