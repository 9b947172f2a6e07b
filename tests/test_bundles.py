"""Small tensors stored as slices of shared bundle objects (mlvc/bundles.py, docs/format.md "Bundles"): which
tensors go in, how the bytes lie, that every reader sees ordinary tensors, that unchanged bundles keep their
ids and changed ones are deltas, that malformed bundle entries are refused, and that repositories written
before bundles keep working."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_repo, sha256_file, write_safetensors_np
from mlvc import bundles, chunking, objects
from mlvc.bundles import resolve_bundles
from mlvc.errors import CorruptObjectError, ObjectNotFoundError
from mlvc.objects import Manifest
from mlvc.repo import Repo
from mlvc.store import BUNDLE_TENSOR_MAX
from mlvc.util import canonical_json, hash_bytes

KINDS = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_}


def _tensors(seed: int, spec: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (dt, n) in enumerate(spec):
        a = rng.integers(0, 2, n).astype(bool) if dt == "BOOL" else (rng.standard_normal(n) * 100).astype(KINDS[dt])
        out[f"t.{i:03d}"] = a
    return out


def _commit(repo, tensors, message="m"):
    path = os.path.join(repo.root, "model.safetensors")
    write_safetensors_np(path, tensors)
    return repo.commit(path, message=message).commit, path


def _raw_manifest(repo, cid) -> dict:
    return json.loads(repo.store.get(repo.read_commit(cid).manifest))


def _rows(f: dict) -> list[dict]:
    """A stored file entry's tensors in file order, as docs/format.md lays them out (written here from the spec,
    not with mlvc's reader): `tensors`, with the rows of `small` (front-coded names) where its runs put them,
    each such row a format-3 style entry with `in`."""
    listed = list(f["tensors"])
    table = f.get("small")
    if table is None:
        return listed
    names, name = [], ""
    for k, rest in zip(table["prefix"], table["suffix"], strict=True):
        assert 0 <= k <= len(name)
        name = name[:k] + rest
        names.append(name)
    small = iter([{"name": n, "dtype": d, "shape": s, "in": k}
                  for n, d, s, k in zip(names, table["dtype"], table["shape"], table["in"], strict=True)])
    out: list[dict] = []
    for position, count in table["runs"]:
        while len(out) < position:
            out.append(listed.pop(0))
        out.extend(next(small) for _ in range(count))
    assert next(small, None) is None
    return out + listed


def _check_layout(repo, cid, bundle_max: int, tensors: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The invariants of docs/format.md "Bundles", on the stored form and on what a reader makes of it (each
    bundled tensor's bytes are its slice of the bundle); returns each bundle id -> the tensor names it holds."""
    raw = _raw_manifest(repo, cid)
    (f,) = raw["files"]
    entry = repo.read_manifest(repo.read_commit(cid).manifest).files[0]
    held: dict[str, list[str]] = {}
    ends: dict[int, int] = {}
    widths: dict[int, int] = {}
    assert raw["format"] == (4 if "small" in f else 2) and ("small" in f) == ("bundles" in f)
    rows = _rows(f)
    assert not any("in" in stored for stored in f["tensors"])  # format 3's form is never written
    for stored, t in zip(rows, entry.tensors, strict=True):
        small = 0 < t.nbytes <= BUNDLE_TENSOR_MAX
        assert ("in" in stored) == small == (t.slot is not None), stored
        assert t.hash == t.chunks[0] if t.chunks else t.nbytes == 0
        if small:
            assert set(stored) == {"name", "dtype", "shape", "in"}
            k = stored["in"]
            bid = f["bundles"][k]
            assert t.slot.bundle == bid and t.slot.offset == ends.get(k, 0)
            assert bytes(repo.store.get(bid))[t.slot.offset : t.slot.offset + t.nbytes] == tensors[t.name].tobytes()
            assert widths.setdefault(k, np.dtype(KINDS[t.dtype]).itemsize) == np.dtype(KINDS[t.dtype]).itemsize
            ends[k] = ends.get(k, 0) + t.nbytes
            held.setdefault(bid, []).append(t.name)
            assert not repo.store.has(t.hash) or t.hash in f["bundles"]  # no object of its own
    for k, bid in enumerate(f.get("bundles", [])):
        assert len(repo.store.get(bid)) == ends[k]
        in_k = [t for t in rows if t.get("in") == k]
        assert ends[k] <= bundle_max or len(in_k) == 1  # a tensor larger than the bound is a bundle alone
    return held


