"""convert's retries are counted once: a store put is tried ``retries + 1`` times in all, never
task retries times chunk retries."""

from __future__ import annotations

import errno
import fnmatch
from collections import Counter
from typing import Any

import numpy as np
import pytest
import xarray as xr
from zarr.storage import LocalStore

from xarray_zarrwrite import config
from xarray_zarrwrite.api import to_template
from xarray_zarrwrite.convert import convert
from xarray_zarrwrite.errors import WriteFailedError
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.faults import FaultyStore


class RefusingStore(FaultyStore):
    """Every put of the keys matching ``refused`` fails with a transient ``OSError(EIO)``;
    ``attempts`` counts them per key."""

    def __init__(self, store: Any, refused: str) -> None:
        super().__init__(store, rate=0.0, ops=("set",))
        self.refused = refused
        self.attempts: Counter[str] = Counter()

    def _with_store(self, store: Any) -> RefusingStore:
        other = type(self)(store, self.refused)
        other.attempts = self.attempts  # one count, whichever view of the store put
        return other

    async def set(self, key: str, value: Any) -> None:
        if fnmatch.fnmatchcase(key, self.refused):
            self.attempts[key] += 1
            raise OSError(errno.EIO, f"refused put of {key!r}")
        await super().set(key, value)


@pytest.fixture
def files(tmp_path) -> tuple[xr.Dataset, list[str]]:
    ds = era5_like("2000-01-01", 40, nlat=3, nlon=4)
    paths = []
    for k, (a, b) in enumerate([(0, 20), (20, 40)]):
        path = tmp_path / f"part{k}.nc"
        ds.isel(time=slice(a, b)).to_netcdf(path)
        paths.append(str(path))
    return ds, paths


@pytest.fixture(autouse=True)
def fast_backoff():
    with config.set({"retry_backoff": 0.001}):
        yield


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_transient_put_failure_is_tried_retries_plus_one_times(tmp_path, files, retries):
    ds, paths = files
    path = tmp_path / "out.zarr"
    with xr.open_dataset(paths[0]) as first:
        to_template(first, path, global_end=ds.time.values[-1], chunks={"time": 10})
    store = RefusingStore(LocalStore(path), "t2m/c/2/*")
    report = convert(
        paths, store, max_workers=0, retries=retries, progress=False, raise_on_failure=False
    )
    assert report.status == "failed" and not report.ok
    assert dict(store.attempts) == {"t2m/c/2/0/0": retries + 1}
    (failure,) = report.failures
    plural = "attempt" if retries == 0 else "attempts"
    assert f"after {retries + 1} {plural}" in failure.error
    assert failure.attempts == retries + 1
    assert f"after {retries + 1} {plural}" in report.summary()
    assert config.get("retries") == 3  # the library-wide setting is restored
    # every other chunk is there, bit for bit
    back = xr.open_zarr(path, chunks=None).load()
    keep = np.r_[0:20, 30:40]
    np.testing.assert_array_equal(back.t2m.values[keep], ds.t2m.values[keep])
    assert np.isnan(back.t2m.values[20:30]).all()
    np.testing.assert_array_equal(back.tcwv.values, ds.tcwv.values)


def test_permanent_put_failure_is_tried_once(tmp_path, files):
    ds, paths = files
    path = tmp_path / "out.zarr"
    with xr.open_dataset(paths[0]) as first:
        to_template(first, path, global_end=ds.time.values[-1], chunks={"time": 10})
    store = FaultyStore(LocalStore(path), rate=0.0, permanent_keys=["tcwv/c/3/*"])
    with pytest.raises(WriteFailedError, match="after 1 attempt") as info:
        convert(paths, store, max_workers=0, retries=3, progress=False)
    assert store.permanent_faults_injected == 1
    assert info.value.report.failures[0].attempts == 1
    back = xr.open_zarr(path, chunks=None).load()
    np.testing.assert_array_equal(back.tcwv.values[:30], ds.tcwv.values[:30])
    np.testing.assert_array_equal(back.t2m.values, ds.t2m.values)
