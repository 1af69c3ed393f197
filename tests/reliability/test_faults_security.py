"""Store faults against a real S3 server on loopback, memory bounds, and security properties."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import xarray as xr
from zarr.storage import FsspecStore, MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite.errors import WriteFailedError
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.faults import FaultyStore
from xarray_zarrwrite.testing.latency import LatencyStore

YEAR = era5_like("2000-01-01", 120, nlat=16, nlon=32)
PACKAGE = pathlib.Path(xzw.__file__).parent


@pytest.mark.s3
def test_s3_archive_complete_under_10_percent_faults(s3_url, s3_storage_options):
    s3 = FsspecStore.from_url(s3_url, storage_options=s3_storage_options)
    YEAR.isel(time=slice(0, 10)).fastzarr.to_template(
        s3, global_end=YEAR.time[-1].values, chunks={"time": 10}
    )
    faulty = FaultyStore(s3, rate=0.1, seed=11, ops=("set", "get"))
    with xzw.config.set({"retries": 8, "retry_backoff": 0.01}):
        for a in range(0, 120, 30):
            YEAR.isel(time=slice(a, a + 30)).fastzarr.write_region(faulty)
    assert faulty.faults_injected > 0
    plain = FsspecStore.from_url(s3_url, storage_options=s3_storage_options, read_only=True)
    xr.testing.assert_identical(xr.open_zarr(plain).load(), YEAR)


@pytest.mark.s3
def test_s3_permanent_failure_surfaces(s3_url, s3_storage_options):
    s3 = FsspecStore.from_url(s3_url, storage_options=s3_storage_options)
    YEAR.isel(time=slice(0, 10)).fastzarr.to_template(
        s3, global_end=YEAR.time[-1].values, chunks={"time": 10}
    )
    faulty = FaultyStore(s3, rate=0.0, permanent_keys=["t2m/c/3/*"], ops=("set",))
    with pytest.raises(WriteFailedError, match=r"'t2m' at \[30:40"):
        YEAR.isel(time=slice(30, 60)).fastzarr.write_region(faulty)
    status = xzw.check(FsspecStore.from_url(s3_url, storage_options=s3_storage_options))
    assert not status.complete
    assert (3, 0, 0) in [tuple(c) for c in status.variables["t2m"].missing_chunks]


def test_stream_producer_outrunning_store_stays_within_budget():
    store = LatencyStore(MemoryStore(), set_latency=0.005)
    steps = era5_like("2000-01-01", 1000, freq="h", nlat=8, nlon=16, noise=0.0)
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        store, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    limit_mb = 0.05
    with xzw.StreamWriter(store, max_inflight_mb=limit_mb) as writer:
        for i in range(1000):
            writer.write(steps.isel(time=[i]))
    assert writer.peak_inflight_bytes <= limit_mb * 2**20
    xr.testing.assert_identical(xr.open_zarr(store).load(), steps)


def _calls(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            base = getattr(getattr(f, "value", None), "id", "")
            out.add(f"{base}.{name}" if base else name)
            for kw in node.keywords:
                if kw.arg == "shell" and getattr(kw.value, "value", False) is True:
                    out.add("shell=True")
    return out


def test_no_shell_and_no_pickle_of_store_data():
    """No shell is ever invoked, and nothing read from a store is unpickled."""
    banned = {"os.system", "os.popen", "shell=True", "pickle.loads", "pickle.load", "eval", "exec"}
    for path in PACKAGE.rglob("*.py"):
        found = _calls(ast.parse(path.read_text())) & banned
        assert not found, f"{path.relative_to(PACKAGE)} calls {sorted(found)}"


@pytest.mark.parametrize("name", ["..", "../x", "/abs", "a/b", "a\\b", "x\x00", "__zarr", ""])
def test_names_escaping_the_root_are_rejected(tmp_path, name):
    from xarray_zarrwrite.errors import InvalidNameError

    bad = YEAR.isel(time=slice(0, 3)).rename(t2m=name) if name else YEAR.rename(t2m="")
    with pytest.raises(InvalidNameError):
        bad.fastzarr.to_template(tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_nan_only_and_infinite_values_without_packing_round_trip(tmp_path):
    ds = YEAR.isel(time=slice(0, 10)).copy(deep=True)
    ds.t2m.values[0] = np.nan
    ds.t2m.values[1, 0, 0] = np.inf
    ds.tcwv.values[2, 0, 0] = -np.inf
    ds.fastzarr.to_template(tmp_path / "a", chunks={"time": 1})
    ds.fastzarr.write_region(tmp_path / "a")
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "a").load(), ds)
    assert xzw.check(tmp_path / "a").complete  # an all-NaN chunk still counts as written
