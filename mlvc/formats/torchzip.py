"""The zip format `torch.save` writes (its default since torch 1.6), read without torch and without running any
pickled code: the pickle is interpreted by a small machine that knows only the opcodes and the globals a
weights-only state_dict needs, every tensor is described as (dtype, shape, stride, storage offset, storage), and
each storage is located as the byte range of its uncompressed zip record, so a tensor's bytes are a range of
the file (or, for a strided view, gathered from its storage's range).

The reader is deliberately narrower than `torch.load(weights_only=True)`: it mirrors that unpickler opcode by
opcode and global by global for what it accepts, so whenever it gives an answer it is the one torch would give,
and it declines (`Unsupported`) whatever it does not model exactly: the legacy non-zip format, TorchScript
archives, a big-endian or unknown byte order, compressed or odd zip records, a global outside the list below
(torch.device, Counter, bytearray, sparse, quantized and subclass tensors, NEWOBJ, ...), a storage seen twice
with different types, a tensor that torch itself would refuse (out of its storage, an integer tensor that
requires grad, a dtype with no safetensors name). The caller then falls back to torch.load.

Safety: the machine never imports a module nor calls anything but the handful of constructors below (plain
Python containers and this module's data classes); its memo is a dict (a crafted index costs nothing, where
the C unpickler sizes an array by it); nothing it builds is callable, so a pickle cannot reach code through it.
"""

from __future__ import annotations

import os
import struct
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from ..dtypes import DTYPES, ITEMSIZE, MAX_RANK, dims_fit
from ..errors import FileChangedError


class Unsupported(Exception):
    """The file is not one this reader models exactly (the message says why); torch.load may still read it."""


class TooDeep(Exception):
    """A dict key or set member nested so deeply that hashing it would overflow the C stack (Python's tuple
    hash does not guard its recursion): refused outright, since torch.load would crash the process on it."""


_MAX_KEY_DEPTH = 1000


def _check_key(k: Any) -> None:
    """TooDeep for a tuple nested deeper than _MAX_KEY_DEPTH; iterative, and free for a non-tuple."""
    if type(k) is not tuple:
        return
    todo = [(k, 1)]
    while todo:
        x, depth = todo.pop()
        if depth > _MAX_KEY_DEPTH:
            raise TooDeep("a dict key or set member nested too deeply to hash")
        todo.extend((y, depth + 1) for y in x if type(y) is tuple)


# torch dtype attribute -> safetensors name, for the dtypes mlvc stores (mlvc.dtypes' table)
_BY_TORCH_NAME = {d.torch: d.name for d in DTYPES.values()}
# torch's typed storage classes (torch.storage._dtype_to_storage_type_map) whose dtype mlvc stores
_TYPED_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
_FLOAT_GRAD = {"F64", "F32", "F16", "BF16"}  # dtypes a tensor may require grad in (others: decline, torch decides)
_INT64 = 1 << 63
_VERSIONS = {b"1", b"2", b"3", b"1\n", b"2\n", b"3\n"}  # the format versions torch.save has written


class Dtype:
    """A torch dtype met as a value (`torch.float32` in a dict); one object per dtype, as torch's are."""

    __slots__ = ("name",)
    _all: ClassVar[dict[str, Dtype]] = {}

    def __init__(self, name: str):
        self.name = name  # the safetensors name

    @classmethod
    def of(cls, torch_name: str) -> Dtype:
        if torch_name not in cls._all:
            cls._all[torch_name] = cls(_BY_TORCH_NAME[torch_name])
        return cls._all[torch_name]

    def __repr__(self) -> str:  # as torch's, so that a dict key names a tensor as torch.load's object would
        return f"torch.{DTYPES[self.name].torch}"


