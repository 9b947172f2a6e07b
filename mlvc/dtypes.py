"""The tensor dtypes mlvc knows: one table, from which every other module derives what it needs.

Each row is a safetensors dtype name with its element size (which is also the plane width its chunks are
stored with), its kind, and its numpy and torch equivalents. `mlvc.numeric` (exact arithmetic), the
safetensors reader, manifests, diff, merge, snapshot and load all read this table; docs/format.md lists the
same names (tests/test_spec_conformance.py checks that the two agree).

BOOL is one byte per element, as safetensors (and numpy's and torch's bool) store it. It loads as numpy
`bool_` / `torch.bool`; arithmetic (`numeric.as_numbers`, used by diff) reads the byte as uint8, so every
stored byte is compared exactly, a byte other than 0 or 1 included (a numpy bool array would not promise that).

A dtype name not in the table (an `F4` from a newer safetensors writer) is still stored: as bytes, width 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

FLOAT, SIGNED, UNSIGNED, BOOL = "float", "signed", "unsigned", "bool"


@dataclass(frozen=True)
class DType:
    name: str  # the safetensors name
    itemsize: int  # bytes per element; also the plane width of its chunks
    kind: str  # FLOAT, SIGNED, UNSIGNED or BOOL
    numpy: str | None  # numpy's dtype string, little-endian; None when numpy lacks the type
    ml_dtypes: str | None  # the ml_dtypes type for those numpy lacks (else their bits load as unsigned ints)
    torch: str  # the torch.<name> attribute (older torch builds may lack some: uint16-64, float8)

    @property
    def bits(self) -> np.dtype:
        """The unsigned integer type of the element's bit pattern (what delta coding works on)."""
        import numpy as np

        return np.dtype(f"<u{self.itemsize}")

    @property
    def numbers(self) -> np.dtype | None:
        """The numpy type exact arithmetic reads elements as (None for bf16 and fp8: mlvc.numeric widens
        those itself). BOOL reads as uint8: see the module docstring."""
        import numpy as np

        if self.kind == BOOL:
            return np.dtype("u1")
        return np.dtype(self.numpy) if self.numpy else None


def _row(name, itemsize, kind, numpy, ml, torch) -> tuple[str, DType]:
    return name, DType(name, itemsize, kind, numpy, ml, torch)


DTYPES: dict[str, DType] = dict([
    _row("F64", 8, FLOAT, "<f8", None, "float64"),
    _row("F32", 4, FLOAT, "<f4", None, "float32"),
    _row("F16", 2, FLOAT, "<f2", None, "float16"),
    _row("BF16", 2, FLOAT, None, "bfloat16", "bfloat16"),
    _row("F8_E4M3", 1, FLOAT, None, "float8_e4m3fn", "float8_e4m3fn"),
    _row("F8_E5M2", 1, FLOAT, None, "float8_e5m2", "float8_e5m2"),
    _row("I64", 8, SIGNED, "<i8", None, "int64"),
    _row("I32", 4, SIGNED, "<i4", None, "int32"),
    _row("I16", 2, SIGNED, "<i2", None, "int16"),
    _row("I8", 1, SIGNED, "i1", None, "int8"),
    _row("U64", 8, UNSIGNED, "<u8", None, "uint64"),
    _row("U32", 4, UNSIGNED, "<u4", None, "uint32"),
    _row("U16", 2, UNSIGNED, "<u2", None, "uint16"),
    _row("U8", 1, UNSIGNED, "u1", None, "uint8"),
    _row("BOOL", 1, BOOL, "?", None, "bool"),
])

# name -> element size in bytes (derived; kept as the name other modules use)
ITEMSIZE: dict[str, int] = {name: d.itemsize for name, d in DTYPES.items()}
FLOAT_DTYPES: tuple[str, ...] = tuple(n for n, d in DTYPES.items() if d.kind == FLOAT)
INT_DTYPES: tuple[str, ...] = tuple(n for n, d in DTYPES.items() if d.kind != FLOAT)  # bool included

# What a dtype name may look like: the table's names, and unknown ones of the same form (stored as bytes).
DTYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")

# A tensor's rank and element count: limits far beyond any real checkpoint, that keep a crafted header or
# manifest from costing more than reading it. numpy, torch and the safetensors library all need the non-zero
# dims to multiply below 2**63, even for an empty tensor.
MAX_RANK = 64  # dims of a shape (torch's own limit)


def is_dtype_name(x) -> bool:
    """A string of the form of a safetensors dtype name, known or not."""
    return isinstance(x, str) and (x in DTYPES or DTYPE_NAME.fullmatch(x) is not None)  # a known one: no regex


def is_float(dtype: str) -> bool:
    return dtype in DTYPES and DTYPES[dtype].kind == FLOAT


def is_numeric(dtype: str) -> bool:
    """Known to the table: its elements can be read as numbers (floats, integers, bool)."""
    return dtype in DTYPES


def plane_width(dtype: str) -> int:
    """How many byte planes a chunk of this dtype is split into (1: not split; unknown dtypes too)."""
    d = DTYPES.get(dtype)
    return d.itemsize if d else 1


def dims_fit(shape: list[int]) -> bool:
    """Whether the non-zero dims multiply to less than 2**63 (a shape [2**62, 2**62, 0] holds no element,
    yet no library can make it). Stops early, so a crafted shape never builds a huge integer."""
    n = 1
    for d in shape:
        n *= d or 1
        if n >= 1 << 63:
            return False
    return True


NOT_A_SHAPE = -1  # elements(): not a list of at most MAX_RANK non-negative integers
TOO_BIG = -2  # elements(): the non-zero dims multiply to 2**63 or more


def elements(shape: Any) -> int:
    """The element count of a shape read from a file or a manifest (0 with a zero dim), or NOT_A_SHAPE, or
    TOO_BIG (see dims_fit): every check a stored shape needs in one walk, for readers of 100,000 of them."""
    if type(shape) is not list or len(shape) > MAX_RANK:
        return NOT_A_SHAPE
    n = 1
    empty = False
    for x in shape:
        if type(x) is not int or x < 0:
            return NOT_A_SHAPE
        if x:
            n *= x
            if n >= 1 << 63:
                return TOO_BIG
        else:
            empty = True
    return 0 if empty else n


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy type a tensor of this dtype loads as. bf16 and fp8 need ml_dtypes; without it their bits
    come back as unsigned integers of the same size. KeyError for a dtype not in the table."""
    import numpy as np

    d = DTYPES[dtype]
    if d.numpy is not None:
        return np.dtype(d.numpy)
    try:
        import ml_dtypes
    except ImportError:
        return d.bits
    assert d.ml_dtypes is not None  # every row without a numpy name has an ml_dtypes one
    return np.dtype(getattr(ml_dtypes, d.ml_dtypes))


def from_numpy(dt: np.dtype) -> str:
    import numpy as np

    dt = np.dtype(dt)
    for name, d in DTYPES.items():
        if (d.numpy is not None and np.dtype(d.numpy) == dt) or (d.ml_dtypes is not None and dt.name == d.ml_dtypes):
            return name
    raise TypeError(f"numpy dtype {dt} has no safetensors equivalent")


def torch_dtype(dtype: str):
    """torch's dtype (KeyError: not in the table; AttributeError: this torch build lacks it)."""
    import torch

    return getattr(torch, DTYPES[dtype].torch)


def from_torch(tdt) -> str:
    name = str(tdt).removeprefix("torch.")
    for k, d in DTYPES.items():
        if d.torch == name:
            return k
    raise TypeError(f"torch dtype {tdt} has no safetensors equivalent")
