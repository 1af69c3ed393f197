"""File layouts convert bit-identically to xr.open_mfdataset of the same files: along time,
one file per variable, per variable and year, one file per ensemble member; parts that do not
fit are refused, naming the file, before anything is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xarray_zarrwrite import check
from xarray_zarrwrite.convert import convert
from xarray_zarrwrite.errors import (
    DimensionMismatchError,
    DtypeCastError,
    InputError,
    LayoutError,
    RegionLabelError,
    VariableNotInTemplateError,
)
from xarray_zarrwrite.testing.snapshot import snapshot

NT = 60


def _full() -> xr.Dataset:
    rng = np.random.default_rng(11)
    shape = (NT, 3, 4)
    return xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), rng.random(shape, dtype="f4"), {"units": "K"}),
            "tp": (("time", "lat", "lon"), rng.random(shape) * 1e-3, {"units": "m"}),
            "n": (("time", "lat", "lon"), rng.integers(-50, 50, shape).astype("i2")),
        },
        coords={
            "time": pd.date_range("2001-01-01", periods=NT, freq="D"),
            "lat": [30.0, 20.0, 10.0],
            "lon": [0.0, 1.0, 2.0, 3.0],
        },
    )


def _write(ds: xr.Dataset, path) -> str:
    ds.to_netcdf(path)
    return str(path)


def _assert_matches_mfdataset(path, files, **mf) -> None:
    back = xr.open_zarr(path).load()
    with xr.open_mfdataset(files, **mf) as ref:
        ref = ref.load()
    assert set(back.data_vars) == set(ref.data_vars)
    for name in ref.data_vars:
        a, b = back[name], ref[name].transpose(*back[name].dims)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a.values, b.values)
        last = tuple(-1 for _ in a.dims)
        assert a.values[last] == b.values[last]
    for dim in ref.dims:
        np.testing.assert_array_equal(back[dim].values, ref[dim].values)
    assert check(path).complete


def _convert(files, path, **kw):
    return convert(files, path, progress=False, **kw)


def test_time_layout(tmp_path):
    full = _full()
    files = [
        _write(full.isel(time=slice(a, a + 20)), tmp_path / f"y{k}.nc")
        for k, a in enumerate(range(0, NT, 20))
    ]
    assert _convert(files, tmp_path / "out.zarr", chunks={"time": 7}).ok
    _assert_matches_mfdataset(tmp_path / "out.zarr", files, combine="by_coords")


def test_one_file_per_variable(tmp_path):
    full = _full()
    files = [_write(full[[v]], tmp_path / f"{v}.nc") for v in full.data_vars]
    report = _convert(files[::-1], tmp_path / "out.zarr", chunks={"time": 8})
    assert report.ok and report.status == "complete"
    _assert_matches_mfdataset(tmp_path / "out.zarr", files, combine="by_coords")
    assert xr.open_zarr(tmp_path / "out.zarr").t2m.attrs["units"] == "K"


def test_per_variable_and_year_mixed(tmp_path):
    """t2m and tp in one file per 20 days, n in one file per 30 days (boundaries differ)."""
    full = _full()
    files = [
        _write(full[["t2m", "tp"]].isel(time=slice(a, a + 20)), tmp_path / f"tt_{a}.nc")
        for a in range(0, NT, 20)
    ]
    files += [
        _write(full[["n"]].isel(time=slice(a, a + 30)), tmp_path / f"n_{a}.nc")
        for a in range(0, NT, 30)
    ]
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 9}).ok
    _assert_matches_mfdataset(path, files, combine="by_coords")
    again = _convert(files, path)
    assert again.ok and again.written == 0


def test_per_variable_files_added_later_resume(tmp_path):
    """An archive made from the t2m files takes the other variables' files later? No: the
    template holds the variables of its first run; files of a variable it has are added."""
    full = _full()
    first = [_write(full[["t2m", "tp"]].isel(time=slice(0, 30)), tmp_path / "a0.nc")]
    later = [
        _write(full[["t2m"]].isel(time=slice(30, NT)), tmp_path / "t2m1.nc"),
        _write(full[["tp"]].isel(time=slice(30, NT)), tmp_path / "tp1.nc"),
    ]
    path = tmp_path / "out.zarr"
    report = _convert(first, path, chunks={"time": 10}, global_end=str(full.time.values[-1]))
    assert report.status == "incomplete"
    # one variable's later file alone: the other variable stays missing, nothing else changes
    assert _convert(later[:1], path).status == "incomplete"
    assert check(path).missing["tp"] and not check(path).missing.get("t2m")
    assert _convert(later[1:], path).ok
    _assert_matches_mfdataset(
        path, first + later, combine="by_coords", join="outer", compat="no_conflicts"
    )


def _refused(files, path, error, match):
    path.mkdir()
    (path / "keep.txt").write_text("x")
    before = snapshot(path)
    with pytest.raises(error, match=match) as info:
        _convert(files, path, chunks={"time": 10})
    assert isinstance(info.value, InputError)
    assert snapshot(path) == before
    return info.value


def test_same_variable_twice_for_the_same_steps_is_refused(tmp_path):
    full = _full()
    files = [
        _write(full[["t2m", "tp"]], tmp_path / "both.nc"),
        _write(full[["tp"]].isel(time=slice(10, 20)), tmp_path / "tp_again.nc"),
    ]
    err = _refused(files, tmp_path / "out.zarr", LayoutError, "tp_again.nc")
    assert isinstance(err, RegionLabelError)
    assert "'tp'" in str(err) and "both.nc" in str(err)


def test_other_grid_is_refused_naming_the_file(tmp_path):
    full = _full()
    moved = full[["tp"]].assign_coords(lat=full.lat + 0.5)
    files = [_write(full[["t2m"]], tmp_path / "t2m.nc"), _write(moved, tmp_path / "tp.nc")]
    _refused(files, tmp_path / "out.zarr", RegionLabelError, "tp.nc")


def test_other_grid_size_is_refused(tmp_path):
    full = _full()
    files = [
        _write(full[["t2m"]], tmp_path / "t2m.nc"),
        _write(full[["tp"]].isel(lon=slice(0, 3)), tmp_path / "tp.nc"),
    ]
    _refused(files, tmp_path / "out.zarr", DimensionMismatchError, "tp.nc")


def test_variable_in_two_files_with_other_dtype_is_refused(tmp_path):
    full = _full()
    files = [
        _write(full[["n"]].isel(time=slice(0, 30)), tmp_path / "n0.nc"),
        _write(full[["n"]].isel(time=slice(30, NT)).astype("f8"), tmp_path / "n1.nc"),
    ]
    _refused(files, tmp_path / "out.zarr", DtypeCastError, "n1.nc")


def test_variable_the_archive_lacks_is_refused_on_resume(tmp_path):
    full = _full()
    path = tmp_path / "out.zarr"
    assert _convert([_write(full[["t2m"]], tmp_path / "t2m.nc")], path).ok
    before = snapshot(path)
    with pytest.raises(VariableNotInTemplateError, match=r"tp\.nc") as info:
        _convert([_write(full[["tp"]], tmp_path / "tp.nc")], path)
    assert "resume=False" in str(info.value)
    assert snapshot(path) == before


def _rename_2t(ds: xr.Dataset) -> xr.Dataset:
    """A preprocess hook: the sources call t2m '2t' and carry a variable not wanted."""
    return ds.rename({"2t": "t2m"}).drop_vars("junk")


def test_preprocess_is_applied_to_each_source_before_placement(tmp_path):
    full = _full()
    files = []
    for k, a in enumerate(range(0, NT, 30)):
        part = full[["t2m"]].isel(time=slice(a, a + 30)).rename({"t2m": "2t"})
        part["junk"] = part["2t"] * 2
        files.append(_write(part, tmp_path / f"p{k}.nc"))
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 9}, preprocess=_rename_2t).ok
    back = xr.open_zarr(path)
    assert set(back.data_vars) == {"t2m"}
    np.testing.assert_array_equal(back.t2m.values, full.t2m.values)
    assert back.t2m.values[-1, -1, -1] == full.t2m.values[-1, -1, -1]


def test_preprocess_failing_or_returning_other_things_names_the_source(tmp_path):
    from xarray_zarrwrite.errors import ConvertOptionError, SourceError

    full = _full()
    files = [_write(full[["t2m"]], tmp_path / "t2m.nc")]
    path = tmp_path / "out.zarr"
    with pytest.raises(SourceError, match=r"t2m\.nc.*KeyError"):
        _convert(files, path, preprocess=lambda ds: ds[["nope"]])
    with pytest.raises(SourceError, match=r"returned a DataArray for source .*t2m\.nc"):
        _convert(files, path, preprocess=lambda ds: ds.t2m)
    with pytest.raises(ConvertOptionError, match="callable"):
        _convert(files, path, preprocess="rename")
    assert not path.exists()
