"""Fuzzing the safetensors reader: random bytes, byte mutations of valid files and structural mutations of
their JSON headers (re-serialized, sometimes with text-level damage: integers past Python's digit limit,
deep nesting, lone surrogate escapes, duplicate keys), through parse_layout, read_layout and, for some, the
whole commit path. Nothing but an MlvcError may come out, and an accepted layout must tile the file.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import struct

import numpy as np
import pytest
from hypothesis import given, note

from conftest import make_repo
from fuzz_util import check_all, fuzz_settings, mutate_bytes, mutate_json, random_bytes, random_json, seed_batches
from mlvc.errors import MlvcError
from mlvc.formats import safetensors as st_format
from mlvc.store import MemoryObjectStore

# Generated inputs per test: 13,300 in all against the reader.
RANDOM_INPUTS = 3_000  # random bytes, random length prefixes, random JSON headers
MUTATION_INPUTS = 5_000  # byte mutations of valid files
HEADER_INPUTS = 4_000  # structural mutations of valid headers
FILE_INPUTS = 1_000  # read_layout on mutated files, as commit reads them
COMMIT_INPUTS = 300  # the whole commit path (mutated files; a repository with an in-memory store)


def _valid(tensors: list[tuple[str, str, list[int], bytes]], metadata=None) -> bytes:
    layout = st_format.build_layout([(n, d, s, len(b)) for n, d, s, b in tensors], metadata)
    return layout.header_bytes + b"".join(b for *_, b in tensors)


SEEDS = [
    _valid([]),
    _valid([], {"format": "pt"}),
    _valid([("a", "F32", [3], np.arange(3, dtype="<f4").tobytes())]),
    _valid([("w", "F16", [2, 2], bytes(8)), ("b", "I64", [], (7).to_bytes(8, "little")),
            ("e", "U8", [0], b""), ("z", "BF16", [1, 0, 3], b"")], {"k": "v", "é": "ü"}),
    _valid([("x.y", "F8_E4M3", [4], b"\x01\x02\x03\x04"), ("u", "F4", [8], b"\x12\x34\x56\x78"),
            ("b", "BOOL", [2], b"\x00\x01")]),
    _valid([("t", "I8", [5], bytes(range(5)))]),
    struct.pack("<Q", 2) + b"{}",  # the smallest header, unpadded
]
SEED_HEADERS = [json.loads(s[8 : 8 + struct.unpack("<Q", s[:8])[0]]) for s in SEEDS]
HEADER_KEYS = ("dtype", "shape", "data_offsets", "__metadata__")


def _check(data: bytes, size: int | None = None) -> None:
    """parse_layout raises only FormatError (an MlvcError); an accepted layout tiles the file exactly."""
    size = len(data) if size is None else size
    try:
        layout = st_format.parse_layout(data, size, "fuzz.safetensors")
    except MlvcError:
        return
    pos = 0
    for t in layout.tensors:
        assert type(t.begin) is int and type(t.end) is int and t.begin == pos <= t.end
        assert all(type(d) is int and d >= 0 for d in t.shape)
        t.name.encode("utf-8")
        pos = t.end
    assert layout.data_start + pos == size
    assert layout.header_bytes == bytes(data[: layout.data_start])


def _with_header(body: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def _random_file(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return random_bytes(rng)
    if kind == 1:
        return _with_header(random_bytes(rng), random_bytes(rng, 16))
    if kind == 2:
        return _with_header(random_bytes(rng, 16), random_bytes(rng, 16), rng.randrange(2 ** 64))
    return _with_header(json.dumps(random_json(rng)).encode("utf-8", "surrogatepass"), random_bytes(rng, 32))


@fuzz_settings(RANDOM_INPUTS)
@given(seed_batches())
def test_random_bytes_and_headers(seeds):
    check_all(seeds, _random_file, _check)


@fuzz_settings(MUTATION_INPUTS)
@given(seed_batches())
def test_byte_mutations_of_valid_files(seeds):
    check_all(seeds, lambda rng: mutate_bytes(rng, rng.choice(SEEDS), head=64), _check)


def _mutated_header(rng: random.Random) -> bytes:
    """A valid header with structural mutations, re-serialized, sometimes damaged as text."""
    header = mutate_json(rng, rng.choice(SEED_HEADERS), keys=HEADER_KEYS)
    text = json.dumps(header)
    op = rng.choice(["none", "none", "none", "long-int", "nest", "surrogate", "dup-key"])
    if op == "long-int":  # an integer past Python's 4300-digit limit, where a number was
        at = [i for i, c in enumerate(text) if c.isdigit()]
        if at:
            i = rng.choice(at)
            text = text[:i] + "9" * 5000 + text[i:]
    elif op == "nest":
        n = rng.choice([1, 10, 2000, 100_000])
        text = "[" * n + text + "]" * n
    elif op == "surrogate":
        text = text.replace('"', '"\\ud800', 1)
    elif op == "dup-key" and text.startswith("{") and len(text) > 2:
        first = text[1:].split(",")[0].rstrip("}")
        text = "{" + first + "," + text[1:]
    pad = " " * rng.choice([0, 0, 1, 7])
    return _with_header((text + pad).encode("utf-8", "surrogatepass"), bytes(rng.choice([0, 1, 3, 4, 8, 64])))


@fuzz_settings(HEADER_INPUTS)
@given(seed_batches())
def test_structural_mutations_of_valid_headers(seeds):
    check_all(seeds, _mutated_header, _check)


SPAN_INPUTS = 3_000  # mutated headers through both span checks


def _both_span_checks(rng: random.Random) -> None:
    """The column-wise check (_spans) agrees with the check entry by entry (_span) on a mutated header: the
    same columns when every entry passes (ASCII names: the fast path's case), else it hands over (None)."""
    header = mutate_json(rng, rng.choice(SEED_HEADERS), keys=HEADER_KEYS)
    if not isinstance(header, dict):
        return
    header.pop("__metadata__", None)
    items = list(header.items())
    size = rng.choice([0, 3, 8, 64, 1 << 70])
    try:
        slow = st_format._columns([st_format._span("f", name, info, size) for name, info in items])
    except MlvcError:
        slow = None
    fast = st_format._spans(items, size)
    if slow is None or not items or not "".join(header).isascii():
        assert fast is None or fast == slow
    else:
        assert fast == slow


@fuzz_settings(SPAN_INPUTS)
@given(seed_batches())
def test_column_wise_span_checks_agree_with_entry_by_entry(seeds):
    for seed in seeds:
        _both_span_checks(random.Random(seed))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz-st") / "f.safetensors")


def _any_file(rng: random.Random) -> bytes:
    return _mutated_header(rng) if rng.random() < 0.3 else mutate_bytes(rng, rng.choice(SEEDS), head=64)


def _commit_input(rng: random.Random) -> bytes:
    """Half the time a valid file with new tensor bytes (so that commits succeed, deltas against the last
    one included), else any mutated file."""
    if rng.random() < 0.5:
        seed = rng.choice(SEEDS)
        start = 8 + struct.unpack("<Q", seed[:8])[0]
        return seed[:start] + bytes(b ^ rng.randrange(256) if rng.random() < 0.2 else b for b in seed[start:])
    return _any_file(rng)


@fuzz_settings(FILE_INPUTS)
@given(seed_batches())
def test_read_layout_on_mutated_files(scratch, seeds):
    def check(data: bytes) -> None:
        with open(scratch, "wb") as f:
            f.write(data)
        with open(scratch, "rb") as f:
            try:
                layout = st_format.read_layout(f, "fuzz.safetensors")
            except MlvcError:
                return
        assert layout.data_start + layout.data_length == len(data)

    check_all(seeds, _any_file, check)


@pytest.fixture(scope="module")
def memory_repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("fuzz-commit") / "repo", chunk_size=64)
    repo.store = MemoryObjectStore()
    return repo


