"""Process state: one runtime object, reset in a forked child; device arrays never np.asarray'd."""

from __future__ import annotations

import dataclasses
import multiprocessing
import warnings

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite import _staging, api
from xarray_zarrwrite._runtime import runtime
from xarray_zarrwrite._staging import is_device_array
from xarray_zarrwrite.errors import ZarrWriteError
from xarray_zarrwrite.testing.datasets import era5_like


def _steps():
    return era5_like("2000-01-01", 8, freq="h", nlat=8, nlon=16)


def _child(path: str) -> None:
    steps = _steps()
    with xzw.StreamWriter(path) as writer:
        writer.write(steps.isel(time=[4])).result(30)
    xzw.write_region(steps.isel(time=[5]), path, blocking=False).result(30)  # type: ignore[union-attr]
    xzw.write_region(steps.isel(time=[6]), path)
    for writer in list(runtime.writers.values()):
        writer.close()


def test_forked_child_completes_its_own_writes(tmp_path):
    path = str(tmp_path / "f.zarr")
    steps = _steps()
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    writer = xzw.StreamWriter(path)
    writer.write(steps.isel(time=[0])).result()
    parent_writer = runtime.writers
    steps.isel(time=[1]).fastzarr.write_region(path, blocking=False).result()
    writer.write(steps.isel(time=[2]))  # maybe still in flight at the fork
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_child, args=(path,))
    with warnings.catch_warnings():  # Python 3.12+: "process is multi-threaded" on fork
        warnings.simplefilter("ignore", DeprecationWarning)
        proc.start()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail("the forked child hung")
    assert proc.exitcode == 0
    writer.close()
    for w in list(parent_writer.values()):
        w.close()
    back = xr.open_zarr(path).load()
    written = [0, 1, 2, 4, 5, 6]
    xr.testing.assert_identical(back.isel(time=written), steps.isel(time=written))
    assert back.t2m.isel(time=[3, 7]).isnull().all()


def _child_uses_parent_writer(writer: xzw.StreamWriter) -> None:
    try:
        writer.write(_steps().isel(time=[3]))
    except ZarrWriteError as e:
        raise SystemExit(0 if "parent" in str(e) else 2) from e
    raise SystemExit(3)


def test_parent_writer_refuses_work_in_a_forked_child(tmp_path):
    path = str(tmp_path / "f.zarr")
    steps = _steps()
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    with xzw.StreamWriter(path) as writer:
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_child_uses_parent_writer, args=(writer,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            proc.start()
        proc.join(120)
        if proc.is_alive():
            proc.kill()
            proc.join()
            pytest.fail("the forked child hung")
    assert proc.exitcode == 0


def test_reset_gives_fresh_state():
    before = runtime.lock, runtime.templates, runtime.writers
    pid = runtime.pid
    runtime.lock.acquire()  # as if a parent thread held it at fork time
    try:
        saved = (runtime.templates, runtime.writers, runtime.live, runtime.slots, runtime.limits)
        runtime.reset()
        assert runtime.lock is not before[0] and not runtime.lock.locked()
        assert runtime.templates == {} and runtime.writers == {} and runtime.pid == pid
    finally:
        before[0].release()
        (runtime.templates, runtime.writers, runtime.live, runtime.slots, runtime.limits) = saved
        runtime.lock = before[0]


class _FakeCupy:
    """Looks like a CuPy array to the dispatch (module ``cupy._core.core``)."""

    __module__ = "cupy._core.core"

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape, self.dtype, self.ndim = values.shape, values.dtype, values.ndim

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")

    def __array_function__(self, *args, **kwargs):  # a duck array to xarray
        return NotImplemented

    def __array_ufunc__(self, *args, **kwargs):
        return NotImplemented


class _CudaInterface:
    @property
    def __cuda_array_interface__(self):
        return {}


class _RaisingInterface:
    @property
    def __cuda_array_interface__(self):
        raise AttributeError("a CPU tensor")


def test_device_dispatch_predicate():
    assert is_device_array(_FakeCupy(np.zeros(2)))
    assert is_device_array(_CudaInterface())
    assert not is_device_array(_RaisingInterface())
    assert not is_device_array(np.zeros(2))
    assert not is_device_array([1, 2])
    da = pytest.importorskip("dask.array")
    assert not is_device_array(da.zeros(2))


def test_blocking_path_sends_device_arrays_through_the_device_snapshot(tmp_path, monkeypatch):
    path = str(tmp_path / "g.zarr")
    steps = _steps()
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    staged: list[str] = []

    def fake_device_stage(data):
        staged.append(type(data).__name__)
        host = np.array(data.values, copy=True)
        return _staging.Staged(host), _staging.HostPool()

    monkeypatch.setattr(_staging, "_stage_device", fake_device_stage)
    step = steps.isel(time=[3])
    plan = xzw.plan(step, path)
    device = dataclasses.replace(
        plan,
        writes=tuple(
            dataclasses.replace(
                w, variable=xr.Variable(w.variable.dims, _FakeCupy(w.variable.values))
            )
            for w in plan.writes
        ),
    )
    hosted = api._on_host(device)
    assert sorted(staged) == ["_FakeCupy"] * len(plan.writes)
    for w, h in zip(plan.writes, hosted.writes, strict=True):
        assert isinstance(h.variable.data, np.ndarray)
        np.testing.assert_array_equal(h.variable.data, w.variable.values)
    assert api._on_host(plan) is plan  # host data: borrowed, nothing staged