_spec = st.lists(st.tuples(st.sampled_from(sorted(KINDS)), st.integers(0, 1100)), min_size=1, max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_spec, changed=st.sets(st.integers(0, 24)), bundle_max=st.sampled_from([16, 64, 1 << 20]))
def test_any_mix_commits_checks_out_and_loads_exactly_with_bundles_as_specified(tmp_path_factory, spec, changed,
                                                                                bundle_max):
    """Tensors of every width, empty ones, and sizes on both sides of BUNDLE_TENSOR_MAX (up to 8,800 bytes),
    with bundles closed early (16 and 64 bytes) or not: the file checks out byte for byte, loads exactly, reads
    back as written, fsck passes; a second version changing some tensors keeps the id of every bundle whose
    tensors did not change, and both versions still check out."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundles, "BUNDLE_MAX", bundle_max)
        repo = make_repo(tmp_path_factory.mktemp("b") / "repo")
        first = _tensors(len(spec), spec)
        c1, path = _commit(repo, first)
        held1 = _check_layout(repo, c1.id, bundle_max, first)
        out = tmp_path_factory.mktemp("out")
        repo.checkout("HEAD", output=str(out))
        assert sha256_file(out / "model.safetensors") == sha256_file(path)
        loaded = repo.load(c1.id, framework="numpy")
        assert all(np.array_equal(loaded[k], v) for k, v in first.items())
        m = repo.read_manifest(c1.manifest)
        assert resolve_bundles(repo.store, Manifest.from_dict(json.loads(m.to_bytes()))) == m

        second = dict(first)
        for i in changed:
            name = f"t.{i:03d}"
            if name in second and second[name].size:
                second[name] = ~second[name] if second[name].dtype == bool else second[name] + 1
        moved = {f"t.{i:03d}" for i in changed} & {k for k, v in first.items() if v.size}
        if moved:
            c2, _ = _commit(repo, second, "some changed")
            held2 = _check_layout(repo, c2.id, bundle_max, second)
            for bid, names in held1.items():
                if not set(names) & moved:
                    assert held2.get(bid) == names  # same tensors, same bytes: the same bundle
            assert {n for bid, ns in held2.items() if bid not in held1 for n in ns} >= \
                {n for ns in held1.values() for n in ns} & moved
            out2 = tmp_path_factory.mktemp("out")
            repo.checkout(c2.id, output=str(out2))
            assert sha256_file(out2 / "model.safetensors") == sha256_file(path)
            repo.checkout(c1.id, output=str(out), force=True)
            loaded = repo.load(c1.id, framework="numpy")
            assert all(np.array_equal(loaded[k], v) for k, v in first.items())
        assert repo.fsck().ok


def test_a_changed_bundle_is_a_delta_on_the_parents(tmp_path):
    repo = make_repo(tmp_path / "repo")
    first = {f"b.{i:04d}": np.full(64, i, np.float32) for i in range(400)}  # 100 KiB: one loose bundle
    c1, _ = _commit(repo, first)
    second = {k: v + np.float32(1e-3) for k, v in first.items()}
    c2, _ = _commit(repo, second)
    (b1,) = _raw_manifest(repo, c1.id)["files"][0]["bundles"]
    (b2,) = _raw_manifest(repo, c2.id)["files"][0]["bundles"]
    assert b1 != b2 and repo.store.bases(b2) == [b1]
    loaded = repo.load(c2.id, framework="numpy")
    assert all(np.array_equal(loaded[k], v) for k, v in second.items())


def test_equal_bundles_in_one_file_are_listed_twice_and_read_back(tmp_path):
    repo = make_repo(tmp_path / "repo")
    tensors = {f"z.{i}": np.zeros(4, np.float32) for i in range(4)}  # 16 bytes each, 32 a bundle: two equal ones
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundles, "BUNDLE_MAX", 32)
        c, path = _commit(repo, tensors)
    ids = _raw_manifest(repo, c.id)["files"][0]["bundles"]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert [t["in"] for t in _rows(_raw_manifest(repo, c.id)["files"][0])] == [0, 0, 1, 1]
    repo.checkout("HEAD", output=str(tmp_path / "out"))
    assert sha256_file(tmp_path / "out" / "model.safetensors") == sha256_file(path)
    assert repo.fsck().ok


def _stored(repo, d: dict) -> str:
    return repo.store.put(canonical_json(d)).id


_names = st.text(st.characters(codec="utf-8"), max_size=90)  # NULs, non-BMP, past the 64 compared characters


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(_names, st.booleans(), st.lists(st.integers(1, 3), max_size=3)), min_size=1,
                     max_size=40, unique_by=lambda r: r[0]))
def test_small_table_round_trips_any_names_and_layout(rows):
    """The `small` table written for any tensor names (front-coded against each other, with NULs, characters
    past the BMP, names longer than the 64 characters compared, names that are prefixes of each other) and any
    interleaving with listed tensors reads back to the same tensors, in the same order, in the same slots."""
    from mlvc.objects import FileEntry, Slot, TensorEntry

    oid = "1" * 32
    tensors, ends = [], [0, 0]
    for name, bundled, shape in rows:
        nbytes = 4 * int(np.prod(shape))
        if bundled:
            k = len(tensors) % 2 if ends[0] else 0  # two bundles, used in order
            tensors.append(TensorEntry(name, "F32", shape, nbytes, oid, [oid], slot=Slot(f"{k}" * 32, ends[k], 0, k)))
            ends[k] += nbytes
        else:
            tensors.append(TensorEntry(name, "F32", shape, nbytes, oid, [oid]))
    tensors = [t if t.slot is None else TensorEntry(t.name, t.dtype, t.shape, t.nbytes, t.hash, t.chunks,
                                                    slot=t.slot._replace(length=ends[t.slot.place]))
               for t in tensors]
    entry = FileEntry("m", "safetensors", 1, oid, tensors=tensors, header=[oid])
    stored = json.loads(canonical_json(entry.to_dict()))
    back = FileEntry.from_dict(stored)
    assert back.pieces() == entry.pieces()  # from the table, before the tensors are built: the same slices
    assert back.bundle_lengths() == entry.bundle_lengths()
    assert [(t.name, t.shape, t.slot) for t in back.tensors] == [(t.name, t.shape, t.slot) for t in tensors]
    assert back.pieces() == entry.pieces()  # and from the built tensors
    assert [r["name"] for r in _rows(stored)] == [t.name for t in tensors]  # the spec's reading agrees


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["bundled", "bundled", "listed", "empty"]), st.integers(0, 2),
                               st.integers(1, 3)), min_size=1, max_size=40))
def test_small_table_pieces_are_the_slices_tensor_by_tensor(rows):
    """A table's pieces (SmallTable.pieces: a slice per stretch of rows in one run and one bundle) are the
    pieces of the same tensors built one by one (a slice per tensor, merged where two lie end to end in one
    bundle), for any order of bundles and listed tensors, empty listed tensors (no chunks) between rows
    included."""
    from mlvc.objects import FileEntry, Slot, TensorEntry

    oid = "1" * 32
    first_use: dict[int, int] = {}  # bundles numbered in order of first use, as the table requires
    tensors, ends = [], [0, 0, 0]
    for i, (kind, k, n) in enumerate(rows):
        if kind == "bundled":
            k = first_use.setdefault(k, len(first_use))
            tensors.append(TensorEntry(f"t{i}", "F32", [n], 4 * n, oid, [oid], slot=Slot(f"{k}" * 32, ends[k], 0, k)))
            ends[k] += 4 * n
        else:
            empty = kind == "empty"
            tensors.append(TensorEntry(f"t{i}", "F32", [0 if empty else n], 0 if empty else 4 * n, oid,
                                       [] if empty else [oid]))
    tensors = [t if t.slot is None else TensorEntry(t.name, t.dtype, t.shape, t.nbytes, t.hash, t.chunks,
                                                    slot=t.slot._replace(length=ends[t.slot.place]))
               for t in tensors]
    entry = FileEntry("m", "safetensors", 1, oid, tensors=tensors, header=[oid])
    back = FileEntry.from_dict(json.loads(canonical_json(entry.to_dict())))
    assert back.small_table() is not None or not first_use
    assert back.pieces() == entry.pieces()


def _three_tensors(repo):
    """A commit of three 8-byte tensors in three bundles (closed at 8 bytes), and its stored manifest."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundles, "BUNDLE_MAX", 8)
        c, _ = _commit(repo, {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32) * 2,
                              "c": np.ones(2, np.float32) * 3})
    return c, _raw_manifest(repo, c.id)


def _as_format_3(d: dict) -> dict:
    """The manifest as format 3 wrote it: each bundled tensor an entry of `tensors` with `in`."""
    files = [{**{k: v for k, v in f.items() if k != "small"}, "tensors": _rows(f)} for f in d["files"]]
    return {**d, "format": 3, "files": files}


def _refused_by_read_and_fsck(repo, c, d: dict) -> None:
    mid = _stored(repo, d)
    with pytest.raises(CorruptObjectError, match="malformed manifest|the manifest naming it is malformed"):
        repo.read_manifest(mid)
    # fsck, which reads manifests without their bundles, finds it too
    from mlvc.objects import Commit

    bad = Commit(mid, [c.id], "tester", c.time, "damaged", {})
    repo.write_commit(bad)
    repo.refs.set_if_equals("refs/heads/main", c.id, bad.id)
    problems = repo.fsck().problems
    assert [p.object_id for p in problems if p.problem == "corrupt"] == [mid]


def test_a_format_3_manifest_reads_as_its_format_4_form(tmp_path):
    repo = make_repo(tmp_path / "repo")
    c, d = _three_tensors(repo)
    three = repo.read_manifest(_stored(repo, _as_format_3(d)))
    assert three == repo.read_manifest(c.manifest)
    assert [t.slot for t in three.files[0].tensors] == [t.slot for t in repo.read_manifest(c.manifest).files[0].tensors]


