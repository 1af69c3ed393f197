"""StreamWriter: non-blocking, bounded, never silent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import xarray as xr
from zarr.storage import LocalStore, MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._compat import WrapperStore  # zarr 3.1-3.4 alike
from xarray_zarrwrite.errors import RegionLabelError, WriteFailedError, ZarrWriteError
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.latency import LatencyStore
from xarray_zarrwrite.testing.snapshot import snapshot


@pytest.fixture
def steps():
    return era5_like("2000-01-01", 48, freq="h", nlat=32, nlon=64)


def template(steps, store):
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        store, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    return store


def test_stream_round_trip(tmp_path, steps):
    path = template(steps, str(tmp_path / "s.zarr"))
    with xzw.StreamWriter(path, max_inflight_mb=1) as writer:
        futures = [writer.write(steps.isel(time=[i])) for i in range(48)]
    assert all(f.committed.done() and f.copied.done() for f in futures)
    assert futures[-1].result().region["time"] == slice(47, 48)
    assert writer.written == 48
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_copied_means_source_may_be_mutated(tmp_path, steps):
    path = template(steps, str(tmp_path / "s.zarr"))
    slow = LatencyStore(LocalStore(path), set_latency=0.05)
    buffer = steps.isel(time=[0]).copy(deep=True)
    expected = []
    with xzw.StreamWriter(slow) as writer:
        for i in range(6):
            step = steps.isel(time=[i])
            for name in ("t2m", "tcwv"):
                buffer[name].values[...] = step[name].values  # the model reuses its buffer
            buffer = buffer.assign_coords(time=step.time)
            fut = writer.write(buffer)
            fut.copied.result()
            assert not fut.committed.done()  # still in flight: only the copy is done
            for name in ("t2m", "tcwv"):
                buffer[name].values[...] = -1.0  # scribble right after `copied`
            expected.append(step)
    back = xr.open_zarr(path).isel(time=slice(0, 6)).load()
    xr.testing.assert_identical(back, xr.concat(expected, "time"))


def test_backpressure_bounds_inflight_bytes(tmp_path, steps):
    store = LatencyStore(MemoryStore(), set_latency=0.02)
    template(steps, store)
    step_bytes = steps.isel(time=[0]).t2m.nbytes * 2
    limit_mb = 4 * step_bytes / 2**20
    with xzw.StreamWriter(store, max_inflight_mb=limit_mb) as writer:
        for i in range(48):
            writer.write(steps.isel(time=[i]))
            assert writer._budget.used <= 4 * step_bytes
    assert 0 < writer.peak_inflight_bytes <= 4 * step_bytes
    xr.testing.assert_identical(xr.open_zarr(store).load(), steps)


class FailingStore(WrapperStore):
    """A real store that refuses writes of some keys (permanent failure)."""

    def __init__(self, store, bad: str) -> None:
        super().__init__(store)
        self.bad = bad

    def _with_store(self, store):
        return type(self)(store, self.bad)

    async def set(self, key, value):
        if self.bad in key:
            raise PermissionError(f"injected permanent failure for {key}")
        await super().set(key, value)


def test_background_errors_surface_once_and_are_not_lost(tmp_path, steps):
    base = MemoryStore()
    template(steps, base)
    store = FailingStore(base, "tcwv/c/5/")
    writer = xzw.StreamWriter(store)
    futures = [writer.write(steps.isel(time=[i])) for i in range(5)]
    bad = writer.write(steps.isel(time=[5]))
    with pytest.raises(WriteFailedError, match="tcwv") as e:
        bad.result()
    assert isinstance(e.value.__cause__, PermissionError)
    # raised once more on the caller's thread, at the next call...
    with pytest.raises(WriteFailedError, match="tcwv"):
        writer.write(steps.isel(time=[6]))
    # ...and not again: later writes go through and are not lost
    later = [writer.write(steps.isel(time=[i])) for i in range(7, 10)]
    writer.close()
    assert writer.failed == [bad]
    assert all(f.result() for f in futures + later)
    back = xr.open_zarr(base).load()
    assert back.tcwv.isel(time=5).isnull().all()  # the failed step is missing, not zero
    xr.testing.assert_identical(back.isel(time=slice(7, 10)), steps.isel(time=slice(7, 10)))


def test_close_raises_unreported_errors(steps):
    base = MemoryStore()
    template(steps, base)
    writer = xzw.StreamWriter(FailingStore(base, "t2m/c/1/"))
    writer.write(steps.isel(time=[1]))
    with pytest.raises(WriteFailedError):
        writer.close()
    with pytest.raises(ZarrWriteError, match="closed"):
        writer.write(steps.isel(time=[2]))


def test_context_manager_flushes_and_raises(steps):
    base = MemoryStore()
    template(steps, base)
    with pytest.raises(WriteFailedError), xzw.StreamWriter(FailingStore(base, "/c/2/")) as w:
        w.write(steps.isel(time=[2]))


def test_invalid_data_is_refused_at_write_with_nothing_written(tmp_path, steps):
    path = template(steps, str(tmp_path / "s.zarr"))
    before = snapshot(path)
    with xzw.StreamWriter(path) as writer:
        bad = steps.isel(time=[3]).assign_coords(time=[np.datetime64("2001-01-01T00:30")])
        with pytest.raises(RegionLabelError):
            writer.write(bad)
        assert writer.pending == 0
    assert snapshot(path) == before


def test_one_off_non_blocking_write_region(tmp_path, steps):
    path = template(steps, str(tmp_path / "s.zarr"))
    futures = [steps.isel(time=[i]).fastzarr.write_region(path, blocking=False) for i in range(4)]
    assert [f.result().region["time"] for f in futures] == [slice(i, i + 1) for i in range(4)]
    xr.testing.assert_identical(
        xr.open_zarr(path).isel(time=slice(0, 4)).load(), steps.isel(time=slice(0, 4))
    )


def test_soak_1000_steps_no_growth(tmp_path):
    psutil = pytest.importorskip("psutil")
    steps = era5_like("2000-01-01", 1000, freq="h", nlat=8, nlon=16, noise=0.0)
    store = MemoryStore()
    template(steps, store)
    proc = psutil.Process()
    threads, rss = [], []
    with xzw.StreamWriter(store, max_inflight_mb=1) as writer:
        for i in range(1000):
            writer.write(steps.isel(time=[i]))
            if i % 100 == 99:
                writer.flush()
                threads.append(threading.active_count())
                rss.append(proc.memory_info().rss)
    assert max(threads[1:]) <= threads[1]  # no thread leak
    assert rss[-1] - rss[1] < 64 * 2**20  # no unbounded growth (stored data is ~1 MB)
    xr.testing.assert_identical(xr.open_zarr(store).load(), steps)
    assert threading.active_count() <= threads[0]


def test_pending_writes_are_flushed_at_exit(tmp_path):
    path = tmp_path / "s.zarr"
    script = textwrap.dedent(
        f"""
        import xarray_zarrwrite as xzw
        from zarr.storage import LocalStore
        from xarray_zarrwrite.testing.latency import LatencyStore
        from xarray_zarrwrite.testing.datasets import era5_like
        steps = era5_like("2000-01-01", 20, freq="h", nlat=8, nlon=16)
        steps.isel(time=slice(0, 3)).fastzarr.to_template(
            {str(path)!r}, global_end=steps.time[-1].values, chunks={{"time": 1}})
        writer = xzw.StreamWriter(LatencyStore(LocalStore({str(path)!r}), set_latency=0.05))
        for i in range(20):
            writer.write(steps.isel(time=[i]))
        # no close(): the interpreter exits with writes in flight
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "UnclosedWriterWarning" in proc.stderr
    assert "was not closed" in proc.stderr
    steps = era5_like("2000-01-01", 20, freq="h", nlat=8, nlon=16)
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


