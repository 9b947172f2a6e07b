"""torch files check out byte for byte, whatever the container holds; what mlvc cannot store is a clean error.

The class of bug: a torch file committed (as exact) that no checkout can rebuild. A torch file is now stored
as its tensors plus the bytes around them (the frame) and a layout, and the commit rebuilds the entry from
the stored objects with write_entry, the very code checkout runs, before it records anything.
"""

from __future__ import annotations

import collections
import io
import os
import shutil
import sys
import zipfile

import pytest

from conftest import sha256_file
from mlvc.chunking import Pipeline
from mlvc.errors import CorruptObjectError, FormatError, MlvcError
from mlvc.objects import KIND_TORCH, FileEntry, Manifest
from mlvc.snapshot import snapshot_path, write_entry
from mlvc.store import MemoryObjectStore

torch = pytest.importorskip("torch")

PLACEHOLDER = "\x00mlvc-tensor:"  # the string the old skeleton encoding used for a tensor


def _parameter_with_attribute():
    p = torch.nn.Parameter(torch.arange(4.0))
    p.note = "kept"
    return p


def _state_dict_with_metadata():
    sd = torch.nn.Linear(3, 2).state_dict()
    assert hasattr(sd, "_metadata")
    return sd


def _tied():
    w = torch.randn(5, 3)
    return {"embed": w, "head": w, "head_view": w.view(15)}


def _views():
    base = torch.arange(64, dtype=torch.float32)
    return {"slice": base[8:24], "strided": base[::2], "t": torch.randn(4, 6).t(), "row": base.view(8, 8)[3],
            "expanded": torch.ones(1, 3).expand(4, 3), "qkv": list(torch.randn(9, 4).split(3))}


def _dtypes():
    out = {"bool": torch.tensor([True, False, True]), "i8": torch.tensor([-3, 4], dtype=torch.int8),
           "u8": torch.tensor([255, 1], dtype=torch.uint8), "i16": torch.tensor([-300], dtype=torch.int16),
           "i32": torch.tensor([1 << 30], dtype=torch.int32), "i64": torch.tensor([-(1 << 60)]),
           "f16": torch.tensor([0.5, -0.0], dtype=torch.float16), "bf16": torch.randn(3).bfloat16(),
           "f64": torch.tensor([float("nan"), float("inf")], dtype=torch.float64)}
    for name in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"):
        if hasattr(torch, name):
            out[name] = torch.ones(3).to(getattr(torch, name)) if "float" in name else torch.tensor(
                [1, 2], dtype=getattr(torch, name))
    return out


