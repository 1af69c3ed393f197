"""Re-runs of convert say what differs: options given explicitly that differ from the
archive's are refused, naming each difference, the store untouched; defaults do not count.
A global_end read as midnight of a sub-daily axis warns that the last chunk is partial."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xarray_zarrwrite.convert import convert
from xarray_zarrwrite.errors import (
    ArchiveMismatchError,
    PartialChunkWarning,
    RegionLabelError,
    TemplateError,
)
from xarray_zarrwrite.testing.snapshot import snapshot


@pytest.fixture
def files(tmp_path) -> tuple[xr.Dataset, list[str]]:
    rng = np.random.default_rng(3)
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), rng.random((40, 3, 4), dtype="f4"))},
        coords={
            "time": pd.date_range("2001-01-01", periods=40, freq="D"),
            "lat": [1.0, 2.0, 3.0],
            "lon": [0.0, 1.0, 2.0, 3.0],
        },
    )
    paths = []
    for k in range(2):
        p = tmp_path / f"part{k}.nc"
        ds.isel(time=slice(20 * k, 20 * k + 20)).to_netcdf(p)
        paths.append(str(p))
    return ds, paths


def _run(paths, path, **kw):
    return convert(paths, path, progress=False, **kw)


def test_changed_compression_is_refused_naming_it(tmp_path, files):
    _, paths = files
    path = tmp_path / "out.zarr"
    assert _run(paths, path, chunks={"time": 10}, compression="zstd:3").ok
    before = snapshot(path)
    with pytest.raises(ArchiveMismatchError, match="compresses with") as info:
        _run(paths, path, chunks={"time": 10}, compression="gzip:5")
    assert "'t2m'" in str(info.value) and "gzip" in str(info.value)
    assert "resume=False" in str(info.value)
    assert isinstance(info.value, TemplateError) and isinstance(info.value, ValueError)
    assert snapshot(path) == before


def test_every_difference_is_named(tmp_path, files):
    _, paths = files
    path = tmp_path / "out.zarr"
    assert _run(paths, path, chunks={"time": 10}).ok
    before = snapshot(path)
    with pytest.raises(ArchiveMismatchError) as info:
        _run(paths, path, chunks={"time": 5}, compression=None, zarr_format=2)
    text = str(info.value)
    assert "chunks of 10 along 'time' (asked for 5)" in text
    assert "compresses with" in text
    assert "zarr_format: the archive is 3, this call asks for 2" in text
    assert snapshot(path) == before


def test_shards_difference_is_named(tmp_path, files):
    _, paths = files
    path = tmp_path / "out.zarr"
    assert _run(paths, path, chunks={"time": 10}).ok
    with pytest.raises(ArchiveMismatchError, match="shards"):
        _run(paths, path, chunks={"time": 10}, shards={"time": 20})


def test_defaults_and_same_options_do_not_count(tmp_path, files):
    ds, paths = files
    path = tmp_path / "out.zarr"
    first = _run(paths, path, chunks={"time": 10}, compression="zstd:5", zarr_format=3)
    before = snapshot(path)
    again = _run(paths, path)  # every option at its default: the archive's are used
    assert again.ok and again.written == 0 and again.skipped == first.ntasks
    same = _run(paths, path, chunks={"time": 10}, compression="zstd:5", zarr_format=3)
    assert same.ok and same.written == 0
    assert snapshot(path) == before
    back = xr.open_zarr(path)
    np.testing.assert_array_equal(back.t2m.values, ds.t2m.values)
    assert back.t2m.values[-1, -1, -1] == ds.t2m.values[-1, -1, -1]


def test_resume_false_replaces_with_new_options(tmp_path, files):
    ds, paths = files
    path = tmp_path / "out.zarr"
    assert _run(paths, path, chunks={"time": 10}).ok
    assert _run(paths, path, chunks={"time": 5}, compression="gzip:5", resume=False).ok
    back = xr.open_zarr(path)
    assert back.t2m.encoding["chunks"] == (5, 3, 4)
    np.testing.assert_array_equal(back.t2m.values, ds.t2m.values)


def _hourly(tmp_path) -> tuple[xr.Dataset, list[str]]:
    """The first of two days of hourly data (the second is to come)."""
    ds = xr.Dataset(
        {"t": (("time", "x"), np.arange(48 * 2, dtype="f4").reshape(48, 2))},
        coords={"time": pd.date_range("2000-01-01", periods=48, freq="h"), "x": [0, 1]},
    )
    p = tmp_path / "hourly.nc"
    ds.isel(time=slice(0, 24)).to_netcdf(p)
    return ds, [str(p)]


def test_global_end_at_midnight_of_hourly_data_warns_partial_chunk(tmp_path):
    ds, paths = _hourly(tmp_path)
    path = tmp_path / "out.zarr"
    with pytest.warns(PartialChunkWarning, match="holds only 1 of 24 steps") as rec:
        report = convert(paths, path, chunks={"time": 24}, global_end="2000-01-02", progress=False)
    assert "2000-01-02T23:00" in str(rec[0].message) or "2000-01-02 23:00" in str(rec[0].message)
    assert report.status == "incomplete"  # the step of 2000-01-02 has no source yet
    back = xr.open_zarr(path)
    assert back.sizes["time"] == 25
    np.testing.assert_array_equal(back.t.values[:24], ds.t.values[:24])
    assert np.isnan(back.t.values[24]).all()


def test_global_end_at_last_step_of_the_day_does_not_warn(tmp_path):
    ds, paths = _hourly(tmp_path)
    path = tmp_path / "out.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialChunkWarning)
        report = convert(
            paths, path, chunks={"time": 24}, global_end="2000-01-02T23:00", progress=False
        )
    assert report.status == "incomplete"
    back = xr.open_zarr(path)
    assert back.sizes["time"] == 48
    np.testing.assert_array_equal(back.t.values[:24], ds.t.values[:24])
    assert back.t.values[23, -1] == ds.t.values[23, -1]


def test_changed_packing_or_encoding_is_named_and_nothing_else(tmp_path, files):
    _, paths = files
    path = tmp_path / "out.zarr"
    assert _run(paths, path, chunks={"time": 10}).ok
    before = snapshot(path)
    packed = {"t2m": {"dtype": "int16", "scale_factor": 0.001, "_FillValue": -32768}}
    with pytest.raises(ArchiveMismatchError) as info:
        _run(paths, path, encoding=packed)
    text = str(info.value)
    assert "'t2m': packing: the archive is stored as float32" in text and "int16" in text
    assert "chunks of" not in text and "compresses" not in text  # only what was asked
    with pytest.raises(ArchiveMismatchError, match="stored as int16 with scale_factor"):
        _run(paths, path, packing={"t2m": {"bits": 16}})
    assert snapshot(path) == before
    # the same encoding as the archive's is no difference
    assert _run(paths, path, encoding={"t2m": {"dtype": "float32"}}).ok


def test_sources_past_the_archive_end_are_refused_with_the_extend_advice(files, tmp_path):
    """A later file beyond the archive's last label: refused before anything is written,
    naming the file and extend=True; with extend=True the archive grows and holds both."""
    ds, paths = files
    path = str(tmp_path / "a.zarr")
    assert _run(paths[:1], path, chunks={"time": 10}).ok
    before = snapshot(path)
    with pytest.raises(RegionLabelError, match=r"part1\.nc.*extend=True") as info:
        _run(paths[1:], path)
    assert "2001-01-20" in str(info.value)  # the archive's last label
    assert snapshot(path) == before
    assert _run(paths[1:], path, extend=True).ok
    back = xr.open_zarr(path).load()
    assert back.t2m.values.tobytes() == ds.t2m.values.tobytes()
    assert back.time.values[-1] == ds.time.values[-1]
