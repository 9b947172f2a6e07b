"""PyTorch .pt/.bin/.pth/.ckpt files: the named tensors of a checkpoint, read without torch when the file is
one `torchzip` models (the zip format torch.save writes), else through torch.load(weights_only=True); never
executing pickled code either way. Also: find the byte ranges of the file that hold a storage's raw bytes.

A torch file is stored as its tensors plus a *frame* (every other byte of the file, verbatim) and a layout
that interleaves the two, so it is rebuilt byte for byte by concatenation, without torch (snapshot.py). Which
storage record is which tensor is decided by content, so locating the ranges is best effort: a range that is
not found, or matches no tensor, simply stays in the frame.

Entries committed before that design hold a *skeleton* (the container with each tensor replaced by a
placeholder string) that is rebuilt with torch.save; `unflatten`, `skeleton_from_bytes` and `save` still read
them. Nothing new is written that way.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import pickletools
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DependencyError, FormatError, UnsafePickleError
from ..util import TMP_PREFIX
from . import torchzip


def require_torch(why: str):
    try:
        import torch
    except ImportError:
        raise DependencyError("torch", why, "torch") from None
    return torch


_FILE_SYSTEM_ERRNOS = {errno.EIO, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ESTALE, errno.EISDIR}
_REFUSED = re.compile(r"Unsupported global|Unsupported operand|not an allowed global|Unsupported class")


MMAP_ABOVE = 1 << 30  # bytes: larger zip checkpoints are memory-mapped (docs/security.md)


@dataclass
class FileTensor:
    """A named tensor of a checkpoint file, as the commit path needs it, whichever reader found it."""

    name: str
    dtype: str  # safetensors name
    shape: list[int]
    key: tuple | None  # equal keys: one tensor under two names (tied weights); None: never shared (no bytes)
    storage_nbytes: int  # the byte size of the storage it views
    span: tuple[int, int] | None  # the file's bytes [a, b) are exactly the tensor's bytes (C order), if known
    reader: Callable[[int, str], memoryview]  # (open fd, display path) -> the tensor's bytes, C order

    def read(self, fd: int, display: str) -> memoryview:
        return self.reader(fd, display)


def read_tensors(f, path: str, display: str) -> list[FileTensor]:
    """The named tensors of the torch file open as `f` (at `path`), in the order `named_tensors` gives them.
    Read by `torchzip` without torch when it models the file; otherwise (the legacy format, a global it does
    not know, ...) through torch.load, which gives the same answer (or the error) torch always gave."""
    try:
        ckpt = torchzip.read(f, os.fstat(f.fileno()).st_size)
        return [_zip_tensor(name, t) for name, t in walk(ckpt.obj, torchzip.Tensor, torchzip.plain_key)]
    except torchzip.Unsupported as e:  # a tensor in a dict key may decline during the walk, too
        why = str(e)
    except (torchzip.TooDeep, RecursionError):  # (torch.load would crash on the first; str() of a key, the second)
        raise FormatError(display, "a dict key is nested too deeply to read; pass --as-blob to store the file as "
                          "opaque bytes") from None
    obj = load(path, display, why)
    out = []
    for name, t in named_tensors(obj, display):
        nbytes = t.untyped_storage().nbytes()
        key = storage_key(t) if t.numel() else None
        out.append(FileTensor(name, check_tensor(t, name, display), list(t.shape), key, nbytes, None, _reader(t)))
    return out


def _reader(t) -> Callable[[int, str], memoryview]:
    return lambda _fd, _display: tensor_bytes(t)


def _zip_tensor(name: str, t: torchzip.Tensor) -> FileTensor:
    contiguous = t.is_contiguous() and t.numel > 0
    return FileTensor(name, t.dtype, list(t.shape), t.key() if t.numel else None, t.storage.nbytes,
                      t.span() if contiguous else None, t.read)


def load(path: str, display: str, why: str | None = None) -> Any:
    """The file's object, through torch.load(weights_only=True) only. Whatever goes wrong inside torch (a
    truncated or damaged file, a refused global, an allocation a damaged size asks for) is a FormatError.
    `why`: the reason the torch-free reader declined the file, said when torch is missing."""
    torch = require_torch(f"reading {display}" + (f" ({why})" if why else ""))
    try:
        # mmap keeps a huge zip checkpoint out of RAM, but a file truncated by another process while it is
        # mapped kills the reader with SIGBUS; below MMAP_ABOVE torch reads it with plain reads instead, so
        # a truncation is a clean error (and snapshot's before/after identity check a FileChangedError).
        mmap = zipfile.is_zipfile(path) and os.path.getsize(path) > MMAP_ABOVE
        with warnings.catch_warnings():  # the library never prints: torch's deprecation notes included
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many builtin kinds for damaged input; none may escape unnamed
        if isinstance(e, OSError) and e.errno in _FILE_SYSTEM_ERRNOS:
            raise  # the file system's own error, not the content's (torch gives EINVAL for a damaged zip)
        text = str(e)
        if isinstance(e, pickle.UnpicklingError) and _REFUSED.search(text):
            raise UnsafePickleError(display, text) from None
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip()
        detail = detail.splitlines()[0][:200] if detail else type(e).__name__
        raise FormatError(display, f"torch.load could not read it ({detail}); if the file is intact, pass "
                          "--as-blob to store it as opaque bytes") from None


def named_tensors(obj: Any, display: str) -> list[tuple[str, Any]]:
    """[(name, tensor)] in the order met, names joined by '.' along dict keys and list/tuple indices (a bare
    tensor is "tensor"; a name met again gets "_" appended). The same tensor object met twice is listed once
    (pickle memoizes it), and so is a container (so a container that holds itself ends the walk). Tensors
    held only as dict keys, set members or attributes stay in the file's bytes without a name.

    The walk is iterative, so any nesting depth torch.load accepts is fine. A tensor mlvc cannot store as
    plain bytes (sparse, quantized, nested, meta, a dtype without a safetensors name) is a FormatError."""
    torch = require_torch("listing the tensors of a torch checkpoint")
    tensors = walk(obj, torch.Tensor)
    for name, t in tensors:
        check_tensor(t, name, display)
    return tensors


def walk(obj: Any, tensor_type: type, plain_key: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """`named_tensors`' walk, for torch's tensors or torchzip's: the same names in the same order. With
    `plain_key`, a dict key that names a tensor or container and is not plain declines (torchzip.Unsupported)."""
    tensors: list[tuple[str, Any]] = []
    names: set[str] = set()
    suffixes: dict[str, int] = {}  # how many "_" the last name made from this one needed
    seen: set[int] = set()
    # Each entry's path is a linked (parent, key) pair, joined into a name only for a tensor: a deep chain of
    # containers then costs its depth once per tensor, not once per level.
    stack: list[tuple[Any, tuple | None]] = [(obj, None)]
    while stack:
        x, path = stack.pop()
        if isinstance(x, tensor_type):
            if id(x) in seen:
                continue
            seen.add(id(x))
            keys = []
            while path is not None:
                path, key = path
                keys.append(key)
            prefix = ""
            for key in reversed(keys):
                prefix = f"{prefix}.{key}" if prefix else key
            base = prefix or "tensor"
            n = suffixes.get(base, 0)
            while (name := base + "_" * n) in names:
                n += 1
            suffixes[base] = n
            names.add(name)
            tensors.append((name, x))
        elif isinstance(x, (Mapping, list, tuple)):
            if id(x) in seen:
                continue
            seen.add(id(x))
            items = x.items() if isinstance(x, Mapping) else enumerate(x)
            children = [(v, (path, k)) for k, v in items if isinstance(v, (tensor_type, Mapping, list, tuple))]
            if plain_key is not None and not all(plain_key(k) for _v, (_p, k) in children):
                raise torchzip.Unsupported("a dict key that names a tensor is not a plain value")
            children = [(v, (p, str(k))) for v, (p, k) in children]
            stack.extend(reversed(children))
    return tensors


def check_tensor(t, name: str, display: str) -> str:
    """The tensor's safetensors dtype name, or a FormatError saying why its bytes cannot be stored."""
    from ..dtypes import from_torch

    torch = require_torch("reading tensors")
    why = None
    if t.layout != torch.strided:
        why = f"is a {str(t.layout).removeprefix('torch.')} tensor"
    elif t.is_quantized:
        why = "is a quantized tensor"
    elif t.is_nested:
        why = "is a nested tensor"
    elif t.device.type != "cpu":
        why = f"is on the {t.device.type} device (no data)" if t.device.type == "meta" else f"is on {t.device}"
    if why is None:
        try:
            return from_torch(t.dtype)
        except TypeError:
            why = f"has dtype {str(t.dtype).removeprefix('torch.')}, which has no safetensors name"
    shown = repr(name) if len(name) <= 80 else repr(name[:37] + "..." + name[-37:])
    raise FormatError(display, f"tensor {shown} {why}, and mlvc stores tensors as plain dense bytes; pass "
                      "--as-blob to store the file as opaque bytes")