@pytest.mark.parametrize("damage", ["in past the list", "in not an int", "chunks too", "hash too", "alias too",
                                    "nbytes too", "unused bundle", "bundle 1 first", "format 2", "short bundle",
                                    "empty tensor", "unknown dtype", "bundles in a blob", "in in format 4"])
def test_malformed_format_3_bundle_entries_are_refused(tmp_path, damage):
    repo = make_repo(tmp_path / "repo")
    c, d = _three_tensors(repo)
    d = _as_format_3(d)
    f = d["files"][0]
    t = f["tensors"][0]
    assert [x["in"] for x in f["tensors"]] == [0, 1, 2]
    if damage == "in past the list":
        t["in"] = 3
    elif damage == "in not an int":
        t["in"] = True
    elif damage == "chunks too":
        t["chunks"] = [f["bundles"][0]]
    elif damage == "hash too":
        t["hash"] = f["bundles"][0]
    elif damage == "alias too":
        t["alias"] = "b"
    elif damage == "nbytes too":
        t["nbytes"] = 8
    elif damage == "unused bundle":
        f["bundles"].append(f["header"][0])
    elif damage == "bundle 1 first":
        f["tensors"][0]["in"], f["tensors"][1]["in"] = 1, 0
    elif damage == "format 2":
        d["format"] = 2
    elif damage == "short bundle":
        t["shape"] = [1]  # 4 bytes of an 8-byte bundle
    elif damage == "empty tensor":
        t["shape"] = [0]
    elif damage == "unknown dtype":
        t["dtype"] = "F4"
    elif damage == "bundles in a blob":
        d["files"].append({"path": "x.bin", "kind": "blob", "size": 0, "hash": f["hash"], "chunks": [],
                           "bundles": [f["bundles"][0]]})
    elif damage == "in in format 4":
        d["format"] = 4
    _refused_by_read_and_fsck(repo, c, d)


def _damage_small(d: dict, damage: str) -> None:
    f = d["files"][0]
    table = f["small"]
    assert table == {"runs": [[0, 3]], "prefix": [0, 0, 0], "suffix": ["a", "b", "c"], "dtype": ["F32"] * 3,
                     "shape": [[2]] * 3, "in": [0, 1, 2]} and f["tensors"] == []
    edits = {
        "in past the list": ("in", [0, 1, 3]), "in not an int": ("in", [0, True, 2]), "in negative": ("in", [0, -1, 2]),
        "bundle 1 first": ("in", [1, 0, 2]), "unused bundle": ("in", [0, 1, 1]),
        "short bundle": ("shape", [[1], [2], [2]]), "empty tensor": ("shape", [[0], [2], [2]]),
        "dim a bool": ("shape", [[True, 2], [2], [2]]), "shape not a list": ("shape", [2, [2], [2]]),
        "too many dims": ("shape", [[1] * 65, [2], [2]]), "past 2**63": ("shape", [[1 << 32, 1 << 32], [2], [2]]),
        "unknown dtype": ("dtype", ["F4", "F32", "F32"]), "dtype not a string": ("dtype", [["F32"], "F32", "F32"]),
        "prefix past the name before": ("prefix", [0, 2, 0]), "prefix of the first": ("prefix", [1, 0, 0]),
        "prefix not an int": ("prefix", [0, 0.0, 0]), "suffix not a string": ("suffix", ["a", 2, "c"]),
        "a name twice": ("suffix", ["a", "a", "c"]), "a column short": ("in", [0, 1]), "no rows": None,
        "run past the tensors": ("runs", [[1, 3]]), "runs touching": ("runs", [[0, 1], [1, 2]]),
        "runs too few": ("runs", [[0, 2]]), "run of none": ("runs", [[0, 3], [4, 0]]),
        "run not a pair": ("runs", [[0, 3, 0]]), "runs not a list": ("runs", {"0": 3}),
    }
    if damage in edits and edits[damage] is not None:
        key, value = edits[damage]
        table[key] = value
    elif damage == "no rows":
        f["small"] = {k: [] for k in table}
    elif damage == "an extra key":
        table["names"] = ["a", "b", "c"]
    elif damage == "a key missing":
        del table["prefix"]
    elif damage == "small in format 3":
        d["format"] = 3
    elif damage == "small without bundles":
        del f["bundles"]
    elif damage == "small in a blob":
        d["files"].append({"path": "x.bin", "kind": "blob", "size": 0, "hash": f["hash"], "chunks": [],
                           "small": table})
    elif damage == "a listed name in small":
        f["tensors"] = [{"name": "b", "dtype": "F32", "shape": [0], "chunks": []}]
        table["runs"] = [[0, 3]]
    else:
        raise AssertionError(damage)


_SMALL_DAMAGES = ["in past the list", "in not an int", "in negative", "bundle 1 first", "unused bundle",
                  "short bundle", "empty tensor", "dim a bool", "shape not a list", "too many dims", "past 2**63",
                  "unknown dtype", "dtype not a string", "prefix past the name before", "prefix of the first",
                  "prefix not an int", "suffix not a string", "a name twice", "a column short", "no rows",
                  "run past the tensors", "runs touching", "runs too few", "run of none", "run not a pair",
                  "runs not a list", "an extra key", "a key missing", "small in format 3", "small without bundles",
                  "small in a blob", "a listed name in small"]


@pytest.mark.parametrize("damage", _SMALL_DAMAGES)
def test_malformed_small_tables_are_refused(tmp_path, damage):
    """Every way a format-4 `small` table can differ from what mlvc writes is refused on read (not when its
    tensors are first used) and reported by fsck."""
    repo = make_repo(tmp_path / "repo")
    c, d = _three_tensors(repo)
    _damage_small(d, damage)
    _refused_by_read_and_fsck(repo, c, d)


def test_a_repository_from_before_bundles_reads_and_commits_on(tmp_path):
    """Format-2 manifests (each small tensor an object of its own) read as before; the next commit writes
    bundles, and diff, checkout, gc and fsck work across the two."""
    repo = make_repo(tmp_path / "repo")
    first = _tensors(1, [("F32", 3)] * 30 + [("F32", 5000)])
    with pytest.MonkeyPatch.context() as mp:  # as an mlvc before bundles wrote it
        mp.setattr(chunking, "BUNDLE_TENSOR_MAX", 0)
        mp.setattr(bundles, "BUNDLE_TENSOR_MAX", 0)
        c1, path = _commit(repo, first)
    old = _raw_manifest(repo, c1.id)
    assert old["format"] == 2 and "bundles" not in old["files"][0]
    assert all(repo.store.has(t["chunks"][0]) for t in old["files"][0]["tensors"])
    second = dict(first, **{"t.000": first["t.000"] + 1, "t.007": first["t.007"] * 2})
    c2, _ = _commit(repo, second)
    new = _raw_manifest(repo, c2.id)
    assert new["format"] == 4 and len(new["files"][0]["bundles"]) == 1
    d = repo.diff(c1.id, c2.id)
    assert sorted(t.name for t in d.changed) == ["t.000", "t.007"]
    for cid, tensors in ((c1.id, first), (c2.id, second)):
        loaded = repo.load(cid, framework="numpy")
        assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())
    r = repo.gc(prune="now")
    assert r.objects_missing == 0
    assert repo.fsck().ok
    repo.checkout(c1.id, output=str(tmp_path / "old"))
    write_safetensors_np(str(tmp_path / "want.safetensors"), first)
    assert sha256_file(tmp_path / "old" / "model.safetensors") == sha256_file(tmp_path / "want.safetensors")


