"""The non-blocking engine: a future's outcome is its own writes', order per region, no silence."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._compat import WrapperStore
from xarray_zarrwrite._runtime import runtime
from xarray_zarrwrite._stream import _overlaps
from xarray_zarrwrite.errors import WriteFailedError
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.latency import LatencyStore


@pytest.fixture
def steps():
    return era5_like("2000-01-01", 12, freq="h", nlat=8, nlon=16)


def template(steps, store):
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        store, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    return store


class FailStep(WrapperStore):
    """Refuses every chunk write of time index ``k`` (of every variable), permanently."""

    def __init__(self, store, k: int) -> None:
        super().__init__(store)
        self.k = k

    def _with_store(self, store):
        return type(self)(store, self.k)

    async def set(self, key, value):
        if "/c/" in key and key.split("/c/")[1].split("/")[0] == str(self.k):
            raise PermissionError(f"injected permanent failure for {key}")
        await super().set(key, value)


@pytest.mark.parametrize("k", [0, 1, 5])
def test_exactly_the_future_of_the_failed_step_fails_over_buffered_store(steps, k):
    base = MemoryStore()
    template(steps, base)
    store = xzw.BufferedStore(FailStep(base, k), retries=0)
    writer = xzw.StreamWriter(store)
    futures, reported = [], 0
    for i in range(8):
        try:
            futures.append(writer.write(steps.isel(time=[i])))
        except WriteFailedError:  # step k's failure reached a later call on this thread
            reported += 1
            futures.append(writer.write(steps.isel(time=[i])))
    if reported:
        writer.flush()
    else:
        with pytest.raises(WriteFailedError):
            writer.flush()
    assert reported <= 1  # reported already: close does not raise it again
    failed = [i for i, f in enumerate(futures) if f.exception() is not None]
    assert failed == [k]
    assert writer.failed == [futures[k]]
    back = xr.open_zarr(base).load()
    assert back.t2m.isel(time=k).isnull().all()
    ok = [i for i in range(8) if i != k]
    xr.testing.assert_identical(back.isel(time=ok), steps.isel(time=ok))
    store.close()


def test_failure_reaches_the_callers_thread_and_close(steps):
    base = MemoryStore()
    template(steps, base)
    writer = xzw.StreamWriter(FailStep(base, 2))
    bad = writer.write(steps.isel(time=[2]))
    assert isinstance(bad.exception(), WriteFailedError)
    with pytest.raises(WriteFailedError, match=r"t2m|tcwv"):
        writer.write(steps.isel(time=[3]))
    writer.write(steps.isel(time=[4]))
    writer.close()  # nothing unreported left
    second = xzw.StreamWriter(FailStep(base, 2))
    second.write(steps.isel(time=[2]))
    with pytest.raises(WriteFailedError):
        second.close()


def test_later_write_to_the_same_region_always_wins(steps):
    base = MemoryStore()
    template(steps, base)
    slow = LatencyStore(base, set_latency=0.002)
    first = steps.isel(time=[4]).copy(deep=True)
    second = steps.isel(time=[4]).copy(deep=True)
    for name in ("t2m", "tcwv"):
        second[name].values[...] = second[name].values + 1
    for trial in range(50):
        a, b = (first, second) if trial % 2 == 0 else (second, first)
        fa = a.fastzarr.write_region(slow, blocking=False)
        fb = b.fastzarr.write_region(slow, blocking=False)
        fa.result(60)
        fb.result(60)
        back = xr.open_zarr(base).isel(time=[4]).load()
        for name in ("t2m", "tcwv"):  # per chunk: every chunk holds the later write
            np.testing.assert_array_equal(back[name].values, b[name].values)
    for writer in list(runtime.writers.values()):
        if writer.store is slow:
            writer.close()


def test_region_overlap():
    assert _overlaps({"time": slice(0, 2)}, {"time": slice(1, 3)})
    assert not _overlaps({"time": slice(0, 2)}, {"time": slice(2, 3)})
    assert _overlaps({"time": slice(0, 2)}, {"lat": slice(5, 6)})  # disjoint dims: overlap
    assert not _overlaps(
        {"time": slice(0, 2), "lat": slice(0, 4)}, {"time": slice(0, 2), "lat": slice(4, 8)}
    )


def test_readme_streaming_pattern_against_a_failing_store_exits_non_zero(tmp_path):
    path = tmp_path / "s.zarr"
    script = textwrap.dedent(
        f"""
        import xarray_zarrwrite as xzw
        from zarr.storage import LocalStore
        from xarray_zarrwrite._compat import WrapperStore
        from xarray_zarrwrite.testing.datasets import era5_like

        class Refusing(WrapperStore):
            def _with_store(self, store):
                return type(self)(store)
            async def set(self, key, value):
                if "/c/" in key:
                    raise PermissionError("injected: " + key)
                await super().set(key, value)

        steps = era5_like("2000-01-01", 6, freq="h", nlat=8, nlon=16)
        steps.isel(time=slice(0, 3)).fastzarr.to_template(
            {str(path)!r}, global_end=steps.time[-1].values, chunks={{"time": 1}})
        with xzw.StreamWriter(xzw.BufferedStore(Refusing(LocalStore({str(path)!r})))) as w:
            for i in range(6):
                w.write(steps.isel(time=[i]))
        print("NOT RAISED")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "NOT RAISED" not in proc.stdout
    assert "WriteFailedError" in proc.stderr
