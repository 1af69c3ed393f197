"""check(): exactly which chunks of which variables are unwritten, as coordinate ranges."""

from __future__ import annotations

import dataclasses
import json
import uuid

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xarray_zarrwrite._check import CheckReport, check, label_formatter
from xarray_zarrwrite.api import to_template, write_region
from xarray_zarrwrite.errors import TemplateNotFoundError
from xarray_zarrwrite.testing.datasets import era5_like


def make(year, path, chunks=None, **kw):
    chunks = chunks or {"time": 10, "lat": 6, "lon": 24}
    to_template(year.isel(time=slice(0, 31)), path, global_end="2000-12-31", chunks=chunks, **kw)


def read_back_equal(path, data: xr.Dataset) -> None:
    back = xr.open_zarr(path, chunks=None).sel(time=data.time).load()
    for name in data.data_vars:
        assert back[name].values.tobytes() == data[name].values.tobytes()


def test_template_only_everything_missing(tmp_path, year):
    path = tmp_path / "a.zarr"
    make(year, path)
    status = check(path)
    assert isinstance(status, CheckReport)
    assert not status.complete
    assert status.total == 2 * 37 * 2 and status.written == 0
    assert status.missing == {
        "t2m": [("2000-01-01", "2000-12-31")],
        "tcwv": [("2000-01-01", "2000-12-31")],
    }
    assert len(status.missing_chunks["t2m"]) == 37 * 2
    assert status.variables["t2m"].missing_index == ((0, 366),)
    assert "INCOMPLETE" in status.summary() and "2000-01-01 .. 2000-12-31" in status.summary()


def test_missing_ranges_after_some_region_writes(tmp_path, year):
    path = tmp_path / "a.zarr"
    make(year, path)
    jan_feb = year.sel(time=slice("2000-01-01", "2000-02-29"))  # 60 days: chunks 0..5
    write_region(jan_feb, path)
    june = year.isel(time=slice(150, 180))  # chunks 15..17
    write_region(june, path)
    write_region(year[["t2m"]].isel(time=slice(360, 366)), path)  # last (short) chunk, t2m only
    status = check(path)
    t2m = status.variables["t2m"]
    assert t2m.written == 2 * (6 + 3 + 1)
    assert t2m.missing_index == ((60, 150), (180, 360))
    assert status.missing == {
        "t2m": [("2000-03-01", "2000-05-29"), ("2000-06-29", "2000-12-25")],
        "tcwv": [("2000-03-01", "2000-05-29"), ("2000-06-29", "2000-12-31")],
    }
    assert (6, 0, 0) in status.missing_chunks["t2m"] and (0, 0, 0) not in status.missing_chunks[
        "t2m"
    ]
    read_back_equal(path, jan_feb)


def test_all_fill_value_chunks_count_as_written(tmp_path, year):
    path = tmp_path / "a.zarr"
    make(year, path)
    nan = year.copy(deep=True)
    nan["t2m"][:] = np.nan  # equal to the fill value everywhere
    nan["tcwv"][:] = np.nan
    write_region(nan, path)
    status = check(path)
    assert status.complete and status.missing == {}
    assert status.written == status.total == 2 * 37 * 2
    assert np.isnan(xr.open_zarr(path).t2m.values).all()


def test_one_missing_spatial_chunk(tmp_path, year):
    path = tmp_path / "a.zarr"
    make(year, path)
    write_region(year, path)
    (path / "tcwv" / "c" / "3" / "1" / "0").unlink()  # chunk (3, 1, 0): days 30..39, south
    status = check(path)
    assert status.missing == {"tcwv": [("2000-01-31", "2000-02-09")]}
    assert status.missing_chunks == {"tcwv": [(3, 1, 0)]}
    assert status.variables["t2m"].complete


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_formats_and_stray_temporary_files(tmp_path, year, zarr_format):
    path = tmp_path / "a.zarr"
    make(year, path, zarr_format=zarr_format)
    write_region(year.isel(time=slice(0, 100)), path)
    key = "0.0.0" if zarr_format == 2 else "c/0/0/0"
    sub, name = key.rsplit("/", 1) if "/" in key else ("", key)
    folder = path / "t2m" / sub
    # a write interrupted by a crash leaves LocalStore's temporary file, never a chunk
    (folder / f"{name}.{uuid.uuid4().hex}.partial").write_bytes(b"half")
    status = check(path)
    assert status.variables["t2m"].written == 10 * 2
    assert len(status.stray) == 1 and status.stray[0].endswith(".partial")
    assert "interrupted" in status.summary()
    assert status.missing["t2m"] == [("2000-04-10", "2000-12-31")]


def test_hourly_labels_and_variables_selection(tmp_path):
    ds = era5_like("2000-01-01", 48, freq="h")
    path = tmp_path / "h.zarr"
    to_template(ds.isel(time=slice(0, 6)), path, global_end=ds.time.values[-1], chunks={"time": 6})
    write_region(ds.isel(time=slice(0, 12)), path)
    status = check(path, variables=["t2m"])
    assert list(status.variables) == ["t2m"]
    assert status.missing == {"t2m": [("2000-01-01T12:00:00", "2000-01-02T23:00:00")]}
    with pytest.raises(KeyError, match="nope"):
        check(path, variables=["nope"])


def test_no_template(tmp_path):
    with pytest.raises(TemplateNotFoundError):
        check(tmp_path / "nothing.zarr")


def test_memory_store_and_json(memory_url, year):
    make(year, memory_url)
    write_region(year.isel(time=slice(0, 30)), memory_url)
    status = check(memory_url)
    assert status.missing["t2m"] == [("2000-01-31", "2000-12-31")]
    json.dumps(dataclasses.asdict(status), default=str)  # serialisable for the CLI


def test_label_formatter():
    daily = pd.date_range("2000-01-01", periods=3, freq="D")
    assert label_formatter(daily)(2) == "2000-01-03"
    hourly = pd.date_range("2000-01-01", periods=3, freq="h")
    assert label_formatter(hourly)(1) == "2000-01-01T01:00:00"
    assert label_formatter(pd.Index([1.5, 2.5]))(1) == 2.5
    assert label_formatter(None)(4) == 4


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_check_a_group(tmp_path, year, zarr_format):
    path = tmp_path / "g.zarr"
    make(year, path, group="runs/a", zarr_format=zarr_format)
    write_region(year.isel(time=slice(0, 100)), path, group="runs/a")
    status = check(path, group="runs/a")
    assert status.store.endswith("(group runs/a)")
    assert status.variables["t2m"].written == 10 * 2 and status.total == 2 * 37 * 2
    assert status.missing["t2m"] == [("2000-04-10", "2000-12-31")]
    with pytest.raises(TemplateNotFoundError, match=r"group='runs/a'"):
        check(path)  # the root holds no archive: said so, never "complete, 0/0"
    with pytest.raises(TemplateNotFoundError):
        check(path, group="runs/b")
    write_region(year.isel(time=slice(100, 366)), path, group="runs/a")
    assert check(path, group="runs/a").complete
    back = xr.open_zarr(path, group="runs/a", chunks=None).load()
    for name in ("t2m", "tcwv"):  # bit for bit, the last index of each dimension included
        assert back[name].values.tobytes() == year[name].values.tobytes()


def test_check_a_group_of_a_memory_store(year):
    from zarr.storage import MemoryStore

    store = MemoryStore()
    make(year, store, group="g")
    write_region(year.isel(time=slice(0, 30)), store, group="g")
    status = check(store, group="g")
    assert status.missing["t2m"] == [("2000-01-31", "2000-12-31")]
