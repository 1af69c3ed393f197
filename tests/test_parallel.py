"""Concurrent writers: real OS processes, xr.map_blocks, a real dask.distributed cluster."""

from __future__ import annotations

import multiprocessing as mp
import random

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite.testing.datasets import era5_like


def _write_parts(path: str, bounds: list[tuple[int, int]], seed: int) -> int:
    import time

    from xarray_zarrwrite.testing.datasets import era5_like

    rng = random.Random(seed)
    year = era5_like("2000-01-01", 366)
    for a, b in bounds:
        time.sleep(rng.random() * 0.01)
        year.isel(time=slice(a, b)).fastzarr.write_region(path)
    return len(bounds)


def test_four_processes_write_disjoint_regions(tmp_path, year):
    path = str(tmp_path / "a.zarr")
    year.isel(time=slice(0, 6)).fastzarr.to_template(
        path, global_end="2000-12-31", chunks={"time": 6, "lat": 12, "lon": 24}
    )
    pieces = [(a, min(a + 12, 366)) for a in range(0, 366, 12)]
    random.Random(1).shuffle(pieces)
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        done = pool.starmap(_write_parts, [(path, pieces[i::4], i) for i in range(4)])
    assert sum(done) == len(pieces)
    xr.testing.assert_identical(xr.open_zarr(path).load(), year)


def test_map_blocks_pattern(tmp_path, year):
    path = str(tmp_path / "a.zarr")
    year.isel(time=slice(0, 10)).fastzarr.to_template(
        path, global_end="2000-12-31", chunks={"time": 30, "lat": 12, "lon": 24}
    )
    src = year.chunk(time=30)

    def write(block: xr.Dataset) -> xr.Dataset:
        block.fastzarr.write_region(path)
        return block

    xr.map_blocks(write, src, template=src).compute(scheduler="threads")
    xr.testing.assert_identical(xr.open_zarr(path).load(), year)


# Function scope: a Client is the process-wide default scheduler while it lives; kept open
# across tests, it would turn other tests' local-scheduler computes into distributed ones.
@pytest.fixture
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def test_dask_distributed_writes_on_workers(tmp_path, client):
    path = str(tmp_path / "a.zarr")
    year = era5_like("2000-01-01", 366, nlat=24, nlon=48)
    year.isel(time=slice(0, 10)).fastzarr.to_template(
        path, global_end="2000-12-31", chunks={"time": 61, "lat": 24, "lon": 48}
    )
    # data created lazily on the workers (never on the client), written by the workers
    import dask.array as da

    lazy = year.copy()
    for name in ("t2m", "tcwv"):
        values = year[name].values
        lazy[name] = (
            year[name].dims,
            da.from_delayed(
                client.scatter(values, broadcast=False), values.shape, values.dtype
            ).rechunk((61, 24, 48)),
            year[name].attrs,
        )
    res = lazy.fastzarr.write_region(path)
    assert res.nchunks == 2 * 6
    xr.testing.assert_identical(xr.open_zarr(path).load(), year)


def test_dask_distributed_map_blocks(tmp_path, client):
    path = str(tmp_path / "a.zarr")
    year = era5_like("2000-01-01", 120)
    year.isel(time=slice(0, 10)).fastzarr.to_template(
        path, chunks={"time": 10}, global_end="2000-04-29"
    )
    src = year.chunk(time=20)

    def write(block: xr.Dataset) -> xr.Dataset:
        # the module-level function: unpickling `write` on a worker imports xarray_zarrwrite
        xzw.write_region(block, path)
        return block.isel(time=slice(0, 0)).reindex_like(block)

    xr.map_blocks(write, src, template=src).compute()
    back = xr.open_zarr(path).load()
    np.testing.assert_array_equal(back.t2m.values, year.t2m.values)
    xr.testing.assert_identical(back, year)
