"""The freshness token sees the stored labels, and planning reads nothing from the store.

A template replaced by one whose metadata documents are byte-identical (time units pinned by
the user, same length) but whose time labels start elsewhere keeps the root document; the
token's label digest still changes, so every path refuses the stale plan or lands at the new
labels. Non-index coordinates are compared with the snapshot read with the template, never
read during planning, and a coordinate this process wrote is never skipped on an old snapshot.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import xarray as xr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._open import load_template
from xarray_zarrwrite._region import plan_region
from xarray_zarrwrite._runtime import runtime
from xarray_zarrwrite.errors import RegionError
from xarray_zarrwrite.testing.datasets import era5_like

N = 8
PINNED = {"time": {"units": "hours since 1990-01-01", "calendar": "proleptic_gregorian"}}


def _steps(start: str) -> xr.Dataset:
    return era5_like(start, N, freq="h", nlat=4, nlon=6)


def _make(path: str, start: str) -> None:
    steps = _steps(start)
    steps.isel(time=slice(0, 2)).fastzarr.to_template(
        path,
        global_end=steps.time[-1].values,
        freq="h",
        chunks={"time": 2},
        encoding=PINNED,
        mode="w",
    )


def _documents(path: str) -> dict[str, bytes]:
    from pathlib import Path

    root = Path(path)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.name in ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
    }


def _write(path: str, data: xr.Dataset, how: str) -> None:
    if how == "blocking":
        xzw.write_region(data, path)
    elif how == "nonblocking":
        xzw.write_region(data, path, blocking=False).result(60)  # type: ignore[union-attr]
    else:  # dask
        xzw.write_region(data.chunk(time=2), path)


@pytest.mark.parametrize("how", ["blocking", "nonblocking", "dask"])
def test_replacement_with_identical_metadata_is_seen_on_every_path(tmp_path, how):
    path = str(tmp_path / "t.zarr")
    old, new = _steps("2000-01-01"), _steps("2000-03-01")
    _make(path, "2000-01-01")
    docs = _documents(path)
    _write(path, old.isel(time=[0, 1]), how)  # caches the first template
    _make(path, "2000-03-01")
    assert _documents(path) == docs  # identical metadata: only the labels differ
    with pytest.raises(RegionError):
        _write(path, old.isel(time=[2, 3]), how)
    if how == "nonblocking":  # the shared writer may report the refusal once more: consumed
        for writer in list(runtime.writers.values()):
            with contextlib.suppress(RegionError):
                writer.close()
    _write(path, new.isel(time=[4, 5]), how)
    back = xr.open_zarr(path).load()
    np.testing.assert_array_equal(back.time.values, new.time.values)
    xr.testing.assert_identical(back.isel(time=[4, 5]), new.isel(time=[4, 5]))
    assert bool(back.t2m.isel(time=[0, 1, 2, 3, 6, 7]).isnull().all())
    for writer in list(runtime.writers.values()):
        writer.close()


def test_dask_write_planned_before_a_replacement_with_identical_metadata(tmp_path):
    path = str(tmp_path / "t.zarr")
    old = _steps("2000-01-01")
    _make(path, "2000-01-01")
    planned = xzw.write_region(old.isel(time=[2, 3]).chunk(time=2), path, compute=False)
    _make(path, "2000-03-01")
    with pytest.raises(RegionError, match="replaced"):
        planned.compute()  # type: ignore[union-attr]
    assert bool(xr.open_zarr(path).t2m.isnull().all())


def _with_valid_time(data: xr.Dataset, hours: int) -> xr.Dataset:
    return data.assign_coords(valid_time=("time", data.time.values + np.timedelta64(hours, "h")))


def _full_extent_template(store: MemoryStore, data: xr.Dataset) -> None:
    data.isel(time=[0]).fastzarr.to_template(
        store, global_end=data.time.values[-1], freq="h", chunks={"time": 4}
    )


def test_planning_compares_coordinates_with_the_snapshot_and_reads_nothing():
    data = _with_valid_time(_steps("2000-01-01"), 6)
    store = MemoryStore()
    _full_extent_template(store, data)
    data.fastzarr.write_region(store)
    runtime.templates.clear()  # the next read snapshots the stored valid_time
    info = load_template(store)
    store._store_dict.clear()  # planning must not read: nothing is left to read
    planned = plan_region(data, info)
    assert "valid_time" in planned.skipped  # equal to the snapshot
    other = plan_region(_with_valid_time(data, 7), info)
    assert "valid_time" in {w.name for w in other.writes}


def test_a_coordinate_written_by_this_process_is_not_skipped_on_an_old_snapshot():
    data = _with_valid_time(_steps("2000-01-01"), 6)
    store = MemoryStore()
    _full_extent_template(store, data)
    data.fastzarr.write_region(store)
    runtime.templates.clear()  # snapshot: valid_time = time + 6 h
    _with_valid_time(data, 7).fastzarr.write_region(store)
    data.fastzarr.write_region(store)  # equal to the snapshot, not to the store: written
    back = xr.open_zarr(store).load()
    np.testing.assert_array_equal(back.valid_time.values, data.valid_time.values)
    assert back.valid_time.values[-1] == data.valid_time.values[-1]
    xr.testing.assert_identical(back.t2m, data.t2m)
