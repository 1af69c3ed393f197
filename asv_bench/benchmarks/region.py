"""Region writes: ours (``write_region``) against xarray's ``to_zarr(region=...)``.

Both write into the same kind of template, made by ``to_template`` in setup; every timed call
sees a freshly set-up template (asv re-runs ``setup`` before each sample).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import xarray_zarrwrite as xzw

from . import (
    YEARS,
    _skip_slow,
    check_region,
    latency_case,
    latency_region,
    latency_store,
    latency_template,
    requires_dask,
    yearly_files,
    yearly_regions,
    yearly_template,
)


class RegionWriteSlowStore:
    """20 variables x 4 chunks of (1, 64, 64) float32 into a store with 20 ms per request.

    ``case``:

    - ``"first"``: the first write of the process into this template (ours reads the
      template's metadata first);
    - ``"next"``: another region of the template was written before in this process (our
      template metadata is cached per process, as in a long conversion job);
    - ``"next-dask"``: as ``"next"``, from dask-backed data with one block per chunk.

    Both libraries get the region as ``{"time": slice}``.
    """

    params = ["first", "next", "next-dask"]
    param_names = ["case"]
    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0
    timeout = 120

    def setup(self, case: str) -> None:
        full = latency_case()
        sel = latency_region(1)
        self.region = {"time": sel}
        part = full.isel(time=sel)
        self.ours_mem = latency_template(full)
        self.theirs_mem = latency_template(full)
        self.ours = latency_store(self.ours_mem)
        self.theirs = latency_store(self.theirs_mem)
        if case.startswith("next"):
            # another region written before, from NumPy (fills our per-process template cache)
            before = latency_region(0)
            warm = full.isel(time=before)
            xzw.write_region(warm, self.ours, region={"time": before})
            warm.drop_vars(["lat", "lon"]).to_zarr(self.theirs, region={"time": before}, mode="r+")
            check_region(self.ours_mem, warm, {"time": before})
            check_region(self.theirs_mem, warm, {"time": before})
        if case.endswith("dask"):
            requires_dask()
            part = part.chunk({"time": 1})
        self.part = part
        # xarray refuses coordinates without the region's dimension: dropped by hand
        self.part_xr = part.drop_vars(["lat", "lon"])

    def time_write_region(self, case: str) -> None:
        xzw.write_region(self.part, self.ours, region=self.region)

    def time_xarray_to_zarr(self, case: str) -> None:
        self.part_xr.to_zarr(self.theirs, region=self.region, mode="r+")


class RegionWriteYearlyFiles:
    """4 yearly files of daily 120 x 240 float32 (1461 days, 168 MB) into a local template.

    Time chunk 1 day (the only uniform chunking on which 366- and 365-day regions are all
    aligned), so 1461 chunks of 112.5 KiB, blosc zstd 3 + shuffle. The files are NumPy-backed
    datasets in memory; each library writes them one after another, region by region.
    """

    number = 1
    repeat = (2, 5, 30.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self) -> None:
        _skip_slow()
        self.files = yearly_files()
        self.regions = yearly_regions(self.files)
        self.files_xr = [f.drop_vars(["lat", "lon"]) for f in self.files]
        self.tmp = Path(tempfile.mkdtemp(prefix="xzw-asv-"))
        self.ours = str(self.tmp / "ours.zarr")
        self.theirs = str(self.tmp / "xarray.zarr")
        yearly_template(self.files, self.ours)
        yearly_template(self.files, self.theirs)

    def teardown(self) -> None:
        if hasattr(self, "tmp"):  # setup may have been skipped
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _ours(self) -> None:
        for f in self.files:
            xzw.write_region(f, self.ours)

    def _xarray(self) -> None:
        for f, sel in zip(self.files_xr, self.regions, strict=True):
            f.to_zarr(self.theirs, region={"time": sel}, mode="r+")

    def time_write_region(self) -> None:
        self._ours()

    def time_xarray_to_zarr(self) -> None:
        self._xarray()


class RegionWriteYearlyFileMemory:
    """Peak memory of writing one yearly file (366 days, 42 MB) of case 3 into its template.

    One file rather than four keeps setup short; the setup's own memory (the file and the
    imports) is in both figures alike.
    """

    timeout = 120

    def setup(self) -> None:
        self.file = yearly_files(years=YEARS[:1])[0]
        self.tmp = Path(tempfile.mkdtemp(prefix="xzw-asv-"))
        self.ours = str(self.tmp / "ours.zarr")
        self.theirs = str(self.tmp / "xarray.zarr")
        yearly_template([self.file], self.ours, global_end=f"{YEARS[-1]}-12-31")
        yearly_template([self.file], self.theirs, global_end=f"{YEARS[-1]}-12-31")
        self.file_xr = self.file.drop_vars(["lat", "lon"])

    def teardown(self) -> None:
        if hasattr(self, "tmp"):  # setup may have been skipped
            shutil.rmtree(self.tmp, ignore_errors=True)

    def peakmem_write_region(self) -> None:
        xzw.write_region(self.file, self.ours)

    def peakmem_xarray_to_zarr(self) -> None:
        region = {"time": slice(0, self.file.sizes["time"])}
        self.file_xr.to_zarr(self.theirs, region=region, mode="r+")
