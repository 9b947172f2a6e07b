"""mlvc/dtypes.py, the one dtype table, against the libraries it names: the safetensors library's own dtype
names, numpy (and ml_dtypes), torch. docs/format.md's copy of the table is checked by test_spec_conformance."""

from __future__ import annotations

import json
import math
import struct

import ml_dtypes  # noqa: F401  (a test dependency: numpy_dtype gives the real bf16/fp8 types with it)
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlvc import dtypes, numeric


def _header_dtype(data: bytes, name: str = "x") -> str:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])[name]["dtype"]


@pytest.mark.parametrize("name", list(dtypes.DTYPES))
def test_numpy_side(name):
    d = dtypes.DTYPES[name]
    dt = dtypes.numpy_dtype(name)
    assert dt.itemsize == d.itemsize == dtypes.plane_width(name) == dtypes.ITEMSIZE[name]
    assert dtypes.from_numpy(dt) == name
    assert dt.byteorder in ("<", "|", "=")
    assert d.bits == np.dtype(f"<u{d.itemsize}")
    if d.kind == dtypes.FLOAT:
        assert np.issubdtype(dt, np.floating) or dt.name == d.ml_dtypes
    elif d.kind == dtypes.SIGNED:
        assert np.issubdtype(dt, np.signedinteger)
    elif d.kind == dtypes.UNSIGNED:
        assert np.issubdtype(dt, np.unsignedinteger)
    else:
        assert dt == np.dtype(bool)


@pytest.mark.parametrize("name", [n for n, d in dtypes.DTYPES.items() if d.numpy])
def test_safetensors_library_names_numpy_types_the_same(name):
    from safetensors.numpy import save

    assert _header_dtype(save({"x": np.zeros(3, dtypes.numpy_dtype(name))})) == name


@pytest.mark.parametrize("name", list(dtypes.DTYPES))
def test_torch_side(name, torch):
    d = dtypes.DTYPES[name]
    try:
        tdt = dtypes.torch_dtype(name)
    except AttributeError:
        pytest.skip(f"this torch has no {d.torch}")
    assert tdt.itemsize == d.itemsize
    assert dtypes.from_torch(tdt) == name
    assert tdt.is_floating_point == (d.kind == dtypes.FLOAT)
    assert tdt.is_signed == (d.kind in (dtypes.FLOAT, dtypes.SIGNED))
    from safetensors.torch import save

    assert _header_dtype(save({"x": torch.zeros(3, dtype=tdt)})) == name


def test_numbers_read_every_byte():
    """Arithmetic (numeric.as_numbers) reads each element exactly: BOOL as its byte, integers as themselves."""
    assert numeric.as_numbers(bytes([0, 1, 7, 255]), "BOOL").tolist() == [0, 1, 7, 255]
    assert numeric.as_numbers(np.array([-3, 4], "<i2").tobytes(), "I16").tolist() == [-3, 4]
    for name, d in dtypes.DTYPES.items():
        raw = np.arange(2 * d.itemsize, dtype=np.uint8).tobytes()
        assert len(numeric.as_numbers(raw, name)) == 2, name


def test_kinds_and_helpers():
    assert dtypes.FLOAT_DTYPES == ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
    assert set(dtypes.INT_DTYPES) == set(dtypes.DTYPES) - set(dtypes.FLOAT_DTYPES)
    assert dtypes.is_float("BF16") and not dtypes.is_float("BOOL") and not dtypes.is_float("F4")
    assert dtypes.is_numeric("BOOL") and not dtypes.is_numeric("F4")
    assert dtypes.plane_width("F4") == 1  # unknown names are stored as bytes
    with pytest.raises(KeyError):
        dtypes.numpy_dtype("F4")
    for ok in ("F32", "F4", "X_1", "A" * 32):
        assert dtypes.is_dtype_name(ok)
    for bad in ("f32", "1F", "", "A" * 33, "F-8", None, 3):
        assert not dtypes.is_dtype_name(bad)


@pytest.mark.parametrize("shape,count", [
    ([2, 3], 6), ([], 1), ([0, 5], 0), ([7], 7), ([2**31, 2**31], 2**62), ([0, 2**62], 0),
    ([2**62, 2**62], dtypes.TOO_BIG), ([10**6] * 64, dtypes.TOO_BIG), ([2**62, 2**62, 0], dtypes.TOO_BIG),
    ([1] * 65, dtypes.NOT_A_SHAPE), ([2, -1], dtypes.NOT_A_SHAPE), ([2, True], dtypes.NOT_A_SHAPE),
    ([2.0], dtypes.NOT_A_SHAPE), ((2, 3), dtypes.NOT_A_SHAPE), ("23", dtypes.NOT_A_SHAPE), (None, dtypes.NOT_A_SHAPE),
])
def test_elements(shape, count):
    assert dtypes.elements(shape) == count


@given(st.lists(st.one_of(st.integers(0, 2**40), st.integers(-3, -1), st.booleans(), st.floats()), max_size=70))
def test_elements_is_every_shape_check_in_one_walk(shape):
    valid = len(shape) <= dtypes.MAX_RANK and all(type(x) is int and x >= 0 for x in shape)
    got = dtypes.elements(shape)
    if not valid:
        assert got in (dtypes.NOT_A_SHAPE, dtypes.TOO_BIG)  # a walk may meet an overflow before a bad dim
        assert got == dtypes.NOT_A_SHAPE or not dtypes.dims_fit([x for x in shape if type(x) is int and x > 0])
    elif not dtypes.dims_fit(shape):
        assert got == dtypes.TOO_BIG
    else:
        assert got == math.prod(shape)


def test_dims_fit():
    assert dtypes.dims_fit([]) and dtypes.dims_fit([2**31, 2**31]) and dtypes.dims_fit([0, 2**62])
    assert not dtypes.dims_fit([2**32, 2**31]) and not dtypes.dims_fit([2**62, 2**62, 0])