class Size(tuple):
    """torch.Size: a tuple of ints that prints as torch's does."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"torch.Size({list(self)!r})"

    __str__ = __repr__


class _StorageType:
    __slots__ = ("dtype",)

    def __init__(self, dtype: str):
        self.dtype = dtype


class Storage:
    """One storage record: `nbytes` bytes of the file from `start`, first loaded as `type_key` (torch keeps a
    key's first storage)."""

    __slots__ = ("key", "dtype", "nbytes", "start", "type_key")

    def __init__(self, key: str, dtype: str, nbytes: int, start: int, type_key: tuple):
        self.key, self.dtype, self.nbytes, self.start, self.type_key = key, dtype, nbytes, start, type_key

    def __repr__(self) -> str:
        return f"Storage({self.key!r}, {self.dtype}, {self.nbytes} bytes at {self.start})"


class Tensor:
    """A dense strided CPU tensor: `shape` and `stride` in elements of `dtype`, from element `offset` of
    `storage` (torch's `set_(storage, offset, shape, stride)`), checked against the storage's size."""

    __slots__ = ("storage", "dtype", "offset", "shape", "stride")

    def __init__(self, storage: Storage, dtype: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.dtype, self.offset, self.shape, self.stride = storage, dtype, offset, shape, stride

    def __repr__(self) -> str:
        return f"Tensor({self.dtype}, {list(self.shape)}, stride={list(self.stride)}, storage={self.storage.key!r})"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    def is_contiguous(self) -> bool:
        """C order (torch's rule: a dim of size 1 may have any stride; an empty tensor is contiguous)."""
        if self.numel == 0:
            return True
        expected = 1
        for d, s in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if d != 1 and s != expected:
                return False
            expected *= d
        return True

    def span(self) -> tuple[int, int]:
        """The file bytes [a, b) that are this (contiguous) tensor's bytes."""
        a = self.storage.start + self.offset * ITEMSIZE[self.dtype]
        return a, a + self.nbytes

    def key(self) -> tuple:
        """Equal for two tensors that are the same tensor under two names (tied weights)."""
        return (self.storage.key, self.offset, self.shape, self.stride, self.dtype)

    def read(self, fd: int, path: str) -> memoryview:
        """The tensor's bytes in C order, gathered from its storage's record in the open file `fd`."""
        import numpy as np

        if self.numel == 0:
            return memoryview(b"")
        size = ITEMSIZE[self.dtype]
        buf = os.pread(fd, self.storage.nbytes, self.storage.start)
        if len(buf) != self.storage.nbytes:
            raise FileChangedError(path)
        elements = np.frombuffer(buf, dtype=np.dtype(f"V{size}"), offset=self.offset * size)
        view = np.lib.stride_tricks.as_strided(elements, self.shape, [s * size for s in self.stride], writeable=False)
        return np.ascontiguousarray(view).data.cast("B")


_PLAIN_KEYS = (str, int, float, bool, type(None), bytes, complex, Size, Dtype)


def plain_key(k: Any) -> bool:
    """Whether str(k) is what it is for the object torch.load builds (a dict key that names a tensor): plain
    values, torch.Size, dtypes, and tuples of them. A tensor prints differently here, so it is not."""
    todo = [k]
    while todo:
        x = todo.pop()
        if type(x) is tuple:
            todo.extend(x)
        elif type(x) not in _PLAIN_KEYS:
            return False
    return True


class Checkpoint:
    """What the reader found: the unpickled object (plain containers, `Tensor`s, `Dtype`s, `Size`s, ...)."""

    def __init__(self, obj: Any, archive: str):
        self.obj, self.archive = obj, archive


def read(f, size: int) -> Checkpoint:
    """Read the open binary file `f` (`size` bytes). Unsupported when the file is not a zip checkpoint this
    reader models exactly; OSError from the file system passes through."""
    f.seek(0)
    if f.read(4) != b"PK\x03\x04":
        raise Unsupported("the legacy torch format, not a zip")
    entries = _directory(f, size)
    records = _records(f, size, entries)
    if not entries or b"/" not in entries[0][0] or entries[0][1] != 0:
        raise Unsupported("the zip's first record is not in a folder at the start of the file")
    archive = entries[0][0].split(b"/", 1)[0].decode("utf-8")
    prefix = archive + "/"
    if not all(name.startswith(prefix) for name in records):  # torch's reader checks every record is in it
        raise Unsupported("a zip record outside the archive's folder")
    version = records.get(prefix + ".data/version") or records.get(prefix + "version")
    if version is None or _read(f, version) not in _VERSIONS:
        raise Unsupported("no format version torch.save writes")
    if any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in records):
        raise Unsupported("a TorchScript archive")
    sid = records.get(prefix + ".data/serialization_id")
    if sid is not None and not _is_utf8(_read(f, sid)):  # torch's reader reads it as text
        raise Unsupported("its serialization id is not text")
    order = records.get(prefix + "byteorder")
    if order is not None and _read(f, order) != b"little":
        raise Unsupported("its byte order is not little-endian")
    alignment = records.get(prefix + ".storage_alignment")
    if alignment is not None:
        try:
            int(_read(f, alignment))
        except ValueError:
            raise Unsupported("its storage alignment record is not a number") from None
    pkl = records.get(prefix + "data.pkl")
    if pkl is None:
        raise Unsupported("no data.pkl record")
    data = _read(f, pkl)  # (torch's reader does not check a record's CRC either)
    machine = _Machine(data, lambda pid, loaded: _storage(pid, prefix, records, loaded))
    try:
        obj = machine.load()
    except (Unsupported, TooDeep):
        raise
    except Exception as e:  # anything the pickle makes go wrong is a decline: torch.load gives the verdict
        raise Unsupported(f"its pickle is not one this reader models ({type(e).__name__}: {e})"[:300]) from None
    return Checkpoint(obj, archive)


# name, local header offset, size, compressed size, method, flags, disk, external attributes
_Entry = tuple[bytes, int, int, int, int, int, int, int]
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # a central directory header


def _directory(f, size: int) -> list[_Entry]:
    """The central directory's entries, parsed strictly (Python's zipfile forgives a name that runs past its
    entry, or a disk number, which torch's reader refuses): anything else is Unsupported."""
    cd_offset, cd_size, count = _check_end(f, size)
    f.seek(cd_offset)
    cd = f.read(cd_size)
    if len(cd) != cd_size:
        raise Unsupported("the zip's central directory runs past the end of the file")
    out: list[_Entry] = []
    pos = 0
    for _ in range(count):
        if pos + _CENTRAL.size > cd_size:
            raise Unsupported("the zip's central directory is shorter than its count")
        (sig, _made, _need, flags, method, _time, _date, _crc, csize, usize, n, m, k, disk, _internal, external,
         offset) = _CENTRAL.unpack_from(cd, pos)
        end = pos + _CENTRAL.size + n + m + k
        if sig != b"PK\x01\x02" or end > cd_size:
            raise Unsupported("a damaged zip central directory entry")
        name = cd[pos + _CENTRAL.size : pos + _CENTRAL.size + n]
        if 0xFFFFFFFF in (csize, usize, offset) or disk == 0xFFFF:
            usize, csize, offset, disk = _zip64(cd[pos + _CENTRAL.size + n : end - k], usize, csize, offset, disk)
        out.append((name, offset, usize, csize, method, flags, disk, external))
        pos = end
    if pos != cd_size:
        raise Unsupported("the zip's central directory is longer than its count")
    return out


def _zip64(extra: bytes, usize: int, csize: int, offset: int, disk: int) -> tuple[int, int, int, int]:
    """The zip64 extra field's values for the fields that say 'see zip64' (in the order the format lists)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            field = extra[pos + 4 : pos + 4 + n]
            values = []
            at = 0
            for value, width in ((usize, 8), (csize, 8), (offset, 8), (disk, 4)):
                if value != (0xFFFF if width == 4 else 0xFFFFFFFF):
                    values.append(value)
                    continue
                if at + width > len(field):
                    raise Unsupported("a damaged zip64 extra field")
                values.append(int.from_bytes(field[at : at + width], "little"))
                at += width
            return values[0], values[1], values[2], values[3]
        pos += 4 + n
    raise Unsupported("a zip64 entry without its extra field")


def _records(f, size: int, entries: list[_Entry]) -> dict[str, tuple[int, int]]:
    """name -> (start, length) of each stored record's bytes in the file, located as torch's reader does
    (from the local header). A name twice (torch's zip reader matches names ignoring case), a compressed,
    encrypted, flagged or folder record, a name that is not UTF-8, or a header that does not fit: Unsupported."""
    out: dict[str, tuple[int, int]] = {}
    lowered: set[str] = set()
    for raw, offset, usize, csize, method, flags, disk, external in entries:
        if not _is_utf8(raw):
            raise Unsupported("a zip record name that is not UTF-8")
        name = raw.decode("utf-8")
        if name.lower() in lowered:
            raise Unsupported(f"the zip names {name!r} twice")
        lowered.add(name.lower())
        if method != 0 or flags & ~_FLAGS or csize != usize or disk:
            raise Unsupported(f"its record {name!r} is compressed, encrypted, flagged or on another disk")
        if external & 0x10 or name.endswith("/"):  # torch's reader takes it for a folder, and reads no bytes
            raise Unsupported(f"its record {name!r} is marked as a folder")
        if not 0 <= offset <= size - 30:
            raise Unsupported(f"the zip places {name!r} outside the file")
        f.seek(offset)
        local = f.read(30)
        n, m = struct.unpack("<HH", local[26:30]) if len(local) == 30 else (0, 0)
        if local[:4] != b"PK\x03\x04" or f.read(n) != raw:
            raise Unsupported(f"the zip's local header of {name!r} is missing or names another record")
        start = offset + 30 + n + m
        if start + usize > size:
            raise Unsupported(f"its record {name!r} runs past the end of the file")
        out[name] = (start, usize)
    return out


_FLAGS = 0x808  # the general purpose flags torch.save sets: a data descriptor follows, the name is UTF-8
_EOCD = struct.Struct("<4s4H2LH")  # the end of central directory record
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # the zip64 one
_LOCATOR = struct.Struct("<4sLQL")  # the zip64 end of central directory locator


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:  # torch's reader lists record names as UTF-8 text, and fails on others
        return False
    return True


def _check_end(f, size: int) -> tuple[int, int, int]:
    """The end of the zip as torch.save writes it (the zip64 end record and its locator, then the plain end
    record; no comment, one disk, the central directory just before the end records, `count` entries), which
    torch's zip reader (miniz) insists on where Python's zipfile is lenient: another shape is Unsupported, and
    torch.load gives the verdict. Returns the central directory's offset, size and entry count."""
    at = size - _EOCD.size - _LOCATOR.size
    if at < 0:
        raise Unsupported("no zip end record")
    f.seek(at)
    tail = f.read(_LOCATOR.size + _EOCD.size)
    sig, disk, cd_disk, on_disk, total, cd_size, cd_offset, comment = _EOCD.unpack(tail[_LOCATOR.size :])
    if sig != b"PK\x05\x06" or comment:
        raise Unsupported("no zip end record at the end of the file")
    end = size - _EOCD.size
    loc_sig, loc_disk, eocd64, disks = _LOCATOR.unpack(tail[: _LOCATOR.size])
    if loc_sig == b"PK\x06\x07":
        if loc_disk != 0 or disks != 1 or eocd64 > at - _EOCD64.size:
            raise Unsupported("a zip64 end record torch.save does not write")
        f.seek(eocd64)
        plain = (disk, cd_disk, on_disk, total, cd_size, cd_offset)
        sig64, rest, _made, _need, disk, cd_disk, on_disk, total, cd_size, cd_offset = _EOCD64.unpack(
            f.read(_EOCD64.size))
        if sig64 != b"PK\x06\x06" or rest != _EOCD64.size - 12:  # (no extensible data: torch's reader checks)
            raise Unsupported("a zip64 end record torch.save does not write")
        wide = (disk, cd_disk, on_disk, total, cd_size, cd_offset)
        if any(a not in (b, 0xFFFF, 0xFFFFFFFF) for a, b in zip(plain, wide, strict=True)):
            raise Unsupported("the zip's two end records disagree")
        end = eocd64
    elif 0xFFFF in (on_disk, total) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise Unsupported("a zip64 archive without its end record")
    if disk or cd_disk or on_disk != total:
        raise Unsupported("a zip end record torch.save does not write (several disks)")
    if cd_offset + cd_size != end:
        raise Unsupported("the zip's central directory is not just before its end record")
    return cd_offset, cd_size, total


def _read(f, record: tuple[int, int]) -> bytes:
    f.seek(record[0])
    return f.read(record[1])


def _storage(pid: Any, prefix: str, records: dict[str, tuple[int, int]], loaded: dict[str, Storage]) -> Storage:
    """torch's persistent_load for ('storage', type, key, location, numel): the record `data/<key>`."""
    if type(pid) is not tuple or len(pid) != 5:
        raise Unsupported("a persistent id that is not a storage")
    tag, stype, key, location, numel = pid
    if tag not in ("storage", b"storage") or type(stype) is not _StorageType or type(key) is not str:
        raise Unsupported("a persistent id that is not a storage")
    if type(location) not in (str, bytes) or type(numel) is not int or numel < 0:
        raise Unsupported("a storage with an odd location or size")
    type_key = (stype.dtype, numel)
    if key in loaded:
        if loaded[key].type_key != type_key:
            raise Unsupported(f"storage {key!r} is loaded as two different types")
        return loaded[key]
    nbytes = numel * ITEMSIZE[stype.dtype]
    record = records.get(f"{prefix}data/{key}")
    if record is None or record[1] != nbytes:
        raise Unsupported(f"storage {key!r} has no record of its size")
    storage = Storage(key, stype.dtype, nbytes, record[0], type_key)
    if nbytes:  # torch keeps (and shares) only storages with data
        loaded[key] = storage
    return storage


# -- the pickle machine ------------------------------------------------------------------------------------


def _ints(x: Any, what: str) -> tuple[int, ...]:
    if type(x) not in (tuple, list, Size) or len(x) > MAX_RANK or any(type(v) is not int for v in x):
        raise Unsupported(f"a tensor {what} that is not a list of ints")
    if any(not 0 <= v < _INT64 for v in x):
        raise Unsupported(f"a tensor {what} out of range")
    return tuple(x)


def _tensor(storage: Any, offset: Any, shape: Any, stride: Any, dtype: str | None = None) -> Tensor:
    """torch._utils._rebuild_tensor: set_(storage, offset, shape, stride), with set_'s bounds check."""
    if type(storage) is not Storage or type(offset) is not int or not 0 <= offset < _INT64:
        raise Unsupported("a tensor that is not a view of a storage")
    shape, stride = _ints(shape, "shape"), _ints(stride, "stride")
    if len(shape) != len(stride) or not dims_fit(list(shape)):
        raise Unsupported("a tensor whose shape and stride do not match")
    dtype = storage.dtype if dtype is None else dtype
    if 0 not in shape:
        last = offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=True))
        if (last + 1) * ITEMSIZE[dtype] > storage.nbytes:
            raise Unsupported("a tensor out of its storage's bounds")
    return Tensor(storage, dtype, offset, shape, stride)


