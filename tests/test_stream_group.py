"""``StreamWriter(group=...)``: streaming into a template inside a subgroup."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xarray as xr
import zarr

import xarray_zarrwrite as xzw
from xarray_zarrwrite.errors import InputError, TemplateNotFoundError
from xarray_zarrwrite.testing.datasets import era5_like


@pytest.fixture(scope="module")
def steps():
    return era5_like("2000-01-01", 9, freq="h", nlat=8, nlon=16)


def template(steps, path, group, chunk, zarr_format=3):
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        str(path),
        global_end=steps.time[-1].values,
        chunks={"time": chunk},
        group=group,
        zarr_format=zarr_format,
        mode="w",
    )


def _assert_bitwise(back: xr.Dataset, expected: xr.Dataset) -> None:
    for name in ("t2m", "tcwv"):
        a, b = back[name].values, expected[name].values
        assert a.dtype == b.dtype
        assert a.tobytes() == b.tobytes()
        # the last index of every dimension, spelled out
        last = tuple(n - 1 for n in b.shape)
        assert a[last].tobytes() == b[last].tobytes()
    xr.testing.assert_identical(back, expected)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_whole_chunk_steps_land_in_the_group(steps, tmp_path, zarr_format):
    path = tmp_path / "g.zarr"
    template(steps, path, "runs/a", 1, zarr_format)
    template(steps, path, "runs/b", 1, zarr_format)  # a sibling that must stay untouched
    with xzw.StreamWriter(str(path), group="runs/a") as writer:
        for i in range(steps.sizes["time"]):
            writer.write(steps.isel(time=[i]))
    _assert_bitwise(xr.open_zarr(str(path), group="runs/a").load(), steps)
    sibling = xr.open_zarr(str(path), group="runs/b").load()
    assert sibling.t2m.isnull().all() and sibling.tcwv.isnull().all()
    root = zarr.open_group(str(path), mode="r")
    assert not list(root.array_keys())  # nothing written at the root


def test_chunk_assembly_into_a_group_any_order(steps, tmp_path):
    path = tmp_path / "g.zarr"
    template(steps, path, "fc", 4)
    order = list(range(steps.sizes["time"]))
    random.Random(3).shuffle(order)
    with xzw.StreamWriter(str(path), group="fc") as writer:
        futures = [writer.write(steps.isel(time=[i])) for i in order]
    assert all(f.exception() is None for f in futures)
    _assert_bitwise(xr.open_zarr(str(path), group="fc").load(), steps)
    assert xzw.check(str(path), group="fc").complete


def test_partial_units_in_a_group_are_recorded_there_and_resumed(steps, tmp_path):
    path = tmp_path / "g.zarr"
    template(steps, path, "fc", 4)
    with xzw.StreamWriter(str(path), group="fc") as writer:
        for i in range(6):  # steps 4, 5 of chunk 1: a partial unit at close
            writer.write(steps.isel(time=[i]))
    report = xzw.check(str(path), group="fc")
    assert report.variables["t2m"].partial_chunks == ((1, 0, 0),)
    back = xr.open_zarr(str(path), group="fc").load()
    _assert_bitwise(back.isel(time=slice(0, 6)), steps.isel(time=slice(0, 6)))
    assert back.t2m.isel(time=slice(6, None)).isnull().all()
    with xzw.StreamWriter(str(path), group="fc") as writer:
        for i in range(6, steps.sizes["time"]):
            writer.write(steps.isel(time=[i]))
    assert xzw.check(str(path), group="fc").complete
    _assert_bitwise(xr.open_zarr(str(path), group="fc").load(), steps)


def test_write_arrays_into_a_group(steps, tmp_path):
    path = tmp_path / "g.zarr"
    template(steps, path, "fc", 2)
    with xzw.StreamWriter(str(path), group="fc") as writer:
        for i in range(steps.sizes["time"]):
            writer.write_arrays(
                {n: steps[n].values[i : i + 1] for n in ("t2m", "tcwv")},
                coords={"time": steps.time.values[i : i + 1]},
            )
    _assert_bitwise(xr.open_zarr(str(path), group="fc").load(), steps)


def test_group_on_a_store_without_groups_is_refused_before_writing(steps, tmp_path):
    path = tmp_path / "g.zarr"
    template(steps, path, "fc", 1)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    store = xzw.BufferedStore(str(path))
    with pytest.raises(InputError, match="group"):
        xzw.StreamWriter(store, group="fc")
    store.close()
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before


def test_a_missing_group_is_a_typed_error(steps, tmp_path):
    path = tmp_path / "g.zarr"
    template(steps, path, "fc", 1)
    with pytest.raises(TemplateNotFoundError, match="nope"):
        xzw.StreamWriter(str(path), group="nope")
    assert np.isnan(xr.open_zarr(str(path), group="fc").t2m.values).all()
