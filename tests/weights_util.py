"""Helpers for the diff, revert and merge tests: safetensors files of any dtype (bf16 and fp8 through
ml_dtypes), read back, and the repository state that "nothing was written" must leave untouched."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from conftest import tree_hashes
from mlvc.dtypes import from_numpy, numpy_dtype
from mlvc.formats import safetensors as st


def write_st(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> str:
    """A safetensors file written byte by byte (works for ml_dtypes arrays, which safetensors.numpy refuses)."""
    items = [(k, np.ascontiguousarray(v)) for k, v in sorted(tensors.items())]
    layout = st.build_layout([(k, from_numpy(v.dtype), list(v.shape), v.nbytes) for k, v in items], metadata)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(layout.header_bytes)
        for _, v in items:
            f.write(v.tobytes())
    return str(path)


def write_st_raw(path, tensors: list[tuple[str, str, list[int], bytes]]) -> None:
    """A safetensors file of (name, dtype, shape, bytes) in this order, as given: dtypes mlvc does not know, of
    any byte count."""
    import json
    import struct

    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def read_st(path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        layout = st.read_layout(f, str(path))
        f.seek(0)
        data = f.read()
    ds = layout.data_start
    return {t.name: np.frombuffer(data[ds + t.begin : ds + t.end], dtype=numpy_dtype(t.dtype)).reshape(t.shape)
            for t in layout.tensors}


def repo_state(repo) -> dict:
    """Everything a refused operation must leave as it was: refs, reflogs, objects, working files."""
    refs = {}
    for base, _dirs, files in os.walk(os.path.join(repo.dir, "refs")):
        for name in files:
            with open(os.path.join(base, name)) as f:
                refs[os.path.join(base, name)] = f.read()
    logs = tree_hashes(os.path.join(repo.dir, "logs")) if os.path.isdir(os.path.join(repo.dir, "logs")) else {}
    with open(os.path.join(repo.dir, "HEAD")) as f:
        head = f.read()
    return {"HEAD": head, "refs": refs, "logs": logs, "objects": sorted(repo.store.ids()),
            "work": tree_hashes(repo.root)}


def nearest(x: np.ndarray, mltype, bits) -> np.ndarray:
    """Reference rounding of float64 values to a small float type, to nearest with ties to the even code,
    decided with exact fractions among the neighbours of a first guess (finite, in-range values only)."""
    guess = x.astype(np.float32).astype(mltype).view(bits).astype(np.int64)
    top = np.iinfo(bits).max
    out = np.empty(len(x), dtype=bits)
    for i, (xi, g) in enumerate(zip(x, guess, strict=True)):
        best = None
        for c in (g - 1, g, g + 1):
            if not 0 <= c <= top:
                continue
            v = np.array([c], dtype=bits).view(mltype).astype(np.float64)[0]
            if not np.isfinite(v):
                continue
            dist = abs(Fraction(float(xi)) - Fraction(float(v)))
            key = (dist, c & 1)
            if best is None or key < best[0]:
                best = (key, c)
        out[i] = best[1]
    return out
