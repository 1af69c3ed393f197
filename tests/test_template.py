"""Templates: full extent, metadata only, encoding pinned, chunks planned."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import xarray_zarrwrite as xzw
from xarray_zarrwrite._chunks import plan_chunks
from xarray_zarrwrite.errors import (
    ChunkSpecError,
    CompressionError,
    InvalidNameError,
    StoreExistsError,
    TemplateError,
)
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot


def data_chunk_keys(path: pathlib.Path, names) -> list[str]:
    return [
        str(p.relative_to(path))
        for n in names
        for p in (path / n).rglob("*")
        if p.is_file() and p.name not in {"zarr.json", ".zarray", ".zattrs"}
    ]


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_template_spans_full_extent_without_data_chunks(tmp_path, zarr_format, backend):
    month = era5_like("2000-01-01", 31)
    if backend == "dask":
        month = month.chunk(time=10)
    path = tmp_path / "t.zarr"
    tmpl = month.fastzarr.to_template(
        path, global_end="2000-12-31", chunks={"time": 30}, zarr_format=zarr_format
    )
    assert tmpl.sizes == {"time": 366, "lat": 12, "lon": 24}
    assert tmpl.time[-1].values == np.datetime64("2000-12-31")
    assert data_chunk_keys(path, ["t2m", "tcwv"]) == []
    # coordinates written once, in full, with their values
    back = xr.open_zarr(path)
    np.testing.assert_array_equal(back.time.values, pd.date_range("2000-01-01", "2000-12-31"))
    np.testing.assert_array_equal(back.lat.values, month.lat.values)
    assert back.attrs == month.attrs
    assert back.t2m.attrs == month.t2m.attrs
    # unwritten float regions read back as NaN, including the last index of every dim
    assert np.isnan(back.t2m.isel(time=-1, lat=-1, lon=-1).values)
    assert back.t2m.encoding["chunks"] == (30, 12, 24)
    assert zarr.open_group(path).metadata.zarr_format == zarr_format


def test_time_encoding_is_pinned(tmp_path):
    month = era5_like("2000-01-01", 31)
    path = tmp_path / "t.zarr"
    month.fastzarr.to_template(
        path,
        global_end="2000-12-31",
        encoding={"time": {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian"}},
    )
    meta = json.loads((path / "time" / "zarr.json").read_text())
    assert meta["attributes"]["units"] == "days since 1970-01-01"
    assert meta["data_type"] == "int64"
    assert xr.open_zarr(path).time.encoding["units"] == "days since 1970-01-01"


def test_extent_for_other_dims_and_freq(tmp_path):
    ds = era5_like("2000-01-01", 4, freq="6h").expand_dims(member=[0])
    path = tmp_path / "t.zarr"
    tmpl = ds.fastzarr.to_template(
        path,
        global_start="1999-12-31",
        global_end="2000-01-31T18:00",
        freq="6h",
        extent={"member": np.arange(8)},
        chunks={"member": 1, "time": 4},
    )
    assert tmpl.sizes["member"] == 8
    assert tmpl.sizes["time"] == 32 * 4
    assert tmpl.t2m.dims == ("member", "time", "lat", "lon")


@pytest.mark.parametrize(
    ("compression", "name"),
    [
        ("default", "blosc"),
        ("blosc:lz4:5:bitshuffle", "blosc"),
        ("zstd:7", "zstd"),
        ("gzip:2", "gzip"),
        (None, None),
    ],
)
def test_compression_lands_in_metadata(tmp_path, compression, name):
    path = tmp_path / "t.zarr"
    era5_like(periods=3).fastzarr.to_template(path, compression=compression)
    codecs = json.loads((path / "t2m" / "zarr.json").read_text())["codecs"]
    names = [c["name"] for c in codecs]
    assert names[0] == "bytes"
    assert names[1:] == ([name] if name else [])
    if compression == "zstd:7":
        assert codecs[1]["configuration"]["level"] == 7


def test_compression_v2_numcodecs(tmp_path):
    path = tmp_path / "t.zarr"
    era5_like(periods=3).fastzarr.to_template(path, compression="zstd:5", zarr_format=2)
    meta = json.loads((path / "t2m" / ".zarray").read_text())
    assert meta["compressor"]["id"] == "zstd"
    assert meta["compressor"]["level"] == 5


@pytest.mark.parametrize("bad", ["lzma", "blosc:nope:3", "zstd:99", "blosc:zstd:3:x", 42])
def test_bad_compression_writes_nothing(tmp_path, bad):
    path = tmp_path / "t.zarr"
    with pytest.raises(CompressionError):
        era5_like(periods=3).fastzarr.to_template(path, compression=bad)
    assert snapshot(path) == {}


def test_mode_w_minus_refuses_existing_and_w_replaces(tmp_path):
    path = tmp_path / "t.zarr"
    era5_like(periods=3).fastzarr.to_template(path)
    before = snapshot(path)
    with pytest.raises(StoreExistsError):
        era5_like(periods=5).fastzarr.to_template(path)
    assert snapshot(path) == before
    era5_like(periods=5).fastzarr.to_template(path, mode="w")
    assert xr.open_zarr(path).sizes["time"] == 5


def test_memory_store_and_dataarray(memory_url):
    da = era5_like(periods=3).t2m
    tmpl = da.fastzarr.to_template(memory_url)
    assert list(tmpl.data_vars) == ["t2m"]
    with pytest.raises(TemplateError, match="no name"):
        da.rename(None).fastzarr.to_template(memory_url + "x")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"chunks": {"nope": 3}}, ChunkSpecError),
        ({"chunks": {"time": 0}}, ChunkSpecError),
        ({"chunks": {"time": 2.5}}, ChunkSpecError),
        ({"chunks": "big"}, ChunkSpecError),
        ({"access_pattern": "diagonal", "chunks": "auto"}, ChunkSpecError),
        ({"target_chunk_mb": -1}, ChunkSpecError),
        ({"zarr_format": 4}, TemplateError),
        ({"mode": "a"}, TemplateError),
        ({"global_end": "1999-01-01"}, TemplateError),
        ({"extent": {"nope": [1]}}, TemplateError),
        ({"extent": {"lat": [1.0, 1.0]}}, TemplateError),
        ({"extent": {"lat": [0.0, 1.0]}}, TemplateError),
        ({"encoding": {"t2m": {"chunks": (1,)}}}, TemplateError),
        ({"encoding": {"nope": {}}}, TemplateError),
        ({"global_end": "2000-02-01", "time_dim": "step"}, TemplateError),
    ],
)
def test_bad_template_options_write_nothing(tmp_path, kwargs, error):
    path = tmp_path / "t.zarr"
    with pytest.raises(error):
        era5_like(periods=5).fastzarr.to_template(path, **kwargs)
    assert snapshot(path) == {}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda ds: ds.assign(s=("lat", np.array(["a"] * 12, dtype=object))),
        lambda ds: ds.isel(time=slice(0, 0)),
        lambda ds: ds.drop_vars(["t2m", "tcwv"]),
        lambda ds: ds.rename({"t2m": "../escape"}),
        lambda ds: ds.rename({"t2m": "a/b"}),
        lambda ds: ds.rename({"t2m": "nul\x00"}),
        lambda ds: ds.rename_dims({"lat": ".."}),
        lambda ds: ds.assign_coords(time=ds.time.values[::-1]),
        lambda ds: ds.assign_coords(time=np.r_[ds.time.values[:2], ds.time.values[:1]]),
        lambda ds: ds.assign_coords(time=np.r_[ds.time.values[:2], np.datetime64("NaT", "ns")]),
    ],
)
def test_bad_example_data_writes_nothing(tmp_path, mutate):
    path = tmp_path / "t.zarr"
    ds = mutate(era5_like(periods=3))
    with pytest.raises((TemplateError, InvalidNameError)):
        ds.fastzarr.to_template(path, global_end="2000-01-09", freq="D")
    assert snapshot(path) == {}


def test_irregular_time_needs_freq(tmp_path):
    ds = era5_like(periods=4).isel(time=[0, 1, 3])
    with pytest.raises(TemplateError, match="freq"):
        ds.fastzarr.to_template(tmp_path / "t", global_end="2000-02-01")
    ds.fastzarr.to_template(tmp_path / "t", global_end="2000-02-01", freq="D")


def test_many_variables_few_writes(tmp_path):
    """100 variables x 1,000,000 steps: store writes scale with variables, not chunks."""
    time = pd.date_range("1980-01-01", periods=4, freq="h")
    ds = xr.Dataset(
        {f"v{i}": ("time", np.zeros(4, "f4")) for i in range(100)}, coords={"time": time}
    )
    path = tmp_path / "t.zarr"
    ds.fastzarr.to_template(
        path, global_end=time[0] + pd.Timedelta(hours=999_999), chunks={"time": 1000}
    )
    files = snapshot(path)
    # 100 array documents + time metadata + time data chunk + root
    assert len(files) == 103
    assert xr.open_zarr(path).sizes["time"] == 1_000_000


class TestPlanChunks:
    sizes = {"time": 10_000, "lat": 721, "lon": 1440}

    def plan(self, pattern, target=8 * 2**20, chunks="auto"):
        return plan_chunks(
            self.sizes,
            chunks,
            itemsize=4,
            time_dim="time",
            access_pattern=pattern,
            target_bytes=target,
        )

    @pytest.mark.parametrize("pattern", ["temporal", "spatial", "balanced"])
    def test_fits_target_and_dims(self, pattern):
        c = self.plan(pattern)
        assert all(1 <= c[d] <= n for d, n in self.sizes.items())
        assert np.prod(list(c.values())) * 4 <= 8 * 2**20
        assert np.prod(list(c.values())) * 4 >= 8 * 2**20 / 4  # not absurdly small
        assert c == self.plan(pattern)  # deterministic

    def test_patterns(self):
        assert self.plan("spatial") == {"time": 2, "lat": 721, "lon": 1440}
        assert self.plan("temporal")["time"] == 10_000
        b = self.plan("balanced")
        assert b["time"] < 10_000 and b["lon"] < 1440

    def test_small_arrays_are_one_chunk(self):
        assert self.plan("balanced", target=2**40) == self.sizes

    def test_partial_spec_plans_the_rest(self):
        c = self.plan("spatial", chunks={"time": 1, "lat": -1})
        assert c == {"time": 1, "lat": 721, "lon": 1440}
        assert self.plan("balanced", chunks={"lon": 10**9})["lon"] == 1440


def test_auto_chunks_in_template(tmp_path):
    ds = era5_like(periods=5)
    tmpl = ds.fastzarr.to_template(
        tmp_path / "t",
        global_end="2010-12-31",
        chunks="auto",
        access_pattern="spatial",
        target_chunk_mb=1,
    )
    assert tmpl.t2m.encoding["chunks"][1:] == (12, 24)
    assert tmpl.t2m.encoding["chunks"][0] == 2**20 // (12 * 24 * 4)


def test_template_api_function_equals_accessor(tmp_path):
    ds = era5_like(periods=3)
    a = xzw.to_template(ds, tmp_path / "a")
    b = ds.fastzarr.to_template(tmp_path / "b")
    xr.testing.assert_identical(a, b)
