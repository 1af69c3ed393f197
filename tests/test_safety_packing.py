"""Integer and packed encodings: every value fits or the write is refused; NaN stays NaN."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _packed_sources import DAYS, assert_within, decoded, write_sources
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xarray_zarrwrite import StreamWriter
from xarray_zarrwrite._dask import RegionTarget, range_checked
from xarray_zarrwrite._encoding import complete_fill, encode_variable
from xarray_zarrwrite._open import load_template, load_template_with_root
from xarray_zarrwrite._store import resolve_store
from xarray_zarrwrite.codecs.cf import check_packed_values, needs_range_check, storable_range
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


# --- sources with their own packing (CDS/ERA5 int16, per-file scale_factor/add_offset) -----


def _open(path: str, how: str) -> xr.Dataset:
    """A source as the write path gets it: NumPy, or lazily through dask."""
    ds = xr.open_dataset(path, chunks={"time": -1} if how == "dask" else None)
    return ds if how == "dask" else ds.load()


def _write(ds: xr.Dataset, store, how: str) -> None:
    if how == "stream":
        with StreamWriter(store) as w:
            w.write(ds).result()
    elif how == "dask":
        ds.fastzarr.write_region(store, compute=False).compute()
    else:
        ds.fastzarr.write_region(store)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("how", ["blocking", "dask", "stream"])
def test_each_source_decoded_with_its_own_packing(tmp_path, zarr_format, how):
    paths = write_sources(tmp_path)
    store = tmp_path / "t.zarr"
    expected = decoded(paths)
    with xr.open_dataset(paths[0]) as first:
        first.fastzarr.to_template(
            store,
            global_end=expected.time.values[-1],
            chunks={"time": DAYS},
            packing={"t2m": {"bits": 16, "valid_range": (190.0, 330.0)}},
            zarr_format=zarr_format,
        )
    for path in paths[::-1]:
        ds = _open(path, how)
        _write(ds, store, how)
        ds.close()
    back = xr.open_zarr(store)
    scale = back.t2m.encoding["scale_factor"]
    assert scale == pytest.approx(140.0 / 65534)
    assert_within(back.t2m.load(), expected.t2m, scale / 2 * (1 + 1e-9))


@pytest.mark.parametrize("how", ["blocking", "dask", "stream"])
def test_inherited_packing_refuses_a_wider_source(tmp_path, how):
    paths = write_sources(tmp_path)
    store = tmp_path / "t.zarr"
    expected = decoded(paths)
    with xr.open_dataset(paths[0]) as first:  # inherits the first file's packing: 250..300
        first.fastzarr.to_template(store, global_end=expected.time.values[-1], chunks={"time": 1})
    before = snapshot(store)
    ds = _open(paths[1], how)
    with pytest.raises(PackingError, match="fall outside its packing range"):
        _write(ds, store, how)
    ds.close()
    assert snapshot(store) == before
    for path in (paths[0], paths[2]):  # these fit, NaN included
        ds = _open(path, how)
        _write(ds, store, how)
        ds.close()
    back = xr.open_zarr(store).t2m.load()
    scale = back.encoding["scale_factor"]
    for k in (0, 2):
        part = back.isel(time=slice(DAYS * k, DAYS * (k + 1)))
        assert_within(part, expected.t2m.isel(time=slice(DAYS * k, DAYS * (k + 1))), scale / 2)
    assert np.isnan(back.isel(time=slice(DAYS, 2 * DAYS)).values).all()  # never written


@pytest.mark.parametrize("how", ["blocking", "dask"])
def test_clip_stores_a_wider_source_at_the_range_limits(tmp_path, how):
    paths = write_sources(tmp_path)
    store = tmp_path / "t.zarr"
    expected = decoded(paths)
    with xr.open_dataset(paths[0]) as first:
        first.fastzarr.to_template(store, global_end=expected.time.values[-1], chunks={"time": 1})
    ds = _open(paths[1], how)
    res = ds.fastzarr.write_region(store, on_out_of_range="clip", compute=how != "dask")
    if how == "dask":
        res.compute()
    ds.close()
    back = xr.open_zarr(store).t2m.isel(time=slice(DAYS, 2 * DAYS)).load()
    want = expected.t2m.isel(time=slice(DAYS, 2 * DAYS))
    lo, hi = storable_range(back.encoding)  # the inherited packing's limits
    assert 249.99 < lo < 250.0 and 300.0 < hi < 300.01
    assert_within(back, want.clip(lo, hi), back.encoding["scale_factor"] / 2 * (1 + 1e-9))


# --- dask writes are all-or-nothing: every block is checked before any is stored ----------


def _dask_template(path, n: int = 24) -> xr.Dataset:
    ds = dataset(np.arange(n) * 1.0)
    ds["w"] = ds.v * 2  # stored as floats: nothing to check
    ds.fastzarr.to_template(
        path, chunks={"time": 2}, encoding={"v": {"dtype": "int16", "scale_factor": 0.01}}
    )
    return ds


def _store_checked(path, values: np.ndarray, on_out_of_range="raise") -> None:
    """What the dask write path does, with the range pre-pass: RegionTarget per block."""
    import dask.array as da

    store = resolve_store(str(path))
    info, root = load_template_with_root(store)
    data = da.from_array(values, chunks=2)
    sources = range_checked([data], ["v"], info, on_out_of_range)
    target = RegionTarget(store, "v", root, (values.size,), np.dtype("i2"), on_out_of_range)
    da.store(sources, [target], regions=[(slice(0, values.size),)], lock=False)


@pytest.mark.parametrize("pos", [0, 11, 23])
@pytest.mark.parametrize("bad", [1e6, np.inf])
def test_range_checked_dask_store_writes_nothing_on_a_bad_block(tmp_path, pos, bad):
    path = tmp_path / "t.zarr"
    ds = _dask_template(path)
    values = ds.v.values.copy()
    values[pos] = bad
    before = snapshot(path)
    for mode in ("raise", "clip"):
        if mode == "clip" and np.isfinite(bad):
            continue  # clipped: stored, see below
        with pytest.raises(PackingError):
            _store_checked(path, values, mode)
        assert snapshot(path) == before
    _store_checked(path, ds.v.values)
    back = xr.open_zarr(path).v.values
    np.testing.assert_allclose(back, ds.v.values, atol=0.005)
    assert back[-1] == pytest.approx(23.0)


def test_range_checked_clips_and_leaves_unchecked_data_alone(tmp_path):
    import dask.array as da

    path = tmp_path / "t.zarr"
    ds = _dask_template(path)
    values = ds.v.values.copy()
    values[-1] = 1e6
    _store_checked(path, values, "clip")
    back = xr.open_zarr(path).v.values
    assert back[-1] == pytest.approx(327.67) and back[0] == 0.0
    info = load_template(resolve_store(str(path)))
    floats = da.from_array(np.arange(24.0), chunks=2)
    assert range_checked([floats], ["w"], info)[0] is floats  # nothing to check


@pytest.mark.parametrize("compute", [True, False])
def test_dask_write_region_is_all_or_nothing(tmp_path, compute):
    path = tmp_path / "t.zarr"
    ds = _dask_template(path)
    values = ds.v.values.copy()
    values[-1] = 1e6  # the last block only
    bad = ds.copy()
    bad["v"] = bad.v.copy(data=values).chunk({"time": 2})
    before = snapshot(path)
    # in block order (deterministic): without the pre-pass the first blocks would be stored
    with dask.config.set(scheduler="synchronous"), pytest.raises(PackingError):
        res = bad.fastzarr.write_region(path, compute=compute)
        if not compute:
            res.compute()
    assert snapshot(path) == before


def test_valid_range_allows_half_a_quantum_of_rounding_only_when_packed():
    enc = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 0.0, "_FillValue": -32768}
    enc = {**enc, "valid_min": -100.0, "valid_max": 100.0}
    ok = np.array([-100.004, 100.004, 100.0])  # a source's own decoding may land here
    np.testing.assert_array_equal(check_packed_values(ok, enc), ok)
    assert np.allclose(
        roundtrip(ok, {k: enc[k] for k in enc if "valid" not in k}), [-100, 100, 100]
    )
    with pytest.raises(PackingError, match="1 value"):
        check_packed_values(np.array([0.0, 100.006]), enc)
    exact = {"dtype": "float32", "valid_min": 0.0, "valid_max": 1.0}
    with pytest.raises(PackingError):
        check_packed_values(np.array([1.0 + 1e-9]), exact)
