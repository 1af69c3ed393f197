"""Files per ensemble member: convert concatenates the sources along a member dimension
(a dimension coordinate such as ERA5's ``number``, or a scalar coordinate such as CMIP's
``realization``, made a dimension of length 1), alone or mixed with files per variable and
per year, bit-identically to ``xr.open_mfdataset`` of the same files; overlaps are refused
naming both files, gaps leave the run incomplete."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xarray_zarrwrite import check
from xarray_zarrwrite.convert import convert
from xarray_zarrwrite.convert._sources import INDEX_ENV
from xarray_zarrwrite.errors import InputError, LayoutError, RegionLabelError
from xarray_zarrwrite.testing.snapshot import snapshot

NT = 40


def _ensemble(members=(0, 1, 2), dim: str = "number") -> xr.Dataset:
    rng = np.random.default_rng(5)
    shape = (len(members), NT, 3, 4)
    return xr.Dataset(
        {
            "t2m": ((dim, "time", "lat", "lon"), rng.random(shape, dtype="f4"), {"units": "K"}),
            "tp": ((dim, "time", "lat", "lon"), rng.random(shape), {"units": "m"}),
            "n": ((dim, "time", "lat", "lon"), rng.integers(-9, 9, shape).astype("i2")),
        },
        coords={
            dim: list(members),
            "time": pd.date_range("2001-01-01", periods=NT, freq="D"),
            "lat": [30.0, 20.0, 10.0],
            "lon": [0.0, 1.0, 2.0, 3.0],
        },
    )


def _split(full: xr.Dataset, where: pathlib.Path, *, by_var=False, years=1, dim="number"):
    """One file per member (and variable, and time span): ``t2m_member03_0.nc``."""
    files = []
    groups = [[v] for v in full.data_vars] if by_var else [list(full.data_vars)]
    step = -(-NT // years)
    for k, label in enumerate(full[dim].values):
        for names in groups:
            for a in range(0, NT, step):
                part = full[names].isel({dim: [k], "time": slice(a, a + step)})
                path = where / f"{'-'.join(names)}_member{int(label):02d}_{a}.nc"
                part.to_netcdf(path)
                files.append(str(path))
    return files


def _convert(files, path, **kw):
    return convert(files, path, progress=False, **kw)


def _assert_matches(path, expected: xr.Dataset) -> None:
    back = xr.open_zarr(path).load()
    assert set(back.data_vars) == set(expected.data_vars)
    for name in expected.data_vars:
        a, b = back[name], expected[name].transpose(*back[name].dims)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a.values, b.values)
        last = tuple(-1 for _ in a.dims)
        assert a.values[last] == b.values[last]
    for dim in expected.dims:
        np.testing.assert_array_equal(back[dim].values, expected[dim].values)
    assert check(path).complete


def _mfdataset(files, **kw) -> xr.Dataset:
    kw.setdefault("combine", "by_coords")
    kw.setdefault("data_vars", "all")
    with xr.open_mfdataset(files, coords="minimal", compat="override", **kw) as ds:
        return ds.load()


@pytest.mark.parametrize(
    ("by_var", "years", "mchunk"),
    [(False, 1, 1), (False, 2, 3), (True, 2, 1), (True, 2, 2)],
    ids=["member", "member-time-chunk3", "member-var-time", "member-var-time-chunk2"],
)
def test_layouts_match_open_mfdataset(tmp_path, by_var, years, mchunk):
    full = _ensemble()
    files = _split(full, tmp_path, by_var=by_var, years=years)
    path = tmp_path / "out.zarr"
    report = _convert(files[::-1], path, chunks={"time": 7, "number": mchunk})
    assert report.ok
    assert xr.open_zarr(path).t2m.encoding["chunks"][0] == mchunk
    _assert_matches(path, _mfdataset(files))
    _assert_matches(path, full)
    if mchunk == 2:  # resume, the same options: everything is there
        again = _convert(files, path, chunks={"time": 7, "number": mchunk})
        assert again.ok and again.written == 0


def test_files_holding_several_members_and_the_xarray_path(tmp_path, monkeypatch):
    """Files of two members each, member chunks of 3 (a chunk gathers from two files), read
    through xarray (no byte-range index)."""
    monkeypatch.setenv(INDEX_ENV, "0")
    full = _ensemble(members=(0, 1, 2, 3, 4, 5))
    files = []
    for k in range(0, 6, 2):
        for a in (0, 20):
            files.append(str(tmp_path / f"m{k}_{a}.nc"))
            full.isel(number=slice(k, k + 2), time=slice(a, a + 20)).to_netcdf(files[-1])
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 9, "number": 3}).ok
    _assert_matches(path, _mfdataset(files))


def test_netcdf3_sources_mixed_with_indexed_ones(tmp_path):
    """Members 0-1 as NetCDF4 (read by byte range), 2-3 as NetCDF3 (read through xarray)."""
    full = _ensemble(members=(0, 1, 2, 3))
    files = []
    for k in range(4):
        files.append(str(tmp_path / f"m{k}.nc"))
        fmt = "NETCDF4" if k < 2 else "NETCDF3_64BIT"
        full[["t2m", "n"]].isel(number=[k]).to_netcdf(files[-1], format=fmt)
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 8, "number": 2}).ok
    _assert_matches(path, _mfdataset(files))


def _scalar_files(where: pathlib.Path, labels) -> tuple[list[str], xr.Dataset]:
    full = _ensemble(members=range(len(labels)), dim="realization")
    files = []
    for k, label in enumerate(labels):
        part = full.isel(realization=k).assign_coords(realization=label)  # a scalar coordinate
        files.append(str(where / f"r{label}.nc"))
        part.to_netcdf(files[-1])
    return files, full


def test_scalar_member_coordinate_is_expanded(tmp_path):
    """CMIP-like: each file holds its member as a scalar coordinate ``realization``."""
    labels = [3, 1, 10, 2]  # files given in this order; the archive sorts the labels
    files, _ = _scalar_files(tmp_path, labels)
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 7, "realization": 1}).ok
    back = xr.open_zarr(path)
    assert back.t2m.dims == ("realization", "time", "lat", "lon")
    np.testing.assert_array_equal(back.realization.values, sorted(labels))
    ordered = [files[labels.index(v)] for v in sorted(labels)]
    _assert_matches(path, _mfdataset(ordered, combine="nested", concat_dim="realization"))


def test_scalar_member_coordinate_xarray_path_member_chunk_2(tmp_path, monkeypatch):
    monkeypatch.setenv(INDEX_ENV, "0")
    files, _ = _scalar_files(tmp_path, [0, 1, 2])
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 7, "realization": 2}).ok
    _assert_matches(path, _mfdataset(files, combine="nested", concat_dim="realization"))
    again = _convert(files, path, chunks={"time": 7, "realization": 2})
    assert again.ok and again.written == 0


def _member_from_name(ds: xr.Dataset) -> xr.Dataset:
    """A preprocess hook: the member is only in the file name (``..._member03_...``)."""
    name = os.path.basename(ds.encoding["source"])
    member = int(name.split("_member")[1].split("_")[0])
    return ds.expand_dims(number=[member])


def test_preprocess_adds_the_member_from_the_file_name(tmp_path):
    full = _ensemble()
    files = _split(full, tmp_path, years=2)
    stripped = []
    for f in files:
        with xr.open_dataset(f) as ds:
            part = ds.isel(number=0, drop=True).load()
        os.unlink(f)
        part.to_netcdf(f)
        stripped.append(f)
    path = tmp_path / "out.zarr"
    assert _convert(stripped, path, chunks={"time": 7}, preprocess=_member_from_name).ok
    _assert_matches(path, full)


def test_processes_executor(tmp_path):
    full = _ensemble()
    files = _split(full, tmp_path)
    path = tmp_path / "out.zarr"
    report = _convert(files, path, chunks={"time": 20, "number": 2}, executor="processes")
    assert report.ok
    _assert_matches(path, full)


def test_same_member_and_steps_twice_is_refused_naming_both(tmp_path):
    full = _ensemble()
    files = _split(full, tmp_path, years=2)
    extra = tmp_path / "again_member01.nc"
    full.isel(number=[1], time=slice(15, 25)).to_netcdf(extra)
    path = tmp_path / "out.zarr"
    path.mkdir()
    (path / "keep.txt").write_text("x")
    before = snapshot(path)
    with pytest.raises(LayoutError, match=r"again_member01\.nc") as info:
        _convert([*files, str(extra)], path, chunks={"time": 10})
    assert isinstance(info.value, InputError)
    assert "member01_0.nc" in str(info.value) and "number 1" in str(info.value)
    assert snapshot(path) == before


def test_member_label_the_archive_lacks_is_refused_on_resume(tmp_path):
    full = _ensemble()
    files = _split(full, tmp_path)
    path = tmp_path / "out.zarr"
    assert _convert(files[:2], path, chunks={"time": 10}).ok
    before = snapshot(path)
    with pytest.raises(RegionLabelError, match="member02"):
        _convert(files[1:3], path)
    assert snapshot(path) == before


@pytest.mark.parametrize("mchunk", [1, 2])
def test_gap_leaves_the_run_incomplete_and_a_later_run_completes_it(tmp_path, mchunk):
    full = _ensemble()
    files = _split(full, tmp_path, years=2)  # member k: files[2k] (days 0-19), files[2k+1]
    missing = files.pop(5)  # member 2, days 20-39
    path = tmp_path / "out.zarr"
    report = _convert(files, path, chunks={"time": 10, "number": mchunk}, raise_on_failure=False)
    assert report.status == "incomplete"
    found = check(path)
    assert not found.complete
    assert set(found.missing) == {"t2m", "tp", "n"}
    assert len(report.missing) == 1
    first, last = report.missing[0]
    assert str(first).startswith("2001-01-21") and str(last).startswith("2001-02-09")
    # only the chunks holding member 2 are partial or missing: the other members' chunks at
    # those steps were written whole (number is the first dim, time the second)
    gap = {2 // mchunk}
    for name in ("t2m", "tp"):
        var = found.variables[name]
        assert var.dims[:2] == ("number", "time")
        bad = {*var.partial_chunks, *var.missing_chunks}
        assert bad and {c[0] for c in bad} == gap, (name, bad)
    back = xr.open_zarr(path).load()  # the members that are there are written
    np.testing.assert_array_equal(back.t2m.values[1], full.t2m.values[1])
    np.testing.assert_array_equal(back.t2m.values[2, :20], full.t2m.values[2, :20])
    assert _convert([*files, missing], path).ok
    _assert_matches(path, full)


def test_variables_without_time_per_member_and_shared(tmp_path):
    """``spread(number, lat, lon)`` differs per member, ``lsm(lat, lon)`` is in every file:
    as ``open_mfdataset(data_vars="minimal")``; with a scalar member coordinate, every data
    variable gets the member dimension (as ``combine="nested"`` with ``data_vars="all"``)."""
    full = _ensemble()[["t2m"]]
    rng = np.random.default_rng(3)
    full["spread"] = (("number", "lat", "lon"), rng.random((3, 3, 4), dtype="f4"))
    full["lsm"] = (("lat", "lon"), rng.random((3, 4)))
    files = []
    for k in range(3):
        files.append(str(tmp_path / f"m{k}.nc"))
        full.isel(number=[k]).to_netcdf(files[-1])
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 7, "number": 2}).ok
    _assert_matches(path, _mfdataset(files, data_vars="minimal"))
    assert xr.open_zarr(path).lsm.dims == ("lat", "lon")
    scalar = []
    for k in range(3):
        scalar.append(str(tmp_path / f"r{k}.nc"))
        full.rename(number="realization").isel(realization=k).to_netcdf(scalar[-1])
    path = tmp_path / "scalar.zarr"
    assert _convert(scalar, path, chunks={"time": 7, "realization": 2}).ok
    _assert_matches(path, _mfdataset(scalar, combine="nested", concat_dim="realization"))
    assert xr.open_zarr(path).lsm.dims == ("realization", "lat", "lon")


def test_sources_differing_along_two_dimensions_are_refused(tmp_path):
    full = _ensemble()
    files = [str(tmp_path / "m0.nc"), str(tmp_path / "m1.nc")]
    full.isel(number=[0]).to_netcdf(files[0])
    full.isel(number=[1]).assign_coords(lat=full.lat + 0.5).to_netcdf(files[1])
    path = tmp_path / "out.zarr"
    with pytest.raises(LayoutError, match=r"'number', 'lat'|'lat', 'number'"):
        _convert(files, path)
    assert snapshot(path) == {}  # nothing written


@pytest.mark.parametrize("mchunk", [1, 2])
def test_a_later_run_with_one_members_file_completes_the_archive(tmp_path, mchunk):
    """The re-run holds one member only (nothing to tell the member dimension from): the
    archive's own member dimension places it."""
    full = _ensemble()
    files = _split(full, tmp_path, years=2)
    missing = files.pop(5)  # member 2, days 20-39
    path = tmp_path / "out.zarr"
    chunks = {"time": 10, "number": mchunk}
    assert _convert(files, path, chunks=chunks, raise_on_failure=False).status == "incomplete"
    assert _convert([missing], path).ok
    assert check(path).complete
    _assert_matches(path, full)


