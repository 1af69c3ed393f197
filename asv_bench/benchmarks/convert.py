"""convert(): many NetCDF files -> one archive, against ``xr.open_mfdataset(...).to_zarr()``.

The full-size comparison (figures 1-3 of the issue, 168 MB) is ``asv_bench/compare_convert.py``;
here the heavy classes are skipped with ``ASV_SKIP_SLOW=1``, and the small ones run in quick
mode in a few seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import xarray as xr

from . import _skip_slow, yearly_files


def _write(datasets: list[xr.Dataset], directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for ds in datasets:
        path = os.path.join(directory, f"{pd.Timestamp(ds.time.values[0]):%Y-%m-%d}.nc")
        ds.to_netcdf(path)
        paths.append(path)
    return paths


def _small_files(directory: str, nfiles: int = 4) -> list[str]:
    from xarray_zarrwrite.testing.datasets import era5_like

    full = era5_like("2000-01-01", 1461, nlat=12, nlon=24)
    edges = np.linspace(0, 1461, nfiles + 1).astype(int)
    return _write([full.isel(time=slice(a, b)) for a, b in zip(edges[:-1], edges[1:])], directory)


def _convert(files: list[str], store: str, chunk: int, **kw) -> None:
    from xarray_zarrwrite.convert import convert

    shutil.rmtree(store, ignore_errors=True)
    report = convert(
        files,
        store,
        chunks={"time": chunk, "lat": -1, "lon": -1},
        resume=False,
        progress=False,
        **kw,
    )
    assert report.ok


def _xarray(files: list[str], store: str, chunk: int) -> None:
    from xarray_zarrwrite._compression import parse_compression

    shutil.rmtree(store, ignore_errors=True)
    with xr.open_mfdataset(files, combine="by_coords") as ds:
        shape = dict(ds.sizes)
        ds.chunk({"time": chunk}).to_zarr(
            store,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={
                n: {
                    "chunks": (chunk, shape["lat"], shape["lon"]),
                    "compressors": parse_compression("default", 3),
                }
                for n in ds.data_vars
            },
        )


class ConvertYearlyFiles:
    """Figure 1: 4 yearly files of daily 1461 x 120 x 240 float32 (168 MB), 2 workers."""

    params = [73, 100]
    param_names = ["time_chunk"]
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0.0
    timeout = 300

    def setup_cache(self) -> str:
        directory = tempfile.mkdtemp(prefix="xzw-asv-convert-")
        if os.environ.get("ASV_SKIP_SLOW", "0") != "1":
            _write(yearly_files(), directory)
        return directory

    def setup(self, directory: str, chunk: int) -> None:
        _skip_slow()
        self.files = sorted(
            os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".nc")
        )
        self.out = tempfile.mkdtemp(prefix="xzw-asv-out-")
        _convert(self.files, os.path.join(self.out, "warm.zarr"), chunk, max_workers=2)

    def teardown(self, directory: str, chunk: int) -> None:
        shutil.rmtree(self.out, ignore_errors=True)

    def time_convert_2_workers(self, directory: str, chunk: int) -> None:
        _convert(self.files, os.path.join(self.out, "a.zarr"), chunk, max_workers=2)

    def time_xarray_open_mfdataset_to_zarr(self, directory: str, chunk: int) -> None:
        _xarray(self.files, os.path.join(self.out, "b.zarr"), chunk)


class ConvertSmallFiles:
    """Small (2 MB) sources, misaligned with the chunks: the fixed costs of a run."""

    params = [["serial", "pool"], [4, 48]]
    param_names = ["executor", "nfiles"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 120

    def setup(self, executor: str, nfiles: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="xzw-asv-small-")
        self.files = _small_files(os.path.join(self.dir, "src"), nfiles)
        self.workers = 0 if executor == "serial" else 2
        # start the pool's forkserver once: what is timed is a run, not the interpreter start
        _convert(self.files, os.path.join(self.dir, "warm.zarr"), 100, max_workers=self.workers)

    def teardown(self, executor: str, nfiles: int) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_convert(self, executor: str, nfiles: int) -> None:
        _convert(self.files, os.path.join(self.dir, "a.zarr"), 100, max_workers=self.workers)

    def time_xarray_open_mfdataset_to_zarr(self, executor: str, nfiles: int) -> None:
        _xarray(self.files, os.path.join(self.dir, "b.zarr"), 100)


class CheckCompleteness:
    """check() of an archive with 2 x 1461 chunk objects, one missing."""

    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self) -> None:
        from xarray_zarrwrite.convert import convert

        self.dir = tempfile.mkdtemp(prefix="xzw-asv-check-")
        self.files = _small_files(os.path.join(self.dir, "src"), 4)
        self.store = os.path.join(self.dir, "a.zarr")
        convert(self.files, self.store, chunks={"time": 1}, max_workers=0, progress=False)
        os.remove(os.path.join(self.store, "t2m", "c", "700", "0", "0"))

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_check(self) -> None:
        from xarray_zarrwrite._check import check

        status = check(self.store)
        assert status.missing_chunks == {"t2m": [(700, 0, 0)]}


class PlanTasks:
    """Planning (pure): 100 years of hourly steps from 1200 monthly sources, chunk 24."""

    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self) -> None:
        from zarr.storage import MemoryStore

        from xarray_zarrwrite._open import load_template
        from xarray_zarrwrite.api import to_template
        from xarray_zarrwrite.testing.datasets import era5_like

        example = era5_like("1950-01-01", 24, freq="h", nlat=4, nlon=8)
        store = MemoryStore()
        to_template(example, store, global_end="2049-12-31T23:00", chunks={"time": 24})
        self.info = load_template(store)
        axis = self.info.indexes["time"]
        months = pd.DatetimeIndex(axis).to_period("M")
        edges = np.flatnonzero(np.r_[True, months[1:] != months[:-1], True])
        self.positions = [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]

    def time_plan_tasks(self) -> None:
        from xarray_zarrwrite.convert import plan_tasks

        plan = plan_tasks(
            self.info,
            self.positions,
            time_dim="time",
            write_vars=["t2m", "tcwv"],
            budget=2**30,
            slots=8,
        )
        assert plan.tasks and not plan.gaps
