"""The spec read as data: docs/format.md (its tables, the config.toml block, the worked example, the JSON
examples) and the exit-code table of docs/design.md, each parsed from the markdown and checked against the
code, so that neither can change without the other.

A failure here means the two drifted: fix whichever is wrong (docs/format.md says the code is the reference,
unless the change to the code was the mistake)."""

from __future__ import annotations

import builtins
import json
import os
import re
import struct
import tomllib
from pathlib import Path

import pytest

from mlvc import codec, dtypes, errors, objects
from mlvc.chunking import aligned_chunk, default_threads
from mlvc.config import CORE_RANGES, Config, write_default
from mlvc.errors import ConfigError
from mlvc.objects import COMMIT_FORMAT, MANIFEST_FORMAT, Commit, FileEntry, Manifest, Slot, TensorEntry
from mlvc.util import canonical_json

DOCS = Path(__file__).resolve().parent.parent / "docs"
FORMAT = (DOCS / "format.md").read_text(encoding="utf-8")
DESIGN = (DOCS / "design.md").read_text(encoding="utf-8")
ID = "0123456789abcdef0123456789abcdef"


# -- reading markdown ---------------------------------------------------------------------------------------


def section(text: str, title: str) -> str:
    """The body of the heading `title` (any level), up to the next heading of the same or a higher level
    (a `#` line inside a code block is not a heading)."""
    lines = text.splitlines(keepends=True)
    start = level = None
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#+) (.*)\n", line)
        if m and start is None and m.group(2) == title:
            start, level = i + 1, len(m.group(1))
        elif m and start is not None and len(m.group(1)) <= level:
            return "".join(lines[start:i])
    assert start is not None, f"no section {title!r}"
    return "".join(lines[start:])


