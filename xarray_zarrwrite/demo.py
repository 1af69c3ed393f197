"""``xarray-zarrwrite demo`` (``make demo``): convert monthly NetCDF files, verify, compare.

In a work directory: generate monthly NetCDF files of daily reanalysis-like data, convert them
with :func:`~xarray_zarrwrite.convert` on a local process pool (the time chunk deliberately
does not fall on month boundaries), check completeness, verify the archive against the sources
bit for bit, and time xarray's own ``open_mfdataset(...).to_zarr()`` on the same files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["run_demo"]

TIME_CHUNK = 30  # days: never aligned with months, so chunks straddle files


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[str]:
    if path is not None:
        os.makedirs(path, exist_ok=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="xzw-demo-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_monthly_files(
    directory: str, months: int = 12, nlat: int = 120, nlon: int = 240, start: str = "2001-01-01"
) -> list[str]:
    """Write ``months`` monthly NetCDF files of daily data; returns their paths."""
    from .testing.datasets import era5_like

    edges = pd.date_range(start, periods=months + 1, freq="MS")
    ds = era5_like(start, int((edges[-1] - edges[0]).days), nlat=nlat, nlon=nlon)
    paths = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        path = os.path.join(directory, f"era5-{a:%Y-%m}.nc")
        ds.sel(time=slice(a, b - pd.Timedelta(days=1))).to_netcdf(path)
        paths.append(path)
    return paths


def _identical_bits(a: xr.Dataset, b: xr.Dataset) -> list[str]:
    """Names of variables whose values differ bit for bit (NaN payloads included)."""
    bad = []
    for name in b.variables:
        x, y = np.asarray(a[name].values), np.asarray(b[name].values)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            bad.append(str(name))
    return bad


def run_demo(
    workdir: str | None = None,
    *,
    months: int = 12,
    nlat: int = 120,
    nlon: int = 240,
    workers: int = 2,
    out: Callable[[str], Any] = print,
) -> bool:
    """Run the demo; returns True when the archive is complete and bit-identical."""
    from ._check import check
    from ._compression import parse_compression
    from .convert import convert

    with _workdir(workdir) as work:
        t0 = time.perf_counter()
        files = make_monthly_files(work, months, nlat, nlon)
        size = sum(os.path.getsize(f) for f in files)
        out(
            f"generated {len(files)} monthly NetCDF files ({size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t0:.1f} s under {work}"
        )
        chunks = {"time": TIME_CHUNK, "lat": -1, "lon": -1}

        store = os.path.join(work, "archive.zarr")
        shutil.rmtree(store, ignore_errors=True)
        report = convert(
            files[::-1],  # any order
            store,
            chunks=chunks,
            max_workers=workers,
            resume=False,
            progress=False,
            raise_on_failure=False,
        )
        out(report.summary())

        status = check(store)
        out(status.summary())

        t0 = time.perf_counter()
        with xr.open_mfdataset(files, combine="by_coords") as mf:
            expected = mf.load()
        back = xr.open_zarr(store, chunks=None).load()
        bad = _identical_bits(back, expected)
        same = not bad and back.sizes == expected.sizes
        out(
            "verified against the sources bit for bit: "
            + ("identical" if same else f"DIFFERENT ({bad})")
            + f" ({time.perf_counter() - t0:.1f} s)"
        )

        baseline = os.path.join(work, "xarray.zarr")
        shutil.rmtree(baseline, ignore_errors=True)
        t0 = time.perf_counter()
        with xr.open_mfdataset(files, combine="by_coords") as mf:
            names = list(mf.data_vars)
            codecs = parse_compression("default", 3)  # the same codec as the archive
            mf.chunk({"time": TIME_CHUNK}).to_zarr(
                baseline,
                mode="w",
                zarr_format=3,
                consolidated=False,
                encoding={
                    n: {"chunks": (TIME_CHUNK, nlat, nlon), "compressors": codecs} for n in names
                },
            )
        t_xr = time.perf_counter() - t0

        # again, now that the pool's forkserver runs (as for every later call of a process)
        again = convert(
            files,
            os.path.join(work, "again.zarr"),
            chunks=chunks,
            max_workers=workers,
            resume=False,
            progress=False,
            raise_on_failure=False,
        )

        mb = report.nbytes / 1e6
        rows = [
            ("convert, first call (pool start)", report.seconds, workers),
            ("convert, next call", again.seconds, workers),
            ("xr.open_mfdataset().to_zarr()", t_xr, "dask threads"),
        ]
        out("")
        out(f"{'method':<34} {'seconds':>8} {'MB/s':>8}  workers")
        for name, sec, w in rows:
            out(f"{name:<34} {sec:>8.2f} {mb / sec:>8.0f}  {w}")
        out(
            f"convert vs xarray: {t_xr / report.seconds:.2f}x (first call), "
            f"{t_xr / again.seconds:.2f}x (next call)"
        )
        ok = report.ok and again.ok and status.complete and same
        out("demo: OK" if ok else "demo: FAILED")
        return ok