@fuzz_settings(COMMIT_INPUTS, batch=10)
@given(seed_batches(10))
def test_commit_of_mutated_files(memory_repo, seeds):
    """The whole commit path (snapshot, manifest, commit, branch) takes any file or refuses it cleanly; what
    it takes reads back: the file byte for byte, its tensors as arrays."""
    path = os.path.join(memory_repo.root, "m.safetensors")

    def check(data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
        try:
            memory_repo.commit(path, message="fuzz", allow_empty=True)
        except MlvcError:
            return
        memory_repo.load(framework="numpy")
        entry = memory_repo.read_manifest(memory_repo.read_commit(memory_repo.head()).manifest).file("m.safetensors")
        assert entry.size == len(data)
        with memory_repo.pipeline() as pipe:
            assert b"".join(pipe.read(entry.header + [c for t in entry.tensors for c in t.chunks])) == data

    check_all(seeds, _commit_input, check)


def _reference_order_and_tiling(header: dict, data_size: int) -> tuple[list[tuple], str | None]:
    """What parse_layout must give for a header whose entries all pass their own checks: the spans sorted by
    (begin, end, name), and the first gap or overlap (or short region) as the tensor-by-tensor walk finds it."""
    spans = sorted(((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items()))
    if any(end > data_size for _, end, _ in spans):  # an entry's own check fails first
        return spans, "data_offsets must be two integers"
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            return spans, f"tensor {name!r}: data offsets leave a {'overlap' if begin < pos else 'gap'} at byte {pos}"
        pos = end
    return spans, None if pos == data_size else "accounts for"


@fuzz_settings(2_000)
@given(seed_batches())
def test_layout_order_and_tiling_match_the_walk_tensor_by_tensor(seeds):
    """parse_layout's column-wise sort and tiling check (ties among empty tensors, keys in any order, gaps,
    overlaps, a region too long) give the order and the first problem that sorting spans by (begin, end, name)
    and walking them one by one give."""
    def one(rng: random.Random) -> None:
        n = rng.randrange(0, 12)
        sizes = [rng.choice([0, 0, 4, 8, 12]) for _ in range(n)]
        begins = list(np.cumsum([0, *sizes[:-1]])) if n else []
        offsets = [[int(b), int(b) + s] for b, s in zip(begins, sizes, strict=True)]
        for _ in range(rng.choice([0, 0, 1, 2])):  # damage: move an offset, making a gap or an overlap
            if offsets:
                o = rng.choice(offsets)
                o[rng.randrange(2)] = max(0, o[0] + rng.choice([-4, 4]))
                o.sort()
        names = [f"t{rng.randrange(6)}{i}" for i in range(n)]
        header = {name: {"dtype": "U8", "shape": [o[1] - o[0]], "data_offsets": o}
                  for name, o in zip(names, offsets, strict=True)}
        items = list(header.items())
        rng.shuffle(items)
        header = dict(items)
        data_size = sum(sizes) + rng.choice([0, 0, 4])
        text = json.dumps(header, separators=(",", ":")).encode()
        blob = struct.pack("<Q", len(text)) + text + bytes(data_size)
        spans, problem = _reference_order_and_tiling(header, data_size)
        try:
            layout = st_format.parse_layout(blob, len(blob), "f")
        except MlvcError as e:
            assert problem is not None and problem in str(e), (str(e), problem)
            return
        assert problem is None, problem
        assert [(t.begin, t.end, t.name) for t in layout.tensors] == spans
        assert (layout.names, layout.begins, layout.ends) == ([s[2] for s in spans], [s[0] for s in spans],
                                                              [s[1] for s in spans])

    for seed in seeds:
        one(random.Random(seed))


# -- the compact reader (_compact_columns) against the JSON parser ---------------------------------------------

COMPACT_INPUTS = 4_000
NAME_CHARS = ["a", "b", "0", ".", ",", ":", "{", "}", "[", "]", '"', "\\", " ", "\x01", "\x7f", "é", "_"]
TEXT_DAMAGE = ['"', "\\", ",", ":", "{", "}", "[", "]", "0", "1", "00", " ", "\n", "\x01", "-", ".", "e", "\\u0041",
               '"__metadata__":{},', '"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},']
NAME_DAMAGE = ["\x00", "\x01", "\x1f", "\t", "\n", "\\", "\\u0041", '"', "\x7f", "é", "\ud800", ":", ","]


def _compact_file(rng: random.Random) -> bytes:
    """A header as the safetensors library writes it (compact JSON, entry keys in its order; names with
    JSON-significant characters, which json.dumps escapes; metadata first, last or absent), sometimes damaged
    as text (a JSON-significant character or token inserted, a character dropped, a stretch repeated, a
    number given a leading zero), with a data region of the right length or not."""
    header: dict = {}
    metadata = rng.choice([None, None, {}, {"format": "pt"}, {"k:": "v,}", "é": "ü"}, {"q": 'a"b'},
                           {"s": "x\ud800"}, {"c": "a\x01b", "t": "\t"}, {"b": "back\\slash"}])
    last = rng.random() < 0.2
    if metadata is not None and not last:
        header["__metadata__"] = metadata
    pos = 0
    for i in range(rng.randrange(0, 6)):
        kind = rng.random()
        name = ("".join(rng.choice(NAME_CHARS) for _ in range(rng.randrange(0, 4))) if kind < 0.3
                else "__metadata__" if kind < 0.35 else f"t{i}")
        dtype = rng.choice(["F32", "F32", "U8", "BF16", "F8_E4M3", "Q9", "f32"])
        shape = [rng.choice([0, 1, 2, 3]) for _ in range(rng.randrange(0, 3))]
        nbytes = math.prod(shape) * {"F32": 4, "BF16": 2}.get(dtype, 1) + (rng.random() < 0.05)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    if metadata is not None and last:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
        i = rng.randrange(len(text) + 1)
        op = rng.randrange(7)
        entries = [m.group(0) for m in re.finditer(r'"[^"]*":\{"dtype[^}]*\}', text)]
        if op == 4 and entries:  # an entry twice: the same name, the same or other offsets
            entry = rng.choice(entries)
            again = entry if rng.random() < 0.5 else entry.replace('"data_offsets":[0,', '"data_offsets":[1,')
            text = text.replace(entry, entry + "," + again, 1)
        elif op == 5 and entries:  # damage inside a name
            at = text.index(rng.choice(entries)) + 1
            text = text[:at] + rng.choice(NAME_DAMAGE) + text[at:]
        elif op == 6 and metadata:  # a metadata key twice
            text = text.replace('"__metadata__":{', f'"__metadata__":{{"{next(iter(metadata))}":"x",', 1)
        elif op == 0:
            text = text[:i] + rng.choice(TEXT_DAMAGE) + text[i:]
        elif op == 1:
            text = text[:i] + text[i + 1 :]
        elif op == 2:
            j = rng.randrange(i, len(text) + 1)
            text = text[:j] + text[i:j] + text[j:]
        else:
            digits = [k for k, c in enumerate(text) if c.isdigit()]
            if digits:
                k = rng.choice(digits)
                text = text[:k] + "0" + text[k:]
    if rng.random() < 0.1:  # a character at either end that str.strip() takes for a space, JSON does not
        odd = rng.choice(["\x0b", "\x0c", "\xa0", "\u2028", "\x00", "\ufeff"])
        text = odd + text if rng.random() < 0.5 else text + odd
    text += " " * rng.choice([0, 0, 3, 8])
    data = bytes(pos + rng.choice([0, 0, 0, 1, -1 if pos else 0]))
    return _with_header(text.encode("utf-8", "surrogatepass"), data)


def _outcome(blob: bytes):
    try:
        layout = st_format.parse_layout(blob, len(blob), "f")
    except MlvcError as e:
        return "refused", str(e)
    return "read", layout


def _both_readers(blob: bytes, taken: list[bool]) -> None:
    n = struct.unpack("<Q", blob[:8])[0]
    try:
        text = blob[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    fast = _outcome(blob)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(st_format, "_compact_columns", lambda *_: None)
        slow = _outcome(blob)
    assert fast == slow
    if text is not None:
        taken.append(st_format._compact_columns(text, len(blob) - 8 - n) is not None)


@fuzz_settings(COMPACT_INPUTS)
@given(seed_batches())
def test_compact_reader_reads_as_the_json_parser_does(seeds):
    """Whatever the compact reader accepts, the JSON parser reads the same (the same layout, or the same
    error), and where the reader hands over the parser decides: escapes, control characters, duplicate names,
    leading zeros, metadata anywhere, damage of any kind."""
    taken: list[bool] = []
    check_all(seeds, _compact_file, lambda blob: _both_readers(blob, taken))
    note(f"compact reader took {sum(taken)} of {len(taken)}")


def test_compact_headers_take_the_compact_reader(tmp_path):
    """Headers that build_layout writes (json.dumps' compact form, with and without metadata) and that the
    safetensors library writes are read by the compact reader, to the same layout as the JSON parser's (so
    that the test above compares something, and the speed is there for real files)."""
    rng = random.Random(5)
    alphabet = [c for c in map(chr, range(0x20, 0x7F)) if c not in '"\\']
    for case in range(300):
        tensors = []
        for _ in range(rng.randrange(1, 8)):
            name = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))
            shape = [rng.randrange(0, 5) for _ in range(rng.randrange(0, 4))]
            tensors.append((name, rng.choice(["F32", "F16", "I64", "U8", "BOOL"]), shape))
        tensors = list({t[0]: t for t in tensors}.values())  # unique names
        layout = st_format.build_layout([(n, d, s, math.prod(s) * {"F32": 4, "F16": 2, "I64": 8}.get(d, 1))
                                         for n, d, s in tensors], {"format": "pt"} if case % 2 else None)
        blob = layout.header_bytes + bytes(layout.data_length)
        text = layout.header_bytes[8:].decode()
        assert st_format._compact_columns(text, layout.data_length) is not None, text
        taken: list[bool] = []
        _both_readers(blob, taken)
        assert taken == [True]
    from safetensors.numpy import save_file

    library = str(tmp_path / "library.safetensors")
    save_file({"w": np.ones((2, 3), np.float32), "b.x": np.arange(4, dtype=np.int64), "s": np.array(1.5, np.float16),
               "e": np.zeros((0, 2), np.uint8)}, library, metadata={"format": "np", "k:": "v,}"})
    with open(library, "rb") as f:
        written = f.read()
    # F32; F16, I64, an empty tensor and metadata with non-ASCII text; F8_E4M3, F4, BOOL; the library's file
    for blob in (SEEDS[2], SEEDS[3], SEEDS[4], written):
        n = struct.unpack("<Q", blob[:8])[0]
        assert st_format._compact_columns(blob[8 : 8 + n].decode(), len(blob) - 8 - n) is not None
        taken = []
        _both_readers(blob, taken)
        assert taken == [True]


@pytest.mark.parametrize("compact", [True, False])
def test_name_length_limit_on_both_readers(compact):
    """A tensor name of MAX_NAME_BYTES is read and one byte more is refused, by the compact reader's shared
    checks as by the JSON parser's."""
    for extra, ok in ((0, True), (1, False)):
        name = "n" * (st_format.MAX_NAME_BYTES + extra)
        text = json.dumps({name: {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                          separators=(",", ":") if compact else (", ", ": "))
        blob = _with_header(text.encode(), b"x")
        assert (st_format._compact_columns(text, 1) is not None) == (compact and ok)
        kind, value = _outcome(blob)
        assert kind == ("read" if ok else "refused"), value
        if not ok:
            assert "is not UTF-8 text of at most" in value
