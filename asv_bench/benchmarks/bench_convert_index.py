"""convert() through the byte-range index against the xarray path, on the same data.

NetCDF4 sources are indexed (h5py's chunk iterator) and read by byte range; the same data in
NetCDF3 files cannot be indexed and go through ``xr.open_dataset`` per task. Both convert into
the same chunks and codec, on threads; the sources are small (48 monthly files of 1461 x 24 x
48 float32, 6.7 MB in all), so what is measured is the per-file cost that dominates thousands
of files. ``IndexScan`` times indexing alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import xarray as xr


def _files(directory: str, fmt: str, nfiles: int = 48) -> list[str]:
    from xarray_zarrwrite.testing.datasets import era5_like

    full = era5_like("2000-01-01", 1461, nlat=24, nlon=48, variables=("t2m",))
    edges = np.linspace(0, 1461, nfiles + 1).astype(int)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        part = full.isel(time=slice(a, b))
        path = os.path.join(directory, f"{pd.Timestamp(part.time.values[0]):%Y-%m-%d}.nc")
        part.to_netcdf(path, format=fmt)
        paths.append(path)
    return paths


class ConvertIndexed:
    """48 small files -> one archive: byte-range index (NETCDF4) vs xarray path (NETCDF3)."""

    params = [["NETCDF4", "NETCDF3_64BIT"]]
    param_names = ["source_format"]
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = 180

    def setup(self, fmt: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="xzw-asv-index-")
        self.files = _files(os.path.join(self.dir, "src"), fmt)
        self._convert("warm.zarr")

    def teardown(self, fmt: str) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _convert(self, name: str) -> None:
        from xarray_zarrwrite.convert import convert

        store = os.path.join(self.dir, name)
        shutil.rmtree(store, ignore_errors=True)
        report = convert(
            self.files,
            store,
            chunks={"time": 73, "lat": -1, "lon": -1},
            resume=False,
            progress=False,
            max_workers=2,
        )
        assert report.ok

    def time_convert(self, fmt: str) -> None:
        self._convert("a.zarr")


class IndexScan:
    """Indexing 48 NetCDF4 files: xarray metadata + h5py chunk index, per file."""

    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="xzw-asv-scan-")
        self.files = _files(os.path.join(self.dir, "src"), "NETCDF4")

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_index_hdf5(self) -> None:
        from xarray_zarrwrite.convert._index import index_hdf5

        for f in self.files:
            with xr.open_dataset(f, cache=False) as ds:
                assert index_hdf5(f, ds, ["t2m"]) is not None


class LookAlikeScan:
    """Scanning 120 daily files (one step each, per-file time units; ``packed``: int16 with a
    per-file scale_factor/add_offset): the fast scan (one full scan, then a byte comparison
    per file) vs the full h5py scan of every file (``XARRAY_ZARRWRITE_FAST_SCAN=0``)."""

    params = [["plain", "packed"], ["fast", "full"]]
    param_names = ["files", "scan"]
    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self, kind: str, scan: str) -> None:
        import sys

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from compare_scan import write_days

        self.dir = tempfile.mkdtemp(prefix="xzw-asv-lookalike-")
        self.files = write_days(os.path.join(self.dir, kind), 120, kind == "packed")

    def teardown(self, kind: str, scan: str) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_scan(self, kind: str, scan: str) -> None:
        from compare_scan import scan_seconds

        scan_seconds(self.files, scan == "fast")
