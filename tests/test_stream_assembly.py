"""StreamWriter chunk assembly: steps smaller than a write unit, each unit written once."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._check import PARTIAL_ATTR, read_record
from xarray_zarrwrite._compat import WrapperStore
from xarray_zarrwrite.codecs import BitpackCodec
from xarray_zarrwrite.errors import (
    BudgetTooSmallError,
    DimensionMismatchError,
    VariableNotInTemplateError,
)
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot

NSTEPS = 21


class CountingStore(WrapperStore):
    """A real store that counts the ``set`` calls of every key."""

    def __init__(self, store, sets=None):
        super().__init__(store)
        self.sets = collections.Counter() if sets is None else sets

    def _with_store(self, store):
        return type(self)(store, self.sets)

    async def set(self, key, value):
        self.sets[key] += 1
        await super().set(key, value)


@pytest.fixture
def steps():
    return era5_like("2000-01-01", NSTEPS, freq="h", nlat=8, nlon=16)


def make_template(steps, path, chunks=4, shards=None, **kw):
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path,
        global_end=steps.time[-1].values,
        chunks={"time": chunks},
        shards=None if shards is None else {"time": shards},
        **kw,
    )
    return path


def data_keys(sets):
    return {k: n for k, n in sets.items() if k.startswith(("t2m/c", "tcwv/c"))}


@pytest.mark.parametrize(("chunks", "shards"), [(4, None), (4, 8), (1, 8)])
@pytest.mark.parametrize("seed", [None, 0])
def test_each_unit_written_once_any_order(tmp_path, steps, chunks, shards, seed):
    path = make_template(steps, str(tmp_path / "a.zarr"), chunks, shards)
    store = CountingStore(LocalStore(path))
    order = list(range(NSTEPS))
    if seed is not None:
        random.Random(seed).shuffle(order)
    with xzw.StreamWriter(store) as writer:
        futures = [writer.write(steps.isel(time=[i])) for i in order]
    unit = shards or chunks
    nunits = -(-NSTEPS // unit)
    written = data_keys(store.sets)
    assert len(written) == 2 * nunits  # two variables, every unit once, the edge one too
    assert set(written.values()) == {1}
    assert all(f.result().nchunks == 2 for f in futures)
    back = xr.open_zarr(path).load()
    xr.testing.assert_identical(back, steps)  # bit for bit, the last step included
    np.testing.assert_array_equal(back.t2m[-1].values, steps.t2m[-1].values)
    assert xzw.check(path).complete
    assert PARTIAL_ATTR not in zarr.open_group(path, mode="r").attrs


def test_future_committed_when_its_unit_is_written(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    store = CountingStore(LocalStore(path))
    with xzw.StreamWriter(store) as writer:
        first = [writer.write(steps.isel(time=[i])) for i in range(3)]
        for f in first:
            f.copied.result()
        assert not any(f.done() for f in first)  # unit 0 still open: nothing durable yet
        assert not data_keys(store.sets)
        last = writer.write(steps.isel(time=[3]))
        last.result()
        assert all(f.result().nchunks == 2 for f in first)
        assert len(data_keys(store.sets)) == 2


def test_duplicate_step_replaces_the_earlier(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    store = CountingStore(LocalStore(path))
    wrong = steps.isel(time=[5]).copy(deep=True)
    wrong["t2m"][:] = -999.0
    with xzw.StreamWriter(store) as writer:
        writer.write(wrong)
        for i in range(NSTEPS):
            writer.write(steps.isel(time=[i]))
    assert set(data_keys(store.sets).values()) == {1}
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_multistep_writes_mix_with_single_steps(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    store = CountingStore(LocalStore(path))
    pieces = [slice(0, 3), slice(3, 9), slice(9, 12), slice(12, 20), slice(20, 21)]
    with xzw.StreamWriter(store) as writer:
        for sel in reversed(pieces):
            writer.write(steps.isel(time=sel))
    assert set(data_keys(store.sets).values()) == {1}
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_close_records_open_units_partial_and_resume_completes(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    with xzw.StreamWriter(path) as writer:
        for i in [0, 1, 2, 3, 4, 5, 9, 8]:
            writer.write(steps.isel(time=[i]))
    report = xzw.check(path)
    assert not report.complete
    assert report.variables["t2m"].partial_chunks == ((1, 0, 0), (2, 0, 0))
    labels = [str(t) for t in steps.time.values.astype("datetime64[s]")]
    assert read_record(path)["t2m"] == {"c/1/0/0": labels[6:8], "c/2/0/0": labels[10:12]}
    back = xr.open_zarr(path).load()
    assert back.attrs.pop(PARTIAL_ATTR) == read_record(path)
    xr.testing.assert_identical(back.isel(time=slice(0, 6)), steps.isel(time=slice(0, 6)))
    xr.testing.assert_identical(back.isel(time=[8, 9]), steps.isel(time=[8, 9]))
    assert back.t2m.isel(time=[6, 7, 10, 11]).isnull().all()

    store = CountingStore(LocalStore(path))
    with xzw.StreamWriter(store) as writer:  # a later run: merges with the stored parts
        for i in [7, 20, 11, 6, 10, *range(12, 20)]:
            writer.write(steps.isel(time=[i]))
    assert set(data_keys(store.sets).values()) == {1}
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)
    assert xzw.check(path).complete
    assert read_record(path) == {}


def test_flush_writes_partial_then_later_steps_merge(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    with xzw.StreamWriter(path) as writer:
        writer.write(steps.isel(time=[1]))
        writer.flush()
        assert xzw.check(path).variables["t2m"].partial_chunks == ((0, 0, 0),)
        np.testing.assert_array_equal(xr.open_zarr(path).t2m[1].values, steps.t2m[1].values)
        for i in [0, 2, 3]:
            writer.write(steps.isel(time=[i]))
    back = xr.open_zarr(path).isel(time=slice(0, 4)).load()
    xr.testing.assert_identical(back, steps.isel(time=slice(0, 4)))
    assert xzw.check(path).variables["t2m"].partial_chunks == ()


def test_rewriting_a_whole_stored_unit_in_part_merges(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    with xzw.StreamWriter(path) as writer:
        writer.write(steps.isel(time=slice(0, 4)))  # a whole unit, stored as such
    new = steps.isel(time=[2]).copy(deep=True)
    new["t2m"][:] = 1.5
    with xzw.StreamWriter(path) as writer:
        writer.write(new)  # part of a stored unit: held, then merged at close
    back = xr.open_zarr(path).isel(time=slice(0, 4)).load()
    expect = steps.isel(time=slice(0, 4)).copy(deep=True)
    expect["t2m"][2] = 1.5
    xr.testing.assert_identical(back, expect)
    assert xzw.check(path).variables["t2m"].partial_chunks == ()


def test_sigkill_leaves_fill_in_open_units(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    script = textwrap.dedent(
        f"""
        import sys, time
        import xarray_zarrwrite as xzw
        from xarray_zarrwrite.testing.datasets import era5_like
        steps = era5_like("2000-01-01", {NSTEPS}, freq="h", nlat=8, nlon=16)
        writer = xzw.StreamWriter({path!r})
        futures = [writer.write(steps.isel(time=[i])) for i in range(11)]
        for f in futures[:8]:
            f.result()
        for f in futures[8:]:
            f.copied.result()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    back = xr.open_zarr(path).load()
    xr.testing.assert_identical(back.isel(time=slice(0, 8)), steps.isel(time=slice(0, 8)))
    assert back.t2m.isel(time=slice(8, None)).isnull().all()  # open units: fill only
    report = xzw.check(path)
    assert report.variables["t2m"].written == 2
    assert report.variables["t2m"].partial_chunks == ()