def _grad_and_hooks(t: Tensor, requires_grad: Any, hooks: Any) -> None:
    if type(requires_grad) is not bool or (requires_grad and t.dtype not in _FLOAT_GRAD):
        raise Unsupported("a tensor with an odd requires_grad")
    if type(hooks) not in (dict, OrderedDict) or hooks:
        raise Unsupported("a tensor with backward hooks")


def _rebuild_tensor(*args: Any) -> Tensor:
    if len(args) != 4:
        raise Unsupported("_rebuild_tensor with other arguments")
    return _tensor(*args)


def _rebuild_tensor_v2(*args: Any) -> Tensor:
    if len(args) not in (6, 7) or (len(args) == 7 and args[6]):
        raise Unsupported("_rebuild_tensor_v2 with other arguments or tensor metadata")
    t = _tensor(*args[:4])
    _grad_and_hooks(t, args[4], args[5])
    return t


def _rebuild_tensor_v3(*args: Any) -> Tensor:
    if len(args) not in (7, 8) or (len(args) == 8 and args[7]) or type(args[6]) is not Dtype:
        raise Unsupported("_rebuild_tensor_v3 with other arguments or tensor metadata")
    if type(args[0]) is Storage and args[0].dtype != "U8":
        raise Unsupported("_rebuild_tensor_v3 of a typed storage")
    t = _tensor(args[0], args[1], args[2], args[3], args[6].name)
    _grad_and_hooks(t, args[4], args[5])
    return t