def storage_ranges(f, size: int, sizes: set[int]) -> list[tuple[int, int]]:
    """Disjoint byte ranges [start, end) of the open file `f` (`size` bytes), in order, each holding one
    storage's raw bytes, of a length in `sizes`. Best effort and never raises: a range it misses, or one that
    is not really a storage, only stays in the frame (every rebuild is checked against the file's hash)."""
    try:
        ranges = _zip_ranges(f, size, sizes) if zipfile.is_zipfile(f) else _legacy_ranges(f, size, sizes)
    except Exception:  # a damaged or unusual file costs deduplication, never correctness
        return []
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if 0 <= a < b <= size and (not out or a >= out[-1][1]):
            out.append((a, b))
    return out


def _zip_ranges(f, size: int, sizes: set[int]) -> list[tuple[int, int]]:
    """Uncompressed zip members (torch.save writes each storage as `<archive>/data/<key>`, stored, aligned)."""
    out = []
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1 or info.file_size not in sizes:
            continue
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            continue
        n, m = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + n + m
        if start + info.file_size <= size:
            out.append((start, start + info.file_size))
    return out


def _legacy_ranges(f, size: int, sizes: set[int]) -> list[tuple[int, int]]:
    """The legacy format: five pickles (magic, protocol, system info, the object, the storage keys), skipped
    with pickletools.genops (which decodes opcodes and runs nothing), then each storage as an int64 element
    count and its bytes. The element size is not at hand, so each plausible byte length is tried against the
    storage sizes; a miss ends the walk."""
    f.seek(0)
    for _ in range(5):
        for _op in pickletools.genops(f):
            pass
    out = []
    pos = f.tell()
    while pos + 8 <= size:
        f.seek(pos)
        n = int.from_bytes(f.read(8), "little", signed=True)
        if n == 0:
            pos += 8
            continue
        lengths = [n * w for w in (1, 2, 4, 8, 16) if n * w in sizes and pos + 8 + n * w <= size]
        if not lengths:
            break
        out.append((pos + 8, pos + 8 + lengths[0]))
        pos += 8 + lengths[0]
    return out


