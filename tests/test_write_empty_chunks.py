"""write_empty_chunks=False: units of only fill value are not stored, but recorded for check()."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._empty import RECORD_DIR, TEMPLATE_DEFAULT_ATTR
from xarray_zarrwrite._runtime import runtime
from xarray_zarrwrite._stream import StreamWriter
from xarray_zarrwrite.errors import IcechunkTargetError, OptionError

TIMES = pd.date_range("2000-01-01", periods=7, freq="D")  # 7 x 5: edge units on both dims
CHUNKS = {"time": 2, "x": 2}


def sample(int_packed: bool = False) -> xr.Dataset:
    """Units (2 x 2) of data, units of only NaN (the fill value) and mixed units; the edge
    units (time 6, x 4) include an empty one and a non-empty one."""
    v = np.arange(35, dtype="f4").reshape(7, 5)
    v[2:4, :] = np.nan  # unit row 1: empty
    v[0:2, 2:4] = np.nan  # unit (0, 1): empty
    v[6, 4] = np.nan  # unit (3, 2): a single NaN, empty (edge in both dims)
    v[4, 0] = np.nan  # unit (2, 0): mixed, stored
    ds = xr.Dataset({"v": (("time", "x"), v)}, coords={"time": TIMES, "x": np.arange(5.0)})
    if int_packed:
        ds.v.encoding = {"dtype": "int16", "scale_factor": 0.5, "_FillValue": -32768}
    return ds


EMPTY_UNITS = {(1, 0), (1, 1), (1, 2), (0, 1), (3, 2)}


def unit_keys(store: MemoryStore, name: str = "v") -> set[str]:
    return {
        k
        for k in store._store_dict
        if k.startswith(f"{name}/")
        and not k.endswith(("zarr.json", ".zarray", ".zattrs"))
        and RECORD_DIR not in k
    }


def records(store: MemoryStore, name: str = "v") -> set[str]:
    return {k for k in store._store_dict if k.startswith(f"{name}/{RECORD_DIR}/")}


def read(store, **kw) -> xr.Dataset:
    return xr.open_zarr(store, **kw).load()


def theirs(ds: xr.Dataset, zarr_format: int = 3, sharded: bool = False) -> MemoryStore:
    ref = MemoryStore()
    enc: dict = {"chunks": (2, 2)}
    if sharded:
        enc = {"chunks": (1, 2), "shards": (2, 2)}
    ds.to_zarr(
        ref,
        zarr_format=zarr_format,
        write_empty_chunks=False,
        encoding={"v": {**ds.v.encoding, **enc}},
    )
    return ref


def template(ds: xr.Dataset, zarr_format: int = 3, sharded: bool = False, **kw) -> MemoryStore:
    store = MemoryStore()
    chunks = {"time": 1, "x": 2} if sharded else CHUNKS
    shards = CHUNKS if sharded else None
    xzw.to_template(ds, store, chunks=chunks, shards=shards, zarr_format=zarr_format, **kw)
    return store


def same_fill_value(ours: MemoryStore, ref: MemoryStore) -> bool:
    """Whether the zarr arrays have the same fill value (NaN equal to NaN).

    They differ where to_zarr gives a zarr v3 array fill value 0 and keeps ``_FillValue``
    only as an attribute (packed integers; floats too with xarray 2025.6), while our
    templates make ``_FillValue`` the array's fill value as well: to_zarr then stores units
    of only ``_FillValue`` (not zarr's fill value to it), we do not; both read back the same.
    """
    a = zarr.open_array(ours, path="v", mode="r").fill_value
    b = zarr.open_array(ref, path="v", mode="r").fill_value
    return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))


def assert_like_to_zarr(ours: MemoryStore, ref: MemoryStore, ds: xr.Dataset) -> None:
    """Same values read back (bit for bit, the last index of each dim included), the same
    unit objects absent (where the fill values agree), and check() complete with the empty
    units recorded."""
    a, b = read(ours), read(ref)
    assert a.v.values.tobytes() == b.v.values.tobytes()
    np.testing.assert_array_equal(a.v.values, ds.v.values)
    assert np.isnan(a.v.values[-1, -1]) and a.v.values[-1, 0] == ds.v.values[-1, 0]
    if same_fill_value(ours, ref):
        assert unit_keys(ours) == unit_keys(ref)
    else:
        assert unit_keys(ours) < unit_keys(ref)
    status = xzw.check(ours)
    assert status.complete and status.written == status.total == 4 * 3
    assert set(status.variables["v"].empty_chunks) == EMPTY_UNITS
    assert "only fill value" in status.summary()


@pytest.mark.parametrize(
    ("zarr_format", "sharded", "packed"),
    [(3, False, False), (2, False, False), (3, True, False), (3, False, True), (2, False, True)],
)
def test_blocking_write_matches_to_zarr(zarr_format, sharded, packed):
    ds = sample(packed)
    ours = template(ds, zarr_format, sharded)
    res = xzw.write_region(ds, ours, write_empty_chunks=False)
    assert res.nchunks == 12
    ref = theirs(ds, zarr_format, sharded)
    assert_like_to_zarr(ours, ref, ds)
    assert len(unit_keys(ours)) == 12 - len(EMPTY_UNITS)
    assert len(records(ours)) == 1  # one record object per write call and array
    xzw.write_region(ds, ours, write_empty_chunks=False)  # a re-run: the same record
    assert len(records(ours)) == 1 and len(unit_keys(ours)) == 12 - len(EMPTY_UNITS)


def test_default_stores_every_unit():
    ds = sample()
    store = template(ds)
    xzw.write_region(ds, store)
    assert len(unit_keys(store)) == 12 and not records(store)
    xzw.write_region(ds, store, write_empty_chunks=True)
    assert len(unit_keys(store)) == 12 and not records(store)
    assert xzw.check(store).variables["v"].empty_chunks == ()


def test_empty_write_deletes_an_older_unit_and_a_later_write_restores_it():
    ds = sample()
    store = template(ds)
    full = ds.fillna(1.0)
    xzw.write_region(full, store)  # every unit stored, with data
    assert len(unit_keys(store)) == 12
    xzw.write_region(ds, store, write_empty_chunks=False)  # the empty ones deleted
    assert_like_to_zarr(store, theirs(ds), ds)
    xzw.write_region(full, store, write_empty_chunks=False)  # stored again
    assert len(unit_keys(store)) == 12 and len(records(store)) == 1  # written regardless
    np.testing.assert_array_equal(read(store).v.values, full.v.values)
    status = xzw.check(store)
    assert status.complete and status.variables["v"].empty_chunks == ()


def test_concurrent_writers_never_lose_each_others_records(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    ds = sample()
    path = str(tmp_path / "c.zarr")
    xzw.to_template(ds, path, chunks=CHUNKS)
    parts = [ds.isel(time=slice(t, t + 2)) for t in range(0, 7, 2)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: xzw.write_region(p, path, write_empty_chunks=False), parts))
    status = xzw.check(path)
    assert status.complete and set(status.variables["v"].empty_chunks) == EMPTY_UNITS
    assert len(list((tmp_path / "c.zarr" / "v" / RECORD_DIR).iterdir())) == 3  # 3 with empties
    np.testing.assert_array_equal(read(path).v.values, ds.v.values)


def test_record_left_by_a_default_write_counts_as_stored():
    ds = sample()
    store = template(ds)
    xzw.write_region(ds, store, write_empty_chunks=False)
    xzw.write_region(ds.fillna(2.0), store)  # default: stores; the record stays
    assert len(unit_keys(store)) == 12 and records(store)
    status = xzw.check(store)
    assert status.complete and status.variables["v"].empty_chunks == ()
    np.testing.assert_array_equal(read(store).v.values, ds.fillna(2.0).v.values)


def test_never_written_and_lost_units_are_still_missing():
    ds = sample()
    store = template(ds)
    xzw.write_region(ds.isel(time=slice(0, 4)), store, write_empty_chunks=False)
    status = xzw.check(store)
    v = status.variables["v"]
    assert not status.complete and v.written == 6
    assert set(v.missing_chunks) == {(t, x) for t in (2, 3) for x in range(3)}
    assert v.missing_index == ((4, 7),)
    assert set(v.empty_chunks) == {(1, 0), (1, 1), (1, 2), (0, 1)}
    # a stored unit lost (a killed writer's unit never landed): missing, never "empty"
    del store._store_dict["v/c/0/0"]
    v = xzw.check(store).variables["v"]
    assert (0, 0) in v.missing_chunks and (0, 0) not in v.empty_chunks


def test_template_default_and_per_call_override(tmp_path):
    ds = sample()
    path = tmp_path / "t.zarr"
    xzw.to_template(ds, path, chunks=CHUNKS, write_empty_chunks=False)
    assert zarr.open_group(str(path), mode="r").attrs[TEMPLATE_DEFAULT_ATTR] is False
    xzw.write_region(ds, path)  # the template's default: empty units recorded
    status = xzw.check(path)
    assert status.complete and set(status.variables["v"].empty_chunks) == EMPTY_UNITS
    assert not (path / "v" / "c" / "1" / "0").exists()
    xzw.write_region(ds, path, write_empty_chunks=True)  # the call overrides it
    assert (path / "v" / "c" / "1" / "0").exists()
    np.testing.assert_array_equal(read(path).v.values, ds.v.values)
    # a template made from this archive does not inherit its default
    other = tmp_path / "o.zarr"
    xzw.to_template(xr.open_zarr(path), other, chunks=CHUNKS)
    assert TEMPLATE_DEFAULT_ATTR not in zarr.open_group(str(other), mode="r").attrs


@pytest.mark.parametrize("compute", [True, False])
def test_dask_backed_writes(compute):
    ds = sample()
    store = template(ds)
    with dask.config.set(scheduler="threads"):
        out = xzw.write_region(
            ds.chunk(time=2, x=-1), store, write_empty_chunks=False, compute=compute
        )
        if not compute:
            assert not unit_keys(store)
            out = out.compute()
    assert out.nchunks == 12
    assert_like_to_zarr(store, theirs(ds), ds)


def test_map_blocks_through_the_accessor(tmp_path):
    ds = sample()
    path = str(tmp_path / "m.zarr")
    xzw.to_template(ds, path, chunks=CHUNKS)

    def write(block: xr.Dataset) -> xr.Dataset:
        block.fastzarr.write_region(path, write_empty_chunks=False)
        return block

    with dask.config.set(scheduler="threads"):
        xr.map_blocks(write, ds.chunk(time=2, x=-1), template=ds.chunk(time=2, x=-1)).compute()
    status = xzw.check(path)
    assert status.complete and set(status.variables["v"].empty_chunks) == EMPTY_UNITS
    np.testing.assert_array_equal(read(path).v.values, ds.v.values)


def test_partial_units_with_unsafe_chunks_as_to_zarr():
    ds = sample()
    ours = template(ds)
    ref = MemoryStore()
    ds.chunk(time=2, x=2).to_zarr(ref, zarr_format=3, compute=False)  # metadata only
    part = ds.isel(time=slice(2, 3))  # half of unit row 1 (all NaN); the rest never written
    for _store, write in (
        (ours, lambda: xzw.write_region(part, ours, safe_chunks=False, write_empty_chunks=False)),
        (
            ref,
            lambda: part.drop_vars("x").to_zarr(
                ref, region={"time": slice(2, 3)}, safe_chunks=False, write_empty_chunks=False
            ),
        ),
    ):
        write()
    assert unit_keys(ours) == set()
    assert unit_keys(ref) == set() or not same_fill_value(ours, ref)
    assert xzw.check(ours).variables["v"].written == 3  # recorded as written (empty)
    one = ds.isel(time=slice(4, 5))  # half of unit row 2: data, stored by read-modify-write
    xzw.write_region(one, ours, safe_chunks=False, write_empty_chunks=False)
    assert unit_keys(ours) == {"v/c/2/0", "v/c/2/1", "v/c/2/2"}
    np.testing.assert_array_equal(read(ours).v.values[4], ds.v.values[4])


def test_non_blocking_writes_follow_the_template_default():
    ds = sample()
    store = template(ds, write_empty_chunks=False)
    try:
        xzw.write_region(ds, store, blocking=False).result(60)
        assert len(unit_keys(store)) < 12  # the all-fill units were not stored
        assert_like_to_zarr(store, theirs(ds), ds)
        xzw.write_region(ds, store, blocking=False, write_empty_chunks=True).result(60)
        assert len(unit_keys(store)) == 12
    finally:
        for key, writer in list(runtime.writers.items()):
            if key[0].startswith(f"object:{id(store)}"):
                writer.close()


@pytest.mark.parametrize("bad", ["no", 0, 1.0])
def test_invalid_values_are_refused_with_nothing_written(bad):
    ds = sample()
    store = template(ds)
    before = dict(store._store_dict)
    with pytest.raises(OptionError, match="write_empty_chunks"):
        xzw.write_region(ds, store, write_empty_chunks=bad)
    assert store._store_dict == before
    with pytest.raises(OptionError, match="write_empty_chunks"):
        xzw.to_template(ds, MemoryStore(), write_empty_chunks=bad)


def test_icechunk_targets_refuse_false():
    icechunk = pytest.importorskip("icechunk")
    ds = sample()
    repo = icechunk.Repository.create(icechunk.in_memory_storage())
    with pytest.raises(IcechunkTargetError, match="write_empty_chunks=False"):
        xzw.to_template(ds, repo, write_empty_chunks=False)
    xzw.to_template(ds, repo, chunks=CHUNKS)
    tip = repo.lookup_branch("main")
    with pytest.raises(IcechunkTargetError, match="write_empty_chunks=False"):
        xzw.write_region(ds, repo, write_empty_chunks=False)
    assert repo.lookup_branch("main") == tip


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_stream_writer_one_step_at_a_time_assembles_and_skips_empty_units(order):
    """Steps smaller than the unit are assembled, and an assembled all-fill unit is not
    stored but recorded, as with to_zarr(write_empty_chunks=False) of the whole."""
    ds = sample()
    store = template(ds)
    steps = range(ds.sizes["time"])
    with StreamWriter(store, write_empty_chunks=False) as writer:
        for i in steps if order == "forward" else reversed(steps):
            writer.write(ds.isel(time=slice(i, i + 1)))
    assert_like_to_zarr(store, theirs(ds), ds)


def test_stream_writer_refuses_a_bad_write_empty_chunks_with_nothing_written():
    ds = sample()
    store = template(ds)
    before = dict(store._store_dict)
    with pytest.raises(OptionError, match="write_empty_chunks"):
        StreamWriter(store, write_empty_chunks="no")
    assert store._store_dict == before
