"""A call refused for bad input leaves no empty directory behind for a local target that did
not exist (zarr's LocalStore creates its root when first used); anything written, and any
directory that existed before, stays."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from zarr.storage import LocalStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._store import leaves_no_empty_root
from xarray_zarrwrite.errors import InputError, ZarrWriteError


def _ds() -> xr.Dataset:
    return xr.Dataset(
        {"v": (("time", "x"), np.arange(12, dtype="f4").reshape(4, 3))},
        coords={"time": pd.date_range("2000-01-01", periods=4, freq="D"), "x": [0.0, 1, 2]},
    )


def _template(path) -> None:
    xzw.to_template(_ds(), str(path), chunks={"time": 2})


CALLS = {
    "to_template": lambda p: xzw.to_template(_ds(), p, chunks={"nope": 2}),
    "write_region": lambda p: xzw.write_region(_ds(), p),
    "write_region_local_store": lambda p: xzw.write_region(_ds(), LocalStore(p)),
    "convert": lambda p: xzw.convert([], p, progress=False),
    "extend": lambda p: xzw.extend(p, "time", steps=2),
    "append": lambda p: xzw.append(_ds(), p),
    "StreamWriter": lambda p: xzw.StreamWriter(p),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_refused_call_leaves_no_directory(tmp_path, call):
    target = tmp_path / "deep" / "new.zarr"
    with pytest.raises(ZarrWriteError):
        CALLS[call](str(target))
    assert not (tmp_path / "deep").exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("use", ["write_region", "StreamWriter"])
def test_missing_group_leaves_the_archive_as_it_was(tmp_path, use):
    path = tmp_path / "a.zarr"
    _template(path)
    before = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    with pytest.raises(ZarrWriteError):
        if use == "write_region":
            xzw.write_region(_ds(), str(path), group="nope/deeper")
        else:
            xzw.StreamWriter(str(path), group="nope")
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == before


def test_existing_empty_directory_is_kept(tmp_path):
    target = tmp_path / "made-by-the-user.zarr"
    target.mkdir()
    with pytest.raises(ZarrWriteError):
        xzw.write_region(_ds(), str(target))
    assert target.is_dir()


def test_what_a_failed_call_wrote_stays(tmp_path):
    """Only empty directories go: a call that wrote before failing keeps its objects."""

    @leaves_no_empty_root(0)
    def writes_then_fails(path: str) -> None:
        os.makedirs(os.path.join(path, "v"))
        with open(os.path.join(path, "v", "0"), "wb") as f:
            f.write(b"x")
        os.makedirs(os.path.join(path, "empty"))
        raise InputError("refused after writing")

    target = tmp_path / "new.zarr"
    with pytest.raises(InputError):
        writes_then_fails(str(target))
    assert (target / "v" / "0").read_bytes() == b"x"


def test_success_keeps_the_new_archive(tmp_path):
    target = tmp_path / "deep" / "new.zarr"
    _template(target)
    xzw.write_region(_ds(), str(target))
    back = xr.open_zarr(str(target)).load()
    assert back.v.values.tobytes() == _ds().v.values.tobytes()
