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
from xarray_zarrwrite.errors import ChunkSpecError, InputError, RegionAlignmentError

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


def our_template(ds: xr.Dataset, chunks, shards) -> MemoryStore:
    """The same layout as a template of ours (``to_template(shards=...)``)."""
    store = MemoryStore()
    dims = ds.v.dims
    xzw.to_template(
        ds,
        store,
        chunks=dict(zip(dims, chunks, strict=True)),
        shards=dict(zip(dims, shards, strict=True)),
    )
    return store


@pytest.fixture(params=["xarray", "ours"])
def make(request):
    """Who makes the sharded template: plain xarray or :func:`to_template`."""
    return plain_template if request.param == "xarray" else our_template


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


def test_unaligned_writes_are_refused_naming_the_shard_size(layout, make):
    chunks, shards = layout
    ds = sample()
    store = make(ds, chunks, shards)
    # one step is a whole inner chunk along time for the first layout, never a whole shard
    for sel in (slice(0, 1), slice(0, 2), slice(2, 6), slice(8, 9), slice(1, 10)):
        with pytest.raises(RegionAlignmentError, match=r"shard size 4") as e:
            xzw.write_region(ds.isel(time=sel), store)
        assert "shard boundary" in str(e.value)
    assert data_keys(store) == set()  # nothing written
    xr.testing.assert_identical(xr.open_zarr(store).v.load(), unwritten(store))


def test_aligned_writes_read_back_bit_for_bit(layout, make):
    chunks, shards = layout
    ds = sample()
    store = make(ds, chunks, shards)
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


def test_whole_array_in_one_write_and_check_counts_shards(layout, make):
    chunks, shards = layout
    ds = sample(seed=1)
    store = make(ds, chunks, shards)
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


def test_two_writers_of_one_shard_need_safe_chunks_false(layout, make):
    chunks, shards = layout
    ds = sample(seed=2)
    store = make(ds, chunks, shards)
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


def test_partial_write_of_the_edge_shard_with_safe_chunks_false(layout, make):
    chunks, shards = layout
    ds = sample(seed=3)
    store = make(ds, chunks, shards)
    xzw.write_region(ds.isel(time=slice(0, 8)), store)
    xzw.write_region(ds.isel(time=slice(9, 10)), store, safe_chunks=False)
    back = xr.open_zarr(store).load().v
    xr.testing.assert_identical(back.isel(time=slice(0, 8)).drop_encoding(), ds.v[:8])
    xr.testing.assert_identical(back.isel(time=8), unwritten(store).isel(time=8))
    xr.testing.assert_identical(back.isel(time=slice(9, 10)).drop_encoding(), ds.v[9:])
    assert back[-1, -1, -1].values == ds.v[-1, -1, -1].values


def test_stream_writer_writes_whole_shards(layout, make):
    chunks, shards = layout
    ds = sample(seed=4)
    store = make(ds, chunks, shards)
    with xzw.StreamWriter(store) as writer:
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


def test_stream_writer_assembles_shards_from_single_steps(layout, make):
    chunks, shards = layout
    ds = sample(seed=10)
    store = make(ds, chunks, shards)
    with xzw.StreamWriter(store) as writer:
        for i in range(ds.sizes["time"]):  # steps smaller than a shard: assembled, not refused
            writer.write(ds.isel(time=slice(i, i + 1)))
    back = xr.open_zarr(store).load().v
    xr.testing.assert_identical(back.drop_encoding(), ds.v)
    assert back[-1, -1, -1].values == ds.v[-1, -1, -1].values
    grid = ChunkGrid(shape=ds.v.shape, chunks=chunks, shards=shards)
    assert data_keys(store) == {f"v/{grid.key(c)}" for c in grid.all_coords()}


def test_dask_backed_writes_read_back_bit_for_bit(layout, make):
    pytest.importorskip("dask")
    chunks, shards = layout
    ds = sample(seed=5)
    store = make(ds, chunks, shards)
    with pytest.raises(RegionAlignmentError, match="dask chunk boundary"):
        xzw.write_region(ds.chunk({"time": 2}), store)
    assert data_keys(store) == set()
    xzw.write_region(ds.chunk({"time": 4}), store)
    back = xr.open_zarr(store).load()
    xr.testing.assert_identical(back.v.drop_encoding(), ds.v)
    assert xzw.check(store).complete


# --- templates of ours: to_template(shards=...), convert(shards=...) -------------------------


def test_our_layout_equals_xarrays_for_the_same_encoding(layout):
    chunks, shards = layout
    ds = sample(seed=6)
    ours = MemoryStore()
    enc = {"v": {"chunks": chunks, "shards": shards}}
    xzw.to_template(ds, ours, encoding=enc)
    theirs = plain_template(ds, chunks, shards)
    for store in (ours, theirs):
        raw = zarr.open_array(store, path="v")
        assert (raw.chunks, raw.shards, raw.shape) == (chunks, shards, ds.v.shape)
    # both take the same region writes, and read back the same
    for store in (ours, theirs):
        xzw.write_region(ds, store)
    a, b = xr.open_zarr(ours).load(), xr.open_zarr(theirs).load()
    xr.testing.assert_identical(a.drop_encoding(), b.drop_encoding())
    xr.testing.assert_identical(a.v.drop_encoding(), ds.v)


