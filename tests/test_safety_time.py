"""Time variables get units that store any later value exactly, or the write is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite._encoding import NAT_FILL, check_time_representable, time_encoding
from xarray_zarrwrite.errors import TemplateError, TimeEncodingError
from xarray_zarrwrite.testing.snapshot import snapshot


def forecast_like(start: str, periods: int, freq: str = "D") -> xr.Dataset:
    """cfgrib-like: a datetime data variable, valid_time(time, step), a reference time."""
    time = pd.date_range(start, periods=periods, freq=freq)
    step = pd.to_timedelta([0, 6, 12], unit="h")
    valid = time.values[:, None] + step.values[None, :]
    return xr.Dataset(
        {
            "t2m": (("time", "step"), np.arange(periods * 3, dtype="f4").reshape(periods, 3)),
            "obs_time": (("time", "step"), valid - np.timedelta64(30, "m")),
            "lead": (("time", "step"), np.broadcast_to(step.values, (periods, 3)).copy()),
        },
        coords={
            "time": time,
            "step": step,
            "valid_time": (("time", "step"), valid),
            "forecast_reference_time": ("time", time.values),
        },
    )


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_daily_sample_then_hourly_values_read_back_exactly(tmp_path, zarr_format):
    path = tmp_path / "t.zarr"
    daily = forecast_like("2000-01-01", 3)
    for name in ("obs_time", "valid_time"):  # what a netCDF source would have carried
        daily[name].encoding = {"units": "days since 1990-01-01", "dtype": np.dtype("int32")}
    hourly = forecast_like("2000-01-01", 72, freq="h")
    hourly["obs_time"][5, 1] = np.datetime64("NaT", "ns")
    hourly["lead"][7, 2] = np.timedelta64("NaT", "ns")
    hourly["obs_time"][-1, -1] += np.timedelta64(17, "s")  # the last index, off the minute
    # the template runs six hours past the data (a full-extent write skips growing
    # coordinates: reported to the owner of _region.py)
    end = hourly.time[-1].values + np.timedelta64(6, "h")
    daily.fastzarr.to_template(
        path, global_end=end, freq="h", chunks={"time": 24}, zarr_format=zarr_format
    )
    tmpl = xr.open_zarr(path)
    assert tmpl.obs_time.encoding["units"].startswith("seconds since 2000-01-01")
    assert tmpl.lead.encoding["units"] in ("seconds", "nanoseconds")  # see time_encoding
    assert tmpl.obs_time.isnull().all()  # unwritten chunks read as NaT, not as a date
    hourly.fastzarr.write_region(path)
    back = xr.open_zarr(path).load()
    written = back.isel(time=slice(0, hourly.sizes["time"]))
    xr.testing.assert_identical(written.drop_encoding(), hourly.drop_encoding())
    tail = back.isel(time=slice(hourly.sizes["time"], None))
    assert tail.sizes["time"] == 6 and tail.obs_time.isnull().all()
    assert tail.valid_time.isnull().all() and tail.lead.isnull().all()


def test_sub_second_sample_gets_finer_units(tmp_path):
    path = tmp_path / "t.zarr"
    ds = forecast_like("2000-01-01", 3)
    ds["obs_time"] = ds.obs_time + np.timedelta64(250, "ms")
    ds.fastzarr.to_template(path, global_end="2000-01-10", chunks={"time": 1})
    assert xr.open_zarr(path).obs_time.encoding["units"].startswith("milliseconds since")
    ds.fastzarr.write_region(path)
    xr.testing.assert_identical(
        xr.open_zarr(path).obs_time.load().isel(time=slice(0, 3)), ds.obs_time
    )


def test_unrepresentable_time_is_refused_before_writing(tmp_path):
    path = tmp_path / "t.zarr"
    ds = forecast_like("2000-01-01", 3)
    ds.fastzarr.to_template(path, global_end="2000-01-10", chunks={"time": 1})
    bad = ds.copy(deep=True)
    bad["obs_time"][2, 2] += np.timedelta64(1, "ms")
    before = snapshot(path)
    with pytest.raises(TimeEncodingError, match="obs_time"):
        bad.fastzarr.write_region(path)
    assert snapshot(path) == before
    # dask: checked block by block on the workers; the bad block itself is never written
    with pytest.raises(TimeEncodingError):
        bad.chunk({"time": 1}).fastzarr.write_region(path)
    assert "obs_time/c/2/0" not in snapshot(path)


def test_user_units_are_kept_and_checked(tmp_path):
    path = tmp_path / "t.zarr"
    ds = forecast_like("2000-01-01", 3)  # obs_time is on the half hour
    enc = {"obs_time": {"units": "hours since 2000-01-01", "dtype": "int64"}}
    with pytest.raises(TemplateError, match="hours since"):
        ds.fastzarr.to_template(path, global_end="2000-01-10", encoding=enc)
    assert snapshot(path) == {}
    on_the_hour = ds.assign(obs_time=ds.obs_time + np.timedelta64(30, "m"))
    on_the_hour.fastzarr.to_template(
        path, global_end="2000-01-10", chunks={"time": 1}, encoding=enc
    )
    assert xr.open_zarr(path).obs_time.encoding["units"] == "hours since 2000-01-01"
    before = snapshot(path)
    with pytest.raises(TimeEncodingError, match="hours since"):
        ds.fastzarr.write_region(path)
    assert snapshot(path) == before
    on_the_hour.fastzarr.write_region(path)
    back = xr.open_zarr(path).obs_time.isel(time=slice(0, 3)).load()
    xr.testing.assert_identical(back.drop_encoding(), on_the_hour.obs_time.drop_encoding())


def test_check_time_representable_pure():
    t = np.array(["2000-01-01T00", "2000-01-01T01", "NaT"], dtype="M8[ns]")
    check_time_representable(t, {"units": "hours since 2000-01-01", "dtype": "int16"})
    with pytest.raises(TimeEncodingError):
        check_time_representable(t, {"units": "days since 2000-01-01", "dtype": "int64"})
    with pytest.raises(TimeEncodingError):  # 1e6 hours do not fit int16
        check_time_representable(
            t + np.timedelta64(10**6, "h"), {"units": "hours since 2000-01-01", "dtype": "i2"}
        )
    with pytest.raises(TimeEncodingError):  # would read back as NaT
        check_time_representable(
            t[:1], {"units": "hours since 2000-01-01", "dtype": "int64", "_FillValue": 0}
        )
    d = np.array([90, 30], dtype="m8[m]")
    check_time_representable(d, {"units": "minutes", "dtype": "int8"})
    with pytest.raises(TimeEncodingError):
        check_time_representable(d, {"units": "hours", "dtype": "float64"})
    check_time_representable(np.arange(3.0), {"units": "days since 2000-01-01"})  # not time


def test_time_encoding_picks_seconds_or_finer():
    t = pd.date_range("2000-01-01", periods=3, freq="D").values
    assert time_encoding(t, "2000-01-01") == {
        "units": "seconds since 2000-01-01 00:00:00",
        "dtype": np.dtype("int64"),
        "_FillValue": NAT_FILL,
    }
    assert time_encoding(t + np.timedelta64(3, "us"))["units"].startswith("microseconds")
    assert time_encoding(t + np.timedelta64(3, "ns"))["units"].startswith("nanoseconds")
    assert time_encoding(np.array([1, 2], dtype="m8[h]")).get("units", "seconds") == "seconds"
    with pytest.raises(TypeError):
        time_encoding(np.arange(3))


def test_api_to_template_function_same_time_encoding(tmp_path):
    ds = forecast_like("2000-01-01", 3)
    tmpl = xzw.to_template(ds, tmp_path / "a", global_end="2000-01-05")
    assert tmpl.valid_time.encoding["dtype"] == np.dtype("int64")
    assert tmpl.forecast_reference_time.encoding["units"].startswith("seconds since")
