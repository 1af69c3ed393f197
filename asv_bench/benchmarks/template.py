"""Templates: ours (``to_template``) against xarray's ``to_zarr(compute=False)``.

100 float32 variables of (time, lat, lon) = (1,000,000 hourly steps, 10, 10), chunked
(8760, 10, 10): one year of hours per chunk, 3.3 MiB; 115 chunks per variable, 40 GB in all.
Ours is made from one day of example data; xarray's from the equivalent lazy (dask) dataset of
the full extent with the same chunking and compressor (building that dataset is done in setup,
not timed). Both go to a MemoryStore behind a counter of write requests.
"""

from __future__ import annotations

from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw

from . import (
    LONG_CHUNKS,
    CountingStore,
    long_time_axis,
    long_time_example,
    long_time_lazy,
    long_time_xarray_encoding,
    requires_dask,
)


class TemplateLongTimeAxis:
    """100 variables x 1,000,000 hourly time steps: seconds and store writes."""

    number = 1
    repeat = (2, 5, 30.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self) -> None:
        requires_dask()
        self.example = long_time_example()
        self.end = long_time_axis()[-1]
        self.lazy = long_time_lazy()
        self.encoding = long_time_xarray_encoding(self.lazy)
        self.ours = CountingStore(MemoryStore())
        self.theirs = CountingStore(MemoryStore())

    def _ours(self) -> None:
        xzw.to_template(self.example, self.ours, global_end=self.end, freq="h", chunks=LONG_CHUNKS)

    def _xarray(self) -> None:
        self.lazy.to_zarr(self.theirs, compute=False, zarr_format=3, encoding=self.encoding)

    def time_to_template(self) -> None:
        self._ours()

    def time_xarray_to_zarr(self) -> None:
        self._xarray()

    def track_store_writes_to_template(self) -> int:
        self._ours()
        return self.ours.writes

    def track_store_writes_xarray_to_zarr(self) -> int:
        self._xarray()
        return self.theirs.writes

    track_store_writes_to_template.unit = "writes"  # type: ignore[attr-defined]
    track_store_writes_xarray_to_zarr.unit = "writes"  # type: ignore[attr-defined]