def test_plain_xarray_region_writes_into_our_sharded_template(layout):
    chunks, shards = layout
    ds = sample(seed=7)
    store = our_template(ds, chunks, shards)
    for sel in (slice(0, 4), slice(4, 8), slice(8, 10)):
        part = ds.isel(time=sel).drop_vars(["lat", "lon"])
        part.to_zarr(store, region={"time": sel}, zarr_format=3)
    back = xr.open_zarr(store).load()
    xr.testing.assert_identical(back.v.drop_encoding(), ds.v)
    assert back.v[-1, -1, -1].values == ds.v[-1, -1, -1].values
    assert xzw.check(store).complete


def test_convert_writes_a_sharded_archive(tmp_path):
    ds = sample(seed=8)
    sources = [ds.isel(time=slice(0, 3)), ds.isel(time=slice(3, 7)), ds.isel(time=slice(7, 10))]
    path = tmp_path / "out.zarr"
    report = xzw.convert(
        sources,
        str(path),
        chunks={"time": 1, "lat": -1, "lon": -1},
        shards={"time": 4},
        executor="serial",
        progress=False,
    )
    assert report.ok
    raw = zarr.open_array(str(path), path="v")
    assert (raw.chunks, raw.shards) == ((1, 6, 8), (4, 6, 8))
    back = xr.open_zarr(str(path)).load()
    xr.testing.assert_identical(back.v.drop_encoding(), ds.v)
    assert back.v[-1, -1, -1].values == ds.v[-1, -1, -1].values
    assert xzw.check(str(path)).complete
    # three shards along time: 0-3, 4-7, 8-9, one object each
    assert sorted(p.name for p in (path / "v" / "c").iterdir()) == ["0", "1", "2"]


def test_auto_shards_group_chunks_by_access_pattern():
    times = pd.date_range("2000-01-01", periods=96, freq="h")
    v = np.zeros((96, 16, 32), "f4")
    ds = xr.Dataset({"v": (("time", "lat", "lon"), v)}, coords={"time": times})
    chunks = {"time": 1, "lat": 8, "lon": 8}  # 256 B chunks
    layouts = {}
    for pattern in ("temporal", "spatial"):
        store = MemoryStore()
        xzw.to_template(
            ds, store, chunks=chunks, shards="auto", access_pattern=pattern, target_shard_mb=0.004
        )
        raw = zarr.open_array(store, path="v")
        assert raw.chunks == (1, 8, 8)
        assert all(s % c == 0 for s, c in zip(raw.shards, raw.chunks, strict=True))
        assert np.prod(raw.shards) * 4 <= 0.004 * 2**20  # within the target
        layouts[pattern] = raw.shards
    # temporal: long runs of time per shard; spatial: whole maps per shard
    assert layouts["temporal"][0] == 16 and layouts["temporal"][1:] == (8, 8)
    assert layouts["spatial"] == (2, 16, 32)


def test_whole_dimension_shards_round_up_to_whole_chunks():
    ds = sample(seed=9)  # lat 6 in chunks of 4: a whole-dimension shard is 8 (2 chunks)
    store = MemoryStore()
    xzw.to_template(ds, store, chunks={"time": 2, "lat": 4, "lon": 8}, shards={"lat": -1})
    raw = zarr.open_array(store, path="v")
    assert (raw.chunks, raw.shards) == ((2, 4, 8), (2, 8, 8))
    xzw.write_region(ds.isel(time=slice(0, 2)), store)
    xr.testing.assert_identical(xr.open_zarr(store).v[:2].load().drop_encoding(), ds.v[:2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shards": {"time": 3}, "chunks": {"time": 2}}, "multiple of its chunk size 2"),
        ({"shards": {"time": 0}}, "positive multiple"),
        ({"shards": {"depth": 2}}, "not a dimension"),
        ({"shards": [4, 6, 8]}, "mapping of dimension"),
        ({"shards": {"time": 4}, "zarr_format": 2}, "Zarr v3 feature"),
        ({"encoding": {"v": {"shards": (4, 6, 8)}}, "zarr_format": 2}, "Zarr v3 feature"),
        ({"encoding": {"v": {"chunks": (2, 6, 8), "shards": (3, 6, 8)}}}, "not multiples"),
        ({"encoding": {"v": {"shards": (4, 6)}}}, "tuple of 3 positive integers"),
    ],
)
def test_bad_shards_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    path = tmp_path / "t.zarr"
    with pytest.raises(ChunkSpecError, match=match) as e:
        xzw.to_template(sample(), str(path), **kwargs)
    assert isinstance(e.value, InputError)
    assert not path.exists()
