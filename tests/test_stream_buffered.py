"""StreamWriter over a BufferedStore: one queue, ``committed`` means durable in the target."""

from __future__ import annotations

import asyncio
import collections

import numpy as np
import pytest
import xarray as xr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._compat import WrapperStore, default_buffer_prototype, sync
from xarray_zarrwrite.errors import WriteFailedError
from xarray_zarrwrite.storage._durable import DurablePuts
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.latency import LatencyStore


@pytest.fixture
def steps():
    return era5_like("2000-01-01", 8, freq="h", nlat=8, nlon=16)


def template(steps, store):
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        store, global_end=steps.time[-1].values, chunks={"time": 1}
    )


def _time_index(key: str) -> int | None:
    if "/c/" not in key:
        return None
    return int(key.split("/c/")[1].split("/")[0])


class Flaky(WrapperStore):
    """Counts every attempt per key; chunk writes of time ``k`` fail (transiently or not)."""

    def __init__(self, store, k, error, attempts=None):
        super().__init__(store)
        self.k, self.error = k, error
        self.attempts = collections.Counter() if attempts is None else attempts

    def _with_store(self, store):
        return type(self)(store, self.k, self.error, self.attempts)

    async def set(self, key, value):
        self.attempts[key] += 1
        if _time_index(key) == self.k:
            raise self.error(f"injected failure for {key}")
        await super().set(key, value)


def test_committed_means_durable_in_the_wrapped_store(steps):
    base = MemoryStore()
    template(steps, base)
    with xzw.BufferedStore(LatencyStore(base, set_latency=0.005), max_buffer_mb=64) as store:
        writer = xzw.StreamWriter(store)
        for i in (0, 7):  # first and last index of the time dimension
            writer.write(steps.isel(time=[i])).result(60)
            # read the wrapped store directly: not through the buffer, before any flush
            back = xr.open_zarr(base).isel(time=[i]).load()
            for name in ("t2m", "tcwv"):
                np.testing.assert_array_equal(back[name].values, steps[name].values[[i]])
        writer.close()


def test_writes_through_the_same_buffered_store_keep_their_order(steps):
    base = MemoryStore()
    template(steps, base)
    older = steps.isel(time=[4]).copy(deep=True)
    newer = steps.isel(time=[4]).copy(deep=True)
    for name in ("t2m", "tcwv"):
        older[name].values[...] = -1.0
    with xzw.BufferedStore(LatencyStore(base, set_latency=0.02), concurrency=1) as store:
        with xzw.StreamWriter(store) as writer:
            # queued in the buffer (the slow store has not written it yet), then the writer's
            # step of the same region: it must land after, never be overtaken
            older.fastzarr.write_region(store)
            writer.write(newer)
        back = xr.open_zarr(base).load()  # the wrapped store, after the writer's close
    xr.testing.assert_identical(back.isel(time=[4]), newer)


def test_the_failure_is_the_failed_steps_only_and_reported_once(steps):
    base = MemoryStore()
    template(steps, base)
    store = xzw.BufferedStore(Flaky(base, 3, PermissionError), retries=0)
    writer = xzw.StreamWriter(store)
    futures, reported = [], 0
    for i in range(8):
        try:
            futures.append(writer.write(steps.isel(time=[i])))
        except WriteFailedError as e:  # step 3's failure reached a later call on this thread
            assert "injected failure" in str(e)
            reported += 1
            futures.append(writer.write(steps.isel(time=[i])))
    if reported:
        writer.close()  # raised once already
    else:
        with pytest.raises(WriteFailedError, match="injected failure"):
            writer.close()
    assert reported <= 1
    assert [i for i, f in enumerate(futures) if f.exception() is not None] == [3]
    assert all(_time_index(k) == 3 for k in store.failed_keys) and store.failed_keys
    store.close()  # raised to the writer already: the buffer does not report it again
    back = xr.open_zarr(base).load()
    ok = [i for i in range(8) if i != 3]
    xr.testing.assert_identical(back.isel(time=ok), steps.isel(time=ok))
    assert back.t2m.isel(time=3).isnull().all()


def test_a_buffered_stores_retries_are_not_multiplied_by_the_writer(steps):
    base = MemoryStore()
    template(steps, base)
    flaky = Flaky(base, 5, ConnectionError)
    store = xzw.BufferedStore(flaky, retries=2, retry_backoff=0.001)
    writer = xzw.StreamWriter(store)
    fut = writer.write(steps.isel(time=[5]))
    assert isinstance(fut.exception(60), WriteFailedError)
    with pytest.raises(WriteFailedError):
        writer.close()
    failed = [k for k in flaky.attempts if _time_index(k) == 5]
    assert failed
    assert {flaky.attempts[k] for k in failed} == {3}  # retries + 1, counted once
    store.close()


def test_a_plain_writers_failure_is_still_reported_by_the_buffer(steps):
    base = MemoryStore()
    template(steps, base)
    store = xzw.BufferedStore(Flaky(base, 2, PermissionError), retries=0)
    with xzw.StreamWriter(store) as writer:
        writer.write(steps.isel(time=[1]))
    raised = 0
    try:  # a plain write: queued, not owned; its failure is the buffer's to report, to the
        # plain writer's next call on the buffer (this one, or the close)
        steps.isel(time=[2]).fastzarr.write_region(store)
    except WriteFailedError:
        raised += 1
    try:
        store.close()
    except WriteFailedError:
        raised += 1
    assert raised >= 1


class Gate(WrapperStore):
    """Holds the write of key ``"a"`` until ``release`` is set (on zarr's loop)."""

    def __init__(self, store, release):
        super().__init__(store)
        self.release = release

    def _with_store(self, store):
        return type(self)(store, self.release)

    async def set(self, key, value):
        if key == "a":
            await self.release.wait()
        await super().set(key, value)


def test_an_owned_write_superseded_in_the_queue_gets_the_newer_writes_outcome():
    base = MemoryStore()

    async def scenario():
        release = asyncio.Event()
        store = xzw.BufferedStore(Gate(base, release), concurrency=1)
        view = DurablePuts(store)
        buf = default_buffer_prototype().buffer.from_bytes
        first = asyncio.ensure_future(view.set("a", buf(b"1")))  # in flight, held
        while store.stats.pending_keys < 1:
            await asyncio.sleep(0)
        older = asyncio.ensure_future(view.set("b", buf(b"old")))
        newer = asyncio.ensure_future(view.set("b", buf(b"new")))
        while store.stats.coalesced < 1:  # `newer` replaced `older` in the queue
            await asyncio.sleep(0)
        assert not older.done()  # superseded, not durable: still waiting
        release.set()
        await asyncio.wait_for(asyncio.gather(first, older, newer), 60)  # no hang
        await store.aclose()
        return await base.get("b", default_buffer_prototype())

    value = sync(scenario())
    assert value.to_bytes() == b"new"
