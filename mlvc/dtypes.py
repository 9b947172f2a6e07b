"""The safetensors dtype names mlvc knows, their element sizes, and numpy/torch equivalents."""

from __future__ import annotations

import numpy as np

# name -> element size in bytes. Unknown names are still stored (width 1, as bytes).
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}

_NUMPY_PLAIN: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
# dtypes numpy lacks: ml_dtypes provides them when installed, else the bits come back as unsigned ints.
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}

_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
    "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}


def plane_width(dtype: str) -> int:
    """How many byte planes a chunk of this dtype is split into (1: not split)."""
    return ITEMSIZE.get(dtype, 1)


def numpy_dtype(dtype: str) -> np.dtype:
    if dtype in _NUMPY_PLAIN:
        return np.dtype(_NUMPY_PLAIN[dtype])
    if dtype in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            return np.dtype(f"<u{ITEMSIZE[dtype]}")
        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[dtype]))
    raise KeyError(dtype)


def from_numpy(dt: np.dtype) -> str:
    dt = np.dtype(dt)
    for name, np_name in _NUMPY_PLAIN.items():
        if np.dtype(np_name) == dt:
            return name
    if dt.name in _ML_DTYPES.values():
        return next(k for k, v in _ML_DTYPES.items() if v == dt.name)
    raise TypeError(f"numpy dtype {dt} has no safetensors equivalent")


def torch_dtype(dtype: str):
    import torch

    return getattr(torch, _TORCH_NAMES[dtype])


def from_torch(tdt) -> str:
    name = str(tdt).removeprefix("torch.")
    for k, v in _TORCH_NAMES.items():
        if v == name:
            return k
    raise TypeError(f"torch dtype {tdt} has no safetensors equivalent")
