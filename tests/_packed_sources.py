"""CDS/ERA5-style sources for the packing tests: int16 files, each with its own packing."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import xarray as xr

#: (lo, hi) of each file's values: the second exceeds the first's range on both sides, the
#: third is narrow (its own quantum is 10x finer than the second's).
RANGES = ((250.0, 300.0), (200.0, 320.0), (262.0, 274.0))
DAYS = 5
NLAT, NLON = 3, 4


def packed_source(k: int, lo: float, hi: float, *, fill: str = "_FillValue") -> xr.Dataset:
    """Day ``k * DAYS`` onwards; ``t2m`` spans exactly ``lo..hi`` and holds a NaN, packed as
    int16 with its own scale/offset (fill given as ``_FillValue`` or ``missing_value``)."""
    time = pd.date_range("2000-01-01", periods=DAYS, freq="D") + pd.Timedelta(days=DAYS * k)
    rng = np.random.default_rng(100 + k)
    values = rng.uniform(lo, hi, (DAYS, NLAT, NLON))
    values[0, 0, 0], values[-1, -1, -1] = lo, hi  # the extremes, the last index included
    values[1, 1, 1] = np.nan
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), values, {"units": "K"})},
        coords={"time": time, "lat": np.linspace(60.0, 40.0, NLAT), "lon": np.arange(NLON) * 1.5},
    )
    scale = (hi - lo) / (2**16 - 3)
    ds.t2m.encoding = {
        "dtype": np.dtype("int16"),
        "scale_factor": scale,
        "add_offset": (hi + lo) / 2,
        fill: np.int16(-32767),
    }
    return ds


def write_sources(
    folder: pathlib.Path, ranges: tuple[tuple[float, float], ...] = RANGES
) -> list[str]:
    """Write one NetCDF file per range (the last one with ``missing_value``, not
    ``_FillValue``) and return their paths."""
    paths = []
    for k, (lo, hi) in enumerate(ranges):
        fill = "missing_value" if k == len(ranges) - 1 and k > 0 else "_FillValue"
        path = folder / f"cds_{k}.nc"
        packed_source(k, lo, hi, fill=fill).to_netcdf(path)
        paths.append(str(path))
    return paths


def decoded(paths: list[str]) -> xr.Dataset:
    """The sources as xarray decodes them (each with its own packing), concatenated."""
    parts = []
    for p in paths:
        with xr.open_dataset(p) as ds:
            parts.append(ds.load())
    return xr.concat(parts, dim="time")


def assert_within(back: xr.DataArray, expected: xr.DataArray, tolerance: float) -> None:
    """Same shape and labels; NaN exactly where expected; values within ``tolerance``."""
    assert back.shape == expected.shape
    for dim in expected.dims:
        np.testing.assert_array_equal(back[dim].values, expected[dim].values)
    a, b = back.values, expected.values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    err = np.abs(a[ok] - b[ok])
    assert err.max() <= tolerance, (err.max(), tolerance)
    assert abs(a[-1, -1, -1] - b[-1, -1, -1]) <= tolerance  # the last index of every dim
