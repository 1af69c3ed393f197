"""Configuration is read at call time: ``config.set`` takes effect on the next write."""

from __future__ import annotations

import asyncio

import xarray as xr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._compat import WrapperStore
from xarray_zarrwrite.config import config
from xarray_zarrwrite.testing.datasets import era5_like


class CountingStore(WrapperStore):
    """Records the most chunk puts in flight at once (each put takes a little while)."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.now = 0
        self.most = 0

    def _with_store(self, store):
        return type(self)(store)

    async def set(self, key, value):
        if "/c/" not in key:
            await super().set(key, value)
            return
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.005)
            await super().set(key, value)
        finally:
            self.now -= 1


def test_concurrency_set_after_a_write_limits_the_next_write():
    steps = era5_like("2000-01-01", 8, freq="h", nlat=8, nlon=16)
    base = MemoryStore()
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        base, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    store = CountingStore(base)
    xzw.write_region(steps.isel(time=[0, 1, 2, 3]), store)  # the first write: limits exist now
    for limit in (1, 3):
        store.most = 0
        with config.set({"concurrency": limit}):
            xzw.write_region(steps.isel(time=[4, 5, 6, 7]), store)
        assert 1 <= store.most <= limit
    xr.testing.assert_identical(xr.open_zarr(base).load(), steps)
