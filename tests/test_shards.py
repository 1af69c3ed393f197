"""Sharded templates made by plain xarray: the write unit is the shard.

A shard is one stored object holding many inner chunks: a region write must cover whole
shards, or two writers of one shard overwrite each other's inner chunks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._grid import ChunkGrid
from xarray_zarrwrite.errors import RegionAlignmentError

TIMES = pd.date_range("2000-01-01", periods=10, freq="D")


def sample(seed: int = 0, nlat: int = 6, nlon: int = 8) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((len(TIMES), nlat, nlon)).astype("f4")
    return xr.Dataset(
        {"v": (("time", "lat", "lon"), v)},
        coords={"time": TIMES, "lat": np.arange(nlat) * 1.5, "lon": np.arange(nlon) * 2.0},
    )


LAYOUTS = {
    # 10 steps in shards of 4: an edge shard of 2 along time
    "time": ((1, 6, 8), (4, 6, 8)),
    # edge shards along time and lat (6 = 4 + 2), inner chunks of 2 x 2 x 4
    "all-dims": ((2, 2, 4), (4, 4, 8)),
}


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request):
    return LAYOUTS[request.param]


def plain_template(ds: xr.Dataset, chunks, shards) -> MemoryStore:
    """A sharded template as plain xarray writes one: metadata and coordinates, no data."""
    store = MemoryStore()
    ds.chunk(dict(zip(ds.v.dims, shards, strict=True))).to_zarr(
        store,
        encoding={"v": {"chunks": chunks, "shards": shards}},
        compute=False,
        zarr_format=3,
    )
    return store


def data_keys(store: MemoryStore) -> set[str]:
    return {k for k in store._store_dict if k.startswith("v/c")}


def unwritten(store: MemoryStore) -> xr.DataArray:
    """What the template reads as where nothing was written (NaN, or 0 on older xarray)."""
    fill = zarr.open_array(store, path="v").fill_value
    return xr.full_like(xr.open_zarr(store).v.load(), np.nan if np.isnan(fill) else fill)


def test_unaligned_writes_are_refused_naming_the_shard_size(layout):
    chunks, shards = layout
    ds = sample()
    store = plain_template(ds, chunks, shards)
    # one step is a whole inner chunk along time for the first layout, never a whole shard
    for sel in (slice(0, 1), slice(0, 2), slice(2, 6), slice(8, 9), slice(1, 10)):
        with pytest.raises(RegionAlignmentError, match=r"shard size 4") as e:
            xzw.write_region(ds.isel(time=sel), store)
        assert "shard boundary" in str(e.value)
    assert data_keys(store) == set()  # nothing written
    xr.testing.assert_identical(xr.open_zarr(store).v.load(), unwritten(store))


def test_aligned_writes_read_back_bit_for_bit(layout):
    chunks, shards = layout
    ds = sample()
    store = plain_template(ds, chunks, shards)
    for sel in (slice(8, 10), slice(0, 4), slice(4, 8)):  # the edge shard first
        res = xzw.write_region(ds.isel(time=sel), store)
        grid = ChunkGrid(shape=ds.v.shape, chunks=chunks, shards=shards)
        part = (slice(sel.start, sel.stop), slice(0, 6), slice(0, 8))
        assert res.nchunks == grid.count(part)
    back = xr.open_zarr(store).load()
    xr.testing.assert_identical(back.v.drop_encoding(), ds.v)
    assert back.v[-1, -1, -1].values == ds.v[-1, -1, -1].values
    raw = zarr.open_array(store, path="v")
    assert raw.shards == shards and raw.chunks == chunks
    np.testing.assert_array_equal(raw[...], ds.v.values)
    grid = ChunkGrid.from_array(raw)
    assert data_keys(store) == {f"v/{grid.key(c)}" for c in grid.all_coords()}


def test_whole_array_in_one_write_and_check_counts_shards(layout):
    chunks, shards = layout
    ds = sample(seed=1)
    store = plain_template(ds, chunks, shards)
    grid = ChunkGrid(shape=ds.v.shape, chunks=chunks, shards=shards)
    xzw.write_region(ds.isel(time=slice(0, 4)), store)
    report = xzw.check(store, variables=["v"])
    v = report.variables["v"]
    assert v.chunks == shards
    assert v.total == grid.nunits
    assert v.written == grid.count((slice(0, 4), slice(0, 6), slice(0, 8)))
    assert v.missing_index == ((4, 10),)
    assert v.missing == (("2000-01-05", "2000-01-10"),)
    assert {c[0] for c in v.missing_chunks} == {1, 2}
    xzw.write_region(ds, store)
    report = xzw.check(store, variables=["v"])
    assert report.complete and report.written == grid.nunits
    xr.testing.assert_identical(xr.open_zarr(store).load().v.drop_encoding(), ds.v)


def test_two_writers_of_one_shard_need_safe_chunks_false(layout):
    chunks, shards = layout
    ds = sample(seed=2)
    store = plain_template(ds, chunks, shards)
    first, second = ds.isel(time=slice(4, 6)), ds.isel(time=slice(6, 8))
    for part in (first, second):
        with pytest.raises(RegionAlignmentError, match="shard"):
            xzw.write_region(part, store)
        with pytest.raises(RegionAlignmentError, match="shard"):
            xzw.plan(part, store)
    assert data_keys(store) == set()
    # with safe_chunks=False each write reads, modifies and rewrites the shard: one writer at
    # a time keeps both halves
    for part in (first, second):
        xzw.write_region(part, store, safe_chunks=False)
    back = xr.open_zarr(store).load().v
    xr.testing.assert_identical(back.isel(time=slice(4, 8)).drop_encoding(), ds.v[4:8])
    blank = unwritten(store)
    xr.testing.assert_identical(back.isel(time=slice(0, 4)), blank.isel(time=slice(0, 4)))
    xr.testing.assert_identical(back.isel(time=slice(8, 10)), blank.isel(time=slice(8, 10)))


def test_partial_write_of_the_edge_shard_with_safe_chunks_false(layout):
    chunks, shards = layout
    ds = sample(seed=3)
    store = plain_template(ds, chunks, shards)
    xzw.write_region(ds.isel(time=slice(0, 8)), store)
    xzw.write_region(ds.isel(time=slice(9, 10)), store, safe_chunks=False)
    back = xr.open_zarr(store).load().v
    xr.testing.assert_identical(back.isel(time=slice(0, 8)).drop_encoding(), ds.v[:8])
    xr.testing.assert_identical(back.isel(time=8), unwritten(store).isel(time=8))
    xr.testing.assert_identical(back.isel(time=slice(9, 10)).drop_encoding(), ds.v[9:])
    assert back[-1, -1, -1].values == ds.v[-1, -1, -1].values


def test_stream_writer_writes_whole_shards(layout):
    chunks, shards = layout
    ds = sample(seed=4)
    store = plain_template(ds, chunks, shards)
    with xzw.StreamWriter(store) as writer:
        with pytest.raises(RegionAlignmentError, match="shard size 4"):
            writer.write(ds.isel(time=slice(0, 1)))
        futures = [writer.write(ds.isel(time=sel)) for sel in (slice(0, 4), slice(8, 10))]
        results = [f.result() for f in futures]
    assert [r.region["time"] for r in results] == [slice(0, 4), slice(8, 10)]
    back = xr.open_zarr(store).load().v
    xr.testing.assert_identical(back.isel(time=slice(0, 4)).drop_encoding(), ds.v[:4])
    xr.testing.assert_identical(back.isel(time=slice(8, 10)).drop_encoding(), ds.v[8:])
    xr.testing.assert_identical(
        back.isel(time=slice(4, 8)), unwritten(store).isel(time=slice(4, 8))
    )
    assert xzw.check(store, variables=["v"]).written == xzw.check(store).total - (
        ChunkGrid(shape=ds.v.shape, chunks=chunks, shards=shards).count(
            (slice(4, 8), slice(0, 6), slice(0, 8))
        )
    )


def test_dask_backed_writes_read_back_bit_for_bit(layout):
    pytest.importorskip("dask")
    chunks, shards = layout
    ds = sample(seed=5)
    store = plain_template(ds, chunks, shards)
    with pytest.raises(RegionAlignmentError, match="dask chunk boundary"):
        xzw.write_region(ds.chunk({"time": 2}), store)
    assert data_keys(store) == set()
    xzw.write_region(ds.chunk({"time": 4}), store)
    back = xr.open_zarr(store).load()
    xr.testing.assert_identical(back.v.drop_encoding(), ds.v)
    assert xzw.check(store).complete
