"""convert checks its whole input before writing anything: typed InputErrors, and the store
byte for byte as it was."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xarray_zarrwrite.convert import (
    ConvertOptionError,
    DuplicateSourceError,
    SourceNotFoundError,
    convert,
)
from xarray_zarrwrite.errors import InputError, TimeEncodingError
from xarray_zarrwrite.testing.snapshot import snapshot


def _part(start: str, n: int, calendar: str, seed: int) -> xr.Dataset:
    time = xr.date_range(start, periods=n, freq="D", calendar=calendar, use_cftime=True)
    rng = np.random.default_rng(seed)
    ds = xr.Dataset(
        {"t2m": (("time", "lat"), rng.standard_normal((n, 3)).astype("float32"))},
        coords={"time": time, "lat": [1.0, 2.0, 3.0]},
    )
    ds.time.encoding.update(units="days since 2000-01-01", calendar=calendar)
    return ds


def _files(tmp_path, calendars: list[str], n: int = 20) -> tuple[list[str], list[xr.Dataset]]:
    """Consecutive files of ``n`` days each, each file's labels in its own calendar."""
    starts = ["2000-01-01", "2000-01-21", "2000-02-10", "2000-03-02"]
    paths, parts = [], []
    for k, calendar in enumerate(calendars):
        part = _part(starts[k], n, calendar, seed=k)
        path = tmp_path / f"part{k}.nc"
        part.to_netcdf(path)
        paths.append(str(path))
        parts.append(part)
    return paths, parts


def test_calendar_synonyms_are_one_calendar(tmp_path):
    paths, parts = _files(tmp_path, ["noleap", "365_day", "noleap"])
    store = tmp_path / "out.zarr"
    report = convert(paths, store, max_workers=0, progress=False, chunks={"time": 7})
    assert report.status == "complete"
    back = xr.open_zarr(store, chunks=None).load()
    np.testing.assert_array_equal(back.t2m.values, np.concatenate([p.t2m.values for p in parts]))
    assert [str(t) for t in back.time.values] == [str(t) for p in parts for t in p.time.values]


def test_calendar_mismatch_is_found_before_anything_is_written(tmp_path):
    paths, _ = _files(tmp_path, ["noleap", "noleap", "366_day"])
    store = tmp_path / "out.zarr"
    convert(
        paths[:1],
        store,
        max_workers=0,
        progress=False,
        chunks={"time": 7},
        global_end="2000-03-01",
    )
    before = snapshot(store)
    # the good source comes first: today's checks would write it before finding the bad one
    with pytest.raises(TimeEncodingError, match=r"part2\.nc.*366_day") as info:
        convert(paths[1:], store, max_workers=0, progress=False)
    assert isinstance(info.value, InputError)
    assert snapshot(store) == before


def test_calendar_mismatch_between_sources_of_a_new_archive(tmp_path):
    paths, _ = _files(tmp_path, ["noleap", "noleap", "366_day"])
    store = tmp_path / "out.zarr"
    with pytest.raises(TimeEncodingError, match="366_day"):
        convert(paths, store, max_workers=0, progress=False)
    assert snapshot(store) == {}


@pytest.fixture
def archive(tmp_path) -> tuple[list[str], str, dict[str, str]]:
    paths, _ = _files(tmp_path, ["noleap", "noleap"])
    store = str(tmp_path / "out.zarr")
    convert(paths, store, max_workers=0, progress=False, chunks={"time": 7})
    return paths, store, snapshot(store)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("duplicate", DuplicateSourceError),
        ("duplicate-pattern", DuplicateSourceError),
        ("missing", SourceNotFoundError),
        ("memory", ConvertOptionError),
        ("negative-memory", ConvertOptionError),
        ("retries", ConvertOptionError),
        ("workers", ConvertOptionError),
    ],
)
def test_bad_input_is_typed_and_writes_nothing(archive, tmp_path, case, error):
    paths, store, before = archive
    kwargs: dict = {"max_workers": 0}
    sources = list(paths)
    if case == "duplicate":
        sources = [paths[0], paths[1], paths[0]]
    elif case == "duplicate-pattern":
        sources = [paths[0], str(tmp_path / "part*.nc")]
    elif case == "missing":
        sources = [paths[0], str(tmp_path / "nope.nc")]
    elif case == "memory":
        kwargs["memory_limit"] = "lots"
    elif case == "negative-memory":
        kwargs["memory_limit"] = -5
    elif case == "retries":
        kwargs["retries"] = -1
    elif case == "workers":
        kwargs["max_workers"] = -2
    with pytest.raises(error) as info:
        convert(sources, store, progress=False, resume=False, **kwargs)
    assert isinstance(info.value, InputError)
    if case == "missing":
        assert isinstance(info.value, FileNotFoundError) and "nope.nc" in str(info.value)
    assert snapshot(store) == before