def test_budget_blocks_in_order_and_raises_for_open_units(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    unit_elems = 4 * 8 * 16
    one_unit_each = 2 * unit_elems * (4 * 1.5 + 1)  # both variables, float32, mask
    step_bytes = steps.isel(time=[0]).t2m.nbytes * 2
    limit = (one_unit_each + step_bytes) / 2**20
    with xzw.StreamWriter(path, max_inflight_mb=limit) as writer:  # in order: fits, blocks
        for i in range(NSTEPS):
            writer.write(steps.isel(time=[i]))
            assert writer._budget.used <= limit * 2**20
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)

    path2 = make_template(steps, str(tmp_path / "b.zarr"))
    with xzw.StreamWriter(path2, max_inflight_mb=limit) as writer:
        writer.write(steps.isel(time=[0]))
        before = snapshot(path2)
        with pytest.raises(BudgetTooSmallError, match="max_inflight_mb") as info:
            writer.write(steps.isel(time=[5]))  # a second unit while the first is open
        assert isinstance(info.value, ValueError)
        assert snapshot(path2) == before
        futures = [writer.write(steps.isel(time=[i])) for i in (1, 2, 3)]
        for f in futures:
            f.result()  # unit 0 complete and written: room again
        writer.write(steps.isel(time=[5]))
    back = xr.open_zarr(path2).load()
    assert list(back.attrs.pop(PARTIAL_ATTR)["t2m"]) == ["c/1/0/0"]
    xr.testing.assert_identical(back.isel(time=slice(0, 4)), steps.isel(time=slice(0, 4)))
    xr.testing.assert_identical(back.isel(time=[5]), steps.isel(time=[5]))