def _cells(line: str) -> list[str]:
    """A table row's cells ('|' inside backticks does not split)."""
    cells, cur, code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text`, as rows keyed by the header's cells."""
    out, lines, i = [], [line.lstrip() for line in text.splitlines()], 0  # a table may be indented in a list item
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s|:-]+\|?", lines[i + 1].strip()):
            head = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(head, _cells(lines[i]), strict=True)))
                i += 1
            out.append(rows)
        else:
            i += 1
    return out


def tables_with(text: str, *header: str) -> list[list[dict[str, str]]]:
    """The tables in `text` whose header is exactly `header`."""
    return [t for t in tables(text) if t and list(t[0]) == list(header)]


def table(text: str, *header: str) -> list[dict[str, str]]:
    """The one table in `text` whose header is exactly `header`."""
    found = tables_with(text, *header)
    assert len(found) == 1, f"{len(found)} tables with the header {header}"
    return found[0]


def flat(text: str) -> str:
    """Text with its line breaks and runs of spaces made single spaces (prose is wrapped anywhere)."""
    return " ".join(text.split())


def code_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def number(text: str) -> int:
    """'1,159,435' -> 1159435."""
    return int(text.replace(",", ""))


def xxd(dump: str) -> bytes:
    """The bytes of an `xxd` dump."""
    return bytes.fromhex("".join("".join(line.split(":", 1)[1].split("  ")[0].split()) for line in dump.splitlines()))


# -- object files -------------------------------------------------------------------------------------------

OBJECTS = section(FORMAT, "Object files")


def test_header_table_is_the_struct_the_codec_packs():
    rows = table(OBJECTS, "offset", "size", "field", "value")
    offset = 0
    fields = []
    for code in re.findall(r"\d*[a-zA-Z]", codec.HEADER.format.lstrip("<")):
        size = struct.calcsize("<" + code)
        fields.append((offset, size))
        offset += size
    assert [(int(r["offset"]), int(r["size"])) for r in rows] == fields
    assert offset == codec.HEADER_SIZE == 32
    assert f"`{codec.HEADER.format}`" in OBJECTS
    by_field = {r["field"]: r["value"] for r in rows}
    assert f"`{codec.MAGIC.decode()}` ({codec.MAGIC.hex(' ', 1)})" in by_field["magic"]
    assert by_field["version"].startswith(f"{codec.FORMAT_VERSION} ")
    assert f"(1..{codec.MAX_DEPTH})" in by_field["depth"]


def test_encoding_numbers_and_names_match_the_codec():
    cell = table(OBJECTS, "offset", "size", "field", "value")[2]["value"]
    full, delta = cell.split(";")
    names = lambda text: {int(n): name for n, name in re.findall(r"(\d+) (\w+)", text)}  # noqa: E731
    assert {**names(full), **names(delta)} == codec.ENCODING_NAMES
    assert "(full)" in full and "(delta)" in delta
    assert tuple(names(full)) == codec.FULL_ENCODINGS and tuple(names(delta)) == codec.DELTA_ENCODINGS
    # each full encoding has its paragraph, each delta encoding its table row
    full_text = section(FORMAT, "Full encodings")
    for n in codec.FULL_ENCODINGS:
        assert f"**Encoding {n}, {codec.ENCODING_NAMES[n]}.**" in full_text
    rows = table(section(FORMAT, "Delta encodings"), "encoding", "payload")
    assert [r["encoding"] for r in rows] == [f"{n} {codec.ENCODING_NAMES[n]}" for n in codec.DELTA_ENCODINGS]


def test_thresholds_in_the_text_are_the_codecs():
    full = flat(section(FORMAT, "Full encodings"))
    assert f"n >= {codec._MIN_PLANE_BYTES}·w" in full and f"if n >= {codec._MIN_PLANE_BYTES};" in full
    assert f"at least {round(codec.MIN_SAVING * 100)}% smaller than n (`MIN_SAVING`)" in full
    assert f"w entries of {codec._PLANE_ENTRY.size} bytes" in full
    assert f"{codec._SAMPLE >> 10} KiB in all" in flat(section(FORMAT, "Delta encodings"))
    assert f"more than {codec.MAX_ZSTD_RATIO} times its own length" in flat(section(FORMAT, "Zstd frames"))


def test_chunk_step_rule_is_aligned_chunk():
    chunking = section(FORMAT, "Chunking")
    assert "step = max(w, chunk_size - chunk_size mod w)" in chunking
    for chunk_size in (64, 72, 4096, 2 << 20):
        for w in (1, 2, 4, 8):
            assert aligned_chunk(chunk_size, w) == max(w, chunk_size - chunk_size % w) == chunk_size
    assert aligned_chunk(6, 4) == 4


def test_canonical_json_is_the_documented_call():
    text = section(FORMAT, "Ids")
    call = re.search(r"\*\*Canonical JSON\*\*: `(json\.dumps\(value, [^`]*\))` encoded as UTF-8", text).group(1)
    value = {"b": [1, 2.5, None, True], "a": "é ü", "c": {"z": 1, "y": "\u2603"}}
    assert eval(call, {"json": json, "value": value}).encode("utf-8") == canonical_json(value)  # noqa: S307


# -- dtypes -------------------------------------------------------------------------------------------------


def test_dtype_table_is_mlvc_dtypes():
    rows = table(section(FORMAT, "Dtypes"), "dtype", "bytes", "kind", "numpy", "torch")
    got = {}
    for r in rows:
        (name,), (np_name,), (torch_name,) = ticked(r["dtype"]), ticked(r["numpy"]), ticked(r["torch"])
        got[name] = (int(r["bytes"]), r["kind"], np_name, torch_name)
    want = {d.name: (d.itemsize, d.kind, d.numpy or f"ml_dtypes.{d.ml_dtypes}", d.torch)
            for d in dtypes.DTYPES.values()}
    assert got == want
    assert list(got) == list(dtypes.DTYPES)


def test_tensor_entry_dtype_list_and_name_rule():
    row = next(r for r in tables_with(section(FORMAT, "Manifest"), "key", "type", "meaning")[1]
               if r["key"] == "`dtype`")
    names, rule = ticked(row["meaning"])[:2]
    assert names.split() == list(dtypes.DTYPES)
    assert rule == dtypes.DTYPE_NAME.pattern
    assert "at most 64 dims" in section(FORMAT, "Dtypes") and dtypes.MAX_RANK == 64


def test_bool_is_one_byte_everywhere():
    import numpy as np

    from mlvc import numeric

    assert dtypes.ITEMSIZE["BOOL"] == dtypes.plane_width("BOOL") == dtypes.numpy_dtype("BOOL").itemsize == 1
    assert dtypes.numpy_dtype("BOOL") == np.dtype(bool) and dtypes.from_numpy(np.dtype(bool)) == "BOOL"
    assert numeric.as_numbers(bytes([0, 1, 2]), "BOOL").tolist() == [0, 1, 2]  # every byte counts


# -- config.toml --------------------------------------------------------------------------------------------

CONFIG = section(FORMAT, "config.toml")
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def _documented_core() -> dict[str, tuple[int, int, int]]:
    """core key -> (low, high, default) as the config table states them."""
    out = {}
    for r in table(CONFIG, "key", "type, range", "meaning"):
        (key,) = ticked(r["key"])
        if not key.startswith("core."):
            continue
        m = re.fullmatch(r"int, (-?\d+)(?: (\w+))? \.\. (-?\d+)(?: (\w+))?(?: \([^)]*\))?; default (-?\d+)\b.*",
                         r["type, range"].replace(", multiple of 8", ""))
        assert m, f"cannot read the range of {key}: {r['type, range']!r}"
        low, lu, high, hu, default = m.groups()
        out[key.removeprefix("core.")] = (int(low) * UNITS[lu or "B"], int(high) * UNITS[hu or "B"], int(default))
    return out


def test_config_block_is_what_init_writes(tmp_path):
    (block,) = code_blocks(CONFIG, "toml")
    write_default(str(tmp_path / "config.toml"))
    assert (tmp_path / "config.toml").read_text(encoding="utf-8") == block
    assert tomllib.loads(block)["core"] == {k: v[2] for k, v in CORE_RANGES.items()}


def test_config_table_is_core_ranges():
    assert _documented_core() == {k: (low, high, default) for k, (low, high, default, _) in CORE_RANGES.items()}
    assert "up to 16" in next(r["type, range"] for r in table(CONFIG, "key", "type, range", "meaning")
                              if r["key"] == "`core.threads`")
    default_threads()  # the "up to 16" of threads = 0
    assert default_threads() <= 16


def _load_with(tmp_path, body: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(body, encoding="utf-8")
    return Config.load(str(path))


@pytest.mark.parametrize("key", sorted(CORE_RANGES))
def test_documented_ranges_are_enforced(tmp_path, key):
    low, high, _ = _documented_core()[key]
    for ok in (low, high):
        assert getattr(_load_with(tmp_path, f"[core]\n{key} = {ok}\n"), key) == ok
    for bad in (low - 1, high + 1, "true", "2.0", '"2"'):
        with pytest.raises(ConfigError, match=f"core.{key}"):
            _load_with(tmp_path, f"[core]\n{key} = {bad}\n")


def test_other_documented_config_errors(tmp_path):
    assert "multiple of 8" in CONFIG
    with pytest.raises(ConfigError, match="multiple of 8"):
        _load_with(tmp_path, "[core]\nchunk_size = 100\n")
    with pytest.raises(ConfigError, match="user.name"):
        _load_with(tmp_path, '[user]\nname = "two\\nlines"\n')
    for table_name in ("core", "user", "gc", "tasks"):
        assert f"`[{table_name}]`" in CONFIG
        with pytest.raises(ConfigError, match=table_name):
            _load_with(tmp_path, f"{table_name} = 1\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        (tmp_path / "config.toml").write_bytes(b"[core]\n# \xff\n")
        Config.load(str(tmp_path / "config.toml"))


def test_gc_defaults_are_the_documented_ones():
    from mlvc.ops import gc

    rows = {ticked(r["key"])[0]: r["type, range"] for r in table(CONFIG, "key", "type, range", "meaning")}
    grace = re.search(r'default `"([^"]+)"`', rows["gc.grace"]).group(1)
    temp = re.search(r'default `"([^"]+)"`', rows["gc.temp_grace"]).group(1)
    assert gc.parse_grace(grace, "gc.grace") == gc.DEFAULT_GRACE
    assert gc.parse_grace(temp, "gc.temp_grace") == gc.DEFAULT_TEMP_GRACE


# -- exit codes (docs/design.md) ----------------------------------------------------------------------------


def _code_of(cls: type) -> int:
    return next(errors.EXIT_CODES[c] for c in cls.__mro__ if c in errors.EXIT_CODES)


def test_exit_code_table_is_exit_codes():
    rows = table(DESIGN, "exit", "meaning (classes)")
    named: set[type] = set()
    for r in rows:
        codes = [int(c) for c in r["exit"].split("/")]
        classes = [getattr(errors, n, None) or getattr(builtins, n, None)
                   for n in ticked(r["meaning (classes)"]) if re.fullmatch(r"[A-Z]\w+", n)]
        classes = [c for c in classes if isinstance(c, type) and issubclass(c, BaseException)]
        if codes[0] in (0, 2):  # success, click's usage errors: no class
            assert not classes, r
            continue
        assert classes, f"exit {r['exit']} names no class"
        if len(codes) > 1:
            assert [_code_of(c) for c in classes] == codes, r
        else:
            assert {_code_of(c) for c in classes} == set(codes), r
        named.update(classes)
    missing = set(errors.EXIT_CODES) - named - {Exception}
    assert not missing, f"in EXIT_CODES but not in docs/design.md: {sorted(c.__name__ for c in missing)}"
    documented = {int(c) for r in rows for c in r["exit"].split("/")}
    assert set(errors.EXIT_CODES.values()) <= documented


# -- manifests, commits, entries ----------------------------------------------------------------------------

MANIFEST = section(FORMAT, "Manifest")


def _keys_of(rows: list[dict[str, str]], column: str = "key") -> set[str]:
    return {ticked(r[column])[0] for r in rows}


def _example(text: str) -> dict:
    (block,) = code_blocks(text, "json")
    return json.loads(block.replace("FILE, ...", "{}"))


def test_manifest_example_and_table_are_what_is_written():
    written = json.loads(Manifest(["model"], [], 2 << 20).to_bytes())
    example = _example(MANIFEST.split("**File entry**")[0])
    assert set(example) == set(written) == _keys_of(table(MANIFEST, "key", "meaning"))
    assert example["type"] == written["type"] == "manifest"
    assert example["format"] == written["format"] == 2  # 4 only when a file has bundles
    (row,) = [r for r in table(MANIFEST, "key", "meaning") if ticked(r["key"])[0] == "format"]
    assert row["meaning"].startswith(f"2, or {MANIFEST_FORMAT} when a file has `bundles`")
    t = TensorEntry("s", "F32", [1], 4, ID, [ID], slot=Slot(ID, 0, 4, 0))
    entry = FileEntry("m", "safetensors", 1, ID, tensors=[t], header=[ID])
    bundled = json.loads(Manifest(["m"], [entry], 64).to_bytes())
    assert bundled["format"] == MANIFEST_FORMAT


def test_commit_example_and_table_are_what_is_written():
    text = section(FORMAT, "Commit")
    written = json.loads(Commit(ID, [], "alice", "2026-11-27T17:31:13.061379Z", "m", {}).to_bytes())
    example = _example(text)
    assert set(example) == set(written) == _keys_of(table(text, "key", "meaning"))
    assert example["type"] == written["type"] == "commit"
    assert example["format"] == written["format"] == COMMIT_FORMAT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", example["time"])


def test_entry_tables_are_the_keys_written():
    file_rows, tensor_rows = tables_with(MANIFEST, "key", "type", "meaning")
    common = _keys_of(file_rows)
    assert common == {"path", "kind", "size", "hash"}
    by_kind: dict[str, set[str]] = {}
    for r in table(MANIFEST, "kind", "key", "type", "meaning"):
        if r["kind"] in ("safetensors", "torch", "blob"):  # not the rows of entries from before frames
            by_kind.setdefault(r["kind"], set()).update(ticked(r["key"]))
    t = TensorEntry("w", "F32", [2], 8, ID, [ID])
    small = TensorEntry("s", "F32", [1], 4, ID, [ID], slot=Slot(ID, 0, 4, 0))  # in a bundle
    entries = {"safetensors": FileEntry("a", "safetensors", 1, ID, tensors=[t, small], header=[ID]),
               "torch": FileEntry("b", "torch", 1, ID, tensors=[t, small], frame=[ID], layout=[4, "w", "s"]),
               "blob": FileEntry("c", "blob", 1, ID, chunks=[ID])}
    for kind, entry in entries.items():
        assert set(entry.to_dict()) == common | by_kind[kind], kind
    # `in` is format 3's (read, not written): the table says so
    (in_row,) = [r for r in tensor_rows if ticked(r["key"]) == ["in"]]
    assert in_row["type"].endswith("format 3 only")
    assert _keys_of(tensor_rows) == set(TensorEntry("w", "F32", [2], 8, ID, [ID], alias="v").to_dict()) | {"in"}
    assert "in" not in json.dumps(entries["safetensors"].to_dict()["tensors"])


BUNDLES = section(FORMAT, "Bundles")


def test_small_table_columns_and_example_are_what_is_written():
    """The `small` columns the spec lists are the keys written, and its example is what mlvc writes for the
    tensors it names (and reads back to them)."""
    columns = table(BUNDLES, "column", "type", "meaning")
    assert [ticked(r["column"])[0] for r in columns] == list(objects._SMALL_KEYS)
    text = flat(BUNDLES)
    example = json.loads(re.search(r"and `small` is `(\{.*?\})`", text).group(1))
    bid = "0" * 32
    large = [TensorEntry(n, "F32", [2000], 8000, ID, [ID]) for n in ("a.w", "b.w")]
    small = [TensorEntry("a.b", "F32", [4], 16, ID, [ID], slot=Slot(bid, 0, 20, 0)),
             TensorEntry("a.g", "F32", [1], 4, ID, [ID], slot=Slot(bid, 16, 20, 0))]
    entry = FileEntry("m", "safetensors", 1, ID, tensors=[large[0], *small, large[1]], header=[ID])
    written = entry.to_dict()
    assert written["small"] == example and [t["name"] for t in written["tensors"]] == ["a.w", "b.w"]
    assert "(one bundle of 20 bytes: `a.b`'s at 0, `a.g`'s at 16)" in text
    back = FileEntry.from_dict(json.loads(json.dumps(written)))
    assert [(t.name, t.slot) for t in back.tensors] == [("a.w", None), ("a.b", small[0].slot), ("a.g", small[1].slot),
                                                        ("b.w", None)]


# -- refs, locks, stat cache, ledger ------------------------------------------------------------------------


def test_reflog_line_and_deleted_branch(tmp_path):
    from mlvc.refs import RefStore

    text = section(FORMAT, "Reflog")
    (example,) = code_blocks(text, "json")
    refs = RefStore(str(tmp_path))
    refs.add_if_new("refs/heads/b", ID, who="alice", message="branch: created from main")
    log = tmp_path / "logs" / "refs" / "heads" / "b"
    line = log.read_text(encoding="utf-8").splitlines()[0]
    assert set(json.loads(line)) == set(json.loads(example))
    assert line == json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False)  # default separators
    assert "Deleting a branch or tag writes no line: its reflog file is removed with it" in flat(text)
    refs.remove_if_equals("refs/heads/b", ID, who="alice", message="branch: deleted")
    assert not log.exists()


def test_lock_record_is_the_documented_one():
    from mlvc import lockfile

    (example,) = code_blocks(section(FORMAT, "Locks"), "json")
    assert set(json.loads(lockfile._record())) == set(json.loads(example))


def test_stat_cache_is_the_documented_shape(tmp_path):
    from mlvc.statcache import StatCache

    (example,) = code_blocks(section(FORMAT, "Stat cache (index.json)"), "json")
    example = json.loads(example.replace('"340d94e9..."', '"x"'))
    (tmp_path / "f").write_bytes(b"x")
    cache = StatCache(str(tmp_path))
    cache.record("f", str(tmp_path / "f"), ID)
    cache.save()
    saved = json.loads((tmp_path / "index.json").read_text())
    assert set(saved) == set(example)
    assert set(saved["files"]["f"]) == set(next(iter(example["files"].values())))


def test_ledger_schema_table_is_the_arrow_schema():
    import pyarrow as pa

    from mlvc.ledger import arrow_schema

    rows = table(section(FORMAT, "Evaluation ledger (`.mlvc/ledger/`)"), "column", "Arrow type", "null?", "meaning")
    schema = arrow_schema()
    assert [ticked(r["column"])[0] for r in rows] == schema.names
    for r, f in zip(rows, schema, strict=True):
        m = re.fullmatch(r"timestamp\[(\w+), (\w+)\]", r["Arrow type"])
        want = pa.timestamp(m.group(1), tz=m.group(2)) if m else pa.type_for_alias(r["Arrow type"])
        assert f.type == want, f.name
        assert (r["null?"] == "yes") == f.nullable, f.name


def test_layout_folders_exist_after_init(tmp_path):
    from mlvc.repo import Repo

    text = section(FORMAT, "Layout")
    made = re.search(r"`Repo\.init` creates (.*?), writes `config\.toml`", text, re.S).group(1)
    repo = Repo.init(str(tmp_path))
    for folder in ticked(made):
        assert os.path.isdir(os.path.join(repo.dir, folder)), folder
    assert os.path.isfile(os.path.join(repo.dir, "config.toml")) and os.path.isfile(os.path.join(repo.dir, "HEAD"))


# -- the worked example -------------------------------------------------------------------------------------

EXAMPLE = section(FORMAT, "Worked example")
FIRST_ID, SECOND_ID = re.findall(r"is (?:now )?`([0-9a-f]{32})`", flat(EXAMPLE))
FIRST_DUMP, SECOND_DUMP = (xxd(d) for d in code_blocks(EXAMPLE))


def _plane_table(data: bytes, width: int) -> list[tuple[int, int]]:
    return [codec._PLANE_ENTRY.unpack_from(data, codec.HEADER_SIZE + i * 5) for i in range(width)]


def test_first_dump_matches_its_table_and_the_file_size():
    h = codec.ObjectHeader.parse(FIRST_DUMP)
    rows = table(EXAMPLE, "bytes", "value")
    spelled = ""
    for r in rows:
        (hexed,) = ticked(r["bytes"])
        m = re.fullmatch(r"(\d+) × `[0-9a-f]+`", r["bytes"])
        spelled += hexed.replace(" ", "") * (int(m.group(1)) if m else 1)
    assert bytes.fromhex(spelled) == FIRST_DUMP
    values = [r["value"] for r in rows]
    assert values[2].startswith(f"encoding {h.encoding}, {codec.ENCODING_NAMES[h.encoding]}")
    assert values[3].startswith(f"width {h.width} (F32)") and dtypes.plane_width("F32") == h.width
    assert values[4].startswith(f"depth {h.depth}: a full object") and h.base is None
    assert f"= {h.raw_length:,} (one 2 MiB chunk)" in values[5] and h.raw_length == 2 << 20
    planes = _plane_table(FIRST_DUMP, h.width)
    for i, (mode, size) in enumerate(planes):
        assert values[7 + i].startswith(f"plane {i}: {['raw', 'zstd'][mode]}, 0x{size:06x} = {size:,} bytes")
    total = number(re.search(r"\(([\d,]+) bytes\)\. Its first 52 bytes", EXAMPLE).group(1))
    assert codec.HEADER_SIZE + 5 * h.width + sum(s for _, s in planes) == total
    assert f"= {total:,}, the file's size" in flat(EXAMPLE)
    path = f".mlvc/objects/{FIRST_ID[:2]}/{FIRST_ID[2:]}"
    assert f"`{path}`" in EXAMPLE
    from mlvc.store import LooseObjectStore

    assert LooseObjectStore("/r/.mlvc/objects")._path(FIRST_ID) == "/r/" + path


def test_second_dump_is_a_sub_delta_on_the_first():
    h = codec.ObjectHeader.parse(SECOND_DUMP)
    text = flat(EXAMPLE.split(SECOND_ID, 1)[1])
    assert f"encoding {h.encoding} (`{codec.ENCODING_NAMES[h.encoding]}`), width {h.width}, depth {h.depth}, " \
           f"raw length {h.raw_length:,}" in text
    assert h.encoding in codec.DELTA_ENCODINGS and h.base == FIRST_ID and h.depth == 1
    assert codec.bases(SECOND_DUMP + bytes(16)) == [FIRST_ID]
    planes = _plane_table(SECOND_DUMP, h.width)
    assert planes[0] == (0, h.raw_length // h.width) and f"plane 0 raw ({planes[0][1]:,} bytes" in text
    assert [m for m, _ in planes[1:]] == [1, 1, 1]
    assert "planes 1-3 zstd at " + ", ".join(f"{s:,}" for _, s in planes[1:3]) + f" and {planes[3][1]:,} bytes" in text


def test_commit_object_header_in_the_text():
    m = re.search(r"is (\d+) bytes: a zstd object \(`([0-9a-f ]+)`, raw length `([0-9a-f]{16})` = (\d+) bytes",
                  flat(EXAMPLE))
    size, head, raw_length, n = int(m.group(1)), bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3)), int(m.group(4))
    assert head == codec.MAGIC + bytes([codec.FORMAT_VERSION, codec.ENC_ZSTD, 1, 0])
    assert struct.unpack("<Q", raw_length)[0] == n
    assert size > codec.HEADER_SIZE
    assert "starts with the zstd magic `28b52ffd`" in flat(EXAMPLE)
    assert codec.encode(b"{}" * 100, 1)[codec.HEADER_SIZE:][:4] == bytes.fromhex("28b52ffd")


@pytest.mark.slow
def test_worked_example_from_the_real_weights(tmp_path, monkeypatch, minilm_path):
    """The example's file facts, first chunk id and object bytes, and commit totals, recomputed."""
    import shutil

    import zstandard

    from mlvc.formats.safetensors import read_layout
    from mlvc.repo import Repo
    from mlvc.util import hash_bytes

    src = minilm_path
    size, n_tensors = (number(x) for x in re.search(r"`model\.safetensors`, ([\d,]+) bytes, (\d+) tensors",
                                                   EXAMPLE).groups())
    assert os.path.getsize(src) == size
    with open(src, "rb") as f:
        layout = read_layout(f, src)
        t = next(t for t in layout.tensors if t.name == "embeddings.word_embeddings.weight")
        f.seek(layout.data_start + t.begin)
        chunk = f.read(2 << 20)
    assert len(layout.tensors) == n_tensors
    dtype, rows, cols, nbytes, chunks = re.search(r"\((\w+), \[(\d+), (\d+)\], ([\d,]+) bytes, (\d+) chunks\)",
                                                  flat(EXAMPLE)).groups()
    assert (t.dtype, t.shape, t.nbytes) == (dtype, [int(rows), int(cols)], number(nbytes))
    assert -(-t.nbytes // aligned_chunk(2 << 20, dtypes.plane_width(t.dtype))) == int(chunks)
    assert hash_bytes(chunk) == FIRST_ID
    data = codec.encode(chunk, dtypes.plane_width(t.dtype), 1)
    assert data[: codec.HEADER_SIZE] == FIRST_DUMP[: codec.HEADER_SIZE]
    assert [m for m, _ in _plane_table(data, 4)] == [m for m, _ in _plane_table(FIRST_DUMP, 4)]
    documented = re.search(r"`zstandard` ([\d.]+)", EXAMPLE).group(1)
    if zstandard.__version__ == documented:  # stored sizes may differ with another zstd
        assert data[:52] == FIRST_DUMP

    root = tmp_path / "repo"
    root.mkdir()
    shutil.copyfile(src, root / "model.safetensors")
    monkeypatch.setenv("MLVC_AUTHOR", "alice")
    repo = Repo.init(str(root))
    result = repo.commit(str(root / "model.safetensors"), message="MiniLM", metadata={"step": 0})
    objects, stored = re.search(r"give (\d+) objects of chunks, ([\d,]+) bytes together", EXAMPLE).groups()
    assert (result.new_chunks, result.new_bytes) == (int(objects), number(stored))
    assert repo.store.stored_size(FIRST_ID) == number(re.search(r"\(([\d,]+) bytes\)\. Its first", EXAMPLE).group(1))
    head = repo.store.read_file(result.commit.id)[: codec.HEADER_SIZE]
    h = codec.ObjectHeader.parse(head)
    n = int(re.search(r"= (\d+) bytes of canonical JSON", flat(EXAMPLE)).group(1))
    if not (result.commit.metadata.keys() - {"step"}):  # outside a git work tree: no git_revision
        assert (h.encoding, h.raw_length) == (codec.ENC_ZSTD, n)