def test_a_later_run_with_one_scalar_member_file(tmp_path):
    """CMIP-style files (the member a scalar coordinate): member 2's second half comes in a
    later run, alone."""
    full = _ensemble(dim="realization")
    files = []
    for k in range(3):
        for a in (0, NT // 2):
            files.append(str(tmp_path / f"r{k}_{a}.nc"))
            full.isel(realization=k, time=slice(a, a + NT // 2)).to_netcdf(files[-1])
    late = files.pop()  # member 2, second half
    path = tmp_path / "out.zarr"
    chunks = {"time": 10, "realization": 1}
    assert _convert(files, path, chunks=chunks, raise_on_failure=False).status == "incomplete"
    assert _convert([late], path).ok
    assert check(path).complete
    _assert_matches(path, full)


def test_a_split_of_a_spatial_dimension_is_not_taken_for_members(tmp_path):
    """A re-run with a file holding part of ``lat`` (after time in the dimensions) is
    refused as another grid, not placed as a member split, with the store untouched."""
    full = _ensemble()
    files = _split(full, tmp_path)
    path = tmp_path / "out.zarr"
    assert _convert(files, path, chunks={"time": 10}).ok
    part = tmp_path / "part.nc"
    full.isel(number=[0], lat=[0, 1]).to_netcdf(part)
    before = snapshot(path)
    with pytest.raises(InputError):
        _convert([str(part)], path)
    assert snapshot(path) == before