def test_bitpack_max_error_assembled_keeps_its_bound(tmp_path, steps):
    enc = {"t2m": {"serializer": BitpackCodec(max_error=0.01)}}
    path = make_template(steps, str(tmp_path / "a.zarr"), encoding=enc)
    whole = make_template(steps, str(tmp_path / "w.zarr"), encoding=enc)
    order = list(range(NSTEPS))
    random.Random(3).shuffle(order)
    with xzw.StreamWriter(path) as writer:
        for i in order:
            writer.write(steps.isel(time=[i]))
    xzw.write_region(steps, whole)  # all at once: each unit quantised once
    got = xr.open_zarr(path).t2m.values
    assert np.abs(got - steps.t2m.values).max() <= 0.01
    np.testing.assert_array_equal(got, xr.open_zarr(whole).t2m.values)  # no re-quantisation
    xr.testing.assert_identical(xr.open_zarr(path).tcwv.load(), steps.tcwv)


def test_write_arrays_round_trip_and_validation(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    with xzw.StreamWriter(path) as writer:
        before = snapshot(path)
        step = {"t2m": steps.t2m.values[:1], "tcwv": steps.tcwv.values[:1]}
        with pytest.raises(VariableNotInTemplateError, match="'u10'"):
            writer.write_arrays({"u10": steps.t2m.values[:1]}, {"time": steps.time[:1]})
        with pytest.raises(VariableNotInTemplateError, match="'lat'"):
            writer.write_arrays({"lat": steps.lat.values}, {})
        with pytest.raises(DimensionMismatchError, match=r"shape \(1, 8, 8\)"):
            writer.write_arrays({"t2m": steps.t2m.values[:1, :, :8]}, {"time": steps.time[:1]})
        with pytest.raises(DimensionMismatchError, match="'level'"):
            writer.write_arrays(step, {"time": steps.time[:1], "level": [1]})
        with pytest.raises(DimensionMismatchError, match=r"shape \(2, 8, 16\)"):
            writer.write_arrays({"t2m": steps.t2m.values[:2]}, {"time": steps.time[:1]})
        assert snapshot(path) == before
        for i in range(NSTEPS):
            writer.write_arrays(
                {"t2m": steps.t2m.values[i : i + 1], "tcwv": steps.tcwv.values[i : i + 1]},
                {"time": steps.time.values[i : i + 1]},
            )
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_open_units_written_partial_at_interpreter_exit(tmp_path, steps):
    path = make_template(steps, str(tmp_path / "a.zarr"))
    script = textwrap.dedent(
        f"""
        import xarray_zarrwrite as xzw
        from xarray_zarrwrite.testing.datasets import era5_like
        steps = era5_like("2000-01-01", {NSTEPS}, freq="h", nlat=8, nlon=16)
        writer = xzw.StreamWriter({path!r})
        for i in range(6):
            writer.write(steps.isel(time=[i]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "UnclosedWriterWarning" in done.stderr
    assert xzw.check(path).variables["t2m"].partial_chunks == ((1, 0, 0),)
    back = xr.open_zarr(path).isel(time=slice(0, 6)).load()
    back.attrs.pop(PARTIAL_ATTR)
    xr.testing.assert_identical(back, steps.isel(time=slice(0, 6)))