def _rebuild_parameter(*args: Any) -> Tensor:
    if len(args) != 3 or type(args[0]) is not Tensor:
        raise Unsupported("_rebuild_parameter with other arguments")
    t = args[0]
    _grad_and_hooks(t, args[1], args[2])
    return Tensor(t.storage, t.dtype, t.offset, t.shape, t.stride)  # a new object, as nn.Parameter is


def _ordered_dict(*args: Any) -> OrderedDict:
    if any(type(a) not in (list, tuple, dict, OrderedDict) for a in args):
        raise Unsupported("OrderedDict of something other than a container")
    for a in args:
        if type(a) in (list, tuple):
            for pair in a:
                if type(pair) not in (list, tuple) or len(pair) != 2:
                    raise Unsupported("OrderedDict of something other than pairs")
                _check_key(pair[0])
    return OrderedDict(*args)


def _set(*args: Any) -> set:
    if any(type(a) not in (list, tuple, set) for a in args):
        raise Unsupported("set of something other than a container")
    for a in args:
        for x in a:
            _check_key(x)
    return set(*args)


def _encode(*args: Any) -> bytes:
    if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
        raise Unsupported("_codecs.encode other than the latin1 of a string")
    return args[0].encode("latin-1")


def _complex(*args: Any) -> complex:
    if any(type(a) not in (int, float) for a in args):
        raise Unsupported("complex of something other than numbers")
    return complex(*args)


