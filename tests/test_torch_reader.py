"""The torch-free reader of torch.save's zip format (mlvc/formats/torchzip.py).

What it must hold: a file it reads is stored exactly as the torch.load path stores it (the same manifest,
byte for byte); what it does not model falls back to torch.load (or, without torch, a clear error); a crafted
pickle never runs code nor imports a module; and committing a .pt does not import torch at all.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlvc.chunking import Pipeline
from mlvc.dtypes import DTYPES, from_torch
from mlvc.errors import DependencyError, FormatError, MlvcError
from mlvc.formats import torchfile, torchzip
from mlvc.snapshot import snapshot_path, write_entry
from mlvc.store import MemoryObjectStore
from mlvc.util import canonical_json

torch = pytest.importorskip("torch")

SETTINGS = dict(deadline=None, derandomize=True, database=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Readers:
    """Counts which reader answered; `torch_only()` makes every file go through torch.load."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.zip = self.declined = 0
        real = torchzip.read

        def counting(f, size):
            try:
                out = real(f, size)
            except torchzip.Unsupported:
                self.declined += 1
                raise
            self.zip += 1
            return out

        monkeypatch.setattr(torchzip, "read", counting)

    @contextlib.contextmanager
    def torch_only(self):
        def refuse(f, size):
            raise torchzip.Unsupported("the test asks for torch.load")

        with self.monkeypatch.context() as m:
            m.setattr(torchzip, "read", refuse)
            yield


@pytest.fixture
def readers(monkeypatch):
    return Readers(monkeypatch)


def _commit(path: str, rel: str = "m.pt") -> tuple[bytes, bytes]:
    """(the entry as canonical JSON, the file written back from the store)."""
    with Pipeline(MemoryObjectStore(), 256, threads=1) as pipe:
        entry = snapshot_path(pipe, path, rel)
        out = io.BytesIO()
        write_entry(pipe, entry, out)
    return canonical_json(entry.to_dict()), out.getvalue()


def _both(path: str, readers: Readers, rel: str = "m.pt") -> bytes:
    """Commit with the torch-free reader and with torch.load: the same entry, and both rebuild the file."""
    zipped = readers.zip
    entry, back = _commit(path, rel)
    assert readers.zip == zipped + 1, "the torch-free reader should have read this file"
    with readers.torch_only():
        entry2, back2 = _commit(path, rel)
    original = open(path, "rb").read()
    assert back == back2 == original
    assert entry == entry2
    return entry


# -- generated state_dicts -------------------------------------------------------------------------------

DTYPE_NAMES = [d.torch for d in DTYPES.values() if hasattr(torch, d.torch)]


