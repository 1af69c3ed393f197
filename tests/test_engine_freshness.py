"""The template-freshness gate on every path: a replaced template is never written stale.

After the template is replaced (by this process or another one) with another start date or
another chunking, every write either raises a typed error or lands at the right labels.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite.errors import RegionError
from xarray_zarrwrite.testing.datasets import era5_like

N = 8


def _steps(start: str = "2000-01-01"):
    return era5_like(start, N, freq="h", nlat=8, nlon=16)


def _make(path: str, start: str = "2000-01-01", tchunk: int = 2) -> None:
    steps = _steps(start)
    steps.isel(time=slice(0, 4)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": tchunk}, mode="w"
    )


def _replace(path: str, how: str, *, other_process: bool) -> None:
    start, tchunk = ("2001-06-01", 2) if how == "start" else ("2000-01-01", 4)
    if not other_process:
        _make(path, start, tchunk)
        return
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from test_engine_freshness import _make
        _make({path!r}, {start!r}, {tchunk})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def _write(path: str, step: xr.Dataset, how: str) -> None:
    if how == "blocking":
        xzw.write_region(step, path)
    elif how == "stream":
        with xzw.StreamWriter(path) as writer:
            writer.write(step)
    elif how == "nonblocking":
        xzw.write_region(step, path, blocking=False).result(60)  # type: ignore[union-attr]
    else:  # dask
        xzw.write_region(step.chunk(time=4), path)


def _check(path: str, steps: xr.Dataset, landed: list[int]) -> None:
    back = xr.open_zarr(path).load()
    np.testing.assert_array_equal(back.time.values, steps.time.values)  # new template's labels
    rest = [i for i in range(N) if i not in landed]
    if landed:
        xr.testing.assert_identical(back.isel(time=landed), steps.isel(time=landed))
    assert back.t2m.isel(time=rest).isnull().all()


@pytest.mark.parametrize("other_process", [False, True], ids=["same", "subprocess"])
@pytest.mark.parametrize("how", ["start", "chunks"])
@pytest.mark.parametrize("path_kind", ["blocking", "stream", "nonblocking", "dask"])
def test_template_replaced_between_writes(tmp_path, how, other_process, path_kind):
    path = str(tmp_path / "t.zarr")
    _make(path)
    old = _steps()
    _write(path, old.isel(time=[0, 1]), path_kind)  # warms the cache (and a shared writer)
    _replace(path, how, other_process=other_process)
    new = _steps("2001-06-01") if how == "start" else _steps()
    if how == "start":  # the old labels have no place in the new template
        with pytest.raises(RegionError):
            _write(path, old.isel(time=[4, 5]), path_kind)
        if path_kind == "nonblocking":
            with pytest.raises(RegionError):  # reported once more on the caller's thread
                _close_shared_writers()
    _write(path, new.isel(time=[4, 5, 6, 7]), path_kind)
    _check(path, new, [4, 5, 6, 7])
    _close_shared_writers()


def test_stream_writer_opened_before_the_replacement(tmp_path):
    path = str(tmp_path / "t.zarr")
    _make(path)
    writer = xzw.StreamWriter(path)
    writer.write(_steps().isel(time=[0, 1])).result()
    _make(path, "2000-01-01", 4)  # other chunking, same labels
    writer.write(_steps().isel(time=[4, 5, 6, 7])).result()
    _make(path, "2001-06-01", 2)  # other start date: the step has no place any more
    # planned against the cached (replaced) template, held for assembly: the gate before
    # its unit's put refuses it, on its future (result() makes the open unit durable)
    with pytest.raises(RegionError, match="replaced"):
        writer.write(_steps().isel(time=[2, 3])).result(timeout=60)
    with pytest.raises(RegionError, match="replaced"):  # once more on the caller's thread
        writer.close()
    _check(path, _steps("2001-06-01"), [])


def test_dask_write_planned_before_the_replacement(tmp_path):
    path = str(tmp_path / "t.zarr")
    _make(path)
    delayed = xzw.write_region(_steps().isel(time=[4, 5]).chunk(time=2), path, compute=False)
    _make(path, "2000-01-01", 4)  # the plan (2-step blocks) no longer fits the chunks
    with pytest.raises(RegionError, match="replaced"):
        delayed.compute()  # type: ignore[union-attr]
    _check(path, _steps(), [])


def _close_shared_writers() -> None:
    from xarray_zarrwrite._runtime import runtime

    for writer in list(runtime.writers.values()):
        writer.close()


# Function scope: a Client is the process-wide default scheduler while it lives; kept open
# across tests, it would turn other tests' local-scheduler computes into distributed ones.
@pytest.fixture
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _map_blocks_write(ds: xr.Dataset, path: str) -> None:
    def write(block: xr.Dataset) -> xr.Dataset:
        xzw.write_region(block, path)
        return block

    xr.map_blocks(write, ds, template=ds).compute()


def test_long_lived_cluster_workers_do_not_write_with_a_stale_cache(tmp_path, cluster_client):
    path = str(tmp_path / "t.zarr")
    _make(path)
    old = _steps()
    xzw.write_region(old.chunk(time=2), path)  # every worker caches the template
    _map_blocks_write(old.chunk(time=2), path)
    planned = xzw.write_region(old.isel(time=[4, 5]).chunk(time=2), path, compute=False)
    _make(path, "2001-06-01", 2)
    with pytest.raises(RegionError, match="replaced"):  # raised by a worker's block
        planned.compute()  # type: ignore[union-attr]
    with pytest.raises(RegionError):
        xzw.write_region(old.isel(time=[4, 5]).chunk(time=2), path)
    with pytest.raises(RegionError):
        _map_blocks_write(old.isel(time=[4, 5]).chunk(time=2), path)
    _make(path, "2000-01-01", 4)
    new = _steps()
    xzw.write_region(new.isel(time=[0, 1, 2, 3]).chunk(time=4), path)
    _map_blocks_write(new.isel(time=[4, 5, 6, 7]).chunk(time=4), path)
    _check(path, new, list(range(N)))