def _swept_side_commit(repo, tensors) -> str:
    """Commit `tensors` on a branch, delete the branch and its reflogs, gc now: the id of its (swept) bundle."""
    repo.create_branch("side")
    repo.switch("side")
    c, _ = _commit(repo, tensors, "side")
    repo.read_manifest(c.manifest)  # the store learns the tree's small tensors as slices (as a diff or load would)
    (gone,) = _raw_manifest(repo, c.id)["files"][0]["bundles"]
    repo.switch("main", force=True)
    repo.delete_branch("side")
    for log in ("logs/HEAD", "logs/refs/heads/main"):
        os.remove(os.path.join(repo.dir, log))
    repo.gc(prune="now")
    assert not repo.store.has(gone)
    return gone


def test_gc_keeps_the_bundles_of_reachable_commits_and_sweeps_the_others(tmp_path):
    repo = make_repo(tmp_path / "repo")
    first = {f"s.{i}": np.full(3, i, np.float32) for i in range(50)}
    c1, _ = _commit(repo, first)
    _swept_side_commit(repo, {k: v + 1 for k, v in first.items()})
    (kept,) = _raw_manifest(repo, c1.id)["files"][0]["bundles"]
    assert repo.store.has(kept) and repo.fsck().ok
    loaded = repo.load(c1.id, framework="numpy")
    assert all(np.array_equal(loaded[k], v) for k, v in first.items())


def test_a_missing_bundle_fails_the_read_of_its_tensors_by_name(tmp_path):
    repo = make_repo(tmp_path / "repo")
    c, _ = _commit(repo, {"a": np.ones(3, np.float32), "big": np.ones(5000, np.float32)})
    (bid,) = _raw_manifest(repo, c.id)["files"][0]["bundles"]
    repo.store.delete(bid)
    fresh = type(repo)(repo.root)
    m = fresh.read_manifest(c.manifest)  # a partial fetch leaves such bundles out: the manifest still reads
    assert m.files[0].tensors[0].hash == hash_bytes(f"absent {bid} 0".encode())
    assert np.array_equal(fresh.load(c.id, tensors=["big"], framework="numpy")["big"], np.ones(5000, np.float32))
    with pytest.raises(ObjectNotFoundError) as e:
        fresh.load(c.id, tensors=["a"], framework="numpy")
    assert bid in str(e.value)
    assert not fresh.fsck().ok


def test_a_small_tensor_an_alias_names_is_an_object_of_its_own(tmp_path, torch):
    """torch files: tied small tensors are not bundled (an alias repeats its target's chunks), the others are."""
    repo = make_repo(tmp_path / "repo")
    shared = torch.arange(6, dtype=torch.float32)
    sd = {"emb": shared, "tied": shared.view(6), "bias": torch.ones(4), "scale": torch.full((3,), 2.0)}
    path = tmp_path / "repo" / "model.pt"
    torch.save(sd, path)
    c = repo.commit(str(path), message="pt").commit
    entry = repo.read_manifest(c.manifest).files[0]
    by_name = {t.name: t for t in entry.tensors}
    assert by_name["emb"].slot is None and by_name["tied"].alias == "emb"
    assert repo.store.has(by_name["emb"].chunks[0])
    assert by_name["bias"].slot is not None and by_name["scale"].slot is not None
    repo.checkout("HEAD", output=str(tmp_path / "out"))
    assert sha256_file(tmp_path / "out" / "model.pt") == sha256_file(path)
    assert repo.fsck().ok


def test_diff_reads_the_bundles_it_needs_and_pairs_moved_small_tensors(tmp_path):
    """diff reads small tensors' hashes only for files that differ (mlvc/ops/diff.py _resolve_differing): an
    unchanged file's tensors are unchanged, a changed one's compared, and a file renamed with its small
    tensors is paired by content (moved), which needs their hashes."""
    from mlvc.ops.diff import CHANGED, MOVED, UNCHANGED

    repo = make_repo(tmp_path / "repo")
    model = tmp_path / "repo" / "model"
    model.mkdir()
    a = {f"a{i}": np.full(3, i, np.float32) for i in range(5)}
    b = {f"b{i}": np.full(2, -i, np.float32) for i in range(5)}
    same = {f"s{i}": np.full(4, 7 * i, np.float32) for i in range(5)}
    for name, tensors in (("a", a), ("b", b), ("same", same)):
        write_safetensors_np(str(model / f"{name}.safetensors"), tensors)
    repo.commit(str(model), message="one")
    write_safetensors_np(str(model / "a.safetensors"), dict(a, a2=a["a2"] * 3))
    os.rename(model / "b.safetensors", model / "c.safetensors")
    repo.commit(str(model), message="two")
    d = repo.diff("HEAD~1", "HEAD")
    status = {t.name: t.status for t in d.tensors}
    assert status == {**{f"a{i}": UNCHANGED for i in range(5)}, "a2": CHANGED,
                      **{f"b{i}": MOVED for i in range(5)}, **{f"s{i}": UNCHANGED for i in range(5)}}
    (a2,) = [t for t in d.tensors if t.name == "a2"]
    assert a2.changed == 3 and a2.max_abs == pytest.approx(4.0)


def test_diff_of_the_same_file_read_with_and_without_hashes(tmp_path):
    """A working file snapshot again after a touch (its tensors hashed) against HEAD read without its bundles,
    and a tree from before bundles against the same file bundled: every tensor unchanged, no error."""
    from mlvc.ops.diff import UNCHANGED

    repo = make_repo(tmp_path / "repo")
    tensors = {"n": np.array(7, np.int64), "s": np.ones(1, np.float32), "v": np.arange(4, dtype=np.float32),
               "big": np.ones(2000, np.float32)}
    with pytest.MonkeyPatch.context() as mp:  # the first commit as an mlvc before bundles wrote it
        mp.setattr(chunking, "BUNDLE_TENSOR_MAX", 0)
        mp.setattr(bundles, "BUNDLE_TENSOR_MAX", 0)
        c1, path = _commit(repo, tensors)
    c2 = repo.commit(path, message="same bytes, bundled", allow_empty=True).commit
    assert _raw_manifest(repo, c2.id)["format"] == 4 and _raw_manifest(repo, c1.id)["format"] == 2
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # the same bytes, another stat
    for a, b in ((c1.id, c2.id), (c2.id, c1.id), ("HEAD", None), (c1.id, None)):
        d = repo.diff(a, b)
        assert {t.name: (t.status, t.changed) for t in d.tensors} == {n: (UNCHANGED, 0) for n in tensors}, (a, b)