def _size(*args: Any) -> Size:
    if len(args) > 1 or (args and (type(args[0]) not in (list, tuple) or any(type(v) is not int for v in args[0]))):
        raise Unsupported("torch.Size of something other than ints")
    if args and any(not -_INT64 <= v < _INT64 for v in args[0]):
        raise Unsupported("torch.Size out of range")
    return Size(*args)


_CALLABLE: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set,
    "_codecs.encode": _encode,
    "builtins.complex": _complex,
    "torch.Size": _size,
}
_FUNCTIONS = frozenset(_CALLABLE.values())


def _global(module: str, name: str) -> Any:
    """What GLOBAL `module name` stands for; Unsupported for anything not on the list."""
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    full = f"{module}.{name}"
    if full in _CALLABLE:
        return _CALLABLE[full]
    if module in ("torch", "torch.cuda") and name in _TYPED_STORAGES and _TYPED_STORAGES[name] in _BY_TORCH_NAME:
        return _StorageType(_BY_TORCH_NAME[_TYPED_STORAGES[name]])
    if full == "torch.storage.UntypedStorage":
        return _StorageType("U8")
    if module == "torch" and name in _BY_TORCH_NAME:
        return Dtype.of(name)
    raise Unsupported(f"the global {full[:100]!r}")


_ONE_BYTE = struct.Struct("<B")
_U16, _I32, _U32, _F64 = struct.Struct("<H"), struct.Struct("<i"), struct.Struct("<I"), struct.Struct(">d")