def _tensor(dtype_name: str, shape: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * 40
    dtype = getattr(torch, dtype_name)
    if dtype is torch.bool:
        return t > 0
    if dtype_name.startswith("uint") and dtype_name != "uint8":
        return t.abs().to(torch.int64).to(dtype)
    return t.to(dtype)


@st.composite
def state_dicts(draw):
    """Nested dicts/lists/tuples of tensors: every dtype, 0-dim, empty, slices with offsets, transposes,
    strided and expanded views, tied weights, Parameters, requires_grad, OrderedDicts with _metadata."""
    bases = [_tensor(draw(st.sampled_from(DTYPE_NAMES)),
                     draw(st.lists(st.integers(0, 5), max_size=3)), i) for i in range(draw(st.integers(1, 4)))]

    def leaf():
        base = bases[draw(st.integers(0, len(bases) - 1))]
        how = draw(st.sampled_from(["whole", "whole", "slice", "t", "strided", "expand", "row", "param", "grad",
                                    "scalar", "flat", "again"]))
        if how == "slice" and base.dim() and base.shape[0] > 1:
            return base[1:]
        if how == "t" and base.dim() == 2:
            return base.t()
        if how == "strided" and base.dim():
            return base[::2]
        if how == "expand" and base.numel():
            return base.reshape(-1)[-1:].expand(3)
        if how == "row" and base.dim() >= 2 and base.shape[0]:
            return base[-1]
        if how == "param":
            return torch.nn.Parameter(base, requires_grad=base.dtype in (torch.float32, torch.float64))
        if how == "grad" and base.dtype in (torch.float32, torch.float16, torch.bfloat16):
            return base.detach().clone().requires_grad_(True)
        if how == "scalar" and base.numel():
            return base.reshape(-1)[-1].clone()
        if how == "flat":
            return base.reshape(-1)
        return base

    def node(depth: int):
        kind = draw(st.sampled_from(["leaf", "leaf", "leaf", "dict", "list", "odict", "value"] if depth < 3
                                    else ["leaf", "value"]))
        if kind == "leaf":
            return leaf()
        if kind == "value":
            return draw(st.sampled_from([None, 3, -1.5, "text", b"\x00\xff", (1, "a"), torch.Size([2, 3]),
                                         torch.float16, {1, 2}, complex(1, -2), True]))
        children = [node(depth + 1) for _ in range(draw(st.integers(0, 4)))]
        if kind == "list":
            return children if draw(st.booleans()) else tuple(children)
        d = collections.OrderedDict() if kind == "odict" else {}
        keys = draw(st.lists(st.one_of(st.text(max_size=3), st.integers(-3, 3), st.sampled_from(
            [None, 1.5, b"k", (0, "x"), torch.Size([1]), torch.int8, False])), min_size=len(children),
            max_size=len(children), unique_by=lambda k: (type(k), k)))
        for k, v in zip(keys, children, strict=True):
            d[k] = v
        if kind == "odict":
            d._metadata = {"": {"version": 1}}
        return d

    top = collections.OrderedDict((f"layer{i}", node(1)) for i in range(draw(st.integers(1, 4))))
    return top


@settings(**SETTINGS)
@given(sd=state_dicts(), archive=st.sampled_from(["m", "archive", "x.y"]))
def test_same_entry_from_either_reader(tmp_path, readers, sd, archive):
    path = tmp_path / f"{archive}.pt"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    torch.save(sd, path)
    _both(str(path), readers)


def test_checkpoint_of_a_real_module(tmp_path, readers):
    """A state_dict of an nn.Module (OrderedDict with _metadata, Parameters' data, buffers), and one with tied
    embeddings, as transformers saves them."""
    model = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 11))
    model[2].weight = model[0].weight  # tied
    for i, obj in enumerate([model.state_dict(), {"model": model.state_dict(), "step": 7, "lr": [0.1]}]):
        torch.save(obj, tmp_path / f"c{i}.pt")
        entry = _both(str(tmp_path / f"c{i}.pt"), readers)
        assert b'"alias"' in entry  # the tied weight is stored once


def test_every_dtype_maps_as_from_torch_does():
    for dtype, storage in torch.storage._dtype_to_storage_type_map().items():
        try:
            expected = from_torch(dtype)
        except TypeError:
            assert storage not in torchzip._TYPED_STORAGES  # no safetensors name: declined
            continue
        assert torchzip._global("torch", storage).dtype == expected
        assert torchzip._global("torch.cuda", storage).dtype == expected
    for d in DTYPES.values():
        if hasattr(torch, d.torch):
            value = torchzip._global("torch", d.torch)
            assert value.name == from_torch(getattr(torch, d.torch))
            assert str(value) == str(getattr(torch, d.torch))  # a dtype dict key names a tensor as torch's does
    assert str(torchzip._size([1, 2])) == str(torch.Size([1, 2]))


