"""Integer and packed encodings: every value fits or the write is refused; NaN stays NaN."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xarray_zarrwrite._encoding import complete_fill, encode_variable
from xarray_zarrwrite.codecs.cf import check_packed_values, needs_range_check
from xarray_zarrwrite.errors import PackingError
from xarray_zarrwrite.testing.snapshot import snapshot

DTYPES = ["int8", "int16", "int32", "uint8", "uint16"]


def roundtrip(x: np.ndarray, enc: dict) -> np.ndarray:
    """Encode with xarray's own CF encoders, as the write path does, and decode as readers do."""
    var = xr.Variable(("x",), x, encoding=dict(enc))
    with warnings.catch_warnings():  # no NaN gets here without a fill value: checked
        warnings.filterwarnings("ignore", message=".*without any _FillValue")
        encoded = encode_variable(var, "v", 3)
    assert encoded.dtype == np.dtype(enc["dtype"])
    return xr.decode_cf(xr.Dataset({"v": encoded})).v.values


def expect_refused(x: np.ndarray, enc: dict) -> bool:
    """An independent statement of when a value cannot be stored."""
    info = np.iinfo(np.dtype(enc["dtype"]))
    fill = enc.get("_FillValue")
    if np.isnan(x).any() and fill is None:
        return True
    with np.errstate(invalid="ignore", over="ignore"):
        codes = np.around((x - enc["add_offset"]) / enc["scale_factor"])
    finite = codes[np.isfinite(codes)]
    return bool(((finite < info.min) | (finite > info.max) | (finite == fill)).any())


@st.composite
def packed_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    info = np.iinfo(dtype)
    scale = draw(st.floats(1e-3, 1e3)) * draw(st.sampled_from([1.0, -1.0]))
    offset = draw(st.floats(-1e6, 1e6))
    fill = draw(st.sampled_from([None, int(info.min), int(info.max), 0]))
    enc = {"dtype": np.dtype(dtype), "scale_factor": scale, "add_offset": offset}
    if fill is not None:
        enc["_FillValue"] = fill
    # values around the representable range, so both outcomes are drawn often
    span = abs(scale) * (int(info.max) - int(info.min))
    lo = offset + scale * int(info.min) if scale > 0 else offset + scale * int(info.max)
    elements = st.one_of(
        st.floats(lo - 0.1 * span, lo + 1.1 * span),
        st.just(np.nan),
        st.floats(-1e12, 1e12),
    )
    x = draw(arrays(np.float64, st.integers(1, 12), elements=elements))
    return x, enc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packed_case())
def test_checked_values_round_trip_or_are_refused(case):
    x, enc = case
    try:
        out = check_packed_values(x, enc, name="v")
    except PackingError:
        assert expect_refused(x, enc)
        return
    assert not expect_refused(x, enc)
    back = roundtrip(out, enc)
    nan = np.isnan(x)
    np.testing.assert_array_equal(np.isnan(back), nan)  # NaN never becomes a number
    tol = abs(enc["scale_factor"]) / 2 * (1 + 1e-6) + 1e-9 * np.abs(x[~nan])
    assert (np.abs(back[~nan] - x[~nan]) <= tol).all()


@settings(max_examples=200, deadline=None)
@given(packed_case())
def test_clipped_values_are_stored_in_range(case):
    x, enc = case
    if "_FillValue" not in enc:
        enc["_FillValue"] = int(np.iinfo(enc["dtype"]).min)
    try:
        out = check_packed_values(x, enc, "clip", name="v")
    except PackingError:
        assert expect_refused(x, enc)  # e.g. a value clipped onto an interior fill value
        return
    assert not expect_refused(out, enc)
    back = roundtrip(out, enc)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(x))


def test_integer_data_is_compared_exactly():
    enc = {"dtype": np.dtype("int16")}
    check_packed_values(np.array([-32768, 32767], dtype="int64"), enc)
    with pytest.raises(PackingError):
        check_packed_values(np.array([32768], dtype="int64"), enc)
    with pytest.raises(PackingError):  # the fill value would read back as missing
        check_packed_values(np.array([7], dtype="int64"), {**enc, "_FillValue": 7})
    big = np.array([2**62 + 1], dtype="int64")
    check_packed_values(big, {"dtype": np.dtype("int64")})
    out = check_packed_values(np.array([300, -5], dtype="int64"), {"dtype": "uint8"}, "clip")
    np.testing.assert_array_equal(out, [255, 0])