@pytest.mark.s3
@pytest.mark.parametrize("fault_rate", [0.0, 0.1])
def test_stream_to_s3_through_buffered_store(s3_url, s3_storage_options, steps, fault_rate):
    from zarr.storage import FsspecStore

    from xarray_zarrwrite.testing.faults import FaultyStore

    s3 = FsspecStore.from_url(s3_url, storage_options=s3_storage_options)
    template(steps, s3)
    faulty = FaultyStore(s3, rate=fault_rate, seed=7, ops=("set",))
    with xzw.BufferedStore(faulty, max_buffer_mb=1, retries=8) as store:
        with xzw.StreamWriter(store, max_inflight_mb=1) as writer:
            for i in range(48):
                writer.write(steps.isel(time=[i]))
        store.flush_sync()
    if fault_rate:
        assert faulty.faults_injected > 0
    plain = FsspecStore.from_url(s3_url, storage_options=s3_storage_options, read_only=True)
    xr.testing.assert_identical(xr.open_zarr(plain).load(), steps)


def test_one_off_writes_go_through_the_callers_own_store(steps):
    base = MemoryStore()
    template(steps, base)
    assert steps.isel(time=[0]).fastzarr.write_region(base, blocking=False).result()
    # another Store object on the same place, refusing writes: it must be the one used
    refusing = FailingStore(base, "/c/")
    fut = steps.isel(time=[1]).fastzarr.write_region(refusing, blocking=False)
    with pytest.raises(WriteFailedError):
        fut.result()
    back = xr.open_zarr(base).isel(time=slice(0, 2)).load()
    xr.testing.assert_identical(back.isel(time=[0]), steps.isel(time=[0]))
    assert back.t2m.isel(time=1).isnull().all()
    # the shared writer still reports the failure once on the caller's thread at close
    from xarray_zarrwrite._runtime import runtime

    writer = next(w for w in runtime.writers.values() if w.store is refusing)
    with pytest.raises(WriteFailedError):
        writer.close()
