"""``StreamWriter(borrow=True)``: host data encoded from the caller's arrays, no snapshot copy."""

from __future__ import annotations

import numpy as np
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite._runtime import runtime
from xarray_zarrwrite.testing.datasets import era5_like


def test_borrowed_steps_read_back_bitwise_and_are_copied_only_when_committed(tmp_path):
    steps = era5_like("2000-01-01", 7, freq="h", nlat=8, nlon=16)
    path = str(tmp_path / "b.zarr")
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    pool = runtime.peek("staging.host_pool")
    free_before = None if pool is None else {k: len(v) for k, v in pool._free.items()}
    with xzw.StreamWriter(path, borrow=True) as writer:
        futures = []
        for i in range(7):
            fut = writer.write(steps.isel(time=[i]).copy(deep=True))
            futures.append(fut)
        for fut in futures:
            fut.copied.result(60)
            assert fut.committed.done()  # borrowed: the arrays are free only once committed
    back = xr.open_zarr(path).load()
    for name in ("t2m", "tcwv"):
        assert back[name].values.tobytes() == steps[name].values.tobytes()
        assert back[name].values[-1, -1, -1] == steps[name].values[-1, -1, -1]
    xr.testing.assert_identical(back, steps)
    pool = runtime.peek("staging.host_pool")
    if free_before is not None:  # no snapshot buffer was taken from the pool
        assert {k: len(v) for k, v in pool._free.items()} == free_before


def test_borrow_still_snapshots_steps_held_for_assembly(tmp_path):
    steps = era5_like("2000-01-01", 9, freq="h", nlat=8, nlon=16)
    path = str(tmp_path / "a.zarr")
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 4}
    )
    with xzw.StreamWriter(path, borrow=True) as writer:
        for i in range(9):
            step = steps.isel(time=[i]).copy(deep=True)
            writer.write(step).copied.result(60)
            for name in ("t2m", "tcwv"):
                step[name].values[...] = np.nan  # reused at once: the unit holds a copy
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)
