"""StreamWriter with CuPy-backed data: runs on a CUDA device, skips cleanly without one."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite._staging import is_device_array, stage
from xarray_zarrwrite.testing.datasets import era5_like

cupy = pytest.importorskip("cupy")
try:
    HAVE_DEVICE = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001  (no driver, no device: skip)
    HAVE_DEVICE = False

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAVE_DEVICE, reason="no CUDA device"),
]


def test_stage_copies_device_array_after_producer_stream():
    x = cupy.arange(10_000_000, dtype=cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y = x * 2  # produced on a non-default stream
        staged, pool = stage(y)
    host = staged.wait()
    np.testing.assert_array_equal(host, (np.arange(10_000_000, dtype=np.float32) * 2))
    assert is_device_array(y)
    pool.give(host)


def test_stream_writer_cupy_round_trip_and_copied_semantics(tmp_path):
    steps = era5_like("2000-01-01", 12, freq="h", nlat=64, nlon=128)
    path = str(tmp_path / "g.zarr")
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 1}
    )
    buf = {
        n: cupy.empty(steps[n].isel(time=[0]).shape, dtype=cupy.float32) for n in ("t2m", "tcwv")
    }
    with xzw.StreamWriter(path) as writer:
        for i in range(12):
            step = steps.isel(time=[i])
            for n in buf:
                buf[n].set(step[n].values)  # the model reuses its device buffers
            gpu_step = step.copy(data={n: buf[n] for n in buf})
            fut = writer.write(gpu_step)
            fut.copied.result()
            for n in buf:
                buf[n].fill(-1)  # scribble on the device right after `copied`
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_cupy_steps_assembled_into_chunks_of_four(tmp_path):
    steps = era5_like("2000-01-01", 11, freq="h", nlat=64, nlon=128)
    path = str(tmp_path / "g.zarr")
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 4}
    )
    buf = {n: cupy.empty(steps[n].isel(time=[0]).shape, dtype=cupy.float32) for n in ("t2m",)}
    with xzw.StreamWriter(path) as writer:
        for i in [3, 0, 10, 2, 1, 9, 8, 4, 5, 7, 6]:
            step = steps.isel(time=[i])
            buf["t2m"].set(step.t2m.values)
            fut = writer.write(step.copy(data={"t2m": buf["t2m"], "tcwv": step.tcwv.values}))
            fut.copied.result()
            buf["t2m"].fill(-1)  # the device buffer is free once `copied`
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_torch_cuda_tensors_through_write_arrays(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    steps = era5_like("2000-01-01", 6, freq="h", nlat=64, nlon=128)
    path = str(tmp_path / "t.zarr")
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=steps.time[-1].values, chunks={"time": 4}
    )
    with xzw.StreamWriter(path) as writer:
        for i in reversed(range(6)):
            arrays = {
                n: torch.from_numpy(steps[n].values[i : i + 1]).cuda() for n in ("t2m", "tcwv")
            }
            writer.write_arrays(arrays, {"time": steps.time.values[i : i + 1]})
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)