def tensor_bytes(t) -> memoryview:
    """The tensor's bytes, C-contiguous, as a flat memoryview (no copy when already contiguous on CPU)."""
    torch = require_torch("reading tensors")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    if flat.stride(0) != 1:  # one element with any stride counts as contiguous, and then cannot be viewed
        flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
    return memoryview(flat.view(torch.uint8).numpy())


def storage_key(t) -> tuple:
    """Two tensors with equal keys are the same tensor object in disguise (tied weights)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


# -- entries committed before the frame/layout design: a skeleton rebuilt with torch.save ---------------

PLACEHOLDER = "\x00mlvc-tensor:"


def unflatten(skeleton: Any, tensors: Mapping[str, Any]) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, str) and x.startswith(PLACEHOLDER):
            return tensors[x[len(PLACEHOLDER):]]
        if isinstance(x, Mapping):
            out: Any = type(x)()
            for k, v in x.items():
                out[k] = walk(v)
            if hasattr(x, "__dict__") and vars(x):
                out.__dict__.update(vars(x))
            return out
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        return x

    return walk(skeleton)


def skeleton_from_bytes(data: bytes, display: str) -> Any:
    torch = require_torch(f"rebuilding {display}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(bytes(data)), weights_only=True)
    except Exception as e:  # a damaged skeleton is reported, never executed
        raise FormatError(display, f"stored container structure cannot be read ({e})") from None


def save(obj: Any, out, archive: str | None, tmp_dir: str | None) -> None:
    """torch.save `obj` and copy the bytes to `out` (anything with write()).

    torch names the zip's record folder after the file's stem, so to reproduce the original bytes the
    object is saved as `<tmp>/<archive>.pt`; archive None means the legacy (non-zip) format.
    """
    torch = require_torch("writing a torch checkpoint")
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=tmp_dir) as tmp:
        path = os.path.join(tmp, (archive or "archive") + ".pt")
        torch.save(obj, path, _use_new_zipfile_serialization=archive is not None)
        with open(path, "rb") as src:
            while block := src.read(1 << 22):
                out.write(block)
