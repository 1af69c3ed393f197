"""Region writes: read back bit for bit, validation before any byte, alignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite.errors import (
    DimensionMismatchError,
    DtypeCastError,
    InvalidNameError,
    ReadOnlyStoreError,
    RegionAlignmentError,
    RegionError,
    RegionLabelError,
    TemplateNotFoundError,
    TimeEncodingError,
    VariableNotInTemplateError,
    ZarrWriteError,
)
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot

MONTHS = pd.date_range("2000-01-01", "2001-01-01", freq="MS")


def make_template(year, path, chunks=None, **kw):
    chunks = chunks or {"time": 1, "lat": 6, "lon": 12}
    year.isel(time=slice(0, 31)).fastzarr.to_template(
        path, global_end="2000-12-31", chunks=chunks, **kw
    )


def months(year):
    for a, b in zip(MONTHS[:-1], MONTHS[1:], strict=True):
        yield year.sel(time=slice(a, b - pd.Timedelta(days=1)))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_monthly_writes_read_back_bit_for_bit(tmp_path, year, zarr_format):
    path = tmp_path / "a.zarr"
    make_template(year, path, zarr_format=zarr_format)
    for month in months(year):
        res = month.fastzarr.write_region(path)
        assert res.variables == ("t2m", "tcwv")
        assert res.nbytes == month.t2m.nbytes + month.tcwv.nbytes
        assert res.nchunks == 2 * month.sizes["time"] * 2 * 2
    back = xr.open_zarr(path).load()
    xr.testing.assert_identical(back, year)
    # the last index of every dimension, explicitly
    assert back.t2m[-1, -1, -1].values == year.t2m[-1, -1, -1].values
    raw = zarr.open_array(path / "t2m")
    np.testing.assert_array_equal(raw[...], year.t2m.values)


def test_memory_url_and_store_objects(year, memory_url):
    make_template(year, memory_url)
    year.fastzarr.write_region(memory_url)
    xr.testing.assert_identical(xr.open_zarr(memory_url).load(), year)
    store = MemoryStore()
    make_template(year, store)
    year.isel(time=slice(31, 60)).fastzarr.write_region(store)
    back = xr.open_zarr(store).load()
    xr.testing.assert_identical(back.isel(time=slice(31, 60)), year.isel(time=slice(31, 60)))
    assert back.t2m.isel(time=slice(0, 31)).isnull().all()


def test_explicit_region_and_unindexed_dims(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    part = year.isel(time=slice(60, 91))
    xzw.write_region(part.drop_vars(["time", "lat"]), path, region={"time": slice(60, 91)})
    back = xr.open_zarr(path).load()
    xr.testing.assert_identical(back.isel(time=slice(60, 91)), part)


def test_explicit_region_labels_are_checked(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    before = snapshot(path)
    with pytest.raises(RegionLabelError, match="holds template label"):
        year.isel(time=slice(60, 91)).fastzarr.write_region(path, region={"time": slice(61, 92)})
    with pytest.raises(RegionError, match="outside"):
        year.isel(time=slice(0, 31)).fastzarr.write_region(path, region={"time": slice(350, 381)})
    with pytest.raises(RegionError, match="step 1"):
        year.isel(time=slice(0, 31)).fastzarr.write_region(path, region={"time": slice(0, 62, 2)})
    assert snapshot(path) == before


def _shift(ds, **kw):
    return ds.assign_coords(time=ds.time.values + pd.Timedelta(**kw))


BAD_LABELS = {
    "off-grid": (lambda m: _shift(m.isel(time=slice(0, 1)), hours=6), "not on the template's axis"),
    "gap": (lambda m: m.isel(time=[0, 2]), "gap"),
    "duplicate": (lambda m: m.isel(time=[0, 0]), "more than once"),
    "unsorted": (lambda m: m.isel(time=[1, 0]), "order"),
    "outside": (lambda m: _shift(m.isel(time=slice(0, 1)), days=400), "not on the template"),
    "lat off-grid": (lambda m: m.assign_coords(lat=m.lat + 0.5), "not on the template"),
    "NaT": (
        lambda m: m.isel(time=slice(0, 1)).assign_coords(time=[np.datetime64("NaT", "ns")]),
        "missing",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_rejected_with_nothing_written(tmp_path, year, case):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    year.isel(time=slice(0, 10)).fastzarr.write_region(path)
    before = snapshot(path)
    mutate, msg = BAD_LABELS[case]
    with pytest.raises(RegionLabelError, match=msg):
        mutate(year.isel(time=slice(100, 110))).fastzarr.write_region(path)
    assert snapshot(path) == before


def test_off_grid_error_names_label_and_neighbours(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    part = year.isel(time=slice(12, 14))
    part = part.assign_coords(
        time=[part.time.values[0], part.time.values[0] + np.timedelta64(6, "h")]
    )
    with pytest.raises(RegionLabelError) as e:
        part.fastzarr.write_region(path)
    assert "2000-01-13 06:00:00" in str(e.value)
    assert "2000-01-13 00:00:00" in str(e.value) and "2000-01-14 00:00:00" in str(e.value)


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_misaligned_region_rejected_with_nothing_written(tmp_path, year, backend):
    path = tmp_path / "a.zarr"
    make_template(year, path, chunks={"time": 10, "lat": 6, "lon": 12})
    before = snapshot(path)
    part = year.isel(time=slice(5, 25))
    if backend == "dask":
        part = part.chunk(time=10)
    with pytest.raises(RegionAlignmentError) as e:
        part.fastzarr.write_region(path)
    msg = str(e.value)
    assert "'t2m'" in msg and "'time'" in msg and "index 5" in msg and "0 and 10" in msg
    assert snapshot(path) == before
    # misaligned dask chunks inside an aligned region
    with pytest.raises(RegionAlignmentError, match="dask chunk"):
        year.isel(time=slice(0, 20)).chunk(time=5).fastzarr.write_region(path)
    assert snapshot(path) == before
    # safe_chunks=False allows it (read-modify-write of the partial chunks)
    part.fastzarr.write_region(path, safe_chunks=False)
    back = xr.open_zarr(path).isel(time=slice(0, 30)).load()
    xr.testing.assert_identical(back.isel(time=slice(5, 25)), year.isel(time=slice(5, 25)))
    assert back.t2m.isel(time=slice(0, 5)).isnull().all()


def test_last_partial_chunk_is_aligned(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path, chunks={"time": 100, "lat": 5, "lon": 24})
    year.isel(time=slice(300, 366)).fastzarr.write_region(path)
    with pytest.raises(RegionAlignmentError, match="300 and 366"):
        year.isel(time=slice(300, 350)).fastzarr.write_region(path)


BAD_DATA = {
    "unknown variable": (lambda m: m.assign(sst=m.t2m), VariableNotInTemplateError),
    "missing dim": (lambda m: m.assign(t2m=m.t2m.isel(lon=0)), DimensionMismatchError),
    "extra dim": (lambda m: m.expand_dims(member=[0]), DimensionMismatchError),
    "unsafe cast": (lambda m: m.assign(t2m=m.t2m.astype("int64")), DtypeCastError),
    "complex": (lambda m: m.assign(t2m=m.t2m.astype("complex64")), DtypeCastError),
    "string": (lambda m: m.assign(t2m=m.t2m.astype(str)), DtypeCastError),
    "bad name": (lambda m: m.rename({"t2m": "../t2m"}), InvalidNameError),
    "time as float": (
        lambda m: m.assign_coords(time=np.arange(m.sizes["time"], dtype=float)),
        TimeEncodingError,
    ),
    "empty": (lambda m: m.isel(time=slice(0, 0)), RegionError),
    "no data vars": (lambda m: m.drop_vars(["t2m", "tcwv"]), RegionError),
    "calendar": (
        lambda m: m.assign_coords(time=m.time.assign_attrs()).pipe(_with_calendar, "noleap"),
        TimeEncodingError,
    ),
    "cftime": (lambda m: m.convert_calendar("noleap"), TimeEncodingError),
}


def _with_calendar(ds, cal):
    ds = ds.copy()
    ds.time.encoding["calendar"] = cal
    return ds


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_rejected_with_nothing_written(tmp_path, year, case):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    before = snapshot(path)
    mutate, error = BAD_DATA[case]
    with pytest.raises(error) as e:
        mutate(year.isel(time=slice(31, 60))).fastzarr.write_region(path)
    assert isinstance(e.value, ZarrWriteError)
    assert snapshot(path) == before


def test_transposed_and_narrowed_data_is_accepted(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    part = year.isel(time=slice(31, 60))
    part.transpose("lon", "lat", "time").astype("float64").fastzarr.write_region(path)
    back = xr.open_zarr(path).isel(time=slice(31, 60)).load()
    xr.testing.assert_identical(back, part)


def test_static_variables_and_coords_are_handled(tmp_path):
    ds = era5_like(periods=62).assign(
        mask=(("lat", "lon"), np.arange(12 * 24, dtype="i2").reshape(12, 24))
    )
    ds = ds.assign_coords(lat_bnds=(("lat", "bnds"), np.zeros((12, 2))))
    path = tmp_path / "a.zarr"
    ds.isel(time=slice(0, 31)).fastzarr.to_template(
        path, global_end=ds.time[-1].values, chunks={"time": 31}
    )
    for part in (ds.isel(time=slice(0, 31)), ds.isel(time=slice(31, 62))):
        res = part.fastzarr.write_region(path)
        assert "mask" in res.variables
    xr.testing.assert_identical(xr.open_zarr(path).load(), ds)


def test_missing_template_and_read_only(tmp_path, year):
    with pytest.raises(TemplateNotFoundError):
        year.fastzarr.write_region(tmp_path / "none")
    path = tmp_path / "a.zarr"
    make_template(year, path)
    ro = zarr.storage.LocalStore(path, read_only=True)
    with pytest.raises(ReadOnlyStoreError):
        year.fastzarr.write_region(ro)


def test_template_changes_are_picked_up(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    year.isel(time=slice(0, 31)).fastzarr.write_region(path)
    # the template is replaced by a longer one: the cache must not serve the old axis
    year2 = era5_like("2000-01-01", 400)
    year2.isel(time=slice(0, 31)).fastzarr.to_template(
        path, global_end=year2.time[-1].values, chunks={"time": 1}, mode="w"
    )
    year2.isel(time=slice(380, 400)).fastzarr.write_region(path)
    xr.testing.assert_identical(
        xr.open_zarr(path).isel(time=slice(380, 400)).load(), year2.isel(time=slice(380, 400))
    )


def test_dask_compute_false_returns_delayed(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path, chunks={"time": 10, "lat": 12, "lon": 24})
    part = year.isel(time=slice(0, 100)).chunk(time=20)
    delayed = part.fastzarr.write_region(path, compute=False)
    assert snapshot(path / "t2m") == {"zarr.json": snapshot(path / "t2m")["zarr.json"]}
    res = delayed.compute()
    assert res.nchunks == 20 and res.variables == ("t2m", "tcwv")
    xr.testing.assert_identical(xr.open_zarr(path).isel(time=slice(0, 100)).load(), part.load())


def test_plan_writes_nothing(tmp_path, year):
    path = tmp_path / "a.zarr"
    make_template(year, path)
    before = snapshot(path)
    p = year.isel(time=slice(31, 60)).fastzarr.plan(path)
    assert p.region["time"] == slice(31, 60)
    assert p.skipped == ("time", "lat", "lon")
    assert snapshot(path) == before


def test_transient_store_faults_are_retried(year):
    from xarray_zarrwrite.testing.faults import FaultyStore

    base = MemoryStore()
    make_template(year, base)
    faulty = FaultyStore(base, rate=0.2, seed=3, ops=("set",))
    with xzw.config.set({"retries": 10, "retry_backoff": 0.001}):
        for month in months(year):
            month.fastzarr.write_region(faulty)
    assert faulty.faults_injected > 50
    xr.testing.assert_identical(xr.open_zarr(base).load(), year)


def test_permanent_store_fault_is_reported(year):
    from xarray_zarrwrite.errors import WriteFailedError
    from xarray_zarrwrite.testing.faults import FaultyStore

    base = MemoryStore()
    make_template(year, base)
    faulty = FaultyStore(base, rate=0.0, permanent_keys=["tcwv/c/40/*"], ops=("set",))
    with pytest.raises(WriteFailedError, match=r"'tcwv' at \[40:41") as e:
        year.isel(time=slice(31, 60)).fastzarr.write_region(faulty)
    assert isinstance(e.value.__cause__, PermissionError)


# -- the template-freshness gate: a replaced template is never written with a stale plan ------

PINNED_TIME = {"time": {"units": "days since 1990-01-01", "calendar": "proleptic_gregorian"}}


# same_metadata: the replacement's metadata documents are identical (units pinned by the user,
# same length); only the stored time labels differ, which the freshness token's label digest sees
@pytest.mark.parametrize("same_metadata", [False, True])
def test_template_replaced_with_another_start_date(year, same_metadata):
    store = MemoryStore()
    chunks = {"time": 1, "lat": 12, "lon": 24}
    jan, feb = year.isel(time=slice(0, 31)), year.isel(time=slice(31, 60))
    # same length and pinned units: only the time labels differ when same_metadata
    end = "2000-04-30" if same_metadata else "2000-05-31"
    jan.fastzarr.to_template(store, global_end="2000-03-30", chunks=chunks, encoding=PINNED_TIME)
    jan.fastzarr.write_region(store)  # caches the first template in this process
    feb.fastzarr.to_template(store, global_end=end, chunks=chunks, encoding=PINNED_TIME, mode="w")
    res = feb.fastzarr.write_region(store)
    assert res.region["time"] == slice(0, 29)
    with pytest.raises(RegionLabelError, match="2000-01-01"):
        jan.fastzarr.write_region(store)  # January is not on the new template's axis
    back = xr.open_zarr(store).load()
    assert back.time.values[0] == feb.time.values[0]
    xr.testing.assert_identical(back.isel(time=slice(0, 29)), feb)
    assert bool(back.t2m.isel(time=slice(29, None)).isnull().all())
    assert bool(back.tcwv.isel(time=slice(29, None)).isnull().all())


def test_template_replaced_with_another_chunking(year):
    store = MemoryStore()
    first = year.isel(time=slice(0, 10))
    first.fastzarr.to_template(store, global_end="2000-03-31", chunks={"time": 1})
    first.fastzarr.write_region(store)
    first.fastzarr.to_template(store, global_end="2000-03-31", chunks={"time": 10}, mode="w")
    with pytest.raises(RegionAlignmentError, match="chunk size 10"):
        year.isel(time=slice(10, 15)).fastzarr.write_region(store)
    year.isel(time=slice(10, 20)).fastzarr.write_region(store)
    back = xr.open_zarr(store).load()
    assert zarr.open_array(store, path="t2m").chunks[0] == 10
    xr.testing.assert_identical(back.isel(time=slice(10, 20)), year.isel(time=slice(10, 20)))
    # the first write went to the replaced template: nothing of it may remain
    assert bool(back.t2m.isel(time=slice(0, 10)).isnull().all())
    assert bool(back.t2m.isel(time=slice(20, None)).isnull().all())


def test_no_unit_is_stored_before_the_gate_passes(year):
    """A stale template raises before any put, even when every unit of the write is whole."""
    import asyncio

    from xarray_zarrwrite._compat import async_array, sync
    from xarray_zarrwrite._open import StaleTemplateError, load_template
    from xarray_zarrwrite._region import plan_region
    from xarray_zarrwrite._write import encode_plan, write_encoded

    store = MemoryStore()
    make_template(year, store)
    info = load_template(store)
    planned = plan_region(year.isel(time=slice(31, 60)), info)
    encoded = encode_plan(planned, info)
    arrays = {w.name: async_array(info.zarr_arrays[w.name]) for w in encoded}
    before = dict(store._store_dict)

    async def stale() -> None:
        await asyncio.sleep(0.05)  # slower than encoding: puts would go first without the gate
        raise StaleTemplateError("replaced")

    with pytest.raises(StaleTemplateError):
        sync(write_encoded(encoded, arrays, stale))
    assert dict(store._store_dict) == before


# -- retries: every attempt counted once -----------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_are_counted_once(year, retries):
    from xarray_zarrwrite.errors import WriteFailedError
    from xarray_zarrwrite.testing.faults import FaultyStore

    base = MemoryStore()
    make_template(year, base, chunks={"time": 1, "lat": 12, "lon": 24})
    # one put in the whole write (one step of one variable, one chunk), failing every time
    faulty = FaultyStore(base, rate=1.0, kinds=("error",), ops=("set",))
    step = year[["t2m"]].isel(time=slice(5, 6))
    with (
        xzw.config.set({"retries": retries, "retry_backoff": 0.001}),
        pytest.raises(WriteFailedError) as e,
    ):
        step.fastzarr.write_region(faulty)
    assert faulty.calls == retries + 1
    plural = "attempt" if retries == 0 else "attempts"
    assert f"failed after {retries + 1} {plural} (retries exhausted)" in str(e.value)
    assert "'t2m' at [5:6, 0:12, 0:24]" in str(e.value)
    assert isinstance(e.value.__cause__, OSError)


def test_permanent_errors_are_tried_once(year):
    from xarray_zarrwrite.errors import WriteFailedError
    from xarray_zarrwrite.testing.faults import FaultyStore

    base = MemoryStore()
    make_template(year, base, chunks={"time": 1, "lat": 12, "lon": 24})
    faulty = FaultyStore(base, rate=0.0, permanent_keys=["t2m/c/5/*"], ops=("set",))
    with (
        xzw.config.set({"retries": 5, "retry_backoff": 0.001}),
        pytest.raises(WriteFailedError, match=r"after 1 attempt \(not retried") as e,
    ):
        year[["t2m"]].isel(time=slice(4, 7)).fastzarr.write_region(faulty)
    assert faulty.permanent_faults_injected == 1
    assert isinstance(e.value.__cause__, PermissionError)
    # the other steps landed
    back = xr.open_zarr(base).t2m.load()
    xr.testing.assert_identical(back.isel(time=[4, 6]), year.t2m.isel(time=[4, 6]))
    assert bool(back.isel(time=5).isnull().all())


def test_full_extent_write_stores_non_index_coordinates_of_an_extended_dim(year):
    """A coordinate along the template's growing axis (cfgrib's ``valid_time``) starts empty
    in the template; a write covering the whole extent must store it, not skip it."""
    data = year.isel(time=slice(0, 10))
    data = data.assign_coords(valid_time=("time", data.time.values + np.timedelta64(6, "h")))
    store = MemoryStore()
    data.isel(time=[0]).fastzarr.to_template(
        store,
        global_start="2000-01-01",
        global_end="2000-01-10",
        freq="D",
        chunks={"time": 5, "lat": -1, "lon": -1},
    )
    data.fastzarr.write_region(store)
    back = xr.open_zarr(store).load()
    np.testing.assert_array_equal(back.valid_time.values, data.valid_time.values)
    assert back.valid_time.values[-1] == data.valid_time.values[-1]
    xr.testing.assert_equal(back.t2m, data.t2m)


def test_partial_writes_into_lossy_bitpack_arrays_are_refused(year):
    """A partial write would re-quantise the stored values of a max_error chunk (0.0192 seen
    with max_error=0.01): refused even with safe_chunks=False; whole chunks keep the bound."""
    from xarray_zarrwrite.codecs import BitpackCodec
    from xarray_zarrwrite.testing.snapshot import snapshot

    data = year.isel(time=slice(0, 20)).drop_vars("tcwv")
    store = MemoryStore()
    data.to_zarr(
        store,
        zarr_format=3,
        compute=False,
        encoding={"t2m": {"chunks": (10, 12, 24), "serializer": BitpackCodec(max_error=0.01)}},
    )
    data.isel(time=slice(0, 10)).fastzarr.write_region(store)
    before = snapshot(store)
    with pytest.raises(RegionAlignmentError, match="re-quantise"):
        data.isel(time=slice(10, 15)).fastzarr.write_region(store, safe_chunks=False)
    assert snapshot(store) == before
    data.isel(time=slice(10, 20)).fastzarr.write_region(store)
    back = xr.open_zarr(store).t2m.values
    assert np.abs(back - data.t2m.values).max() <= 0.01