def test_zip64_directory(tmp_path, readers):
    """More than 65,535 records: torch's writer (and Python's) then end the zip with zip64 records."""
    src, path = str(tmp_path / "src.pt"), str(tmp_path / "m.pt")
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "v": torch.arange(6.0)[1:4]}, src)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(path, "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info))
        for i in range(1 << 16):
            out.writestr(f"src/pad/{i}", b"")
    with open(path, "rb") as f:
        f.seek(-42, os.SEEK_END)
        assert f.read(4) == b"PK\x06\x07"  # the zip64 locator: this is the case under test
    _both(path, readers)
    _rezip(path, str(tmp_path / "outside.pt"), lambda n, d: None if n.startswith("src/pad/") else d)
    with zipfile.ZipFile(tmp_path / "outside.pt", "a") as z:
        z.writestr("elsewhere/x", b"")  # torch's reader refuses a record outside the archive's folder
    with open(tmp_path / "outside.pt", "rb") as f, pytest.raises(torchzip.Unsupported, match="outside"):
        torchzip.read(f, os.path.getsize(tmp_path / "outside.pt"))


# -- what it declines falls back to torch.load -----------------------------------------------------------------


def _rezip(src: str, dst: str, change=None, compress=zipfile.ZIP_STORED) -> None:
    """Copy a torch zip record by record (as Python's zipfile writes it), `change(name, data)` editing them."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", compression=compress) as out:
        for info in z.infolist():
            data = z.read(info)
            if change is not None:
                data = change(info.filename, data)
            if data is not None:
                out.writestr(info.filename, data)


def _legacy(path):
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)


def _device(path):
    torch.save({"w": torch.ones(3), "where": torch.device("cpu")}, path)


def _big_endian(path):
    torch.save({"w": torch.arange(3.0)}, str(path) + ".src")
    _rezip(str(path) + ".src", path, lambda n, d: b"big" if n.endswith("/byteorder") else d)


def _compressed(path):
    torch.save({"w": torch.zeros(300)}, str(path) + ".src")
    _rezip(str(path) + ".src", path, compress=zipfile.ZIP_DEFLATED)


def _attribute(path):
    p = torch.nn.Parameter(torch.arange(4.0))
    p.note = "kept"
    torch.save({"p": p}, path)


def _tensor_key(path):
    torch.save({(1, torch.ones(1)): {"w": torch.ones(2)}}, path)


def _complex(path):
    torch.save({"c": torch.ones(2, dtype=torch.complex64)}, path)


DECLINED = [_legacy, _device, _big_endian, _compressed, _attribute, _tensor_key, _complex]


@pytest.mark.parametrize("make", DECLINED, ids=lambda f: f.__name__.strip("_"))
def test_what_it_declines_goes_to_torch_load(tmp_path, readers, make):
    path = str(tmp_path / "m.pt")
    make(path)
    with pytest.raises(torchzip.Unsupported):
        with open(path, "rb") as f:
            ckpt = torchzip.read(f, os.path.getsize(path))
            torchfile.walk(ckpt.obj, torchzip.Tensor, torchzip.plain_key)
    try:
        entry, back = _commit(path)
    except FormatError:  # what mlvc cannot store (complex) is refused as it always was
        assert make is _complex
        with readers.torch_only(), pytest.raises(FormatError):
            _commit(path)
        return
    assert back == open(path, "rb").read()
    with readers.torch_only():
        assert _commit(path)[0] == entry


@pytest.mark.parametrize("make", [_legacy, _device], ids=["legacy", "device"])
def test_without_torch_a_declined_file_says_why(tmp_path, monkeypatch, make):
    path = str(tmp_path / "m.pt")
    make(path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(DependencyError, match=r"m\.pt \(.+\) needs torch"):
        _commit(path)


# Damage to the zip that Python's zipfile forgives and torch's reader (miniz) does not, or reads otherwise: each
# was found by the mutation fuzzer as a file the torch-free reader read while torch.load refused it. The reader
# declines them all, so torch.load gives the verdict.


def _central(data: bytes, name: bytes) -> int:
    at = data.index(b"PK\x01\x02")
    while not data[at + 46 :].startswith(name):
        at = data.index(b"PK\x01\x02", at + 4)
    return at


def _record(data: bytes, name: bytes) -> int:
    """Where the bytes of the record `name` start (after its local header, name and extra field)."""
    at = data.index(b"PK\x03\x04")
    while data[at + 30 : at + 30 + len(name)] != name:
        at = data.index(b"PK\x03\x04", at + 4)
    n, m = struct.unpack("<HH", data[at + 26 : at + 30])
    return at + 30 + n + m


def _patch(data: bytearray, at: int, value: bytes) -> None:
    data[at : at + len(value)] = value


ZIP_DAMAGE = {
    "folder bit on a record": lambda d: _patch(d, _central(d, b"m/.storage_alignment") + 38, b"\x10"),
    "record on another disk": lambda d: _patch(d, _central(d, b"m/data.pkl") + 34, b"\x00\xff"),
    "name past its entry": lambda d: _patch(d, _central(d, b"m/.data/serialization_id") + 29, b"\xfc"),
    "zip64 end record size": lambda d: _patch(d, d.rindex(b"PK\x06\x06") + 4, b"\x2a"),
    "entry count": lambda d: _patch(d, len(d) - 12, b"\x05\x00"),
    "serialization id not text": lambda d: _patch(d, _record(d, b"m/.data/serialization_id") + 3, b"\xff"),
    "local header elsewhere": lambda d: _patch(d, _central(d, b"m/data/0") + 42, b"\x00\x00\x00\x00"),
}


@pytest.mark.parametrize("damage", list(ZIP_DAMAGE))
def test_zip_damage_torch_reads_otherwise_is_declined(tmp_path, readers, damage):
    src, path = str(tmp_path / "m.pt"), str(tmp_path / "damaged.pt")
    torch.save({"w": torch.arange(6.0), "b": torch.ones(2)}, src)
    data = bytearray(open(src, "rb").read())
    ZIP_DAMAGE[damage](data)
    open(path, "wb").write(bytes(data))
    with open(path, "rb") as f, pytest.raises(torchzip.Unsupported):
        torchzip.read(f, len(data))
    try:
        entry = _commit(path)
    except MlvcError as e:
        with readers.torch_only(), pytest.raises(type(e)):
            _commit(path)
    else:
        with readers.torch_only():
            assert _commit(path) == entry


# -- no torch on the way --------------------------------------------------------------------------------------

NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` raises ImportError
from mlvc.cli import main
sys.argv[0] = "mlvc"
main()
"""


def test_commit_of_a_pt_never_imports_torch(tmp_path):
    sd = collections.OrderedDict(w=torch.randn(8, 4), b=torch.zeros(4, dtype=torch.bfloat16), t=torch.arange(6))
    sd["tied"] = sd["w"]
    sd["view"] = sd["w"][2:]
    sd["strided"] = sd["w"].t()
    torch.save(sd, tmp_path / "model.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def mlvc(*args):
        return subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)

    for args in (["init"], ["commit", "model.pt", "-m", "pt"]):
        r = mlvc(*args)
        assert r.returncode == 0, r.stderr
    r = mlvc("checkout", "HEAD", "--output", str(tmp_path / "back"))  # and it comes back without torch, too
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back" / "model.pt").read_bytes() == (tmp_path / "model.pt").read_bytes()


def test_reading_imports_nothing(tmp_path):
    torch.save({"w": torch.ones(3), "v": [torch.zeros(2, 2)]}, tmp_path / "m.pt")
    code = ("import sys\nfrom mlvc.formats import torchfile\nbefore = set(sys.modules)\n"
            f"f = open({str(tmp_path / 'm.pt')!r}, 'rb')\n"
            "ts = torchfile.read_tensors(f, 'm.pt', 'm.pt')\n"
            "new = sorted(set(sys.modules) - before)\nprint(len(ts), new)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    count, new = r.stdout.strip().split(" ", 1)
    assert count == "2" and "torch" not in new


# -- crafted pickles ------------------------------------------------------------------------------------------


def _with_pickle(tmp_path, data: bytes) -> str:
    """A real .pt whose data.pkl is replaced by `data`."""
    src, dst = str(tmp_path / "src.pt"), str(tmp_path / "m.pt")
    torch.save({"w": torch.arange(4.0)}, src)
    _rezip(src, dst, lambda n, d: data if n.endswith("/data.pkl") else d)
    return dst


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


STORAGE = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
CRAFTED = {
    "os.system": pickle.dumps(Evil(), protocol=2),
    "any protocol": pickle.dumps(Evil(), protocol=5),
    "builtins.eval": b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R.",
    "import json": b"\x80\x02cjson\nloads\nX\x02\x00\x00\x00{}\x85R.",
    "getattr chain": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2.__globals__\n.",
    "INST": b"(ios\nsystem\nX\x04\x00\x00\x00true.",
    "OBJ": b"\x80\x02(cos\nsystem\nX\x04\x00\x00\x00trueo.",
    "NEWOBJ": b"\x80\x02ccollections\nOrderedDict\n)\x81.",
    "EXT": b"\x80\x02\x82\x01.",
    "huge memo index": b"\x80\x02}r\xff\xff\xff\xff]j\xff\xff\xff\xfe.",
    "huge get": b"\x80\x02j\xff\xff\xff\xff.",
    "reduce a storage": b"\x80\x02" + STORAGE + b")R.",
    "call a dict": b"\x80\x02})R.",
    "build a dict": b"\x80\x02}}b.",
    "setitem on a list": b"\x80\x02]K\x01K\x02s.",
    "empty": b"",
    "no stop": b"\x80\x02}",
    "truncated string": b"\x80\x02X\xff\x00\x00\x00ab",
    "tensor past its storage": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + STORAGE
                               + b"K\x02K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rtq\x00R.",
    "negative stride": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + STORAGE
                       + b"K\x03K\x02\x85J\xff\xff\xff\xff\x85\x89ccollections\nOrderedDict\n)RtR.",
    "two types for a storage": b"\x80\x02(" + STORAGE + STORAGE.replace(b"Float", b"Int") + b"t.",
    "missing record": b"\x80\x02" + STORAGE.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x009") + b".",
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_pickle_runs_nothing_and_imports_nothing(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    path = _with_pickle(tmp_path, CRAFTED[name])
    modules = set(sys.modules)
    with open(path, "rb") as f, pytest.raises(torchzip.Unsupported):
        torchzip.read(f, os.path.getsize(path))
    assert set(sys.modules) == modules
    assert not (tmp_path / "pwned.txt").exists()
    # the commit path: torch.load(weights_only=True) gives the verdict, and only ever an mlvc error
    try:
        entry, back = _commit(path)
    except MlvcError:
        pass
    else:
        assert back == open(path, "rb").read()
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("how", ["key", "set"])
def test_a_key_nested_too_deep_to_hash_is_refused(tmp_path, readers, how):
    """Hashing a tuple nested 200,000 deep overflows the C stack (torch.load would crash the process on it):
    refused with a FormatError, before anything hashes it, and not handed to torch.load."""
    deep = b"N" + b"\x85" * 200_000  # (((None,),),...)
    body = b"}" + deep + b"K\x01s" if how == "key" else b"c__builtin__\nset\n]" + deep + b"a\x85R"
    path = _with_pickle(tmp_path, b"\x80\x02" + body + b".")
    with open(path, "rb") as f, pytest.raises(torchzip.TooDeep):
        torchzip.read(f, os.path.getsize(path))
    with pytest.raises(FormatError, match="nested too deeply"):
        _commit(path)
    assert readers.declined == 0


def test_a_huge_memo_index_costs_nothing(tmp_path):
    """The C unpickler sizes an array by the index (tens of GB for this one); the reader's memo is a dict."""
    path = _with_pickle(tmp_path, b"\x80\x02}r\xff\xff\xff\xffj\xff\xff\xff\xff.")
    with open(path, "rb") as f:
        assert torchzip.read(f, os.path.getsize(path)).obj == {}


def test_a_well_formed_pickle_of_the_same_shape_is_read(tmp_path):
    """The crafted cases above decline for their one defect, not because the frame around them is wrong."""
    good = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + STORAGE + \
        b"K\x01K\x03\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR."
    path = _with_pickle(tmp_path, good)
    with open(path, "rb") as f:
        t = torchzip.read(f, os.path.getsize(path)).obj
        assert (t.dtype, t.shape, t.stride, t.offset) == ("F32", (3,), (1,), 1)
        assert struct.unpack("<3f", t.read(f.fileno(), "m.pt")) == (1.0, 2.0, 3.0)
    assert torch.equal(torch.load(path, weights_only=True), torch.arange(4.0)[1:])
