"""A shortfall is never success: chunks the sources cover only in part are written (fill values
for the rest), recorded as partial, and completed by a later convert that merges them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from xarray_zarrwrite._check import check
from xarray_zarrwrite.convert import PARTIAL_ATTR, convert
from xarray_zarrwrite.testing.datasets import era5_like


@pytest.fixture(scope="module")
def full() -> xr.Dataset:
    return era5_like("2000-01-01", 90, nlat=3, nlon=4)


@pytest.fixture
def files(full, tmp_path) -> list[str]:
    """Three sources of 30 days each: their boundaries fall inside 20-day chunks."""
    paths = []
    for k in range(3):
        path = tmp_path / f"part{k}.nc"
        full.isel(time=slice(30 * k, 30 * (k + 1))).to_netcdf(path)
        paths.append(str(path))
    return paths


def _label(full: xr.Dataset, i: int) -> str:
    return str(np.datetime_as_string(full.time.values[i], unit="s"))


def _assert_equal_where(back: xr.Dataset, full: xr.Dataset, have: np.ndarray) -> None:
    for name in ("t2m", "tcwv"):
        a, b = back[name].values, full[name].values
        assert a[have].tobytes() == b[have].tobytes(), name
        assert np.isnan(a[~have]).all(), name


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_later_sources_complete_partial_chunks(tmp_path, full, files, zarr_format, workers):
    store = str(tmp_path / "out.zarr")
    end = full.time.values[-1]
    kw = {"max_workers": workers, "progress": False, "zarr_format": zarr_format}
    # the middle source only (30..59): chunk 1 (20..39) is partly covered
    report = convert(
        files[1:2],
        store,
        global_start=full.time.values[0],
        global_end=end,
        chunks={"time": 20},
        **kw,
    )
    assert report.status == "incomplete" and not report.ok and not report.failures
    assert report.partial == ((_label(full, 20)[:10], _label(full, 39)[:10]),)
    assert report.missing == (
        (_label(full, 0)[:10], _label(full, 29)[:10]),
        (_label(full, 60)[:10], _label(full, 89)[:10]),
    )
    have = np.zeros(90, dtype=bool)
    have[30:60] = True
    back = xr.open_zarr(store, chunks=None).load()
    _assert_equal_where(back, full, have)
    key = "c/1/0/0" if zarr_format == 3 else "1.0.0"
    labels = [_label(full, i) for i in range(20, 30)]
    assert back.attrs[PARTIAL_ATTR] == {"t2m": {key: labels}, "tcwv": {key: labels}}
    # check() counts the partial chunk as missing and names it
    status = check(store)
    assert not status.complete
    for name in ("t2m", "tcwv"):
        assert status.variables[name].partial_chunks == ((1, 0, 0),)
        assert (1, 0, 0) in status.variables[name].missing_chunks
    # the first source: merged into chunk 1, which is whole now; 60..89 still missing
    report = convert(files[:1], store, **kw)
    assert report.status == "incomplete"
    assert report.missing == ((_label(full, 60)[:10], _label(full, 89)[:10]),)
    have[:30] = True
    back = xr.open_zarr(store, chunks=None).load()
    _assert_equal_where(back, full, have)
    assert PARTIAL_ATTR not in back.attrs
    # the last one: complete, no record left
    report = convert(files, store, **kw)
    assert report.status == "complete" and report.ok and not report.missing
    back = xr.open_zarr(store, chunks=None).load()
    _assert_equal_where(back, full, np.ones(90, dtype=bool))
    assert PARTIAL_ATTR not in back.attrs
    assert PARTIAL_ATTR not in zarr.open_group(store, mode="r").attrs
    assert check(store).complete


def test_resume_skips_partial_chunks_with_nothing_new(tmp_path, full, files):
    store = str(tmp_path / "out.zarr")
    kw = {"max_workers": 0, "progress": False, "chunks": {"time": 20}}
    first = convert(files[:2], store, global_end=full.time.values[-1], **kw)
    assert first.status == "incomplete" and first.failed == 0
    again = convert(files[:2], store, **kw)
    assert again.status == "incomplete"
    assert again.written == 0 and again.skipped == again.ntasks  # nothing to add
    assert again.missing == first.missing
    have = np.r_[np.ones(60, dtype=bool), np.zeros(30, dtype=bool)]
    _assert_equal_where(xr.open_zarr(store, chunks=None).load(), full, have)
