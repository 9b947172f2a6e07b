"""Exactly invertible transforms of a chunk against a base chunk of the same length and element width: the
arithmetic behind the four delta encodings of mlvc/codec.py (docs/format.md, "Delta encodings").

- `forward(XOR)` / `inverse(XOR)`: XOR of the bit patterns (encoding 3, xor): equal bits become zero.
- `forward(SUB)` / `inverse(SUB)`: wrapping integer subtraction of the bit patterns, then zigzag (signed ->
  unsigned, (d << 1) ^ (d >> bits-1)) (encoding 4, sub): for floats whose values moved a little, the
  difference of the bit patterns is a small signed integer, and zigzag keeps small negative differences from
  filling the high bytes with 0xFF.
- `sparse` / `unsparse`: the mask of the elements that changed and the zigzag differences of those only
  (encoding 5, sparse): for updates that touch few elements (frozen layers, embedding rows).
- `predict`: the linear prediction 2*b1 - b2 from the last two versions, which SUB is then taken against
  (encoding 6, pred): for tensors moving steadily, such as rows that only weight decay touches.

All work on the raw bytes viewed as unsigned integers of the element width (1, 2, 4 or 8 bytes), so they are
exact for any dtype (NaN payloads, signed zeros, infinities included). Measured on real fp32 AdamW updates
(../shared/FACTS.md), subtraction+zigzag stores 0.308 of raw where XOR stores 0.379. Which encoding a chunk
gets is chosen by codec.encode_delta on a sample.
"""

from __future__ import annotations

import numpy as np

XOR = "xor"
SUB = "sub"
KINDS = (XOR, SUB)

_UINT: dict[int, type[np.unsignedinteger]] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def supports(width: int, nbytes: int) -> bool:
    return width in _UINT and nbytes % width == 0


def forward(kind: str, child, base, width: int) -> np.ndarray:
    """The delta of `child` against `base` as a uint8 array of the same length (three passes, one scratch
    array: this runs on every byte a commit delta-codes)."""
    ut = _UINT[width]
    c = np.frombuffer(child, dtype=ut)
    b = np.frombuffer(base, dtype=ut)
    if kind == XOR:
        return np.bitwise_xor(c, b).view(np.uint8)
    d = np.subtract(c, b)  # wrapping
    sign = np.right_shift(d.view(np.dtype(f"i{width}")), 8 * width - 1)  # arithmetic: 0 or all ones
    np.left_shift(d, ut(1), out=d)
    np.bitwise_xor(d, sign.view(ut), out=d)  # zigzag: (d << 1) ^ (d >> bits-1)
    return d.view(np.uint8)


def inverse(kind: str, delta, base, width: int, inplace: bool = False) -> bytearray:
    """`child` from its delta and the base (bytes of the same length). No temporaries beyond one scratch
    array: this runs once per link of a delta chain on every read. With `inplace` the result overwrites
    `delta` (a bytearray the caller owns, returned), which saves allocating and faulting in a second buffer."""
    ut = _UINT[width]
    z = np.frombuffer(delta, dtype=ut)
    b = np.frombuffer(base, dtype=ut)
    if inplace and isinstance(delta, bytearray):
        out = delta
    else:
        out = bytearray(len(delta))
    o = np.frombuffer(out, dtype=ut)
    if kind == XOR:
        np.bitwise_xor(z, b, out=o)
        return out
    sign = np.bitwise_and(z, ut(1))
    np.negative(sign, out=sign)  # 0 or all ones (wrapping)
    np.right_shift(z, ut(1), out=o)
    np.bitwise_xor(o, sign, out=o)  # un-zigzag
    np.add(o, b, out=o)  # wrapping addition
    return out


def predict(b1, b2, width: int) -> np.ndarray:
    """The linear prediction 2*b1 - b2 of the bit patterns (wrapping), as uint8: a tensor moving steadily
    (weight decay on rows no gradient touched) is predicted almost exactly from its last two values."""
    ut = _UINT[width]
    p = np.frombuffer(b1, dtype=ut)
    q = np.frombuffer(b2, dtype=ut)
    return (p + (p - q)).view(np.uint8)


def sparse(child, base, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask of changed elements, zigzag differences of just those as uint8) for sparse updates."""
    ut = _UINT[width]
    c = np.frombuffer(child, dtype=ut)
    b = np.frombuffer(base, dtype=ut)
    mask = c != b
    z = forward(SUB, c[mask], b[mask], width)
    return mask, z


def unsparse(mask: np.ndarray, values, base, width: int) -> bytearray:
    ut = _UINT[width]
    out = bytearray(base)
    o = np.frombuffer(out, dtype=ut)
    if mask.any():
        changed = inverse(SUB, values, o[mask].tobytes(), width)
        o[mask] = np.frombuffer(changed, dtype=ut)
    return out