def test_a_tensor_committed_again_after_gc_removed_its_old_bundle(tmp_path):
    """The store forgets nothing it needs: bytes seen as a slice of a bundle that gc has since removed are held
    anew when committed again (ObjectStore.hold), so the commit stores them instead of failing."""
    repo = make_repo(tmp_path / "repo")
    x = {"a": np.ones(3, np.float32), "b": np.arange(4, dtype=np.float32)}
    y = {k: v * 5 for k, v in x.items()}
    _commit(repo, x)
    gone = _swept_side_commit(repo, y)
    assert gone in {w[0] for w in repo.store._slices.values()}  # y's bytes are still known as slices of it
    c3, _ = _commit(repo, y, "y again")  # the same Repo: its store saw y's bytes as slices of `gone`
    assert repo.fsck().ok
    loaded = repo.load(c3.id, framework="numpy")
    assert all(np.array_equal(loaded[k], v) for k, v in y.items())


def test_committing_in_a_loop_keeps_the_stores_map_of_small_tensors_bounded(tmp_path):
    """Repo.write_manifest leaves the store knowing the small tensors of the tree it wrote and of its base only
    (ObjectStore.retain_slices), so a script committing every N steps does not grow with every tree; older trees
    read back as before."""
    repo = make_repo(tmp_path / "repo")
    versions = []
    for step in range(6):
        tensors = {f"w{i}": np.full(3, step * 100 + i, np.float32) for i in range(40)}
        c, _ = _commit(repo, tensors, f"step {step}")
        versions.append((c.id, tensors))
        assert len(repo.store._slices) + len(repo.store._held) <= 2 * 40
    for cid, tensors in versions:
        loaded = repo.load(cid, framework="numpy")
        assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())


def test_a_small_tensor_of_an_unknown_dtype_is_an_object_of_its_own(tmp_path):
    """A dtype outside the table (its size unknown, so no offset could be implied) is held at ingest like any
    small tensor, left out of bundles, and stored as an object of its own when the manifest is written."""
    import struct

    header = {"x": {"dtype": "F4", "shape": [6], "data_offsets": [0, 3]},
              "y": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
              "z": {"dtype": "F4", "shape": [2], "data_offsets": [11, 12]},
              "w": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    ids = []
    for columns in (False, True):  # as entries, and from the snapshot's columns: the same tree
        with pytest.MonkeyPatch.context() as mp:
            if not columns:
                mp.setattr(bundles, "_bundle_held", lambda *args: None)
            repo = make_repo(tmp_path / f"repo{columns}")
            path = tmp_path / f"repo{columns}" / "m.safetensors"
            path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(range(16)))
            c = repo.commit(str(path), message="unknown dtype").commit
            ids.append(c.manifest)
    assert ids[0] == ids[1]
    stored = _rows(_raw_manifest(repo, c.id)["files"][0])
    assert ["in" in t for t in stored] == [False, True, False, True]
    x = repo.read_manifest(c.manifest).files[0].tensors[0]
    assert repo.store.has(x.chunks[0]) and bytes(repo.store.get(x.chunks[0])) == bytes(range(3))
    repo.checkout("HEAD", output=str(tmp_path / "out"))
    assert sha256_file(tmp_path / "out" / "m.safetensors") == sha256_file(path)
    assert repo.fsck().ok


def test_checkout_reads_no_tensor_hash_and_writes_safetensors_and_torch_files_exactly(tmp_path, monkeypatch):
    """Checkout (to a folder, in place, a switch) compares files by their hashes and writes bundled tensors as
    slices of their bundles: it never reads a bundled tensor's hash (bundles.resolve_file), for a safetensors
    file and for a torch file whose layout names bundled tensors; a bundle shorter than its tensors fails."""
    torch = pytest.importorskip("torch")
    repo = make_repo(tmp_path / "repo")
    st_tensors = _tensors(3, [("F32", 3), ("F32", 5000), ("I64", 2), ("F16", 7)])
    write_safetensors_np(os.path.join(repo.root, "m.safetensors"), st_tensors)
    pt = os.path.join(repo.root, "m.pt")
    torch.save({"w": torch.ones(3000), "b": torch.arange(5.0), "s": torch.tensor(7), "h": torch.ones(3).half()}, pt)
    c1 = repo.commit(repo.root, message="one").commit
    want = {n: sha256_file(os.path.join(repo.root, n)) for n in ("m.safetensors", "m.pt")}
    repo.create_branch("two")
    repo.switch("two")
    torch.save({"w": torch.zeros(3000), "b": torch.arange(5.0) + 1, "s": torch.tensor(8), "h": torch.ones(3).half()},
               pt)
    repo.commit(repo.root, message="two")

    def unresolved(oid: str, resolve: bool = True):
        assert not resolve, "checkout read the bundled tensors' hashes"
        return Repo.read_manifest(repo, oid, resolve=False)

    def never(*args):
        raise AssertionError("checkout read a bundle to hash its tensors")

    from mlvc.ops import status

    monkeypatch.setattr(repo, "read_manifest", unresolved)
    monkeypatch.setattr(bundles, "resolve_file", never)
    monkeypatch.setattr(bundles, "_slice_hashes", never)
    monkeypatch.setattr(status, "tensor_hashes", never)
    repo.checkout(c1.id, output=str(tmp_path / "out"))
    assert {n: sha256_file(tmp_path / "out" / n) for n in want} == want
    repo.switch("main")
    assert {n: sha256_file(os.path.join(repo.root, n)) for n in want} == want
    monkeypatch.undo()
    # a bundle that does not hold its tensors' bytes: the torch file's rebuild stops, naming it
    entry = repo.read_manifest(c1.manifest, resolve=False).file("m.pt")
    (bid,) = {t.slot.bundle for t in entry.tensors if t.name == "b"}
    short = bytes(repo.store.get(bid))[:-1]
    monkeypatch.setattr(repo.store, "get", lambda oid, keep=False, _get=repo.store.get: short if oid == bid
                        else _get(oid, keep=keep))
    with pytest.raises(CorruptObjectError, match=bid):
        repo.checkout(c1.id, output=str(tmp_path / "out2"))


def test_a_file_entry_read_from_its_table_builds_its_tensors_once_and_follows_assignment():
    """The entry read from a `small` table builds its tensors on first use: threads that race to it get one
    list; a pickled copy (the Tracker's worker) builds the same; once `tensors` is assigned, what the entry
    reports (pieces, object ids, bundle lengths) comes from the assigned list, not from the table."""
    import pickle
    import threading

    from mlvc.objects import FileEntry, Slot, TensorEntry

    oid, bid = "1" * 32, "2" * 32
    big = TensorEntry("w", "F32", [2000], 8000, oid, [oid])
    small = [TensorEntry(f"s{i}", "F32", [2], 8, oid, [oid], slot=Slot(bid, 8 * i, 80, 0)) for i in range(10)]
    stored = json.loads(canonical_json(FileEntry("m", "safetensors", 1, oid, tensors=[big, *small],
                                                 header=[oid]).to_dict()))
    entry = FileEntry.from_dict(stored)
    assert "tensors" not in vars(entry) and entry.object_ids() == [oid, oid, bid]
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(entry.tensors)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(g is got[0] for g in got) and [t.name for t in got[0]] == ["w"] + [f"s{i}" for i in
                                                                                                     range(10)]
    again = pickle.loads(pickle.dumps(FileEntry.from_dict(stored)))
    assert again == entry and again.pieces() == entry.pieces() == [oid, (bid, 0, 80)]
    other = FileEntry.from_dict(stored)
    other.tensors = [big]
    assert other.pieces() == [oid] and other.object_ids() == [oid, oid] and other.bundle_lengths() == []
    with pytest.raises(AttributeError):
        _ = other.missing