CONTAINERS = {
    "parameter": lambda: {"w": torch.nn.Parameter(torch.ones(3))},  # the example
    "parameter-no-grad": lambda: {"w": torch.nn.Parameter(torch.ones(3), requires_grad=False)},
    "parameter-attribute": lambda: {"p": _parameter_with_attribute()},
    "requires-grad": lambda: {"w": torch.ones(2, 2, requires_grad=True)},
    "views": _views,
    "tied": _tied,
    "state-dict-metadata": _state_dict_with_metadata,
    "ordered-dict": lambda: collections.OrderedDict([("b", torch.ones(2)), ("a", torch.zeros(2))]),
    "tuple": lambda: (torch.ones(2), (torch.zeros(1), 3)),
    "nested-lists": lambda: [[torch.ones(1), [torch.zeros(2), []]], [[[]]]],
    "set": lambda: {"s": {1, 2, "x"}, "w": torch.ones(1)},
    "placeholder-strings": lambda: {"w": torch.ones(2), "x": PLACEHOLDER + "w", "y": PLACEHOLDER + "nothing",
                                    PLACEHOLDER + "k": [PLACEHOLDER], "z": "\x00"},
    "placeholder-names": lambda: {PLACEHOLDER + "w": torch.ones(2), "w": torch.zeros(2)},
    "scalars": lambda: {"i": 7, "big": 1 << 100, "f": 0.1, "nan": float("nan"), "neg0": -0.0, "none": None,
                        "t": True, "f0": False, "b": b"\x00bytes", "ba": bytearray(b"ab"), "c": 1 + 2j,
                        "s": "\u00e9\U0001f600", "w": torch.ones(1)},
    "size-and-dtype": lambda: {"shape": torch.Size([2, 3]), "dtype": torch.bfloat16, "w": torch.ones(2, 3)},
    "dtypes": _dtypes,
    "empty-and-0d": lambda: {"e": torch.zeros(0), "e2": torch.zeros(3, 0, 2), "s": torch.tensor(2.5),
                            "i": torch.tensor(3)},
    "bare-tensor": lambda: torch.arange(5),
    "no-tensors": lambda: {"epoch": 3, "name": "run"},
    "tensor-as-key": lambda: {torch.ones(1): "value", "w": torch.ones(2)},
    "same-name-twice": lambda: {"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}},
    "identical-content": lambda: {"a": torch.zeros(4), "b": torch.zeros(4)},
}


def _save(obj, path, legacy: bool = False) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def _commit_checkout(repo, tmp_path, name: str):
    """Commit the file, fsck, check it out elsewhere: returns (result, entry, checked-out path)."""
    path = os.path.join(repo.root, name)
    result = repo.commit(path, message=name)
    assert result.inexact == []
    entry = repo.read_manifest(result.commit.manifest).file(name)
    assert entry.kind == KIND_TORCH and entry.exact and entry.layout is not None and entry.skeleton is None
    assert repo.fsck().ok
    out = tmp_path / f"out-{result.commit.id[:8]}"
    repo.checkout(result.commit.id, output=str(out))
    assert sha256_file(out / name) == sha256_file(path)
    return result, entry, out / name


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(CONTAINERS))
def test_container_checks_out_byte_for_byte(small_repo, tmp_path, case, legacy):
    obj = CONTAINERS[case]()
    path = os.path.join(small_repo.root, "m.pt")
    _save(obj, path, legacy)
    try:
        back = torch.load(path, weights_only=True)
    except Exception:  # e.g. torch 2.13 cannot read back its own legacy files with uint16..uint64 tensors
        with pytest.raises(FormatError):
            small_repo.commit(path, message=case)
        return
    result, entry, out = _commit_checkout(small_repo, tmp_path, "m.pt")
    # the tensors mlvc lists are the ones torch gives back, bit for bit
    from mlvc.formats import torchfile

    expected = dict(torchfile.named_tensors(back, "m.pt"))
    assert [t.name for t in entry.tensors] == list(expected)
    loaded = small_repo.load(result.commit.id)
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert torch.equal(loaded[name].reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8))
    assert small_repo.status().files[0].state == "unchanged"


def test_placeholder_strings_come_back_as_strings(small_repo, tmp_path):
    obj = CONTAINERS["placeholder-strings"]()
    path = os.path.join(small_repo.root, "m.pt")
    _save(obj, path)
    _result, entry, out = _commit_checkout(small_repo, tmp_path, "m.pt")
    back = torch.load(out, weights_only=True)
    assert back["x"] == PLACEHOLDER + "w" and back["y"] == PLACEHOLDER + "nothing"
    assert back[PLACEHOLDER + "k"] == [PLACEHOLDER] and torch.equal(back["w"], torch.ones(2))
    assert [t.name for t in entry.tensors] == ["w"]


def test_plain_state_dict_stores_each_tensor_once(small_repo, tmp_path):
    """The frame holds only what is not a tensor: the tensors' bytes are not stored twice."""
    sd = {f"layer{i}.weight": torch.randn(32, 32) for i in range(4)}
    sd["tied"] = sd["layer0.weight"]
    path = os.path.join(small_repo.root, "m.pt")
    _save(sd, path)
    _result, entry, _out = _commit_checkout(small_repo, tmp_path, "m.pt")
    frame_bytes = sum(p for p in entry.layout if isinstance(p, int))
    assert [p for p in entry.layout if isinstance(p, str)] == [f"layer{i}.weight" for i in range(4)]
    assert frame_bytes == os.path.getsize(path) - 4 * 32 * 32 * 4