class _Machine:
    """torch's weights-only unpickler (torch/_weights_only_unpickler.py), cut down to what is modelled."""

    def __init__(self, data: bytes, persistent_load: Callable[[Any, dict[str, Storage]], Storage]):
        self.data = data
        self.persistent_load = persistent_load
        self.storages: dict[str, Storage] = {}  # key -> the storage first loaded for it (torch's loaded_storages)

    def load(self) -> Any:
        data, n = self.data, len(self.data)
        memo: dict[int, Any] = {}
        metastack: list[list] = []
        stack: list[Any] = []
        pos = 0

        def take(k: int) -> bytes:
            nonlocal pos
            if pos + k > n:
                raise Unsupported("the pickle ends early")
            out = data[pos : pos + k]
            pos += k
            return out

        def line() -> str:
            nonlocal pos
            end = data.find(b"\n", pos)
            if end < 0:
                raise Unsupported("the pickle ends early")
            out = data[pos:end].decode("utf-8")
            pos = end + 1
            return out

        while True:
            if pos >= n:
                raise Unsupported("the pickle ends early")
            op = data[pos]
            pos += 1
            # the opcodes torch.save's pickles are made of, most frequent first, their one-byte argument inline
            # (a byte past the end reads as an IndexError, which declines like any other)
            if op == 0x71:  # BINPUT
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 0x68:  # BINGET
                stack.append(memo[data[pos]])
                pos += 1
            elif op == 0x58:  # BINUNICODE
                k = _U32.unpack(take(4))[0]
                stack.append(str(take(k), "utf-8", "surrogatepass"))
            elif op == 0x4B:  # BININT1
                stack.append(data[pos])
                pos += 1
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x74:  # TUPLE
                items = stack
                stack = metastack.pop()
                stack.append(tuple(items))
            elif op == 0x85:  # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 0x86:  # TUPLE2
                stack[-2:] = [(stack[-2], stack[-1])]
            elif op == 0x87:  # TUPLE3
                stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                func = stack[-1]
                if type(args) is not tuple or not (callable(func) and func in _FUNCTIONS):
                    raise Unsupported("REDUCE of something not on the list")
                stack[-1] = func(*args)
            elif op == 0x51:  # BINPERSID
                pid = stack.pop()
                stack.append(self.persistent_load(pid, self.storages))
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x63:  # GLOBAL
                module = line()
                stack.append(_global(module, line()))
            elif op == 0x75:  # SETITEMS
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if type(target) not in (dict, OrderedDict):
                    raise Unsupported("SETITEMS on something other than a dict")
                for i in range(0, len(items) - 1, 2):
                    _check_key(items[i])
                    target[items[i]] = items[i + 1]
                if len(items) % 2:
                    raise Unsupported("SETITEMS with an odd number of items")
            elif op == 0x73:  # SETITEM
                v, k = stack.pop(), stack.pop()
                if type(stack[-1]) not in (dict, OrderedDict):
                    raise Unsupported("SETITEM on something other than a dict")
                _check_key(k)
                stack[-1][k] = v
            elif op == 0x61:  # APPEND
                item = stack.pop()
                if type(stack[-1]) is not list:
                    raise Unsupported("APPEND to something other than a list")
                stack[-1].append(item)
            elif op == 0x65:  # APPENDS
                items = stack
                stack = metastack.pop()
                if type(stack[-1]) is not list:
                    raise Unsupported("APPENDS to something other than a list")
                stack[-1].extend(items)
            elif op == 0x62:  # BUILD
                state = stack.pop()
                inst = stack[-1]
                if type(inst) is not OrderedDict or type(state) is not dict:
                    raise Unsupported("BUILD of something other than an OrderedDict's attributes")
                inst.__dict__.update(state)
            elif op == 0x72:  # LONG_BINPUT
                memo[_U32.unpack(take(4))[0]] = stack[-1]
            elif op == 0x6A:  # LONG_BINGET
                stack.append(memo[_U32.unpack(take(4))[0]])
            elif op == 0x4A:  # BININT
                stack.append(_I32.unpack(take(4))[0])
            elif op == 0x4D:  # BININT2
                stack.append(_U16.unpack(take(2))[0])
            elif op == 0x47:  # BINFLOAT
                stack.append(_F64.unpack(take(8))[0])
            elif op == 0x55:  # SHORT_BINSTRING (torch.load decodes it as utf-8)
                k = take(1)[0]
                stack.append(take(k).decode("utf-8", "strict"))
            elif op == 0x8A:  # LONG1
                k = take(1)[0]
                stack.append(int.from_bytes(take(k), "little", signed=True))
            elif op == 0x80:  # PROTO
                take(1)
            elif op == 0x2E:  # STOP
                return stack.pop()
            else:
                raise Unsupported(f"pickle opcode {op:#04x}")