@pytest.mark.parametrize("bad", ["a gap", "an overlap", "bundle 1 first", "two ids at one place", "short of the length",
                                 "past the length", "two lengths"])
def test_slots_a_reader_could_not_place_are_refused_when_written(bad):
    """The stored form has no offsets: slots that do not lie end to end, in bundles numbered in order of first
    use, filling each, would read back as other bytes, so writing them is refused."""
    from mlvc.objects import FileEntry, Malformed, Slot, TensorEntry

    oid, b0, b1 = "1" * 32, "2" * 32, "3" * 32
    slots = {"ok": [Slot(b0, 0, 8, 0), Slot(b0, 4, 8, 0), Slot(b1, 0, 4, 1)],
             "a gap": [Slot(b0, 0, 8, 0), Slot(b0, 5, 8, 0), Slot(b1, 0, 4, 1)],
             "an overlap": [Slot(b0, 0, 8, 0), Slot(b0, 3, 8, 0), Slot(b1, 0, 4, 1)],
             "bundle 1 first": [Slot(b0, 0, 8, 1), Slot(b0, 4, 8, 1), Slot(b1, 0, 4, 0)],
             "two ids at one place": [Slot(b0, 0, 8, 0), Slot(b1, 4, 8, 0), Slot(b1, 0, 4, 1)],
             "short of the length": [Slot(b0, 0, 12, 0), Slot(b0, 4, 12, 0), Slot(b1, 0, 4, 1)],
             "past the length": [Slot(b0, 0, 6, 0), Slot(b0, 4, 6, 0), Slot(b1, 0, 4, 1)],
             "two lengths": [Slot(b0, 0, 8, 0), Slot(b0, 4, 9, 0), Slot(b1, 0, 4, 1)]}

    def entry(which):
        return FileEntry("m", "safetensors", 1, oid, header=[oid], tensors=[
            TensorEntry(f"t{i}", "F32", [1], 4, oid, [oid], slot=slot) for i, slot in enumerate(slots[which])])

    assert entry("ok").to_dict()["bundles"] == [b0, b1]
    with pytest.raises(Malformed):
        entry(bad).to_dict()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_spec, run_max=st.sampled_from([8, 64, 1 << 20]), bundle_max=st.sampled_from([16, 1 << 20]),
       changed=st.sets(st.integers(0, 24)))
def test_runs_and_columns_give_the_tree_tensor_by_tensor_ingest_and_entries_give(tmp_path_factory, spec, run_max,
                                                                                 bundle_max, changed):
    """A safetensors file's small tensors read as runs (snapshot._small_runs, Pipeline.ingest with cuts) or read
    one segment each, and bundled from the snapshot's columns (bundles._bundle_held) or as entries, make the
    same trees (the same manifest ids, a first commit and one that changes some tensors over it), the same
    counts, and the same file hash, whatever the mix of widths, empty tensors, large tensors, run and bundle
    bounds."""
    from mlvc import snapshot

    first = _tensors(len(spec), spec)
    second = {k: (~v if v.dtype == np.bool_ else v + 1) if i in changed else v
              for i, (k, v) in enumerate(first.items())}
    results = []
    for runs, columns in ((True, True), (False, True), (True, False)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(snapshot, "RUN_MAX", run_max)
            mp.setattr(bundles, "BUNDLE_MAX", bundle_max)
            if not runs:
                mp.setattr(snapshot, "_small_runs", lambda pipe, sizes, dtypes: {})
            if not columns:
                mp.setattr(bundles, "_bundle_held", lambda *args: None)
            repo = make_repo(tmp_path_factory.mktemp("runs") / "repo")
            path = os.path.join(repo.root, "model.safetensors")
            got = []
            for tensors in (first, second):
                write_safetensors_np(path, tensors)
                done = repo.commit(path, message="m", allow_empty=True)
                r = repo.read_manifest(done.commit.manifest)
                got.append((done.commit.manifest, [(t.name, t.hash) for t in r.files[0].tensors], r.files[0].hash,
                            done.tensors, done.chunks, done.new_chunks, done.raw_bytes, done.new_bytes))
            results.append(got)
    assert results[0] == results[1] == results[2]
    assert results[0][0][3] == len(first)


def test_status_takes_the_commits_header_a_commit_parses_its_own(tmp_path):
    """`status` of a changed file whose header is the commit's, byte for byte, takes the commit's columns (the
    header is not parsed); another header, or the same header cut into other chunks, is parsed; a file with the
    commit's header but more or fewer data bytes is unreadable for the parse's reason. A commit always parses its
    file's header: a tree whose entry disagrees with its header (names swapped by a faulty tool) is not carried
    into the next commit."""
    from mlvc import snapshot
    from mlvc.errors import FormatError
    from mlvc.formats import safetensors as st_format

    repo = make_repo(tmp_path / "repo")
    tensors = {f"n.{i:03d}": np.full(i % 4 + 1, i, np.float32) for i in range(200)}
    tensors.update(big=np.ones(3000, np.float32), odd=np.arange(3, dtype=np.int64))
    c1, path = _commit(repo, tensors)
    parsed = []
    real = st_format.read_layout
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snapshot.st, "read_layout", lambda f, rel: parsed.append(rel) or real(f, rel))
        second = {k: v * 2 for k, v in tensors.items()}
        write_safetensors_np(path, second)
        assert len(repo.status().files[0].tensors_changed) == len(tensors) - 1  # n.000 is 0 * 2
        assert parsed == []
        renamed = {("m" + k[1:] if k == "n.007" else k): v for k, v in second.items()}
        write_safetensors_np(path, renamed)
        f = repo.status().files[0]
        assert (f.tensors_added, f.tensors_removed) == (["m.007"], ["n.007"]) and parsed == ["model.safetensors"]
        retyped = dict(tensors, **{"n.005": tensors["n.005"].view(np.int32), "n.009": tensors["n.009"].reshape(1, 2)})
        write_safetensors_np(path, retyped)  # the same bytes as committed, another dtype or shape: changed
        assert repo.status().files[0].tensors_changed == ["n.005", "n.009"]
        write_safetensors_np(path, second)
        with open(path, "rb") as fh:
            whole = fh.read()
        for cut in (whole[:-4], whole + b"\0" * 4):
            with open(path, "wb") as fh:
                fh.write(cut)
            with open(path, "rb") as fh, pytest.raises(FormatError) as want:
                real(fh, "model.safetensors")
            (got,) = repo.status().files  # listed as changed, with the parse's reason (docs/tracking.md)
            assert (got.state, got.unreadable) == ("modified", want.value.reason)
        write_safetensors_np(path, second)
        parsed.clear()
        repo.commit(path, message="same header")
        assert parsed == ["model.safetensors"]
    # a tree whose entry swaps two tensors' names (the header says otherwise), then the same header again
    repo2 = make_repo(tmp_path / "repo2")
    c1, path2 = _commit(repo2, {"a": np.zeros(2000, np.float32), "b": np.ones(2000, np.float32)})
    m = repo2.read_manifest(repo2.read_commit(c1.id).manifest)
    (entry,) = m.files
    entry.tensors[0].name, entry.tensors[1].name = "b", "a"
    from mlvc.objects import Commit
    bad = repo2.write_commit(Commit(repo2.write_manifest(m), [c1.id], "t", c1.time, "swapped"))
    repo2.refs.set_if_equals("refs/heads/main", c1.id, bad, who="t", message="swapped")
    write_safetensors_np(path2, {"a": np.full(2000, 5, np.float32), "b": np.full(2000, 6, np.float32)})
    c3 = repo2.commit(path2, message="next").commit
    loaded = repo2.load(c3.id, framework="numpy")
    assert (loaded["a"][0], loaded["b"][0]) == (5, 6)


