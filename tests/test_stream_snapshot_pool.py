"""The default snapshot: pooled host buffers reused from step to step, and ``copied`` early.

Counts, never times: the pool allocates a buffer only when no free one of its size is left,
so a writer's snapshots never need more buffers than the steps its budget admits at once, and
a later writer in the same process allocates none; ``copied`` resolves while the step's
compression is still held back (the snapshot does not wait for the encode).
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite import _write
from xarray_zarrwrite._runtime import runtime
from xarray_zarrwrite._staging import _INLINE_BYTES, HostPool
from xarray_zarrwrite.testing.datasets import era5_like


@pytest.fixture
def steps():
    # 288 x 1024 float32: 1.125 MiB per variable and step, above the inline-copy size (the
    # snapshot takes the copy threads, as for real steps)
    ds = era5_like("2000-01-01", 12, freq="h", nlat=288, nlon=1024)
    assert ds.t2m.isel(time=[0]).nbytes > _INLINE_BYTES
    return ds


def template(steps, path):
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    return path


def assert_bitwise(path, steps):
    back = xr.open_zarr(path).load()
    for name in ("t2m", "tcwv"):
        assert back[name].values.tobytes() == steps[name].values.tobytes()
        assert back[name].values[-1, -1, -1] == steps[name].values[-1, -1, -1]
    xr.testing.assert_identical(back, steps)


def test_pool_grows_only_to_the_steps_in_flight_then_reuses(tmp_path, steps, monkeypatch):
    pool = HostPool()
    monkeypatch.setitem(runtime.slots, "staging.host_pool", pool)
    step_bytes = steps.isel(time=[0]).t2m.nbytes * 2
    budget_mb = 2.2 * 1.5 * step_bytes / 2**20  # admits two steps in flight, never three
    for run in range(2):
        path = template(steps, str(tmp_path / f"p{run}.zarr"))
        with xzw.StreamWriter(path, max_inflight_mb=budget_mb) as writer:
            futures = [writer.write(steps.isel(time=[i])) for i in range(12)]
        assert all(f.copied.done() and f.committed.done() for f in futures)
        assert writer.peak_inflight_bytes <= budget_mb * 2**20
        assert_bitwise(path, steps)
        # snapshots of one size, at most two steps (four buffers) held at once: however many
        # steps and writers, the process never allocates more (the second writer reuses the
        # first one's buffers)
        assert 1 <= pool.allocated <= 4
        assert sum(len(free) for free in pool._free.values()) == pool.allocated  # all back


@pytest.fixture
def held_encodes(monkeypatch):
    """Holds every compression (the zarr codec pipeline call) until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    original = _write.encode_chunks

    async def held(arr, items):
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.002)
        return await original(arr, items)

    monkeypatch.setattr(_write, "encode_chunks", held)
    yield entered, release
    release.set()  # never leave a writer hanging, whatever the test did


def test_copied_resolves_while_the_encode_is_held(tmp_path, steps, held_encodes):
    entered, release = held_encodes
    path = template(steps, str(tmp_path / "c.zarr"))
    step = steps.isel(time=[11]).copy(deep=True)
    with xzw.StreamWriter(path) as writer:
        for i in range(11):
            writer.write(steps.isel(time=[i]))
        fut = writer.write(step)
        assert entered.wait(60)  # compression reached, and held
        fut.copied.result(60)  # the snapshot did not wait for any encode
        assert not fut.committed.done()
        for name in ("t2m", "tcwv"):
            step[name].values[...] = np.nan  # the caller reuses its arrays at once
        release.set()
    assert fut.result().region["time"] == slice(11, 12)
    assert_bitwise(path, steps)  # the snapshot was encoded, not the scribbled arrays


def test_borrowed_steps_are_copied_only_at_commit(tmp_path, steps, held_encodes):
    entered, release = held_encodes
    path = template(steps, str(tmp_path / "b.zarr"))
    with xzw.StreamWriter(path, borrow=True) as writer:
        fut = writer.write(steps.isel(time=[0]))
        assert entered.wait(60)
        assert not fut.copied.done()  # borrowed: the arrays are in use until committed
        release.set()
        fut.copied.result(60)
        assert fut.committed.done()
        for i in range(1, 12):
            writer.write(steps.isel(time=[i]))
    assert_bitwise(path, steps)
