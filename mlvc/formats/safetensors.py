"""safetensors: parse a file's header without loading the data, and build headers for in-memory tensors.

A safetensors file is: 8 bytes (little-endian u64 N), N bytes of JSON header (maybe padded with spaces),
then the data region. Each header entry gives dtype, shape and [begin, end) offsets into the data region.
mlvc keeps the first 8 + N bytes exactly as read, so checkout rebuilds the file byte for byte.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import re
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
    compact = _compact_columns(text, file_size - 8 - n)
    if compact is not None:
        _check_metadata(compact[1], path)
        return _layout(head, n, file_size, path, *compact)
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
    _check_metadata(metadata, path)
    data_size = file_size - 8 - n
    items = list(header.items())
    columns = _spans(items, data_size)
    if columns is None:  # something is wrong: the checks tensor by tensor say what
        columns = _columns([_span(path, name, info, data_size) for name, info in items])
    return _layout(head, n, file_size, path, columns, metadata)


def _check_metadata(metadata: Any, path: str) -> None:
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) and is_utf8_text(v) and is_utf8_text(k)
                                             for k, v in metadata.items())):
        raise FormatError(path, "__metadata__ must map strings to strings")


def _layout(head: bytes, n: int, file_size: int, path: str, columns: Columns, metadata: dict[str, str] | None
            ) -> Layout:
    """The Layout of checked columns: sorted into data order, and checked to tile the data region exactly."""
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
        if not items or set(map(type, infos)) != {dict} or min(map(len, infos)) < len(_ENTRY_KEYS):
            return None
        dtypes = list(map(operator.itemgetter("dtype"), infos))
        shapes = list(map(operator.itemgetter("shape"), infos))
        offsets = list(map(operator.itemgetter("data_offsets"), infos))
        if set(map(type, offsets)) != {list} or set(map(len, offsets)) != {2}:
            return None
        begins = list(map(operator.itemgetter(0), offsets))
        ends = list(map(operator.itemgetter(1), offsets))
        return _checked(names, dtypes, shapes, begins, ends, data_size)
    except (KeyError, TypeError):  # an entry without a key, a dtype that is a list
        return None


def _checked(names: list[str], dtypes: list[Any], shapes: list[Any], begins: list[Any], ends: list[Any],
             data_size: int) -> Columns | None:
    """The columns if every entry passes _span's checks, else None (TypeError for an unhashable dtype)."""
    if not names or not "".join(names).isascii() or max(map(len, names)) > MAX_NAME_BYTES:
        return None
    kinds = set(dtypes)  # an unhashable dtype: TypeError
    if not all(map(_valid_dtype, kinds)):
        return None
    if set(map(type, shapes)) != {list} or max(map(len, shapes)) > MAX_RANK:
        return None
    dims = list(itertools.chain.from_iterable(shapes))
    if dims and (set(map(type, dims)) != {int} or min(dims) < 0):
        return None
    counts = list(map(math.prod, shapes))
    if max(counts) >= 1 << 63 or (min(counts) == 0 and any(elements(s) == TOO_BIG for s in shapes if 0 in s)):
        return None
    if set(map(type, begins)) | set(map(type, ends)) != {int} or min(begins) < 0 or max(ends) > data_size:
        return None
    if not all(map(operator.le, begins, ends)):
        return None
    sizes = list(map(operator.sub, ends, begins))
    width = {d: DTYPES[d].itemsize for d in kinds if d in DTYPES}  # unknown dtypes: any length
    if len(width) == len(kinds):  # every dtype known: the sizes are their widths times the counts
        if sizes != list(map(operator.mul, map(width.__getitem__, dtypes), counts)):
            return None
    elif any(size != width[d] * c for d, c, size in zip(dtypes, counts, sizes, strict=True) if d in width):
        return None
    return names, dtypes, shapes, begins, ends


# The compact form that the safetensors library and json.dumps(separators=(",", ":")) write, entry keys in
# the library's order: '{"__metadata__":{"k":"v",...},"name":{"dtype":"F32","shape":[2,3],"data_offsets":
# [0,24]},...}', then spaces. _compact_columns reads it with one regular expression instead of a dict per entry
# (100,000 entries: 0.55 -> 0.25 s); where its entries tile the text, names hold no escape or control character
# and the numbers parse as JSON (no leading zeros, no empty elements), that text means what json.loads makes of
# it. Anything else (an escape, spaces between tokens, another key order, metadata after a tensor) goes to
# json.loads.
_COMPACT_ENTRY = re.compile(r',"([^"]*)":\{"dtype":"([^"]*)","shape":\[([0-9,]*)\],'
                            r'"data_offsets":\[([0-9]+,[0-9]+)\]\}')
_ENTRY_CHARS = len(',"":{"dtype":"","shape":[],"data_offsets":[]}')  # an entry's characters besides its fields
_COMPACT_METADATA = re.compile(r'"__metadata__":(\{(?:"[^"]*":"[^"]*"(?:,"[^"]*":"[^"]*")*)?\})')
_NOT_COMPACT = re.compile(r"[\x00-\x1f\\]")  # an escape or a control character
_JSON_SPACE = " \t\n\r"


def _compact_columns(text: str, data_size: int) -> tuple[Columns, dict[str, str] | None] | None:
    """A header in the compact form (above), as checked columns and its metadata; None for any other text (the
    JSON parser then reads it and says what is wrong), and where the entries fail a check, so that the checks
    entry by entry name the problem."""
    body = text.strip(_JSON_SPACE)
    if len(body) < 2 or body[0] != "{" or body[-1] != "}":
        return None
    metadata = None
    rest = "," + body[1:-1]
    if body.startswith('{"__metadata__":'):
        found = _COMPACT_METADATA.match(body, 1)
        if found is None or _NOT_COMPACT.search(found.group(1)):
            return None
        try:
            metadata = json.loads(found.group(1), object_pairs_hook=_pairs)
        except _DuplicateKey:
            return None
        rest = body[found.end() : -1]
    rows = _COMPACT_ENTRY.findall(rest)
    if not rows:
        return None
    names, dtypes, shapes, offsets = map(list, zip(*rows, strict=True))
    if (sum(map(len, names)) + sum(map(len, dtypes)) + sum(map(len, shapes)) + sum(map(len, offsets))
            + _ENTRY_CHARS * len(rows) != len(rest)):  # the entries do not tile the text
        return None
    if len(set(names)) != len(names) or "__metadata__" in names:  # the JSON parser names the duplicate
        return None
    joined = "".join(names)  # the only free text left: the dtypes must be safetensors dtype names
    if not (joined.isascii() and joined.isprintable()) or "\\" in joined:
        return None
    try:  # the numbers as JSON reads them: no leading zeros, no empty elements
        int_shapes = json.loads("[[" + "],[".join(shapes) + "]]")
        flat = json.loads("[" + ",".join(offsets) + "]")
    except ValueError:  # that, or an integer past Python's digit limit
        return None
    columns = _checked(names, dtypes, int_shapes, flat[0::2], flat[1::2], data_size)
    return None if columns is None else (columns, metadata)


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