def test_held_columns_bundle_as_the_entries_do_or_hand_over(tmp_path):
    """store_bundles of a file whose held tensors are columns (objects.HeldTable) writes the manifest that the
    same tensors as entries give; with a listed tensor that could be bundled too (the snapshot lists none such),
    or a row that could not, it bundles the file's tensors as entries instead, with the same result."""
    from mlvc.objects import FileEntry, HeldTable, TensorEntry
    from mlvc.store import MemoryObjectStore

    store = MemoryObjectStore()
    rng = np.random.default_rng(0)
    spec = [("F32", 3), ("F32", 2000), ("I64", 1), ("F32", 5), ("F16", 3), ("U8", 0), ("F32", 1)]
    tensors = []
    for i, (dtype, n) in enumerate(spec):  # as a snapshot leaves them: small ones held, others stored
        raw = rng.integers(0, 255, n * {"F32": 4, "I64": 8, "F16": 2, "U8": 1}[dtype], dtype=np.uint8).tobytes()
        oid = hash_bytes(raw)
        if 0 < len(raw) <= BUNDLE_TENSOR_MAX:
            store.hold(oid, raw)
        elif raw:
            store.put(raw)
        tensors.append(TensorEntry(f"t{i}", dtype, [n], len(raw), oid, [oid] if raw else []))

    def as_held(rows: list[int]) -> FileEntry:
        listed = [t for i, t in enumerate(tensors) if i not in rows]
        small = [tensors[i] for i in rows]
        table = HeldTable(objects.runs_of(rows), [t.name for t in small], [t.dtype for t in small],
                          [t.shape for t in small], [t.nbytes for t in small], listed, [t.hash for t in small])
        return FileEntry("m.safetensors", "safetensors", 1, "0" * 32, header=["1" * 32]).adopt(table)

    def written(entry: FileEntry) -> bytes:
        return bundles.store_bundles(store, Manifest(["m.safetensors"], [entry], 2 << 20)).to_bytes()

    want = written(FileEntry("m.safetensors", "safetensors", 1, "0" * 32, tensors=list(tensors), header=["1" * 32]))
    calls = []
    real = bundles._bundle_held
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundles, "_bundle_held", lambda *args: calls.append(real(*args)) or calls[-1])
        assert written(as_held([0, 2, 3, 4, 6])) == want  # every bundled tensor a row: bundled as columns
        assert written(as_held([0, 2, 4])) == want  # t3 and t6 listed, yet bundled: handed over
        assert written(as_held([0, 1, 2, 3, 4, 6])) == want  # t1 (8000 bytes) a row it cannot bundle: handed over
    assert [c is not None for c in calls] == [True, False, False]


def test_a_commit_of_small_tensors_builds_no_entry_for_them(tmp_path, monkeypatch):
    """A safetensors file's small tensors go from the snapshot's columns to the manifest's `small` table: the commit
    (first, and over a parent) builds no tensor entry of either table, and counts its tensors from them."""
    repo = make_repo(tmp_path / "repo")
    tensors = {f"n.{i:03d}": np.full(i % 5 + 1, i, np.float32) for i in range(300)}
    tensors["big"] = np.ones(3000, np.float32)

    def never(self):
        raise AssertionError("a commit built an entry per small tensor")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects.HeldTable, "_entries", never)
        mp.setattr(objects.SmallTable, "_entries", never)
        c1, path = _commit(repo, tensors)
        write_safetensors_np(path, {k: v + 1 for k, v in tensors.items()})
        done = repo.commit(path, message="two")
    assert done.tensors == 301 and len(_raw_manifest(repo, done.commit.id)["files"][0]["small"]["in"]) == 300
    for cid, want in ((c1.id, tensors), (done.commit.id, {k: v + 1 for k, v in tensors.items()})):
        loaded = repo.load(cid, framework="numpy")
        assert all(np.array_equal(loaded[k], v) for k, v in want.items())
    assert repo.fsck().ok


def test_small_runs_split_where_the_rule_says(tmp_path):
    """Runs are two or more small tensors end to end, at most RUN_MAX bytes; a tensor too large, an empty one or
    one of 4 KiB + 1 ends a run, and a tensor of an unknown dtype is small (width 1) like any other; without a
    store (`status`) the runs are the same."""
    from mlvc import snapshot
    from mlvc.chunking import Pipeline
    from mlvc.store import MemoryObjectStore

    pipe = Pipeline(MemoryObjectStore(), 2 << 20)
    dtypes, sizes = map(list, zip(("F32", 4), ("F32", 8), ("F4", 3), ("F32", 4097), ("F32", 4), ("U8", 0),
                                  ("I64", 16), ("I64", 8), ("F16", 2), ("F32", 4096), ("F32", 4), strict=True))
    assert snapshot._small_runs(pipe, sizes, dtypes) == {0: [4, 8, 3], 6: [16, 8, 2, 4096, 4]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snapshot, "RUN_MAX", 16)
        assert snapshot._small_runs(pipe, sizes, dtypes) == {0: [4, 8, 3], 7: [8, 2]}
    no_store = Pipeline(None, 2 << 20)  # `status`: the same runs, hashed, not held
    assert snapshot._small_runs(no_store, sizes, dtypes) == {0: [4, 8, 3], 6: [16, 8, 2, 4096, 4]}


def _small_runs_one_by_one(limits: dict[str, int], sizes: list[int], dtypes: list[str], run_max: int) -> dict:
    """snapshot._small_runs' rule, tensor by tensor: a run ends before a tensor not held or past run_max."""
    runs: dict[int, list[int]] = {}
    cuts: list[int] = []
    start = total = 0
    for i, (n, dtype) in enumerate(zip(sizes, dtypes, strict=True)):
        held = 0 < n <= limits[dtype]
        if cuts and (not held or total + n > run_max):
            if len(cuts) > 1:
                runs[start] = cuts
            cuts, total = [], 0
        if held:
            start = i if not cuts else start
            cuts.append(n)
            total += n
    if len(cuts) > 1:
        runs[start] = cuts
    return runs


