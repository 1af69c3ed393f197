"""Objects and time of region writes with ``write_empty_chunks`` True/False vs xarray's
``to_zarr(write_empty_chunks=False)``: 120 days of 181 x 360 float32, one chunk per day, 40 %
of the days all NaN. Run: ``.venv/bin/python asv_bench/compare_write_empty_chunks.py``."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings

import numpy as np
import pandas as pd
import xarray as xr
import zarr

import xarray_zarrwrite as xzw


def objects(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(os.path.join(path, "t2m")))


def main() -> None:
    warnings.simplefilter("ignore")
    n = 120
    v = np.random.default_rng(0).random((n, 181, 360), dtype="f4")
    v[::5] = np.nan
    v[1::5] = np.nan  # 40 % of the days: no data at all
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), v)},
        coords={
            "time": pd.date_range("2000-01-01", periods=n),
            "lat": np.linspace(-90, 90, 181),
            "lon": np.arange(360.0),
        },
    )
    tmp = tempfile.mkdtemp()
    try:
        for wec in (True, False):
            path = f"{tmp}/{wec}.zarr"
            xzw.to_template(
                ds, path, chunks={"time": 1, "lat": -1, "lon": -1}, compression="zstd:3"
            )
            t0 = time.perf_counter()
            xzw.write_region(ds, path, write_empty_chunks=wec)
            dt = time.perf_counter() - t0
            ok = xzw.check(path).complete
            print(
                f"ours write_empty_chunks={wec}: {objects(path)} objects, {dt:.2f} s, complete={ok}"
            )
        path = f"{tmp}/xr.zarr"
        enc = {"t2m": {"chunks": (1, 181, 360), "compressors": zarr.codecs.ZstdCodec(level=3)}}
        t0 = time.perf_counter()
        ds.to_zarr(path, zarr_format=3, write_empty_chunks=False, encoding=enc)
        dt = time.perf_counter() - t0
        print(f"xarray to_zarr write_empty_chunks=False: {objects(path)} objects, {dt:.2f} s")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
