"""mlvc.numeric: exact widening of every stored float dtype to float64, and single-step rounding back."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from mlvc import numeric
from weights_util import nearest

SMALL = {
    "BF16": (ml_dtypes.bfloat16, np.uint16),
    "F8_E4M3": (ml_dtypes.float8_e4m3fn, np.uint8),
    "F8_E5M2": (ml_dtypes.float8_e5m2, np.uint8),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_code_widens_like_ml_dtypes(name):
    mltype, bits = SMALL[name]
    codes = np.arange(np.iinfo(bits).max + 1, dtype=bits)
    with np.errstate(invalid="ignore"):
        ref = codes.view(mltype).astype(np.float64)
    got = numeric.to_float64(codes.tobytes(), name)
    assert np.array_equal(got, ref, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(ref))


def test_plain_dtypes_widen_exactly():
    x = np.array([1.5, -0.0, np.inf, 65504, 6e-8], dtype=np.float16)
    assert np.array_equal(numeric.to_float64(x.tobytes(), "F16"), x.astype(np.float64))
    y = np.array([np.pi, -1e-45, 3.4e38], dtype=np.float32)
    assert np.array_equal(numeric.to_float64(y.tobytes(), "F32"), y.astype(np.float64))
    i = np.array([-(2**40), 7], dtype=np.int64)
    assert numeric.as_numbers(i.tobytes(), "I64").dtype == np.int64


def _samples(mltype) -> np.ndarray:
    rng = np.random.default_rng(7)
    codes = np.arange(256 if mltype != ml_dtypes.bfloat16 else 65536,
                      dtype=np.uint8 if mltype != ml_dtypes.bfloat16 else np.uint16)
    with np.errstate(invalid="ignore"):
        finite = np.unique(codes.view(mltype).astype(np.float64))
    finite = finite[np.isfinite(finite)]
    mids = (finite[1:] + finite[:-1]) / 2  # exact ties
    pick = rng.choice(len(mids), size=min(len(mids), 300), replace=False)
    top = finite.max()
    rand = rng.uniform(-top, top, 300) * rng.choice([1, 1e-3, 1e-6], 300)
    return np.concatenate([mids[pick], np.nextafter(mids[pick], np.inf), np.nextafter(mids[pick], -np.inf), rand])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_rounding_is_nearest_ties_to_even(name):
    mltype, bits = SMALL[name]
    x = _samples(mltype)
    x = x[np.abs(x) <= float(ml_dtypes.finfo(mltype).max)]
    assert np.array_equal(numeric.from_float64(x, name), nearest(x, mltype, bits))


def test_bf16_has_no_double_rounding():
    # 1 + 2**-8 is the tie between 1 and the next bf16; 2**-40 above it must round up. Through float32 the
    # 2**-40 is lost and the tie goes to even (1.0): ml_dtypes and torch both give 1.0 here.
    x = np.array([1 + 2**-8 + 2**-40, -(1 + 2**-8 + 2**-40), 1 + 2**-8])
    got = numeric.from_float64(x, "BF16").view(ml_dtypes.bfloat16).astype(np.float64)
    assert list(got) == [1 + 2**-7, -(1 + 2**-7), 1.0]


def test_f16_is_rounded_once():
    x = np.array([1 + 2**-11 + 2**-40])
    assert numeric.from_float64(x, "F16").astype(np.float64)[0] == 1 + 2**-10


def test_overflow_nan_and_signed_zero():
    x = np.array([1e6, -1e6, np.inf, -np.inf, np.nan, -0.0, 61440.0, 57344.0])
    e5 = numeric.from_float64(x, "F8_E5M2").view(ml_dtypes.float8_e5m2).astype(np.float64)
    assert list(e5[:4]) == [np.inf, -np.inf, np.inf, -np.inf]
    assert np.isnan(e5[4]) and e5[5] == 0 and np.signbit(e5[5])
    assert e5[6] == np.inf and e5[7] == 57344.0  # the tie above the largest finite value goes to inf
    e4 = numeric.from_float64(x, "F8_E4M3").view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    assert list(e4[:2]) == [448.0, -448.0]  # saturates, like torch
    assert np.isnan(e4[2]) and np.isnan(e4[3]) and np.isnan(e4[4])
    bf = numeric.from_float64(np.array([np.nan, -np.nan, 1e39, -1e39]), "BF16")
    assert bf[0] & 0x7FC0 == 0x7FC0 and bf[1] >> 15 == 1
    assert list(bf.view(ml_dtypes.bfloat16).astype(np.float64)[2:]) == [np.inf, -np.inf]


def test_integers_are_not_rounded_silently():
    with pytest.raises(TypeError):
        numeric.from_float64(np.array([1.5]), "I32")
