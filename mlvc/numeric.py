"""Exact numbers from stored tensor bytes, and correctly rounded casts back.

`to_float64` turns the little-endian bytes of any stored float dtype into float64 without losing anything:
every F32, F16, BF16, F8_E4M3 and F8_E5M2 value is exactly representable in float64. BF16 is widened with the
uint16 << 16 -> float32 bit trick; the two fp8 formats go through 256-entry lookup tables built here from
their bit layouts. No dependency beyond numpy (ml_dtypes is only used by the tests, to check these tables).

`from_float64` rounds float64 back to a stored dtype with round-to-nearest, ties-to-even, in one rounding
step (no double rounding through float32):
- F32 and F16: numpy's casts (they round float64 directly).
- BF16: float64 -> float32 with round-to-odd, then float32 -> bf16 round-to-nearest-even on the bits; the
  odd intermediate keeps enough information that the second rounding equals a direct one.
  (ml_dtypes and torch round float64 -> bf16 through float32 and can be off by one ulp at ties.)
- F8_E4M3 (the "fn" variant: no infinity, max 448) and F8_E5M2: nearest table value, ties to the even code.
  E5M2 overflows to +-inf like IEEE; E4M3 saturates finite overflow to +-448, as torch does, and maps
  +-inf and NaN to NaN.
NaN becomes a quiet NaN with its sign kept.

Integer and bool dtypes are returned as their own numpy integer type by `as_numbers` (exact comparisons;
BOOL as uint8, so every stored byte counts: mlvc/dtypes.py); `to_float64` on them is exact up to 2**53.
Which dtypes exist, their sizes and kinds come from the one table in mlvc/dtypes.py.
"""

from __future__ import annotations

import numpy as np

from .dtypes import DTYPES, FLOAT_DTYPES, INT_DTYPES, is_float, is_numeric  # noqa: F401 (re-exported)

# dtype -> the numpy type its elements are read as (every dtype but BF16 and the fp8 pair; BOOL as uint8)
_PLAIN = {name: d.numbers for name, d in DTYPES.items() if d.numbers is not None}


def _fp8_table(exp_bits: int, man_bits: int, bias: int, fn: bool) -> np.ndarray:
    """float64 value of each of the 256 codes of an fp8 format (fn: no infinity, only S.1111.111 is NaN)."""
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    e = (codes >> man_bits) & ((1 << exp_bits) - 1)
    m = codes & ((1 << man_bits) - 1)
    frac = m / float(1 << man_bits)
    sub = frac * 2.0 ** (1 - bias)
    norm = (1.0 + frac) * np.exp2((e - bias).astype(np.float64))
    out = sign * np.where(e == 0, sub, norm)
    top = (1 << exp_bits) - 1
    nan = (e == top) & (m == (1 << man_bits) - 1) if fn else (e == top) & (m != 0)
    if not fn:
        inf = (e == top) & (m == 0)
        out[inf] = sign[inf] * np.inf
    out[nan] = np.copysign(np.nan, sign[nan])
    return out


_FP8 = {
    "F8_E4M3": _fp8_table(4, 3, 7, fn=True),
    "F8_E5M2": _fp8_table(5, 2, 15, fn=False),
}


def _fp8_encoder(dtype: str):
    """(sorted non-negative finite values, their codes) for nearest-value rounding."""
    table = _FP8[dtype]
    pos = np.arange(128)
    finite = pos[np.isfinite(table[:128])]
    order = np.argsort(table[finite], kind="stable")
    return table[finite][order], finite[order].astype(np.uint8)


_FP8_ENC = {k: _fp8_encoder(k) for k in _FP8}


def as_numbers(raw, dtype: str) -> np.ndarray:
    """The elements of little-endian bytes: float64 for float dtypes, the native integer type otherwise."""
    buf = memoryview(raw).cast("B") if not isinstance(raw, np.ndarray) else raw.reshape(-1).view(np.uint8)
    if dtype in _FP8:
        return _FP8[dtype][np.frombuffer(buf, dtype=np.uint8)]
    if dtype == "BF16":
        bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        with np.errstate(invalid="ignore"):  # signalling NaN patterns widen quietly
            return bits.view(np.float32).astype(np.float64)
    if dtype in ("F32", "F16"):
        with np.errstate(invalid="ignore"):
            return np.frombuffer(buf, dtype=_PLAIN[dtype]).astype(np.float64)
    if dtype in _PLAIN:
        return np.frombuffer(buf, dtype=_PLAIN[dtype])
    raise KeyError(dtype)


def to_float64(raw, dtype: str) -> np.ndarray:
    """The elements as float64 (exact for every float dtype; integers exact up to 2**53)."""
    a = as_numbers(raw, dtype)
    return a if a.dtype == np.float64 else a.astype(np.float64)


def _round_to_odd_f32(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounding to odd: an inexact result always has an odd last bit."""
    with np.errstate(over="ignore"):
        f = x.astype(np.float32)
    back = f.astype(np.float64)
    bits = f.view(np.uint32).copy()
    fix = (back != x) & ~np.isnan(x) & ((bits & 1) == 0)
    if fix.any():
        down = np.abs(back) > np.abs(x)
        bits[fix & down] -= 1
        bits[fix & ~down] += 1
    return bits.view(np.float32)


def f32_to_bf16_bits(f: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even, as torch's .to(torch.bfloat16) does;
    NaN stays a quiet NaN with its sign."""
    f = np.asarray(f, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return r


def _to_fp8_codes(x: np.ndarray, dtype: str) -> np.ndarray:
    values, codes = _FP8_ENC[dtype]
    mag = np.abs(x)
    idx = np.clip(np.searchsorted(values, mag, side="left"), 1, len(values) - 1)
    lo, hi = values[idx - 1], values[idx]
    mid = (lo + hi) / 2  # exact in float64
    take_hi = (mag > mid) | ((mag == mid) & ((codes[idx] & 1) == 0))
    out = np.where(take_hi, codes[idx], codes[idx - 1]).astype(np.uint8)
    out[mag <= values[0]] = codes[0]
    top = values[-1]
    if dtype == "F8_E5M2":
        step = values[-1] - values[-2]
        over = mag >= top + step / 2  # the tie goes to the even code, which is inf
        out[over] = 0x7C
        out[np.isinf(x)] = 0x7C
        nan_code = 0x7F
    else:  # E4M3 ("fn"): no infinity; finite overflow saturates, inf and NaN become NaN
        out[(mag > top) & np.isfinite(x)] = codes[-1]
        out[np.isinf(x)] = 0x7F
        nan_code = 0x7F
    out[np.isnan(x)] = nan_code
    out |= np.where(np.signbit(x), np.uint8(0x80), np.uint8(0))
    return out


def from_float64(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values rounded (nearest, ties to even) to a float dtype, as a little-endian array of it
    (uint8/uint16 bit patterns for fp8/bf16). Integer dtypes are not supported here on purpose."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "F64":
            return x.astype("<f8")
        if dtype in ("F32", "F16"):
            return x.astype(_PLAIN[dtype])
        if dtype == "BF16":
            return f32_to_bf16_bits(_round_to_odd_f32(x)).astype("<u2")
        if dtype in _FP8:
            return _to_fp8_codes(x, dtype)
    raise TypeError(f"cannot round float64 to {dtype}: arithmetic on it is not defined")
