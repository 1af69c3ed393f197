"""mode="w-" deletes nothing it did not write; our own interrupted publishes still resume."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore, MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._compat import sync
from xarray_zarrwrite._template import PUBLISH_MARKER
from xarray_zarrwrite.errors import StoreExistsError
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot


class Killed(Exception):
    pass


class DiesBeforeGroupDocument(LocalStore):
    """A local store whose writer 'dies' when the group document is about to be written."""

    async def set(self, key, value):  # type: ignore[no-untyped-def]
        if key in ("zarr.json", ".zgroup"):
            raise Killed(key)
        await super().set(key, value)


def foreign_arrays(store, zarr_format):
    """Zarr arrays written by someone else, with no root group document."""
    for name in ("a", "b"):
        arr = zarr.create_array(
            store, name=name, shape=(4,), chunks=(2,), dtype="f8", zarr_format=zarr_format
        )
        arr[:] = np.arange(4.0)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_foreign_arrays_without_root_are_refused_and_kept(tmp_path, zarr_format):
    path = tmp_path / "foreign.zarr"
    foreign_arrays(LocalStore(path), zarr_format)
    for name in ("zarr.json", ".zgroup", ".zattrs"):
        (path / name).unlink(missing_ok=True)
    before = snapshot(path)
    assert any(k.startswith("a/") for k in before)
    with pytest.raises(StoreExistsError, match="nothing was changed"):
        era5_like(periods=3).fastzarr.to_template(path, zarr_format=zarr_format)
    assert snapshot(path) == before


def test_foreign_arrays_in_memory_store_are_refused_and_kept():
    store = MemoryStore()
    foreign_arrays(store, 3)
    sync(store.delete("zarr.json"))  # no root group document, if one was made
    before = snapshot(store)
    with pytest.raises(StoreExistsError):
        xzw.to_template(era5_like(periods=3), store)
    assert snapshot(store) == before


def test_any_other_object_is_refused_and_kept(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (other / "x").mkdir()
    (other / "x" / "zarr.json").write_text("{}")
    before = snapshot(other)
    with pytest.raises(StoreExistsError):
        era5_like(periods=3).fastzarr.to_template(other)
    assert snapshot(other) == before


def test_marker_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "t.zarr"
    with pytest.raises(Killed):
        era5_like(periods=3).fastzarr.to_template(DiesBeforeGroupDocument(path))
    (path / "notes.txt").write_text("mine")
    before = snapshot(path)
    with pytest.raises(StoreExistsError):
        era5_like(periods=3).fastzarr.to_template(path)
    assert snapshot(path) == before


def test_finished_template_is_refused_even_with_marker_left(tmp_path):
    path = tmp_path / "t.zarr"
    era5_like(periods=3).fastzarr.to_template(path)
    (path / PUBLISH_MARKER).write_text("left by a kill after the root was written")
    before = snapshot(path)
    with pytest.raises(StoreExistsError):
        era5_like(periods=5).fastzarr.to_template(path)
    assert snapshot(path) == before


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_our_interrupted_publish_is_resumed(tmp_path, zarr_format):
    path = tmp_path / "t.zarr"
    with pytest.raises(Killed):
        era5_like(periods=3).fastzarr.to_template(
            DiesBeforeGroupDocument(path), zarr_format=zarr_format
        )
    assert (path / PUBLISH_MARKER).exists()
    assert any(p.name in ("zarr.json", ".zarray") for p in path.rglob("*"))
    source = era5_like(periods=5)
    tmpl = source.fastzarr.to_template(path, zarr_format=zarr_format)
    assert tmpl.sizes["time"] == 5
    assert not (path / PUBLISH_MARKER).exists()
    source.fastzarr.write_region(path)
    xr.testing.assert_identical(xr.open_zarr(path).load(), source)


def test_finished_publish_leaves_no_marker(tmp_path):
    path = tmp_path / "t.zarr"
    era5_like(periods=3).fastzarr.to_template(path)
    assert PUBLISH_MARKER not in snapshot(path)
    store = MemoryStore()
    xzw.to_template(era5_like(periods=3), store)
    assert PUBLISH_MARKER not in snapshot(store)