def test_legacy_format_stores_each_tensor_once(small_repo, tmp_path):
    sd = {"a": torch.randn(16), "b": torch.arange(10), "c": torch.ones(3, dtype=torch.float16)}
    path = os.path.join(small_repo.root, "m.pt")
    _save(sd, path, legacy=True)
    _result, entry, _out = _commit_checkout(small_repo, tmp_path, "m.pt")
    assert sorted(p for p in entry.layout if isinstance(p, str)) == ["a", "b", "c"]


def test_archive_name_that_differs_from_the_file_name(small_repo, tmp_path):
    """torch names the zip's record folder after the file it saved to; a renamed file keeps the old name."""
    saved = tmp_path / "original_name.pt"
    _save({"w": torch.ones(4)}, saved)
    shutil.copy(saved, os.path.join(small_repo.root, "renamed.bin"))
    _commit_checkout(small_repo, tmp_path, "renamed.bin")


def test_saved_to_a_buffer_and_odd_zip_members(small_repo, tmp_path):
    """torch.save to a BytesIO names the records "archive"; extra members, a compressed storage record and
    members after the central directory's usual ones still check out byte for byte."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(100.0), "v": torch.ones(7)}, buf)
    open(os.path.join(small_repo.root, "buf.pt"), "wb").write(buf.getvalue())
    _commit_checkout(small_repo, tmp_path, "buf.pt")

    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src:
        members = [(i, src.read(i.filename)) for i in src.infolist()]
    for variant in ("extra-member", "deflated"):
        name = f"{variant}.pt"
        with zipfile.ZipFile(os.path.join(small_repo.root, name), "w") as dst:
            for info, data in members:
                deflate = variant == "deflated" and "/data/" in info.filename
                dst.writestr(info.filename, data, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
            if variant == "extra-member":
                dst.writestr("archive/notes.txt", b"hello")
        try:
            torch.load(os.path.join(small_repo.root, name), weights_only=True)
        except Exception:
            with pytest.raises(FormatError):
                small_repo.commit(os.path.join(small_repo.root, name), message=name)
            continue
        _commit_checkout(small_repo, tmp_path, name)


def test_deeply_nested_container(small_repo, tmp_path):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 30_000))
    try:
        deep = inner = []
        for _ in range(10_000):
            inner.append([])
            inner = inner[0]
        inner.append(torch.ones(2))
        ddeep = dinner = {}
        for _ in range(10_000):
            dinner["k"] = {}
            dinner = dinner["k"]
        dinner["w"] = torch.zeros(3)
        _save({"list": deep, "dict": ddeep}, os.path.join(small_repo.root, "deep.pt"))
    finally:
        sys.setrecursionlimit(limit)
    _result, entry, _out = _commit_checkout(small_repo, tmp_path, "deep.pt")
    assert len(entry.tensors) == 2


def test_changed_tensor_commits_against_the_parent(small_repo, tmp_path):
    path = os.path.join(small_repo.root, "m.pt")
    sd = {"w": torch.randn(64, 64), "b": torch.zeros(64), "step": 1}
    _save(sd, path)
    first, _e1, _ = _commit_checkout(small_repo, tmp_path, "m.pt")
    sd["w"][0, 0] += 1
    sd["step"] = 2
    _save(sd, path)
    second, e2, _ = _commit_checkout(small_repo, tmp_path, "m.pt")
    out = tmp_path / "first"
    small_repo.checkout(first.commit.id, output=str(out))
    assert torch.load(out / "m.pt", weights_only=True)["step"] == 1
    assert {t.name: t.hash for t in e2.tensors}["b"] == {t.name: t.hash for t in _e1.tensors}["b"]


# -- what cannot be stored is a clean error, and changes nothing --------------------------------------------


def _unsupported():
    cases = {
        "sparse-coo": lambda: torch.ones(3).to_sparse(),
        "sparse-csr": lambda: torch.eye(3).to_sparse_csr(),
        "meta": lambda: torch.empty(3, device="meta"),
        "nested": lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
        "quantized": lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
        "complex": lambda: torch.ones(3, dtype=torch.complex64),
    }
    for name in ("float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "uint4", "int4"):
        if hasattr(torch, name):
            cases[name] = lambda name=name: torch.zeros(2, dtype=getattr(torch, name))
    return cases


UNSUPPORTED = _unsupported()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_tensor_is_a_format_error(small_repo, case):
    try:
        t = UNSUPPORTED[case]()
        path = os.path.join(small_repo.root, "m.pt")
        _save({"w": t}, path)
    except (RuntimeError, TypeError, KeyError, NotImplementedError):
        pytest.skip(f"this torch cannot make or save a {case} tensor")
    with pytest.raises(FormatError) as e:
        small_repo.commit(path, message=case)
    assert "--as-blob" in str(e.value)
    assert small_repo.head() is None
    result = small_repo.commit(path, message="as blob", as_blob=["*.pt"])  # the way out the message names
    out = os.path.join(str(small_repo.root), "..", "blob-out")
    small_repo.checkout(result.commit.id, output=out)
    assert sha256_file(os.path.join(out, "m.pt")) == sha256_file(path)


def _valid_bytes(legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(16.0), "n": 3}, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


DAMAGED = {
    "empty": lambda: b"",
    "truncated-zip": lambda: _valid_bytes()[:-40],
    "half-zip": lambda: _valid_bytes()[: len(_valid_bytes()) // 2],
    "truncated-legacy": lambda: _valid_bytes(True)[:-5],
    "legacy-huge-count": lambda: _valid_bytes(True)[:-72] + (1 << 40).to_bytes(8, "little") + _valid_bytes(True)[-64:],
    "pickle-garbage": lambda: _valid_bytes()[:70] + b"\xff" * 20 + _valid_bytes()[90:],
    "not-torch-zip": lambda: _zip_of({"hello.txt": b"hi"}),
    "text": lambda: b"this is not a checkpoint\n",
    "plain-pickle": lambda: __import__("pickle").dumps({"a": 1}),
}


def _zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_file_is_a_format_error(small_repo, case):
    path = os.path.join(small_repo.root, "m.pt")
    with open(path, "wb") as f:
        f.write(DAMAGED[case]())
    with pytest.raises(FormatError):
        small_repo.commit(path, message=case)
    assert small_repo.head() is None


# -- the verdict comes from the stored objects ----------------------------------------------------------------


def test_commit_rebuilds_from_the_store_and_falls_back_to_the_whole_file(tmp_path, monkeypatch):
    """A store that gives back a wrong tensor chunk: the commit-time rebuild (checkout's own code) notices,
    and the file is stored whole in the frame, which then checks out byte for byte."""
    path = str(tmp_path / "m.pt")
    _save({"w": torch.randn(1536), "b": torch.ones(4)}, path)  # "w" is stored as a chunk, "b" held for a bundle
    store = MemoryObjectStore()
    real_get = store.get
    poisoned: set[str] = set()

    def get(oid):
        data = real_get(oid)
        return bytes(len(data)) if oid in poisoned else data

    monkeypatch.setattr(store, "get", get)
    real_put = store.put

    def put(raw, *a, **k):
        r = real_put(raw, *a, **k)
        if len(raw) == 6144:  # the chunk of "w" (1536 float32), and nothing else
            poisoned.add(r.id)
        return r

    monkeypatch.setattr(store, "put", put)
    with Pipeline(store, 8192, threads=1) as pipe:
        entry = snapshot_path(pipe, path, "m.pt")
        assert entry.layout == [os.path.getsize(path)]  # every byte in the frame
        out = io.BytesIO()
        write_entry(pipe, entry, out)
    assert out.getvalue() == open(path, "rb").read()


def test_commit_refuses_when_nothing_rebuilds(tmp_path, monkeypatch):
    path = str(tmp_path / "m.pt")
    _save({"w": torch.randn(8)}, path)
    store = MemoryObjectStore()
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda oid: bytes(len(real_get(oid))))
    with Pipeline(store, 4096, threads=1) as pipe, pytest.raises(CorruptObjectError):
        snapshot_path(pipe, path, "m.pt")


def test_damaged_layout_is_a_corrupt_object_error(tmp_path):
    path = str(tmp_path / "m.pt")
    _save({"w": torch.randn(8)}, path)
    with Pipeline(MemoryObjectStore(), 4096, threads=1) as pipe:
        entry = snapshot_path(pipe, path, "m.pt")
        for layout in (entry.layout + [1], entry.layout[:-1], ["nope"], [True], [-1], [1.5]):
            bad = FileEntry.from_dict({**entry.to_dict(), "layout": layout})
            with pytest.raises(CorruptObjectError):
                write_entry(pipe, bad, io.BytesIO())


def test_manifest_round_trip_of_a_torch_entry(tmp_path):
    path = str(tmp_path / "m.pt")
    _save({"w": torch.randn(8), "w2": None}, path)
    with Pipeline(MemoryObjectStore(), 4096, threads=1) as pipe:
        entry = snapshot_path(pipe, path, "m.pt")
    m = Manifest(["m.pt"], [entry], 4096)
    import json

    back = Manifest.from_dict(json.loads(m.to_bytes())).files[0]
    assert back == entry
    assert set(entry.frame) <= set(back.object_ids())
    d = entry.to_dict()
    assert {"frame", "layout"} <= set(d) and "skeleton" not in d and "archive" not in d


def test_entry_from_before_the_frame_design_still_checks_out(tmp_path):
    """An old entry (skeleton + tensors, rebuilt with torch.save) keeps checking out as it did."""
    from mlvc.chunking import Segment
    from mlvc.formats.torchfile import PLACEHOLDER as OLD

    sd = {"w": torch.arange(6.0), "n": 3}
    path = str(tmp_path / "old.pt")
    _save(sd, path)
    skeleton = io.BytesIO()
    torch.save({"w": OLD + "w", "n": 3}, skeleton)
    with Pipeline(MemoryObjectStore(), 4096, threads=1) as pipe:
        results, _ = pipe.ingest([Segment("w", memoryview(sd["w"].numpy()).cast("B"), 4)])
        skel_id = pipe.store.put(skeleton.getvalue()).id
        from mlvc.snapshot import file_hash

        d = {"path": "old.pt", "kind": "torch", "size": os.path.getsize(path), "hash": file_hash(path),
             "tensors": [{"name": "w", "dtype": "F32", "shape": [6], "nbytes": 24, "hash": results["w"].hash,
                          "chunks": results["w"].chunks}],
             "skeleton": skel_id, "exact": True, "archive": "old"}
        entry = FileEntry.from_dict(d)
        assert FileEntry.from_dict(entry.to_dict()) == entry  # round-trips (format 2 leaves implied fields out)
        out = io.BytesIO()
        write_entry(pipe, entry, out)
    assert out.getvalue() == open(path, "rb").read()


def test_nothing_but_mlvc_errors_from_an_unreadable_file(tmp_path):
    path = str(tmp_path / "m.pt")
    for data in (b"PK\x03\x04" + bytes(100), b"\x80\x02" + bytes(50), os.urandom(300)):
        with open(path, "wb") as f:
            f.write(data)
        with Pipeline(MemoryObjectStore(), 4096, threads=1) as pipe, pytest.raises(MlvcError):
            snapshot_path(pipe, path, "m.pt")