def test_nan_without_fill_value_is_refused_and_infinities_always():
    with pytest.raises(PackingError, match="no _FillValue"):
        check_packed_values(np.array([1.0, np.nan]), {"dtype": "int16", "scale_factor": 0.1})
    with pytest.raises(PackingError, match="infinities"):
        check_packed_values(np.array([np.inf]), {"dtype": "int16", "_FillValue": -1}, "clip")


def test_needs_range_check():
    assert needs_range_check(np.dtype("f4"), {"dtype": np.dtype("i2")})
    assert needs_range_check(np.dtype("i8"), {"dtype": np.dtype("i1")})
    assert needs_range_check(np.dtype("f8"), {"dtype": np.dtype("f4")})
    assert not needs_range_check(np.dtype("f4"), {"dtype": np.dtype("f4")})
    assert not needs_range_check(np.dtype("M8[ns]"), {"dtype": np.dtype("i8")})


def test_complete_fill():
    assert complete_fill(np.dtype("f4"), {"dtype": "int16"})["_FillValue"] == -32768
    assert complete_fill(np.dtype("f4"), {"dtype": "uint8"})["_FillValue"] == 255
    assert complete_fill(np.dtype("f8"), {"missing_value": -999.0})["_FillValue"] == -999.0
    assert "_FillValue" not in complete_fill(np.dtype("i4"), {"dtype": "int16"})
    assert complete_fill(np.dtype("f4"), {"dtype": "i2", "_FillValue": 3})["_FillValue"] == 3


def dataset(values, **encoding) -> xr.Dataset:
    time = pd.date_range("2000-01-01", periods=len(values), freq="D")
    ds = xr.Dataset({"v": ("time", np.asarray(values))}, coords={"time": time})
    ds.v.encoding = encoding
    return ds


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("origin", ["encoding", "inherited"])
def test_write_path_refuses_out_of_range_packing(tmp_path, zarr_format, origin):
    path = tmp_path / "t.zarr"
    packing = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 0.0}
    ds = dataset([1.0, np.nan, 3.0, 4.0])
    if origin == "inherited":
        ds.v.encoding = {**packing, "dtype": np.dtype("int16")}
        ds.fastzarr.to_template(path, zarr_format=zarr_format, chunks={"time": 1})
    else:
        ds.fastzarr.to_template(
            path, zarr_format=zarr_format, chunks={"time": 1}, encoding={"v": packing}
        )
    assert xr.open_zarr(path).v.encoding["_FillValue"] == -32768  # NaN has a place to go
    hot = dataset([1.0, np.nan, 3.0, 400.0])  # 400 / 0.01 does not fit int16
    before = snapshot(path)
    with pytest.raises(PackingError, match="1 value"):
        hot.fastzarr.write_region(path)
    assert snapshot(path) == before
    ds.fastzarr.write_region(path)
    back = xr.open_zarr(path).v.values
    np.testing.assert_allclose(back, ds.v.values, atol=0.005)
    assert np.isnan(back[1]) and back[-1] == pytest.approx(4.0)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_missing_value_without_fill_value(tmp_path, zarr_format):
    path = tmp_path / "t.zarr"
    ds = dataset([1.0, np.nan, 3.0, -999.5, 5.0], missing_value=-999.0)
    full = dataset([np.nan] * 6)
    ds.fastzarr.to_template(
        path, global_end=full.time[-1].values, chunks={"time": 1}, zarr_format=zarr_format
    )
    assert np.isnan(xr.open_zarr(path).v.values).all()  # unwritten reads as missing
    ds.fastzarr.write_region(path)
    back = xr.open_zarr(path).load()
    np.testing.assert_array_equal(back.v.values[:5], ds.v.values)
    assert np.isnan(back.v.values[5])
