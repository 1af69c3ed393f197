"""Synthetic, NetCDF-like sample data shared by tests, the demo and benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["era5_like"]


def era5_like(
    start: str = "2000-01-01",
    periods: int = 31,
    *,
    freq: str = "D",
    nlat: int = 12,
    nlon: int = 24,
    variables: tuple[str, ...] = ("t2m", "tcwv"),
    dtype: str = "float32",
    seed: int = 0,
    noise: float = 0.5,
) -> xr.Dataset:
    """A reanalysis-like dataset: smooth seasonal/diurnal fields plus a little noise.

    Values depend on the timestamps (not on ``start``/``periods``), so slices of a long
    dataset equal the short datasets generated for the same times.
    """
    time = pd.date_range(start, periods=periods, freq=freq)
    lat = np.linspace(90.0, -90.0, nlat)
    lon = np.linspace(0.0, 360.0, nlon, endpoint=False)
    doy = (time.day_of_year.values + time.hour.values / 24.0)[:, None, None]
    hour = time.hour.values[:, None, None]
    la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    data_vars = {}
    for k, name in enumerate(variables):
        base = 250.0 + 40.0 * np.cos(la) + 10.0 * np.sin(2 * np.pi * doy / 365.25) * np.sin(la)
        base = base + 3.0 * np.cos(2 * np.pi * hour / 24.0 + lo) + 5.0 * k
        # noise keyed by timestamp so any slice is reproducible on its own
        rng = np.stack(
            [
                np.random.default_rng(
                    [seed, k, int(t.value // 10**9) & 0xFFFFFFFF]
                ).standard_normal((nlat, nlon))
                for t in time
            ]
        )
        data_vars[name] = (
            ("time", "lat", "lon"),
            (base + noise * rng).astype(dtype),
            {"units": "K" if k == 0 else "kg m-2", "long_name": name},
        )
    return xr.Dataset(
        data_vars,
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
        attrs={"title": "xarray_zarrwrite sample data", "Conventions": "CF-1.8"},
    )
