"""xarray's keywords where they mean the same: each against ``to_zarr`` with the same arguments."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore, MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite.errors import InvalidNameError

TIMES = pd.date_range("2000-01-01", periods=6, freq="D")


def sample(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"v": (("time", "x"), rng.standard_normal((6, 4)).astype("f4"))},
        coords={"time": TIMES, "x": np.arange(4.0)},
        attrs={"source": "test"},
    )


def theirs(ds: xr.Dataset, store, **kwargs) -> None:
    """What plain xarray writes with the same arguments (then the data, all of it)."""
    ds.to_zarr(store, zarr_format=3, **kwargs)


def read(store, **kwargs) -> xr.Dataset:
    return xr.open_zarr(store, **kwargs).load()


@pytest.mark.parametrize("consolidated", [True, False])
def test_consolidated_as_to_zarr(consolidated):
    ds = sample()
    ours, ref = MemoryStore(), MemoryStore()
    xzw.to_template(ds, ours, consolidated=consolidated)
    xzw.write_region(ds, ours)
    theirs(ds, ref, consolidated=consolidated)
    for store in (ours, ref):
        meta = zarr.open_group(store, mode="r", use_consolidated=None).metadata
        assert (meta.consolidated_metadata is not None) == consolidated
        if not consolidated:
            with pytest.raises(ValueError, match=r"[Cc]onsolidated"):
                zarr.open_group(store, mode="r", use_consolidated=True)
    xr.testing.assert_identical(
        read(ours, consolidated=consolidated), read(ref, consolidated=consolidated)
    )


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_group_as_to_zarr(zarr_format):
    ds = sample(1)
    ours, ref = MemoryStore(), MemoryStore()
    xzw.to_template(
        ds.isel(time=slice(0, 3)),
        ours,
        group="a/b",
        zarr_format=zarr_format,
        global_end=TIMES[-1],
        chunks={"time": 3},
    )
    xzw.write_region(ds.isel(time=slice(0, 3)), ours, group="a/b")
    xzw.write_region(ds.isel(time=slice(3, 6)), ours, group="a/b")
    ds.to_zarr(ref, group="a/b", zarr_format=zarr_format)
    xr.testing.assert_identical(read(ours, group="a/b"), read(ref, group="a/b"))
    for store in (ours, ref):  # the parents exist, as groups
        assert isinstance(zarr.open_group(store, path="a", mode="r"), zarr.Group)
        assert not any(k.startswith(("v/", "time/")) for k in store._store_dict)
    assert xzw.plan(ds, ours, group="a/b").region["time"] == slice(0, 6)


def test_group_refuses_names_that_escape():
    with pytest.raises(InvalidNameError):
        xzw.to_template(sample(), MemoryStore(), group="a/../b")


def test_extend_and_append_in_a_group():
    ds = sample(2)
    store = MemoryStore()
    xzw.to_template(ds.isel(time=slice(0, 2)), store, group="g", chunks={"time": 2})
    xzw.append(ds.isel(time=slice(0, 2)), store, group="g")
    xzw.append(ds.isel(time=slice(2, 5)), store, group="g")
    xzw.extend(store, until=TIMES[5], group="g")
    assert not xzw.check(xzw._store.in_group(store, "g")).complete  # the old edge: partial
    xzw.append(ds.isel(time=slice(5, 6)), store, group="g")
    xr.testing.assert_identical(read(store, group="g").drop_encoding(), ds)


def test_datatree_gets_one_template_per_node():
    a, b = sample(3), sample(4).rename(v="w")
    tree = xr.DataTree.from_dict({"/": xr.Dataset(attrs={"top": 1}), "/a": a, "/b/c": b})
    ours, ref = MemoryStore(), MemoryStore()
    out = xzw.to_template(tree, ours)
    assert isinstance(out, xr.DataTree)
    assert out["a"].dataset.v.shape == (6, 4) and out["b/c"].dataset.w.shape == (6, 4)
    xzw.write_region(a, ours, group="a")
    xzw.write_region(b, ours, group="b/c")
    xr.DataTree.from_dict({"/a": a, "/b/c": b}).to_zarr(ref)
    for path in ("a", "b/c"):
        xr.testing.assert_identical(read(ours, group=path), read(ref, group=path))


def test_fsspec_mappers_and_paths_as_to_zarr(tmp_path):
    ds = sample(5)
    targets = [
        (fsspec.get_mapper("memory://kw/ours.zarr"), fsspec.get_mapper("memory://kw/ref.zarr")),
        # (to_zarr fails on a local FSMap with zarr 3: compared with its path instead)
        (fsspec.get_mapper(str(tmp_path / "o.zarr")), tmp_path / "r.zarr"),
        (tmp_path / "ours.zarr", tmp_path / "ref.zarr"),
    ]
    try:
        for ours, ref in targets:
            xzw.to_template(ds, ours)
            xzw.write_region(ds, ours)
            assert xzw.check(ours).complete
            theirs(ds, ref)
            xr.testing.assert_identical(read(ours), read(ref))
        assert isinstance(xzw.extend(tmp_path / "ours.zarr", until=TIMES[-1]), xr.Dataset)
    finally:
        fsspec.filesystem("memory").rm("/kw", recursive=True)


def test_group_on_a_local_store(tmp_path):
    ds = sample(6)
    store = LocalStore(str(tmp_path / "l.zarr"))
    xzw.to_template(ds, store, group="sub")
    xzw.write_region(ds, store, group="sub")
    assert (tmp_path / "l.zarr" / "sub" / "v" / "zarr.json").exists()
    xr.testing.assert_identical(read(str(tmp_path / "l.zarr"), group="sub").drop_encoding(), ds)


def test_encoding_replaces_the_variables_encoding_as_in_xarray():
    ds = sample(7)
    # inherited from a packed source: replaced, not merged, by encoding=
    ds.v.encoding = {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -32768}
    enc = {"v": {"compressors": None}}
    ours, ref = MemoryStore(), MemoryStore()
    xzw.to_template(ds, ours, encoding=enc)
    xzw.write_region(ds, ours)
    theirs(ds, ref, encoding=enc)
    a, b = zarr.open_array(ours, path="v"), zarr.open_array(ref, path="v")
    assert a.dtype == b.dtype == np.float32
    assert a.compressors == b.compressors == ()
    xr.testing.assert_identical(read(ours), read(ref))
    np.testing.assert_array_equal(read(ours).v.values, ds.v.values)  # not packed: exact


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_write_empty_chunks_as_to_zarr(zarr_format):
    ds = sample(8)
    ds["v"][2:4] = np.nan  # the second time chunk: only the fill value
    ds["v"][5, 1] = np.nan  # the last one: mixed, stored
    enc = {"v": {"chunks": (2, 4)}}
    ours, ref = MemoryStore(), MemoryStore()
    xzw.to_template(ds, ours, chunks={"time": 2}, zarr_format=zarr_format)
    xzw.write_region(ds, ours, write_empty_chunks=False)
    ds.to_zarr(ref, zarr_format=zarr_format, write_empty_chunks=False, encoding=enc)
    xr.testing.assert_identical(read(ours), read(ref))

    def units(store):
        return {k for k in store._store_dict if k.startswith("v/") and ".xzw_empty" not in k}

    fills = [zarr.open_array(s, path="v", mode="r").fill_value for s in (ours, ref)]
    if np.array_equal(*np.asarray(fills), equal_nan=True):
        assert units(ours) == units(ref)  # the same objects absent (metadata keys present)
    else:  # to_zarr of xarray 2025.6: zarr v3 fill value 0, _FillValue NaN only an attribute
        assert units(ours) < units(ref)
    assert len([k for k in units(ours) if "zarr.json" not in k and ".za" not in k]) == 2
    status = xzw.check(ours)
    assert status.complete and status.variables["v"].empty_chunks == ((1, 0),)


def test_non_blocking_group_writes_share_one_writer_per_store_and_group(tmp_path):
    from xarray_zarrwrite._runtime import runtime

    ds = sample(9)
    memory = MemoryStore()
    path = str(tmp_path / "p.zarr")
    for store in (memory, path):
        for group in ("g", "h"):
            xzw.to_template(ds, store, group=group, chunks={"time": 2})
    before = set(runtime.writers)
    try:
        futures = []
        for store in (memory, path):
            for group in ("g", "h"):
                for t in range(0, 6, 2):  # three calls per (store, group)
                    part = ds.isel(time=slice(t, t + 2))
                    futures.append(xzw.write_region(part, store, group=group, blocking=False))
        for f in futures:
            f.result(60)
        new = set(runtime.writers) - before
        assert len(new) == 4  # one writer per (store, group), not one per call
        assert len({id(runtime.writers[k]) for k in new}) == 4
        for store in (memory, path):
            for group in ("g", "h"):
                xr.testing.assert_identical(read(store, group=group).drop_encoding(), ds)
    finally:
        for key in set(runtime.writers) - before:
            runtime.writers[key].close()
