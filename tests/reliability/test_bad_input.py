"""A catalogue of bad inputs: each gets a typed error, and the store is byte-identical after."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

import xarray_zarrwrite as xzw
from xarray_zarrwrite import errors as E
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot

YEAR = era5_like("2000-01-01", 60, nlat=6, nlon=8)
PART = YEAR.isel(time=slice(10, 20))


def tmpl(path, **kw):
    kw.setdefault("chunks", {"time": 10})
    YEAR.isel(time=slice(0, 10)).fastzarr.to_template(path, global_end="2000-02-29", **kw)


def region(mutate, **kw):
    return lambda path: mutate(PART).fastzarr.write_region(path, **kw)


def template(mutate=lambda d: d, **kw):
    def run(path):
        kw.setdefault("chunks", {"time": 10})
        mutate(YEAR.isel(time=slice(0, 10))).fastzarr.to_template(path, **kw)

    return run


def with_time(values):
    return lambda d: d.assign_coords(time=values)


def with_attr(var, key, value):
    def f(d):
        d = d.copy()
        d[var].encoding[key] = value
        return d

    return f


T = PART.time.values
CASES = {
    # region writes
    "missing dim": (region(lambda d: d.isel(lon=0)), E.DimensionMismatchError),
    "extra dim": (region(lambda d: d.expand_dims(level=[1000])), E.DimensionMismatchError),
    "renamed dim": (region(lambda d: d.rename(lon="x")), E.DimensionMismatchError),
    "unsafe cast float->int": (region(lambda d: d.astype("int32")), E.DtypeCastError),
    "string dtype": (region(lambda d: d.assign(t2m=d.t2m.astype("U8"))), E.DtypeCastError),
    "object dtype": (region(lambda d: d.assign(t2m=d.t2m.astype(object))), E.DtypeCastError),
    "NaT time": (region(with_time(np.r_[T[:-1], np.datetime64("NaT", "ns")])), E.RegionLabelError),
    "unsorted times": (region(with_time(T[::-1])), E.RegionLabelError),
    "duplicate times": (region(with_time(np.r_[T[:1], T[:-1]])), E.RegionLabelError),
    "off-grid time": (region(with_time(T + np.timedelta64(6, "h"))), E.RegionLabelError),
    "gap in times": (region(lambda d: d.isel(time=[0, 1, 3, 4])), E.RegionLabelError),
    "region outside template (labels)": (
        region(with_time(pd.date_range("2003-01-01", periods=10).values)),
        E.RegionLabelError,
    ),
    "region outside template (slice)": (
        region(lambda d: d, region={"time": slice(55, 65)}),
        E.RegionError,
    ),
    "region with step": (region(lambda d: d, region={"time": slice(0, 20, 2)}), E.RegionError),
    "variable not in template": (
        region(lambda d: d.assign(sst=d.t2m)),
        E.VariableNotInTemplateError,
    ),
    "calendar mismatch": (region(with_attr("time", "calendar", "noleap")), E.TimeEncodingError),
    "cftime data": (
        region(lambda d: d.convert_calendar("360_day", align_on="date")),
        E.ZarrWriteError,
    ),
    "time as numbers": (region(with_time(np.arange(10.0))), E.TimeEncodingError),
    "non-monotonic lat": (region(lambda d: d.isel(lat=[1, 0, 2, 3, 4, 5])), E.RegionLabelError),
    "misaligned region": (region(lambda d: YEAR.isel(time=slice(5, 15))), E.RegionAlignmentError),
    "misaligned dask chunks": (
        region(lambda d: d.chunk(time=3)),
        E.RegionAlignmentError,
    ),
    "zero-length dataset": (region(lambda d: d.isel(time=slice(0, 0))), E.RegionError),
    "empty dataset": (region(lambda d: d.drop_vars(list(d.data_vars))), E.RegionError),
    "name escaping root (..)": (region(lambda d: d.rename(t2m="../t2m")), E.InvalidNameError),
    "name with slash": (region(lambda d: d.rename(t2m="a/b")), E.InvalidNameError),
    "absolute name": (region(lambda d: d.rename(t2m="/etc/passwd")), E.InvalidNameError),
    "NUL in name": (region(lambda d: d.rename(t2m="t2m\x00")), E.InvalidNameError),
    "template of a different archive": (
        lambda path: era5_like("2000-01-11", 10, nlat=7, nlon=8).fastzarr.write_region(path),
        E.RegionError,
    ),
    "bad on_out_of_range": (region(lambda d: d, on_out_of_range="wrap"), E.PackingError),
    # templates into an existing store
    "mode w- on existing store": (template(), E.StoreExistsError),
    "bad chunk spec (zero)": (template(chunks={"time": 0}, mode="w"), E.ChunkSpecError),
    "bad chunk spec (unknown dim)": (template(chunks={"level": 1}, mode="w"), E.ChunkSpecError),
    "bad chunk spec (float)": (template(chunks={"time": 1.5}, mode="w"), E.ChunkSpecError),
    "bad compression": (template(compression="lzma:9", mode="w"), E.CompressionError),
    "packing bits 0": (template(packing={"bits": 0}, mode="w"), E.PackingError),
    "packing bits 33": (template(packing={"bits": 33}, mode="w"), E.PackingError),
    "bitpack bits 0": (template(packing={"codec": "bitpack", "bits": 0}, mode="w"), E.PackingError),
    "negative max_error": (
        template(packing={"codec": "bitpack", "max_error": -0.1}, mode="w"),
        E.PackingError,
    ),
    "all-NaN data with packing": (
        template(lambda d: d * np.nan, packing={"bits": 16}, mode="w"),
        E.PackingError,
    ),
    "string data variable": (
        template(lambda d: d.assign(s=("lat", np.array(["a"] * 6, dtype=object))), mode="w"),
        E.TemplateError,
    ),
    "zero-length template": (
        template(lambda d: d.isel(lat=slice(0, 0)), mode="w"),
        E.TemplateError,
    ),
    "template name escaping root": (
        template(lambda d: d.rename(t2m=".."), mode="w"),
        E.InvalidNameError,
    ),
    "template time unsorted": (
        template(lambda d: d.isel(time=[2, 1, 0]), global_end="2000-03-01", mode="w"),
        E.TemplateError,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_typed_error_nothing_written(tmp_path, case):
    path = str(tmp_path / "a.zarr")
    tmpl(path)
    YEAR.isel(time=slice(0, 10)).fastzarr.write_region(path)
    before = snapshot(path)
    run, error = CASES[case]
    with pytest.raises(error) as e:
        run(path)
    assert isinstance(e.value, E.ZarrWriteError)
    assert str(e.value)  # a message that says something
    assert snapshot(path) == before


def test_out_of_range_and_infinities_with_cf_packing(tmp_path):
    path = str(tmp_path / "p.zarr")
    tmpl(path, packing={"t2m": {"bits": 12, "valid_range": (200, 320)}})
    before = snapshot(path)
    hot = PART.assign(t2m=PART.t2m + 100)
    with pytest.raises(E.PackingError, match="outside its packing range"):
        hot.fastzarr.write_region(path)
    inf = PART.copy(deep=True)
    inf.t2m.values[0, 0, 0] = np.inf
    with pytest.raises(E.PackingError, match="infinit"):
        inf.fastzarr.write_region(path)
    assert snapshot(path) == before


def test_read_only_store_refused(tmp_path):
    path = str(tmp_path / "a.zarr")
    tmpl(path)
    before = snapshot(path)
    ro = zarr.storage.LocalStore(path, read_only=True)
    with pytest.raises(E.ReadOnlyStoreError):
        PART.fastzarr.write_region(ro)
    with pytest.raises(E.ReadOnlyStoreError):
        YEAR.fastzarr.to_template(ro, mode="w")
    with pytest.raises(E.ReadOnlyStoreError):
        xzw.StreamWriter(ro)
    assert snapshot(path) == before


def test_catalogue_size():
    assert len(CASES) + 3 >= 25
