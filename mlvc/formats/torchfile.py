"""PyTorch .pt/.bin/.pth/.ckpt files: read only through torch.load(weights_only=True), never executing pickled
code; flatten the container into named tensors plus a skeleton; rebuild with torch.save.

The skeleton is the loaded object with every tensor replaced by a placeholder string, saved with torch.save
so that reading it back also goes through weights_only=True.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..errors import DependencyError, FormatError, UnsafePickleError

PLACEHOLDER = "\x00mlvc-tensor:"


def require_torch(why: str):
    try:
        import torch
    except ImportError:
        raise DependencyError("torch", why, "torch") from None
    return torch


def load(path: str, display: str) -> Any:
    torch = require_torch(f"reading {display}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(display, str(e)) from None
    except (RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UnsafePickleError(display, str(e)) from None
        raise FormatError(display, f"torch.load could not read it ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def archive_name(path: str) -> str | None:
    """The folder name torch.save put the records under (it is the file's stem), None for legacy files."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return names[0].split("/", 1)[0] if names else None


def flatten(obj: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """(skeleton, [(name, tensor)]) with names joined by '.' along dict keys and list indices."""
    torch = require_torch("flattening a torch checkpoint")
    tensors: list[tuple[str, Any]] = []
    names: set[str] = set()
    by_object: dict[int, str] = {}  # the same tensor object twice stays one object (pickle memoizes it)

    def walk(x: Any, prefix: str) -> Any:
        if isinstance(x, torch.Tensor):
            if id(x) in by_object:
                return PLACEHOLDER + by_object[id(x)]
            name = prefix or "tensor"
            while name in names:
                name += "_"
            names.add(name)
            by_object[id(x)] = name
            tensors.append((name, x))
            return PLACEHOLDER + name
        if isinstance(x, Mapping):
            out = OrderedDict() if type(x) is OrderedDict else {}
            for k, v in x.items():
                out[k] = walk(v, f"{prefix}.{k}" if prefix else str(k))
            if hasattr(x, "__dict__") and vars(x):
                out.__dict__.update(vars(x))  # e.g. the _metadata attribute of a state_dict
            return out
        if isinstance(x, (list, tuple)):
            items = [walk(v, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(x)]
            return type(x)(items) if type(x) in (list, tuple) else items
        return x

    return walk(obj, ""), tensors


def unflatten(skeleton: Any, tensors: Mapping[str, Any]) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, str) and x.startswith(PLACEHOLDER):
            return tensors[x[len(PLACEHOLDER):]]
        if isinstance(x, Mapping):
            out = type(x)()
            for k, v in x.items():
                out[k] = walk(v)
            if hasattr(x, "__dict__") and vars(x):
                out.__dict__.update(vars(x))
            return out
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        return x

    return walk(skeleton)


def skeleton_bytes(skeleton: Any) -> bytes:
    torch = require_torch("saving a torch checkpoint")
    buf = io.BytesIO()
    torch.save(skeleton, buf)
    return buf.getvalue()


def skeleton_from_bytes(data: bytes, display: str) -> Any:
    torch = require_torch(f"rebuilding {display}")
    try:
        return torch.load(io.BytesIO(bytes(data)), weights_only=True)
    except Exception as e:  # a damaged skeleton is reported, never executed
        raise FormatError(display, f"stored container structure cannot be read ({e})") from None


def save(obj: Any, out, archive: str | None, tmp_dir: str) -> None:
    """torch.save `obj` and copy the bytes to `out` (anything with write()).

    torch names the zip's record folder after the file's stem, so to reproduce the original bytes the
    object is saved as `<tmp>/<archive>.pt`; archive None means the legacy (non-zip) format.
    """
    torch = require_torch("writing a torch checkpoint")
    with tempfile.TemporaryDirectory(prefix=".tmp-torch-", dir=tmp_dir) as tmp:
        path = os.path.join(tmp, (archive or "archive") + ".pt")
        torch.save(obj, path, _use_new_zipfile_serialization=archive is not None)
        with open(path, "rb") as src:
            while block := src.read(1 << 22):
                out.write(block)


def tensor_bytes(t) -> memoryview:
    """The tensor's bytes, C-contiguous, as a flat memoryview (no copy when already contiguous on CPU)."""
    torch = require_torch("reading tensors")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous()
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def storage_key(t) -> tuple:
    """Two tensors with equal keys are the same tensor object in disguise (tied weights)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def alias_of(base):
    """A distinct tensor object over the same storage as `base` (how torch.load gives tied weights)."""
    return base.view(base.shape)


def rebuilds_exactly(t) -> bool:
    """True when storing just the tensor's bytes loses nothing torch.save would write (no view, no padding)."""
    return t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