def _groups_one_by_one(sizes: list[int], widths: list[int], bundle_max: int) -> list[list[int]]:
    """bundles._groups' rule, tensor by tensor: the open bundle of a tensor's width takes it unless it would pass
    bundle_max; bundles in order of their first tensor."""
    groups: list[list[int]] = []
    open_: dict[int, tuple[list[int], int]] = {}
    for i, (n, width) in enumerate(zip(sizes, widths, strict=True)):
        if width:
            group, total = open_.get(width, (None, 0))
            if group is None or total + n > bundle_max:
                group, total = [], 0
                groups.append(group)
            group.append(i)
            open_[width] = (group, total + n)
    return groups


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["F32", "I64", "F16", "U8", "X9"]),
                               st.one_of(st.sampled_from([0, 1, 2, 4, 8]), st.integers(0, 5000)),
                               st.sampled_from([0, 1, 2, 4, 8])), max_size=60),
       run_max=st.sampled_from([1, 8, 16, 64, 4096, 1 << 20]))
def test_small_runs_and_bundle_groups_follow_their_rule_tensor_by_tensor(rows, run_max):
    """The run rule (snapshot._small_runs) and the numpy form of the bundle rule (bundles._groups) give what the
    rules give applied one tensor at a time, for any sizes (empty, filling a bound exactly, past every bound),
    dtypes and bounds."""
    from mlvc import snapshot
    from mlvc.chunking import Pipeline
    from mlvc.dtypes import plane_width
    from mlvc.store import MemoryObjectStore

    dtypes = [d for d, _, _ in rows]
    sizes = [n for _, n, _ in rows]
    widths = [w for _, _, w in rows]
    pipe = Pipeline(MemoryObjectStore(), 2 << 20)
    limits = {d: pipe.hold_limit(plane_width(d)) for d in dtypes}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snapshot, "RUN_MAX", run_max)
        mp.setattr(bundles, "BUNDLE_MAX", run_max)
        assert snapshot._small_runs(pipe, sizes, dtypes) == _small_runs_one_by_one(limits, sizes, dtypes, run_max)
        assert bundles._groups(sizes, widths) == _groups_one_by_one(sizes, widths, run_max)
    positions = sorted({i * 3 // 2 for i in range(len(rows))} | {n for n in sizes if n < 100})
    runs = objects.runs_of(positions)
    assert [i for p, c in runs for i in range(p, p + c)] == positions  # every position, in order, once
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(runs))  # stretches neither touch nor overlap


def test_commit_reads_its_parent_without_hashes_and_still_sees_an_unchanged_tree_and_carries_files(tmp_path):
    """A commit reads its parent's tree without its small tensors' hashes: the same checkpoint over a parent of
    format 3 (the same tree, another id) is still "nothing to commit"; a changed file's bundles are deltas on
    the format-3 parent's; a file carried over unchanged (another path named) keeps its bundles and reads back."""
    from mlvc.errors import NothingToCommitError
    from mlvc.objects import Commit

    repo = make_repo(tmp_path / "repo")
    first = {f"b.{i:04d}": np.full(64, i, np.float32) for i in range(400)}  # one loose bundle
    c, path = _commit(repo, first)
    other = os.path.join(repo.root, "other.safetensors")
    write_safetensors_np(other, _tensors(9, [("F32", 3)] * 5 + [("I64", 2)] * 3))
    c = repo.commit(other, message="other").commit
    three = Commit(_stored(repo, _as_format_3(_raw_manifest(repo, c.id))), [c.id], "tester", c.time, "format 3", {})
    repo.write_commit(three)
    repo.refs.set_if_equals("refs/heads/main", c.id, three.id)
    with pytest.raises(NothingToCommitError):
        repo.commit(paths=[path, other], message="same")
    second = {k: v + np.float32(1e-3) for k, v in first.items()}
    c2, _ = _commit(repo, second)  # names model.safetensors only: other.safetensors is carried
    (b1,) = _raw_manifest(repo, c.id)["files"][0]["bundles"]
    (b2,) = _raw_manifest(repo, c2.id)["files"][0]["bundles"]
    assert repo.store.bases(b2) == [b1]
    assert _raw_manifest(repo, c2.id)["files"][1] == _raw_manifest(repo, c.id)["files"][1]  # carried as it was
    out = tmp_path / "out"
    repo.checkout(c2.id, output=str(out))
    assert sha256_file(out / "other.safetensors") == sha256_file(other)
    assert sha256_file(out / "model.safetensors") == sha256_file(path)
    assert repo.fsck().ok


def test_show_counts_a_files_tensors_without_building_them(tmp_path, monkeypatch):
    """`show` lists each file's tensor count from its small table; a tree read without its tensors built gives
    the store no small tensor ids to keep (none was resolved)."""
    from mlvc.bundles import small_tensor_ids

    repo = make_repo(tmp_path / "repo")
    c, _ = _commit(repo, _tensors(5, [("F32", 3)] * 40 + [("F32", 5000)] + [("I64", 1)] * 3))
    built = []
    real = objects.SmallTable.tensors
    monkeypatch.setattr(objects.SmallTable, "tensors", lambda self: built.append(1) or real(self))
    shown = repo.show("HEAD").to_json()
    assert [f["tensors"] for f in shown["files"]] == [44] and not built
    m = repo.read_manifest(c.manifest, resolve=False)
    assert m.files[0].tensor_count() == 44 and small_tensor_ids(m) == set() and not built
    assert len(m.files[0].tensors) == 44 and built == [1]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_spec, changed=st.sets(st.integers(0, 24)), dropped=st.sets(st.integers(0, 24)),
       added=st.integers(0, 3))
def test_status_of_a_changed_file_of_small_tensors_names_what_changed_without_entries(tmp_path_factory, spec,
                                                                                    changed, dropped, added):
    """`status` of a changed file compares its tensors as columns on both sides (the commit's table read without
    hashes, the working file's small tensors read in runs, its header taken from the commit when unchanged):
    it names exactly the tensors changed, added and removed, builds no entry per small tensor, and parses the
    working file's header only when it is not the commit's."""
    first = _tensors(len(spec), spec)
    names = list(first)
    second = {k: (~v if v.dtype == np.bool_ else v + 1) if i in changed and v.size else v
              for i, (k, v) in enumerate(first.items()) if i not in dropped}
    second.update({f"new.{i}": np.full(i + 1, i, np.float32) for i in range(added)})
    repo = make_repo(tmp_path_factory.mktemp("status") / "repo")
    _, path = _commit(repo, first)
    write_safetensors_np(path, second)

    def never(self):
        raise AssertionError("status built an entry per small tensor")

    from mlvc import snapshot

    parsed = []
    real = snapshot.st.read_layout
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects.HeldTable, "_entries", never)
        mp.setattr(objects.SmallTable, "_entries", never)
        mp.setattr(snapshot.st, "read_layout", lambda f, rel: parsed.append(rel) or real(f, rel))
        st_ = repo.status()
    assert bool(parsed) == bool(dropped & set(range(len(names))) or added)  # the commit's header, when unchanged
    (f,) = [f for f in st_.files if f.path == "model.safetensors"]
    want_changed = sorted(n for n in names if n in second and second[n].tobytes() != first[n].tobytes())
    want_added, want_removed = sorted(f"new.{i}" for i in range(added)), sorted(n for n in names if n not in second)
    assert f.state == ("modified" if want_changed or want_added or want_removed else "unchanged")
    assert (sorted(f.tensors_changed), sorted(f.tensors_added), sorted(f.tensors_removed)) == \
        (want_changed, want_added, want_removed)
